-- An attacker's review of the queue batch session (issue 12 throughput,
-- issue 7 write path, issue 9 Citus): what a role of one tenant, or a CRM
-- user of a private tenant, can do with the new batch forms of the queue,
-- and what the new refusals refuse.
SET client_min_messages = warning;
SELECT crm.create_tenant('Attack private') AS tp \gset
SELECT crm.create_tenant('Attack other') AS tb \gset
UPDATE crm.tenant SET visibility = 'private' WHERE tenant_id = :'tp';
SET crm.tenant_id = :'tp';
INSERT INTO crm.app_user (name) VALUES ('Oscar Owner') RETURNING id AS oscar \gset
INSERT INTO crm.app_user (name) VALUES ('Rex Rep') RETURNING id AS rex \gset
RESET crm.tenant_id;
DROP ROLE IF EXISTS regress_sa_app;
CREATE ROLE regress_sa_app LOGIN IN ROLE crm_app, crm_writer;
SET ROLE regress_sa_app;
SET crm.tenant_id = :'tp';

-- Oscar's deal and contact, and his jobs about them
SET crm.user_id = :'oscar';
INSERT INTO crm.account (name, owner_id) VALUES ('Oscar Corp', :'oscar') RETURNING id AS o_acc \gset
INSERT INTO crm.opportunity (name, amount, currency, owner_id, account_id, expected_close_date)
VALUES ('Oscar deal', 777, 'USD', :'oscar', :'o_acc', '2030-01-15') RETURNING id AS o_deal \gset
INSERT INTO crm.contact (first_name, email, account_id, owner_id)
VALUES ('Carla', 'carla@hidden.example', :'o_acc', :'oscar') RETURNING id AS o_con \gset
SELECT crm.enqueue_jobs('webhook', ARRAY['{"n": 1}', '{"n": 2}']::jsonb[], source_entity => 'opportunity',
                        source_ids => ARRAY[:'o_deal', :'o_deal']::uuid[]) AS o_jobs \gset
SELECT crm.enqueue_job('send_email', '{"template": "x"}', :'o_con') AS o_mail \gset
SELECT count(*) AS oscar_sees_jobs FROM crm.job;

-- Rex sees none of them, and cannot name Oscar's records in a batch
-- (42501, as crm.enqueue_job), nor report on, retry or claim his jobs
-- (P0002: no such job for him)
SET crm.user_id = :'rex';
SELECT count(*) AS rex_sees_jobs FROM crm.job;
SELECT try($$SELECT crm.enqueue_jobs('webhook', ARRAY['{}']::jsonb[], contacts => ARRAY['$$ || :'o_con' || $$']::uuid[])$$) AS rex_names_contact;
SELECT try($$SELECT crm.enqueue_jobs('webhook', ARRAY['{}', '{}']::jsonb[], source_entity => 'opportunity',
       source_ids => ARRAY[NULL, '$$ || :'o_deal' || $$']::uuid[])$$) AS rex_names_deal_second;
SELECT try($$SELECT crm.enqueue_jobs('webhook', ARRAY['{"payload": {"opportunityId": "$$ || :'o_deal' || $$"}}']::jsonb[])$$) AS rex_names_deal_in_payload;
SELECT try($$SELECT crm.complete_jobs(ARRAY['$$ || (:'o_jobs'::uuid[])[1] || $$']::uuid[], NULL)$$) AS rex_completes;
SELECT try($$SELECT * FROM crm.fail_jobs(ARRAY['$$ || (:'o_jobs'::uuid[])[1] || $$']::uuid[], NULL, 'x')$$) AS rex_fails;
SELECT try($$SELECT crm.retry_job('$$ || (:'o_jobs'::uuid[])[1] || $$')$$) AS rex_retries;
SELECT count(*) AS rex_claims FROM crm.claim_jobs('webhook', 'w', 10);
-- the session's claim starting point is Oscar's own: after his claim in
-- this session, Rex's next claims still find nothing of his, and Rex
-- cannot complete the job Oscar holds
SET crm.user_id = :'oscar';
SELECT count(*) AS oscar_claims FROM crm.claim_jobs('webhook', 'w', 1);
SET crm.user_id = :'rex';
SELECT count(*) AS rex_claims_after FROM crm.claim_jobs('webhook', 'w', 10);
SELECT try($$SELECT crm.complete_jobs(ARRAY['$$ || (:'o_jobs'::uuid[])[1] || $$', '$$ || (:'o_jobs'::uuid[])[2] || $$']::uuid[], NULL)$$) AS rex_completes_held;

