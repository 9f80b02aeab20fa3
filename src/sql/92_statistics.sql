-- src/sql/92_statistics.sql: what the statistics views tell other tenants.
--
-- Row-level security filters rows, not statistics: the cumulative counters
-- (pg_stat_user_tables and friends) count every tenant's inserts, updates,
-- deletes and scans, and pg_stats shows the most common values and the
-- histogram of every column to any role that may SELECT the table (the crm
-- roles may).  PostgreSQL has no per-role deny, so the only fence is to take
-- these views, and the functions they are built on, away from PUBLIC in this
-- database and give them to pg_read_all_stats (monitoring keeps working for
-- its members and for superusers).  What cannot be taken away (planner
-- estimates, pg_class.reltuples, relation sizes) is in README.md, "Security".

CREATE FUNCTION crm.revoke_statistics_access() RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    v regclass;
    f regprocedure;
BEGIN
    FOR v IN SELECT c.oid FROM pg_catalog.pg_class c
              WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind = 'v'
                AND (c.relname ~ '^pg_stat(io)?_(all|user|sys|xact_all|xact_user|xact_sys)_(tables|indexes|sequences)$'
                     OR c.relname IN ('pg_stats', 'pg_stats_ext', 'pg_stats_ext_exprs',
                                      'pg_stat_user_functions', 'pg_stat_xact_user_functions'))
              ORDER BY c.relname
    LOOP
        EXECUTE format('REVOKE SELECT ON %s FROM PUBLIC', v);
        EXECUTE format('GRANT SELECT ON %s TO pg_read_all_stats', v);
    END LOOP;
    -- the per-table and per-function counters, callable directly by oid
    FOR f IN SELECT p.oid FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'pg_catalog'::regnamespace
                AND p.pronargs = 1 AND p.proargtypes[0] = 'oid'::regtype
                AND p.proname ~ '^pg_stat_get_(xact_)?(numscans|lastscan|tuples_[a-z_]+|live_tuples|dead_tuples|mod_since_analyze|ins_since_vacuum|blocks_fetched|blocks_hit|last_[a-z]+_time|[a-z]*vacuum_count|[a-z]*analyze_count|function_[a-z_]+)$'
              ORDER BY p.proname
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO pg_read_all_stats', f);
    END LOOP;
END
$$;
COMMENT ON FUNCTION crm.revoke_statistics_access() IS
    'Takes the per-table statistics views (pg_stats, pg_stats_ext*, pg_stat*_tables, *_indexes, *_sequences, pg_stat*_user_functions) and the pg_stat_get_* counters by oid away from PUBLIC in this database and grants them to pg_read_all_stats, so that the crm roles cannot read other tenants'' volumes and common values; called by crm.setup_roles(); idempotent; run by a superuser';
