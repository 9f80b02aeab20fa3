-- Forged server data (issue 8 item 4, attacker's review): tables the server
-- writes (forecast snapshots, the inbound-event ledger, event consumers) are
-- written by the CRM's functions as the tables' owner; a writer may only
-- read them.  Each attack below is refused, and nothing stored changes.

SET TimeZone = 'UTC';
SELECT crm.create_tenant('Forge A') AS ta \gset
SELECT crm.create_tenant('Forge B') AS tb \gset
SET crm.tenant_id = :'ta';
INSERT INTO crm.app_user (name) VALUES ('Wes A') RETURNING id AS wes \gset
INSERT INTO crm.app_user (name) VALUES ('Val A') RETURNING id AS val \gset
INSERT INTO crm.app_user (name) VALUES ('Ann A') RETURNING id AS ann \gset
INSERT INTO crm.opportunity (name, amount, owner_id, expected_close_date)
VALUES ('Real deal', 1000, :'wes', '2026-03-20') RETURNING id AS deal \gset
SET crm.tenant_id = :'tb';
INSERT INTO crm.app_user (name) VALUES ('Bob B') RETURNING id AS bob \gset
RESET crm.tenant_id;

SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_forge_writer, regress_forge_writer2, regress_forge_admin;
RESET client_min_messages;
CREATE ROLE regress_forge_writer LOGIN IN ROLE crm_writer;
CREATE ROLE regress_forge_writer2 LOGIN IN ROLE crm_writer;
CREATE ROLE regress_forge_admin LOGIN IN ROLE crm_admin;
SELECT crm.grant_tenant_access('regress_forge_writer', :'ta', :'wes');
SELECT crm.grant_tenant_access('regress_forge_writer2', :'ta', :'val');
SELECT crm.grant_tenant_access('regress_forge_admin', :'ta', :'ann');

-- 1. Forecast snapshots -------------------------------------------------------
-- A writer held INSERT/UPDATE/DELETE on crm.revenue_forecast and
-- crm.forecast_deal: a snapshot with open_pipeline 1e300, another tenant's
-- user and to_date 'infinity' was stored and crm.forecast_accuracy reported
-- on it.  Now only crm.snapshot_forecast writes them.
SET ROLE regress_forge_writer;
SELECT crm.snapshot_forecast('March', 'month', '2026-03-01', '2026-03-31', as_of => '2026-03-15 12:00+00') AS snap \gset
SELECT name, user_id = :'wes' AS taken_by_wes, open_deals, open_pipeline, to_date FROM crm.revenue_forecast;
SELECT count(*) AS snapshot_deals FROM crm.forecast_deal;
SELECT regexp_replace(s, '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g') AS statement,
       try(s) AS result FROM unnest(ARRAY[
    format($$INSERT INTO crm.revenue_forecast (name, user_id, forecast_date, as_of, period_type, from_date, to_date,
             currency, open_deals, open_pipeline, best_case, commit, closed_won, weighted, expected, confidence_interval)
             VALUES ('Forged', %L, '2026-03-01', '2026-03-01', 'month', '2026-03-01', 'infinity', 'USD',
                     1, 1e300, 1e300, 1e300, 1e300, 1e300, 1e300, '{}')$$, :'bob'),
    $$UPDATE crm.revenue_forecast SET open_pipeline = 1e300, expected = 1e300$$,
    $$UPDATE crm.revenue_forecast SET to_date = 'infinity'$$,
    $$DELETE FROM crm.revenue_forecast$$,
    format($$INSERT INTO crm.forecast_deal (forecast_id, opportunity_id, stage_id, status, category, amount, currency,
             probability, in_period, used_stage_value, expected_value)
             VALUES (%L, %L, %L, 'won', 'closed', 1e300, 'USD', 100, true, false, 1e300)$$, :'snap', :'deal', :'deal'),
    $$UPDATE crm.forecast_deal SET amount = 1e300, converted_amount = 1e300, expected_value = 1e300$$,
    $$DELETE FROM crm.forecast_deal$$,
    -- the internal writer is nobody's to call
    format($$SELECT crm.forecast_snapshot_store(%L, %L, 'USD', 'Forged', 'month', '2026-03-01', 'infinity',
             NULL, NULL, now(), '[]')$$, :'ta', :'bob')]) s;
-- nothing changed
SELECT name, user_id = :'wes' AS taken_by_wes, open_deals, open_pipeline, to_date FROM crm.revenue_forecast;
SELECT count(*) AS snapshot_deals FROM crm.forecast_deal;
-- and the snapshot still measures up against what happened
SELECT count(*) > 0 AS accuracy_rows FROM crm.forecast_accuracy(:'snap', '2026-04-02 00:00+00');
RESET ROLE;
-- even the owner's internal writer refuses a tenant the session does not act for
SET crm.tenant_id = :'ta';
SELECT try(format($$SELECT crm.forecast_snapshot_store(%L, NULL, 'USD', 'Forged', 'month', '2026-03-01',
                  '2026-03-31', NULL, NULL, now(), '[]')$$, :'tb'));
RESET crm.tenant_id;
SELECT count(*) AS snapshots_of_b FROM crm.revenue_forecast WHERE tenant_id = :'tb';

-- 2. The inbound-event ledger -------------------------------------------------
-- A writer pre-claimed an external id (INSERT ('order-7', 'Bogus', -1)) so
-- that the real event was ignored, or emitted an inbound event type itself
-- with crm.emit_event, running the rules of an order nobody placed.
SET ROLE regress_forge_writer;
SELECT max(position) AS last_event FROM crm.event \gset
SELECT regexp_replace(s, '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g') AS statement,
       try(s) AS result FROM unnest(ARRAY[
    $$INSERT INTO crm.inbound_event (external_id, event_type, position) VALUES ('order-7', 'Bogus', -1)$$,
    $$UPDATE crm.inbound_event SET external_id = 'order-7'$$,
    $$DELETE FROM crm.inbound_event$$,
    format($$SELECT crm.emit_event('OrderCreated', '{"opportunityId": "%s", "orderId": "O-7"}')$$, :'deal'),
    $$SELECT crm.emit_event('OfferApproved', '{}')$$,
    $$SELECT crm.emit_event('OfferRejected', '{}', 'opportunity', '00000000-0000-7000-8000-000000000000')$$]) s;
SELECT count(*) AS ledger_rows FROM crm.inbound_event;
SELECT count(*) AS events_written FROM crm.event WHERE position > coalesce(:'last_event'::bigint, 0);
-- the real event is taken, once
SELECT crm.consume_event('OrderCreated', jsonb_build_object('opportunityId', :'deal', 'orderId', 'O-7'), 'order-7')
       > 0 AS taken;
SELECT crm.consume_event('OrderCreated', jsonb_build_object('opportunityId', :'deal', 'orderId', 'O-7'), 'order-7')
       IS NULL AS taken_again;
SELECT external_id, event_type, position > 0 AS positioned FROM crm.inbound_event;
SELECT event_type, entity, payload->>'orderId' AS order_id FROM crm.event
 WHERE position > coalesce(:'last_event'::bigint, 0) AND event_type = 'OrderCreated';
-- application events of other types still go through
SELECT crm.emit_event('InvoiceSent', '{"invoiceId": "I-1"}') > 0 AS plain_event;
RESET ROLE;

-- 3. Event consumers ----------------------------------------------------------
-- A writer moved another consumer's position (it then skipped events) or
-- deleted it (crm.purge_events then dropped events it never acknowledged).
-- A consumer now belongs to the role that subscribed it: only that role or
-- an admin of the tenant polls, acknowledges or drops it.
SET ROLE regress_forge_writer;
SELECT crm.subscribe('billing', 0) = 0 AS subscribed_at_zero;
RESET ROLE;
SET ROLE regress_forge_writer2;
SELECT regexp_replace(s, '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g') AS statement,
       try(s) AS result FROM unnest(ARRAY[
    $$UPDATE crm.event_consumer SET position = 9000000000000000000 WHERE name = 'billing'$$,
    $$DELETE FROM crm.event_consumer WHERE name = 'billing'$$,
    $$INSERT INTO crm.event_consumer (name, position, role_oid) VALUES ('mine', 0, 0)$$,
    $$SELECT crm.ack('billing', crm.event_head() - 1)$$,
    $$SELECT count(*) FROM crm.poll('billing')$$,
    $$SELECT crm.unsubscribe('billing')$$,
    $$SELECT crm.subscribe('billing')$$]) s;
-- its own consumer works
SELECT crm.subscribe('audit') >= 0 AS own_consumer;
SELECT crm.ack('audit', crm.event_head() - 1) > 0 AS own_ack;
SELECT crm.unsubscribe('audit') AS own_unsubscribe;
RESET ROLE;
-- nothing changed
SELECT c.name, c.position, r.rolname AS subscribed_by FROM crm.event_consumer c
  JOIN pg_roles r ON r.oid = c.role_oid WHERE c.tenant_id = :'ta' ORDER BY 1;
-- the subscriber polls and acknowledges
SET ROLE regress_forge_writer;
SELECT count(*) > 0 AS events_to_poll FROM crm.poll('billing');
SELECT crm.ack('billing', (SELECT min(position) FROM crm.poll('billing'))) > 0 AS acked;
RESET ROLE;
-- an admin of the tenant may act for it
SET ROLE regress_forge_admin;
SELECT count(*) >= 0 AS admin_polls FROM crm.poll('billing');
SELECT crm.unsubscribe('billing') AS admin_unsubscribes;
RESET ROLE;
SELECT count(*) AS consumers_left FROM crm.event_consumer WHERE tenant_id = :'ta';

-- 4. Tenant arguments and out-of-range times ------------------------------------
-- The readers that take a tenant answered for any tenant id (the defaults,
-- or another tenant's settings and rates); now 42501 for one that is not
-- the caller's.  The queue turned a lease of a million years into 22008 in
-- its own statement, and took a job to run at infinity (never run).
SET crm.tenant_id = :'tb';
INSERT INTO crm.currency_rate (from_currency, to_currency, rate, valid_from) VALUES ('EUR', 'USD', 1.5, '2026-01-01');
RESET crm.tenant_id;
SET ROLE regress_forge_writer;
SELECT regexp_replace(s, '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g') AS statement,
       try(s) AS result FROM unnest(ARRAY[
    format($$SELECT crm.engagement_half_life(%L)$$, :'tb'),
    format($$SELECT crm.exchange_rate('EUR', 'USD', '2026-02-01', %L)$$, :'tb'),
    format($$SELECT crm.analytics_amount(100, 'EUR', '2026-02-01', %L)$$, :'tb'),
    format($$SELECT crm.convert_amount(100, 'EUR', 'USD', '2026-02-01', %L)$$, :'tb'),
    $$SELECT crm.engagement_half_life(NULL)$$,
    $$SELECT count(*) FROM crm.claim_jobs('crm', 'w1', 1, '1000000 years')$$,
    $$SELECT count(*) FROM crm.claim_jobs('crm', 'w1', 1, '178000000 years')$$,
    $$SELECT crm.extend_lease('00000000-0000-7000-8000-000000000000', '1000000 years', 'w1')$$,
    $$SELECT crm.enqueue_job('create_task', '{}', run_at => 'infinity')$$,
    $$SELECT crm.enqueue_job('create_task', '{}', run_at => '-infinity')$$]) s;
-- its own tenant, and the defaults, still answer
SELECT crm.engagement_half_life(:'ta') AS own_half_life, crm.exchange_rate('USD', 'USD') AS own_rate,
       crm.analytics_amount(100, 'USD', '2026-02-01', :'ta') AS own_amount;
SELECT count(*) AS jobs_claimed FROM crm.claim_jobs('crm', 'w1', 1, '1 hour');
RESET ROLE;
SET ROLE regress_forge_admin;
SELECT try($$SELECT crm.purge_jobs('178000000 years')$$) AS purge_far_back;
SELECT crm.purge_jobs('1000 years') AS purged;
RESET ROLE;
-- the operator may ask about any tenant
SELECT crm.exchange_rate('EUR', 'USD', '2026-02-01', :'tb') AS operator_rate_b;
SELECT count(*) AS jobs_of_a FROM crm.job WHERE tenant_id = :'ta';

DELETE FROM crm.tenant_access WHERE login_role LIKE 'regress\_forge\_%';
DROP ROLE regress_forge_writer, regress_forge_writer2, regress_forge_admin;
