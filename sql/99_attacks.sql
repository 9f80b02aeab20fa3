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

-- Clean up ----------------------------------------------------------------------
DELETE FROM crm.tenant_access WHERE login_role LIKE 'regress\_atk\_%';
DROP ROLE regress_atk_admin, regress_atk_writer, regress_atk_other;
