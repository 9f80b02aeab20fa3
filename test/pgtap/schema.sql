-- test/pgtap/schema.sql: the shape of the core schema (issue "core schema").
--
-- The rules every table follows (tenant_id leads the keys, foreign keys
-- carry it, ids and tenant_id have their defaults, everything has a
-- COMMENT, pg_dump keeps every table) are checked against the catalogs, so
-- a table added later is held to them too; the lists that define the
-- schema (its tables, views, keys, access-path indexes) are pinned by hand,
-- so that adding or losing one is a deliberate change of this file.
--
-- A catalog assertion is an is_empty() or set_eq() over the offending
-- objects: when it fails, pgTAP lists them.

BEGIN;
SELECT crm.setup_roles();
-- pg_get_expr() qualifies crm's functions only when crm is not in the path.
SET LOCAL search_path = public, pg_catalog;

-- The primary key of every table, as designed.
CREATE TEMP TABLE expected_key (tbl name PRIMARY KEY, cols name[] NOT NULL);
INSERT INTO expected_key VALUES
    ('tenant',          '{tenant_id}'),
    ('currency',        '{code}'),
    ('currency_rate',   '{tenant_id,id}'),
    ('app_user',        '{tenant_id,id}'),
    ('team',            '{tenant_id,id}'),
    ('team_member',     '{tenant_id,team_id,user_id}'),
    ('tenant_access',   '{tenant_id,role_oid}'),
    ('app_access',      '{tenant_id,role_oid}'),
    ('pipeline',        '{tenant_id,id}'),
    ('stage',           '{tenant_id,id}'),
    ('account',         '{tenant_id,id}'),
    ('contact',         '{tenant_id,id}'),
    ('lead',            '{tenant_id,id}'),
    ('opportunity',     '{tenant_id,id}'),
    ('activity_type',   '{code}'),
    ('activity',        '{tenant_id,id}'),
    ('tag',             '{tenant_id,id}'),
    ('account_tag',     '{tenant_id,account_id,tag_id}'),
    ('contact_tag',     '{tenant_id,contact_id,tag_id}'),
    ('lead_tag',        '{tenant_id,lead_id,tag_id}'),
    ('opportunity_tag', '{tenant_id,opportunity_id,tag_id}'),
    ('job',             '{tenant_id,id}'),
    ('job_archive',     '{tenant_id,id}'),
    ('job_key',         '{tenant_id,idempotency_key}'),
    ('job_action',      '{code}'),
    ('workflow_event',  '{code}'),
    ('workflow_rule',   '{tenant_id,id}'),
    ('inbound_event',   '{tenant_id,external_id}'),
    ('job_debounce',    '{tenant_id,rule_id,subject_id}'),
    ('stage_history',   '{tenant_id,id}'),
    -- activity aggregation and the event outbox (issue 7)
    ('event',              '{tenant_id,position}'),
    ('event_consumer',     '{tenant_id,name}'),
    ('engagement_setting', '{tenant_id}'),
    ('activity_weight',    '{tenant_id,activity_type}'),
    ('contact_engagement', '{tenant_id,contact_id}'),
    ('lead_engagement',    '{tenant_id,lead_id}'),
    ('account_summary',    '{tenant_id,account_id}'),
    -- lead scoring and the predictive win probability (issue 10)
    ('scoring_model',      '{tenant_id,id}'),
    ('lead_score_history', '{tenant_id,id}'),
    ('pls_config',         '{tenant_id}'),
    ('pls_observation',    '{tenant_id,record_kind,record_id,variable,value}'),
    ('pls_frequency',      '{tenant_id,record_kind,team_key,variable,value}'),
    -- forecasting (src/sql/86_forecast.sql)
    ('quota',            '{tenant_id,id}'),
    ('revenue_forecast', '{tenant_id,id}'),
    ('forecast_deal',    '{tenant_id,forecast_id,opportunity_id}');

