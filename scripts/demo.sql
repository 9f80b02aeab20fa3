-- The demo that `make demo` runs in the database crm_demo: load the sample
-- data with one statement, work the pipeline as a sales team would, and show
-- what the CRM makes of it.
\set QUIET on
\pset footer off
SET client_min_messages = warning;

\echo
\echo '== Demo data: SELECT crm.load_demo()  (a tenant with the sample data of shared/seeds/004)'
SELECT crm.load_demo() AS tenant \gset
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
SELECT currency, total_leads, active_leads, converted_leads, opportunities_count, opportunities_value,
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
\echo '== Forecast (issue 11): by month, Salesforce categories rolled up, the revenue range'
SELECT to_char(period_start, 'YYYY-MM') AS month, open_deals, open_pipeline, best_case, commit,
       closed_won, weighted, expected, p10, p50, p90, error_bound
  FROM crm.forecast('month');
\echo '   what if the Global Industries deal went to 90%? (nothing is written)'
SELECT to_char(period_start, 'YYYY-MM') AS month, weighted, expected, p50
  FROM crm.forecast_what_if(jsonb_build_array(jsonb_build_object(
           'opportunity', (SELECT id FROM crm.opportunity WHERE name LIKE 'Global%'), 'probability', 90)),
       'month');
\echo '   a snapshot (ForecastCreated goes to the outbox), then the waterfall after a deal is lost'
SELECT crm.snapshot_forecast('Demo', 'quarter', date_trunc('quarter', now())::date,
                             (date_trunc('quarter', now()) + interval '1 year' - interval '1 day')::date) AS snap1 \gset
SELECT o.id AS lose FROM crm.opportunity o WHERE o.status = 'open' ORDER BY o.amount DESC LIMIT 1 \gset
SELECT name, status FROM crm.opportunity_mark_lost(:'lose', 'Chose a competitor');
SELECT crm.snapshot_forecast('Demo, later', 'quarter', date_trunc('quarter', now())::date,
                             (date_trunc('quarter', now()) + interval '1 year' - interval '1 day')::date) AS snap2 \gset
SELECT * FROM crm.forecast_changes(:'snap1', :'snap2');
SELECT event_type, payload ->> 'expected' AS expected FROM crm.event WHERE event_type = 'ForecastCreated';
