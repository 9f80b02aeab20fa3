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

-- Forecasting and deletes (issue 9, wt-s4) in a tenant of their own --------
-- East Sales: forecasts with what-if changes, snapshots and their
-- waterfall and accuracy, then every delete that clears links or cascades,
-- as the administrating application (crm_citus_admin: crm_app + crm_admin)
-- and as an administrator's login role mapped to East (crm_citus_boss).
-- Amounts, dates and as_of are fixed; ids are never printed.
\c - postgres
SET client_min_messages = warning;
SELECT crm.create_tenant('East Sales') AS te \gset
\c - crm_citus_admin
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';

\echo '## east: users, team, rates, quotas, stage values, deals'
BEGIN;
SET LOCAL crm.tenant_id = :'te';
INSERT INTO crm.app_user (name, email) VALUES ('Erin Boss', 'erin@east.example') RETURNING id AS erin \gset
INSERT INTO crm.app_user (name, email, manager_id) VALUES ('Eve Rep', 'eve@east.example', :'erin') RETURNING id AS eve \gset
INSERT INTO crm.app_user (name, email, manager_id) VALUES ('Ed Rep', 'ed@east.example', :'erin') RETURNING id AS ed \gset
INSERT INTO crm.team (name, manager_id) VALUES ('East Team', :'erin') RETURNING id AS eteam \gset
INSERT INTO crm.team_member (team_id, user_id) VALUES (:'eteam', :'eve'), (:'eteam', :'ed');
INSERT INTO crm.currency_rate (from_currency, to_currency, rate, valid_from)
VALUES ('EUR', 'USD', 1.10, '2025-01-01'), ('EUR', 'USD', 1.20, '2026-02-20');
SELECT max(id::text) FILTER (WHERE name = 'New') AS e_new,
       max(id::text) FILTER (WHERE name = 'Qualified') AS e_qualified,
       max(id::text) FILTER (WHERE name = 'Proposal') AS e_proposal,
       max(id::text) FILTER (WHERE name = 'Negotiation') AS e_negotiation,
       max(id::text) FILTER (WHERE name = 'Won') AS e_won,
       max(id::text) FILTER (WHERE name = 'Lost') AS e_lost
  FROM crm.stage s WHERE s.pipeline_id = (SELECT p.id FROM crm.pipeline p WHERE p.is_default) \gset
UPDATE crm.stage SET expected_value = 2500, expected_value_currency = 'USD' WHERE id = :'e_qualified';
INSERT INTO crm.quota (period_type, period_start, amount, currency) VALUES ('month', '2026-03-01', 40000, 'USD');
INSERT INTO crm.quota (period_type, period_start, owner_id, amount, currency) VALUES ('month', '2026-03-01', :'eve', 20000, 'EUR');
INSERT INTO crm.quota (period_type, period_start, team_id, amount, currency) VALUES ('quarter', '2026-01-01', :'eteam', 50000, 'USD');
INSERT INTO crm.opportunity (name, stage_id, amount, expected_close_date, owner_id)
VALUES ('E1 big', :'e_proposal', 20000, '2026-03-10', :'eve') RETURNING id AS e1 \gset
INSERT INTO crm.opportunity (name, stage_id, amount, currency, expected_close_date, probability, owner_id)
VALUES ('E2 euro', :'e_negotiation', 10000, 'EUR', '2026-03-20', 80, :'eve') RETURNING id AS e2 \gset
INSERT INTO crm.opportunity (name, stage_id, amount, expected_close_date, owner_id)
VALUES ('E3 stage value', :'e_qualified', 0, '2026-04-05', :'ed') RETURNING id AS e3 \gset
INSERT INTO crm.opportunity (name, stage_id, amount, expected_close_date, forecast_category, owner_id)
VALUES ('E4 committed', :'e_qualified', 3000, '2026-05-15', 'commit', :'ed') RETURNING id AS e4 \gset
INSERT INTO crm.opportunity (name, amount, expected_close_date, owner_id)
VALUES ('E5 unowned', 700, '2026-03-25', NULL) RETURNING id AS e5 \gset
INSERT INTO crm.opportunity (name, amount, expected_close_date, owner_id)
VALUES ('E6 later', 9000, '2027-02-01', :'ed') RETURNING id AS e6 \gset
COMMIT;
\c - postgres
SELECT crm.grant_tenant_access('crm_citus_boss', :'te', as_user => :'erin');
\c - crm_citus_admin
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT o.name, s.name AS stage, o.amount, o.currency, o.probability, o.expected_close_date, u.name AS owner
  FROM crm.opportunity o JOIN crm.stage s ON s.tenant_id = o.tenant_id AND s.id = o.stage_id
  LEFT JOIN crm.app_user u ON u.tenant_id = o.tenant_id AND u.id = o.owner_id ORDER BY o.name;
COMMIT;

-- names for the ids the functions return, joined locally (on Citus a
-- statement that joins a function reading tables with a table filtered by
-- a constant tenant is routed to the worker, where the function's own
-- queries are refused)
SET client_min_messages = error; -- Citus warns that a temporary view is not propagated
CREATE TEMPORARY VIEW east_users (id, name) AS
    VALUES (:'erin'::uuid, 'Erin Boss'), (:'eve'::uuid, 'Eve Rep'), (:'ed'::uuid, 'Ed Rep');
CREATE TEMPORARY VIEW east_teams (id, name) AS VALUES (:'eteam'::uuid, 'East Team');
CREATE TEMPORARY VIEW east_deals (id, name) AS
    VALUES (:'e1'::uuid, 'E1 big'), (:'e2'::uuid, 'E2 euro'), (:'e3'::uuid, 'E3 stage value'),
           (:'e4'::uuid, 'E4 committed'), (:'e5'::uuid, 'E5 unowned'), (:'e6'::uuid, 'E6 later');
CREATE TEMPORARY VIEW east_stages (id, name) AS
    VALUES (:'e_new'::uuid, 'New'), (:'e_qualified'::uuid, 'Qualified'), (:'e_proposal'::uuid, 'Proposal'),
           (:'e_negotiation'::uuid, 'Negotiation'), (:'e_won'::uuid, 'Won'), (:'e_lost'::uuid, 'Lost');
SET client_min_messages = warning;

\echo '## east: forecast (one pass), by owner, by team, by quarter'
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT f.period_start, f.period_end, f.currency_code, f.open_deals, f.open_pipeline, f.best_case, f.commit, f.closed_won,
       f.weighted, f.expected, f.quota, f.attainment, f.p10, f.p50, f.p90, f.error_bound, f.stage_value_deals
  FROM crm.forecast('month', '2026-01-01', '2026-12-31', as_of => '2026-03-01 12:00+00') f ORDER BY 1;
SELECT f.period_start, u.name AS owner, f.open_deals, f.open_pipeline, f.weighted, f.expected, f.quota, f.p50
  FROM crm.forecast('month', '2026-03-01', '2026-04-30', as_of => '2026-03-01 12:00+00', by => 'owner') f
  LEFT JOIN east_users u ON u.id = f.owner_id ORDER BY 1, 2;
SELECT f.period_start, t.name AS team, f.open_deals, f.open_pipeline, f.weighted, f.quota, f.p10, f.p90
  FROM crm.forecast('quarter', '2026-01-01', '2026-12-31', as_of => '2026-03-01 12:00+00', by => 'team') f
  LEFT JOIN east_teams t ON t.id = f.team_id ORDER BY 1, 2;
SELECT f.period_start, f.open_deals, f.weighted, f.quota
  FROM crm.forecast('month', '2026-03-01', '2026-03-31', owner => :'eve', currency => 'EUR', as_of => '2026-03-01 12:00+00') f;
