-- The queue's batch forms: crm.enqueue_jobs (many jobs in one statement),
-- crm.complete_jobs and crm.fail_jobs (a worker's batch reported at once,
-- all or nothing, the error naming the job).
SET client_min_messages = warning;
SELECT crm.create_tenant('Batch Co') AS tenant \gset
SELECT crm.create_tenant('Batch Other') AS other \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'tenant';
INSERT INTO crm.contact (first_name, email) VALUES ('Ada', 'ada@batch.example') RETURNING id AS ada \gset
INSERT INTO crm.contact (first_name, email, email_opt_out)
     VALUES ('Bo', 'bo@batch.example', true) RETURNING id AS bo \gset

-- Enqueue a batch: one id per element of params, in order; a rolled-back
-- batch leaves nothing.
BEGIN;
SELECT cardinality(crm.enqueue_jobs('webhook', ARRAY['{"n": 1}', '{"n": 2}']::jsonb[])) AS enqueued;
ROLLBACK;
SELECT (SELECT count(*) FROM crm.job) AS jobs, (SELECT count(*) FROM crm.job_key) AS keys;
SELECT crm.enqueue_jobs('webhook', ARRAY['{"n": 1}', '{"n": 2}', '{"n": 3}']::jsonb[]) AS hooks \gset
SELECT j.params->>'n' AS n, j.id = (:'hooks'::uuid[])[(j.params->>'n')::int] AS id_in_order, j.queue, j.action,
       j.attempts, j.locked_by IS NULL AS ready
  FROM crm.job j ORDER BY 1;

-- Idempotency keys: a key taken before gives its job; a key given twice in
-- one batch makes one job, and both positions get its id.
SELECT crm.enqueue_jobs('webhook', ARRAY['{"k": "a"}', '{"k": "b"}', '{"k": "a again"}']::jsonb[],
                        idempotency_keys => ARRAY['00000000-0000-5000-8000-00000000000a',
                                                  '00000000-0000-5000-8000-00000000000b',
                                                  '00000000-0000-5000-8000-00000000000a']::uuid[]) AS keyed \gset
SELECT (:'keyed'::uuid[])[1] = (:'keyed'::uuid[])[3] AS same_job, (:'keyed'::uuid[])[1] <> (:'keyed'::uuid[])[2] AS two_jobs,
       (SELECT count(*) FROM crm.job WHERE params ? 'k') AS keyed_jobs,
       (SELECT params->>'k' FROM crm.job WHERE id = (:'keyed'::uuid[])[1]) AS first_kept;
SELECT crm.enqueue_jobs('webhook', ARRAY['{"k": "replay"}', '{"k": "c"}']::jsonb[],
                        idempotency_keys => ARRAY['00000000-0000-5000-8000-00000000000b', NULL]::uuid[]) AS replay \gset
SELECT (:'replay'::uuid[])[1] = (:'keyed'::uuid[])[2] AS replay_gives_first_job,
       (SELECT count(*) FROM crm.job WHERE params ? 'k') AS keyed_jobs;
SELECT crm.enqueue_job('webhook', '{"k": "single replay"}',
                       idempotency_key => '00000000-0000-5000-8000-00000000000b') = (:'keyed'::uuid[])[2]
       AS single_replay_gives_first_job,
       (SELECT count(*) FROM crm.job WHERE params ? 'k') AS keyed_jobs;

-- Consent at enqueue, per job: Bo opted out of e-mail, Ada did not.
SELECT crm.enqueue_jobs('send_email', ARRAY['{"template": "hi"}', '{"template": "hi"}']::jsonb[],
                        contacts => ARRAY[:'ada', :'bo']::uuid[]) AS mails \gset
SELECT c.first_name, j.id IS NOT NULL AS ready, a.outcome, a.reason
  FROM unnest(:'mails'::uuid[]) WITH ORDINALITY m(id, n)
  LEFT JOIN crm.job j ON j.id = m.id LEFT JOIN crm.job_archive a ON a.id = m.id
  JOIN crm.contact c ON c.id = coalesce(j.contact_id, a.contact_id) ORDER BY m.n;

