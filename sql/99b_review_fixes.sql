-- Fixes from an attacker's review (one section per finding).

SET client_min_messages = warning;
SELECT crm.create_tenant('Review Co') AS rv \gset
SELECT crm.create_tenant('Review Empty') AS rv_empty \gset
-- try() with the day of a missing rate masked (it is today's)
CREATE FUNCTION rv_try(statement text) RETURNS text LANGUAGE sql
    AS $$ SELECT regexp_replace(try(statement), ' on [0-9]{2}-[0-9]{2}-[0-9]{4}$', ' on <today>') $$;
SET ROLE regress_crm_app;
SET crm.tenant_id = :'rv';

-- 1. One mistake, one SQLSTATE: an unknown or malformed currency code is
-- 22023 "unknown currency" in every forecasting and analytics function
-- that takes one, whether or not a rate would be needed; a known currency
-- without a rate stays P0002 "no exchange rate".
INSERT INTO crm.opportunity (name, amount, currency, expected_close_date)
VALUES ('Review deal', 100, 'USD', '2030-01-10');
INSERT INTO crm.currency_rate (from_currency, to_currency, rate, valid_from)
VALUES ('EUR', 'USD', 1.1, '2000-01-01');
SELECT code, rv_try(format('SELECT count(*) FROM crm.forecast(currency => %L)', code)) AS forecast,
       rv_try(format('SELECT count(*) FROM crm.forecast_deals(currency => %L)', code)) AS forecast_deals,
       rv_try(format('SELECT count(*) FROM crm.forecast_what_if(%L, currency => %L)', '[]', code)) AS what_if,
       rv_try(format('SELECT count(*) FROM crm.forecast_totals(%L, NULL, NULL, NULL, NULL, %L, now(), false)', 'month', code)) AS totals
  FROM unnest(ARRAY['usd', 'XYZ', '', 'US D', 'GBP']) AS code;
-- with no deal at all (nothing to convert) the code is still checked
SET crm.tenant_id = :'rv_empty';
SELECT rv_try($$SELECT count(*) FROM crm.forecast_deals(currency => 'XYZ')$$) AS empty_deals,
       rv_try($$SELECT count(*) FROM crm.forecast_totals('month', NULL, NULL, NULL, NULL, 'XYZ', now(), false)$$) AS empty_totals;
SET crm.tenant_id = :'rv';
-- the known currencies still work: the deal in USD, and in EUR at 1/1.1
SELECT converted FROM crm.forecast_deals(currency => 'USD');
SELECT round(converted, 2) AS converted FROM crm.forecast_deals(currency => 'EUR');
-- conversion helpers: unknown code 22023 (either side, even for a NULL
-- amount), no rate P0002, no rate in analytics_amount NULL (its contract)
SELECT rv_try($$SELECT crm.convert_amount(1, 'XYZ', 'USD')$$) AS from_unknown,
       rv_try($$SELECT crm.convert_amount(1, 'USD', 'usd')$$) AS to_malformed,
       rv_try($$SELECT crm.convert_amount(NULL, 'XYZ', 'USD')$$) AS null_amount_unknown,
       rv_try($$SELECT crm.convert_amount(1, 'GBP', 'USD')$$) AS no_rate,
       crm.convert_amount(10, 'EUR', 'USD') AS eur_to_usd;
SELECT rv_try(format('SELECT crm.analytics_amount(1, %L, current_date, %L)', 'XYZ', :'rv')) AS analytics_unknown,
       rv_try(format('SELECT crm.analytics_amount(1, %L, current_date, %L)', 'eur', :'rv')) AS analytics_malformed,
       crm.analytics_amount(1, 'GBP', current_date, :'rv') AS analytics_no_rate,
       crm.analytics_amount(10, 'EUR', current_date, :'rv') AS analytics_eur;

-- 2. An empty batch is checked as a one-job batch is: crm.enqueue_jobs with
-- no params still refuses an unknown action (23503, as crm.enqueue_job)
-- and bad scalar arguments, and makes nothing.
SELECT try($$SELECT crm.enqueue_job('unknown_action')$$) AS one_unknown,
       try($$SELECT crm.enqueue_jobs('unknown_action', '{}')$$) AS empty_unknown,
       try($$SELECT crm.enqueue_jobs('unknown_action', ARRAY['{}'::jsonb])$$) AS batch_unknown;
SELECT try($$SELECT crm.enqueue_jobs(NULL, '{}')$$) AS empty_null_action,
       try($$SELECT crm.enqueue_jobs('send_email', '{}', run_at => 'infinity')$$) AS empty_infinite_run_at,
       try($$SELECT crm.enqueue_jobs('send_email', '{}', max_attempts => 0)$$) AS empty_bad_attempts,
       try($$SELECT crm.enqueue_jobs('send_email', '{}', contacts => ARRAY[NULL]::uuid[])$$) AS empty_contacts_mismatch;
-- a known action with nothing to enqueue is an empty answer, and no job
SELECT crm.enqueue_jobs('send_email', '{}') AS empty_known;
SELECT count(*) AS review_jobs FROM crm.job;

-- 3. An idempotency key held by a job the caller cannot see gives no id:
-- in a private tenant Oscar's job is about his contact, hidden from Rex.
-- Before, Rex replaying Oscar's key got Oscar's job id back (proof that
-- the job exists, and its id to probe with).  Now the answer is NULL: no
-- job made, none shown; Oscar, an admin and the tenant's worker (no CRM
-- user) still get the job's id, whether it is ready or archived.
RESET ROLE;
RESET crm.tenant_id;
SELECT crm.create_tenant('Review Private') AS rp \gset
UPDATE crm.tenant SET visibility = 'private' WHERE tenant_id = :'rp';
SET crm.tenant_id = :'rp';
INSERT INTO crm.app_user (name) VALUES ('Oscar Owner') RETURNING id AS oscar \gset
INSERT INTO crm.app_user (name) VALUES ('Rex Rep') RETURNING id AS rex \gset
RESET crm.tenant_id;
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_rv_writer;
CREATE ROLE regress_rv_writer IN ROLE crm_app, crm_writer;
SET ROLE regress_rv_writer;
SET crm.tenant_id = :'rp';
SET crm.user_id = :'oscar';
INSERT INTO crm.contact (first_name, email, owner_id) VALUES ('Hidden', 'hidden@rv.example', :'oscar')
RETURNING id AS o_con \gset
SELECT crm.enqueue_job('send_email', '{"template": "secret"}', :'o_con', now(),
                       '00000000-0000-5000-8000-00000000000a') AS o_job \gset
