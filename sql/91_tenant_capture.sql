-- Capturing a role: what a tenant's admin, a writer and an application
-- cannot do with crm.tenant_access, crm.app_access and the settings
-- crm.tenant_id / crm.user_id.
--
-- The rule: a login role acts for a tenant only through a mapping in
-- crm.tenant_access, keyed by the role's OID.  A mapping names an existing
-- role; never a superuser, a BYPASSRLS role or a member of crm_app (those
-- serve a tenant only through crm.tenant_id); never a role with members
-- unless the operator makes it; and a role mapped to one tenant is mapped
-- to a second one only by the operator.  The role's OID and name,
-- granted_by and created_at are the server's.  Every attack below is tried
-- through crm.grant_tenant_access() and through plain INSERT/UPDATE, and
-- nothing stored changes.

SELECT crm.create_tenant('Capture A') AS ta \gset
SELECT crm.create_tenant('Capture B') AS tb \gset
SET crm.tenant_id = :'ta';
INSERT INTO crm.app_user (name) VALUES ('Ann A') RETURNING id AS ann \gset
INSERT INTO crm.account (name) VALUES ('A Industries');
SET crm.tenant_id = :'tb';
INSERT INTO crm.app_user (name) VALUES ('Bob B') RETURNING id AS bob \gset
INSERT INTO crm.account (name) VALUES ('B Industries');
SELECT id AS b_qualified FROM crm.stage s
 WHERE s.tenant_id = :'tb' AND s.name = 'Qualified'
   AND s.pipeline_id = (SELECT p.id FROM crm.pipeline p WHERE p.tenant_id = :'tb' AND p.is_default) \gset
INSERT INTO crm.opportunity (name) VALUES ('B deal') RETURNING id AS b_deal \gset
RESET crm.tenant_id;

SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_cap_a_admin, regress_cap_b_admin, regress_cap_app, regress_cap_alice,
          regress_cap_free, regress_cap_super, regress_cap_bypass, regress_cap_group, regress_cap_member,
          regress_cap_future, regress_cap_temp, regress_cap_app2;
RESET client_min_messages;
CREATE ROLE regress_cap_a_admin LOGIN IN ROLE crm_admin;
CREATE ROLE regress_cap_b_admin LOGIN IN ROLE crm_admin;
CREATE ROLE regress_cap_app LOGIN IN ROLE crm_app, crm_writer;
CREATE ROLE regress_cap_app2 LOGIN IN ROLE crm_app, crm_writer;
CREATE ROLE regress_cap_alice LOGIN IN ROLE crm_writer;
CREATE ROLE regress_cap_free LOGIN IN ROLE crm_writer;
CREATE ROLE regress_cap_super SUPERUSER;
CREATE ROLE regress_cap_bypass LOGIN BYPASSRLS IN ROLE crm_reader;
CREATE ROLE regress_cap_group NOLOGIN IN ROLE crm_writer;
CREATE ROLE regress_cap_member LOGIN IN ROLE regress_cap_group;

-- the operator maps each tenant's admin; B's admin maps Alice
SELECT crm.grant_tenant_access('regress_cap_a_admin', :'ta', :'ann');
SELECT crm.grant_tenant_access('regress_cap_b_admin', :'tb', :'bob');
SET ROLE regress_cap_b_admin;
SELECT crm.grant_tenant_access('regress_cap_alice', :'tb', :'bob');
RESET ROLE;

-- What is stored, as the operator sees it; compared after every attack.
CREATE FUNCTION regress_cap_state() RETURNS TABLE (tenant text, login_role name, role_is_live boolean,
                                                   acts_as text, granted_by name)
    LANGUAGE sql AS $$
    SELECT t.name, a.login_role, EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = a.role_oid AND r.rolname = a.login_role),
           u.name, a.granted_by
      FROM crm.tenant_access a JOIN crm.tenant t USING (tenant_id)
      LEFT JOIN crm.app_user u ON u.tenant_id = a.tenant_id AND u.id = a.user_id
     WHERE t.name LIKE 'Capture %'
     ORDER BY 1, 2
$$;
SELECT * FROM regress_cap_state();
CREATE TABLE regress_cap_before AS SELECT * FROM regress_cap_state();
CREATE FUNCTION regress_cap_unchanged() RETURNS boolean
    LANGUAGE sql AS $$
    SELECT NOT EXISTS ((SELECT * FROM regress_cap_state() EXCEPT SELECT * FROM regress_cap_before)
                       UNION ALL
                       (SELECT * FROM regress_cap_before EXCEPT SELECT * FROM regress_cap_state()))
