#!/usr/bin/env bash
# bench/forecast.sh: what the forecast costs against the plain query, and
# how long the revenue range takes.
#
#   forecast  SELECT * FROM crm.forecast('month') over FORECAST_ROWS
#             opportunities of one tenant (default 1,000,000: 85% open over
#             the next 12 months in the four open stages, 10% won, 5% lost;
#             one currency), as an application role under row-level security
#   plain     SELECT date_trunc('month', expected_close_date),
#             sum(amount * probability / 100) ... WHERE status = 'open'
#             GROUP BY 1, on the same rows and role
#   ratio     forecast / plain (goal <= 1.5x); the forecast also computes the
#             categories, closed won, quotas and each month's revenue range
#   range     crm.revenue_distribution over 10,000 and 100,000 deals read
#             from a table (goals < 100 ms and < 1 s, absolute)
#
# Each query runs RUNS times (default 3); the median is printed.  The two
# forecasts must agree on the weighted total, or the benchmark fails.
# FORECAST_ROWS=20000 bash bench/forecast.sh runs it small.
# Needs PGHOST/PGPORT/PGUSER (a superuser) and psql; makes and drops the
# database bench_forecast and the role bench_forecast_app.
set -euo pipefail

DB=bench_forecast
ROLE=bench_forecast_app
ROWS=${FORECAST_ROWS:-1000000}
RUNS=${RUNS:-3}

command -v psql >/dev/null || PATH="$("$(dirname "$0")/../scripts/cluster.sh" bindir):$PATH"

psql_admin() { psql -X -q -v ON_ERROR_STOP=1 -d postgres "$@"; }
psql_bench() { psql -X -q -v ON_ERROR_STOP=1 -d "$DB" "$@"; }

drop_all() {
	psql_admin -c "SET client_min_messages = warning" \
		-c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "DROP ROLE IF EXISTS $ROLE" >/dev/null
}
trap drop_all EXIT
[ -n "${KEEP:-}" ] && trap - EXIT

drop_all
psql_admin -c "CREATE DATABASE $DB"

echo "setting up $ROWS opportunities in $DB ..."
psql_bench -v rows="$ROWS" -v role="$ROLE" <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION crm;
SELECT crm.setup_roles() \g /dev/null
CREATE ROLE :"role" IN ROLE crm_app, crm_reader;
SELECT crm.create_tenant('bench') AS tenant \gset
SELECT crm.create_tenant('bystander') AS bystander \gset

-- The stages of the default pipeline, in order: New, Qualified, Proposal,
-- Negotiation (open), Won, Lost.
CREATE TEMP TABLE st AS
SELECT s.tenant_id, s.pipeline_id, array_agg(s.id ORDER BY s.sequence) AS ids,
       array_agg(s.kind ORDER BY s.sequence) AS kinds, array_agg(s.probability ORDER BY s.sequence) AS probs
  FROM crm.stage s JOIN crm.pipeline p ON p.tenant_id = s.tenant_id AND p.id = s.pipeline_id AND p.is_default
 WHERE s.tenant_id IN (:'tenant', :'bystander')
 GROUP BY s.tenant_id, s.pipeline_id;

-- Loaded as a restore loads rows (triggers off), with the derived columns
-- (status, probability, closed_at) given as the stage trigger sets them:
-- a million rows in minutes rather than an hour of per-row triggers.
SET session_replication_role = replica;
INSERT INTO crm.opportunity (tenant_id, name, pipeline_id, stage_id, status, probability, closed_at,
                             amount, currency, expected_close_date)
SELECT st.tenant_id, 'Deal ' || i, st.pipeline_id, st.ids[k], st.kinds[k], st.probs[k],
       CASE WHEN st.kinds[k] <> 'open' THEN now() - (i % 20) * interval '1 day' END,
       100 + (i::bigint * 7919) % 100000, 'USD', current_date + (i % 365)
  FROM st, generate_series(1, :rows) i,
       LATERAL (SELECT CASE WHEN i % 20 < 17 THEN 1 + i % 4 WHEN i % 20 < 19 THEN 5 ELSE 6 END AS k) kk
 WHERE st.tenant_id = :'tenant' OR i <= :rows / 10;
RESET session_replication_role;
ANALYZE crm.opportunity;

CREATE TABLE public.deals (amount numeric, probability numeric);
INSERT INTO public.deals SELECT 100 + (i * 7919) % 100000, 1 + (i * 31) % 99 FROM generate_series(1, 100000) i;
CREATE TABLE public.deals_10k AS SELECT * FROM public.deals LIMIT 10000;
GRANT SELECT ON public.deals, public.deals_10k TO :"role";
ANALYZE public.deals;
ANALYZE public.deals_10k;
SQL
TENANT=$(psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" -c "SELECT tenant_id FROM crm.tenant WHERE name = 'bench'")

# median_ms SQL: run SQL RUNS times as the application role; print the median time in ms
median_ms() {
	local i times=()
	for ((i = 0; i < RUNS; i++)); do
		times+=("$(psql -X -q -v ON_ERROR_STOP=1 -d "$DB" -c "SET ROLE $ROLE" -c "SET crm.tenant_id = '$TENANT'" -c '\timing on' \
			-c "SELECT count(*) FROM ($1) q WHERE q::text IS NOT NULL" | awk '/^Time:/ { print $2 }')")
	done
	printf '%s\n' "${times[@]}" | sort -n | awk '{ t[NR] = $1 } END { print t[int((NR + 1) / 2)] }'
}

FORECAST="SELECT * FROM crm.forecast('month')"
PLAIN="SELECT date_trunc('month', o.expected_close_date) AS month, sum(o.amount * o.probability / 100) AS weighted
  FROM crm.opportunity o WHERE o.status = 'open' GROUP BY 1"

check=$(psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" -c "SET ROLE $ROLE" -c "SET crm.tenant_id = '$TENANT'" -c \
	"SELECT (SELECT sum(weighted) FROM ($FORECAST) f) = (SELECT round(sum(weighted), 2) FROM ($PLAIN) p)
	    AND (SELECT count(*) FROM ($PLAIN) p) > 0")
if [ "$check" != t ]; then
	echo "the forecast and the plain query disagree on the weighted total" >&2
	exit 1
fi

forecast=$(median_ms "$FORECAST")
plain=$(median_ms "$PLAIN")
range10=$(median_ms "SELECT crm.revenue_distribution(amount, probability) FROM public.deals_10k")
range100=$(median_ms "SELECT crm.revenue_distribution(amount, probability) FROM public.deals")

awk -v rows="$ROWS" -v f="$forecast" -v p="$plain" -v r10="$range10" -v r100="$range100" 'BEGIN {
	printf "crm.forecast by month over %d opportunities: %.1f ms; plain SQL sum(amount * probability / 100) GROUP BY month: %.1f ms\n", rows, f, p
	printf "ratio forecast / plain: %.2fx (goal <= 1.5x)\n", f / p
	printf "crm.revenue_distribution over 10,000 deals: %.1f ms (goal < 100 ms); over 100,000 deals: %.1f ms (goal < 1000 ms)\n", r10, r100
}'