-- The index access paths the application relies on: (table, leading keys
-- of some index on it, unique required).  Expressions are written without
-- the casts pg_get_indexdef() adds (crm.casefold(email::text) is crm.casefold(email)).
CREATE TEMP TABLE expected_index (tbl name, keys text[], must_be_unique boolean);
INSERT INTO expected_index VALUES
    ('activity',    '{tenant_id,contact_id,occurred_at}', false),
    ('activity',    '{tenant_id,account_id,occurred_at}', false),
    ('lead',        '{tenant_id,crm.casefold(email)}',    false),
    ('contact',     '{tenant_id,crm.casefold(email)}',    true),
    ('opportunity', '{tenant_id,account_id}',             false),
    ('opportunity', '{tenant_id,owner_id}',               false),
    ('opportunity', '{tenant_id,pipeline_id,stage_id}',   false),
    ('opportunity', '{tenant_id,expected_close_date}',    false);

-- Every index of crm with its key columns, casts removed.
CREATE TEMP VIEW index_keys AS
SELECT c.relname AS tbl,
       i.indexrelid::regclass AS index,
       i.indisunique,
       ARRAY(SELECT regexp_replace(pg_get_indexdef(i.indexrelid, k, true), '::[a-z_.]+', '', 'g')
               FROM generate_series(1, i.indnkeyatts) k ORDER BY k) AS keys
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indrelid
 WHERE c.relnamespace = 'crm'::regnamespace;

-- The tables of crm that carry tenant_id (all but the global lookups).
CREATE TEMP VIEW tenant_table AS
SELECT c.oid, c.relname, a.attnum AS tenant_attnum
  FROM pg_class c
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
 WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind IN ('r', 'p');

SELECT plan(22 + (SELECT count(*)::int FROM expected_key) + (SELECT count(*)::int FROM expected_index));

-- Tables and views --------------------------------------------------------

SELECT tables_are('crm', ARRAY[
    'tenant', 'currency', 'currency_rate', 'app_user', 'team', 'team_member', 'tenant_access', 'app_access',
    'pipeline', 'stage', 'account', 'contact', 'lead', 'opportunity', 'activity_type', 'activity',
    'tag', 'account_tag', 'contact_tag', 'lead_tag', 'opportunity_tag', 'stage_history',
    'job', 'job_archive', 'job_key', 'job_action', 'workflow_event', 'workflow_rule', 'inbound_event', 'job_debounce',
    -- activity aggregation and the event outbox (issue 7)
    'event', 'event_consumer', 'engagement_setting', 'activity_weight', 'contact_engagement',
    'lead_engagement', 'account_summary',
    -- lead scoring and the predictive win probability (issue 10)
    'scoring_model', 'lead_score_history', 'pls_config', 'pls_observation', 'pls_frequency',
    'quota', 'revenue_forecast', 'forecast_deal'
], 'crm has exactly the tables of the core schema');

SELECT views_are('crm', ARRAY['lead_kanban', 'opportunity_kanban', 'dashboard'],
    'crm has exactly the kanban and dashboard views');

-- Keys ----------------------------------------------------------------------

SELECT col_is_pk('crm', tbl, cols, format('crm.%I has primary key (%s)', tbl, array_to_string(cols, ', ')))
  FROM expected_key ORDER BY tbl;

SELECT set_eq(
    $$SELECT c.relname FROM pg_class c
       WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind IN ('r', 'p')
         AND c.oid NOT IN (SELECT oid FROM tenant_table)$$,
    ARRAY['currency', 'activity_type', 'job_action', 'workflow_event']::name[],
    'only the global lookups crm.currency, crm.activity_type, crm.job_action and crm.workflow_event lack tenant_id');

SELECT is_empty(
    $$SELECT t.relname, pk.conname, pk.conkey
        FROM tenant_table t
        LEFT JOIN pg_constraint pk ON pk.conrelid = t.oid AND pk.contype = 'p'
       WHERE pk.conkey[1] IS DISTINCT FROM t.tenant_attnum
       ORDER BY 1$$,
    'tenant_id is the first column of the primary key of every tenant table');

