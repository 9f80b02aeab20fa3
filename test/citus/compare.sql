-- test/citus/compare.sql: the same script on one node and on Citus (make
-- test-citus, scripts/citus.sh) must print the same thing.  Each check
-- starts with a line "## name"; ids and times are never printed (ids that
-- reach an error message are masked by the runner), and every result is
-- ordered.  The work is done as an application would: the application
-- role crm_citus_app (crm_app + crm_writer) with SET LOCAL crm.tenant_id per
-- transaction, and the login role crm_citus_alice mapped to one tenant.
-- Citus sends SET LOCAL (not SET) to the workers with
-- citus.propagate_set_commands = 'local'; on one node the setting is inert.
\set ON_ERROR_STOP 0
\set VERBOSITY terse
\pset footer off
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';

-- Provisioning, as the operator (a superuser) ------------------------------
\echo '## provision: tenants and their default pipelines'
SELECT crm.create_tenant('North Sales') AS tn \gset
SELECT crm.create_tenant('South Sales') AS ts \gset
SELECT t.name, p.name AS pipeline, p.is_default, count(s.*) AS stages, sum(s.probability) AS probabilities
  FROM crm.tenant t JOIN crm.pipeline p USING (tenant_id) JOIN crm.stage s ON s.tenant_id = p.tenant_id AND s.pipeline_id = p.id
 GROUP BY t.name, p.name, p.is_default ORDER BY 1, 2;

\echo '## provision: users, team, rates, mapping'
BEGIN;
SET LOCAL crm.tenant_id = :'tn';
INSERT INTO crm.app_user (tenant_id, name, email) VALUES (:'tn', 'Nora Boss', 'nora@north.example') RETURNING id AS nora \gset
INSERT INTO crm.app_user (tenant_id, name, email, manager_id) VALUES (:'tn', 'Ned Rep', 'ned@north.example', :'nora') RETURNING id AS ned \gset
INSERT INTO crm.app_user (tenant_id, name, email) VALUES (:'tn', 'Olga Other', 'olga@north.example') RETURNING id AS olga \gset
INSERT INTO crm.team (tenant_id, name, manager_id) VALUES (:'tn', 'North Team', :'nora') RETURNING id AS nteam \gset
INSERT INTO crm.team_member (tenant_id, team_id, user_id) VALUES (:'tn', :'nteam', :'ned');
INSERT INTO crm.currency_rate (tenant_id, from_currency, to_currency, rate, valid_from)
VALUES (:'tn', 'EUR', 'USD', 1.10, '2025-01-01'), (:'tn', 'EUR', 'USD', 1.20, '2026-01-01');
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'ts';
INSERT INTO crm.app_user (tenant_id, name, email) VALUES (:'ts', 'Sam South', 'sam@south.example') RETURNING id AS sam \gset
UPDATE crm.tenant SET default_currency = 'EUR' WHERE tenant_id = :'ts';
INSERT INTO crm.currency_rate (tenant_id, from_currency, to_currency, rate, valid_from)
VALUES (:'ts', 'USD', 'EUR', 0.5, '2025-01-01');
COMMIT;
SELECT crm.grant_tenant_access('crm_citus_alice', :'tn', as_user => :'ned');
SELECT a.login_role, a.tenant_id = :'tn' AS for_north, a.user_id = :'ned' AS as_ned
  FROM crm.tenant_access a ORDER BY 1;

-- The application role ----------------------------------------------------
\c - crm_citus_app
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';

