-- test/pgtap/tenancy.sql: the shape of the tenant fences (issue 8 items 1
-- and 3, issue 9's rules for policies).
--
--   * every policy is a plain predicate: no sub-select, and the only
--     functions it calls are the node-local C functions current_tenant(),
--     current_user_id() and is_admin() (Citus refuses sub-selects in
--     policies, and a function reading a distributed table from a shard);
--   * every table that hangs off a record carries visible_to, a
--     tenant_isolation policy that checks it, and the triggers that keep it;
--   * crm.tenant_access is keyed by the role's OID and guarded by its
--     trigger on every path; crm.app_access is the operator's only;
--   * every tenant table refuses, with the reason, a row from a session that
--     acts for no tenant;
--   * the SECURITY DEFINER visibility triggers are executable by no crm role.

BEGIN;
SELECT crm.setup_roles();
SET LOCAL search_path = public, pg_catalog;

CREATE TEMP VIEW policy_expr AS
SELECT p.polrelid::regclass::text AS tbl, p.polname::text AS policy, e.expr
  FROM pg_policy p
  JOIN pg_class c ON c.oid = p.polrelid AND c.relnamespace = 'crm'::regnamespace
 CROSS JOIN LATERAL (VALUES (pg_get_expr(p.polqual, p.polrelid)),
                            (pg_get_expr(p.polwithcheck, p.polrelid))) e(expr)
 WHERE e.expr IS NOT NULL;

-- The tables whose rows hang off records or are records.
CREATE TEMP TABLE visibility_table (tbl name PRIMARY KEY);
INSERT INTO visibility_table VALUES
    ('account'), ('contact'), ('lead'), ('opportunity'), ('activity'),
    ('account_tag'), ('contact_tag'), ('lead_tag'), ('opportunity_tag'), ('stage_history');

SELECT plan(12 + 3 * (SELECT count(*)::int FROM visibility_table));

-- Policies ---------------------------------------------------------------------

SELECT is_empty(
    $$SELECT tbl, policy, expr FROM policy_expr WHERE expr ~* '\mselect\M' ORDER BY 1, 2$$,
    'no crm policy has a sub-select');

SELECT is_empty(
    $$SELECT DISTINCT tbl, policy, m[1] AS function
        FROM policy_expr, regexp_matches(expr, '([a-z_]+\.?[a-z_]+)\(', 'g') m
       WHERE m[1] NOT IN ('crm.current_tenant', 'crm.current_user_id', 'crm.is_admin', 'crm.is_service')
       ORDER BY 1, 2$$,
    'crm policies call no function but crm.current_tenant(), crm.current_user_id(), crm.is_admin() and crm.is_service()');

SELECT set_eq(
    $$SELECT p.oid::regprocedure::text, (SELECT l.lanname::text FROM pg_language l WHERE l.oid = p.prolang), p.provolatile::text
        FROM pg_proc p WHERE p.oid IN ('crm.current_tenant()'::regprocedure, 'crm.current_user_id()'::regprocedure,
                                       'crm.is_admin()'::regprocedure)$$,
    $$VALUES ('crm.current_tenant()', 'c', 's'), ('crm.current_user_id()', 'c', 's'), ('crm.is_admin()', 'c', 's')$$,
    'the functions policies call are STABLE C functions (node-local state; they query no table)');

SELECT col_type_is('crm', tbl, 'visible_to', 'uuid[]', format('crm.%I.visible_to is uuid[]', tbl))
  FROM visibility_table ORDER BY tbl;

SELECT is(
    (SELECT array_agg(pg_get_expr(p.polqual, p.polrelid)) FROM pg_policy p
      WHERE p.polrelid = format('crm.%I', v.tbl)::regclass),
    ARRAY['((tenant_id = crm.current_tenant()) AND ((visible_to IS NULL) OR (crm.current_user_id() = ANY (visible_to)) OR crm.is_admin()))'],
    format('crm.%I has one policy, permissive, checking tenant and visible_to', v.tbl))
  FROM visibility_table v ORDER BY v.tbl;

SELECT ok(EXISTS (SELECT 1 FROM pg_trigger t
                   WHERE t.tgrelid = format('crm.%I', v.tbl)::regclass AND t.tgname = 'visibility'
                     AND t.tgfoid = 'crm.visibility_row()'::regprocedure
                     AND encode(t.tgargs, 'escape') LIKE v.tbl || '\\000%'),
          format('crm.%I derives visible_to in its visibility trigger', v.tbl))
  FROM visibility_table v ORDER BY v.tbl;

SELECT set_eq(
    $$SELECT t.tgrelid::regclass::text FROM pg_trigger t WHERE t.tgname = 'visibility_delete_guard'$$,
    ARRAY['crm.account', 'crm.contact', 'crm.lead', 'crm.opportunity'],
    'deleting a record is guarded on every record table');

SELECT set_eq(
    $$SELECT t.tgrelid::regclass::text FROM pg_trigger t WHERE t.tgname = 'visibility_hierarchy'$$,
    ARRAY['crm.app_user', 'crm.team', 'crm.team_member', 'crm.tenant'],
    'owner chains follow users, teams, memberships and the tenant''s visibility');

-- Mappings -----------------------------------------------------------------------

SELECT col_is_pk('crm', 'tenant_access', ARRAY['tenant_id', 'role_oid'],
    'a mapping is keyed by the role''s OID, not its name');

SELECT set_eq(
    $$SELECT t.tgrelid::regclass::text, t.tgenabled::text,
             encode(t.tgargs, 'escape')
        FROM pg_trigger t WHERE t.tgfoid = 'crm.tenant_access_check()'::regprocedure$$,
    $$VALUES ('crm.tenant_access', 'O', 'mapping\000'), ('crm.app_access', 'O', 'app\000')$$,
    'crm.tenant_access and crm.app_access are checked by the mapping trigger on every INSERT and UPDATE');

SELECT is_empty(
    $$SELECT r.role, x.p FROM unnest(ARRAY['crm_reader', 'crm_writer', 'crm_admin', 'crm_app']) r(role),
             unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) x(p)
       WHERE has_table_privilege(r.role, 'crm.app_access', x.p)$$,
    'no crm role may write crm.app_access: the allow-list is the operator''s');