SELECT is_empty(
    $$SELECT fk.conname, fk.conrelid::regclass AS from_table, fk.confrelid::regclass AS to_table,
             pg_get_constraintdef(fk.oid)
        FROM pg_constraint fk
        JOIN tenant_table src ON src.oid = fk.conrelid
        JOIN tenant_table dst ON dst.oid = fk.confrelid
       WHERE fk.contype = 'f'
         AND (fk.conkey[1] <> src.tenant_attnum OR fk.confkey[1] <> dst.tenant_attnum)
       ORDER BY 2::text, 1$$,
    'every foreign key between tenant tables starts with tenant_id on both sides');

-- a record's stage: no foreign key (stage_sync looks the stage up and locks
-- it for every record that enters it, and refuses one of another tenant or
-- pipeline); the stage's side is a trigger
SELECT col_isnt_fk('crm', 'lead', ARRAY['tenant_id', 'pipeline_id', 'stage_id'],
                   'a lead''s stage is checked by stage_sync, not by a foreign key');
SELECT col_isnt_fk('crm', 'opportunity', ARRAY['tenant_id', 'pipeline_id', 'stage_id'],
                   'an opportunity''s stage is checked by stage_sync, not by a foreign key');
SELECT trigger_is('crm', 'stage', 'stage_keep_records', 'crm', 'stage_keep_records',
                  'a stage that records are in is kept by crm.stage_keep_records()');
SELECT trigger_is('crm', 'stage', 'stage_keep_records_truncate', 'crm', 'stage_keep_records',
                  'the stages are not truncated under records');
SELECT fk_ok('crm', 'activity', ARRAY['tenant_id', 'contact_id'], 'crm', 'contact', ARRAY['tenant_id', 'id'],
             'an activity''s contact is in the activity''s tenant');
SELECT fk_ok('crm', 'opportunity_tag', ARRAY['tenant_id', 'tag_id'], 'crm', 'tag', ARRAY['tenant_id', 'id'],
             'a tag put on an opportunity is in the opportunity''s tenant');

-- Defaults ------------------------------------------------------------------

SELECT is_empty(
    $$SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) AS type,
             pg_get_expr(d.adbin, d.adrelid) AS default
        FROM pg_class c
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
       WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind IN ('r', 'p')
         AND a.attname = 'id'
         AND (a.atttypid <> 'uuid'::regtype
              OR pg_get_expr(d.adbin, d.adrelid) IS DISTINCT FROM 'crm.uuid_generate_v7()')
       ORDER BY 1$$,
    'every id column is a uuid defaulting to crm.uuid_generate_v7()');

SELECT col_default_is('crm', 'tenant', 'tenant_id', 'crm.uuid_generate_v7()'::text,
    'a new tenant''s id defaults to crm.uuid_generate_v7()');

SELECT is_empty(
    $$SELECT t.relname, format_type(a.atttypid, a.atttypmod) AS type,
             pg_get_expr(d.adbin, d.adrelid) AS default
        FROM tenant_table t
        JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = t.tenant_attnum
        LEFT JOIN pg_attrdef d ON d.adrelid = t.oid AND d.adnum = a.attnum
       WHERE t.relname NOT IN ('tenant', 'tenant_access', 'app_access')
         AND (a.atttypid <> 'uuid'::regtype
              OR pg_get_expr(d.adbin, d.adrelid) IS DISTINCT FROM 'crm.current_tenant()')
       ORDER BY 1$$,
    'tenant_id is a uuid defaulting to crm.current_tenant() in every tenant table but tenant, tenant_access and app_access');

SELECT col_hasnt_default('crm', 'tenant_access', 'tenant_id',
    'crm.tenant_access.tenant_id has no default: a mapping always names its tenant');

-- Access-path indexes -------------------------------------------------------

