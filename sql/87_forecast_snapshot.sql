-- Forecast snapshots: what is stored, the waterfall between two snapshots
-- (adding up to the cent), and accuracy once the period is over.

SET TimeZone = 'UTC';
SELECT crm.create_tenant('Snapshot Co') AS t \gset
SELECT crm.create_tenant('Other Co') AS other \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';
INSERT INTO crm.app_user (name) VALUES ('Olivia') RETURNING id AS olivia \gset
INSERT INTO crm.app_user (name) VALUES ('Sam') RETURNING id AS sam \gset
SET crm.user_id = :'olivia';
SELECT id AS sales FROM crm.pipeline WHERE is_default \gset
SELECT max(id::text) FILTER (WHERE name = 'New') AS s_new,
       max(id::text) FILTER (WHERE name = 'Qualified') AS s_qualified,
       max(id::text) FILTER (WHERE name = 'Proposal') AS s_proposal,
       max(id::text) FILTER (WHERE name = 'Negotiation') AS s_negotiation,
       max(id::text) FILTER (WHERE name = 'Won') AS s_won,
       max(id::text) FILTER (WHERE name = 'Lost') AS s_lost
  FROM crm.stage WHERE pipeline_id = :'sales' \gset
INSERT INTO crm.currency_rate (from_currency, to_currency, rate, valid_from) VALUES ('EUR', 'USD', 1.20, '2026-01-01');

INSERT INTO crm.opportunity (name, owner_id, stage_id, amount, currency, expected_close_date, forecast_category) VALUES
    ('D1',  :'olivia', :'s_negotiation', 1000, 'USD', '2026-03-20', NULL),
    ('D2',  :'olivia', :'s_proposal',    2000, 'EUR', '2026-03-25', NULL),
    ('D3',  :'sam',    :'s_qualified',   4000, 'USD', '2026-03-10', NULL),
    ('D4',  :'sam',    :'s_new',          500, 'USD', '2026-04-05', 'commit'),
    ('D6',  :'sam',    :'s_won',         1500, 'USD', '2026-03-05', NULL),
    ('D9',  :'olivia', :'s_negotiation',  700, 'USD', '2026-03-28', 'omitted'),
    ('D12', :'olivia', :'s_qualified',    400, 'USD', '2026-03-29', NULL);
SELECT max(id::text) FILTER (WHERE name = 'D1') AS d1, max(id::text) FILTER (WHERE name = 'D2') AS d2,
       max(id::text) FILTER (WHERE name = 'D3') AS d3
  FROM crm.opportunity \gset
RESET ROLE;
SET session_replication_role = replica;
UPDATE crm.opportunity SET closed_at = '2026-03-05 10:00+00' WHERE tenant_id = :'t' AND name = 'D6';
RESET session_replication_role;
SET ROLE regress_crm_app;

-- S1, mid-March: D1 1000 @75, D2 2000 EUR x 1.20 = 2400 @50, D3 4000 @25,
-- D12 400 @25 open; D6 1500 won; D9 omitted; D4 in April.
--   open_pipeline 1000 + 2400 + 4000 + 400 = 7800; commit 1500 + 1000;
--   best case 2500 + 2400; weighted 750 + 1200 + 1000 + 100 = 3050;
--   expected 4550.  Range: 1500 + the 16 outcomes of D1, D2, D3, D12:
--   cumulative .0703125 (0), .09375 (400), .3046875 (1000) -> P10 2500;
--   ... .46875 (2800), .6796875 (3400) -> P50 4900; ... .8984375 (6400),
--   .90625 (6800) -> P90 8300.  stddev sqrt(4627500 + 400^2 .25 .75).
SELECT crm.snapshot_forecast('March at mid-month', 'month', '2026-03-01', '2026-03-31',
                             as_of => '2026-03-15 12:00+00') AS s1 \gset
SELECT name, period_type, from_date, to_date, forecast_date, currency, open_deals, round(open_pipeline, 2) AS open_pipeline,
       round(best_case, 2) AS best_case, round(commit, 2) AS commit, round(closed_won, 2) AS closed_won,
       round(weighted, 2) AS weighted, round(expected, 2) AS expected, user_id = :'olivia' AS by_olivia
  FROM crm.revenue_forecast WHERE id = :'s1';