SELECT f.period_start, f.open_deals, f.weighted, f.quota
  FROM crm.forecast('quarter', '2026-01-01', '2026-06-30', team => :'eteam', as_of => '2026-03-01 12:00+00') f;
COMMIT;

\echo '## east: forecast_deals and what-if changes'
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT o.name, d.status, d.category, d.amount, d.amount_currency, d.converted, d.probability, d.close_date,
       d.in_period, d.used_stage_value
  FROM crm.forecast_deals('2026-03-01', '2026-04-30', as_of => '2026-03-01 12:00+00') d
  JOIN east_deals o ON o.id = d.opportunity_id ORDER BY o.name;
SELECT o.name, s.name AS stage, d.status, d.category, d.amount, d.converted, d.probability, d.close_date, d.in_period
  FROM crm.forecast_deals('2026-03-01', '2026-04-30', currency => 'EUR', as_of => '2026-03-01 12:00+00',
                          changes => jsonb_build_array(
                              jsonb_build_object('opportunity', :'e1', 'probability', 90, 'amount', 25000),
                              jsonb_build_object('opportunity', :'e3', 'stage', :'e_won'),
                              jsonb_build_object('opportunity', :'e4', 'expected_close_date', '2026-04-01'),
                              jsonb_build_object('stage', :'e_negotiation', 'probability', 40, 'forecast_category', 'best_case'))) d
  JOIN east_deals o ON o.id = d.opportunity_id
  JOIN east_stages s ON s.id = d.stage_id ORDER BY o.name;
SELECT o.name, d.converted, d.probability
  FROM crm.forecast_deals(team => :'eteam', as_of => '2026-03-01 12:00+00') d
  JOIN east_deals o ON o.id = d.opportunity_id ORDER BY o.name;
SELECT f.period_start, f.open_deals, f.best_case, f.commit, f.closed_won, f.weighted, f.expected, f.quota,
       f.attainment, f.p10, f.p50, f.p90, f.stage_value_deals
  FROM crm.forecast_what_if(jsonb_build_array(jsonb_build_object('opportunity', :'e1', 'stage', :'e_won'),
                                              jsonb_build_object('stage', :'e_qualified', 'probability', 60)),
                            'month', '2026-01-01', '2026-12-31', as_of => '2026-03-01 12:00+00') f ORDER BY 1;
SELECT f.period_start, u.name AS owner, f.open_deals, f.weighted, f.quota
  FROM crm.forecast_what_if(jsonb_build_array(jsonb_build_object('opportunity', :'e2', 'amount', 5000)),
                            'month', '2026-03-01', '2026-04-30', as_of => '2026-03-01 12:00+00', by => 'owner') f
  LEFT JOIN east_users u ON u.id = f.owner_id ORDER BY 1, 2;
SELECT f.period_start, t.name AS team, f.open_deals, f.weighted, f.quota
  FROM crm.forecast_what_if('[]', 'quarter', '2026-01-01', '2026-12-31', as_of => '2026-03-01 12:00+00', by => 'team') f
  LEFT JOIN east_teams t ON t.id = f.team_id ORDER BY 1, 2;
SELECT (crm.revenue_distribution(d.converted, d.probability)).*
  FROM crm.forecast_deals('2026-03-01', '2026-03-31', as_of => '2026-03-01 12:00+00') d WHERE d.status = 'open';
SELECT crm.convert_amount(100, 'EUR', 'USD', '2026-03-01') AS eur_100;
COMMIT;

\echo '## east: forecast errors (each rolled back)'
BEGIN;
SET LOCAL crm.tenant_id = :'te';
INSERT INTO crm.opportunity (name, amount, currency, expected_close_date) VALUES ('No rate', 100, 'JPY', '2026-03-05');
SELECT count(*) FROM crm.forecast('month', '2026-03-01', '2026-03-31', as_of => '2026-03-01 12:00+00');
ROLLBACK;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
INSERT INTO crm.opportunity (name, amount, currency, expected_close_date) VALUES ('No rate', 100, 'JPY', '2026-03-05');
SELECT count(*) FROM crm.forecast_what_if(jsonb_build_array(jsonb_build_object('opportunity', :'e1', 'probability', 5)),
                                          'month', '2026-03-01', '2026-03-31', as_of => '2026-03-01 12:00+00');
ROLLBACK;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT count(*) FROM crm.forecast_what_if(jsonb_build_array(jsonb_build_object('opportunity', :'e1', 'colour', 'red')));
ROLLBACK;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT count(*) FROM crm.forecast_what_if('[{"opportunity": "00000000-0000-7000-8000-000000000001", "probability": 5}]');
ROLLBACK;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT count(*) FROM crm.forecast_what_if(jsonb_build_array(jsonb_build_object('opportunity', :'e1', 'probability', 101)));
ROLLBACK;
BEGIN;
SET LOCAL crm.tenant_id = :'ts';
SELECT count(*) FROM crm.forecast_what_if(jsonb_build_array(jsonb_build_object('opportunity', :'e1', 'probability', 5)));
ROLLBACK;

\echo '## east: snapshots, their waterfall and accuracy'
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SET LOCAL crm.user_id = :'erin';
SELECT crm.snapshot_forecast('March at start', 'month', '2026-03-01', '2026-03-31', as_of => '2026-03-01 12:00+00') AS snap1 \gset
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SET LOCAL crm.user_id = :'erin';
UPDATE crm.opportunity SET amount = 24000 WHERE id = :'e1';
UPDATE crm.opportunity SET expected_close_date = '2026-04-10' WHERE id = :'e2';
UPDATE crm.opportunity SET expected_close_date = '2026-03-28' WHERE id = :'e3';
SELECT o.status FROM crm.opportunity_mark_lost(:'e5', 'Went quiet') o;
COMMIT;
-- (on Citus a snapshot is the first write of its transaction to the tenant:
-- it stores as the tables' owner, and Citus refuses another user's
-- statement on placements this transaction modified; see the README)
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SET LOCAL crm.user_id = :'erin';
SELECT crm.snapshot_forecast('March mid-month', 'month', '2026-03-01', '2026-03-31', as_of => '2026-03-15 12:00+00') AS snap2 \gset
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT r.name, r.period_type, r.from_date, r.to_date, r.currency, r.open_deals, r.open_pipeline, r.best_case, r.commit,
       r.closed_won, r.weighted, r.expected, r.confidence_interval, u.name AS taken_by
  FROM crm.revenue_forecast r LEFT JOIN crm.app_user u ON u.tenant_id = r.tenant_id AND u.id = r.user_id ORDER BY r.as_of;
SELECT r.name, o.name AS deal, d.status, d.category, d.amount, d.converted_amount, d.probability, d.in_period,
       d.used_stage_value, d.expected_value
  FROM crm.forecast_deal d JOIN crm.revenue_forecast r ON r.tenant_id = d.tenant_id AND r.id = d.forecast_id
  JOIN crm.opportunity o ON o.tenant_id = d.tenant_id AND o.id = d.opportunity_id ORDER BY r.as_of, o.name;
SELECT * FROM crm.forecast_changes(:'snap1', :'snap2');
SELECT u.name AS owner, a.weighted, a.commit, a.best_case, a.actual, a.error, a.abs_pct_error, a.bias_pct,
       a.commit_error, a.best_case_error, a.snapshots, a.mape
  FROM crm.forecast_accuracy(:'snap1', '2026-04-02 00:00+00') a
  LEFT JOIN east_users u ON u.id = a.owner_id ORDER BY 1;
