-- test/pgtap/security.sql: tenants, roles and hardening (issue "tenants,
-- roles and hardening").
--
-- The design, written down once below as small tables, is compared with
-- the catalogs:
--   * the row-level security policies of every table;
--   * the privilege matrix: PUBLIC and crm_app get nothing, crm_reader
--     SELECT on every table and view, crm_writer adds DML on the records,
--     crm_admin adds DML on the configuration; EXECUTE likewise by level;
--   * hardening rules that hold for every object (search_path pinned, no
--     LEAKPROOF, SECURITY DEFINER only for the listed visibility triggers,
--     nothing for PUBLIC).
-- The matrix is generated over every table, view and function found in the
-- catalogs, so an object missing from the design tables below gets the
-- lowest expectation (or fails the classification test) instead of being
-- skipped.  pgTAP's *_privs_are use has_*_privilege(), which counts
-- privileges inherited through membership: crm_writer shows crm_reader's
-- SELECT, crm_admin both.

BEGIN;
SELECT crm.setup_roles();
SET LOCAL search_path = public, pg_catalog;

-- The roles and how far each reaches: 0 nothing, 1 reader, 2 writer, 3 admin.
CREATE TEMP TABLE role_level (role name PRIMARY KEY, level int NOT NULL);
INSERT INTO role_level VALUES
    ('public', 0), ('crm_app', 0), ('crm_reader', 1), ('crm_writer', 2), ('crm_admin', 3);

-- Tables whose rows a level may INSERT, UPDATE and DELETE (every level from
-- reader up may SELECT every table and view).
CREATE TEMP TABLE table_dml (tbl name PRIMARY KEY, level int NOT NULL);
INSERT INTO table_dml
SELECT t, 2 FROM unnest(ARRAY['account', 'contact', 'lead', 'opportunity', 'activity', 'tag',
                              'account_tag', 'contact_tag', 'lead_tag', 'opportunity_tag']) t
UNION ALL
SELECT t, 3 FROM unnest(ARRAY['pipeline', 'stage', 'app_user', 'team', 'team_member', 'currency_rate',
                              'tenant_access']) t
-- activity aggregation and the event outbox (issue 7)
UNION ALL
SELECT t, 3 FROM unnest(ARRAY['engagement_setting', 'activity_weight']) t
-- lead scoring (issue 10)
UNION ALL
SELECT t, 3 FROM unnest(ARRAY['scoring_model', 'pls_config']) t
UNION ALL
SELECT 'quota', 3
-- job queue and workflow rules (issue 12): jobs are written by the queue's
-- functions only; inbound events by crm.consume_event() as the writer
-- (INSERT only: see table_insert_only)
UNION ALL
SELECT t, 3 FROM unnest(ARRAY['workflow_rule']) t;

-- Tables a level may only append to (SELECT and INSERT): the inbound-event
-- ledger, so that a writer cannot delete or rename a taken event and have
-- it consumed twice.
CREATE TEMP TABLE table_insert_only (tbl name PRIMARY KEY, level int NOT NULL);
-- (none since issue 8 item 4: the inbound-event ledger is written by the server only)

-- Every function of crm and the lowest level that may execute it; NULL:
-- no crm role (trigger functions, and what a superuser runs).
CREATE TEMP TABLE func_level (sig text PRIMARY KEY, level int);
INSERT INTO func_level VALUES
    ('crm.current_tenant()', 1),
    ('crm.current_user_id()', 1),
    ('crm.is_admin()', 1),
    ('crm.is_service()', 1),
    ('crm.visibility_snapshot()', NULL),
    ('crm.sees_all_records()', 1),
    ('crm.visible_owner_ids()', 1),
    ('crm.tenant_default_currency()', 1),
    ('crm.exchange_rate(text,text,date,uuid)', 1),
    ('crm.uuid_v7_time(uuid)', 1),
    ('crm.casefold(text)', 1),
    ('crm.is_blank(text)', 1),
    ('crm.uuid_generate_v7()', 2),
    ('crm.lead_move_stage(uuid,uuid)', 2),
    ('crm.opportunity_move_stage(uuid,uuid)', 2),
    ('crm.opportunity_reopen(uuid,uuid)', 2),
    ('crm.lead_reopen(uuid,uuid)', 2),
    ('crm.opportunity_mark_won(uuid)', 2),
    ('crm.opportunity_mark_lost(uuid,text)', 2),
    ('crm.lead_mark_lost(uuid,text)', 2),
    ('crm.lead_convert(uuid,uuid,uuid,boolean)', 2),
    ('crm.grant_tenant_access(name,uuid,uuid)', 3),
    ('crm.revoke_tenant_access(name,uuid)', 3),
    ('crm.activity_sync()', NULL),
    ('crm.stage_sync()', NULL),
    ('crm.stage_history_record()', NULL),
    ('crm.stage_follow()', NULL),
    ('crm.stage_keep_records()', NULL),
    ('crm.clear_links()', NULL),
    ('crm.touch_updated_at()', NULL),
    ('crm.stamp_flag_times()', NULL),
    ('crm.create_tenant(text)', NULL),
    ('crm.setup_roles()', NULL),
    ('crm.revoke_statistics_access()', NULL),
    ('crm.load_demo(text,timestamp with time zone)', NULL),
    -- tenancy and owner visibility (issue 8 items 1 and 3): triggers and
    -- internal helpers, granted to no crm role
    ('crm.tenant_access_check()', NULL),
    ('crm.tenant_access_user_check()', NULL),
    ('crm.tenant_access_cascade()', NULL),
    ('crm.currency_default()', NULL),
    ('crm.tenant_require()', NULL),
    ('crm.visibility_row()', NULL),
    ('crm.visibility_propagate()', NULL),
    ('crm.visibility_delete_guard()', NULL),
    ('crm.visibility_refresh(uuid)', NULL),
    ('crm.visibility_refresh_records(uuid,uuid[])', NULL),
    ('crm.visibility_hierarchy()', NULL),
    ('crm.owner_chain_keep()', NULL),
    -- activity aggregation, engagement and the event outbox (issue 7)
    ('crm.engagement_half_life(uuid)', 1),
    ('crm.engagement_decayed(uuid,text,uuid,timestamp with time zone)', 1),
    ('crm.engagement_score(uuid,timestamp with time zone)', 1),
    ('crm.lead_engagement_score(uuid,timestamp with time zone)', 1),
    ('crm.check_aggregates()', 1),
    ('crm.engagement_recomputed()', 1),
    ('crm.account_summary_recomputed()', 1),
    ('crm.event_head()', 1),
    ('crm.event_limit()', 1),
    ('crm.read_events(bigint,integer)', 1),
    ('crm.track_activity(uuid,text,jsonb,timestamp with time zone,text,text)', 2),
    ('crm.emit_event(text,jsonb,text,uuid)', 2),
    ('crm.subscribe(text,bigint)', 2),
    ('crm.unsubscribe(text)', 2),
    ('crm.poll(text,integer)', 2),
    ('crm.ack(text,bigint)', 2),
    ('crm.refresh_aggregates(uuid)', 3),
    ('crm.purge_events(interval)', 3),
    ('crm.engagement_add_counts(jsonb,jsonb)', NULL),
    ('crm.engagement_add_amounts(jsonb,jsonb)', NULL),
    ('crm.engagement_combine(double precision,timestamp with time zone,double precision,timestamp with time zone,double precision)', NULL),
    ('crm.aggregates_rebuild(uuid)', NULL),
    ('crm.engagement_track()', NULL),
    ('crm.engagement_lead_converted()', NULL),
    ('crm.engagement_settings_changed()', NULL),
    ('crm.outbox_record_events()', NULL),
    ('crm.analytics_amount(numeric,text,date,uuid)', 1),
    ('crm.pipeline_funnel(uuid,timestamp with time zone,timestamp with time zone)', 1),
    ('crm.win_rate(text,timestamp with time zone,timestamp with time zone,uuid)', 1),
    ('crm.opportunity_stays(timestamp with time zone,uuid)', 1),
    ('crm.time_in_stage(uuid,timestamp with time zone)', 1),
    ('crm.sales_cycle(uuid,timestamp with time zone,timestamp with time zone)', 1),
    ('crm.sales_velocity(uuid,timestamp with time zone,timestamp with time zone)', 1),
    ('crm.lead_source_analytics(timestamp with time zone,timestamp with time zone)', 1),
    ('crm.rotting_deals(timestamp with time zone,uuid)', 1),
    ('crm.owner_dashboard(timestamp with time zone,timestamp with time zone,timestamp with time zone)', 1),
    -- lead scoring and the predictive win probability (issue 10)
    ('crm.validate_scoring_model(jsonb)', 1),
    ('crm.scoring_points_problem(jsonb,boolean,integer)', 1),
    ('crm.score_lead(uuid,uuid,timestamp with time zone)', 1),
    ('crm.explain_score(uuid,uuid,timestamp with time zone)', 1),
    ('crm.top_leads(integer,uuid,uuid,integer)', 1),
    ('crm.lead_score_trend(uuid)', 1),
    ('crm.default_scoring_weights()', 1),
    ('crm.predict_win(uuid)', 1),
    ('crm.predict_lead_win(uuid)', 1),
    ('crm.explain_win(uuid)', 1),
    ('crm.pls_check(uuid)', 1),
    ('crm.pls_variables(uuid)', 1),
    ('crm.pls_all_variables()', 1),
    ('crm.pls_size_band(integer)', 1),
    ('crm.pls_email_state(text)', 1),
    ('crm.pls_phone_state(text)', 1),
    ('crm.pls_record_values(uuid,text,uuid[])', 1),
    ('crm.pls_observations(uuid,text,uuid[])', 1),
    ('crm.pls_explain(uuid,text,uuid)', 1),
    ('crm.pls_predict(uuid,text,uuid)', 1),
    ('crm.pls_predict_many(uuid,text,uuid[])', 1),
    ('crm.rescore_leads(uuid)', 2),
    ('crm.scoring_rescore(uuid,uuid,boolean)', 2),
    ('crm.pls_rebuild(uuid)', 3),
    ('crm.pls_configure(text[])', 3),
    ('crm.scoring_model_rows(jsonb)', NULL),
    ('crm.scoring_model_check()', NULL),
    ('crm.scoring_model_changed()', NULL),
    ('crm.tenant_default_scoring_model()', NULL),
    ('crm.scoring_lead_sync()', NULL),
    ('crm.scoring_lead_history()', NULL),
    ('crm.scoring_refresh()', NULL),
    ('crm.pls_refresh(uuid,text,uuid[])', NULL),
    ('crm.pls_apply(uuid,text,uuid[])', NULL),
    ('crm.pls_sync(text,uuid[],uuid[],text[])', NULL),
    ('crm.pls_rebuild_tables(uuid)', NULL),
    ('crm.win_probability()', NULL),
    ('crm.win_model_sync()', NULL),
    -- forecasting
    ('crm.revenue_distribution(numeric,numeric)', 1),
    ('crm.convert_amount(numeric,text,text,date,uuid)', 1),
    ('crm.forecast_deals(date,date,uuid,uuid,uuid,text,timestamp with time zone,jsonb)', 1),
    ('crm.forecast(text,date,date,uuid,uuid,uuid,text,timestamp with time zone,text)', 1),
    ('crm.forecast_what_if(jsonb,text,date,date,uuid,uuid,uuid,text,timestamp with time zone,text)', 1),
    ('crm.forecast_changes(uuid,uuid)', 1),
    ('crm.forecast_accuracy(uuid,timestamp with time zone)', 1),
    ('crm.snapshot_forecast(text,text,date,date,uuid,uuid,timestamp with time zone)', 2),
    ('crm.forecast_totals(text,date,date,uuid,uuid,text,timestamp with time zone,boolean)', 1),
    ('crm.forecast_no_rate(text,text,date)', 1),
    -- the outbox on Citus (issue 9)
    ('crm.node_event_head()', 1),
    ('crm.node_event_limit()', 1),
    ('crm.outbox_assign_position()', NULL),
    ('crm.engagement_recomputed_one(uuid)', 1),
    ('crm.engagement_recomputed_for(uuid)', 1),
    ('crm.account_summary_recomputed_one(uuid)', 1),
    ('crm.account_summary_recomputed_for(uuid)', 1),

    ('crm.forecast_snapshot_store(uuid,uuid,text,text,text,date,date,uuid,uuid,timestamp with time zone,jsonb)', NULL),
    ('crm.revenue_distribution_accum(internal,numeric,numeric)', NULL),
    ('crm.revenue_distribution_combine(internal,internal)', NULL),
    ('crm.revenue_distribution_serialize(internal)', NULL),
    ('crm.revenue_distribution_deserialize(bytea,internal)', NULL),
    ('crm.revenue_distribution_final(internal)', NULL),
    -- job queue and workflow rules (issue 12)
    ('crm.validate_rule(jsonb)', 1),
    ('crm.idempotency_key(text[])', 1),
    ('crm.enqueue_job(text,jsonb,uuid,timestamp with time zone,uuid,text,uuid,uuid,integer)', 2),
    ('crm.claim_jobs(text,text,integer,interval)', 2),
    ('crm.complete_job(uuid,jsonb,text)', 2),
    ('crm.fail_job(uuid,text,text)', 2),
    ('crm.extend_lease(uuid,interval,text)', 2),
    ('crm.reap_expired_leases()', 2),
    ('crm.retry_job(uuid)', 2),
    ('crm.enqueue_jobs(text,jsonb[],uuid[],timestamp with time zone,uuid[],text,uuid[],uuid,integer)', 2),
    ('crm.complete_jobs(uuid[],text,jsonb)', 2),
    ('crm.fail_jobs(uuid[],text,text)', 2),
    ('crm.purge_jobs(interval)', 3),
    ('crm.consume_event(text,jsonb,text)', 2),
    ('crm.run_jobs(integer)', 2),
    ('crm.run_time_rules(timestamp with time zone)', 3),
    ('crm.rule_condition_holds(uuid,jsonb)', 3),
    ('crm.workflow_rule_check()', NULL),
    ('crm.workflow_rule_event_exists()', NULL),
    ('crm.workflow_match()', NULL),
    ('crm.create_default_rules(uuid)', NULL),
    ('crm.schedule_maintenance()', NULL),
    ('crm.unschedule_maintenance()', NULL),
    -- scale-out (issue 9): the operator's, on the coordinator
    ('crm.distribute()', NULL),
    ('crm.distribution_problems()', NULL),
    -- the twins of the owner-writing calls (issue 9, src/shard.c): granted
    -- exactly as the function each runs
    ('crm.emit_event_in_shard(uuid,text,jsonb,text,uuid)', 2),
    ('crm.subscribe_in_shard(uuid,text,bigint)', 2),
    ('crm.unsubscribe_in_shard(uuid,text)', 2),
    ('crm.poll_in_shard(uuid,text,integer)', 2),
    ('crm.ack_in_shard(uuid,text,bigint)', 2),
    ('crm.purge_events_in_shard(uuid,interval)', 3),
    ('crm.scoring_rescore_in_shard(uuid,uuid,uuid,boolean)', 2),
    ('crm.pls_rebuild_in_shard(uuid,uuid)', 3),
    ('crm.snapshot_forecast_in_shard(uuid,text,text,date,date,uuid,uuid,timestamp with time zone)', 2),
    ('crm.enqueue_job_in_shard(uuid,text,jsonb,uuid,timestamp with time zone,uuid,text,uuid,uuid,integer)', 2),
    ('crm.enqueue_jobs_in_shard(uuid,text,jsonb[],uuid[],timestamp with time zone,uuid[],text,uuid[],uuid,integer)', 2),
    ('crm.claim_jobs_in_shard(uuid,text,text,integer,interval)', 2),
    ('crm.complete_job_in_shard(uuid,uuid,jsonb,text)', 2),
    ('crm.complete_jobs_in_shard(uuid,uuid[],text,jsonb)', 2),
    ('crm.fail_job_in_shard(uuid,uuid,text,text)', 2),
    ('crm.fail_jobs_in_shard(uuid,uuid[],text,text)', 2),
    ('crm.extend_lease_in_shard(uuid,uuid,interval,text)', 2),
    ('crm.reap_expired_leases_in_shard(uuid)', 2),
    ('crm.retry_job_in_shard(uuid,uuid)', 2),
    ('crm.purge_jobs_in_shard(uuid,interval)', 3),
    ('crm.consume_event_in_shard(uuid,text,jsonb,text)', 2),
    ('crm.shard_notifications(uuid)', 1),
    ('crm.shard_call_wanted()', 1);

-- The only SECURITY DEFINER functions: the visibility triggers written in
-- PL/pgSQL (hierarchy refresh, delete guard).  They read and update rows the
-- writer cannot see, act only on the tenant of the row that fired them, and
-- are granted to no one.
CREATE TEMP TABLE definer_function (sig text PRIMARY KEY);
INSERT INTO definer_function VALUES
    ('crm.visibility_delete_guard()'), ('crm.visibility_refresh(uuid)'),
    ('crm.visibility_refresh_records(uuid,uuid[])'), ('crm.visibility_hierarchy()');

-- The row-level security policies of every table.
CREATE TEMP TABLE table_policies (tbl name PRIMARY KEY, policies name[] NOT NULL);
INSERT INTO table_policies
SELECT t, '{tenant_isolation}'::name[] FROM unnest(ARRAY[
    'tenant', 'currency_rate', 'app_user', 'team', 'team_member', 'pipeline', 'stage', 'tag',
    'app_access', 'account', 'contact', 'lead', 'opportunity', 'activity',
    'account_tag', 'contact_tag', 'lead_tag', 'opportunity_tag', 'stage_history',
    -- activity aggregation and the event outbox (issue 7)
    'event', 'event_consumer', 'engagement_setting', 'activity_weight', 'contact_engagement',
    'lead_engagement', 'account_summary',
    -- lead scoring and the predictive win probability (issue 10)
    'scoring_model', 'lead_score_history', 'pls_config', 'pls_observation', 'pls_frequency',
    -- forecasting (issue 11)
    'quota', 'revenue_forecast', 'forecast_deal',
    -- job queue and workflow rules (issue 12)
    'job', 'job_archive', 'job_key', 'workflow_rule', 'inbound_event', 'job_debounce']) t
UNION ALL VALUES
    ('tenant_access', '{own_access,tenant_admin}'::name[]),
    ('currency', '{}'),
    ('activity_type', '{}'),
    ('job_action', '{}'),
    ('workflow_event', '{}');

-- The columns of crm.tenant that crm_admin may UPDATE (the table itself not).
CREATE TEMP TABLE tenant_admin_column (col name PRIMARY KEY);
INSERT INTO tenant_admin_column VALUES ('name'), ('visibility'), ('default_currency'), ('settings');

-- Every table, view and function of crm, from the catalogs.
CREATE TEMP VIEW crm_relation AS
SELECT c.oid, c.relname, c.relkind, c.reloptions FROM pg_class c
 WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm');

CREATE TEMP VIEW crm_function AS
SELECT p.oid, p.proname, p.oid::regprocedure::text AS sig,
       ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY a(t, n)
              ORDER BY n)::name[] AS args
  FROM pg_proc p WHERE p.pronamespace = 'crm'::regnamespace;

