-- Forecasting: categories and their cumulative roll-ups, quotas and
-- attainment, currencies converted at the rate of the right day, the
-- stage's expected value for deals without an amount, per owner and team,
-- what-if analysis, and every error.  The numbers are worked out by hand in
-- the comments.

SET TimeZone = 'UTC';
SELECT crm.create_tenant('Forecast Co') AS t \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';
INSERT INTO crm.app_user (name) VALUES ('Olivia') RETURNING id AS olivia \gset
INSERT INTO crm.app_user (name) VALUES ('Sam') RETURNING id AS sam \gset
INSERT INTO crm.team (name) VALUES ('East') RETURNING id AS east \gset
INSERT INTO crm.team_member (team_id, user_id) VALUES (:'east', :'olivia');

SELECT id AS sales FROM crm.pipeline WHERE is_default \gset
SELECT max(id::text) FILTER (WHERE name = 'New') AS s_new,
       max(id::text) FILTER (WHERE name = 'Qualified') AS s_qualified,
       max(id::text) FILTER (WHERE name = 'Proposal') AS s_proposal,
       max(id::text) FILTER (WHERE name = 'Negotiation') AS s_negotiation,
       max(id::text) FILTER (WHERE name = 'Won') AS s_won,
       max(id::text) FILTER (WHERE name = 'Lost') AS s_lost
  FROM crm.stage WHERE pipeline_id = :'sales' \gset

-- 1 EUR = 1.10 USD from January, 1.20 USD from March
INSERT INTO crm.currency_rate (from_currency, to_currency, rate, valid_from)
VALUES ('EUR', 'USD', 1.10, '2026-01-01'), ('EUR', 'USD', 1.20, '2026-03-01');
-- deals without an amount in Proposal count at 600 USD
UPDATE crm.stage SET expected_value = 600, expected_value_currency = 'USD' WHERE id = :'s_proposal';

-- Stage categories: New, Qualified pipeline; Proposal best_case;
-- Negotiation commit; Won closed; Lost omitted.
INSERT INTO crm.opportunity (name, owner_id, stage_id, amount, currency, expected_close_date, forecast_category) VALUES
    ('D1', :'olivia', :'s_negotiation', 1000, 'USD', '2026-03-20', NULL),
    ('D2', :'olivia', :'s_proposal',    2000, 'EUR', '2026-03-25', NULL),
    ('D3', :'sam',    :'s_qualified',   4000, 'USD', '2026-03-10', NULL),
    ('D4', :'sam',    :'s_new',          500, 'USD', '2026-04-05', 'commit'),
    ('D5', :'olivia', :'s_won',         3000, 'EUR', '2026-02-20', NULL),
    ('D6', :'sam',    :'s_won',         1500, 'USD', '2026-03-05', NULL),
    ('D7', :'sam',    :'s_lost',         800, 'USD', '2026-03-02', NULL),
    ('D8', :'olivia', :'s_proposal',       0, 'USD', '2026-04-20', NULL),
    ('D9', :'olivia', :'s_negotiation',  700, 'USD', '2026-03-28', 'omitted');
SELECT max(id::text) FILTER (WHERE name = 'D1') AS d1, max(id::text) FILTER (WHERE name = 'D2') AS d2,
       max(id::text) FILTER (WHERE name = 'D3') AS d3, max(id::text) FILTER (WHERE name = 'D4') AS d4,
       max(id::text) FILTER (WHERE name = 'D9') AS d9
  FROM crm.opportunity \gset

-- Closing times are the server's; a restore-style session (triggers off)
-- puts the ones this story needs.
RESET ROLE;
SET session_replication_role = replica;
UPDATE crm.opportunity SET closed_at = '2026-02-15 10:00+00' WHERE tenant_id = :'t' AND name = 'D5';
UPDATE crm.opportunity SET closed_at = '2026-03-05 10:00+00' WHERE tenant_id = :'t' AND name = 'D6';
UPDATE crm.opportunity SET closed_at = '2026-03-02 10:00+00' WHERE tenant_id = :'t' AND name = 'D7';
RESET session_replication_role;
SET ROLE regress_crm_app;

INSERT INTO crm.quota (owner_id, team_id, period_type, period_start, amount) VALUES
    (NULL, NULL, 'month', '2026-03-01', 5000),
    (:'olivia', NULL, 'month', '2026-03-01', 2000),
    (NULL, :'east', 'month', '2026-03-01', 4000);