SELECT e.event_type, e.payload ->> 'name' AS name, e.payload ->> 'expected' AS expected, e.payload ->> 'openDeals' AS open_deals
  FROM crm.event e WHERE e.event_type = 'ForecastCreated' ORDER BY e.payload ->> 'name';
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT * FROM crm.forecast_accuracy(:'snap1', '2026-03-20 00:00+00');
ROLLBACK;
BEGIN;
SET LOCAL crm.tenant_id = :'ts';
SELECT * FROM crm.forecast_changes(:'snap1', :'snap2');
ROLLBACK;

\c - crm_citus_boss
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';
\echo '## east mapped: the boss forecasts and asks what if'
SELECT u.name AS me, crm.is_admin() AS admin FROM crm.app_user u WHERE u.id = crm.current_user_id();
SELECT f.period_start, f.open_deals, f.weighted, f.expected, f.quota, f.p50
  FROM crm.forecast('month', '2026-03-01', '2026-05-31', as_of => '2026-03-20 12:00+00') f ORDER BY 1;
SELECT f.period_start, f.open_deals, f.weighted, f.expected, f.quota, f.p50
  FROM crm.forecast_what_if(jsonb_build_array(jsonb_build_object('opportunity', :'e4', 'stage', :'e_negotiation')),
                            'month', '2026-03-01', '2026-05-31', as_of => '2026-03-20 12:00+00') f ORDER BY 1;
SELECT count(*) AS deals, sum(d.converted) AS converted
  FROM crm.forecast_deals(as_of => '2026-03-20 12:00+00', changes => jsonb_build_array(jsonb_build_object('opportunity', :'e2', 'probability', 5))) d;

\c - crm_citus_admin
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';

\echo '## east deletes: records that other records and activities point at'
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SET LOCAL crm.user_id = :'erin';
INSERT INTO crm.account (name, owner_id) VALUES ('Parentco', :'eve') RETURNING id AS parentco \gset
INSERT INTO crm.account (name, parent_account_id, owner_id) VALUES ('Childco', :'parentco', :'eve') RETURNING id AS childco \gset
INSERT INTO crm.contact (first_name, last_name, email, account_id, owner_id)
VALUES ('Carl', 'Child', 'carl@childco.example', :'childco', :'eve') RETURNING id AS carl \gset
INSERT INTO crm.contact (first_name, last_name, email, owner_id)
VALUES ('Lone', 'Contact', 'lone@east.example', :'ed') RETURNING id AS lone \gset
INSERT INTO crm.opportunity (name, account_id, contact_id, amount, owner_id)
VALUES ('Childco deal', :'childco', :'carl', 1500, :'eve') RETURNING id AS childdeal \gset
INSERT INTO crm.lead (name, company_name, email, owner_id) VALUES ('Leo Lead', 'Leoco', 'leo@leoco.example', :'ed') RETURNING id AS leo \gset
INSERT INTO crm.activity (activity_type, subject, account_id, contact_id, opportunity_id, status, owner_id)
VALUES ('call', 'Childco call', :'childco', :'carl', :'childdeal', 'completed', :'eve'),
       ('email', 'Account-only email', :'childco', NULL, NULL, 'completed', :'eve'),
       ('meeting', 'Carl-only meeting', NULL, :'carl', NULL, 'scheduled', :'eve'),
       ('call', 'Lone call', NULL, :'lone', NULL, 'completed', :'ed'),
       ('call', 'Lead call', NULL, NULL, NULL, 'completed', :'ed');
UPDATE crm.activity SET lead_id = :'leo' WHERE subject = 'Lead call';
INSERT INTO crm.tag (name) VALUES ('Hot') RETURNING id AS hot \gset
INSERT INTO crm.account_tag (account_id, tag_id) VALUES (:'childco', :'hot');
INSERT INTO crm.contact_tag (contact_id, tag_id) VALUES (:'carl', :'hot');
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
DELETE FROM crm.contact WHERE id = :'lone';
DELETE FROM crm.lead WHERE id = :'leo';
DELETE FROM crm.account WHERE id = :'childco';
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
DELETE FROM crm.contact WHERE id = :'carl';
DELETE FROM crm.opportunity WHERE id = :'childdeal';
DELETE FROM crm.tag WHERE id = :'hot';
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT a.subject, a.account_id IS NOT NULL AS account, a.contact_id IS NOT NULL AS contact,
       a.opportunity_id IS NOT NULL AS opportunity, a.lead_id IS NOT NULL AS lead
  FROM crm.activity a WHERE a.subject IN ('Childco call', 'Account-only email', 'Carl-only meeting', 'Lone call', 'Lead call')
 ORDER BY 1;
SELECT (SELECT count(*) FROM crm.account WHERE name IN ('Parentco', 'Childco')) AS accounts,
       (SELECT count(*) FROM crm.contact WHERE last_name IN ('Child', 'Contact')) AS contacts,
       (SELECT count(*) FROM crm.opportunity WHERE name = 'Childco deal') AS deals,
       (SELECT count(*) FROM crm.lead WHERE name = 'Leo Lead') AS leads,
       (SELECT count(*) FROM crm.account_tag) + (SELECT count(*) FROM crm.contact_tag) AS tag_links;
COMMIT;

\echo '## east deletes: a user, a team, a stage, a pipeline'
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SET LOCAL crm.user_id = :'erin';
INSERT INTO crm.app_user (name, email, manager_id) VALUES ('Gus Gone', 'gus@east.example', :'erin') RETURNING id AS gus \gset
INSERT INTO crm.app_user (name, email, manager_id) VALUES ('Gina Under', 'gina@east.example', :'gus') RETURNING id AS gina \gset
INSERT INTO crm.team (name, manager_id) VALUES ('Gus Team', :'gus') RETURNING id AS gteam \gset
INSERT INTO crm.team_member (team_id, user_id) VALUES (:'gteam', :'gus'), (:'gteam', :'gina'), (:'eteam', :'gus');
INSERT INTO crm.quota (period_type, period_start, owner_id, amount) VALUES ('month', '2026-03-01', :'gus', 100);
INSERT INTO crm.quota (period_type, period_start, team_id, amount) VALUES ('month', '2026-03-01', :'gteam', 100);
INSERT INTO crm.account (name, owner_id) VALUES ('Gusco', :'gus') RETURNING id AS gusco \gset
INSERT INTO crm.contact (first_name, last_name, account_id, owner_id) VALUES ('Gary', 'Gusco', :'gusco', :'gus');
INSERT INTO crm.opportunity (name, account_id, amount, owner_id) VALUES ('Gusco deal', :'gusco', 800, :'gus');
INSERT INTO crm.lead (name, company_name, owner_id) VALUES ('Gus lead', 'Gusleads', :'gus');
INSERT INTO crm.activity (activity_type, subject, account_id, status, owner_id)
VALUES ('call', 'Gus call', :'gusco', 'completed', :'gus');
INSERT INTO crm.pipeline (name) VALUES ('Side pipeline') RETURNING id AS side \gset
INSERT INTO crm.stage (pipeline_id, name, sequence, probability) VALUES (:'side', 'Side open', 1, 20) RETURNING id AS side_open \gset
INSERT INTO crm.stage (pipeline_id, name, sequence, probability) VALUES (:'side', 'Side spare', 2, 40) RETURNING id AS side_spare \gset
INSERT INTO crm.stage (pipeline_id, name, sequence, probability, kind) VALUES (:'side', 'Side won', 3, 100, 'won');
INSERT INTO crm.stage (pipeline_id, name, sequence, probability, kind) VALUES (:'side', 'Side lost', 4, 0, 'lost');
INSERT INTO crm.opportunity (name, pipeline_id, stage_id, amount) VALUES ('Side deal', :'side', :'side_open', 50) RETURNING id AS sidedeal \gset
COMMIT;
-- a login role mapped as Gus keeps him: revoked first
\c - postgres
SELECT crm.grant_tenant_access('crm_citus_nobody', :'te', as_user => :'gus');
\c - crm_citus_admin
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';
BEGIN;
SET LOCAL crm.tenant_id = :'te';
DELETE FROM crm.app_user WHERE id = :'gus';
ROLLBACK;
\c - postgres
SELECT crm.revoke_tenant_access('crm_citus_nobody', :'te');
\c - crm_citus_admin
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';
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
SET LOCAL crm.tenant_id = :'te';
DELETE FROM crm.app_user WHERE id = :'gus';
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT u.name, m.name AS manager FROM crm.app_user u LEFT JOIN crm.app_user m ON m.tenant_id = u.tenant_id AND m.id = u.manager_id
 ORDER BY 1;
