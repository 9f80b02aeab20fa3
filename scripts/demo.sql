-- The demo that `make demo` runs in the database crm_demo: load the sample
-- data with one statement, work the pipeline as a sales team would, and show
-- what the CRM makes of it. Sections follow the README's tour. Everything
-- runs as the superuser acting for the demo tenant, except where a section
-- says it runs as crm_demo (a mapped writer) to show a refusal.
\set QUIET on
\pset footer off
SET client_min_messages = warning;

\echo
\echo '== Demo data: SELECT crm.load_demo()'
\echo '   a tenant with 5 accounts and their contacts, 5 leads, 4 deals, 3 users in a team, 3 months of activities'
SELECT crm.load_demo() AS tenant \gset

-- The group roles and a login role for the person trying the demo: a
-- superuser bypasses row-level security, so the demo is opened as crm_demo,
-- a writer mapped to the demo tenant (as Ben Carter), which sees and writes
-- that tenant's rows only.
\echo
\echo '== Roles: SELECT crm.setup_roles(); a login role crm_demo (crm_writer) mapped to the demo tenant'
SELECT crm.setup_roles() \g /dev/null
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'crm_demo') AS make_demo_role \gset
\if :make_demo_role
CREATE ROLE crm_demo LOGIN;
\endif
GRANT crm_writer TO crm_demo;
SELECT crm.grant_tenant_access('crm_demo', :'tenant',
                               (SELECT u.id FROM crm.app_user u WHERE u.tenant_id = :'tenant' AND u.name = 'Ben Carter'))
    \g /dev/null
SELECT r.login_role AS role, t.name AS tenant, u.name AS acts_as
  FROM crm.tenant_access r JOIN crm.tenant t USING (tenant_id) LEFT JOIN crm.app_user u ON u.id = r.user_id
 WHERE r.login_role = 'crm_demo';
-- act for that tenant as an application would (SET LOCAL per transaction in an app)
SELECT set_config('crm.tenant_id', :'tenant', false) \g /dev/null
SELECT id AS ben FROM crm.app_user WHERE name = 'Ben Carter' \gset
SELECT set_config('crm.user_id', :'ben', false) \g /dev/null

SELECT (SELECT count(*) FROM crm.account) AS accounts, (SELECT count(*) FROM crm.contact) AS contacts,
       (SELECT count(*) FROM crm.lead) AS leads, (SELECT count(*) FROM crm.opportunity) AS opportunities,
       (SELECT count(*) FROM crm.tag) AS tags, (SELECT count(*) FROM crm.activity) AS activities;

\echo
\echo '== Working the pipeline (functions and plain UPDATEs alike)'
\echo '   crm.opportunity_move_stage: Global Industries deal to Negotiation'
SELECT o.name, s.name AS stage, o.status, o.probability
  FROM crm.opportunity_move_stage((SELECT id FROM crm.opportunity WHERE name LIKE 'Global%'),
                                  (SELECT s.id FROM crm.stage s JOIN crm.pipeline p ON p.id = s.pipeline_id
                                    WHERE p.is_default AND s.name = 'Negotiation')) o
  JOIN crm.stage s ON s.id = o.stage_id;
\echo '   crm.opportunity_mark_won: Acme Corp'
SELECT name, status, probability, closed_at IS NOT NULL AS closed
  FROM crm.opportunity_mark_won((SELECT id FROM crm.opportunity WHERE name LIKE 'Acme%'));
\echo '   crm.opportunity_mark_lost: EduLearn, with a reason'
SELECT name, status, lost_reason
  FROM crm.opportunity_mark_lost((SELECT id FROM crm.opportunity WHERE name LIKE 'EduLearn%'), 'Budget frozen');
