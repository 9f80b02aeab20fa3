-- What statistics tell other tenants (issue 8, item 6).
--
-- Row-level security filters rows, not statistics.  pg_stats shows the most
-- common values and histogram of every column of a table to any role that
-- may SELECT it, and pg_stat_user_tables (and the pg_stat_get_* functions
-- under it) count every tenant's rows and writes.  crm.setup_roles() (run
-- by CREATE EXTENSION when the crm roles exist) takes those views and
-- functions away from PUBLIC in the database and gives them to
-- pg_read_all_stats.  What PostgreSQL gives to everyone regardless
-- (pg_class.reltuples, planner estimates) is shown last, as the README's
-- security section documents it.
SELECT current_database() AS regress_db, current_user AS regress_su \gset
SET client_min_messages = warning;
DROP DATABASE IF EXISTS regress_stats;
DROP ROLE IF EXISTS regress_stats_app, regress_stats_monitor;
RESET client_min_messages;
CREATE ROLE regress_stats_app LOGIN IN ROLE crm_app, crm_reader;
CREATE ROLE regress_stats_monitor LOGIN IN ROLE crm_reader, pg_read_all_stats;
CREATE DATABASE regress_stats TEMPLATE template0;
\c regress_stats

-- Before: PostgreSQL lets every role read them ------------------------------------
SELECT has_table_privilege('crm_reader', 'pg_catalog.pg_stats', 'SELECT') AS pg_stats,
       has_table_privilege('crm_reader', 'pg_catalog.pg_stat_user_tables', 'SELECT') AS pg_stat_user_tables,
       has_function_privilege('crm_reader', 'pg_catalog.pg_stat_get_live_tuples(oid)', 'EXECUTE') AS live_tuples;

-- The crm roles exist (00_setup made them), so installing runs setup_roles()
CREATE EXTENSION crm;

-- After: none of the per-table statistics views or counters is PUBLIC's --------------
SELECT c.relname AS view,
       has_table_privilege('crm_reader', c.oid, 'SELECT') AS reader,
       has_table_privilege('crm_writer', c.oid, 'SELECT') AS writer,
       has_table_privilege('crm_admin', c.oid, 'SELECT') AS admin,
       has_table_privilege('crm_app', c.oid, 'SELECT') AS app,
       has_table_privilege('pg_read_all_stats', c.oid, 'SELECT') AS read_all_stats
  FROM pg_class c
 WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind = 'v'
   AND (c.relname LIKE 'pg\_stat%\_tables' OR c.relname LIKE 'pg\_stat%\_indexes'
        OR c.relname LIKE 'pg\_stat%\_sequences' OR c.relname LIKE 'pg\_stats%'
        OR c.relname LIKE 'pg\_stat%\_user\_functions')
 ORDER BY 1;
SELECT count(*) AS counters,
       count(*) FILTER (WHERE has_function_privilege('crm_reader', p.oid, 'EXECUTE')) AS reader_may_call,
       count(*) FILTER (WHERE has_function_privilege('pg_read_all_stats', p.oid, 'EXECUTE')) AS read_all_stats_may_call
  FROM pg_proc p
 WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname LIKE 'pg\_stat\_get\_%'
   AND p.pronargs = 1 AND p.proargtypes[0] = 'oid'::regtype AND p.proname NOT LIKE 'pg\_stat\_get\_db\_%'
   AND p.proname NOT LIKE 'pg\_stat\_get\_subscription%';
-- the database-wide views stay readable (they say nothing per table)
SELECT has_table_privilege('crm_reader', 'pg_catalog.pg_stat_database', 'SELECT') AS pg_stat_database,
       has_table_privilege('crm_reader', 'pg_catalog.pg_stat_activity', 'SELECT') AS pg_stat_activity;
-- idempotent
SELECT crm.setup_roles();
SELECT crm.revoke_statistics_access();

