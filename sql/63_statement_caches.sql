-- Lookups the triggers and the queue keep for one statement (the module of
-- an activity type, the queue and consent of a job action, the visible_to
-- of linked records): every row of a statement gets the right answer, and
-- the next statement of the same transaction sees a change made in between.
SET client_min_messages = warning;
SELECT crm.create_tenant('Cache Co') AS t \gset
SET crm.tenant_id = :'t';
INSERT INTO crm.contact (first_name, email) VALUES ('Casey', 'casey@cache.example') RETURNING id AS casey \gset
INSERT INTO crm.contact (first_name, email, email_opt_out) VALUES ('Dana', 'dana@cache.example', true)
RETURNING id AS dana \gset

-- one statement, rows of four types: each row gets its own type's module
INSERT INTO crm.activity (activity_type, subject, contact_id, status)
SELECT (ARRAY['call', 'note', 'email', 'document_uploaded'])[1 + g % 4], 'Row ' || g,
       :'casey', 'completed'
  FROM generate_series(1, 40) g;
SELECT activity_type, module, count(*) FROM crm.activity WHERE tenant_id = :'t' GROUP BY 1, 2 ORDER BY 1;
SELECT count(*) AS wrong_module
  FROM crm.activity a JOIN crm.activity_type t ON t.code = a.activity_type
 WHERE a.tenant_id = :'t' AND a.module IS DISTINCT FROM t.module;

-- a type's module changed between two statements of one transaction
BEGIN;
INSERT INTO crm.activity_type (code, name, module) VALUES ('cache_probe', 'Cache probe', 'crm');
INSERT INTO crm.activity (activity_type, subject) VALUES ('cache_probe', 'Before');
UPDATE crm.activity_type SET module = 'support' WHERE code = 'cache_probe';
INSERT INTO crm.activity (activity_type, subject) VALUES ('cache_probe', 'After');
SELECT subject, module FROM crm.activity WHERE tenant_id = :'t' AND activity_type = 'cache_probe' ORDER BY subject;
-- and gone in the next: the row of a deleted type is refused
DELETE FROM crm.activity WHERE tenant_id = :'t' AND activity_type = 'cache_probe';
DELETE FROM crm.activity_type WHERE code = 'cache_probe';
SELECT try($$INSERT INTO crm.activity (activity_type, subject) VALUES ('cache_probe', 'Gone')$$);
ROLLBACK;

-- the outbox: one ActivityCreated per row of the statement, with its fields
SELECT count(*) AS events, count(DISTINCT entity_id) AS activities
  FROM crm.event WHERE tenant_id = :'t' AND event_type = 'ActivityCreated';
SELECT e.payload->>'type' = a.activity_type AS type_ok,
       e.payload->'relatedTo'->>'contactId' = a.contact_id::text AS contact_ok,
       jsonb_typeof(e.payload->'relatedTo'->'accountId') AS account, count(*)
  FROM crm.event e JOIN crm.activity a ON a.tenant_id = e.tenant_id AND a.id = e.entity_id
 WHERE e.tenant_id = :'t'
 GROUP BY 1, 2, 3;

-- the queue: a job action's queue changed between two statements
BEGIN;
SELECT crm.enqueue_job('webhook', '{"n": 1}') IS NOT NULL AS enqueued;
UPDATE crm.job_action SET queue = 'cache_probe' WHERE code = 'webhook';
SELECT crm.enqueue_job('webhook', '{"n": 2}') IS NOT NULL AS enqueued;
SELECT params->>'n' AS n, queue FROM crm.job WHERE tenant_id = :'t' AND action = 'webhook' ORDER BY 1;
ROLLBACK;

-- many jobs in one statement: one job per call, the same key gives the same job
SELECT count(DISTINCT j) AS jobs
  FROM (SELECT crm.enqueue_job('webhook', jsonb_build_object('n', g)) AS j FROM generate_series(1, 50) g) x;
SELECT count(DISTINCT j) AS jobs_for_one_key, count(*) AS calls
  FROM (SELECT crm.enqueue_job('webhook', '{}', idempotency_key => '00000000-0000-0000-0000-00000000cafe') AS j
          FROM generate_series(1, 5)) x;
SELECT count(*) AS ready, count(*) FILTER (WHERE idempotency_key = '00000000-0000-0000-0000-00000000cafe') AS keyed
  FROM crm.job WHERE tenant_id = :'t' AND action = 'webhook';
-- a job that needs consent, in the same statement as jobs that need none:
-- the one for the contact who opted out is skipped at enqueue
SELECT crm.enqueue_job(a, '{}', c) IS NOT NULL AS enqueued
  FROM (VALUES ('webhook', :'casey'::uuid), ('send_email', :'dana'::uuid), ('send_email', :'casey'::uuid)) v(a, c);
SELECT action, contact_id = :'dana' AS dana, outcome, reason FROM crm.job_archive
 WHERE tenant_id = :'t' AND rule_id IS NULL ORDER BY 1, 2;
SELECT action, contact_id = :'dana' AS dana FROM crm.job
 WHERE tenant_id = :'t' AND rule_id IS NULL AND contact_id IS NOT NULL ORDER BY 1, 2;

-- complete in one statement for a batch: every claimed job archived once
SELECT count(*) AS claimed FROM crm.claim_jobs('webhook', 'w1', 100) \gset
SELECT :claimed AS claimed;
SELECT count(crm.complete_job(j.id, NULL, 'w1')) AS completed
  FROM crm.job j WHERE j.tenant_id = :'t' AND j.locked_by = 'w1';
SELECT outcome, count(*) FROM crm.job_archive WHERE tenant_id = :'t' AND rule_id IS NULL GROUP BY 1 ORDER BY 1;
SELECT count(*) AS still_ready FROM crm.job WHERE tenant_id = :'t' AND queue = 'webhook';
-- and a second completion of one of them says it is finished
SELECT id AS done_job FROM crm.job_archive WHERE tenant_id = :'t' AND outcome = 'completed' ORDER BY id LIMIT 1 \gset
SELECT try($$SELECT crm.complete_job('$$ || :'done_job' || $$', NULL, 'w1')$$) ~ '^55000: job .* is already finished \(completed\)$' AS refused;