\echo '   crm.lead_convert: the Tech Innovators webinar lead (finds the existing account and contact)'
SELECT * FROM crm.lead_convert((SELECT id FROM crm.lead WHERE name LIKE 'Tech Innovators%')) \gset converted_
SELECT a.name AS account, c.first_name || ' ' || c.last_name AS contact, o.name AS opportunity, o.amount
  FROM crm.account a, crm.contact c, crm.opportunity o
 WHERE a.id = :'converted_account_id' AND c.id = :'converted_contact_id' AND o.id = :'converted_opportunity_id';
\echo '   a plain UPDATE from any client: every new lead moves on to Qualified'
UPDATE crm.lead l SET stage_id = q.id
  FROM crm.stage q, crm.stage n
 WHERE q.pipeline_id = l.pipeline_id AND q.name = 'Qualified'
   AND n.id = l.stage_id AND n.name = 'New' AND l.converted_at IS NULL;
SELECT s.name AS lead_stage, count(*) AS leads
  FROM crm.lead l JOIN crm.stage s ON s.id = l.stage_id WHERE l.converted_at IS NULL GROUP BY s.name, s.sequence
 ORDER BY s.sequence;

\echo
\echo '== Lifecycle: reopen, archive, and what a delete keeps'
\echo '   crm.opportunity_reopen: EduLearn back to Proposal (lost_reason and closed_at cleared)'
SELECT o.name, o.status, o.probability, o.lost_reason, o.closed_at
  FROM crm.opportunity_reopen((SELECT id FROM crm.opportunity WHERE name LIKE 'EduLearn%'),
                              (SELECT s.id FROM crm.stage s JOIN crm.pipeline p ON p.id = s.pipeline_id
                                WHERE p.is_default AND s.name = 'Proposal')) o;
\echo '   archived: out of the kanban, and no stage move until unarchived'
UPDATE crm.opportunity SET archived_at = now() WHERE name LIKE 'EduLearn%';
DO $$
BEGIN
    PERFORM crm.opportunity_mark_won((SELECT id FROM crm.opportunity WHERE name LIKE 'EduLearn%'));
EXCEPTION WHEN object_not_in_prerequisite_state THEN
    PERFORM set_config('demo.refused', SQLERRM || ' (SQLSTATE ' || SQLSTATE || ')', false);
END
$$;
SELECT (SELECT count(*) FROM crm.opportunity) AS deals,
       (SELECT sum(count) FROM crm.opportunity_kanban WHERE pipeline_name = 'Sales Pipeline') AS deals_on_the_kanban,
       regexp_replace(current_setting('demo.refused'), '[0-9a-f-]{36}', 'EduLearn') AS marking_it_won;
UPDATE crm.opportunity SET archived_at = NULL WHERE name LIKE 'EduLearn%';
\echo '   deleting the contact with the most activities (rolled back): activities about something else too, and all stage history, stay'
BEGIN;
SELECT first_name || ' ' || last_name AS deleted_contact, (SELECT count(*) FROM crm.activity) AS activities_before,
       (SELECT count(*) FROM crm.stage_history) AS history_before
  FROM crm.contact WHERE id = (SELECT contact_id FROM crm.activity WHERE contact_id IS NOT NULL
                                GROUP BY contact_id ORDER BY count(*) DESC, contact_id LIMIT 1) \gset
DELETE FROM crm.contact WHERE first_name || ' ' || last_name = :'deleted_contact';
SELECT :'deleted_contact' AS deleted_contact, :activities_before AS activities_before,
       (SELECT count(*) FROM crm.activity) AS activities_after,
       :history_before AS history_before, (SELECT count(*) FROM crm.stage_history) AS history_after;
ROLLBACK;

\echo
\echo '== Opportunity kanban (Sales Pipeline), amounts in USD (the MedHealth deal is in EUR)'
SELECT stage_name AS stage, count, amount, weighted_amount
  FROM crm.opportunity_kanban WHERE pipeline_name = 'Sales Pipeline';
\echo '== Lead kanban (Sales Pipeline)'
SELECT stage_name AS stage, count, amount AS expected_revenue, weighted_amount
  FROM crm.lead_kanban WHERE pipeline_name = 'Sales Pipeline';