\echo '## app: records with the defaults (tenant, currency, pipeline, stage)'
BEGIN;
SET LOCAL crm.tenant_id = :'tn';
SET LOCAL crm.user_id = :'ned';
INSERT INTO crm.account (name, industry, employees, owner_id) VALUES ('Initech', 'technology', 250, :'ned') RETURNING id AS initech \gset
INSERT INTO crm.account (name, industry, owner_id) VALUES ('Hooli', 'technology', :'olga') RETURNING id AS hooli \gset
INSERT INTO crm.contact (first_name, last_name, email, account_id, owner_id)
VALUES ('Peter', 'Gibbons', 'peter@initech.example', :'initech', :'ned') RETURNING id AS peter \gset
INSERT INTO crm.opportunity (name, account_id, contact_id, amount, owner_id)
VALUES ('Initech renewal', :'initech', :'peter', 12000, :'ned') RETURNING id AS renewal \gset
INSERT INTO crm.opportunity (name, account_id, amount, currency, owner_id)
VALUES ('Initech Europe', :'initech', 10000, 'EUR', :'ned') RETURNING id AS europe \gset
INSERT INTO crm.opportunity (name, account_id, amount, currency, owner_id)
VALUES ('Hooli pilot', :'hooli', 3000, 'JPY', :'olga') RETURNING id AS pilot \gset
INSERT INTO crm.lead (name, company_name, email, expected_revenue, owner_id)
VALUES ('Bob at Bobco', 'Bobco', 'bob@bobco.example', 4000, :'ned') RETURNING id AS bob \gset
INSERT INTO crm.lead (name, company_name, expected_revenue) VALUES ('Cold one', 'Iceco', 100) RETURNING id AS cold \gset
INSERT INTO crm.activity (activity_type, subject, contact_id, account_id, status, owner_id)
VALUES ('call', 'Intro call', :'peter', :'initech', 'completed', :'ned'),
       ('meeting', 'Demo', :'peter', :'initech', 'scheduled', :'ned'),
       ('email', 'Quote sent', :'peter', :'initech', 'completed', :'ned');
INSERT INTO crm.tag (name) VALUES ('VIP') RETURNING id AS vip \gset
INSERT INTO crm.account_tag (account_id, tag_id) VALUES (:'initech', :'vip');
INSERT INTO crm.opportunity_tag (opportunity_id, tag_id) VALUES (:'renewal', :'vip');
COMMIT;
SELECT o.name, o.currency, o.amount, s.name AS stage, o.status, o.probability, o.closed_at IS NULL AS open
  FROM crm.opportunity o JOIN crm.stage s ON s.tenant_id = o.tenant_id AND s.id = o.stage_id ORDER BY o.name;

\echo '## app: bulk writes (multi-row VALUES with the defaults; INSERT ... SELECT naming tenant_id)'
-- On Citus an INSERT ... SELECT that cannot be pushed down to the shards
-- (its source is not a co-located table, or it leaves tenant_id to the
-- default) is run through COPY, which PostgreSQL refuses under row-level
-- security; the README says so.  These two forms work on both.
BEGIN;
SET LOCAL crm.tenant_id = :'tn';
SET LOCAL crm.user_id = :'ned';
INSERT INTO crm.opportunity (name, amount)
VALUES ('Bulk 1', 100),
       ('Bulk 2', 200),
       ('Bulk 3', 300),
       ('Bulk 4', 400),
       ('Bulk 5', 500),
       ('Bulk 6', 600),
       ('Bulk 7', 700),
       ('Bulk 8', 800),
       ('Bulk 9', 900),
       ('Bulk 10', 1000),
       ('Bulk 11', 1100),
       ('Bulk 12', 1200),
       ('Bulk 13', 1300),
       ('Bulk 14', 1400),
       ('Bulk 15', 1500),
       ('Bulk 16', 1600),
       ('Bulk 17', 1700),
       ('Bulk 18', 1800),
       ('Bulk 19', 1900),
       ('Bulk 20', 2000);
INSERT INTO crm.lead (tenant_id, name, company_name, expected_revenue)
SELECT a.tenant_id, 'Bulk lead for ' || a.name, a.name, 10 FROM crm.account a;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'tn';
SELECT count(*), sum(amount), min(currency), max(currency), min(status), count(DISTINCT stage_id) AS stages
  FROM crm.opportunity WHERE name LIKE 'Bulk %';
SELECT count(*), sum(expected_revenue), min(currency), min(status) FROM crm.lead WHERE name LIKE 'Bulk lead %';
SELECT name, company_name FROM crm.lead WHERE name LIKE 'Bulk lead %' ORDER BY name;
COMMIT;

\echo '## app: activities derive their module'
BEGIN;
SET LOCAL crm.tenant_id = :'tn';
SELECT activity_type, module, subject, status, completed_at IS NOT NULL AS completed FROM crm.activity ORDER BY subject;
COMMIT;

