-- Workflow rules: matched against the outbox in the transaction of the
-- change, each match a job with an idempotency key; the default rules of
-- seeds/000 and seeds/002 end to end (the change, the job, run_jobs, the
-- effect); conditions over the payload; stage reached; debounce; consent;
-- inbound events taken once; time conditions; every error.
SET client_min_messages = warning;
SELECT crm.create_tenant('Flow Co') AS tenant \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'tenant';

-- crm.create_tenant made the default rules; those that need an external
-- service start inactive.
SELECT builtin_key, event, action, active, stage_id IS NOT NULL AS on_stage
  FROM crm.workflow_rule ORDER BY builtin_key;

INSERT INTO crm.account (name) VALUES ('Acme') RETURNING id AS acme \gset
INSERT INTO crm.contact (first_name, email, account_id) VALUES ('Ann', 'ann@acme.example', :'acme')
    RETURNING id AS ann \gset
INSERT INTO crm.contact (first_name, email, account_id, email_opt_out)
     VALUES ('Otto', 'otto@acme.example', :'acme', true) RETURNING id AS otto \gset
INSERT INTO crm.opportunity (name, account_id, contact_id, amount) VALUES ('Acme deal', :'acme', :'ann', 5000)
    RETURNING id AS deal \gset

-- seeds/000: quote created -> follow-up task in 2 days (the confirmation
-- e-mail rule is inactive). A rolled-back change leaves no job.
BEGIN;
SELECT crm.track_activity(:'ann', 'quote_created', '{"quote_id": 6}') IS NOT NULL AS tracked;
SELECT count(*) AS jobs_inside FROM crm.job;
ROLLBACK;
SELECT count(*) AS jobs_after_rollback FROM crm.job;
SELECT crm.track_activity(:'ann', 'quote_created', '{"quote_id": 7}') AS quote \gset
SELECT j.action, j.queue, j.params->>'subject' AS subject, j.params->>'event_type' AS event,
       j.params->'payload'->>'activityId' = :'quote' AS from_the_quote, j.contact_id = :'ann' AS for_ann,
       r.builtin_key
  FROM crm.job j JOIN crm.workflow_rule r ON r.tenant_id = j.tenant_id AND r.id = j.rule_id;
SELECT crm.run_jobs() AS ran;
SELECT activity_type, subject, status, due_at - created_at = interval '2 days' AS due_in_2_days,
       contact_id = :'ann' AS for_ann
  FROM crm.activity WHERE activity_type = 'task';
SELECT action, outcome FROM crm.job_archive;

-- Consent at enqueue: with the confirmation rule on, the opted-out contact's
-- e-mail is recorded as skipped with the reason; Ann's waits for a worker.
UPDATE crm.workflow_rule SET active = true WHERE builtin_key = 'quote_confirmation';
SELECT count(*) FROM (SELECT crm.track_activity(:'otto', 'quote_created'),
                             crm.track_activity(:'ann', 'quote_created')) s;
SELECT a.action, a.outcome, a.reason, a.contact_id = :'otto' AS for_otto
  FROM crm.job_archive a WHERE a.action = 'send_email';
SELECT j.action, j.queue, j.contact_id = :'ann' AS for_ann FROM crm.job j WHERE j.action = 'send_email';

-- seeds/002: OfferApproved moves the deal to Negotiation; entering
-- Negotiation fires its stage rule (a task); OrderCreated marks it won and
-- asks for a follow-up. An event delivered twice is taken once.
SELECT crm.consume_event('OfferApproved', jsonb_build_object('opportunityId', :'deal', 'offerId', 'Q-7'), 'offer-7')
       IS NOT NULL AS taken;
SELECT crm.consume_event('OfferApproved', jsonb_build_object('opportunityId', :'deal', 'offerId', 'Q-7'), 'offer-7')
       IS NULL AS taken_once;
SELECT crm.run_jobs() AS ran;
SELECT s.name AS stage, o.probability FROM crm.opportunity o JOIN crm.stage s ON s.tenant_id = o.tenant_id AND s.id = o.stage_id
 WHERE o.id = :'deal';
SELECT j.action, j.params->>'subject' AS subject FROM crm.job j WHERE j.queue = 'crm';
SELECT crm.run_jobs() AS ran;
SELECT subject FROM crm.activity WHERE activity_type = 'task' AND opportunity_id = :'deal' ORDER BY subject;
-- OfferRejected lowers the probability by 20.
SELECT crm.consume_event('OfferRejected', jsonb_build_object('opportunityId', :'deal'), 'offer-8') IS NOT NULL AS taken;
SELECT crm.run_jobs() AS ran;
SELECT probability FROM crm.opportunity WHERE id = :'deal';
SELECT crm.consume_event('OrderCreated', jsonb_build_object('opportunityId', :'deal', 'orderId', 'O-1'), 'order-1')
       IS NOT NULL AS taken;