\echo
\echo '== Dashboard'
\x on
SELECT currency, total_leads, active_leads, converted_leads, open_opportunities_count, open_opportunities_value,
       won_count, won_value, lost_count, conversion_rate || ' %' AS conversion_rate
  FROM crm.dashboard;
\x off
SELECT d->>'stage' AS stage, (d->>'count')::int AS count, (d->>'amount')::numeric AS amount
  FROM crm.dashboard, jsonb_array_elements(pipeline_distribution) d
 WHERE d->>'pipeline' = 'Sales Pipeline';

\echo
\echo '== Stage history (written by a C trigger for every change, whoever made it)'
SELECT coalesce(o.name, l.name) AS record, f.name AS from_stage, t.name AS to_stage, h.amount,
       h.probability, u.name AS changed_by
  FROM crm.stage_history h
  JOIN crm.stage f ON f.id = h.from_stage_id
  JOIN crm.stage t ON t.id = h.to_stage_id
  LEFT JOIN crm.opportunity o ON o.id = h.opportunity_id
  LEFT JOIN crm.lead l ON l.id = h.lead_id
  LEFT JOIN crm.app_user u ON u.id = h.changed_by
 ORDER BY h.changed_at, h.id;

\echo
\echo '== Recent activity by module'
SELECT module, count(*) AS activities, max(occurred_at)::date AS last
  FROM crm.activity WHERE status = 'completed' GROUP BY module ORDER BY activities DESC;

\echo
\echo '== Private visibility: who would see how many deals, activities and history rows'
\echo '   UPDATE crm.tenant SET visibility = ''private'': each row carries visible_to, kept by triggers'
UPDATE crm.tenant SET visibility = 'private' WHERE tenant_id = :'tenant';
SELECT u.name AS crm_user, m.name AS reports_to,
       (SELECT count(*) FROM crm.opportunity o WHERE o.tenant_id = u.tenant_id
           AND (o.visible_to IS NULL OR u.id = ANY (o.visible_to))) AS deals,
       (SELECT count(*) FROM crm.activity a WHERE a.tenant_id = u.tenant_id
           AND (a.visible_to IS NULL OR u.id = ANY (a.visible_to))) AS activities,
       (SELECT count(*) FROM crm.stage_history h WHERE h.tenant_id = u.tenant_id
           AND (h.visible_to IS NULL OR u.id = ANY (h.visible_to))) AS history_rows
  FROM crm.app_user u LEFT JOIN crm.app_user m ON m.tenant_id = u.tenant_id AND m.id = u.manager_id
 WHERE u.tenant_id = :'tenant' ORDER BY u.name;
UPDATE crm.tenant SET visibility = 'public' WHERE tenant_id = :'tenant';

\echo
\echo '== Engagement: the most engaged contacts (completed activities, score with a 30-day half-life)'
SELECT c.first_name || ' ' || coalesce(c.last_name, '') AS contact, e.activity_count, e.counts_by_module,
       e.last_activity_at::date AS last_contacted, round(crm.engagement_score(c.id)::numeric, 2) AS score
  FROM crm.contact_engagement e JOIN crm.contact c ON c.tenant_id = e.tenant_id AND c.id = e.contact_id
 ORDER BY score DESC LIMIT 5;
\echo '   crm.track_activity: Emily Davis opens an e-mail (seeds/000 weight 2), and her score moves at once'
SELECT id AS emily, round(crm.engagement_score(id)::numeric, 2) AS score_before
  FROM crm.contact WHERE first_name = 'Emily' AND last_name = 'Davis' \gset
SELECT crm.track_activity(:'emily', 'email_opened', '{"campaign": "spring"}') \g /dev/null
SELECT 'Emily Davis' AS contact, :score_before AS score_before,
       round(crm.engagement_score(:'emily')::numeric, 2) AS score_after;
\echo '   account roll-ups (amounts per currency, never added across)'
SELECT a.name AS account, s.contact_count, s.activity_count, s.open_opportunity_count, s.open_amounts, s.won_amounts
  FROM crm.account_summary s JOIN crm.account a ON a.tenant_id = s.tenant_id AND a.id = s.account_id
 ORDER BY a.name;
