-- An attacker's review of the merged CRM (issues 6 and 8, second wave):
-- each hole found, as the attack that showed it, with the error it now
-- gets and a check that nothing stored changed.

SELECT crm.create_tenant('Attack A') AS ta \gset
SELECT crm.create_tenant('Attack B') AS tb \gset
SET crm.tenant_id = :'ta';
INSERT INTO crm.app_user (name) VALUES ('Ada A') RETURNING id AS ada \gset
INSERT INTO crm.opportunity (name, amount) VALUES ('A deal', 100) RETURNING id AS a_deal \gset
SET crm.tenant_id = :'tb';
INSERT INTO crm.app_user (name) VALUES ('Bea B') RETURNING id AS bea \gset
RESET crm.tenant_id;

SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_atk_admin, regress_atk_writer, regress_atk_other;
RESET client_min_messages;
CREATE ROLE regress_atk_admin LOGIN IN ROLE crm_admin;
CREATE ROLE regress_atk_writer LOGIN IN ROLE crm_writer;
CREATE ROLE regress_atk_other LOGIN IN ROLE crm_reader;
SELECT crm.grant_tenant_access('regress_atk_admin', :'ta', :'ada');
SELECT crm.grant_tenant_access('regress_atk_writer', :'ta', :'ada');

-- 1. crm.workflow_match() on a table whose columns are NULL -------------------
-- crm.event's columns are NOT NULL, so the matcher read them without looking:
-- attached (by a superuser) to a table with the right columns, a row of
-- NULLs crashed the server (signal 11).  Now: 22004 naming the column.
CREATE SCHEMA atk;
CREATE TABLE atk.ev (tenant_id uuid, id uuid, event_type text, entity text, entity_id uuid, payload jsonb);
CREATE TRIGGER m AFTER INSERT ON atk.ev REFERENCING NEW TABLE AS n
    FOR EACH STATEMENT EXECUTE FUNCTION crm.workflow_match();
SELECT try('INSERT INTO atk.ev DEFAULT VALUES');
SELECT try(format('INSERT INTO atk.ev (tenant_id) VALUES (%L)', :'ta'));
SELECT try(format('INSERT INTO atk.ev (tenant_id, id) VALUES (%L, %L)', :'ta', :'ta'));
SELECT try(format('INSERT INTO atk.ev (tenant_id, id, event_type) VALUES (%L, %L, %L)', :'ta', :'ta', 'LeadCreated'));
DROP TRIGGER m ON atk.ev;
-- and with an argument it does not read
CREATE TRIGGER m AFTER INSERT ON atk.ev REFERENCING NEW TABLE AS n
    FOR EACH STATEMENT EXECUTE FUNCTION crm.workflow_match('LeadCreated');
SELECT try('INSERT INTO atk.ev DEFAULT VALUES');
DROP SCHEMA atk CASCADE;

-- 2. A tenant's admin maps a role into another tenant ------------------------
-- The plain INSERT was 42501 and the function P0002 ("tenant does not
-- exist"): one mistake, one SQLSTATE.  Both paths are 42501 now, whether
-- or not the other tenant exists; nothing is stored.
SET ROLE regress_atk_admin;
SELECT try(format('SELECT crm.grant_tenant_access(%L, %L)', 'regress_atk_other', :'tb'));
SELECT try(format('INSERT INTO crm.tenant_access (tenant_id, login_role) VALUES (%L, %L)', :'tb', 'regress_atk_other'));
SELECT try(format('SELECT crm.grant_tenant_access(%L, %L)', 'regress_atk_other', '00000000-0000-7000-8000-000000000000'));
-- its own tenant still works
SELECT try(format('SELECT crm.grant_tenant_access(%L, %L)', 'regress_atk_other', :'ta'));
RESET ROLE;
-- the operator still learns that an id names no tenant
SELECT try(format('SELECT crm.grant_tenant_access(%L, %L)', 'regress_atk_other', '00000000-0000-7000-8000-000000000000'));
SELECT t.name AS tenant, a.login_role FROM crm.tenant_access a JOIN crm.tenant t USING (tenant_id)
 WHERE a.login_role = 'regress_atk_other' ORDER BY 1;

-- 3. A writer replays an inbound event ------------------------------------------
-- crm.consume_event() takes an external event once per external_id.  A
-- writer could DELETE (or rename) the ledger row in crm.inbound_event and
-- have the same order consumed again, running its rules (mark_won, a
-- follow-up task) twice.  The ledger is append-only for writers now.
SET ROLE regress_atk_writer;
SELECT crm.consume_event('OrderCreated', jsonb_build_object('opportunityId', :'a_deal', 'orderId', 'O-1'), 'order-1')
       IS NOT NULL AS taken;
SELECT count(*) AS follow_up_jobs FROM crm.job WHERE action = 'create_task' AND source_id = :'a_deal';
SELECT try('DELETE FROM crm.inbound_event');
SELECT try($$UPDATE crm.inbound_event SET external_id = 'order-1-again'$$);
SELECT try($$SELECT 1 FROM crm.inbound_event FOR UPDATE$$);
-- delivered again: taken once
SELECT crm.consume_event('OrderCreated', jsonb_build_object('opportunityId', :'a_deal', 'orderId', 'O-1'), 'order-1')
       IS NULL AS already_taken;
SELECT external_id, event_type FROM crm.inbound_event;
SELECT count(*) AS follow_up_jobs FROM crm.job WHERE action = 'create_task' AND source_id = :'a_deal';
RESET ROLE;

-- 4. A writer erases the job archive --------------------------------------------
-- crm.purge_jobs() deletes the tenant's finished jobs (what was sent, what
-- consent skipped): an admin's task, as crm.purge_events() is.
SET crm.tenant_id = :'ta';
SELECT crm.run_jobs(10) >= 1 AS ran;
RESET crm.tenant_id;
SELECT count(*) > 0 AS archived FROM crm.job_archive WHERE tenant_id = :'ta';
SET ROLE regress_atk_writer;
SELECT try($$SELECT crm.purge_jobs('0 seconds')$$);
RESET ROLE;
SELECT count(*) > 0 AS still_archived FROM crm.job_archive WHERE tenant_id = :'ta';
SET ROLE regress_atk_admin;
SELECT crm.purge_jobs('0 seconds') > 0 AS admin_purged;
RESET ROLE;