SELECT crm.run_jobs() AS ran;
SELECT status, probability FROM crm.opportunity WHERE id = :'deal';
SELECT subject FROM crm.activity WHERE activity_type = 'task' AND opportunity_id = :'deal' ORDER BY subject;

-- A stage rule fires on the transition into its stage, not on every
-- update of a record already there.
INSERT INTO crm.opportunity (name, amount) VALUES ('Second deal', 100) RETURNING id AS second \gset
SELECT id AS proposal FROM crm.stage s WHERE s.name = 'Proposal'
   AND s.pipeline_id = (SELECT pipeline_id FROM crm.opportunity WHERE id = :'second') \gset
SELECT id AS qualified FROM crm.stage s WHERE s.name = 'Qualified'
   AND s.pipeline_id = (SELECT pipeline_id FROM crm.opportunity WHERE id = :'second') \gset
UPDATE crm.opportunity SET stage_id = :'proposal' WHERE id = :'second';
UPDATE crm.opportunity SET amount = 200 WHERE id = :'second';
UPDATE crm.opportunity SET next_step = 'call' WHERE id = :'second';
SELECT count(*) AS proposal_jobs FROM crm.job WHERE source_id = :'second';
UPDATE crm.opportunity SET stage_id = :'qualified' WHERE id = :'second';
UPDATE crm.opportunity SET stage_id = :'proposal' WHERE id = :'second';
SELECT count(*) AS proposal_jobs_after_reentry FROM crm.job WHERE source_id = :'second';

-- Conditions over the payload, old and new values alike (fromStage, toStage).
INSERT INTO crm.workflow_rule (name, event, condition, action, params) VALUES
    ('Big deal: tag it', 'OpportunityCreated',
     '{"all": [{"field": "expectedValue", "op": ">=", "value": 10000}, {"field": "currency", "op": "in", "value": ["USD", "EUR"]}]}',
     'add_tag', '{"tag": "Big Deal"}'),
    ('Back from Proposal: tag it', 'OpportunityStageChanged',
     jsonb_build_object('all', jsonb_build_array(
         jsonb_build_object('field', 'fromStage', 'op', '=', 'value', :'proposal'),
         jsonb_build_object('field', 'toStage', 'op', '=', 'value', :'qualified'))),
     'add_tag', '{"tag": "Stalled"}');
INSERT INTO crm.opportunity (name, amount, currency) VALUES ('Small', 50, 'USD'), ('Huge', 50000, 'USD'), ('Huge in yen', 9000000, 'JPY');
UPDATE crm.opportunity SET stage_id = :'qualified' WHERE id = :'second';
SELECT crm.run_jobs() AS ran;
SELECT o.name, string_agg(g.name, ', ' ORDER BY g.name) AS tags
  FROM crm.opportunity o JOIN crm.opportunity_tag t ON t.tenant_id = o.tenant_id AND t.opportunity_id = o.id
  JOIN crm.tag g ON g.tenant_id = t.tenant_id AND g.id = t.tag_id
 GROUP BY o.name ORDER BY o.name;

-- Debounce: at most one job per rule and record (here, contact) within the window.
INSERT INTO crm.workflow_rule (name, event, action, params, debounce) VALUES
    ('Calls: at most one thank-you a day', 'call', 'create_task', '{"subject": "Say thanks"}', '1 day');
SELECT count(*) FROM (SELECT crm.track_activity(:'ann', 'call'), crm.track_activity(:'ann', 'call'),
                             crm.track_activity(:'otto', 'call')) s;
SELECT count(*) AS thank_you_jobs, count(DISTINCT contact_id) AS contacts
  FROM crm.job j JOIN crm.workflow_rule r ON r.tenant_id = j.tenant_id AND r.id = j.rule_id
 WHERE r.name LIKE 'Calls:%';

-- Time conditions: no activity for 7 days; 3 days before the expected close.
INSERT INTO crm.workflow_rule (name, event, days, action, params) VALUES
    ('Quiet deal', 'NoActivityFor', 7, 'create_task', '{"subject": "Check in"}'),
    ('Closing soon', 'BeforeExpectedClose', 3, 'add_tag', '{"tag": "Closing"}');