SELECT confidence_interval, round(sqrt(4657500::numeric), 2) AS stddev_by_hand
  FROM crm.revenue_forecast WHERE id = :'s1';
-- ForecastCreated is in the outbox, in the same transaction
SELECT event_type, entity, payload ->> 'name' AS name, payload ->> 'expected' AS expected,
       payload ->> 'openDeals' AS open_deals, payload ->> 'p50' AS p50, payload ->> 'currency' AS currency
  FROM crm.event WHERE entity_id = :'s1';
-- one row per deal, as it was
SELECT o.name, d.status, d.category, d.amount, d.currency, d.converted_amount, d.probability, d.close_date,
       d.in_period, d.expected_value
  FROM crm.forecast_deal d JOIN crm.opportunity o ON o.id = d.opportunity_id
 WHERE d.forecast_id = :'s1' ORDER BY o.name;

-- Ten days later:
--   D1 won on 2026-03-18:                        deals won   1000 - 750 = +250
--   D2 2000 -> 2500.01 EUR, Proposal -> Negotiation (50 -> 75%):
--      amount up (3000.012 - 2400) x .50 = 300.006,
--      probability 3000.012 x (.75 - .50) = 750.003
--   D3 lost:                                     deals lost  -1000
--   D4 expected on 2026-03-30 instead of April:  moved in    500 x .10 = +50
--   D11 new, 1000 at Proposal (50%):             new deals   +500
--   D9 omitted -> commit (75%):                  category    700 x .75 = +525
--   D12 expected in May:                         moved out   -100
--   end 1000 + 2250.009 + 50 + 500 + 525 + 1500 = 5825.009
UPDATE crm.opportunity SET stage_id = :'s_won' WHERE id = :'d1';
UPDATE crm.opportunity SET amount = 2500.01, stage_id = :'s_negotiation' WHERE id = :'d2';
UPDATE crm.opportunity SET stage_id = :'s_lost', lost_reason = 'budget' WHERE id = :'d3';
UPDATE crm.opportunity SET expected_close_date = '2026-03-30' WHERE name = 'D4';
UPDATE crm.opportunity SET forecast_category = 'commit' WHERE name = 'D9';
UPDATE crm.opportunity SET expected_close_date = '2026-05-10' WHERE name = 'D12';
INSERT INTO crm.opportunity (name, owner_id, stage_id, amount, currency, expected_close_date)
VALUES ('D11', :'sam', :'s_proposal', 1000, 'USD', '2026-03-31');
SELECT name, status, probability FROM crm.opportunity WHERE name IN ('D1', 'D2', 'D3') ORDER BY name;
RESET ROLE;
SET session_replication_role = replica;
UPDATE crm.opportunity SET closed_at = '2026-03-18 10:00+00' WHERE tenant_id = :'t' AND name = 'D1';
UPDATE crm.opportunity SET closed_at = '2026-03-20 10:00+00' WHERE tenant_id = :'t' AND name = 'D3';
RESET session_replication_role;
SET ROLE regress_crm_app;

SELECT crm.snapshot_forecast('March, ten days on', 'month', '2026-03-01', '2026-03-31',
                             as_of => '2026-03-25 12:00+00') AS s2 \gset
-- open D2 3000.012, D4 500, D11 1000, D9 700; won D1 1000 + D6 1500:
-- open_pipeline 5200.012, commit 2500 + 3000.012 + 500 + 700, best case
-- + 1000, weighted 2250.009 + 50 + 500 + 525 = 3325.009
SELECT open_deals, round(open_pipeline, 2) AS open_pipeline, round(commit, 2) AS commit,
       round(best_case, 2) AS best_case, round(closed_won, 2) AS closed_won, round(weighted, 2) AS weighted,
       round(expected, 2) AS expected
  FROM crm.revenue_forecast WHERE id = :'s2';

