-- crm.forecast() without what-if changes aggregates in one pass in C
-- (crm.forecast_totals); crm.forecast_what_if() with changes takes the SQL
-- path through crm.forecast_deals().  A change that names a deal and sets
-- nothing changes nothing, so the two paths must give the same rows, to the
-- cent and to the bit of the revenue range, on any data: here 400 seeded
-- random deals in three currencies (direct and inverse rates on several
-- days), stage expected values in another currency, category overrides,
-- hand-set probabilities, won, lost and archived deals, deals of nobody, an
-- amount beyond 2^53 cents, compared for every period, grouping, filter and
-- window below.

SET TimeZone = 'UTC';
SELECT crm.create_tenant('One Pass Co') AS t \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';
INSERT INTO crm.app_user (name) VALUES ('Ann'), ('Ben'), ('Cy');
SELECT array_agg(id ORDER BY name) AS users FROM crm.app_user \gset
SELECT id AS sales FROM crm.pipeline WHERE is_default \gset
SELECT id AS partners FROM crm.pipeline WHERE name = 'Enterprise Deals' \gset
SELECT array_agg(id ORDER BY pipeline_id = :'sales' DESC, sequence) FILTER (WHERE kind = 'open') AS open_stages,
       array_agg(id ORDER BY pipeline_id = :'sales' DESC, sequence) FILTER (WHERE kind = 'won') AS won_stages,
       array_agg(id ORDER BY pipeline_id = :'sales' DESC, sequence) FILTER (WHERE kind = 'lost') AS lost_stages
  FROM crm.stage \gset
SELECT count(*) AS stages FROM crm.stage WHERE kind = 'open' \gset

-- EUR -> USD direct, USD -> GBP (GBP -> USD is its inverse), on several days
INSERT INTO crm.currency_rate (from_currency, to_currency, rate, valid_from) VALUES
    ('EUR', 'USD', 1.10, '2025-01-01'), ('EUR', 'USD', 1.0837, '2026-02-10'), ('EUR', 'USD', 1.2011, '2026-05-01'),
    ('USD', 'GBP', 0.79, '2025-01-01'), ('USD', 'GBP', 0.7712, '2026-04-15'),
    ('EUR', 'GBP', 0.86, '2025-01-01');
-- deals without an amount count at the stage's expected value, in EUR or USD
UPDATE crm.stage SET expected_value = 1234.56, expected_value_currency = 'EUR' WHERE id = (:'open_stages'::uuid[])[2];
UPDATE crm.stage SET expected_value = 999.99, expected_value_currency = 'USD' WHERE id = (:'open_stages'::uuid[])[3];

SELECT setseed(0.11);
INSERT INTO crm.opportunity (name, owner_id, pipeline_id, stage_id, amount, currency, probability,
                             expected_close_date, forecast_category)
SELECT 'R' || i, CASE WHEN r.u < 3 THEN (:'users'::uuid[])[r.u + 1] END, s.pipeline_id, s.id,
       CASE WHEN random() < 0.08 THEN 0 ELSE round((random() * 20000)::numeric, 2) END,
       (ARRAY['USD', 'USD', 'EUR', 'GBP'])[1 + floor(random() * 4)::int],
       CASE WHEN s.kind = 'open' AND random() < 0.3 THEN round((random() * 100)::numeric, 2) END,
       DATE '2026-01-01' + floor(random() * 240)::int,
       CASE WHEN random() < 0.3 THEN (ARRAY['pipeline', 'best_case', 'commit', 'closed', 'omitted'])[1 + floor(random() * 5)::int] END
  FROM generate_series(1, 400) i
 CROSS JOIN LATERAL (SELECT floor(random() * 4)::int + i * 0 AS u, random() + i * 0 AS k) r
 CROSS JOIN LATERAL (
     SELECT st.id, st.pipeline_id, st.kind FROM crm.stage st
      WHERE st.id = CASE WHEN r.k < 0.7 THEN (:'open_stages'::uuid[])[1 + floor(r.k / 0.7 * :stages)::int]
                         WHEN r.k < 0.9 THEN (:'won_stages'::uuid[])[1 + (i % 2)]
                         ELSE (:'lost_stages'::uuid[])[1 + (i % 2)] END) s;
-- one deal without a close date, a few archived
INSERT INTO crm.opportunity (name, owner_id, stage_id, amount, currency, expected_close_date)
VALUES ('Undated', (:'users'::uuid[])[1], (:'open_stages'::uuid[])[1], 10, 'USD', NULL);
UPDATE crm.opportunity SET archived_at = now() WHERE name IN ('R5', 'R50', 'R150');

-- won and lost deals closed on days spread over the year (restore-style)
RESET ROLE;
SET session_replication_role = replica;
UPDATE crm.opportunity SET closed_at = TIMESTAMPTZ '2026-01-01 09:00+00' + (substr(name, 2)::int % 200) * interval '1 day'
 WHERE tenant_id = :'t' AND status <> 'open' AND name LIKE 'R%';