UPDATE crm.opportunity SET expected_close_date = current_date + 2 WHERE name = 'Small';
SELECT crm.run_time_rules() AS matched_now;
SELECT crm.run_time_rules(now() + interval '8 days') AS matched_in_8_days;
SELECT crm.run_time_rules(now() + interval '9 days') AS matched_again;
SELECT r.name, count(*) AS jobs FROM crm.job j JOIN crm.workflow_rule r ON r.tenant_id = j.tenant_id AND r.id = j.rule_id
 WHERE r.event IN ('NoActivityFor', 'BeforeExpectedClose') GROUP BY r.name ORDER BY r.name;

-- Idempotency keys are name-based: the same parts, the same key.
SELECT crm.idempotency_key('a', 'b') = crm.idempotency_key('a', 'b') AS same,
       crm.idempotency_key('ab', 'c') <> crm.idempotency_key('a', 'bc') AS parts_matter;

-- Every problem of a condition at once.
SELECT * FROM crm.validate_rule('{"all": [{"field": "x", "op": "~", "value": 1}, {"foo": 1}, {"any": []},
                                          {"field": "y", "op": "in", "value": 3}, {"field": "z", "op": "exists", "value": 1}],
                                  "extra": 2}');
SELECT count(*) AS problems FROM crm.validate_rule('{"any": [{"field": "a.b", "op": ">=", "value": 1}, {"not": {"field": "c", "op": "exists"}}]}');

-- Bad input: one mistake, one SQLSTATE; nothing stored changes.
CREATE TEMP TABLE before_errors AS
    SELECT (SELECT count(*) FROM crm.workflow_rule) AS rules, (SELECT count(*) FROM crm.job) AS jobs,
           (SELECT count(*) FROM crm.event) AS events;
RESET ROLE;
SELECT s AS statement, try(s) AS result FROM unnest(ARRAY[
    $$INSERT INTO crm.workflow_rule (name, event, action) VALUES ('x', 'NoSuchEvent', 'notify')$$,
    $$INSERT INTO crm.workflow_rule (name, event, action) VALUES ('x', 'LeadCreated', 'fly_to_moon')$$,
    $$INSERT INTO crm.workflow_rule (name, event, condition, action) VALUES ('x', 'LeadCreated', '{"field": "x"}', 'notify')$$,
    $$INSERT INTO crm.workflow_rule (name, event, condition, action) VALUES ('x', 'LeadCreated', '[]', 'notify')$$,
    $$INSERT INTO crm.workflow_rule (name, event, action, delay) VALUES ('x', 'LeadCreated', 'notify', '-1 day')$$,
    $$INSERT INTO crm.workflow_rule (name, event, action, delay) VALUES ('x', 'LeadCreated', 'notify', '1000000 years')$$,
    $$INSERT INTO crm.workflow_rule (name, event, action, debounce) VALUES ('x', 'LeadCreated', 'notify', '1000000 years')$$,
    $$INSERT INTO crm.workflow_rule (name, event, action) VALUES ('x', 'NoActivityFor', 'notify')$$,
    $$INSERT INTO crm.workflow_rule (name, event, action) VALUES (E' \t', 'LeadCreated', 'notify')$$,
    $$SELECT crm.run_jobs(0)$$,
    $$SELECT crm.consume_event('LeadCreated', '{}', 'x-1')$$,
    $$SELECT crm.consume_event('Teleported', '{}', 'x-1')$$,
    $$SELECT crm.consume_event('OrderCreated', '{"opportunityId": "nope"}', 'x-1')$$,
    $$SELECT crm.consume_event('OrderCreated', '{"opportunityId": "00000000-0000-7000-8000-000000000000"}', 'x-1')$$,
    $$SELECT crm.consume_event('OrderCreated', '[]', 'x-1')$$,
    $$SELECT crm.consume_event('OrderCreated', '{}', NULL)$$,
    $$SELECT crm.consume_event('OrderCreated', '{"orderId": "O-1"}', 'x-2')$$,
    $$SELECT crm.consume_event('OfferRejected', '{"opportunityId": "00000000-0000-7000-8000-000000000000"}', '')$$,
    $$SELECT crm.idempotency_key(VARIADIC ARRAY[]::text[])$$,
    $$SELECT crm.idempotency_key('a', NULL)$$,
    $$SELECT crm.schedule_maintenance()$$]) s;
SET ROLE regress_crm_app;
SELECT (SELECT count(*) FROM crm.workflow_rule) = rules AND (SELECT count(*) FROM crm.job) = jobs
       AND (SELECT count(*) FROM crm.event) = events AS nothing_changed FROM before_errors;

-- Another tenant's session sees none of the rules and runs none of the jobs.
RESET ROLE;
SELECT crm.create_tenant('Other Flow') AS other \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'other';
SELECT count(*) AS rules_seen FROM crm.workflow_rule WHERE builtin_key IS NULL;
SELECT count(*) AS jobs_seen FROM crm.job;
SELECT crm.run_jobs() AS ran_for_other;
RESET crm.tenant_id;
RESET ROLE;