-- Every privilege in crm and every tie between the crm roles, to compare
-- before and after a second crm.setup_roles().
CREATE TEMP VIEW crm_acl AS
SELECT 'relation' AS kind, c.oid::regclass::text AS object, coalesce(c.relacl, acldefault('r', c.relowner)) AS acl
  FROM pg_class c WHERE c.relnamespace = 'crm'::regnamespace
UNION ALL
SELECT 'column', c.oid::regclass::text || '.' || a.attname, a.attacl
  FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attacl IS NOT NULL
 WHERE c.relnamespace = 'crm'::regnamespace
UNION ALL
SELECT 'function', p.oid::regprocedure::text, coalesce(p.proacl, acldefault('f', p.proowner))
  FROM pg_proc p WHERE p.pronamespace = 'crm'::regnamespace
UNION ALL
SELECT 'type', t.oid::regtype::text, coalesce(t.typacl, acldefault('T', t.typowner))
  FROM pg_type t WHERE t.typnamespace = 'crm'::regnamespace AND t.typtype = 'd'
UNION ALL
SELECT 'schema', n.nspname::text, coalesce(n.nspacl, acldefault('n', n.nspowner))
  FROM pg_namespace n WHERE n.nspname = 'crm';

CREATE TEMP VIEW crm_privilege_snapshot AS
SELECT a.kind, a.object,
       CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE x.grantee::regrole::text END AS grantee,
       x.privilege_type, x.is_grantable, x.grantor::regrole::text AS grantor
  FROM crm_acl a, aclexplode(a.acl) x