SELECT is_empty(
    $$SELECT c.relname FROM pg_class c
       WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind = 'r'
         AND c.relname NOT IN ('tenant', 'tenant_access', 'app_access')
         AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
         AND NOT EXISTS (SELECT 1 FROM pg_trigger t
                          WHERE t.tgrelid = c.oid AND t.tgfoid = 'crm.tenant_require()'::regprocedure
                            AND t.tgname = '_tenant_required')
       ORDER BY 1$$,
    'every tenant table says why a session that acts for no tenant cannot write (trigger _tenant_required)');

SELECT is_empty(
    $$SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
       WHERE c.relnamespace = 'crm'::regnamespace AND NOT t.tgisinternal
         AND t.tgtype & 2 <> 0 AND t.tgtype & 4 <> 0        -- BEFORE INSERT
         AND t.tgname < '_tenant_required'
         AND EXISTS (SELECT 1 FROM pg_trigger r WHERE r.tgrelid = c.oid AND r.tgname = '_tenant_required')
       ORDER BY 1, 2$$,
    'the tenant check is the first BEFORE INSERT trigger of its table');

-- SECURITY DEFINER ----------------------------------------------------------------

SELECT is_empty(
    $$SELECT p.oid::regprocedure, r.role FROM pg_proc p,
             unnest(ARRAY['crm_reader', 'crm_writer', 'crm_admin', 'crm_app', 'public']) r(role)
       WHERE p.pronamespace = 'crm'::regnamespace AND p.prosecdef
         AND has_function_privilege(r.role, p.oid, 'EXECUTE')$$,
    'no role may call a SECURITY DEFINER visibility function directly');

SELECT is_empty(
    $$SELECT p.oid::regprocedure FROM pg_proc p
       WHERE p.pronamespace = 'crm'::regnamespace AND p.prosecdef
         AND (p.prorettype <> 'trigger'::regtype AND p.proname NOT LIKE 'visibility\_refresh%')$$,
    'the SECURITY DEFINER functions are the visibility triggers and the refresh they call');

SELECT * FROM finish();
ROLLBACK;
