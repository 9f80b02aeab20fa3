-- crm.revenue_distribution(amount, probability): the revenue range of
-- independent deals, exact for up to 20 uncertain deals, with a proven
-- error bound beyond; as an ordinary aggregate, with GROUP BY, and in a
-- parallel plan.  (test/forecast_distribution.sh checks it against brute
-- force and simulation at scale.)

SET ROLE crm_reader;

-- Two deals of 100 and 200 at 50%: totals 0, 100, 200, 300 at 1/4 each.
-- P10 0; P50 is the smallest total whose cumulative probability reaches
-- .5: 100 (an exact tie); P90 300.  mean 150, stddev sqrt(2 500 + 10 000).
SELECT (r).mean, round((r).stddev, 6) AS stddev, round(sqrt(12500::numeric), 6) AS by_hand,
       (r).p10, (r).p50, (r).p90, (r).error_bound
  FROM (SELECT crm.revenue_distribution(a, p) AS r
          FROM (VALUES (100, 50), (200, 50)) v(a, p)) s;

-- Certain deals (100%) shift the range, 0% deals add nothing, NULL rows
-- are skipped, amounts keep their cents.
-- 50.25 sure + 100.10 @30: totals 50.25 (.7), 150.35 (.3).
SELECT (crm.revenue_distribution(a, p)).*
  FROM (VALUES (50.25, 100), (100.10, 30), (999, 0), (NULL, 50), (5, NULL)) v(a, p);

-- no rows: NULL, as sum() gives
SELECT crm.revenue_distribution(a, p) IS NULL AS no_rows
  FROM (VALUES (1::numeric, 1::numeric)) v(a, p) WHERE false;

-- GROUP BY: one range per owner
SELECT owner, (crm.revenue_distribution(a, p)).*
  FROM (VALUES ('ann', 1000, 90), ('ann', 500, 20), ('bob', 300, 50)) v(owner, a, p)
 GROUP BY owner ORDER BY owner;

-- 20 uncertain deals: still exact (bound 0); amounts 10, 20, ..., 200 at
-- 50%: every subset is equally likely and the subset sums of 1..20 are
-- symmetric around 105, so P50 is 1050 and P10 and P90 are mirror images.
SELECT (r).mean, (r).p10, (r).p50, (r).p90, (r).p10 + (r).p90 AS p10_plus_p90, (r).error_bound
  FROM (SELECT crm.revenue_distribution(g * 10, 50) AS r FROM generate_series(1, 20) g) s;

-- 21 or more: a bound.  Whole-cent amounts whose total fits the finest grid
-- (2^20 cells of one cent) are convolved without rounding: bound 0.
SELECT (r).mean, (r).p10, (r).p50, (r).p90, (r).error_bound
  FROM (SELECT crm.revenue_distribution(g * 10, 50) AS r FROM generate_series(1, 21) g) s;
-- Larger totals: the grid is coarser, and the bound says by how much.
SELECT (r).mean, (r).error_bound > 0 AS bounded, (r).error_bound < 0.01 * (r).stddev AS tight
  FROM (SELECT crm.revenue_distribution(g * 1000 + 0.37, 40) AS r FROM generate_series(1, 50) g) s;

-- Bad input
SELECT try($$SELECT crm.revenue_distribution(a, p) FROM (VALUES ('NaN'::numeric, 50::numeric)) v(a, p)$$);
SELECT try($$SELECT crm.revenue_distribution(a, p) FROM (VALUES ('Infinity'::numeric, 50::numeric)) v(a, p)$$);
SELECT try($$SELECT crm.revenue_distribution(a, p) FROM (VALUES (-1::numeric, 50::numeric)) v(a, p)$$);
SELECT try($$SELECT crm.revenue_distribution(a, p) FROM (VALUES (1::numeric, 100.01::numeric)) v(a, p)$$);
SELECT try($$SELECT crm.revenue_distribution(a, p) FROM (VALUES (1::numeric, -0.5::numeric)) v(a, p)$$);
SELECT try($$SELECT crm.revenue_distribution(a, p) FROM (VALUES (1::numeric, 'NaN'::numeric)) v(a, p)$$);
RESET ROLE;

-- In a parallel plan: partial states are serialized in the workers and
-- combined in the leader, and the answer is the same.
CREATE TABLE public.distribution_deals (owner int, amount numeric, probability numeric);
INSERT INTO public.distribution_deals
SELECT g % 3, (g * 7919 % 10007) / 100.0, 1 + g * 31 % 99 FROM generate_series(1, 3000) g;
INSERT INTO public.distribution_deals
SELECT 9, g * 10, 50 FROM generate_series(1, 20) g;
ANALYZE public.distribution_deals;
CREATE TEMP TABLE serial AS
SELECT owner, (crm.revenue_distribution(amount, probability)).* FROM public.distribution_deals GROUP BY owner;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
SET parallel_leader_participation = off;
EXPLAIN (COSTS OFF)
SELECT owner, crm.revenue_distribution(amount, probability) FROM public.distribution_deals GROUP BY owner;
CREATE TEMP TABLE parallel AS
SELECT owner, (crm.revenue_distribution(amount, probability)).* FROM public.distribution_deals GROUP BY owner;
RESET parallel_setup_cost;
RESET parallel_tuple_cost;
RESET min_parallel_table_scan_size;
RESET max_parallel_workers_per_gather;
RESET parallel_leader_participation;
-- mean and stddev are exact whatever the order; the exact group (owner 9)
-- is identical; the others agree within their bounds
SELECT s.owner, s.mean = p.mean AS same_mean, s.stddev = p.stddev AS same_stddev,
       s.error_bound = 0 AS exact,
       abs(s.p10 - p.p10) <= s.error_bound + p.error_bound
   AND abs(s.p50 - p.p50) <= s.error_bound + p.error_bound
   AND abs(s.p90 - p.p90) <= s.error_bound + p.error_bound AS agree,
       (s.p10, s.p50, s.p90) = (p.p10, p.p50, p.p90) AS identical
  FROM serial s JOIN parallel p USING (owner) ORDER BY s.owner;
DROP TABLE public.distribution_deals;