\echo '## app: operations (move, won, lost, convert)'
BEGIN;
SET LOCAL crm.tenant_id = :'tn';
SET LOCAL crm.user_id = :'ned';
SELECT max(id::text) FILTER (WHERE name = 'Qualified') AS s_qualified,
       max(id::text) FILTER (WHERE name = 'Proposal') AS s_proposal,
       max(id::text) FILTER (WHERE name = 'Negotiation') AS s_negotiation,
       max(id::text) FILTER (WHERE name = 'Won') AS s_won
  FROM crm.stage s WHERE s.pipeline_id = (SELECT p.id FROM crm.pipeline p WHERE p.is_default) \gset
SELECT s.name AS stage, o.status, o.probability FROM crm.opportunity_move_stage(:'renewal', :'s_qualified') o
  JOIN crm.stage s ON s.tenant_id = o.tenant_id AND s.id = o.stage_id;
UPDATE crm.opportunity SET stage_id = :'s_proposal' WHERE id = :'renewal';
UPDATE crm.opportunity SET probability = 60 WHERE id = :'renewal';
UPDATE crm.opportunity SET stage_id = :'s_negotiation' WHERE id = :'europe';
SELECT o.status, o.probability, o.closed_at IS NOT NULL AS closed FROM crm.opportunity_mark_won(:'renewal') o;
SELECT o.status, o.probability, o.lost_reason FROM crm.opportunity_mark_lost(:'pilot', 'Chose a competitor') o;
UPDATE crm.opportunity SET stage_id = :'s_qualified' WHERE name LIKE 'Bulk %';
UPDATE crm.opportunity SET stage_id = :'s_won' WHERE name LIKE 'Bulk %' AND amount <= 500;
SELECT l.status, l.lost_reason FROM crm.lead_mark_lost(:'cold', 'No budget') l;
SELECT (c.account_id IS NOT NULL) AS account, (c.contact_id IS NOT NULL) AS contact,
       (c.opportunity_id IS NOT NULL) AS opportunity FROM crm.lead_convert(:'bob') c;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'tn';
SELECT o.name, s.name AS stage, o.status, o.probability, o.lost_reason, o.closed_at IS NOT NULL AS closed
  FROM crm.opportunity o JOIN crm.stage s ON s.tenant_id = o.tenant_id AND s.id = o.stage_id
 WHERE o.name NOT LIKE 'Bulk %' ORDER BY o.name;
SELECT s.name AS stage, o.status, count(*), sum(o.amount), count(o.closed_at) AS closed
  FROM crm.opportunity o JOIN crm.stage s ON s.tenant_id = o.tenant_id AND s.id = o.stage_id
 WHERE o.name LIKE 'Bulk %' GROUP BY 1, 2 ORDER BY 1, 2;
SELECT l.name, l.status, l.converted_at IS NOT NULL AS converted, a.name AS account, c.email AS contact
  FROM crm.lead l
  LEFT JOIN crm.account a ON a.tenant_id = l.tenant_id AND a.id = l.converted_account_id
  LEFT JOIN crm.contact c ON c.tenant_id = l.tenant_id AND c.id = l.converted_contact_id
 WHERE l.name NOT LIKE 'Bulk %' ORDER BY l.name;
COMMIT;

\echo '## app: stage history written by the statement trigger'
BEGIN;
SET LOCAL crm.tenant_id = :'tn';
SELECT coalesce(o.name, l.name) AS record, f.name AS from_stage, s.name AS to_stage, h.amount, h.probability,
       u.name AS changed_by, h.changed_by_role
  FROM crm.stage_history h
  JOIN crm.stage f ON f.tenant_id = h.tenant_id AND f.id = h.from_stage_id
  JOIN crm.stage s ON s.tenant_id = h.tenant_id AND s.id = h.to_stage_id
  LEFT JOIN crm.app_user u ON u.tenant_id = h.tenant_id AND u.id = h.changed_by
  LEFT JOIN crm.opportunity o ON o.tenant_id = h.tenant_id AND o.id = h.opportunity_id
  LEFT JOIN crm.lead l ON l.tenant_id = h.tenant_id AND l.id = h.lead_id
 ORDER BY 1, 2, 3, 4;
COMMIT;