-- Complete a batch in one call: the jobs move to the archive with the result.
SELECT array_agg(id ORDER BY id) AS claimed FROM crm.claim_jobs('webhook', 'w1', 10, '1 minute') \gset
SELECT cardinality(:'claimed'::uuid[]) AS claimed_count;
SELECT crm.complete_jobs((:'claimed'::uuid[])[1:2], 'w1', '{"ok": true}') AS completed;
SELECT outcome, result, attempts, count(*) FROM crm.job_archive WHERE id = ANY ((:'claimed'::uuid[])[1:2])
 GROUP BY 1, 2, 3;
SELECT crm.complete_jobs('{}', 'w1') AS completed_none;

-- All or nothing: one job of the batch wrong and none is completed; the
-- error names that job (the uuids are masked by try()).
CREATE TEMP TABLE before_errors AS
    SELECT (SELECT count(*) FROM crm.job) AS jobs, (SELECT count(*) FROM crm.job_archive) AS archived,
           (SELECT count(*) FROM crm.job WHERE locked_by IS NOT NULL) AS held;
SELECT regexp_replace(s, '[0-9a-f]{8}-[0-9a-f-]{27}', '<uuid>', 'g') AS statement, try(s) AS result FROM unnest(ARRAY[
    -- held by another worker
    $$SELECT crm.complete_jobs('$$ || (:'claimed'::uuid[])[3:4]::text || $$', 'w2')$$,
    -- one already finished, one fine
    $$SELECT crm.complete_jobs('$$ || (:'claimed'::uuid[])[2:3]::text || $$', 'w1')$$,
    -- one fine, one unknown
    $$SELECT crm.complete_jobs(ARRAY['$$ || (:'claimed'::uuid[])[3] || $$', '00000000-0000-7000-8000-000000000000']::uuid[], 'w1')$$,
    -- named twice
    $$SELECT crm.complete_jobs(ARRAY['$$ || (:'claimed'::uuid[])[3] || $$', '$$ || (:'claimed'::uuid[])[3] || $$']::uuid[], 'w1')$$,
    $$SELECT crm.complete_jobs(ARRAY['$$ || (:'claimed'::uuid[])[3] || $$', NULL]::uuid[], 'w1')$$,
    $$SELECT crm.complete_jobs(NULL, 'w1')$$,
    $$SELECT crm.fail_jobs('$$ || (:'claimed'::uuid[])[3:4]::text || $$', 'w2', 'boom')$$,
    $$SELECT crm.fail_jobs('$$ || (:'claimed'::uuid[])[1:3]::text || $$', 'w1', 'boom')$$,
    $$SELECT crm.enqueue_jobs('fly_to_moon', ARRAY['{}']::jsonb[])$$,
    $$SELECT crm.enqueue_jobs(NULL, ARRAY['{}']::jsonb[])$$,
    $$SELECT crm.enqueue_jobs('webhook', NULL)$$,
    $$SELECT crm.enqueue_jobs('webhook', ARRAY['{}', '[1]']::jsonb[])$$,
    $$SELECT crm.enqueue_jobs('webhook', ARRAY['{}', NULL]::jsonb[])$$,
    $$SELECT crm.enqueue_jobs('webhook', ARRAY['{}']::jsonb[], contacts => ARRAY[NULL, NULL]::uuid[])$$,
    $$SELECT crm.enqueue_jobs('webhook', ARRAY['{}']::jsonb[], max_attempts => 101)$$,
    $$SELECT crm.enqueue_jobs('webhook', ARRAY['{}']::jsonb[], run_at => 'infinity')$$,
    $$SELECT crm.enqueue_jobs('send_email', ARRAY['{}', '{}']::jsonb[],
                              contacts => ARRAY['$$ || :'ada' || $$', '00000000-0000-7000-8000-000000000000']::uuid[])$$]) s;