-- February: D5 won on 2026-02-15 at that day's rate 1.10: 3300.
-- March: open D1 1000 @75 commit, D2 2000 EUR x 1.20 (as_of) = 2400 @50
--   best case, D3 4000 @25 pipeline; D9 omitted; won D6 1500; D7 lost.
--   pipeline 1000 + 2400 + 4000 = 7400; commit 1500 + 1000 = 2500;
--   best case 2500 + 2400 = 4900; weighted 750 + 1200 + 1000 = 2950;
--   expected 4450; quota 5000, attainment 1500 / 5000 = 30%.
--   Range: 1500 + the 8 outcomes of D1, D2, D3 in order of total:
--   0 (.09375), 1000 (.28125, cum .375), 2400 (cum .46875), 3400 (cum .75),
--   4000 (.78125), 5000 (.875), 6400 (.90625), 7400 (1):
--   P10 1500 + 1000, P50 1500 + 3400, P90 1500 + 6400, exact.
-- April: D4 500 @10 (commit by override), D8 without amount at Proposal's
--   600 @50: pipeline 1100, commit 500, best case 1100, weighted 350;
--   outcomes 0 (.45), 500 (.05, cum .5), 600 (.45, cum .95): P50 500.
SELECT period_start, period_end, open_deals, open_pipeline, best_case, commit, closed_won, weighted, expected,
       quota, attainment, p10, p50, p90, error_bound, stage_value_deals
  FROM crm.forecast('month', '2026-02-01', '2026-04-30', as_of => '2026-03-15 12:00+00');

-- mean and standard deviation of March: 4450 and
-- sqrt(1000^2 .75 .25 + 2400^2 .5 .5 + 4000^2 .25 .75) = sqrt(4627500)
SELECT (r).mean, round((r).stddev, 6) AS stddev, round(sqrt(4627500::numeric), 6) AS by_hand
  FROM (SELECT crm.revenue_distribution(a, p) AS r
          FROM (VALUES (1500, 100), (1000, 75), (2400, 50), (4000, 25)) v(a, p)) s;

-- per owner in March: Olivia has D1 and D2 (D9 omitted), quota 2000;
-- Sam has D3 and won D6, no quota
SELECT u.name, f.open_deals, f.open_pipeline, f.best_case, f.commit, f.closed_won, f.weighted, f.expected,
       f.quota, f.attainment
  FROM crm.forecast('month', '2026-03-01', '2026-03-31', as_of => '2026-03-15 12:00+00', by => 'owner') f
  JOIN crm.app_user u ON u.id = f.owner_id ORDER BY u.name;

-- per team (East is Olivia alone, quota 4000), and filtered by team or owner
SELECT t.name, f.open_deals, f.open_pipeline, f.weighted, f.quota, f.attainment
  FROM crm.forecast('month', '2026-03-01', '2026-03-31', as_of => '2026-03-15 12:00+00', by => 'team') f
  JOIN crm.team t ON t.id = f.team_id;
SELECT open_deals, open_pipeline, weighted, quota
  FROM crm.forecast('month', '2026-03-01', '2026-03-31', team => :'east', as_of => '2026-03-15 12:00+00');
SELECT open_deals, open_pipeline, weighted, closed_won, quota, attainment
  FROM crm.forecast('month', '2026-03-01', '2026-03-31', owner => :'sam', as_of => '2026-03-15 12:00+00');