\echo '## app: operation errors (each rolled back)'
BEGIN;
SET LOCAL crm.tenant_id = :'tn';
SELECT crm.opportunity_move_stage('00000000-0000-7000-8000-000000000001', :'s_won');
ROLLBACK;
BEGIN;
SET LOCAL crm.tenant_id = :'tn';
SELECT crm.opportunity_move_stage(:'renewal', NULL);
ROLLBACK;
BEGIN;
SET LOCAL crm.tenant_id = :'tn';
SELECT crm.opportunity_mark_won('00000000-0000-7000-8000-000000000001');
ROLLBACK;
BEGIN;
SET LOCAL crm.tenant_id = :'tn';
INSERT INTO crm.opportunity (name, amount, currency) VALUES ('Bad currency', 1, 'XXX');
ROLLBACK;
BEGIN;
SET LOCAL crm.tenant_id = :'tn';
INSERT INTO crm.opportunity (name, amount) VALUES ('Negative', -1);
ROLLBACK;

\echo '## app: reports (kanban and dashboard)'
-- Every column but the ids, whatever the views name them (one JSON object a row).
BEGIN;
SET LOCAL crm.tenant_id = :'tn';
SELECT to_jsonb(k) - ARRAY['tenant_id', 'pipeline_id', 'stage_id'] AS opportunity_kanban
  FROM crm.opportunity_kanban k ORDER BY k.pipeline_name, k.stage_sequence;
SELECT to_jsonb(k) - ARRAY['tenant_id', 'pipeline_id', 'stage_id'] AS lead_kanban
  FROM crm.lead_kanban k ORDER BY k.pipeline_name, k.stage_sequence;
SELECT jsonb_pretty(to_jsonb(d) - 'tenant_id') AS dashboard FROM crm.dashboard d;
COMMIT;

\echo '## fence: the app acting for South sees South only'
BEGIN;
SET LOCAL crm.tenant_id = :'ts';
SET LOCAL crm.user_id = :'sam';
INSERT INTO crm.account (name) VALUES ('Southco') RETURNING id AS southco \gset
INSERT INTO crm.opportunity (name, account_id, amount) VALUES ('South deal', :'southco', 800);
INSERT INTO crm.opportunity (name, amount, currency) VALUES ('South dollars', 1000, 'USD');
SELECT (SELECT count(*) FROM crm.tenant) AS tenants, (SELECT count(*) FROM crm.app_user) AS users,
       (SELECT count(*) FROM crm.account) AS accounts, (SELECT count(*) FROM crm.opportunity) AS opportunities,
       (SELECT count(*) FROM crm.lead) AS leads, (SELECT count(*) FROM crm.stage_history) AS history,
       (SELECT count(*) FROM crm.activity) AS activities, (SELECT count(*) FROM crm.tag) AS tags;
SELECT name, currency, amount FROM crm.opportunity ORDER BY name;
SELECT jsonb_pretty(to_jsonb(d) - 'tenant_id') AS dashboard FROM crm.dashboard d;
COMMIT;

\echo '## fence: writes into another tenant are refused'
BEGIN;
SET LOCAL crm.tenant_id = :'ts';
INSERT INTO crm.account (tenant_id, name) VALUES (:'tn', 'Smuggled');
ROLLBACK;
BEGIN;
SET LOCAL crm.tenant_id = :'ts';
UPDATE crm.account SET name = 'Hijacked' WHERE id = :'initech';
SELECT count(*) AS south_sees_initech FROM crm.account WHERE id = :'initech';
DELETE FROM crm.opportunity WHERE id = :'renewal';
ROLLBACK;
-- Moving a row to another tenant is refused on both, with different
-- messages (Citus refuses to change a distribution column before the row's
-- trigger or policy is reached): only the outcome is compared.
SET client_min_messages = error; -- Citus warns that a temporary function is not propagated
CREATE FUNCTION pg_temp.outcome(statement text) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN
    EXECUTE statement;
    RETURN 'done';
EXCEPTION WHEN OTHERS THEN
    RETURN 'refused';