SELECT crm.enqueue_job('send_email', '{}', NULL, now(), '00000000-0000-5000-8000-00000000000a') = :'o_job' AS oscar_gets_his_job;
SET crm.user_id = :'rex';
SELECT count(*) AS rex_sees_job FROM crm.job WHERE id = :'o_job';
SELECT crm.enqueue_job('send_email', '{}', NULL, now(), '00000000-0000-5000-8000-00000000000a') AS rex_replay;
SELECT ids[1] AS rex_batch_hidden, ids[2] IS NOT NULL AS rex_batch_new_made, ids[3] AS rex_batch_hidden_again
  FROM crm.enqueue_jobs('send_email', ARRAY['{}', '{}', '{}']::jsonb[],
       idempotency_keys => ARRAY['00000000-0000-5000-8000-00000000000a', '00000000-0000-5000-8000-00000000000b',
                                 '00000000-0000-5000-8000-00000000000a']::uuid[]) AS ids;
-- his own key still gives his own job back
SELECT crm.enqueue_jobs('send_email', ARRAY['{}']::jsonb[],
       idempotency_keys => ARRAY['00000000-0000-5000-8000-00000000000b']::uuid[])
     = (SELECT ARRAY[j.id] FROM crm.job j WHERE j.idempotency_key = '00000000-0000-5000-8000-00000000000b') AS rex_gets_his_own;