SELECT t.name, m.name AS manager, (SELECT count(*) FROM crm.team_member tm WHERE tm.tenant_id = t.tenant_id AND tm.team_id = t.id) AS members
  FROM crm.team t LEFT JOIN crm.app_user m ON m.tenant_id = t.tenant_id AND m.id = t.manager_id ORDER BY 1;
SELECT (SELECT count(*) FROM crm.quota) AS quotas,
       (SELECT count(*) FROM crm.account WHERE name = 'Gusco' AND owner_id IS NULL) AS unowned_accounts,
       (SELECT count(*) FROM crm.contact WHERE last_name = 'Gusco' AND owner_id IS NULL) AS unowned_contacts,
       (SELECT count(*) FROM crm.opportunity WHERE name = 'Gusco deal' AND owner_id IS NULL) AS unowned_deals,
       (SELECT count(*) FROM crm.lead WHERE name = 'Gus lead' AND owner_id IS NULL) AS unowned_leads,
       (SELECT count(*) FROM crm.activity WHERE subject = 'Gus call' AND owner_id IS NULL) AS unowned_activities;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
DELETE FROM crm.team WHERE id = :'gteam';
DELETE FROM crm.stage WHERE id = :'side_spare';
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT pg_temp.outcome(format('DELETE FROM crm.stage WHERE id = %L', :'side_open')) AS stage_with_a_deal;
SELECT pg_temp.outcome(format('DELETE FROM crm.pipeline WHERE id = %L', :'side')) AS pipeline_with_a_deal;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
DELETE FROM crm.opportunity WHERE id = :'sidedeal';
DELETE FROM crm.pipeline WHERE id = :'side';
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT (SELECT count(*) FROM crm.team) AS teams, (SELECT count(*) FROM crm.team_member) AS members,
       (SELECT count(*) FROM crm.pipeline) AS pipelines, (SELECT count(*) FROM crm.stage) AS stages,
       (SELECT count(*) FROM crm.stage_history h WHERE h.opportunity_id = :'sidedeal') AS side_history;
COMMIT;

\c - crm_citus_boss
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';
\echo '## east mapped deletes: the boss deletes a user, a team, an account'
BEGIN;
INSERT INTO crm.app_user (name, email, manager_id) VALUES ('Bea Brief', 'bea@east.example', crm.current_user_id()) RETURNING id AS bea \gset
INSERT INTO crm.team (name, manager_id) VALUES ('Bea Team', :'bea') RETURNING id AS beateam \gset
INSERT INTO crm.team_member (team_id, user_id) VALUES (:'beateam', :'bea');
INSERT INTO crm.account (name, owner_id) VALUES ('Beaco', :'bea') RETURNING id AS beaco \gset
INSERT INTO crm.contact (first_name, last_name, account_id, owner_id) VALUES ('Bert', 'Beaco', :'beaco', :'bea');
INSERT INTO crm.activity (activity_type, subject, account_id, status, owner_id) VALUES ('call', 'Beaco call', :'beaco', 'completed', :'bea');
COMMIT;
BEGIN;
DELETE FROM crm.app_user WHERE id = :'bea';
DELETE FROM crm.team WHERE id = :'beateam';
DELETE FROM crm.account WHERE id = :'beaco';
COMMIT;
SELECT (SELECT count(*) FROM crm.app_user WHERE name = 'Bea Brief') AS users, (SELECT count(*) FROM crm.team WHERE name = 'Bea Team') AS teams,
       (SELECT count(*) FROM crm.account WHERE name = 'Beaco') AS accounts,
       (SELECT count(*) FROM crm.contact WHERE last_name = 'Beaco' AND account_id IS NULL AND owner_id IS NULL) AS contacts_kept,
       (SELECT count(*) FROM crm.activity WHERE subject = 'Beaco call') AS activities;
-- the boss deletes nothing in another tenant, and not the user it is mapped as
BEGIN;
DELETE FROM crm.app_user WHERE id = :'sam';
SELECT u.name FROM crm.app_user u WHERE u.id = crm.current_user_id();
DELETE FROM crm.app_user WHERE id = crm.current_user_id();
ROLLBACK;

-- Pipeline analytics and the other functions a tenant application calls
-- (issue 9, wt-s4), as the application role -----------------------------------
\c - crm_citus_app
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';

\echo '## analytics (North): funnel, win rates, stays, cycle, velocity, sources, owners'
BEGIN;
SET LOCAL crm.tenant_id = :'tn';
SELECT f.pipeline_name, f.stage_name, f.stage_sequence, f.reached, f.moved_on, f.conversion_rate
  FROM crm.pipeline_funnel() f ORDER BY 1, 3;
SELECT * FROM crm.win_rate('owner');
SELECT * FROM crm.win_rate('team');
SELECT * FROM crm.win_rate('source');
SELECT count(*) AS months, sum(w.won) AS won FROM crm.win_rate('period') w;
SELECT count(*) AS stays, count(*) FILTER (WHERE x.is_current) AS current FROM crm.opportunity_stays() x;
SELECT t.stage_name, t.stage_sequence, t.stays, t.current_stays, t.avg_days IS NOT NULL AS timed
  FROM crm.time_in_stage() t ORDER BY 2, 1;
SELECT c.closed, c.won, c.avg_days IS NOT NULL AS timed FROM crm.sales_cycle() c;
SELECT v.open_deals, v.avg_won_amount, v.win_rate, v.currency, v.unpriced_count FROM crm.sales_velocity() v;
SELECT * FROM crm.lead_source_analytics();
SELECT d.owner_name, d.open_deals, d.open_amount, d.won_deals, d.won_amount, d.lost_deals, d.win_rate,
       d.activities_completed, d.rotting_deals, d.currency, d.unpriced_count
  FROM crm.owner_dashboard() d ORDER BY 1;
SELECT crm.analytics_amount(100, 'EUR', '2026-02-01', :'tn') AS eur_100, crm.exchange_rate('EUR', 'USD', '2025-06-01') AS rate_2025;
COMMIT;

\c - crm_citus_admin
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';
BEGIN;
SET LOCAL crm.tenant_id = :'te';
UPDATE crm.stage SET rotting_days = 10 WHERE id = :'e_proposal';
COMMIT;
\c - crm_citus_app
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';

\echo '## analytics (East): rotting deals, funnel after the deletes'
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT r.name, r.stage_name, r.rotting_days, r.last_activity_at IS NULL AS no_activity FROM crm.rotting_deals('2030-01-01') r;
SELECT d.owner_name, d.open_deals, d.open_amount, d.lost_deals, d.rotting_deals, d.currency, d.unpriced_count
  FROM crm.owner_dashboard(as_of => '2030-01-01') d ORDER BY 1;