SELECT count(*) AS aggregates_differing_from_recomputation FROM crm.check_aggregates();

\echo
\echo '== Pipeline analytics: funnel, lead sources, owners'
SELECT stage_name, reached, moved_on, conversion_rate FROM crm.pipeline_funnel()
 WHERE pipeline_name = 'Sales Pipeline';
SELECT * FROM crm.lead_source_analytics();
SELECT owner_name, open_deals, open_amount, won_deals, won_amount, activities_completed, rotting_deals
  FROM crm.owner_dashboard();

\echo
\echo '== The outbox: every event so far, read by a consumer ''demo'' subscribed from the start'
SELECT crm.subscribe('demo', 0) \g /dev/null
SELECT event_type, entity, count(*) AS events FROM crm.poll('demo', 100000) GROUP BY 1, 2 ORDER BY 3 DESC, 1;

\echo
\echo '== Lead scoring (fit per seeds/002 + engagement), best first'
SELECT name, score, fit_score, engagement_score, qualification FROM crm.top_leads(5);
\echo '-- why the best lead scores what it does (the points add up to its score)'
SELECT e.factor_group, e.factor, e.value, e.model_points, e.model_max, e.points
  FROM crm.explain_score((SELECT lead_id FROM crm.top_leads(1))) e
 WHERE e.factor_group = 'fit' OR e.model_points > 0;

\echo
\echo '== Predictive win probability of the open deals (Odoo-style, exact)'
SELECT o.name, s.name AS stage, o.probability AS stage_probability, crm.predict_win(o.id) AS predicted
  FROM crm.opportunity o JOIN crm.stage s ON s.id = o.stage_id
 WHERE o.status = 'open' ORDER BY o.name;
SELECT count(*) AS model_drift FROM crm.pls_check();

\echo '== Forecast: by month, Salesforce categories rolled up, the revenue range'
SELECT to_char(period_start, 'YYYY-MM') AS month, open_deals, open_pipeline, best_case, commit,
       closed_won, weighted, expected, p10, p50, p90, error_bound
  FROM crm.forecast('month');
\echo '   what if the Global Industries deal (Negotiation, 75%) went to 90%? (nothing is written)'
SELECT to_char(period_start, 'YYYY-MM') AS month, weighted, expected, p50
  FROM crm.forecast_what_if(jsonb_build_array(jsonb_build_object(
           'opportunity', (SELECT id FROM crm.opportunity WHERE name LIKE 'Global%'), 'probability', 90)),
       'month');
\echo '   a snapshot (ForecastCreated goes to the outbox), the MedHealth deal is lost, another snapshot: the waterfall'
SELECT crm.snapshot_forecast('Demo', 'quarter', date_trunc('quarter', now())::date,
                             (date_trunc('quarter', now()) + interval '1 year' - interval '1 day')::date) AS snap1 \gset
SELECT name, status FROM crm.opportunity_mark_lost((SELECT id FROM crm.opportunity WHERE name LIKE 'MedHealth%'),
                                                   'Chose a competitor');
SELECT crm.snapshot_forecast('Demo, later', 'quarter', date_trunc('quarter', now())::date,
                             (date_trunc('quarter', now()) + interval '1 year' - interval '1 day')::date) AS snap2 \gset
SELECT * FROM crm.forecast_changes(:'snap1', :'snap2');
SELECT event_type, payload ->> 'expected' AS expected FROM crm.event WHERE event_type = 'ForecastCreated'
 ORDER BY occurred_at;

\echo
\echo '== Workflow: rules fire in the transaction of the change; crm.run_jobs() carries out the in-database actions'
SELECT count(*) FILTER (WHERE active) AS active_rules, count(*) FILTER (WHERE NOT active) AS waiting_for_a_worker
  FROM crm.workflow_rule;