RESET session_replication_role;
SET ROLE regress_crm_app;

SELECT count(*) FILTER (WHERE status = 'open') > 200 AS many_open, count(*) FILTER (WHERE status = 'won') > 40 AS many_won,
       count(*) FILTER (WHERE status = 'lost') > 20 AS some_lost, count(DISTINCT currency) = 3 AS three_currencies,
       count(*) FILTER (WHERE amount = 0) > 10 AS some_without_amount,
       count(*) FILTER (WHERE forecast_category IS NOT NULL) > 50 AS some_overrides,
       count(*) FILTER (WHERE owner_id IS NULL) > 50 AS some_of_nobody
  FROM crm.opportunity;

-- A no-op change sends crm.forecast_what_if down the SQL path.
SELECT format('[{"opportunity": "%s"}]', id) AS noop FROM crm.opportunity WHERE name = 'R1' \gset

CREATE TEMP TABLE cases (n serial, period text, from_date date, to_date date, pipeline uuid, owner uuid,
                         currency text, as_of timestamptz, by text);
INSERT INTO cases (period, from_date, to_date, pipeline, owner, currency, as_of, by)
SELECT p, w.f, w.t, NULL, NULL, NULL, '2026-04-20 12:00+00', b
  FROM unnest(ARRAY['day', 'week', 'month', 'quarter', 'year']) p,
       (VALUES (NULL::date, NULL::date), ('2026-02-01', '2026-05-31')) w(f, t),
       unnest(ARRAY[NULL, 'owner']) b;
INSERT INTO cases (period, from_date, to_date, pipeline, owner, currency, as_of, by) VALUES
    ('month', NULL, NULL, :'sales', NULL, NULL, '2026-04-20 12:00+00', NULL),
    ('month', NULL, NULL, :'partners', NULL, NULL, '2026-04-20 12:00+00', 'owner'),
    ('month', NULL, NULL, NULL, (:'users'::uuid[])[2], NULL, '2026-04-20 12:00+00', NULL),
    ('quarter', NULL, NULL, NULL, NULL, 'EUR', '2026-04-20 12:00+00', 'owner'),
    ('month', NULL, NULL, NULL, NULL, 'GBP', '2026-06-01 00:00+00', NULL),
    ('year', '2026-03-03', '2026-03-03', NULL, NULL, NULL, '2026-04-20 12:00+00', NULL),
    ('month', '2030-01-01', '2030-12-31', NULL, NULL, NULL, '2026-04-20 12:00+00', NULL);

-- every case, both paths: the same rows in the same order
CREATE TEMP TABLE compared AS
SELECT c.n, c.period, c.by,
       (SELECT count(*) FROM crm.forecast(c.period, c.from_date, c.to_date, c.pipeline, c.owner, NULL,
                                          c.currency, c.as_of, c.by)) AS rows,
       (SELECT array_agg(f::text ORDER BY o)
          FROM crm.forecast(c.period, c.from_date, c.to_date, c.pipeline, c.owner, NULL,
                            c.currency, c.as_of, c.by) WITH ORDINALITY f(a, b, c1, d, e, f1, g, h, i, j, k, l, m, n1, o1, p, q, r, s, o))
       IS NOT DISTINCT FROM
       (SELECT array_agg(f::text ORDER BY o)
          FROM crm.forecast_what_if(:'noop', c.period, c.from_date, c.to_date, c.pipeline, c.owner, NULL,
                                    c.currency, c.as_of, c.by) WITH ORDINALITY f(a, b, c1, d, e, f1, g, h, i, j, k, l, m, n1, o1, p, q, r, s, o)) AS same
  FROM cases c;
SELECT n, period, by, rows > 0 AS has_rows, same FROM compared ORDER BY n;

-- the cases cover exact ranges (at most 20 uncertain deals: bound 0) and
-- bounded ones, rates of several days, stage values, deals of nobody
SELECT count(*) FILTER (WHERE error_bound = 0) > 3 AS exact_ranges,
       count(*) FILTER (WHERE error_bound > 0) > 3 AS bounded_ranges,
       sum(stage_value_deals) > 3 AS stage_values
  FROM crm.forecast('quarter', as_of => '2026-04-20 12:00+00', by => 'owner');
SELECT count(*) AS nobody_rows FROM crm.forecast('month', as_of => '2026-04-20 12:00+00', by => 'owner') WHERE owner_id IS NULL
\gset
SELECT :nobody_rows > 3 AS nobody_has_rows;