SELECT f.stage_name, f.reached, f.moved_on FROM crm.pipeline_funnel() f WHERE f.pipeline_name = 'Sales Pipeline' ORDER BY f.stage_sequence;
COMMIT;

\echo '## east: operations, activity tracking, events, scoring as the application'
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SET LOCAL crm.user_id = :'erin';
SELECT o.status, o.probability, o.closed_at IS NULL AS open FROM crm.opportunity_reopen(:'e5', :'e_new') o;
INSERT INTO crm.contact (first_name, last_name, email, owner_id) VALUES ('Tia', 'Tracked', 'tia@east.example', :'eve') RETURNING id AS tia \gset
INSERT INTO crm.lead (name, company_name, email, expected_revenue, owner_id)
VALUES ('East lead', 'Eastco', 'lead@eastco.example', 3000, :'ed') RETURNING id AS elead \gset
SELECT s.id AS l_first FROM crm.stage s JOIN crm.lead l ON l.tenant_id = s.tenant_id AND l.pipeline_id = s.pipeline_id
 WHERE l.id = :'elead' ORDER BY s.sequence LIMIT 1 \gset
SELECT s.id AS l_second FROM crm.stage s JOIN crm.lead l ON l.tenant_id = s.tenant_id AND l.pipeline_id = s.pipeline_id
 WHERE l.id = :'elead' ORDER BY s.sequence OFFSET 1 LIMIT 1 \gset
SELECT l.status FROM crm.lead_move_stage(:'elead', :'l_second') l;
SELECT l.status, l.lost_reason FROM crm.lead_mark_lost(:'elead', 'Budget cut') l;
SELECT l.status, l.lost_reason IS NULL AS reason_cleared FROM crm.lead_reopen(:'elead', :'l_first') l;
SELECT crm.track_activity(:'tia', 'email_opened', '{"campaign": "spring"}', '2026-03-02 10:00+00', 'inbound', 'Opened the offer') IS NOT NULL AS tracked;
SELECT crm.track_activity(:'tia', 'page_viewed', '{}', '2026-03-03 10:00+00') IS NOT NULL AS tracked;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SET LOCAL crm.user_id = :'erin';
SELECT a.activity_type, a.module, a.subject, a.direction, a.status FROM crm.activity a
 WHERE a.contact_id = :'tia' ORDER BY a.occurred_at;
SELECT crm.engagement_half_life(:'te') AS half_life, crm.engagement_score(:'tia', '2026-04-01 00:00+00') AS engagement,
       crm.engagement_decayed(:'te', 'contact', :'tia', '2026-04-01 00:00+00') IS NOT NULL AS decayed,
       crm.lead_engagement_score(:'elead', '2026-04-01 00:00+00') AS lead_engagement;
SELECT crm.score_lead(:'elead') AS score, crm.predict_lead_win(:'elead') IS NOT NULL AS predicted,
       (SELECT count(*) FROM crm.explain_score(:'elead')) AS explained,
       crm.rescore_leads() IS NOT NULL AS rescored, crm.scoring_rescore(:'te', NULL, false) IS NOT NULL AS rescored_model;
SELECT t.name, t.score, t.qualification FROM crm.top_leads(3) t ORDER BY 2 DESC, 1;
SELECT crm.validate_scoring_model(crm.default_scoring_weights()) IS NULL AS default_model_valid,
       crm.scoring_points_problem('5', true, 10) IS NULL AS five_points_fine;
SELECT crm.pls_size_band(250) AS band, crm.pls_email_state('a@b.example') AS email, crm.pls_phone_state('+1 555 0100') AS phone,
       (SELECT count(*) FROM crm.pls_all_variables()) AS variables,
       (SELECT count(*) FROM crm.pls_variables(:'te')) AS tenant_variables,
       (SELECT count(*) FROM crm.pls_record_values(:'te', 'opportunity', ARRAY[:'e1', :'e2']::uuid[])) AS record_values,
       (SELECT count(*) FROM crm.pls_observations(:'te', 'opportunity', ARRAY[:'e1', :'e2']::uuid[])) AS observations;