\echo '   a quote for John Smith (seeds/000: follow-up in 2 days), an order for the Global Industries deal (seeds/002: won + follow-up)'
SELECT crm.track_activity((SELECT id FROM crm.contact WHERE email = 'john.smith@acme.example'), 'quote_created',
                          '{"quote_id": 456, "amount": 5000}') \g /dev/null
SELECT crm.consume_event('OrderCreated',
                         jsonb_build_object('opportunityId', (SELECT id FROM crm.opportunity WHERE name LIKE 'Global%'),
                                            'orderId', 'SO-1001'),
                         'demo-order-SO-1001') \g /dev/null
\echo '   the jobs waiting (the demo data''s own quotes and stage moves fired rules as they were loaded)'
SELECT r.name AS rule, j.action, j.queue, count(*) AS jobs
  FROM crm.job j JOIN crm.workflow_rule r ON r.tenant_id = j.tenant_id AND r.id = j.rule_id
 GROUP BY r.name, j.action, j.queue ORDER BY r.name;
SELECT crm.run_jobs() AS jobs_run;
SELECT o.name, o.status FROM crm.opportunity o WHERE o.name LIKE 'Global%';
SELECT subject, due_at::date - current_date AS due_in_days, count(*) AS tasks FROM crm.activity
 WHERE activity_type = 'task' AND status = 'scheduled' AND details ? 'job_id' GROUP BY 1, 2 ORDER BY subject;

\echo
\echo '== Values the CRM refuses and columns the server owns (tried in a transaction that is rolled back)'
BEGIN;
SELECT crm.is_blank(E'\u00a0\t\u2003') AS "no-break space, tab, em space: blank",
       crm.is_blank(E'\u00a0Acme') AS "with a letter: blank";
INSERT INTO crm.account (name, created_at, updated_at) VALUES ('Backdated Ltd', '1970-01-01', '2999-01-01')
RETURNING name, created_at = now() AS "created_at is the server's", updated_at = now() AS "updated_at is the server's";
SELECT conname AS "refuses NaN and infinities", pg_get_constraintdef(oid) AS "check"
  FROM pg_constraint WHERE conrelid = 'crm.opportunity'::regclass AND conname = 'opportunity_amount_finite';
ROLLBACK;

\echo
\echo '== Security: as crm_demo, no LOCK TABLE on a crm table and no per-table statistics (all tenants are in them)'
SET ROLE crm_demo;
DO $$
BEGIN
    LOCK TABLE crm.account IN ACCESS EXCLUSIVE MODE;
EXCEPTION WHEN insufficient_privilege THEN
    PERFORM set_config('demo.lock', SQLERRM || ' (SQLSTATE ' || SQLSTATE || ')', false);
END
$$;
DO $$
BEGIN
    PERFORM n_live_tup FROM pg_catalog.pg_stat_user_tables;
EXCEPTION WHEN insufficient_privilege THEN
    PERFORM set_config('demo.stats', SQLERRM || ' (SQLSTATE ' || SQLSTATE || ')', false);
END
$$;
RESET ROLE;
SELECT 'LOCK TABLE crm.account' AS "crm_demo tries", current_setting('demo.lock') AS "and gets"
UNION ALL
SELECT 'SELECT FROM pg_stat_user_tables', current_setting('demo.stats');

\echo
\echo '== Job queue batches: a producer''s batch in one call, a worker''s batch reported in one call'
SELECT cardinality(crm.enqueue_jobs('webhook', ARRAY['{"url": "https://hooks.example/a"}',
                                                     '{"url": "https://hooks.example/b"}']::jsonb[])) AS enqueued;
SELECT array_agg(id) AS demo_claimed FROM crm.claim_jobs('webhook', 'demo-worker', 10, '1 minute') \gset
SELECT crm.complete_jobs(:'demo_claimed', 'demo-worker', '{"status": 200}') AS completed;
SELECT outcome, count(*) AS jobs FROM crm.job_archive WHERE queue = 'webhook' GROUP BY outcome;