END
$f$;
SET client_min_messages = warning;
BEGIN;
SET LOCAL crm.tenant_id = :'tn';
SELECT pg_temp.outcome(format('UPDATE crm.account SET tenant_id = %L WHERE id = %L', :'ts', :'initech')) AS move_to_south;
SELECT count(*) AS initech_in_north FROM crm.account WHERE id = :'initech';
ROLLBACK;
BEGIN;
SET LOCAL crm.tenant_id = :'ts';
SELECT crm.opportunity_mark_won(:'renewal');
ROLLBACK;

\echo '## fence: no tenant, no rows'
BEGIN;
SELECT crm.current_tenant() IS NULL AS no_tenant, (SELECT count(*) FROM crm.account) AS accounts,
       (SELECT count(*) FROM crm.opportunity) AS opportunities, (SELECT count(*) FROM crm.dashboard) AS dashboards;
-- refused on both, with different messages (Citus refuses a NULL
-- distribution column before the policy is reached): the outcome is compared
SELECT pg_temp.outcome($$INSERT INTO crm.account (name) VALUES ('Nobody''s')$$) AS insert_without_tenant;
ROLLBACK;

\echo '## fence: each transaction acts for the tenant it sets'
BEGIN;
SET LOCAL crm.tenant_id = :'tn';
SELECT count(*) AS north_accounts FROM crm.account;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'ts';
SELECT count(*) AS south_accounts FROM crm.account;
COMMIT;

-- The mapped login role ---------------------------------------------------
\c - crm_citus_alice
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';

\echo '## mapped: alice acts for North as Ned'
BEGIN;
SELECT t.name AS tenant, u.name AS as_user
  FROM crm.app_user u JOIN crm.tenant t ON t.tenant_id = u.tenant_id WHERE u.id = crm.current_user_id();
SELECT name FROM crm.account ORDER BY name;
COMMIT;

\echo '## mapped: crm.tenant_id cannot widen a mapping'
BEGIN;
SET LOCAL crm.tenant_id = :'ts';
SELECT count(*) AS accounts_seen, min(name) AS first FROM crm.account;
INSERT INTO crm.account (tenant_id, name) VALUES (:'ts', 'Alice smuggles');
ROLLBACK;

\echo '## mapped: alice works (stage history records her user and role)'
BEGIN;
INSERT INTO crm.opportunity (name, amount) VALUES ('Alice deal', 700) RETURNING id AS alicedeal \gset
UPDATE crm.opportunity SET stage_id = :'s_proposal' WHERE id = :'alicedeal';
SELECT o.name, o.status, o.probability, o.currency FROM crm.opportunity o WHERE o.id = :'alicedeal';
SELECT u.name AS changed_by, h.changed_by_role, h.probability
  FROM crm.stage_history h LEFT JOIN crm.app_user u ON u.tenant_id = h.tenant_id AND u.id = h.changed_by
 WHERE h.opportunity_id = :'alicedeal';
COMMIT;

\echo '## mapped: reports'
SELECT to_jsonb(k) - ARRAY['tenant_id', 'pipeline_id', 'stage_id'] AS opportunity_kanban
  FROM crm.opportunity_kanban k WHERE k.count > 0 ORDER BY k.pipeline_name, k.stage_sequence;
SELECT jsonb_pretty(to_jsonb(d) - 'tenant_id') AS dashboard FROM crm.dashboard d;

-- Workflow and scoring (South, as the application) --------------------------
\c - crm_citus_app
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';

\echo '## app: workflow: a quote_created activity fires the tenant''s rules (jobs in the same transaction)'
BEGIN;
SET LOCAL crm.tenant_id = :'ts';
SET LOCAL crm.user_id = :'sam';
INSERT INTO crm.account (name, industry, employees, owner_id) VALUES ('Globex', 'technology', 120, :'sam') RETURNING id AS globex \gset
INSERT INTO crm.contact (first_name, last_name, email, account_id, owner_id)
VALUES ('Hank', 'Scorpio', 'hank@globex.example', :'globex', :'sam') RETURNING id AS hank \gset
INSERT INTO crm.opportunity (name, account_id, contact_id, amount, expected_close_date, probability, owner_id)
VALUES ('Globex deal', :'globex', :'hank', 5000, '2026-03-15', 40, :'sam') RETURNING id AS globex_deal \gset
INSERT INTO crm.opportunity (name, account_id, amount, expected_close_date, probability, owner_id)
VALUES ('Globex extension', :'globex', 2000, '2026-04-10', 70, :'sam');
INSERT INTO crm.activity (activity_type, subject, contact_id, account_id, opportunity_id, status, owner_id)
VALUES ('quote_created', 'Quote Q-1', :'hank', :'globex', :'globex_deal', 'completed', :'sam');
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'ts';
SELECT j.queue, j.action, j.source_entity, j.attempts, j.locked_by, r.builtin_key AS rule
  FROM crm.job j LEFT JOIN crm.workflow_rule r ON r.tenant_id = j.tenant_id AND r.id = j.rule_id
 ORDER BY 1, 2, 6;
