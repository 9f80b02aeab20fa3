-- The event outbox (issue 7): events of the triggers and of applications,
-- read by cursor and by named consumers.
SELECT crm.create_tenant('Outbox Co') AS t \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';
SELECT crm.subscribe('billing', 0) AS start;
INSERT INTO crm.account (name) VALUES ('Umbrella') RETURNING id AS acc \gset
INSERT INTO crm.lead (name, source, email) VALUES ('Lead U', 'website', 'u@u.example') RETURNING id AS lead \gset
INSERT INTO crm.opportunity (name, account_id, amount, currency) VALUES ('Deal U', :'acc', 800, 'EUR') RETURNING id AS opp \gset
SELECT id AS proposal FROM crm.stage WHERE tenant_id = :'t' AND name = 'Proposal'
   AND pipeline_id = (SELECT pipeline_id FROM crm.opportunity WHERE id = :'opp') \gset
UPDATE crm.opportunity SET stage_id = :'proposal' WHERE id = :'opp';
SELECT count(*) AS won FROM crm.opportunity_mark_won(:'opp');
INSERT INTO crm.activity (activity_type, subject, account_id) VALUES ('task', 'Invoice', :'acc') RETURNING id AS task \gset
UPDATE crm.activity SET status = 'completed' WHERE id = :'task';
UPDATE crm.activity SET subject = 'Invoice sent' WHERE id = :'task';   -- no event
SELECT crm.emit_event('InvoiceSent', jsonb_build_object('amount', 800), 'account', :'acc') > 0 AS emitted;
-- every event in position order, with its payload fields
SELECT row_number() OVER (ORDER BY position) AS n, event_type, entity,
       (SELECT string_agg(k, ',' ORDER BY k) FROM jsonb_object_keys(payload) k) AS fields,
       payload->>'stage' AS stage, payload->>'actualValue' AS actual_value, payload->>'source' AS source
  FROM crm.read_events(0);
-- a cursor: the first three, then the rest after the third
SELECT count(*) AS first_page FROM crm.read_events(0, 3);
SELECT position AS third FROM crm.read_events(0, 3) ORDER BY position DESC LIMIT 1 \gset
SELECT count(*) AS rest FROM crm.read_events(:third);
-- a consumer: poll returns the same until acked
SELECT count(*) AS polled FROM crm.poll('billing', 100);
SELECT position AS last FROM crm.poll('billing', 100) ORDER BY position DESC LIMIT 1 \gset
SELECT crm.ack('billing', :last) = :last AS acked;
SELECT count(*) AS after_ack FROM crm.poll('billing', 100);
SELECT crm.ack('billing', 0) = :last AS never_back;
-- retention keeps what a consumer has not acked
SELECT crm.subscribe('laggard', 0) AS laggard_start;
SELECT crm.purge_events('0 seconds') AS purged_with_laggard;
SELECT crm.unsubscribe('laggard') AS dropped;
SELECT crm.purge_events('1 day') AS purged_recent;
SELECT crm.purge_events('0 seconds') AS purged;
SELECT count(*) AS left FROM crm.event;

-- errors
SELECT try($$SELECT crm.emit_event('lower_case', '{}')$$);
SELECT try($$SELECT crm.emit_event('Fine', '[1, 2]')$$);
SELECT try($$SELECT crm.emit_event('Fine', '"text"')$$);
SELECT try($$SELECT crm.emit_event('Fine', NULL)$$);
SELECT try($$SELECT crm.emit_event('Fine', '{}', 'Bad Entity', NULL)$$);
SELECT try($$SELECT * FROM crm.read_events(9223372036854775807)$$);
SELECT try($$SELECT * FROM crm.read_events(-1)$$);
SELECT try($$SELECT * FROM crm.read_events(0, 0)$$);
SELECT try($$SELECT * FROM crm.poll('nobody')$$);
SELECT try($$SELECT crm.ack('billing', 9223372036854775807)$$);
SELECT try($$SELECT crm.ack('nobody', 0)$$);
SELECT try($$SELECT crm.purge_events('-1 day')$$);
SELECT try($$INSERT INTO crm.event (position, event_type) VALUES (1, 'Forged')$$);
SELECT count(*) AS events_after_errors FROM crm.event;
RESET crm.tenant_id;
SELECT try($$SELECT crm.emit_event('Fine', '{}')$$);
RESET ROLE;