-- Two tenants: A with 2 accounts, B with 50 in an industry A should not learn about
SELECT crm.create_tenant('Stats A') AS ta \gset
SELECT crm.create_tenant('Stats B') AS tb \gset
INSERT INTO crm.account (tenant_id, name, industry)
SELECT :'ta', 'A' || i, 'technology' FROM generate_series(1, 2) i;
INSERT INTO crm.account (tenant_id, name, industry)
SELECT :'tb', 'B' || i, 'healthcare' FROM generate_series(1, 50) i;
ANALYZE crm.account;
SELECT pg_stat_force_next_flush();
-- (as a superuser: what the planner knows)
SELECT most_common_vals FROM pg_stats
 WHERE schemaname = 'crm' AND tablename = 'account' AND attname = 'industry';
-- the planner's row estimate for a query, as any role may ask for it
CREATE FUNCTION public.estimated_rows(query text) RETURNS numeric
    LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
    plan json;
BEGIN
    EXECUTE 'EXPLAIN (FORMAT JSON) ' || query INTO plan;
    RETURN (plan -> 0 -> 'Plan' ->> 'Plan Rows')::numeric;
END
$$;

-- Tenant A's application, in a session of its own ------------------------------------
\c regress_stats regress_stats_app
\set SHOW_CONTEXT never
BEGIN;
SET LOCAL crm.tenant_id = :'ta';
SELECT count(*) AS my_accounts FROM crm.account;
SAVEPOINT s;
SELECT most_common_vals FROM pg_stats WHERE schemaname = 'crm' AND tablename = 'account';
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT n_live_tup, n_tup_ins FROM pg_stat_user_tables WHERE relid = 'crm.account'::regclass;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT pg_stat_get_live_tuples('crm.account'::regclass);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT pg_stat_get_xact_tuples_inserted('crm.account'::regclass);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT heap_blks_read FROM pg_statio_user_tables WHERE relid = 'crm.account'::regclass;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT idx_scan FROM pg_stat_user_indexes WHERE relid = 'crm.account'::regclass;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT calls FROM pg_stat_user_functions WHERE schemaname = 'crm';
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
-- What PostgreSQL gives every role and no grant takes away (README.md,
-- "Security"): the table-wide row count (all 52 accounts of both tenants)...
SELECT reltuples AS all_tenants_rows FROM pg_class WHERE oid = 'crm.account'::regclass;
-- ... and the planner's estimates, made from every tenant's values: A has no
-- account in healthcare, yet the estimate says that some tenant has many
-- (52 rows x 2/52 for A's tenant_id, which the planner reads from
-- crm.current_tenant() when it estimates, x 50/52 healthcare: 2 rows, as
-- many as A has in all), and none in finance
-- (shown as comparisons: the exact figure moves with the policies' shape)
SELECT estimated_rows($$SELECT * FROM crm.account WHERE industry = 'healthcare'$$) >= 2 AS healthcare_looks_common,
       estimated_rows($$SELECT * FROM crm.account WHERE industry = 'finance'$$) <= 1 AS finance_looks_absent,
       count(*) FILTER (WHERE industry = 'healthcare') AS healthcare_visible
  FROM crm.account;
COMMIT;

-- A monitoring role (pg_read_all_stats) still reads them -----------------------------
\c regress_stats regress_stats_monitor
SELECT n_live_tup > 0 AS counts_rows FROM pg_stat_user_tables WHERE relid = 'crm.account'::regclass;
SELECT pg_stat_get_live_tuples('crm.account'::regclass) > 0 AS live_tuples;
-- (pg_stats itself shows a role subject to row-level security nothing of a
-- table with row security: PostgreSQL's own rule)
SELECT count(*) AS pg_stats_rows FROM pg_stats WHERE schemaname = 'crm' AND tablename = 'account';

\c :regress_db :regress_su
DROP DATABASE regress_stats;
DROP ROLE regress_stats_app, regress_stats_monitor;
