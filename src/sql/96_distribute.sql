-- src/sql/96_distribute.sql: scale-out with Citus (issue 9).
--
-- CREATE EXTENSION crm runs on every node of a Citus cluster (Citus
-- propagates it), so every node has the same extension-owned tables; this
-- function only tells Citus how to place them: the global lookups become
-- reference tables (a copy on every node), every other table is distributed
-- by tenant_id and co-located with crm.tenant, so that all the rows of one
-- tenant live in one shard group and every statement of a tenant, triggers
-- included, runs on one node.  It is written so that this file loads
-- without Citus: every Citus name is reached through EXECUTE, after the
-- check that Citus is there.

-- What the schema must not contain to be distributed with Citus 13 (see
-- DESIGN.md); make test checks it on one node, crm.distribute() refuses
-- while it lists anything.
CREATE FUNCTION crm.distribution_problems() RETURNS TABLE (problem text)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
        -- a restrictive policy: Citus 13.0.5 copies it to the shards without
        -- AS RESTRICTIVE, so it would widen what every role sees (measured:
        -- another tenant's rows became visible)
        SELECT format('policy %s on %s is restrictive', p.polname, p.polrelid::regclass)
          FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
         WHERE c.relnamespace = 'crm'::regnamespace AND NOT p.polpermissive
        UNION ALL
        -- a policy with a sub-select: refused by Citus on distributed tables
        SELECT format('policy %s on %s has a sub-select', p.polname, p.polrelid::regclass)
          FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
         WHERE c.relnamespace = 'crm'::regnamespace
           AND (p.polqual::text LIKE '%{SUBLINK %' OR p.polwithcheck::text LIKE '%{SUBLINK %')
        UNION ALL
        -- ON DELETE SET NULL or SET DEFAULT: refused by Citus when the key
        -- holds the distribution column
        SELECT format('foreign key %s on %s is ON DELETE SET %s', k.conname, k.conrelid::regclass,
                      CASE k.confdeltype WHEN 'n' THEN 'NULL' ELSE 'DEFAULT' END)
          FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
         WHERE c.relnamespace = 'crm'::regnamespace AND k.contype = 'f' AND k.confdeltype IN ('n', 'd')
        ORDER BY 1
    $$;
COMMENT ON FUNCTION crm.distribution_problems() IS
    'What keeps crm.distribute() from distributing the schema with Citus: restrictive policies, policies with a sub-select, foreign keys ON DELETE SET NULL/SET DEFAULT; one line each, none when the schema is ready';

CREATE FUNCTION crm.distribute() RETURNS TABLE (table_name regclass, distribution text)
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    t regclass;
    f regprocedure;
    kind text;
    done boolean;
    has_rows boolean;
    failed text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension e WHERE e.extname = 'citus') THEN
        RAISE EXCEPTION 'crm.distribute() needs the citus extension in this database'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'The citus extension is not installed in this database.',
                  HINT = 'Load citus (shared_preload_libraries) on every node, run CREATE EXTENSION citus, add the workers, then CREATE EXTENSION crm and crm.setup_roles() on the coordinator.';
    END IF;
    EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO done;
    IF NOT done THEN
        RAISE EXCEPTION 'crm.distribute() runs on the coordinator only'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Connect to the coordinator node and call it there.';
    END IF;

    -- A table that already holds rows would be copied into its shards while
    -- its rows stay behind, unseen, in the coordinator's extension table
    -- (and in pg_dump's output): refuse instead.  The shipped rows of the
    -- lookups (is_builtin) are on every node already and count as empty.
    FOR t IN
        SELECT c.oid::regclass FROM pg_catalog.pg_class c
         WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind = 'r'
         ORDER BY c.relname
    LOOP
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1)'
            INTO done USING t;
        CONTINUE WHEN done;
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                    WHERE a.attrelid = t AND a.attname = 'is_builtin' AND NOT a.attisdropped) THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE NOT is_builtin)', t) INTO has_rows;
        ELSE
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', t) INTO has_rows;
        END IF;
        IF has_rows THEN
            RAISE EXCEPTION 'cannot distribute table % because it holds rows', t
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'crm.distribute() distributes an empty CRM only: rows of an extension table would stay behind on the coordinator.',
                      HINT = 'Distribute a new database first, then load the data into it (pg_dump --data-only, or the application).';
        END IF;
    END LOOP;

    -- What Citus cannot distribute, or would distribute wrongly, all named
    -- in one error before anything is changed.
    SELECT string_agg(p.problem, '; ' ORDER BY p.problem) INTO failed
      FROM crm.distribution_problems() p;
    IF failed IS NOT NULL THEN
        RAISE EXCEPTION 'the crm schema cannot be distributed as installed'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = failed || '.',
                  HINT = 'Citus needs permissive policies that are plain predicates and foreign keys without SET NULL or SET DEFAULT actions; crm.distribution_problems() lists what is left.';
    END IF;
    failed := NULL;

    -- Citus checks these when a table is distributed (measured on 13.0.5),
    -- for the rest of this transaction only (SET LOCAL): the C triggers are
    -- per tenant (they write rows of the same tenant only); a foreign key
    -- from a local table to a reference table must not make Citus convert
    -- the extension's tables (and drop its views); and a table with a
    -- foreign key to a reference table is distributed over one connection
    -- per node when it is in the same transaction as that reference table.
    PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    PERFORM pg_catalog.set_config('citus.enable_local_reference_table_foreign_keys', 'off', true);
    PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);

    -- The grants of crm.setup_roles() on every worker too: GRANTs on
    -- functions and on tables that were local when they were made are not
    -- propagated, and a shard query runs the policies' and triggers'
    -- functions on the worker as the application's role.
    IF (SELECT count(*) FROM pg_catalog.pg_roles
         WHERE rolname IN ('crm_reader', 'crm_writer', 'crm_admin', 'crm_app')) = 4 THEN
        EXECUTE $q$SELECT string_agg(r.nodename || ':' || r.nodeport || ': ' || r.result, '; ')
                     FROM pg_catalog.run_command_on_workers(
                              'SET citus.enable_ddl_propagation = off; SELECT crm.setup_roles()') r
                    WHERE NOT r.success$q$ INTO failed;
        IF failed IS NOT NULL THEN
            RAISE EXCEPTION 'crm.setup_roles() failed on a worker'
                USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = failed;
        END IF;
    ELSE
        RAISE EXCEPTION 'crm.distribute() needs the crm roles'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run SELECT crm.setup_roles() on the coordinator first.';
    END IF;

    -- A table without tenant_id is a global lookup (currency, activity_type,
    -- job_action, ...): a reference table, copied to every node.  Every
    -- other table is distributed by tenant_id.  Foreign-key order: a table
    -- after every table it references; the reference tables first, then
    -- crm.tenant, with which the others are co-located (a table without a
    -- foreign key to it, such as crm.app_access, too).
    FOR t, kind IN
        WITH RECURSIVE tabs AS (
            SELECT c.oid, c.relname,
                   NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                                WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
                       -- the login-role mappings and the app allow-list:
                       -- every node reads them locally (tenant.c)
                       OR c.relname IN ('tenant_access', 'app_access') AS global
              FROM pg_catalog.pg_class c
             WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind = 'r'
        ), depth (oid, d) AS (
            SELECT x.oid, 0 FROM tabs x
            UNION ALL
            SELECT k.conrelid, depth.d + 1
              FROM depth JOIN pg_catalog.pg_constraint k
                ON k.confrelid = depth.oid AND k.contype = 'f' AND k.conrelid <> k.confrelid
             WHERE depth.d < 64  -- a cycle of foreign keys ends here, not in a loop
        )
        SELECT x.oid::regclass, CASE WHEN x.global THEN 'reference' ELSE 'distributed' END
          FROM tabs x JOIN depth USING (oid)
         GROUP BY x.oid, x.relname, x.global
         ORDER BY NOT x.global, x.relname <> 'tenant', max(depth.d), x.relname
    LOOP
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1)'
            INTO done USING t;
        IF NOT done THEN
            IF kind = 'reference' THEN
                EXECUTE 'SELECT pg_catalog.create_reference_table($1)' USING t;
            ELSIF t = 'crm.tenant'::regclass THEN
                EXECUTE 'SELECT pg_catalog.create_distributed_table($1, ''tenant_id'', colocate_with => ''none'')'
                    USING t;
            ELSE
                EXECUTE 'SELECT pg_catalog.create_distributed_table($1, ''tenant_id'', colocate_with => ''crm.tenant'')'
                    USING t;
            END IF;
        END IF;
        table_name := t;
        distribution := kind;
        RETURN NEXT;
    END LOOP;
    -- The functions that write as the tables' owner hand their calls to
    -- twins (src/shard.c, src/sql/98_shard_calls.sql): each twin, and the
    -- notifications they leave, becomes a distributed function co-located
    -- with crm.tenant by its first argument (the tenant), force-delegated
    -- so that Citus runs it on the tenant's node inside a transaction too.
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'crm'::regnamespace
           AND (p.proname LIKE '%\_in\_shard' OR p.proname = 'shard_notifications')
         ORDER BY p.proname
    LOOP
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_object o
                                 WHERE o.classid = ''pg_catalog.pg_proc''::pg_catalog.regclass
                                   AND o.objid = $1 AND o.distribution_argument_index IS NOT NULL)'
            INTO done USING f;
        IF NOT done THEN
            EXECUTE 'SELECT pg_catalog.create_distributed_function($1, ''$1'','
                    ' colocate_with => ''crm.tenant'', force_delegation => true)'
                USING f;
        END IF;
    END LOOP;
    -- The coordinator keeps its own (now unseen) copy of the lookups' shipped
    -- rows: truncate_local_data_after_distributing_table() would cascade to
    -- every table that references them, so it is not called.
END
$$;
COMMENT ON FUNCTION crm.distribute() IS
    'With Citus: makes the global lookups (the tables without tenant_id: currency, activity_type, ...) reference tables and distributes every other table by tenant_id, co-located with crm.tenant, in foreign-key order; returns each table and how it is placed. Idempotent (placed tables are skipped). 55000 without Citus, off the coordinator, without the crm roles, with a restrictive policy, a policy with a sub-select or an ON DELETE SET NULL/SET DEFAULT foreign key, or when a table to place holds rows. Run as a superuser on the coordinator after crm.setup_roles()';