UNION ALL
SELECT 'membership', m.roleid::regrole::text, m.member::regrole::text, 'MEMBER', m.admin_option,
       m.grantor::regrole::text
  FROM pg_auth_members m
 WHERE m.roleid::regrole::text IN (SELECT role FROM role_level)
   AND m.member::regrole::text IN (SELECT role FROM role_level);

SELECT plan(21
    + (SELECT count(*)::int FROM role_level)
    + (SELECT count(*)::int FROM table_policies)
    + (SELECT count(*)::int FROM crm_relation) * (SELECT count(*)::int FROM role_level)
    + (SELECT count(*)::int FROM pg_attribute
        WHERE attrelid = 'crm.tenant'::regclass AND attnum > 0 AND NOT attisdropped) * 2
    + (SELECT count(*)::int FROM crm_function) * (SELECT count(*)::int FROM role_level));

-- Row-level security --------------------------------------------------------

SELECT set_eq(
    $$SELECT relname FROM crm_relation WHERE relkind IN ('r', 'p')$$,
    $$SELECT tbl FROM table_policies$$,
    'the policy design below names every crm table');

SELECT policies_are('crm', tbl, policies,
    CASE WHEN policies = '{}' THEN format('crm.%I has no policies', tbl)
         ELSE format('crm.%I has exactly the policies %s', tbl, array_to_string(policies, ', ')) END)
  FROM table_policies ORDER BY tbl;