COMMIT;
-- one call a transaction here (the blocks "shared:" at the end mix them
-- with the application's writes).  The outbox's order (poll, ack,
-- read_events) is compared in its own block.
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SET LOCAL crm.user_id = :'erin';
SELECT crm.subscribe('east-app') IS NOT NULL AS subscribed;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SET LOCAL crm.user_id = :'erin';
SELECT crm.emit_event('EastThing', '{"n": 1}') IS NOT NULL AS emitted;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SET LOCAL crm.user_id = :'erin';
SELECT crm.unsubscribe('east-app') AS unsubscribed;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SET LOCAL crm.user_id = :'erin';
SELECT crm.consume_event('OfferApproved', jsonb_build_object('opportunityId', :'e1', 'offerId', 'OF-1'), 'ext-of-1') IS NOT NULL AS consumed;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SET LOCAL crm.user_id = :'erin';
SELECT crm.consume_event('OfferApproved', jsonb_build_object('opportunityId', :'e1', 'offerId', 'OF-1'), 'ext-of-1') IS NOT NULL AS consumed_again;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT i.event_type, i.external_id FROM crm.inbound_event i ORDER BY 2;
SELECT crm.current_user_id() IS NULL AS no_user, crm.is_admin() AS admin, crm.sees_all_records() AS sees_all,
       crm.tenant_default_currency() AS currency, crm.casefold('ÉCOLE') AS folded, crm.is_blank(' ') AS blank,
       crm.validate_rule('{"field": "amount", "op": ">", "value": 5}') IS NULL AS rule_fine,
       crm.idempotency_key('a', 'b') = crm.idempotency_key('a', 'b') AS same_key,
       crm.uuid_v7_time(crm.uuid_generate_v7()) IS NOT NULL AS v7;
COMMIT;

\c - crm_citus_admin
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';
\echo '## east: admin maintenance (time rules, purges)'
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT crm.run_time_rules('2026-06-01 00:00+00') IS NOT NULL AS time_rules;
SELECT crm.purge_events('100 years') AS purged;
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

-- The outbox on Citus (issue 9): every position of a tenant comes from the
-- node holding its shard (crm.emit_event's row gets it there from a row
-- trigger) and crm.event_head()/crm.read_events bound it on that node, so
-- trigger and emitted events come in commit order and none is skipped.
\c - postgres
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';
SELECT crm.create_tenant('Outbox Co') AS tob \gset
BEGIN;
SET LOCAL crm.tenant_id = :'tob';
INSERT INTO crm.app_user (tenant_id, name, email) VALUES (:'tob', 'Otto', 'otto@ob.example') RETURNING id AS otto \gset
COMMIT;
\c - crm_citus_app
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';
\echo '## outbox: subscribe, then trigger and emitted events in commit order'
BEGIN;
SET LOCAL crm.tenant_id = :'tob';
SELECT crm.subscribe('ob-app') IS NOT NULL AS subscribed;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'tob';
SET LOCAL crm.user_id = :'otto';
INSERT INTO crm.lead (name, company_name, email, owner_id) VALUES ('Ob lead', 'Obco', 'l@ob.example', :'otto') RETURNING id AS oblead \gset
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'tob';
SELECT crm.emit_event('ObFirst', '{"n": 1}') AS p1 \gset
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'tob';
SET LOCAL crm.user_id = :'otto';
INSERT INTO crm.opportunity (name, amount, owner_id) VALUES ('Ob deal', 100, :'otto');
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'tob';
SELECT crm.emit_event('ObSecond', '{"n": 2}', 'lead', :'oblead') AS p2 \gset
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'tob';
SELECT e.event_type, e.entity, e.payload ->> 'n' AS n, e.position = :p1 AS is_p1, e.position = :p2 AS is_p2,
       e.position < crm.event_head() AS below_head, e.position < crm.event_limit() AS below_limit
  FROM crm.poll('ob-app') e;
SELECT max(e.position) AS last FROM crm.poll('ob-app') e \gset
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'tob';
SELECT crm.ack('ob-app', :last) = :last AS acked;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'tob';
SELECT count(*) AS after_ack FROM crm.poll('ob-app');
SELECT e.event_type FROM crm.read_events(0) e;
SELECT count(*) AS after_last FROM crm.read_events(:last) e;
COMMIT;

-- Predictive scoring on Citus (issue 9): the functions read the record's
-- values and the tenant's variables into arrays before their own query,
-- which is routed to the tenant's shard; over many opportunities an
-- application reads them first (a materialized CTE) and calls per row.
\c - crm_citus_app
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';
\echo '## pls: predict_win, explain_win, pls_explain, pls_predict alone'
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT crm.predict_win(:'e1') AS predicted, crm.pls_predict(:'te', 'opportunity', :'e1') AS pls_predicted;
SELECT w.variable, w.value, w.won_count, w.lost_count, w.factor, w.used FROM crm.explain_win(:'e1') w;
SELECT x.variable, x.value, x.won_count, x.lost_count, x.won_total, x.lost_total, x.used, x.status
  FROM crm.pls_explain(:'te', 'opportunity', :'e1') x;
COMMIT;
\echo '## pls: over the opportunities (read first), pls_predict_many, pls_check'
BEGIN;
SET LOCAL crm.tenant_id = :'te';
WITH o AS MATERIALIZED (SELECT id, name FROM crm.opportunity)
SELECT o.name, crm.predict_win(o.id) AS predicted FROM o ORDER BY 1;
WITH o AS MATERIALIZED (SELECT id, name FROM crm.opportunity WHERE status = 'open' ORDER BY name LIMIT 2)
SELECT o.name, w.variable, w.value, w.factor, w.used FROM o, crm.explain_win(o.id) w ORDER BY 1, 2, 3;
WITH p AS MATERIALIZED (SELECT * FROM crm.pls_predict_many(:'te', 'opportunity', NULL)),
     o AS MATERIALIZED (SELECT id, name FROM crm.opportunity)
SELECT o.name, p.probability FROM p JOIN o ON o.id = p.record_id ORDER BY 1;
SELECT count(*) AS lead_predictions FROM crm.pls_predict_many(:'te', 'lead', NULL);
SELECT * FROM crm.pls_check();
COMMIT;
\c - crm_citus_admin
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';
\echo '## pls: rebuild (an admin), then check'
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT crm.pls_rebuild() AS frequency_rows;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT * FROM crm.pls_check();
SELECT crm.predict_win(:'e1') AS predicted;
COMMIT;

-- Engagement and lead scoring on Citus (issue 9): the recomputation runs one
-- query per tenant with every table filtered by it (the half-life read
-- first), check_aggregates reads the stored rows into arrays first.
\c - crm_citus_app
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';
\echo '## engagement: recomputed aggregates, check_aggregates, lead_score_trend'
BEGIN;
SET LOCAL crm.tenant_id = :'tob';
SET LOCAL crm.user_id = :'otto';
INSERT INTO crm.account (name, owner_id) VALUES ('Obacc', :'otto') RETURNING id AS obacc \gset
INSERT INTO crm.contact (first_name, last_name, email, account_id, owner_id)
VALUES ('Ola', 'Ob', 'ola@ob.example', :'obacc', :'otto') RETURNING id AS ola \gset
INSERT INTO crm.opportunity (name, account_id, amount, owner_id) VALUES ('Ob acc deal', :'obacc', 500, :'otto');
SELECT crm.track_activity(:'ola', 'email_opened', '{}', '2026-03-02 10:00+00', 'inbound', 'Opened') IS NOT NULL AS tracked;
SELECT crm.track_activity(:'ola', 'email_clicked', '{}', '2026-03-05 10:00+00', 'inbound', 'Clicked') IS NOT NULL AS tracked;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'tob';
SELECT r.kind, r.activity_count, r.counts_by_type, r.counts_by_module, r.first_activity_at, r.last_activity_at,
       r.last_inbound_at, round(r.score_value::numeric, 6) AS score, r.score_ref
  FROM crm.engagement_recomputed() r ORDER BY 1, 2;
SELECT r.contact_count, r.activity_count, r.last_activity_at, r.open_opportunity_count, r.open_amounts, r.won_amounts
  FROM crm.account_summary_recomputed() r ORDER BY 1, 2;
SELECT * FROM crm.check_aggregates();
SELECT t.old_score, t.new_score, t.reason FROM crm.lead_score_trend(:'oblead') t;
COMMIT;
\c - crm_citus_admin
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';
\echo '## engagement: refresh_aggregates (an admin), then check'
BEGIN;
SET LOCAL crm.tenant_id = :'tob';
SELECT crm.refresh_aggregates();
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'tob';
SELECT * FROM crm.check_aggregates();
SELECT e.activity_count, e.counts_by_type FROM crm.contact_engagement e;
SELECT s.contact_count, s.activity_count, s.open_amounts FROM crm.account_summary s;
COMMIT;

\c - crm_citus_app
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';
\echo '## pls: predictions from won and lost history (Outbox Co)'
BEGIN;
SET LOCAL crm.tenant_id = :'tob';
SET LOCAL crm.user_id = :'otto';
INSERT INTO crm.opportunity (name, amount, source, country, owner_id) VALUES ('Ob w1', 10, 'website', 'DE', :'otto') RETURNING id AS obw1 \gset
INSERT INTO crm.opportunity (name, amount, source, country, owner_id) VALUES ('Ob w2', 10, 'website', 'FR', :'otto') RETURNING id AS obw2 \gset
INSERT INTO crm.opportunity (name, amount, source, country, owner_id) VALUES ('Ob l1', 10, 'referral', 'DE', :'otto') RETURNING id AS obl1 \gset
INSERT INTO crm.opportunity (name, amount, source, country, owner_id) VALUES ('Ob open web', 10, 'website', 'DE', :'otto');
INSERT INTO crm.opportunity (name, amount, source, country, owner_id) VALUES ('Ob open fair', 10, 'referral', 'FR', :'otto') RETURNING id AS obof \gset
SELECT o.status FROM crm.opportunity_mark_won(:'obw1') o;
SELECT o.status FROM crm.opportunity_mark_won(:'obw2') o;
SELECT o.status FROM crm.opportunity_mark_lost(:'obl1', 'Too small') o;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'tob';
WITH o AS MATERIALIZED (SELECT id, name FROM crm.opportunity)
SELECT o.name, crm.predict_win(o.id) AS predicted FROM o ORDER BY 1;
SELECT w.variable, w.value, w.won_count, w.lost_count, w.factor, w.used FROM crm.explain_win(:'obof') w;
SELECT * FROM crm.pls_check();
COMMIT;

\c - crm_citus_admin
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';
\echo '## scoring: a model change rescores the leads; rescore_leads keeps them exact'
BEGIN;
SET LOCAL crm.tenant_id = :'te';
INSERT INTO crm.lead (name, email, company_size, industry, budget, purchase_timeline, is_decision_maker)
VALUES ('Fit lead', 'fit@lead.example', 250, 'technology', 120000, 'within_month', true),
       ('Half fit lead', 'half@lead.example', 20, 'retail', 6000, 'within_year', false);
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT l.name, l.score, l.fit_score, l.engagement_score, l.qualification FROM crm.lead l ORDER BY l.name;
UPDATE crm.scoring_model SET weights = pg_catalog.jsonb_set(weights, '{combine}', '{"fit": 50, "engagement": 50}'),
       threshold = 30 WHERE is_default;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
WITH l AS MATERIALIZED (SELECT name, id, score, fit_score, engagement_score, qualification FROM crm.lead)
SELECT l.name, l.score, l.fit_score, l.engagement_score, l.qualification,
       l.score IS NOT DISTINCT FROM crm.score_lead(l.id) AS exact FROM l ORDER BY l.name;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT crm.rescore_leads() AS rescored;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
WITH l AS MATERIALIZED (SELECT name, id, score, qualification FROM crm.lead)
SELECT l.name, l.score, l.qualification, l.score IS NOT DISTINCT FROM crm.score_lead(l.id) AS exact
  FROM l ORDER BY l.name;
SELECT h.old_score, h.new_score, h.reason FROM crm.lead_score_history h JOIN crm.lead l
    ON l.tenant_id = h.tenant_id AND l.id = h.lead_id ORDER BY l.name, h.changed_at, h.new_score;
COMMIT;

-- rescore_leads() computes on the coordinator and writes with one UPDATE,
-- whose row trigger runs on a worker: the leads must get the scores of now
-- (a meeting that has since taken place counts), not keep the old ones.
\echo '## scoring: rescore_leads writes the scores of now, not the stored ones'
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT l.id AS fitlead FROM crm.lead l WHERE l.name = 'Fit lead' \gset
SELECT l.id AS halflead FROM crm.lead l WHERE l.name = 'Half fit lead' \gset
INSERT INTO crm.activity (activity_type, subject, lead_id, status, occurred_at)
VALUES ('meeting', 'Meeting in two seconds', :'fitlead', 'completed', pg_catalog.now() + interval '2 seconds');
COMMIT;
SELECT pg_catalog.pg_sleep(2.5) IS NOT NULL AS waited;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT pg_catalog.max(l.scored_at) AS scored_before FROM crm.lead l \gset
WITH l AS MATERIALIZED (SELECT name, id, score, engagement_score FROM crm.lead)
SELECT l.name, l.score, l.engagement_score, l.score IS NOT DISTINCT FROM crm.score_lead(l.id) AS exact FROM l ORDER BY l.name;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT crm.rescore_leads() AS rescored;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
WITH l AS MATERIALIZED (SELECT name, id, score, engagement_score, qualification, scored_at FROM crm.lead)
SELECT l.name, l.score, l.engagement_score, l.qualification, l.scored_at > :'scored_before' AS scored_again,
       l.score IS NOT DISTINCT FROM crm.score_lead(l.id) AS exact FROM l ORDER BY l.name;
SELECT h.old_score, h.new_score, h.reason FROM crm.lead_score_history h
 WHERE h.lead_id = :'fitlead' ORDER BY h.changed_at, h.new_score;
COMMIT;

\echo '## scoring: a write to the derived columns gets the score of the server'
BEGIN;
SET LOCAL crm.tenant_id = :'te';
UPDATE crm.lead SET score = 99, fit_score = 99, engagement_score = 99, qualification = 'qualified'
 WHERE id = :'halflead';
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
WITH l AS MATERIALIZED (SELECT name, id, score, fit_score, engagement_score, qualification FROM crm.lead)
SELECT l.name, l.score, l.fit_score, l.engagement_score, l.qualification,
       l.score IS NOT DISTINCT FROM crm.score_lead(l.id) AS exact FROM l ORDER BY l.name;
COMMIT;

\echo '## scoring: one activity statement for many leads rescores each'
BEGIN;
SET LOCAL crm.tenant_id = :'te';
INSERT INTO crm.activity (activity_type, subject, lead_id, status)
VALUES ('call', 'Call fit', :'fitlead', 'completed'), ('email', 'Mail fit', :'fitlead', 'completed'),
       ('meeting', 'Meet half', :'halflead', 'completed'), ('call', 'Call half', :'halflead', 'completed'),
       ('email', 'Mail half', :'halflead', 'completed');
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
WITH l AS MATERIALIZED (SELECT name, id, score, fit_score, engagement_score, qualification FROM crm.lead)
SELECT l.name, l.score, l.fit_score, l.engagement_score, l.qualification,
       l.score IS NOT DISTINCT FROM crm.score_lead(l.id) AS exact FROM l ORDER BY l.name;
SELECT l.name, pg_catalog.count(*) AS activity_changes FROM crm.lead_score_history h JOIN crm.lead l
    ON l.tenant_id = h.tenant_id AND l.id = h.lead_id WHERE h.reason = 'activity' GROUP BY l.name ORDER BY 1;
COMMIT;

\echo '## scoring: rescore_leads(model) gives the leads that model'
BEGIN;
SET LOCAL crm.tenant_id = :'te';
INSERT INTO crm.scoring_model (name, weights, threshold)
VALUES ('Fit only', pg_catalog.jsonb_set(crm.default_scoring_weights(), '{combine}', '{"fit": 100, "engagement": 0}'), 60)
RETURNING id AS fitonly \gset
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT crm.rescore_leads(:'fitonly') AS rescored;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
WITH l AS MATERIALIZED (SELECT name, id, score, fit_score, engagement_score, qualification, scoring_model_id FROM crm.lead)
SELECT l.name, l.score, l.fit_score, l.engagement_score, l.qualification, l.scoring_model_id = :'fitonly' AS fit_only,
       l.score IS NOT DISTINCT FROM crm.score_lead(l.id) AS exact FROM l ORDER BY l.name;
SELECT DISTINCT ON (l.name) l.name, h.old_score, h.new_score, h.reason FROM crm.lead_score_history h JOIN crm.lead l
    ON l.tenant_id = h.tenant_id AND l.id = h.lead_id ORDER BY l.name, h.changed_at DESC;
COMMIT;

\echo '## scoring: a contact opting out of profiling, then back in, rescores the lead of its e-mail'
BEGIN;
SET LOCAL crm.tenant_id = :'te';
INSERT INTO crm.contact (first_name, last_name, email, profiling_opt_out)
VALUES ('Half', 'Fit', 'HALF@lead.example', true) RETURNING id AS halfcontact \gset
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT l.name, l.score, l.fit_score, l.qualification FROM crm.lead l ORDER BY l.name;
UPDATE crm.contact SET profiling_opt_out = false WHERE id = :'halfcontact';
SELECT l.name, l.score, l.fit_score, l.qualification FROM crm.lead l ORDER BY l.name;
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'te';
SELECT h.old_score, h.new_score, h.reason FROM crm.lead_score_history h
 WHERE h.lead_id = :'halflead' ORDER BY h.changed_at, h.new_score NULLS FIRST;
COMMIT;

\echo '## end'

-- The job queue (issue 12) on Citus: every call of a transaction on the --------
-- tenant's node (src/shard.c), the tenant fence kept.
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

-- crm.run_jobs(), and queue calls among the application's writes: the
-- blocks "shared:" at the end.

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

-- The owner-writing calls in the application's own transactions (issue 9,
-- src/shard.c): on Citus each is handed to its twin on the tenant's node,
-- so it may come before or after the application's writes in one
-- transaction, and crm.run_jobs() runs its actions (as the caller) between
-- its claim and its completion.  Notifications of such a call reach the
-- coordinator's listeners (one per channel and transaction, as on one node;
-- the triggers' own, written on a worker, do not: see the README).
\c - postgres
SET client_min_messages = warning;
SELECT crm.create_tenant('Shared Co') AS tsh \gset
BEGIN;
SET LOCAL crm.tenant_id = :'tsh';
INSERT INTO crm.app_user (tenant_id, name, email) VALUES (:'tsh', 'Sue Shared', 'sue@shared.example') RETURNING id AS sue \gset
COMMIT;
\c - crm_citus_app
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';
LISTEN crm_events;
LISTEN crm_jobs;