-- 5. A NULL where a value is required: 22004 on every path -----------------
-- subscribe(NULL), purge_events(NULL), claim_jobs(.., NULL, ..) were 22004,
-- while poll(NULL) said P0002 (a consumer named "<NULL>" does not exist),
-- purge_jobs(NULL) and run_jobs(NULL) 22023, and unsubscribe(NULL),
-- revoke_tenant_access(NULL, NULL) quietly returned false.
SET ROLE regress_atk_admin;
SELECT s AS statement, try(s) AS result FROM unnest(ARRAY[
    $$SELECT crm.subscribe(NULL)$$,
    $$SELECT * FROM crm.poll(NULL)$$,
    $$SELECT crm.ack(NULL, 0)$$,
    $$SELECT crm.ack('c', NULL)$$,
    $$SELECT crm.unsubscribe(NULL)$$,
    $$SELECT crm.purge_events(NULL)$$,
    $$SELECT crm.purge_jobs(NULL)$$,
    $$SELECT crm.run_jobs(NULL)$$,
    $$SELECT crm.grant_tenant_access(NULL, NULL)$$,
    $$SELECT crm.revoke_tenant_access(NULL, NULL)$$,
    $$SELECT crm.revoke_tenant_access('regress_atk_other', NULL)$$]) s;
-- the other mistakes keep their codes
SELECT s AS statement, try(s) AS result FROM unnest(ARRAY[
    $$SELECT * FROM crm.poll('no such consumer')$$,
    $$SELECT crm.purge_jobs('-1 day')$$,
    $$SELECT crm.run_jobs(0)$$]) s;
-- and nothing was revoked
SELECT count(*) AS other_still_mapped FROM crm.tenant_access WHERE login_role = 'regress_atk_other';
RESET ROLE;

