-- Tenancy: how crm keeps the tenants of one database apart.
--
-- Every table with a tenant_id is fenced by row-level security: a statement
-- sees and writes only the rows of crm.current_tenant(), the tenant it acts
-- for.  A statement acts for a tenant in one of two ways:
--   - its login role is mapped to the tenant with crm.grant_tenant_access()
--     (people, BI tools): the mapping decides, whatever crm.tenant_id says;
--   - its role is a member of crm_app (an application server) and has set
--     crm.tenant_id (and crm.user_id) with SET LOCAL in its transaction.
-- Anyone else acts for no tenant and sees no tenant's rows.  Superusers
-- bypass row-level security: they provision tenants, as here.

-- Three tenants with one row in every table ---------------------------------
SELECT crm.create_tenant('Tenancy A') AS ta \gset
SELECT crm.create_tenant('Tenancy B') AS tb \gset
SELECT crm.create_tenant('Tenancy C') AS tc \gset

-- As a superuser, acting for a tenant is setting crm.tenant_id (and
-- crm.user_id): every tenant_id column defaults to crm.current_tenant().
CREATE FUNCTION regress_tenancy_fill(tenant uuid, label text) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    u uuid;
    tm uuid;
    acc uuid;
    con uuid;
    ld uuid;
    opp uuid;
    tg uuid;
BEGIN
    PERFORM set_config('crm.tenant_id', tenant::text, true);
    INSERT INTO crm.app_user (name, email)
    VALUES (label || ' Owner', 'owner@' || lower(label) || '.example') RETURNING id INTO u;
    PERFORM set_config('crm.user_id', u::text, true);
    INSERT INTO crm.team (name, manager_id) VALUES (label || ' Team', u) RETURNING id INTO tm;
    INSERT INTO crm.team_member (team_id, user_id) VALUES (tm, u);
    INSERT INTO crm.currency_rate (from_currency, to_currency, rate, valid_from)
    VALUES ('EUR', 'USD', 1.10, '2025-01-01');
    INSERT INTO crm.account (name, owner_id) VALUES (label || ' Industries', u) RETURNING id INTO acc;
    -- the same e-mail address in every tenant
    INSERT INTO crm.contact (first_name, last_name, email, account_id, owner_id)
    VALUES ('Pat', label, 'pat@example.com', acc, u) RETURNING id INTO con;
    INSERT INTO crm.lead (name, company_name, expected_revenue, owner_id)
    VALUES (label || ' lead', label || ' Prospects', 1000, u) RETURNING id INTO ld;
    INSERT INTO crm.opportunity (name, account_id, contact_id, amount, owner_id)
    VALUES (label || ' deal', acc, con, 5000, u) RETURNING id INTO opp;
    INSERT INTO crm.activity (activity_type, subject, contact_id, account_id, opportunity_id, owner_id)
    VALUES ('call', 'Call ' || label, con, acc, opp, u);
    INSERT INTO crm.tag (name) VALUES ('VIP') RETURNING id INTO tg;
    INSERT INTO crm.account_tag (account_id, tag_id) VALUES (acc, tg);
    INSERT INTO crm.contact_tag (contact_id, tag_id) VALUES (con, tg);
    INSERT INTO crm.lead_tag (lead_id, tag_id) VALUES (ld, tg);
    INSERT INTO crm.opportunity_tag (opportunity_id, tag_id) VALUES (opp, tg);
    -- one stage change each: a stage_history row for the lead and the deal
    PERFORM crm.lead_move_stage(ld, s.id) FROM crm.stage s
      JOIN crm.pipeline p ON p.tenant_id = s.tenant_id AND p.id = s.pipeline_id AND p.is_default
     WHERE s.tenant_id = tenant AND s.name = 'Qualified';
    PERFORM crm.opportunity_move_stage(opp, s.id) FROM crm.stage s
      JOIN crm.pipeline p ON p.tenant_id = s.tenant_id AND p.id = s.pipeline_id AND p.is_default
     WHERE s.tenant_id = tenant AND s.name = 'Proposal';
END
$$;
SELECT regress_tenancy_fill(:'ta', 'A');
SELECT regress_tenancy_fill(:'tb', 'B');
SELECT regress_tenancy_fill(:'tc', 'C');
RESET crm.tenant_id;
RESET crm.user_id;