\echo '## shared: subscribe, write, emit and enqueue in one transaction; one notification per channel'
BEGIN;
SET LOCAL crm.tenant_id = :'tsh';
SET LOCAL crm.user_id = :'sue';
SELECT crm.subscribe('shared-app') IS NOT NULL AS subscribed;
INSERT INTO crm.contact (first_name, last_name, email, owner_id)
VALUES ('Cara', 'Shared', 'cara@shared.example', :'sue') RETURNING id AS cara \gset
SELECT crm.emit_event('SharedThing', jsonb_build_object('n', 1), 'contact', :'cara') IS NOT NULL AS emitted;
INSERT INTO crm.opportunity (name, amount, owner_id, contact_id)
VALUES ('Shared deal', 500, :'sue', :'cara') RETURNING id AS sdeal \gset
SELECT crm.enqueue_job('set_probability', '{"probability": 35}', source_entity => 'opportunity', source_id => :'sdeal') IS NOT NULL AS prob_job;
SELECT crm.enqueue_job('add_tag', '{"tag": "shared"}', source_entity => 'opportunity', source_id => :'sdeal') IS NOT NULL AS tag_job;
SELECT crm.enqueue_job('webhook', '{"n": 1}') IS NOT NULL AS hook_job;
UPDATE crm.opportunity SET description = 'written after the calls' WHERE id = :'sdeal';
COMMIT;
-- (on Citus the triggers' own notifications stay on the worker: the
-- listeners hear the calls'; so only this block listens)
UNLISTEN *;

\echo '## shared: poll, write, ack and unsubscribe in one transaction'
BEGIN;
SET LOCAL crm.tenant_id = :'tsh';
SET LOCAL crm.user_id = :'sue';
SELECT e.event_type, e.entity, e.payload ->> 'n' AS n FROM crm.poll('shared-app') e ORDER BY e.position;
SELECT max(e.position) AS slast FROM crm.poll('shared-app') e \gset
UPDATE crm.contact SET phone = '+1 555 0199' WHERE id = :'cara';
SELECT crm.ack('shared-app', :slast) = :slast AS acked;
SELECT count(*) AS after_ack FROM crm.poll('shared-app');
SELECT crm.unsubscribe('shared-app') AS unsubscribed;
COMMIT;

\echo '## shared: run_jobs claims, acts as the caller and completes in one transaction'
BEGIN;
SET LOCAL crm.tenant_id = :'tsh';
SET LOCAL crm.user_id = :'sue';
INSERT INTO crm.activity (activity_type, subject, contact_id, status, occurred_at)
VALUES ('note', 'Before the run', :'cara', 'completed', '2026-05-01 10:00+00');
SELECT crm.run_jobs() AS ran;
SELECT o.probability FROM crm.opportunity o WHERE o.id = :'sdeal';
SELECT t.name AS tag FROM crm.opportunity_tag ot JOIN crm.tag t ON t.tenant_id = ot.tenant_id AND t.id = ot.tag_id
 WHERE ot.tenant_id = :'tsh' AND ot.opportunity_id = :'sdeal' ORDER BY 1;
SELECT a.action, a.outcome FROM crm.job_archive a ORDER BY 1;
COMMIT;

\echo '## shared: a worker claims, writes, completes and fails in one transaction'
BEGIN;
SET LOCAL crm.tenant_id = :'tsh';
SELECT crm.enqueue_jobs('webhook', ARRAY['{"n": 2}', '{"n": 3}']::jsonb[]) IS NOT NULL AS batch;
SELECT array_agg(id ORDER BY (params->>'n')::int) AS hooks FROM crm.claim_jobs('webhook', 'shared-worker', 10) \gset
INSERT INTO crm.activity (activity_type, subject, contact_id, status, occurred_at)
VALUES ('email', 'Webhook sent', :'cara', 'completed', '2026-05-02 10:00+00');
SELECT crm.complete_jobs((:'hooks'::uuid[])[1:2], 'shared-worker', '{"sent": true}') AS completed;
SELECT crm.fail_job((:'hooks'::uuid[])[3], 'HTTP 503', 'shared-worker') > now() AS retried_later;
UPDATE crm.contact SET job_title = 'Buyer' WHERE id = :'cara';
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'tsh';
SELECT params->>'n' AS n, attempts, jsonb_array_length(errors) AS errors FROM crm.job ORDER BY 1;
SELECT action, params->>'n' AS n, outcome FROM crm.job_archive WHERE action = 'webhook' ORDER BY 2;
SELECT c.activity_count FROM crm.contact_engagement c WHERE c.contact_id = :'cara';
COMMIT;

\echo '## shared: an inbound event and a forecast snapshot after the application''s writes'
BEGIN;
SET LOCAL crm.tenant_id = :'tsh';
SET LOCAL crm.user_id = :'sue';
UPDATE crm.opportunity SET expected_close_date = '2026-06-15' WHERE id = :'sdeal';
SELECT crm.consume_event('OfferRejected', jsonb_build_object('opportunityId', :'sdeal', 'offerId', 'SH-1'), 'sh-of-1') IS NOT NULL AS consumed;
SELECT crm.snapshot_forecast('shared-june', 'month', '2026-06-01', '2026-06-30') IS NOT NULL AS snapshot;
INSERT INTO crm.activity (activity_type, subject, contact_id, status, occurred_at)
VALUES ('call', 'After the snapshot', :'cara', 'completed', '2026-05-03 10:00+00');
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'tsh';
SELECT i.event_type, i.external_id FROM crm.inbound_event i ORDER BY 2;
SELECT f.name, f.period_type, f.open_deals, f.open_pipeline, f.weighted, f.currency FROM crm.revenue_forecast f ORDER BY 1;
SELECT e.event_type FROM crm.read_events(0) e ORDER BY e.position;
COMMIT;

\echo '## shared: a twin runs for the session''s tenant only'
BEGIN;
SET LOCAL crm.tenant_id = :'tsh';
SELECT crm.emit_event_in_shard(:'tn', 'Forged', '{}', NULL, NULL);
ROLLBACK;
BEGIN;
SET LOCAL crm.tenant_id = :'tsh';
SELECT crm.shard_call_wanted() IS NOT NULL AS answered;
SELECT count(*) AS own_twin FROM crm.poll_in_shard(:'tsh', 'no-such-consumer', 10);
ROLLBACK;

\c - crm_citus_admin
SET client_min_messages = warning;
SET citus.propagate_set_commands = 'local';
\echo '## shared: an admin writes, configures the model, purges and rebuilds in one transaction'
BEGIN;
SET LOCAL crm.tenant_id = :'tsh';
INSERT INTO crm.activity_weight (activity_type, weight) VALUES ('call', 3);
SELECT crm.pls_configure(ARRAY['source', 'industry']) IS NOT NULL AS configured;
SELECT crm.purge_jobs('0 seconds') >= 0 AS purged_jobs, crm.purge_events('100 years') AS purged_events;
SELECT crm.pls_rebuild(:'tsh') IS NOT NULL AS rebuilt;
UPDATE crm.opportunity SET description = 'after maintenance' WHERE id = :'sdeal';
COMMIT;
BEGIN;
SET LOCAL crm.tenant_id = :'tsh';
SELECT count(*) AS archived_left FROM crm.job_archive;
SELECT crm.pls_variables(:'tsh') AS variables;
COMMIT;
\echo '## end of shared'