-- the worker (no CRM user) sees every job of the tenant, so gets the id
RESET crm.user_id;
SELECT crm.enqueue_job('send_email', '{}', NULL, now(), '00000000-0000-5000-8000-00000000000a') = :'o_job' AS worker_gets_job;
-- archived: still hidden from Rex
SELECT count(*) AS claimed FROM crm.claim_jobs('email', 'rv-worker', 10, '1 minute');
SELECT crm.complete_job(:'o_job', NULL, 'rv-worker') IS NOT NULL AS completed;
SET crm.user_id = :'rex';
SELECT crm.enqueue_job('send_email', '{}', NULL, now(), '00000000-0000-5000-8000-00000000000a') AS rex_replay_archived;
RESET crm.user_id;
RESET ROLE;
-- an admin (crm_admin) sees every job of the tenant
SET ROLE regress_crm_app;
SET crm.tenant_id = :'rp';
SET crm.user_id = :'rex';
SELECT crm.enqueue_job('send_email', '{}', NULL, now(), '00000000-0000-5000-8000-00000000000a') = :'o_job' AS admin_gets_job;
RESET crm.user_id;
RESET ROLE;
-- nothing was made by the replays: Oscar's job and Rex's one
SELECT idempotency_key, count(*) FROM (SELECT idempotency_key FROM crm.job WHERE tenant_id = :'rp'
       UNION ALL SELECT idempotency_key FROM crm.job_archive WHERE tenant_id = :'rp') k
 GROUP BY 1 ORDER BY 1;
SET ROLE regress_crm_app;
SET crm.tenant_id = :'rv';

-- 4. crm.reap_expired_leases() with a tenant reaps, and counts, only the
-- jobs the caller may see: Rex's reap leaves Oscar's hidden job alone and
-- does not count it.  The maintenance role (superuser or BYPASSRLS) reaps
-- them all.
SET ROLE regress_rv_writer;
SET crm.tenant_id = :'rp';
SET crm.user_id = :'oscar';
SELECT crm.enqueue_job('send_email', '{"template": "secret 2"}', :'o_con') AS o_job2 \gset
RESET crm.user_id;
SELECT count(*) AS claimed FROM crm.claim_jobs('email', 'rv-worker', 10, '1 minute');
RESET ROLE;
-- both leases (Rex's job with key b, Oscar's new one) run out
UPDATE crm.job SET locked_until = now() - interval '1 minute' WHERE tenant_id = :'rp';
SELECT count(*) AS expired FROM crm.job WHERE tenant_id = :'rp' AND locked_until < now();
SET ROLE regress_rv_writer;
SET crm.tenant_id = :'rp';
SET crm.user_id = :'rex';
SELECT crm.reap_expired_leases() AS rex_reaped;
RESET crm.user_id;
RESET ROLE;
SELECT id = :'o_job2' AS is_oscars, locked_by IS NOT NULL AS still_locked
  FROM crm.job WHERE tenant_id = :'rp' ORDER BY 1;
-- a maintenance role (BYPASSRLS), acting for the tenant, reaps the rest,
-- even when it names a CRM user who does not see the job
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_rv_maint;
CREATE ROLE regress_rv_maint BYPASSRLS IN ROLE crm_app, crm_writer;
SET ROLE regress_rv_maint;
SET crm.tenant_id = :'rp';
SET crm.user_id = :'rex';
SELECT crm.reap_expired_leases() AS maintenance_reaped;
RESET crm.user_id;
RESET crm.tenant_id;
RESET ROLE;
SELECT count(*) AS still_locked FROM crm.job WHERE tenant_id = :'rp' AND locked_by IS NOT NULL;
DROP ROLE regress_rv_maint, regress_rv_writer;

-- 5. A NULL currency or day with an amount to convert is a missing
-- argument (22004), not a missing rate (P0002); a NULL amount stays NULL.
SET ROLE regress_crm_app;
SET crm.tenant_id = :'rv';
SELECT rv_try($$SELECT crm.convert_amount(1, NULL, 'USD')$$) AS null_from,
       rv_try($$SELECT crm.convert_amount(1, 'EUR', NULL)$$) AS null_to,
       rv_try($$SELECT crm.convert_amount(1, 'EUR', 'USD', NULL)$$) AS null_day,
       crm.convert_amount(NULL, NULL, 'USD') IS NULL AS null_amount_null;
RESET crm.tenant_id;
RESET ROLE;