-- The roles --------------------------------------------------------------
-- Per tenant: a reader, a writer, an admin and a BI tool, each a login role
-- mapped to its tenant (the first three as the tenant's CRM user), and an
-- application role that chooses its tenant itself.  One more login role is
-- a member of crm_reader but mapped to no tenant.
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_ten_a_reader, regress_ten_a_writer, regress_ten_a_admin, regress_ten_a_bi,
          regress_ten_a_app, regress_ten_b_reader, regress_ten_b_writer, regress_ten_b_admin, regress_ten_b_bi,
          regress_ten_b_app, regress_ten_c_reader, regress_ten_c_writer, regress_ten_c_admin, regress_ten_c_bi,
          regress_ten_c_app, regress_ten_nobody;
RESET client_min_messages;
CREATE ROLE regress_ten_a_reader LOGIN IN ROLE crm_reader;
CREATE ROLE regress_ten_a_writer LOGIN IN ROLE crm_writer;
CREATE ROLE regress_ten_a_admin LOGIN IN ROLE crm_admin;
CREATE ROLE regress_ten_a_bi LOGIN IN ROLE crm_reader;
CREATE ROLE regress_ten_a_app LOGIN IN ROLE crm_app, crm_writer;
CREATE ROLE regress_ten_b_reader LOGIN IN ROLE crm_reader;
CREATE ROLE regress_ten_b_writer LOGIN IN ROLE crm_writer;
CREATE ROLE regress_ten_b_admin LOGIN IN ROLE crm_admin;
CREATE ROLE regress_ten_b_bi LOGIN IN ROLE crm_reader;
CREATE ROLE regress_ten_b_app LOGIN IN ROLE crm_app, crm_writer;
CREATE ROLE regress_ten_c_reader LOGIN IN ROLE crm_reader;
CREATE ROLE regress_ten_c_writer LOGIN IN ROLE crm_writer;
CREATE ROLE regress_ten_c_admin LOGIN IN ROLE crm_admin;
CREATE ROLE regress_ten_c_bi LOGIN IN ROLE crm_reader;
CREATE ROLE regress_ten_c_app LOGIN IN ROLE crm_app, crm_writer;
CREATE ROLE regress_ten_nobody LOGIN IN ROLE crm_reader;

SELECT count(*) AS mappings_granted FROM (
    SELECT crm.grant_tenant_access(
               format('regress_ten_%s_%s', lower(right(t.name, 1)), r.kind), t.tenant_id,
               CASE WHEN r.kind <> 'bi' THEN u.id END)
      FROM crm.tenant t
      JOIN crm.app_user u ON u.tenant_id = t.tenant_id
     CROSS JOIN unnest(ARRAY['reader', 'writer', 'admin', 'bi']) AS r(kind)
     WHERE t.tenant_id IN (:'ta', :'tb', :'tc')) s;
SELECT t.name AS tenant, a.login_role, u.name AS acts_as
  FROM crm.tenant_access a
  JOIN crm.tenant t ON t.tenant_id = a.tenant_id
  LEFT JOIN crm.app_user u ON u.tenant_id = a.tenant_id AND u.id = a.user_id
 WHERE a.login_role LIKE 'regress\_ten\_%'
 ORDER BY a.login_role;

-- What a role sees ---------------------------------------------------------
-- regress_tenancy_rows() counts, with the rights of whoever calls it, the
-- rows per tenant of every table and view of schema crm that has a
-- tenant_id; the list is read from pg_class, so a new table is checked
-- without changing this file.
CREATE FUNCTION regress_tenancy_rows() RETURNS TABLE (relname name, tenant_id uuid, n bigint)
    LANGUAGE plpgsql AS $$
DECLARE
    r name;
BEGIN
    FOR r IN SELECT c.relname FROM pg_class c
              WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind IN ('r', 'v')
                AND EXISTS (SELECT 1 FROM pg_attribute a
                             WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
              ORDER BY c.relname
    LOOP
        RETURN QUERY EXECUTE format('SELECT %L::name, t.tenant_id, count(*) FROM crm.%I t GROUP BY t.tenant_id',
                                    r, r);
    END LOOP;
END
$$;

-- The other relations of crm are the global lookups, shared by all tenants.
SELECT c.relname, c.relkind FROM pg_class c
 WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind IN ('r', 'v')
   AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id')
 ORDER BY 1;

-- What is stored, as the superuser sees it: the same rows in each tenant.
CREATE TABLE regress_tenancy_truth AS
SELECT * FROM regress_tenancy_rows() WHERE tenant_id IN (:'ta', :'tb', :'tc');
GRANT SELECT ON regress_tenancy_truth TO PUBLIC;
SELECT relname,
       sum(n) FILTER (WHERE tenant_id = :'ta') AS a,
       sum(n) FILTER (WHERE tenant_id = :'tb') AS b,
       sum(n) FILTER (WHERE tenant_id = :'tc') AS c
  FROM regress_tenancy_truth GROUP BY relname ORDER BY relname;

-- One line per role: how many relations were read, how many rows of its own
-- tenant it saw, the relations where it saw a row of any other tenant (of
-- this file or any other), and those where it saw a different number of
-- its own tenant's rows than are stored (tenant_access aside: a role sees
-- its own mappings, an admin all of its tenant's).
CREATE FUNCTION regress_tenancy_check(own uuid)
    RETURNS TABLE (relations bigint, own_rows numeric, foreign_rows_in name[], own_rows_differ_in name[])
    LANGUAGE sql AS $$
    WITH seen AS (SELECT * FROM regress_tenancy_rows()),
    mine AS (SELECT relname, n FROM seen WHERE tenant_id = own),
    stored AS (SELECT relname, n FROM regress_tenancy_truth WHERE tenant_id = own)
    SELECT (SELECT count(DISTINCT relname) FROM regress_tenancy_truth),
           coalesce((SELECT sum(n) FROM mine), 0),
           coalesce((SELECT array_agg(DISTINCT relname ORDER BY relname) FROM seen
                      WHERE tenant_id IS DISTINCT FROM own), '{}'),
           coalesce((SELECT array_agg(relname ORDER BY relname)
                       FROM mine FULL JOIN stored USING (relname)
                      WHERE relname <> 'tenant_access' AND own IS NOT NULL
                        AND mine.n IS DISTINCT FROM stored.n), '{}')
$$;

-- Readers, writers, admins and BI tools of each tenant: their own tenant's
-- rows, all of them, and nothing else; each sees its own mapping, an admin
-- every mapping of its tenant.
SET ROLE regress_ten_a_reader;
SELECT * FROM regress_tenancy_check(:'ta');
SELECT login_role FROM crm.tenant_access ORDER BY 1;
SET ROLE regress_ten_a_writer;
SELECT * FROM regress_tenancy_check(:'ta');
SET ROLE regress_ten_a_admin;
SELECT * FROM regress_tenancy_check(:'ta');
SELECT login_role FROM crm.tenant_access ORDER BY 1;
SET ROLE regress_ten_a_bi;
SELECT * FROM regress_tenancy_check(:'ta');
SET ROLE regress_ten_b_reader;
SELECT * FROM regress_tenancy_check(:'tb');
SET ROLE regress_ten_b_writer;
SELECT * FROM regress_tenancy_check(:'tb');
SET ROLE regress_ten_b_admin;
SELECT * FROM regress_tenancy_check(:'tb');
SELECT login_role FROM crm.tenant_access ORDER BY 1;
SET ROLE regress_ten_b_bi;
SELECT * FROM regress_tenancy_check(:'tb');
SET ROLE regress_ten_c_reader;
SELECT * FROM regress_tenancy_check(:'tc');
SET ROLE regress_ten_c_writer;
SELECT * FROM regress_tenancy_check(:'tc');
SET ROLE regress_ten_c_admin;
SELECT * FROM regress_tenancy_check(:'tc');
SET ROLE regress_ten_c_bi;
SELECT * FROM regress_tenancy_check(:'tc');
RESET ROLE;

-- An application role acts for the tenant it sets in its transaction.
SET ROLE regress_ten_a_app;
BEGIN;
SET LOCAL crm.tenant_id = :'ta';
SELECT * FROM regress_tenancy_check(:'ta');
SELECT login_role FROM crm.tenant_access ORDER BY 1;
COMMIT;
SET ROLE regress_ten_b_app;
BEGIN;
SET LOCAL crm.tenant_id = :'tb';
SELECT * FROM regress_tenancy_check(:'tb');
COMMIT;
SET ROLE regress_ten_c_app;
BEGIN;
SET LOCAL crm.tenant_id = :'tc';
SELECT * FROM regress_tenancy_check(:'tc');
COMMIT;
-- The setting lasts for the transaction only: the next one acts for no
-- tenant until it sets one, so a pooled connection carries nothing over.
SELECT * FROM regress_tenancy_check(NULL);
RESET ROLE;

-- The kanban boards and the dashboard are views with security_invoker:
-- they show the caller's tenant only.
SET ROLE regress_ten_a_writer;
SELECT tenant_id = :'ta' AS own_tenant, pipeline_name, stage_name, count, amount, weighted_amount
  FROM crm.opportunity_kanban WHERE count > 0;
SELECT tenant_id = :'ta' AS own_tenant, pipeline_name, stage_name, count, amount
  FROM crm.lead_kanban WHERE count > 0;
SELECT tenant_id = :'ta' AS own_tenant, total_leads, active_leads, open_opportunities_count,
       open_opportunities_value, jsonb_array_length(pipeline_distribution) AS open_stages
  FROM crm.dashboard;
SELECT count(*) AS kanban_rows, count(DISTINCT tenant_id) AS tenants FROM crm.opportunity_kanban;
RESET ROLE;

-- Who acts for no tenant sees nothing ----------------------------------------
-- a login role that is a member of crm_reader but mapped to no tenant
SET ROLE regress_ten_nobody;
SELECT crm.current_tenant() IS NULL AS no_tenant;
SELECT * FROM regress_tenancy_check(NULL);
-- setting crm.tenant_id does not help: only crm_app members may choose
SET crm.tenant_id = :'ta';
SELECT crm.current_tenant() IS NULL AS no_tenant;
SELECT * FROM regress_tenancy_check(NULL);
RESET crm.tenant_id;
RESET ROLE;

-- an application role that has not set its tenant: sees nothing, writes nothing
SET ROLE regress_ten_a_app;
SELECT crm.current_tenant() IS NULL AS no_tenant;
SELECT * FROM regress_tenancy_check(NULL);
INSERT INTO crm.account (name) VALUES ('Nobody''s account');
\echo :SQLSTATE
INSERT INTO crm.account (tenant_id, name) VALUES (:'ta', 'Nobody''s account');
\echo :SQLSTATE
UPDATE crm.account SET name = 'Taken' WHERE tenant_id = :'ta' RETURNING name;
DELETE FROM crm.account WHERE tenant_id = :'ta' RETURNING name;
RESET ROLE;

-- A mapped role that sets crm.tenant_id to another tenant gains nothing:
-- the setting only chooses among the role's own mappings.
SET ROLE regress_ten_a_bi;
SELECT * FROM regress_tenancy_check(:'ta');
SET crm.tenant_id = :'tb';
SELECT * FROM regress_tenancy_check(:'ta');
RESET crm.tenant_id;
RESET ROLE;

-- A role mapped to two tenants chooses one with crm.tenant_id; until it
-- chooses, or when it names a tenant it is not mapped to, it acts for none.
-- (It sees its own mappings in tenant_access, the other tenant's included.)
SELECT crm.grant_tenant_access('regress_ten_b_bi', :'tc');
SET ROLE regress_ten_b_bi;
SELECT crm.current_tenant() IS NULL AS no_tenant;
SET crm.tenant_id = :'tc';
SELECT * FROM regress_tenancy_check(:'tc');
SET crm.tenant_id = :'tb';
SELECT * FROM regress_tenancy_check(:'tb');
SET crm.tenant_id = :'ta';
SELECT crm.current_tenant() IS NULL AS no_tenant;
RESET crm.tenant_id;
RESET ROLE;
SELECT crm.revoke_tenant_access('regress_ten_b_bi', :'tc');

-- A value that is not a uuid is an error, not a silent "no tenant".
SET ROLE regress_ten_a_app;
BEGIN;
SET LOCAL crm.tenant_id = 'tenancy-a';
SELECT count(*) FROM crm.account;
\echo :SQLSTATE
ROLLBACK;
BEGIN;
SET LOCAL crm.tenant_id = :'ta';
SET LOCAL crm.user_id = 'alice';
SELECT count(*) FROM crm.account;
\echo :SQLSTATE
ROLLBACK;
RESET ROLE;

-- Writing into another tenant -----------------------------------------------
-- Rows of another tenant cannot be read, so they cannot be updated or
-- deleted either (0 rows); a row cannot be inserted into, or moved to,
-- another tenant (the policy's WITH CHECK: SQLSTATE 42501); and a row cannot
-- point at another tenant's row (every foreign key carries tenant_id).  The
-- errors show no key values: under row-level security PostgreSQL leaves
-- them out of the DETAIL.
SELECT id AS b_account FROM crm.account WHERE tenant_id = :'tb' \gset
SET ROLE regress_ten_a_writer;
UPDATE crm.account SET name = 'Taken over' WHERE tenant_id = :'tb' RETURNING name;
UPDATE crm.account SET name = 'Taken over' WHERE id = :'b_account' RETURNING name;
DELETE FROM crm.opportunity WHERE tenant_id = :'tb' RETURNING name;
INSERT INTO crm.account (tenant_id, name) VALUES (:'tb', 'Planted in B');
\echo :SQLSTATE
UPDATE crm.account SET tenant_id = :'tb' WHERE tenant_id = :'ta';
\echo :SQLSTATE
UPDATE crm.contact SET account_id = :'b_account' WHERE tenant_id = :'ta';
\echo :SQLSTATE
-- the history is the extension's to write
INSERT INTO crm.stage_history (lead_id, pipeline_id, from_stage_id, to_stage_id, currency, probability)
SELECT id, pipeline_id, stage_id, stage_id, currency, probability FROM crm.lead;
\echo :SQLSTATE
RESET ROLE;

-- the same for an application role acting for A
SET ROLE regress_ten_a_app;
BEGIN;
SET LOCAL crm.tenant_id = :'ta';
UPDATE crm.account SET name = 'Taken over' WHERE id = :'b_account' RETURNING name;
INSERT INTO crm.tag (tenant_id, name) VALUES (:'tb', 'Planted in B');
\echo :SQLSTATE
ROLLBACK;
BEGIN;
SET LOCAL crm.tenant_id = :'ta';
UPDATE crm.tag SET tenant_id = :'tb';
\echo :SQLSTATE
ROLLBACK;
RESET ROLE;

-- a reader writes nothing; an admin manages its own tenant only
SET ROLE regress_ten_a_reader;
INSERT INTO crm.tag (name) VALUES ('Reader''s tag');
\echo :SQLSTATE
SET ROLE regress_ten_a_admin;
UPDATE crm.tenant SET name = 'Renamed B' WHERE tenant_id = :'tb' RETURNING name;
UPDATE crm.tenant SET tenant_id = :'tb';
\echo :SQLSTATE
INSERT INTO crm.app_user (tenant_id, name) VALUES (:'tb', 'Spy');
\echo :SQLSTATE
SELECT crm.revoke_tenant_access('regress_ten_b_bi', :'tb') AS revoked_in_b;
-- (to A's admin, tenant B does not exist)
SELECT try(format('SELECT crm.grant_tenant_access(%L, %L)', 'regress_ten_a_bi', :'tb'));
RESET ROLE;

-- nothing of B changed
SELECT a.name, (SELECT count(*) FROM crm.tag g WHERE g.tenant_id = :'tb') AS tags,
       (SELECT count(*) FROM crm.tenant_access x WHERE x.tenant_id = :'tb') AS mappings
  FROM crm.account a WHERE a.tenant_id = :'tb';
SELECT name FROM crm.tenant WHERE tenant_id = :'tb';

-- Unique constraints are per tenant -------------------------------------------
-- Each tenant has a contact pat@example.com; within one tenant the address
-- is unique (case-insensitive).  The error names the constraint but, under
-- row-level security, shows no key values (no DETAIL line).
SELECT count(*) AS contacts_with_that_address FROM crm.contact
 WHERE lower(email) = 'pat@example.com' AND tenant_id IN (:'ta', :'tb', :'tc');
SET ROLE regress_ten_a_writer;
INSERT INTO crm.contact (first_name, email) VALUES ('Patricia', 'PAT@example.com');
\echo :SQLSTATE
INSERT INTO crm.contact (first_name, email) VALUES ('Sam', 'sam@example.com');
SET ROLE regress_ten_b_writer;
INSERT INTO crm.contact (first_name, email) VALUES ('Sam', 'sam@example.com');
RESET ROLE;
SELECT t.name AS tenant, c.first_name FROM crm.contact c JOIN crm.tenant t USING (tenant_id)
 WHERE c.email = 'sam@example.com' ORDER BY 1;

-- Revoking a mapping takes effect at the next statement ------------------------
-- (even inside a transaction of the role that loses it)
SET ROLE regress_ten_a_bi;
BEGIN;
SELECT crm.current_tenant() = :'ta' AS acts_for_a, count(*) AS accounts FROM crm.account;
SET ROLE regress_ten_a_admin;
SELECT crm.revoke_tenant_access('regress_ten_a_bi', :'ta') AS revoked;
SET ROLE regress_ten_a_bi;
SELECT crm.current_tenant() IS NULL AS no_tenant, count(*) AS accounts FROM crm.account;
COMMIT;
RESET ROLE;
SET ROLE regress_ten_a_admin;
SELECT crm.revoke_tenant_access('regress_ten_a_admin', :'ta') AS revoked_own;
SELECT crm.current_tenant() IS NULL AS no_tenant, count(*) AS accounts FROM crm.account;
RESET ROLE;

-- Private visibility ---------------------------------------------------------
-- In a private tenant a user sees the records they own, those owned by
-- people who report to them (through app_user.manager_id or a team they
-- lead, at any depth) and unowned records; crm_admin sees all.
SET ROLE regress_ten_c_admin;
UPDATE crm.tenant SET visibility = 'private';
INSERT INTO crm.app_user (name) VALUES ('Mia Manager') RETURNING id AS mia \gset
INSERT INTO crm.app_user (name, manager_id) VALUES ('Raj Rep', :'mia') RETURNING id AS raj \gset
INSERT INTO crm.app_user (name, manager_id) VALUES ('Jo Junior', :'raj') RETURNING id AS jo \gset
INSERT INTO crm.app_user (name) VALUES ('Tess Teammate') RETURNING id AS tess \gset
INSERT INTO crm.app_user (name) VALUES ('Olga Outsider') RETURNING id AS olga \gset
INSERT INTO crm.team (name, manager_id) VALUES ('Mia''s team', :'mia') RETURNING id AS mias_team \gset
INSERT INTO crm.team_member (team_id, user_id) VALUES (:'mias_team', :'tess');
INSERT INTO crm.account (name, owner_id)
SELECT u.name || '''s account', u.id FROM crm.app_user u WHERE u.id IN (:'mia', :'raj', :'jo', :'tess', :'olga');
INSERT INTO crm.account (name) VALUES ('Unowned account');
INSERT INTO crm.opportunity (name, owner_id) VALUES ('Jo''s deal', :'jo'), ('Olga''s deal', :'olga');
-- crm_admin sees every record of the tenant
SELECT name FROM crm.account ORDER BY name;
RESET ROLE;

-- Jo, a rep with no reports: own and unowned records only
SET ROLE regress_ten_c_app;
BEGIN;
SET LOCAL crm.tenant_id = :'tc';
SET LOCAL crm.user_id = :'jo';
SELECT name FROM crm.account ORDER BY name;
SELECT name FROM crm.opportunity ORDER BY name;
-- what Jo cannot see, Jo cannot change
UPDATE crm.account SET phone = '555' WHERE owner_id IN (:'olga', :'raj') RETURNING name;
DELETE FROM crm.opportunity WHERE owner_id = :'olga' RETURNING name;
-- and Jo cannot give a record to someone outside Jo's subtree
INSERT INTO crm.account (name, owner_id) VALUES ('Gift for Olga', :'olga');
\echo :SQLSTATE
ROLLBACK;
BEGIN;
SET LOCAL crm.tenant_id = :'tc';
SET LOCAL crm.user_id = :'jo';
UPDATE crm.account SET owner_id = :'olga' WHERE owner_id = :'jo';
\echo :SQLSTATE
ROLLBACK;

-- Raj: own, Jo's (who reports to Raj) and unowned
BEGIN;
SET LOCAL crm.tenant_id = :'tc';
SET LOCAL crm.user_id = :'raj';
SELECT name FROM crm.account ORDER BY name;
ROLLBACK;

-- Mia: own, Raj's and Jo's (transitively), Tess's (her team) and unowned;
-- she may hand a record to anyone below her
BEGIN;
SET LOCAL crm.tenant_id = :'tc';
SET LOCAL crm.user_id = :'mia';
SELECT name FROM crm.account ORDER BY name;
SELECT name FROM crm.opportunity ORDER BY name;
INSERT INTO crm.account (name, owner_id) VALUES ('Handed to Jo', :'jo') RETURNING name;
UPDATE crm.account SET phone = '555' WHERE owner_id = :'olga' RETURNING name;
ROLLBACK;

-- no CRM user set: unowned records only
BEGIN;
SET LOCAL crm.tenant_id = :'tc';
SELECT name FROM crm.account ORDER BY name;
ROLLBACK;
RESET ROLE;

-- a mapped login role acts as the CRM user of its mapping (C Owner)
SET ROLE regress_ten_c_reader;
SELECT name FROM crm.account ORDER BY name;
RESET ROLE;

-- Replication: derived data is not derived twice ------------------------------
-- A row applied with session_replication_role = replica (logical replication,
-- some restores) already carries its derived data.  Triggers do not fire in
-- that mode, and those a DBA marks ENABLE ALWAYS do no work.
BEGIN;
ALTER TABLE crm.opportunity ENABLE ALWAYS TRIGGER stage_sync;
ALTER TABLE crm.opportunity ENABLE ALWAYS TRIGGER stage_history;
ALTER TABLE crm.opportunity ENABLE ALWAYS TRIGGER touch_updated_at;
SELECT count(*) AS history_before FROM crm.stage_history WHERE tenant_id = :'tb' \gset
SET session_replication_role = replica;
UPDATE crm.opportunity o SET stage_id = s.id
  FROM crm.stage s
 WHERE o.tenant_id = :'tb' AND s.tenant_id = o.tenant_id AND s.pipeline_id = o.pipeline_id
   AND s.name = 'Negotiation';
-- the stage moved; probability is still Proposal's 50, updated_at unchanged, no history
SELECT s.name AS stage, o.probability, o.updated_at = now() AS touched,
       (SELECT count(*) FROM crm.stage_history h WHERE h.tenant_id = :'tb') - :history_before
           AS new_history_rows
  FROM crm.opportunity o JOIN crm.stage s ON s.tenant_id = o.tenant_id AND s.id = o.stage_id
 WHERE o.tenant_id = :'tb';
ALTER TABLE crm.opportunity ENABLE TRIGGER stage_sync;
ALTER TABLE crm.opportunity ENABLE TRIGGER stage_history;
ALTER TABLE crm.opportunity ENABLE TRIGGER touch_updated_at;
RESET session_replication_role;
-- back in origin mode the same kind of change does the work
UPDATE crm.opportunity o SET stage_id = s.id
  FROM crm.stage s
 WHERE o.tenant_id = :'tb' AND s.tenant_id = o.tenant_id AND s.pipeline_id = o.pipeline_id
   AND s.name = 'Proposal';
SELECT s.name AS stage, o.probability, o.updated_at = now() AS touched,
       (SELECT count(*) FROM crm.stage_history h WHERE h.tenant_id = :'tb') - :history_before
           AS new_history_rows
  FROM crm.opportunity o JOIN crm.stage s ON s.tenant_id = o.tenant_id AND s.id = o.stage_id
 WHERE o.tenant_id = :'tb';
COMMIT;
SELECT tgname, tgenabled FROM pg_trigger
 WHERE tgrelid = 'crm.opportunity'::regclass AND NOT tgisinternal ORDER BY tgname;
SHOW session_replication_role;

-- Clean up: the roles are cluster-wide --------------------------------------
DELETE FROM crm.tenant_access WHERE login_role LIKE 'regress\_ten\_%';
DROP ROLE regress_ten_a_reader, regress_ten_a_writer, regress_ten_a_admin, regress_ten_a_bi, regress_ten_a_app,
          regress_ten_b_reader, regress_ten_b_writer, regress_ten_b_admin, regress_ten_b_bi, regress_ten_b_app,
          regress_ten_c_reader, regress_ten_c_writer, regress_ten_c_admin, regress_ten_c_bi, regress_ten_c_app,
          regress_ten_nobody;
DROP FUNCTION regress_tenancy_check(uuid);
DROP TABLE regress_tenancy_truth;
DROP FUNCTION regress_tenancy_rows();
DROP FUNCTION regress_tenancy_fill(uuid, text);