SELECT a.action, a.outcome, a.reason FROM crm.job_archive a ORDER BY 1, 2, 3;
COMMIT;

\echo '## app: scoring: leads scored by the trigger, score_lead, top_leads'
BEGIN;
SET LOCAL crm.tenant_id = :'ts';
SET LOCAL crm.user_id = :'sam';
INSERT INTO crm.lead (name, company_name, email, expected_revenue, owner_id)
VALUES ('Big lead', 'Bigco', 'big@bigco.example', 50000, :'sam') RETURNING id AS big \gset
INSERT INTO crm.lead (name, company_name, expected_revenue) VALUES ('Small lead', 'Smallco', 100);
INSERT INTO crm.activity (activity_type, subject, lead_id, status, owner_id)
VALUES ('call', 'Call Bigco', :'big', 'completed', :'sam'),
       ('meeting', 'Meet Bigco', :'big', 'completed', :'sam');
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'ts';
SELECT name, score, fit_score, engagement_score, qualification FROM crm.lead ORDER BY name;
SELECT crm.score_lead(:'big') AS computed_score \gset
SELECT l.score = :computed_score AS same_score FROM crm.lead l WHERE l.id = :'big';
SELECT t.name, t.score, t.qualification FROM crm.top_leads(5) t ORDER BY 2 DESC, 1;
SELECT count(*) AS history_rows FROM crm.lead_score_history;
COMMIT;

-- Owner visibility in a private tenant --------------------------------------
\c - postgres
SET client_min_messages = warning;
UPDATE crm.tenant SET visibility = 'private' WHERE tenant_id = :'tn';
\c - crm_citus_alice
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';

\echo '## private: Ned (alice) sees his own and unowned records'
SELECT name FROM crm.account ORDER BY name;
SELECT name FROM crm.opportunity WHERE name NOT LIKE 'Bulk %' ORDER BY name;

\c - crm_citus_app
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';
\echo '## private: Nora (manager of Ned) sees her reports'' records; Olga only hers'
BEGIN;
SET LOCAL crm.tenant_id = :'tn';
SET LOCAL crm.user_id = :'nora';
SELECT name FROM crm.account ORDER BY name;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'tn';
SET LOCAL crm.user_id = :'olga';
SELECT name FROM crm.account ORDER BY name;
SELECT name FROM crm.opportunity WHERE name NOT LIKE 'Bulk %' ORDER BY name;
COMMIT;

-- Nobody -------------------------------------------------------------------
\c - crm_citus_nobody
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';
\echo '## nobody: a role of no tenant sees nothing, even with crm.tenant_id'
BEGIN;
SET LOCAL crm.tenant_id = :'tn';
SELECT (SELECT count(*) FROM crm.account) AS accounts, (SELECT count(*) FROM crm.opportunity) AS opportunities,
       (SELECT count(*) FROM crm.tenant) AS tenants;
COMMIT;

\echo '## end'