-- Another tenant's application sees no job of this one, and no record
SET crm.tenant_id = :'tb';
RESET crm.user_id;
SELECT try($$SELECT crm.complete_jobs(ARRAY['$$ || (:'o_jobs'::uuid[])[1] || $$']::uuid[], NULL)$$) AS b_completes;
SELECT try($$SELECT * FROM crm.fail_jobs(ARRAY['$$ || (:'o_jobs'::uuid[])[2] || $$']::uuid[], NULL, 'x')$$) AS b_fails;
SELECT try($$SELECT crm.enqueue_jobs('send_email', ARRAY['{}']::jsonb[], contacts => ARRAY['$$ || :'o_con' || $$']::uuid[])$$) AS b_names_contact;
SELECT try($$SELECT crm.enqueue_jobs('webhook', ARRAY['{}']::jsonb[], source_entity => 'opportunity',
       source_ids => ARRAY['$$ || :'o_deal' || $$']::uuid[])$$) AS b_names_deal;
SELECT count(*) AS b_claims FROM crm.claim_jobs('webhook', 'w', 10);
SELECT count(*) AS b_sees_jobs FROM crm.job;
RESET ROLE;
SELECT count(*) AS private_jobs_untouched FROM crm.job WHERE tenant_id = :'tp' AND locked_by IS NULL;

-- Deleting a tenant takes everything along, mappings of login roles
-- included.  Since a CRM user a login role is mapped as refuses its
-- delete (23503), the users the tenant's cascade deleted were refused too,
-- and with them the tenant's delete.
CREATE ROLE regress_sa_login;
SELECT crm.create_tenant('Leaving tenant') AS lt \gset
INSERT INTO crm.app_user (tenant_id, name) VALUES (:'lt', 'Mapped Mia') RETURNING id AS mia \gset
SELECT crm.grant_tenant_access('regress_sa_login', :'lt', :'mia');
-- the user alone is still refused while the mapping names her
SELECT try($$DELETE FROM crm.app_user WHERE id = '$$ || :'mia' || $$'$$) AS user_delete;
DELETE FROM crm.tenant WHERE tenant_id = :'lt';
SELECT (SELECT count(*) FROM crm.tenant WHERE tenant_id = :'lt') AS tenants,
       (SELECT count(*) FROM crm.app_user WHERE tenant_id = :'lt') AS users,
       (SELECT count(*) FROM crm.tenant_access WHERE tenant_id = :'lt') AS mappings;
DROP ROLE regress_sa_login;

-- A job whose contact was deleted after it was enqueued: the claim checks
-- the contact's consent again and found no contact, an error (23503) that
-- undid the claim.  Being the oldest job of its queue, it was met by every
-- claim of every worker: the queue was stuck for good.  It is skipped
-- instead (archived with the reason), as a contact that withdrew consent is.
SELECT crm.create_tenant('Poisoned queue') AS pq \gset
SET ROLE regress_sa_app;
SET crm.tenant_id = :'pq';
INSERT INTO crm.contact (first_name, email) VALUES ('Gone', 'gone@poison.example') RETURNING id AS gone \gset
INSERT INTO crm.contact (first_name, email) VALUES ('Stays', 'stays@poison.example') RETURNING id AS stays \gset
SELECT crm.enqueue_job('send_email', '{"template": "first"}', :'gone') AS gone_job \gset
SELECT crm.enqueue_job('send_email', '{"template": "second"}', :'stays') AS stays_job \gset
DELETE FROM crm.contact WHERE id = :'gone';
SELECT params->>'template' AS claimed, contact_id = :'stays' AS stays_contact
  FROM crm.claim_jobs('email', 'w', 10);
SELECT outcome, reason, params->>'template' AS template FROM crm.job_archive WHERE id = :'gone_job';
SELECT count(*) AS still_ready FROM crm.job WHERE id = :'gone_job';
RESET ROLE;

-- crm.purge_jobs() and crm.reap_expired_leases() without a tenant work on
-- every tenant: the operator's scheduled maintenance.  An application role
-- that simply sets no crm.tenant_id (one crm.app_access may even fence to
-- other tenants) purged every tenant's job archive and idempotency keys
-- (a replayed event then makes a second job) and reaped their leases.
-- Without a tenant they are the operator's only (42501, as
-- crm.purge_events gives).
SELECT crm.create_tenant('Purge victim') AS pv \gset
SET crm.tenant_id = :'pv';
SELECT crm.enqueue_job('webhook', '{}', idempotency_key => '00000000-0000-5000-8000-0000000000c1') AS pv_job \gset
SELECT count(*) AS claimed FROM crm.claim_jobs('webhook', 'w');
SELECT crm.complete_job(:'pv_job', NULL, 'w');
RESET crm.tenant_id;
SET ROLE regress_crm_app;
RESET crm.tenant_id;
SELECT try($$SELECT crm.purge_jobs('0 seconds')$$) AS app_purges_all;
SELECT try($$SELECT crm.reap_expired_leases()$$) AS app_reaps_all;
RESET ROLE;
SELECT (SELECT count(*) FROM crm.job_archive WHERE tenant_id = :'pv') AS victim_archive,
       (SELECT count(*) FROM crm.job_key WHERE tenant_id = :'pv') AS victim_keys;