SELECT is_empty(
    $$SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity
        FROM pg_class c
       WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind IN ('r', 'p')
         AND EXISTS (SELECT 1 FROM pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
         AND NOT (c.relrowsecurity AND c.relforcerowsecurity)
       ORDER BY 1$$,
    'row-level security is enabled and forced on every table with tenant_id');

-- One permissive policy per table: Citus copies a restrictive policy to
-- the shards as a permissive one.  On the records and what hangs off them
-- it carries owner visibility as well.
SELECT is_empty(
    $$SELECT p.polrelid::regclass, p.polpermissive, p.polcmd, p.polroles,
             pg_get_expr(p.polqual, p.polrelid) AS using, pg_get_expr(p.polwithcheck, p.polrelid) AS check
        FROM pg_policy p
       WHERE p.polname = 'tenant_isolation'
         AND NOT (p.polpermissive AND p.polcmd = '*' AND p.polroles = '{0}'
                  AND pg_get_expr(p.polqual, p.polrelid)
                      = CASE WHEN EXISTS (SELECT 1 FROM pg_attribute a
                                           WHERE a.attrelid = p.polrelid AND a.attname = 'visible_to')
                              AND p.polrelid::regclass::text IN ('crm.event', 'crm.job', 'crm.job_archive')
                             THEN '((tenant_id = crm.current_tenant()) AND ((visible_to IS NULL) OR (crm.current_user_id() = ANY (visible_to)) OR crm.is_admin() OR crm.is_service()))'
                             WHEN EXISTS (SELECT 1 FROM pg_attribute a
                                           WHERE a.attrelid = p.polrelid AND a.attname = 'visible_to')
                             THEN '((tenant_id = crm.current_tenant()) AND ((visible_to IS NULL) OR (crm.current_user_id() = ANY (visible_to)) OR crm.is_admin()))'
                             ELSE '(tenant_id = crm.current_tenant())' END
                  AND pg_get_expr(p.polwithcheck, p.polrelid) = pg_get_expr(p.polqual, p.polrelid))
       ORDER BY 1::text$$,
    'every tenant_isolation policy is permissive, for all commands and roles, reading and writing only tenant_id = crm.current_tenant() (no sub-select: Citus refuses them), and on rows with visible_to only those the user sees');

SELECT is_empty(
    $$SELECT p.polrelid::regclass, p.polname FROM pg_policy p
       WHERE p.polrelid::regclass::text LIKE 'crm.%' AND NOT p.polpermissive
       ORDER BY 1::text$$,
    'no crm policy is restrictive (Citus would copy it to the shards as permissive)');

SELECT set_eq(
    $$SELECT p.polname::text, p.polpermissive, p.polcmd::text, pg_get_expr(p.polqual, p.polrelid) AS using,
             pg_get_expr(p.polwithcheck, p.polrelid) AS check
        FROM pg_policy p WHERE p.polrelid = 'crm.tenant_access'::regclass$$,
    $$VALUES ('own_access', true, 'r', '(role_oid = (((CURRENT_USER)::text)::regrole)::oid)', NULL),
             ('tenant_admin', true, '*',
              '((tenant_id = crm.current_tenant()) AND crm.is_admin())',
              '((tenant_id = crm.current_tenant()) AND crm.is_admin())')$$,
    'crm.tenant_access: a role reads its own mappings; crm_admin manages those of its tenant');

SELECT is_empty(
    $$SELECT c.relname, c.reloptions FROM crm_relation c
       WHERE c.relkind = 'v' AND NOT coalesce('security_invoker=true' = ANY (c.reloptions), false)
       ORDER BY 1$$,
    'every crm view is security_invoker, so row-level security applies to whoever queries it');

-- Roles -----------------------------------------------------------------------

SELECT is_empty(
    $$SELECT n.role, r.rolcanlogin AS login, r.rolsuper AS superuser, r.rolcreaterole AS createrole,
             r.rolcreatedb AS createdb, r.rolreplication AS replication, r.rolbypassrls AS bypassrls,
             r.rolinherit AS inherit
        FROM unnest(ARRAY['crm_reader', 'crm_writer', 'crm_admin', 'crm_app']) n(role)
        LEFT JOIN pg_roles r ON r.rolname = n.role
       WHERE r.oid IS NULL OR r.rolcanlogin OR r.rolsuper OR r.rolcreaterole OR r.rolcreatedb
          OR r.rolreplication OR r.rolbypassrls OR NOT r.rolinherit$$,
    'the group roles exist, NOLOGIN, INHERIT, without superuser, createrole, createdb, replication or bypassrls');

SELECT is_member_of('crm_reader', 'crm_writer', 'crm_writer is a member of crm_reader');
SELECT is_member_of('crm_writer', 'crm_admin', 'crm_admin is a member of crm_writer');

SELECT set_eq(
    $$SELECT m.roleid::regrole::text, m.member::regrole::text FROM pg_auth_members m
       WHERE m.roleid::regrole::text IN ('crm_reader', 'crm_writer', 'crm_admin', 'crm_app')
         AND m.member::regrole::text IN ('crm_reader', 'crm_writer', 'crm_admin', 'crm_app')$$,
    $$VALUES ('crm_reader', 'crm_writer'), ('crm_writer', 'crm_admin')$$,
    'the group roles are tied by exactly reader <- writer <- admin; crm_app stands apart');

-- The privilege matrix ------------------------------------------------------

SELECT schema_privs_are('crm', role, CASE WHEN level >= 1 THEN ARRAY['USAGE'] ELSE '{}' END::name[])
  FROM role_level ORDER BY level, role;

SELECT set_eq(
    $$SELECT role::text FROM role_level WHERE has_type_privilege(role, 'crm.email_address', 'USAGE')$$,
    ARRAY['crm_reader', 'crm_writer', 'crm_admin'],
    'only the reader, writer and admin roles may use the domain crm.email_address');

SELECT table_privs_are('crm', c.relname, r.role,
    (CASE WHEN r.level >= 1 THEN ARRAY['SELECT'] ELSE '{}' END
     || CASE WHEN r.level >= 1 AND r.level >= d.level THEN ARRAY['INSERT', 'UPDATE', 'DELETE'] ELSE '{}' END
     || CASE WHEN r.level >= 1 AND r.level >= i.level THEN ARRAY['INSERT'] ELSE '{}' END)::name[])
  FROM crm_relation c
  CROSS JOIN role_level r
  LEFT JOIN table_dml d ON d.tbl = c.relname AND c.relkind IN ('r', 'p')
  LEFT JOIN table_insert_only i ON i.tbl = c.relname AND c.relkind IN ('r', 'p')
 ORDER BY c.relname, r.level, r.role;

SELECT column_privs_are('crm', 'tenant', a.attname, r.role,
    (ARRAY['SELECT'] || CASE WHEN r.level >= 3 AND a.attname IN (SELECT col FROM tenant_admin_column)
                             THEN ARRAY['UPDATE'] ELSE '{}' END)::name[])
  FROM pg_attribute a
  CROSS JOIN role_level r
 WHERE a.attrelid = 'crm.tenant'::regclass AND a.attnum > 0 AND NOT a.attisdropped
   AND r.role IN ('crm_writer', 'crm_admin')
 ORDER BY a.attnum, r.level;

SELECT is_empty(
    $$SELECT c.oid::regclass, a.attname, a.attacl FROM pg_class c
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attacl IS NOT NULL
       WHERE c.relnamespace = 'crm'::regnamespace
         AND NOT (c.oid = 'crm.tenant'::regclass AND a.attname IN (SELECT col FROM tenant_admin_column)
                  AND a.attacl = ARRAY[format('crm_admin=w/%s', c.relowner::regrole)]::aclitem[])
       ORDER BY 1::text, a.attnum$$,
    'the only column grants are UPDATE to crm_admin on crm.tenant''s name, visibility, default_currency and settings');

SELECT set_eq(
    $$SELECT sig FROM crm_function$$,
    $$SELECT sig FROM func_level$$,
    'the privilege design below names every crm function');

SELECT function_privs_are('crm', f.proname, f.args, r.role,
    CASE WHEN r.level >= 1 AND r.level >= l.level THEN ARRAY['EXECUTE'] ELSE '{}' END::name[])
  FROM crm_function f
  CROSS JOIN role_level r
  LEFT JOIN func_level l ON l.sig = f.sig
 ORDER BY f.sig, r.level, r.role;

-- Hardening -------------------------------------------------------------------

SELECT is_empty(
    $$SELECT p.oid::regprocedure FROM pg_proc p,
             aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) x
       WHERE p.pronamespace = 'crm'::regnamespace AND x.grantee = 0
       ORDER BY 1::text$$,
    'no crm function is executable by PUBLIC');