SELECT ok(EXISTS (SELECT 1 FROM index_keys k
                   WHERE k.tbl = e.tbl
                     AND k.keys[1:cardinality(e.keys)] = e.keys
                     AND (k.indisunique OR NOT e.must_be_unique)),
          format('crm.%I has %s index on (%s)', e.tbl,
                 CASE WHEN e.must_be_unique THEN 'a unique' ELSE 'an' END,
                 array_to_string(e.keys, ', ')))
       || CASE WHEN EXISTS (SELECT 1 FROM index_keys k
                             WHERE k.tbl = e.tbl
                               AND k.keys[1:cardinality(e.keys)] = e.keys
                               AND (k.indisunique OR NOT e.must_be_unique))
               THEN ''
               ELSE E'\n' || diag('    indexes of crm.' || e.tbl || ': ' ||
                                  coalesce((SELECT string_agg(k.index::text || ' (' || array_to_string(k.keys, ', ')
                                                              || CASE WHEN k.indisunique THEN ', unique' ELSE '' END
                                                              || ')', '; ' ORDER BY k.index::text)
                                              FROM index_keys k WHERE k.tbl = e.tbl), 'none'))
          END
  FROM expected_index e ORDER BY e.tbl, e.keys;

-- Comments ------------------------------------------------------------------

SELECT is_empty(
    $$SELECT c.relkind, c.relname FROM pg_class c
       WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
         AND coalesce(btrim(obj_description(c.oid, 'pg_class')), '') = ''
       ORDER BY 2$$,
    'every table and view of crm has a COMMENT');

SELECT is_empty(
    $$SELECT c.relname, a.attname FROM pg_class c
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
       WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind IN ('r', 'p')
         AND coalesce(btrim(col_description(c.oid, a.attnum)), '') = ''
       ORDER BY 1, a.attnum$$,
    'every column of every crm table has a COMMENT');

SELECT is_empty(
    $$SELECT p.oid::regprocedure FROM pg_proc p
       WHERE p.pronamespace = 'crm'::regnamespace
         AND coalesce(btrim(obj_description(p.oid, 'pg_proc')), '') = ''
       ORDER BY 1::text$$,
    'every function of crm has a COMMENT');

SELECT is_empty(
    $$SELECT 'schema' AS kind, 'crm' AS name
       WHERE coalesce(btrim(obj_description('crm'::regnamespace, 'pg_namespace')), '') = ''
      UNION ALL
      SELECT 'domain', t.typname::text FROM pg_type t
       WHERE t.typnamespace = 'crm'::regnamespace AND t.typtype = 'd'
         AND coalesce(btrim(obj_description(t.oid, 'pg_type')), '') = ''
      UNION ALL
      SELECT 'policy', p.polname || ' on ' || p.polrelid::regclass::text FROM pg_policy p
       WHERE p.polrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'crm'::regnamespace)
         AND coalesce(btrim(obj_description(p.oid, 'pg_policy')), '') = ''
      ORDER BY 1, 2$$,
    'the schema, its domains and its row-level security policies have a COMMENT');

-- The extension owns its objects; pg_dump keeps the data -------------------

SELECT is_empty(
    $$SELECT 'relation' AS kind, c.oid::regclass::text AS name FROM pg_class c
       WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
         AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
                            AND d.refclassid = 'pg_extension'::regclass
                            AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'crm'))
      UNION ALL
      SELECT 'function', p.oid::regprocedure::text FROM pg_proc p
       WHERE p.pronamespace = 'crm'::regnamespace
         AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
                            AND d.refclassid = 'pg_extension'::regclass
                            AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'crm'))
      ORDER BY 1, 2$$,
    'every table, view, sequence and function in schema crm belongs to extension crm');

SELECT is_empty(
    $$SELECT c.relname FROM pg_class c
       WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind IN ('r', 'p')
         AND c.oid <> ALL (coalesce((SELECT e.extconfig FROM pg_extension e WHERE e.extname = 'crm'), '{}'))
       ORDER BY 1$$,
    'every crm table is registered with pg_extension_config_dump, so pg_dump keeps its rows');

SELECT set_eq(
    $$SELECT cfg.tbl::regclass::text, cfg.condition
        FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS cfg(tbl, condition)
       WHERE e.extname = 'crm' AND cfg.condition <> ''$$,
    $$VALUES ('crm.currency', 'WHERE NOT is_builtin'), ('crm.activity_type', 'WHERE NOT is_builtin'),
             ('crm.job_action', 'WHERE NOT is_builtin'), ('crm.workflow_event', 'WHERE NOT is_builtin')$$,
    'only the global lookups are dumped with a filter, which leaves the built-in rows out');

SELECT * FROM finish();
ROLLBACK;
