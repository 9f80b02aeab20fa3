-- The write path in batches (issues 7 and 6 item 8): one statement that
-- moves many deals enqueues the jobs of its rules in one call, with the
-- debounce windows applied in the order the events came; the rules a
-- statement reads are those that name its events (an activity type no
-- rule names makes no job, one that an active rule names makes its job,
-- an inactive rule none); the events of a public tenant are everyone's;
-- win_probability (in C) keeps a manual probability across a move.
SET client_min_messages = warning;
SELECT crm.create_tenant('Batch Co') AS tenant \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'tenant';
SELECT max(s.id::text) FILTER (WHERE s.name = 'Qualified') AS qualified,
       max(s.id::text) FILTER (WHERE s.name = 'Negotiation') AS negotiation
  FROM crm.stage s JOIN crm.pipeline p ON p.tenant_id = s.tenant_id AND p.id = s.pipeline_id
 WHERE p.is_default \gset

INSERT INTO crm.opportunity (name, amount, stage_id)
SELECT 'Batch deal ' || i, 100 * i, :'qualified' FROM generate_series(1, 3) i;
INSERT INTO crm.workflow_rule (name, event, stage_id, action, params, debounce) VALUES
    ('Negotiation: one call an hour', 'OpportunityStageChanged', :'negotiation', 'create_task',
     '{"subject": "Call about the terms"}', '1 hour');

-- into Negotiation, back, and into Negotiation again, in one transaction:
-- the default rule "Entered Negotiation" fires on each entry (6 jobs), the
-- debounced one once per deal (3 jobs)
BEGIN;
UPDATE crm.opportunity SET stage_id = :'negotiation' WHERE name LIKE 'Batch deal %';
UPDATE crm.opportunity SET stage_id = :'qualified' WHERE name LIKE 'Batch deal %';
UPDATE crm.opportunity SET stage_id = :'negotiation' WHERE name LIKE 'Batch deal %';
COMMIT;
SELECT r.name AS rule, count(j.id) AS jobs, count(DISTINCT j.source_id) AS deals,
       count(DISTINCT j.idempotency_key) AS keys
  FROM crm.workflow_rule r LEFT JOIN crm.job j ON j.tenant_id = r.tenant_id AND j.rule_id = r.id
 WHERE r.event = 'OpportunityStageChanged' AND r.active
 GROUP BY r.name ORDER BY r.name;
SELECT count(*) AS stage_events FROM crm.event WHERE event_type = 'OpportunityStageChanged';

-- activities: a call (no rule names it), a quote (an active rule: one
-- job; an inactive one: none), in one statement
INSERT INTO crm.contact (first_name, email) VALUES ('Quinn', 'quinn@batch.example') RETURNING id AS quinn \gset
INSERT INTO crm.activity (activity_type, subject, status, contact_id) VALUES
    ('call', 'A call', 'completed', :'quinn'),
    ('quote_created', 'A quote', 'completed', :'quinn');
SELECT r.name AS rule, r.active, count(j.id) AS jobs
  FROM crm.workflow_rule r LEFT JOIN crm.job j ON j.tenant_id = r.tenant_id AND j.rule_id = r.id
 WHERE r.event IN ('call', 'quote_created')
 GROUP BY r.name, r.active ORDER BY r.name;

-- a public tenant: every event is everyone's
SELECT count(*) AS events, count(*) FILTER (WHERE visible_to IS NOT NULL) AS restricted FROM crm.event;

-- win_probability: a manual probability survives a move, a stage-mode one follows it
INSERT INTO crm.opportunity (name, stage_id, probability_mode, probability) VALUES
    ('Manual deal', :'qualified', 'manual', 33), ('Stage deal', :'qualified', NULL, NULL);
UPDATE crm.opportunity SET stage_id = :'negotiation' WHERE name IN ('Manual deal', 'Stage deal');
SELECT o.name, o.probability_mode, o.probability, s.probability AS stage_probability
  FROM crm.opportunity o JOIN crm.stage s ON s.tenant_id = o.tenant_id AND s.id = o.stage_id
 WHERE o.name IN ('Manual deal', 'Stage deal') ORDER BY o.name;
SELECT count(*) AS differences FROM crm.check_aggregates();
RESET ROLE;