-- a deal of nobody in May: by owner it is its own row without a quota (the
-- tenant's May quota of 1000 belongs to the tenant row); 300 @10 = 30
INSERT INTO crm.opportunity (name, stage_id, amount, currency, expected_close_date)
VALUES ('D13', :'s_new', 300, 'USD', '2026-05-15');
INSERT INTO crm.quota (period_type, period_start, amount) VALUES ('month', '2026-05-01', 1000);
SELECT owner_id, open_deals, weighted, quota
  FROM crm.forecast('month', '2026-05-01', '2026-05-31', as_of => '2026-03-15 12:00+00', by => 'owner');
SELECT owner_id, open_deals, weighted, quota
  FROM crm.forecast('month', '2026-05-01', '2026-05-31', as_of => '2026-03-15 12:00+00');
UPDATE crm.opportunity SET archived_at = now() WHERE name = 'D13';

-- by quarter: Q1 holds February and March
SELECT period_start, period_end, open_deals, open_pipeline, closed_won, weighted, expected
  FROM crm.forecast('quarter', '2026-01-01', '2026-06-30', as_of => '2026-03-15 12:00+00');

-- In EUR: D5 is EUR already (3000); D6 1500 USD won on 2026-03-05 at
-- 1 / 1.20: 1250; March pipeline 1000 / 1.2 + 2000 + 4000 / 1.2 = 6166.67
SELECT period_start, currency_code, closed_won, open_pipeline
  FROM crm.forecast('month', '2026-02-01', '2026-03-31', currency => 'EUR', as_of => '2026-03-15 12:00+00');

-- by day and by week (ISO weeks start on Monday)
SELECT period_start, period_end, open_deals, weighted
  FROM crm.forecast('week', '2026-03-16', '2026-03-29', as_of => '2026-03-15 12:00+00');
SELECT period_start, period_end, closed_won
  FROM crm.forecast('day', '2026-03-05', '2026-03-05', as_of => '2026-03-15 12:00+00');

-- What-if: D3 at 80% and 5000, Proposal at 60% (D2 follows its stage):
-- March weighted 750 + 2400 x .6 + 5000 x .8 = 6190; pipeline 8400;
-- D3 to commit raises commit to 1500 + 1000 + 5000.
SELECT period_start, open_pipeline, commit, weighted, expected
  FROM crm.forecast_what_if(format('[{"opportunity": "%s", "probability": 80, "amount": 5000, "forecast_category": "commit"},
                                     {"stage": "%s", "probability": 60}]', :'d3', :'s_proposal')::jsonb,
                            'month', '2026-03-01', '2026-03-31', as_of => '2026-03-15 12:00+00');
-- moving D1 to Won in the what-if counts it as won on its expected close date
SELECT period_start, open_deals, closed_won, commit, weighted
  FROM crm.forecast_what_if(format('[{"opportunity": "%s", "stage": "%s"}]', :'d1', :'s_won')::jsonb,
                            'month', '2026-03-01', '2026-03-31', as_of => '2026-03-15 12:00+00');
-- nothing was written
SELECT name, amount, probability, status, forecast_category FROM crm.opportunity WHERE name IN ('D1', 'D3') ORDER BY name;
SELECT probability FROM crm.stage WHERE id = :'s_proposal';

-- Bad input: one SQLSTATE per mistake, nothing changes
SELECT try($$SELECT * FROM crm.forecast('fortnight')$$);
SELECT try($$SELECT * FROM crm.forecast(NULL)$$);
SELECT try($$SELECT * FROM crm.forecast('month', '2026-04-01', '2026-03-01')$$);
SELECT try($$SELECT * FROM crm.forecast('month', currency => 'XYZ')$$);
SELECT try($$SELECT * FROM crm.forecast('month', by => 'region')$$);
SELECT try($$SELECT * FROM crm.forecast('month', as_of => NULL)$$);
SELECT try(format($$SELECT * FROM crm.forecast_what_if('[{"opportunity": "%s", "probability": 120}]')$$, :'d1'));
SELECT try(format($$SELECT * FROM crm.forecast_what_if('[{"opportunity": "%s", "probability": "NaN"}]')$$, :'d1'));
SELECT try(format($$SELECT * FROM crm.forecast_what_if('[{"opportunity": "%s", "colour": "red"}]')$$, :'d1'));
SELECT try(format($$SELECT * FROM crm.forecast_what_if('[{"opportunity": "%s", "amount": "lots"}]')$$, :'d1'));
SELECT try(format($$SELECT * FROM crm.forecast_what_if('[{"stage": "%s", "amount": 5}]')$$, :'s_new'));
SELECT try($$SELECT * FROM crm.forecast_what_if('[{"opportunity": "00000000-0000-0000-0000-000000000000"}]')$$);
SELECT try($$SELECT * FROM crm.forecast_what_if('[{"stage": "00000000-0000-0000-0000-000000000000", "probability": 5}]')$$);
SELECT try($$SELECT * FROM crm.forecast_what_if('{"probability": 5}')$$);
SELECT try($$SELECT * FROM crm.forecast_what_if(NULL)$$);

-- A GBP deal in April without a GBP rate: the forecast of April names the
-- currency and the day; March does not need it.
INSERT INTO crm.opportunity (name, owner_id, stage_id, amount, currency, expected_close_date)
VALUES ('D10', :'sam', :'s_new', 900, 'GBP', '2026-04-10');
SELECT try($$SELECT * FROM crm.forecast('month', '2026-04-01', '2026-04-30', as_of => '2026-03-15 12:00+00')$$);
SELECT open_deals, open_pipeline FROM crm.forecast('month', '2026-03-01', '2026-03-31', as_of => '2026-03-15 12:00+00');
-- a won deal is converted at the rate of its close date: none before January
RESET ROLE;
SET session_replication_role = replica;
UPDATE crm.opportunity SET closed_at = '2025-12-20 10:00+00' WHERE tenant_id = :'t' AND name = 'D5';
RESET session_replication_role;
SET ROLE regress_crm_app;
SELECT try($$SELECT * FROM crm.forecast('month', '2025-12-01', '2025-12-31', as_of => '2026-03-15 12:00+00')$$);
RESET ROLE;
SET session_replication_role = replica;
UPDATE crm.opportunity SET closed_at = '2026-02-15 10:00+00' WHERE tenant_id = :'t' AND name = 'D5';
RESET session_replication_role;
SET ROLE regress_crm_app;
UPDATE crm.opportunity SET archived_at = now() WHERE name = 'D10';

-- quotas: one per target and period, a period starts where it starts
SELECT try($$INSERT INTO crm.quota (period_type, period_start, amount) VALUES ('month', '2026-03-01', 1)$$);
SELECT try($$INSERT INTO crm.quota (period_type, period_start, amount) VALUES ('month', '2026-03-02', 1)$$);
SELECT try($$INSERT INTO crm.quota (period_type, period_start, amount) VALUES ('decade', '2026-01-01', 1)$$);
SELECT try($$INSERT INTO crm.quota (period_type, period_start, amount) VALUES ('year', '2026-01-01', 0)$$);

-- the stage's expected value comes with its currency
SELECT try(format($$UPDATE crm.stage SET expected_value = 5 WHERE id = '%s'$$, :'s_new'));
RESET ROLE;
