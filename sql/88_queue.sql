-- The job queue: enqueue in the caller's transaction, claim with SKIP
-- LOCKED and a lease, complete, fail with backoff until dead, retry, reap,
-- purge; idempotency keys; consent at enqueue and at claim.
SET client_min_messages = warning;
SELECT crm.create_tenant('Queue Co') AS tenant \gset
SELECT crm.create_tenant('Other Co') AS other \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'tenant';
INSERT INTO crm.contact (first_name, email) VALUES ('Olga', 'olga@queue.example') RETURNING id AS olga \gset
INSERT INTO crm.contact (first_name, email, email_opt_out, do_not_call)
     VALUES ('Nils', 'nils@queue.example', true, true) RETURNING id AS nils \gset

-- Enqueue: the action names the queue; a rolled-back transaction leaves no job.
BEGIN;
SELECT crm.enqueue_job('send_email', '{"template": "welcome"}', :'olga') IS NOT NULL AS enqueued;
ROLLBACK;
SELECT count(*) AS jobs_after_rollback FROM crm.job;
SELECT crm.enqueue_job('send_email', '{"template": "welcome"}', :'olga',
                       idempotency_key => '00000000-0000-5000-8000-000000000001') AS email_job \gset
SELECT crm.enqueue_job('create_task', '{"subject": "Call back"}') AS task_job \gset
SELECT queue, action, params, attempts, locked_by IS NULL AS ready FROM crm.job ORDER BY queue;

-- The same key again (a replayed event) returns the first job and makes none.
SELECT crm.enqueue_job('send_email', '{"template": "other"}', :'olga',
                       idempotency_key => '00000000-0000-5000-8000-000000000001') = :'email_job' AS same_job;
SELECT count(*) AS email_jobs FROM crm.job WHERE queue = 'email';

-- Consent at enqueue: archived as skipped with the reason, never claimable.
SELECT crm.enqueue_job('send_email', '{}', :'nils') AS skipped_job \gset
SELECT crm.enqueue_job('create_task', '{"activity_type": "call"}', :'nils') AS skipped_call \gset
-- a job given no contact takes the one its payload relates it to, which
-- crm.run_jobs() links the task to: its consent counts the same
SELECT crm.enqueue_job('create_task', jsonb_build_object('activity_type', 'call',
           'payload', jsonb_build_object('relatedTo', jsonb_build_object('contactId', :'nils')))) AS skipped_related \gset
SELECT action, outcome, reason, contact_id = :'nils' AS nils FROM crm.job_archive ORDER BY action, id;
SELECT count(*) AS ready_for_nils FROM crm.job WHERE contact_id = :'nils';

-- Claim: a worker gets the due jobs of one queue with a lease.
SELECT id = :'email_job' AS is_email_job, attempts, locked_by, locked_until > now() AS leased
  FROM crm.claim_jobs('email', 'worker-1', 10, '1 minute');
SELECT count(*) AS claimed_again FROM crm.claim_jobs('email', 'worker-2');
-- Only the holder may report; complete moves the job to the archive.
SELECT try($$SELECT crm.complete_job('$$ || :'email_job' || $$', '{"sent": true}', 'worker-2')$$) AS result;
SELECT crm.complete_job(:'email_job', '{"sent": true}', 'worker-1');
SELECT count(*) AS left_in_ready_set FROM crm.job WHERE id = :'email_job';
SELECT outcome, result, attempts FROM crm.job_archive WHERE id = :'email_job';
SELECT try($$SELECT crm.complete_job('$$ || :'email_job' || $$')$$) AS result;
SELECT try($$SELECT crm.fail_job('$$ || :'email_job' || $$', 'too late')$$) AS result;

-- Fail: retried after least(1 hour, 10 s x 2^attempts) plus up to 10 % jitter.
SELECT crm.enqueue_job('webhook', '{"url": "https://hooks.example/x"}', max_attempts => 2) AS hook \gset
SELECT count(*) FROM crm.claim_jobs('webhook', 'w');
WITH f AS MATERIALIZED (SELECT crm.fail_job(:'hook', 'HTTP 500') - now() AS delay)
SELECT delay BETWEEN interval '20 seconds' AND interval '22 seconds' AS backoff_20s FROM f;
SELECT locked_by, jsonb_array_length(errors) AS errors, errors->0->>'error' AS error FROM crm.job WHERE id = :'hook';
SELECT count(*) AS not_due_yet FROM crm.claim_jobs('webhook', 'w');
RESET ROLE;  -- the test moves the clock: only the server writes jobs
UPDATE crm.job SET run_at = now() WHERE id = :'hook';
SET ROLE regress_crm_app;
SELECT count(*) AS claimed FROM crm.claim_jobs('webhook', 'w');
SELECT crm.fail_job(:'hook', 'HTTP 502') IS NULL AS dead;
SELECT outcome, reason, jsonb_array_length(errors) AS errors FROM crm.job_archive WHERE id = :'hook';
-- A dead job can be retried; a completed one cannot.
SELECT crm.retry_job(:'hook') = :'hook' AS retried;
SELECT attempts, jsonb_array_length(errors) AS errors_kept FROM crm.job WHERE id = :'hook';
SELECT try($$SELECT crm.retry_job('$$ || :'email_job' || $$')$$) AS result;