$$;
GRANT SELECT ON regress_cap_before TO PUBLIC;

-- 1. A's admin maps the application role into A, to capture B's traffic -----
SET ROLE regress_cap_a_admin;
SELECT try(format('SELECT crm.grant_tenant_access(%L, %L)', 'regress_cap_app', :'ta'));
SELECT try(format('INSERT INTO crm.tenant_access (tenant_id, login_role) VALUES (%L, %L)', :'ta', 'regress_cap_app'));
-- a superuser, a BYPASSRLS role: the same
SELECT try(format('SELECT crm.grant_tenant_access(%L, %L)', 'regress_cap_super', :'ta'));
SELECT try(format('INSERT INTO crm.tenant_access (tenant_id, login_role) VALUES (%L, %L)', :'ta', 'regress_cap_bypass'));
-- a group role, whose members could SET ROLE to it
SELECT try(format('SELECT crm.grant_tenant_access(%L, %L)', 'regress_cap_group', :'ta'));
-- the group roles themselves
SELECT try(format('SELECT crm.grant_tenant_access(%L, %L)', 'crm_writer', :'ta'));
SELECT try(format('SELECT crm.grant_tenant_access(%L, %L)', 'crm_app', :'ta'));
RESET ROLE;
SELECT regress_cap_unchanged() AS unchanged;
-- the application still serves B when it says so, and its writes land in B
SET ROLE regress_cap_app;
BEGIN;
SET LOCAL crm.tenant_id = :'tb';
INSERT INTO crm.tag (name) VALUES ('written for B') RETURNING tenant_id = :'tb' AS landed_in_b;
ROLLBACK;
RESET ROLE;

-- 2. A role that does not exist yet, to capture it when it is made ---------
SET ROLE regress_cap_a_admin;
SELECT try(format('SELECT crm.grant_tenant_access(%L, %L)', 'regress_cap_future', :'ta'));
SELECT try(format('INSERT INTO crm.tenant_access (tenant_id, login_role) VALUES (%L, %L)', :'ta', 'regress_cap_future'));
-- nor by a number that is no role's OID
SELECT try(format('INSERT INTO crm.tenant_access (tenant_id, role_oid, login_role) VALUES (%L, 4000000000, %L)',
                  :'ta', 'regress_cap_future'));
RESET ROLE;
CREATE ROLE regress_cap_future LOGIN IN ROLE crm_reader;
SET ROLE regress_cap_future;
SELECT crm.current_tenant() IS NULL AS no_tenant, count(*) AS accounts FROM crm.account;
RESET ROLE;
SELECT regress_cap_unchanged() AS unchanged;

-- 3. Another tenant's role: the first mapping wins --------------------------
SET ROLE regress_cap_a_admin;
SELECT try(format('SELECT crm.grant_tenant_access(%L, %L)', 'regress_cap_alice', :'ta'));
SELECT try(format('INSERT INTO crm.tenant_access (tenant_id, login_role) VALUES (%L, %L)', :'ta', 'regress_cap_alice'));
-- naming Alice's OID under another name maps that other name, not Alice
SELECT try(format('INSERT INTO crm.tenant_access (tenant_id, role_oid, login_role) VALUES (%L, %s, %L)',
                  :'ta', 'regress_cap_alice'::regrole::oid, 'regress_cap_free'));
SELECT login_role, role_oid = 'regress_cap_free'::regrole::oid AS oid_of_free FROM crm.tenant_access
 WHERE login_role = 'regress_cap_free';
DELETE FROM crm.tenant_access WHERE login_role = 'regress_cap_free';
-- writing B's mapping directly: B's rows are not A's admin's to see or write
SELECT try(format('INSERT INTO crm.tenant_access (tenant_id, login_role) VALUES (%L, %L)', :'tb', 'regress_cap_free'));
UPDATE crm.tenant_access SET user_id = NULL WHERE login_role = 'regress_cap_alice' RETURNING login_role;
DELETE FROM crm.tenant_access WHERE login_role = 'regress_cap_alice' RETURNING login_role;
SELECT crm.revoke_tenant_access('regress_cap_alice', :'tb') AS revoked_in_b;
RESET ROLE;
SELECT regress_cap_unchanged() AS unchanged;
SET ROLE regress_cap_alice;
SELECT crm.current_tenant() = :'tb' AS alice_acts_for_b;
RESET ROLE;
-- the operator may confirm a second tenant; Alice then chooses with crm.tenant_id
SELECT crm.grant_tenant_access('regress_cap_alice', :'ta');
SET ROLE regress_cap_alice;
SELECT crm.current_tenant() IS NULL AS undecided;
SET crm.tenant_id = :'ta';
SELECT crm.current_tenant() = :'ta' AS acts_for_a;
RESET crm.tenant_id;
RESET ROLE;
SELECT crm.revoke_tenant_access('regress_cap_alice', :'ta') AS revoked;