-- 6. A rep names a hidden record to the queue or the outbox -----------------
-- In a private tenant a rep could crm.enqueue_job('mark_won', ...) for a
-- deal hidden from them, or crm.emit_event('OrderCreated', {"opportunityId":
-- hidden}) so that a rule enqueued it; the operator's scheduled
-- crm.run_jobs(), a superuser past row-level security, then marked the
-- hidden deal won.  A job or event may name only records the caller sees:
-- 42501 for a hidden one, 23503 for none, as for a plain write.
SET crm.tenant_id = :'ta';
INSERT INTO crm.app_user (name) VALUES ('Rex A') RETURNING id AS rex \gset
UPDATE crm.tenant SET visibility = 'private';
INSERT INTO crm.account (name, owner_id) VALUES ('Ada''s account', :'ada') RETURNING id AS h_acc \gset
INSERT INTO crm.contact (first_name, last_name, owner_id) VALUES ('Hidden', 'Person', :'ada') RETURNING id AS h_con \gset
INSERT INTO crm.opportunity (name, amount, owner_id) VALUES ('Ada''s deal', 900, :'ada') RETURNING id AS h_deal \gset
INSERT INTO crm.opportunity (name, amount, owner_id) VALUES ('Rex''s deal', 50, :'rex') RETURNING id AS r_deal \gset
RESET crm.tenant_id;
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_atk_rep;
RESET client_min_messages;
CREATE ROLE regress_atk_rep LOGIN IN ROLE crm_writer;
SELECT crm.grant_tenant_access('regress_atk_rep', :'ta', :'rex');
SELECT count(*) AS jobs_before FROM crm.job WHERE tenant_id = :'ta' \gset
SELECT max(position) AS last_event FROM crm.event WHERE tenant_id = :'ta' \gset
SET ROLE regress_atk_rep;
SELECT count(*) AS deals_rex_sees FROM crm.opportunity;
SELECT regexp_replace(s, '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g') AS statement,
       try(s) AS result FROM unnest(ARRAY[
    format($$SELECT crm.enqueue_job('mark_won', '{}', source_entity => 'opportunity', source_id => %L)$$, :'h_deal'),
    format($$SELECT crm.enqueue_job('mark_won', '{"payload": {"opportunityId": "%s"}}')$$, :'h_deal'),
    format($$SELECT crm.enqueue_job('create_task', '{"payload": {"relatedTo": {"accountId": "%s"}}}')$$, :'h_acc'),
    format($$SELECT crm.enqueue_job('create_task', '{}', %L)$$, :'h_con'),
    format($$SELECT crm.emit_event('OrderCreated', '{"opportunityId": "%s", "orderId": "O-9"}')$$, :'h_deal'),
    format($$SELECT crm.emit_event('DealPinged', '{}', 'opportunity', %L)$$, :'h_deal'),
    format($$SELECT crm.emit_event('DealPinged', '{"relatedTo": {"contactId": "%s"}}')$$, :'h_con'),
    $$SELECT crm.enqueue_job('mark_won', '{"payload": {"opportunityId": "00000000-0000-7000-8000-000000000000"}}')$$,
    $$SELECT crm.emit_event('DealPinged', '{}', 'lead', '00000000-0000-7000-8000-000000000000')$$]) s;
-- every other form the uuid type reads names the same deal: refused alike
-- (crm.run_jobs() reads the ids with ::uuid, the check must read them so)
SELECT f.form, try(format($$SELECT crm.enqueue_job('mark_won', '{"payload": {"opportunityId": "%s"}}')$$, f.id)) AS result
  FROM (VALUES ('no hyphens', replace(:'h_deal', '-', '')),
               ('braces', '{' || :'h_deal' || '}'),
               ('upper case', upper(:'h_deal')),
               ('hyphens every 4', regexp_replace(replace(:'h_deal', '-', ''), '(....)(?!$)', '\1-', 'g'))) AS f(form, id);
SELECT try(format($$SELECT crm.emit_event('DealPinged', '{"relatedTo": {"opportunityId": "%s"}}')$$,
                  replace(:'h_deal', '-', ''))) AS event_no_hyphens;
-- the outbox's own events are the server's: an app cannot emit one
SELECT try(format($$SELECT crm.emit_event('LeadQualified', '{"leadId": "%s", "score": 99}')$$, :'r_deal')) AS forged_qualified,
       try($$SELECT crm.emit_event('ActivityCreated', '{"type": "payment_received"}')$$) AS forged_activity,
       try(format($$SELECT crm.emit_event('DealPinged', '{}', NULL, %L)$$, :'r_deal')) AS id_without_entity;
-- what the rep sees, and what names no record, still go through
SELECT crm.enqueue_job('create_task', jsonb_build_object('payload', jsonb_build_object('opportunityId', :'r_deal')))
       IS NOT NULL AS own_deal_job;
SELECT crm.emit_event('DealPinged', jsonb_build_object('opportunityId', :'r_deal', 'note', 'not an id: x'),
                      'opportunity', :'r_deal') > 0 AS own_deal_event;
SELECT crm.emit_event('InvoiceSent', '{"amount": 800, "invoiceId": "I-1"}') > 0 AS plain_event;
RESET ROLE;
SELECT count(*) - :jobs_before AS new_jobs, count(*) FILTER (WHERE source_id = :'h_deal' OR params::text LIKE '%' || :'h_deal' || '%') AS naming_hidden
  FROM crm.job WHERE tenant_id = :'ta';
SELECT count(*) AS new_events, count(*) FILTER (WHERE entity_id = :'h_deal' OR payload::text LIKE '%' || :'h_deal' || '%') AS naming_hidden
  FROM crm.event WHERE tenant_id = :'ta' AND position > :last_event;
-- the operator's run leaves Ada's deal alone
SELECT crm.run_jobs(100) >= 0 AS ran;
SELECT name, status FROM crm.opportunity WHERE tenant_id = :'ta' AND id IN (:'h_deal', :'r_deal') ORDER BY name;
UPDATE crm.tenant SET visibility = 'public' WHERE tenant_id = :'ta';

-- Clean up ----------------------------------------------------------------------
DELETE FROM crm.tenant_access WHERE login_role LIKE 'regress\_atk\_%';
DROP ROLE regress_atk_admin, regress_atk_writer, regress_atk_other, regress_atk_rep;