-- The job queue (issue 12) on Citus: every call of a transaction --------------
-- under one identity (the queue tables' owner), the tenant fence kept.
\c - crm_citus_app
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';

\echo '## queue: enqueue twice (and a batch) in one transaction'
BEGIN;
SET LOCAL crm.tenant_id = :'ts';
SELECT crm.enqueue_job('webhook', '{"n": 1}') IS NOT NULL AS first;
SELECT crm.enqueue_job('webhook', '{"n": 2}', idempotency_key => '00000000-0000-5000-8000-0000000000c1') AS keyed \gset
SELECT crm.enqueue_job('webhook', '{"n": 2}', idempotency_key => '00000000-0000-5000-8000-0000000000c1') = :'keyed' AS same_key;
SELECT cardinality(crm.enqueue_jobs('webhook', ARRAY['{"n": 3}', '{"n": 4}', '{"n": 5}']::jsonb[])) AS batch;
SELECT crm.enqueue_job('webhook', '{"n": 6}', max_attempts => 1) IS NOT NULL AS last_chance;
SELECT crm.enqueue_job('send_email', '{"template": "hello"}', :'hank') IS NOT NULL AS mail;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'ts';
SELECT queue, params->>'n' AS n, attempts, max_attempts, locked_by FROM crm.job
 WHERE queue IN ('webhook', 'email') ORDER BY 1, 2;
COMMIT;

\echo '## queue: claim, complete, complete a batch, fail, retry in one transaction'
BEGIN;
SET LOCAL crm.tenant_id = :'ts';
SELECT array_agg(id ORDER BY (params->>'n')::int) AS claimed, count(*) AS nclaimed
  FROM crm.claim_jobs('webhook', 'citus-worker', 10, '5 minutes') \gset
SELECT :nclaimed AS claimed;
SELECT crm.complete_job((:'claimed'::uuid[])[1], '{"ok": 1}', 'citus-worker');
SELECT crm.complete_jobs((:'claimed'::uuid[])[2:3], 'citus-worker', '{"ok": 2}') AS completed;
SELECT crm.fail_job((:'claimed'::uuid[])[4], 'HTTP 500', 'citus-worker') > now() AS retried_later;
SELECT f.next_run IS NULL AS dead FROM crm.fail_jobs((:'claimed'::uuid[])[6:6], 'citus-worker', 'HTTP 502') f;
SELECT crm.extend_lease((:'claimed'::uuid[])[5], '10 minutes', 'citus-worker') > now() AS extended;
SELECT crm.retry_job((:'claimed'::uuid[])[6]) = (:'claimed'::uuid[])[6] AS retried;
SELECT crm.reap_expired_leases() AS reaped;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'ts';
SELECT params->>'n' AS n, attempts, locked_by, jsonb_array_length(errors) AS errors FROM crm.job
 WHERE queue = 'webhook' ORDER BY 1;
SELECT params->>'n' AS n, outcome, result, reason FROM crm.job_archive WHERE queue = 'webhook' ORDER BY 1;
COMMIT;

\echo '## queue: errors are the same, and the transaction goes on after none'
BEGIN;
SET LOCAL crm.tenant_id = :'ts';
SELECT crm.complete_jobs((:'claimed'::uuid[])[5:6], 'citus-worker');
ROLLBACK;
BEGIN;
SET LOCAL crm.tenant_id = :'ts';
SELECT crm.complete_job((:'claimed'::uuid[])[1], NULL, 'citus-worker');
ROLLBACK;

-- Not here: crm.run_jobs().  Its actions run as the caller between the
-- claim and the completion, which run as the queue tables' owner, and on
-- Citus a transaction may not touch a tenant's shards as two users
-- ("placements modified ... by a different user"); the same holds for an
-- application's own statement before or after a queue call in one
-- transaction.  Jobs of the rules (written by the trigger on the shard)
-- are not affected.

\echo '## queue: another tenant sees, claims and completes none of these jobs'
BEGIN;
SET LOCAL crm.tenant_id = :'tn';
SELECT count(*) AS jobs FROM crm.job;
SELECT count(*) AS claimed FROM crm.claim_jobs('webhook', 'north-worker', 10);
SELECT crm.complete_jobs((:'claimed'::uuid[])[5:5], 'citus-worker');
ROLLBACK;

\c - crm_citus_alice
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';
\echo '## queue: the mapped login role enqueues and claims in its own tenant only'
BEGIN;
SELECT crm.enqueue_job('webhook', '{"n": 7}') IS NOT NULL AS enqueued;
SELECT crm.enqueue_job('webhook', '{"n": 8}') IS NOT NULL AS again;
SELECT params->>'n' AS n FROM crm.claim_jobs('webhook', 'alice-worker', 10) ORDER BY 1;
COMMIT;