SELECT (SELECT count(*) FROM crm.job) = jobs AND (SELECT count(*) FROM crm.job_archive) = archived
       AND (SELECT count(*) FROM crm.job WHERE locked_by IS NOT NULL) = held AS nothing_changed FROM before_errors;

-- An expired lease in the batch: refused, nothing completed.
RESET ROLE;  -- the test moves the clock: only the server writes jobs
UPDATE crm.job SET locked_until = now() - interval '1 second' WHERE id = (:'claimed'::uuid[])[4];
SET ROLE regress_crm_app;
SELECT try($$SELECT crm.complete_jobs('$$ || (:'claimed'::uuid[])[3:4]::text || $$', 'w1')$$) AS expired;
SELECT count(*) AS still_held FROM crm.job WHERE id = ANY ((:'claimed'::uuid[])[3:4]);

-- Fail a batch: each job retried with backoff, or dead after its last attempt.
SELECT crm.enqueue_jobs('webhook', ARRAY['{"f": 1}', '{"f": 2}']::jsonb[], max_attempts => 1) AS last_try \gset
SELECT count(*) AS claimed FROM crm.claim_jobs('webhook', 'w3', 10, '1 minute')
 WHERE id = ANY (:'last_try'::uuid[]);
SELECT f.id = ANY (:'last_try'::uuid[]) AS last_attempt, f.next_run IS NULL AS dead,
       f.next_run - now() BETWEEN interval '20 seconds' AND interval '22 seconds' AS backoff_20s
  FROM crm.fail_jobs((:'claimed'::uuid[])[3:3] || (:'last_try'::uuid[]), NULL, 'HTTP 503') f ORDER BY 1, 2;
SELECT outcome, reason, errors->0->>'error' AS error, count(*) FROM crm.job_archive WHERE id = ANY (:'last_try'::uuid[])
 GROUP BY 1, 2, 3;
SELECT locked_by IS NULL AS ready_again, errors->0->>'error' AS error FROM crm.job WHERE id = (:'claimed'::uuid[])[3];

-- A worker's claims start where its last claim began, so the dead index
-- entries of the jobs it claimed before are not walked again; a job due
-- earlier than that point is taken by the next claim that looks from the
-- start (every hundredth claim, or a claim a second later, or a new
-- session's first).
SELECT cardinality(crm.enqueue_jobs('notify', ARRAY['{"n": 1}', '{"n": 2}', '{"n": 3}']::jsonb[])) AS notes;
BEGIN;
SELECT params->>'n' AS first_claim FROM crm.claim_jobs('notify', 'w4', 1);
RESET ROLE;  -- the test moves the clock: only the server writes jobs
UPDATE crm.job SET run_at = run_at - interval '1 hour' WHERE queue = 'notify' AND params->>'n' = '3';
SET ROLE regress_crm_app;
SELECT params->>'n' AS second_claim FROM crm.claim_jobs('notify', 'w4', 1);
SELECT count(*) AS third_claim_same_transaction FROM crm.claim_jobs('notify', 'w4', 5);
COMMIT;
\c
SET client_min_messages = warning;
SET ROLE regress_crm_app;
SET crm.tenant_id = :'tenant';
SELECT params->>'n' AS new_session_claim FROM crm.claim_jobs('notify', 'w4', 5);

-- Another tenant can neither see nor complete these jobs.
SET crm.tenant_id = :'other';
SELECT count(*) AS other_jobs FROM crm.job;
SELECT try($$SELECT crm.complete_jobs('$$ || (:'claimed'::uuid[])[5:5]::text || $$', 'w1')$$) AS other_tenants_job;
SELECT try($$SELECT crm.enqueue_jobs('send_email', ARRAY['{}']::jsonb[], contacts => ARRAY['$$ || :'ada' || $$']::uuid[])$$)
       AS other_tenants_contact;
RESET crm.tenant_id;
SELECT try($$SELECT crm.enqueue_jobs('webhook', ARRAY['{}']::jsonb[])$$) AS without_tenant;
SELECT try($$SELECT crm.complete_jobs('{}', 'w1')$$) AS without_tenant;
RESET ROLE;