-- Leases: extend, and reap an expired one, which makes the job claimable again.
SELECT count(*) FROM crm.claim_jobs('crm', 'w', 1, '1 minute');
SELECT crm.extend_lease(:'task_job', '10 minutes', 'w') - now() = interval '10 minutes' AS extended;
RESET ROLE;  -- the test moves the clock: only the server writes jobs
UPDATE crm.job SET locked_until = now() - interval '1 second' WHERE id = :'task_job';
SET ROLE regress_crm_app;
SELECT try($$SELECT crm.complete_job('$$ || :'task_job' || $$', NULL, 'w')$$) AS result;
SELECT crm.reap_expired_leases() AS reaped;
SELECT locked_by IS NULL AS ready, errors->0->>'error' AS error FROM crm.job WHERE id = :'task_job';

-- Consent checked again at claim: the flag changed after enqueue.
SELECT crm.enqueue_job('send_email', '{}', :'olga') AS late_job \gset
UPDATE crm.contact SET email_opt_out = true WHERE id = :'olga';
SELECT count(*) AS claimed FROM crm.claim_jobs('email', 'worker-1');
SELECT outcome, reason FROM crm.job_archive WHERE id = :'late_job';

-- Another tenant sees none of it.
SET crm.tenant_id = :'other';
SELECT count(*) AS other_jobs FROM crm.job;
SELECT count(*) FROM crm.claim_jobs('crm', 'w');
SELECT try($$SELECT crm.complete_job('$$ || :'task_job' || $$')$$) AS other_tenants_job;
SET crm.tenant_id = :'tenant';

-- Bad input: one mistake, one SQLSTATE; nothing stored changes.
CREATE TEMP TABLE before_errors AS
    SELECT (SELECT count(*) FROM crm.job) AS jobs, (SELECT count(*) FROM crm.job_archive) AS archived;
SELECT regexp_replace(s, '[0-9a-f]{8}-[0-9a-f-]{27}', '<uuid>', 'g') AS statement, try(s) AS result FROM unnest(ARRAY[
    $$SELECT crm.enqueue_job('fly_to_moon')$$,
    $$SELECT crm.enqueue_job(NULL)$$,
    $$SELECT crm.enqueue_job('webhook', '[1]')$$,
    $$SELECT crm.enqueue_job('webhook', max_attempts => 0)$$,
    $$SELECT crm.enqueue_job('send_email', '{}', '00000000-0000-7000-8000-000000000000')$$,
    $$SELECT crm.claim_jobs('crm', 'w', 0)$$,
    $$SELECT crm.claim_jobs('crm', 'w', 1, '-1 minute')$$,
    $$SELECT crm.claim_jobs('crm', NULL)$$,
    $$SELECT crm.complete_job(NULL)$$,
    $$SELECT crm.complete_job('00000000-0000-7000-8000-000000000000')$$,
    $$SELECT crm.fail_job('$$ || :'task_job' || $$', 'not claimed')$$,
    $$SELECT crm.extend_lease('$$ || :'task_job' || $$', '0 minutes')$$,
    $$SELECT crm.retry_job('$$ || :'task_job' || $$')$$,
    $$SELECT crm.purge_jobs('-1 day')$$,
    -- a NULL argument is 22004 in every queue function
    $$SELECT crm.claim_jobs('email', 'w', NULL)$$,
    $$SELECT crm.claim_jobs('email', 'w', 1, NULL)$$,
    $$SELECT crm.enqueue_job('webhook', NULL)$$,
    $$SELECT crm.enqueue_jobs('webhook', NULL)$$,
    $$SELECT crm.extend_lease('$$ || :'task_job' || $$', NULL)$$,
    $$SELECT crm.purge_jobs(NULL)$$,
    $$SELECT crm.run_jobs(NULL)$$]) s;
SELECT (SELECT count(*) FROM crm.job) = jobs AND (SELECT count(*) FROM crm.job_archive) = archived
       AS nothing_changed FROM before_errors;
RESET crm.tenant_id;
SELECT try($$SELECT crm.enqueue_job('webhook')$$) AS without_tenant;
SET crm.tenant_id = :'tenant';

-- Purge: archived jobs and their keys go; a replay after that makes a new job.
SELECT crm.purge_jobs('0 seconds') >= 4 AS purged;
SELECT count(*) AS archive_left FROM crm.job_archive;
SELECT crm.enqueue_job('send_email', '{}', NULL,
                       idempotency_key => '00000000-0000-5000-8000-000000000001') <> :'email_job' AS new_job_after_purge;
RESET crm.tenant_id;
RESET ROLE;