-- 4. Moving or re-pointing a mapping: identity columns are refused ----------
SELECT crm.grant_tenant_access('regress_cap_free', :'ta');
SET ROLE regress_cap_a_admin;
SELECT try($$UPDATE crm.tenant_access SET login_role = 'regress_cap_alice' WHERE login_role = 'regress_cap_free'$$);
SELECT try($$UPDATE crm.tenant_access SET role_oid = 'regress_cap_alice'::regrole::oid WHERE login_role = 'regress_cap_free'$$);
SELECT try(format('UPDATE crm.tenant_access SET tenant_id = %L WHERE login_role = %L', :'tb', 'regress_cap_free'));
-- the user it acts as may change, to a user of its own tenant only
SELECT try(format('UPDATE crm.tenant_access SET user_id = %L WHERE login_role = %L', :'bob', 'regress_cap_free'));
UPDATE crm.tenant_access SET user_id = :'ann' WHERE login_role = 'regress_cap_free' RETURNING login_role;
RESET ROLE;

-- 5. Audit columns are the server's -------------------------------------------
SET ROLE regress_cap_a_admin;
INSERT INTO crm.tenant_access (tenant_id, login_role, granted_by, created_at)
VALUES (:'ta', 'regress_cap_future', 'postgres', '1970-01-01');
UPDATE crm.tenant_access SET granted_by = 'postgres', created_at = '1970-01-01' WHERE login_role = 'regress_cap_free';
RESET ROLE;
SELECT login_role, granted_by, created_at > now() - interval '1 hour' AS created_by_server
  FROM crm.tenant_access WHERE login_role IN ('regress_cap_free', 'regress_cap_future') ORDER BY 1;

-- 6. A role dropped and re-created under its name inherits nothing -----------
CREATE ROLE regress_cap_temp LOGIN IN ROLE crm_reader;
SELECT crm.grant_tenant_access('regress_cap_temp', :'ta');
SET ROLE regress_cap_temp;
SELECT crm.current_tenant() = :'ta' AS acts_for_a;
RESET ROLE;
DROP ROLE regress_cap_temp;
CREATE ROLE regress_cap_temp LOGIN IN ROLE crm_reader;
SET ROLE regress_cap_temp;
SELECT crm.current_tenant() IS NULL AS no_tenant, count(*) AS accounts FROM crm.account;
RESET ROLE;
-- the dead row stays until the next grant in that tenant clears it
SELECT login_role, EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = a.role_oid) AS role_exists
  FROM crm.tenant_access a WHERE login_role = 'regress_cap_temp';
SELECT crm.grant_tenant_access('regress_cap_future', :'ta');
SELECT count(*) AS dead_rows FROM crm.tenant_access a
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = a.role_oid);

-- a renamed role is mapped again (its mapping names the role it was made for)
CREATE ROLE regress_cap_renamed LOGIN IN ROLE crm_reader;
SELECT crm.grant_tenant_access('regress_cap_renamed', :'ta');
ALTER ROLE regress_cap_renamed RENAME TO regress_cap_renamed2;
SET ROLE regress_cap_renamed2;
SELECT crm.current_tenant() IS NULL AS no_tenant_after_rename;
RESET ROLE;
DROP ROLE regress_cap_renamed2;

-- 7. An application role serves a tenant only through crm.tenant_id -----------
-- A role mapped first and made a member of crm_app later: its mapping no
-- longer applies.
GRANT crm_app TO regress_cap_free;
SET ROLE regress_cap_free;
SELECT crm.current_tenant() IS NULL AS mapping_ignored;
BEGIN;
SET LOCAL crm.tenant_id = :'tb';
SELECT crm.current_tenant() = :'tb' AS acts_for_b;
ROLLBACK;
RESET ROLE;
REVOKE crm_app FROM regress_cap_free;