-- In-database actions on a lead act on the lead; one that would change
-- nothing fails (retried, then dead with its errors) instead of reporting
-- itself done.
SELECT crm.create_tenant('Lead Actions') AS la \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'la';
UPDATE crm.workflow_rule SET active = false;
INSERT INTO crm.workflow_rule (name, event, action, params) VALUES
    ('probability', 'LeadCreated', 'set_probability', '{"probability": 42}'),
    ('field', 'LeadCreated', 'set_field', '{"field": "description", "value": "from a rule"}'),
    ('custom', 'LeadCreated', 'set_field', '{"field": "campaign", "value": "spring"}'),
    ('stage', 'LeadCreated', 'move_stage', '{"stage": "Qualified"}');
INSERT INTO crm.lead (name) VALUES ('Rule Lead') RETURNING id AS rl \gset
SELECT crm.run_jobs(10) AS ran;
SELECT l.probability, l.probability_mode, l.description, l.custom->>'campaign' AS campaign, s.name AS stage
  FROM crm.lead l JOIN crm.stage s ON s.tenant_id = l.tenant_id AND s.id = l.stage_id WHERE l.id = :'rl';
SELECT action, outcome FROM crm.job_archive ORDER BY action, finished_at;
-- a won deal's probability is not the rule's to set: the job fails, not done
UPDATE crm.workflow_rule SET active = false;
INSERT INTO crm.opportunity (name, amount, currency) VALUES ('Closed Deal', 100, 'USD') RETURNING id AS cd \gset
SELECT crm.opportunity_mark_won(:'cd') AS marked \gset
SELECT status FROM crm.opportunity WHERE id = :'cd';
SELECT crm.enqueue_job('set_probability', '{"probability": 5}', source_entity => 'opportunity', source_id => :'cd') AS sp \gset
SELECT crm.run_jobs(10) AS ran;
SELECT j.attempts, replace(j.errors->0->>'error', :'cd', '<deal>') AS error FROM crm.job j WHERE j.id = :'sp';
SELECT probability FROM crm.opportunity WHERE id = :'cd';
RESET crm.tenant_id;
RESET ROLE;

-- The operator's run serves every tenant and leaves the session acting for
-- none again (it acted for the last tenant it served).
BEGIN;
SET LOCAL crm.tenant_id = :'la';
SELECT crm.enqueue_job('create_task', '{"subject": "Served by the operator"}') IS NOT NULL AS due;
RESET crm.tenant_id;
SELECT crm.run_jobs(100) > 0 AS ran, crm.run_time_rules() >= 0 AS timed,
       coalesce(current_setting('crm.tenant_id', true), '') = '' AS acting_for_none;
ROLLBACK;

-- Time rules obey their condition and their debounce, as event rules do.
SET ROLE regress_crm_app;
SET crm.tenant_id = :'la';
UPDATE crm.workflow_rule SET active = false;
INSERT INTO crm.workflow_rule (name, event, action, params, days, condition)
VALUES ('quiet big deals', 'NoActivityFor', 'webhook', '{}', 1, '{"field": "amount", "op": ">", "value": 1000}')
RETURNING id AS quiet_big \gset
INSERT INTO crm.workflow_rule (name, event, action, params, days, debounce)
VALUES ('closing soon', 'BeforeExpectedClose', 'add_tag', '{"tag": "closing"}', 3, '1 day')
RETURNING id AS closing \gset
INSERT INTO crm.opportunity (name, amount, currency, expected_close_date)
VALUES ('Small quiet', 10, 'USD', current_date + 2), ('Big quiet', 5000, 'USD', current_date + 2);
SELECT crm.run_time_rules(now() + interval '2 days') AS fired;
SELECT o.name, j.payload_amount
  FROM (SELECT source_id, params->'payload'->>'amount' AS payload_amount FROM crm.job WHERE rule_id = :'quiet_big') j
  JOIN crm.opportunity o ON o.id = j.source_id ORDER BY 1;
-- the close date moves (a new moment, a new key) within the day: debounced
UPDATE crm.opportunity SET expected_close_date = current_date + 1 WHERE name IN ('Small quiet', 'Big quiet');
SELECT crm.run_time_rules(now() + interval '2 days') AS fired_again;
SELECT count(*) AS closing_jobs FROM crm.job WHERE rule_id = :'closing';
SELECT try($$SELECT crm.rule_condition_holds('00000000-0000-7000-8000-000000000000', '{}')$$) AS unknown_rule;
RESET crm.tenant_id;
RESET ROLE;