-- The waterfall: each step rounded so that the whole adds up to the cent
-- (300.006 shows as 300.01, and 750.003 + 525 as 1275.00).
SELECT * FROM crm.forecast_changes(:'s1', :'s2');
SELECT sum(amount) FILTER (WHERE step NOT IN ('start', 'end'))
       = sum(amount) FILTER (WHERE step = 'end') - sum(amount) FILTER (WHERE step = 'start') AS adds_up
  FROM crm.forecast_changes(:'s1', :'s2');
-- backwards, every step changes sign and the start is the old end
SELECT * FROM crm.forecast_changes(:'s2', :'s1');

-- Accuracy, once March is over (D1 1000 won for Olivia, D6 1500 for Sam):
--   Olivia forecast 1000 + 2250.009 + 525 = 3775.009, error 2775.009,
--     APE 277.5009%; in S1 she forecast 750 + 1200 + 100 = 2050 (APE 105%):
--     MAPE (105 + 277.5009) / 2 = 191.25; commit 1000 + 3000.012 + 700.
--   Sam forecast 1500 + 50 + 500 = 2050, error 550, APE 36.67%; in S1
--     1000 + 1500 = 2500 (66.67%): MAPE 51.67; commit 1500 + 500, best
--     case + 1000.
SELECT u.name, a.weighted, a.commit, a.best_case, a.actual, a.error, a.abs_pct_error, a.bias_pct,
       a.commit_error, a.best_case_error, a.snapshots, a.mape
  FROM crm.forecast_accuracy(:'s2', '2026-04-02 00:00+00') a JOIN crm.app_user u ON u.id = a.owner_id
 ORDER BY u.name;

-- Bad input: nothing is stored
SELECT count(*) AS snapshots_before, (SELECT count(*) FROM crm.event WHERE event_type = 'ForecastCreated') AS events
  FROM crm.revenue_forecast;
SELECT try($$SELECT crm.snapshot_forecast('x', 'fortnight', '2026-03-01', '2026-03-31')$$);
SELECT try($$SELECT crm.snapshot_forecast('x', 'month', '2026-04-01', '2026-03-31')$$);
SELECT try($$SELECT crm.snapshot_forecast(NULL, 'month', '2026-03-01', '2026-03-31')$$);
SELECT try($$SELECT crm.snapshot_forecast('x', 'month', NULL, '2026-03-31')$$);
SELECT count(*) AS snapshots_after, (SELECT count(*) FROM crm.event WHERE event_type = 'ForecastCreated') AS events
  FROM crm.revenue_forecast;
SELECT try(format($$SELECT * FROM crm.forecast_accuracy('%s', '2026-03-31 12:00+00')$$, :'s2'));
SELECT try(format($$SELECT * FROM crm.forecast_changes('%s', '00000000-0000-0000-0000-000000000000')$$, :'s1'));
SELECT try($$SELECT * FROM crm.forecast_accuracy('00000000-0000-0000-0000-000000000000')$$);
SELECT try(format($$SELECT * FROM crm.forecast_changes('%s', NULL)$$, :'s1'));
SELECT crm.snapshot_forecast('April', 'month', '2026-04-01', '2026-04-30', as_of => '2026-03-25 12:00+00') AS s3 \gset
SELECT try(format($$SELECT * FROM crm.forecast_changes('%s', '%s')$$, :'s1', :'s3'));
SELECT crm.snapshot_forecast('March by Sam', 'month', '2026-03-01', '2026-03-31', owner => :'sam',
                             as_of => '2026-03-25 12:00+00') AS s4 \gset
SELECT try(format($$SELECT * FROM crm.forecast_changes('%s', '%s')$$, :'s1', :'s4'));
-- another tenant sees neither the snapshots nor their deals
SET crm.tenant_id = :'other';
SELECT try(format($$SELECT * FROM crm.forecast_changes('%s', '%s')$$, :'s1', :'s2'));
SELECT count(*) AS visible_snapshots, (SELECT count(*) FROM crm.forecast_deal) AS visible_deals FROM crm.revenue_forecast;
RESET ROLE;