-- The allow-list: the operator narrows regress_cap_app to tenant A.
INSERT INTO crm.app_access (tenant_id, app_role) VALUES (:'ta', 'regress_cap_app');
SELECT app_role, granted_by = current_user AS granted_by_operator FROM crm.app_access;
SET ROLE regress_cap_app;
BEGIN;
SET LOCAL crm.tenant_id = :'ta';
SELECT count(*) AS a_accounts FROM crm.account;
ROLLBACK;
BEGIN;
SET LOCAL crm.tenant_id = :'tb';
SELECT try('SELECT count(*) FROM crm.account');
SELECT try('INSERT INTO crm.tag (name) VALUES (''sneaked into B'')');
ROLLBACK;
RESET ROLE;
-- an app role not listed serves any tenant
SET ROLE regress_cap_app2;
BEGIN;
SET LOCAL crm.tenant_id = :'tb';
SELECT count(*) AS b_accounts FROM crm.account;
ROLLBACK;
RESET ROLE;
-- only application roles are listed, only by the operator
SELECT try(format('INSERT INTO crm.app_access (tenant_id, app_role) VALUES (%L, %L)', :'ta', 'regress_cap_alice'));
SET ROLE regress_cap_a_admin;
SELECT try(format('INSERT INTO crm.app_access (tenant_id, app_role) VALUES (%L, %L)', :'ta', 'regress_cap_app2'));
SELECT try('DELETE FROM crm.app_access');
RESET ROLE;
SELECT count(*) AS listed FROM crm.app_access;

-- 8. A session that acts for no tenant is told why ------------------------------
-- a writer that is not in crm_app and has no mapping sets crm.tenant_id:
-- ignored, with a NOTICE, and its write says why
CREATE ROLE regress_cap_nomap LOGIN IN ROLE crm_writer;
SET ROLE regress_cap_nomap;
SET crm.tenant_id = :'ta';
SELECT count(*) AS accounts FROM crm.account;
INSERT INTO crm.account (name) VALUES ('Nobody''s');
\echo :SQLSTATE
RESET crm.tenant_id;
INSERT INTO crm.account (name) VALUES ('Nobody''s');
\echo :SQLSTATE
RESET ROLE;
-- an application role that forgot SET LOCAL
SET ROLE regress_cap_app2;
INSERT INTO crm.tag (name) VALUES ('forgotten');
\echo :SQLSTATE
RESET ROLE;
-- a superuser without a tenant: the same message, not 23502 on tenant_id
INSERT INTO crm.account (name) VALUES ('Operator''s');
\echo :SQLSTATE
INSERT INTO crm.opportunity (name) VALUES ('Operator''s deal');
\echo :SQLSTATE
-- naming the tenant explicitly is how the operator provisions
INSERT INTO crm.tag (tenant_id, name) VALUES (:'ta', 'provisioned') RETURNING name;
DROP ROLE regress_cap_nomap;

-- 9. crm.user_id names a user of the tenant, or is refused where it is used ----
SET ROLE regress_cap_app2;
BEGIN;
SET LOCAL crm.tenant_id = :'tb';
SET LOCAL crm.user_id = :'ann';          -- a user of tenant A
SELECT try(format('SELECT crm.opportunity_move_stage(%L, %L)', :'b_deal', :'b_qualified'));
ROLLBACK;
BEGIN;
SET LOCAL crm.tenant_id = :'tb';
SET LOCAL crm.user_id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11';   -- nobody's
SELECT try(format('UPDATE crm.opportunity SET stage_id = %L WHERE id = %L', :'b_qualified', :'b_deal'));
ROLLBACK;
RESET ROLE;
-- nothing moved, no history
SELECT s.name AS stage, (SELECT count(*) FROM crm.stage_history h WHERE h.tenant_id = :'tb') AS history
  FROM crm.opportunity o JOIN crm.stage s ON s.tenant_id = o.tenant_id AND s.id = o.stage_id
 WHERE o.tenant_id = :'tb' AND o.id = :'b_deal';
-- a user of the tenant is recorded
SET ROLE regress_cap_app2;
BEGIN;
SET LOCAL crm.tenant_id = :'tb';
SET LOCAL crm.user_id = :'bob';
SELECT (crm.opportunity_move_stage(:'b_deal', :'b_qualified')).probability;
SELECT h.changed_by = :'bob' AS recorded_bob FROM crm.stage_history h WHERE h.opportunity_id = :'b_deal';
COMMIT;
RESET ROLE;

SELECT * FROM regress_cap_state();

-- Clean up ----------------------------------------------------------------------
DELETE FROM crm.app_access WHERE app_role LIKE 'regress\_cap\_%';
DELETE FROM crm.tenant_access WHERE login_role LIKE 'regress\_cap\_%';
DROP ROLE regress_cap_a_admin, regress_cap_b_admin, regress_cap_app, regress_cap_alice,
          regress_cap_free, regress_cap_super, regress_cap_bypass, regress_cap_member, regress_cap_group,
          regress_cap_future, regress_cap_temp, regress_cap_app2;
DROP FUNCTION regress_cap_unchanged();
DROP TABLE regress_cap_before;
DROP FUNCTION regress_cap_state();