-- A deal beyond 2^53 cents: the sums stay exact on both paths.  (Its
-- range is left out: at 10^14 a double's last bit is worth cents, and
-- the aggregate's sums of doubles depend on the order the deals come in.)
INSERT INTO crm.opportunity (name, owner_id, stage_id, amount, currency, expected_close_date)
VALUES ('Huge', (:'users'::uuid[])[1], (:'open_stages'::uuid[])[4], 98765432109876.54, 'USD', '2026-03-03');
SELECT f.open_pipeline - s.open_pipeline AS pipeline_difference, f.weighted - s.weighted AS weighted_difference,
       f.best_case = s.best_case AND f.commit = s.commit AND f.closed_won = s.closed_won AND f.open_deals = s.open_deals AS same_totals,
       f.open_pipeline > 98765432109876.54 AS huge_in_pipeline
  FROM crm.forecast('month', '2026-03-01', '2026-03-31', as_of => '2026-04-20 12:00+00') f,
       crm.forecast_what_if(:'noop', 'month', '2026-03-01', '2026-03-31', as_of => '2026-04-20 12:00+00') s;

-- crm.forecast_totals by hand: two won deals of Ann, in USD and EUR, and
-- one open deal each for Ann and for nobody
RESET ROLE;
SELECT crm.create_tenant('Totals Co') AS t2 \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t2';
INSERT INTO crm.app_user (name) VALUES ('Ann') RETURNING id AS ann \gset
SELECT id AS won FROM crm.stage WHERE kind = 'won' AND pipeline_id = (SELECT id FROM crm.pipeline WHERE is_default) \gset
SELECT id AS neg FROM crm.stage WHERE name = 'Negotiation' AND pipeline_id = (SELECT id FROM crm.pipeline WHERE is_default) \gset
INSERT INTO crm.currency_rate (from_currency, to_currency, rate, valid_from) VALUES ('EUR', 'USD', 1.0837, '2026-02-10');
INSERT INTO crm.opportunity (name, owner_id, stage_id, amount, currency, expected_close_date) VALUES
    ('W1', :'ann', :'won', 100.01, 'USD', '2026-03-01'), ('W2', :'ann', :'won', 0.99, 'EUR', '2026-03-01'),
    ('O1', :'ann', :'neg', 10.03, 'USD', '2026-03-09'), ('O2', NULL, :'neg', 7.77, 'EUR', '2026-03-31');
RESET ROLE;
SET session_replication_role = replica;
UPDATE crm.opportunity SET closed_at = '2026-03-02 10:00+00' WHERE tenant_id = :'t2' AND name IN ('W1', 'W2');
RESET session_replication_role;
SET ROLE regress_crm_app;
-- By owner, March: Ann won 100.01 USD + 0.99 EUR x 1.0837 (the rate of
-- the close day) = 101.082863; her open O1 10.03 at 75% (Negotiation):
-- weighted 7.5225; range 101.082863 + (0 at .25, 10.03 at 1): P10 =
-- 101.082863, P50 = P90 = 111.112863, exact (bound 0).  Nobody's O2:
-- 7.77 EUR x 1.0837 (as_of) = 8.420349, weighted 6.31526175; range 0 at
-- .25, 8.420349 at 1.  Unrounded: crm.forecast rounds them to cents.
SELECT period_start, owner_id IS NULL AS nobody, open_deals, open_pipeline, best_case_open, commit_open, closed_won,
       weighted, p10, p50, p90, error_bound, stage_value_deals
  FROM crm.forecast_totals('month', NULL, NULL, NULL, NULL, 'USD', '2026-04-20 12:00+00', true)
 ORDER BY owner_id;
-- by week (from Monday): the won deals in the week of their close day
-- (2026-03-02), O1 (2026-03-09) and O2 (Tuesday 2026-03-31) in theirs
SELECT period_start, open_deals, open_pipeline, closed_won, weighted, p10, p50, p90
  FROM crm.forecast_totals('week', NULL, NULL, NULL, NULL, 'USD', '2026-04-20 12:00+00', false)
 ORDER BY period_start;

-- errors: the same as crm.forecast's, and a missing rate names the currency
-- and the day on both paths
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT * FROM crm.forecast_totals('fortnight', NULL, NULL, NULL, NULL, 'USD', now(), false);
SELECT * FROM crm.forecast_totals('month', '2026-02-01', '2026-01-01', NULL, NULL, 'USD', now(), false);
SELECT * FROM crm.forecast_totals(NULL, NULL, NULL, NULL, NULL, 'USD', now(), false);
SELECT * FROM crm.forecast_totals('month', NULL, NULL, NULL, NULL, 'USD', now(), NULL);
INSERT INTO crm.opportunity (name, owner_id, stage_id, amount, currency, expected_close_date)
VALUES ('CHF deal', :'ann', :'neg', 5, 'CHF', '2026-03-15');
SELECT count(*) FROM crm.forecast('month', as_of => '2026-04-20 12:00+00');
SELECT format('[{"opportunity": "%s"}]', id) AS noop2 FROM crm.opportunity WHERE name = 'O1' \gset
SELECT count(*) FROM crm.forecast_what_if(:'noop2', 'month', as_of => '2026-04-20 12:00+00');
-- outside the window the CHF deal needs no rate
SELECT count(*) FROM crm.forecast('month', '2026-03-01', '2026-03-10', as_of => '2026-04-20 12:00+00');
RESET ROLE;