SELECT is_empty(
    $$SELECT c.relkind, c.oid::regclass, x.privilege_type FROM pg_class c,
             aclexplode(coalesce(c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char", c.relowner))) x
       WHERE c.relnamespace = 'crm'::regnamespace AND x.grantee = 0
       ORDER BY 2::text$$,
    'PUBLIC has no privilege on any crm table, view or sequence');

SELECT is_empty(
    $$SELECT p.oid::regprocedure, p.proconfig FROM pg_proc p
       WHERE p.pronamespace = 'crm'::regnamespace AND p.prosecdef
         AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) s WHERE s LIKE 'search\_path=%')
       ORDER BY 1::text$$,
    'no crm SECURITY DEFINER function lacks a pinned search_path');

SELECT set_eq(
    $$SELECT p.oid::regprocedure::text FROM pg_proc p
       WHERE p.pronamespace = 'crm'::regnamespace AND p.prosecdef$$,
    $$SELECT sig FROM definer_function$$,
    'the only SECURITY DEFINER functions are the visibility triggers; every other runs with its caller''s rights and row-level security');

SELECT is_empty(
    $$SELECT p.oid::regprocedure FROM pg_proc p
       WHERE p.pronamespace = 'crm'::regnamespace AND p.proleakproof
       ORDER BY 1::text$$,
    'no crm function is LEAKPROOF');

SELECT is_empty(
    $$SELECT p.oid::regprocedure, l.lanname, p.proconfig FROM pg_proc p
        JOIN pg_language l ON l.oid = p.prolang
       WHERE p.pronamespace = 'crm'::regnamespace AND l.lanname <> 'c'
         AND p.prosqlbody IS NULL
         AND p.prokind <> 'a' -- an aggregate takes no SET; its support functions are checked
         AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)
       ORDER BY 1::text$$,
    'every crm function not written in C, nor with a SQL-standard body bound at creation, runs with SET search_path = pg_catalog, pg_temp');

-- crm.setup_roles() is idempotent -------------------------------------------

CREATE TEMP TABLE privileges_before AS SELECT * FROM crm_privilege_snapshot;

SELECT lives_ok('SELECT crm.setup_roles()', 'crm.setup_roles() runs again when the roles and grants exist');

SELECT set_eq(
    'SELECT * FROM crm_privilege_snapshot',
    'SELECT * FROM privileges_before',
    'a second crm.setup_roles() leaves every privilege and membership as it was');

SELECT * FROM finish();
ROLLBACK;
