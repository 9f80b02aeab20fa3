#!/usr/bin/env bash
# bench/rls.sh: what row-level security costs the kanban and dashboard views.
#
# 20 tenants, each with 5,000 opportunities and 5,000 leads spread over the
# stages of both pipelines (RLS_TENANTS, RLS_PER_TENANT and RLS_ROUNDS
# change the size).  The views crm.opportunity_kanban, crm.lead_kanban and
# crm.dashboard are read for one tenant three ways:
#
#   rls     as the login role bench_app (crm_app + crm_reader) with
#           SET crm.tenant_id: the tenant and owner policies choose the rows
#   owner   as the superuser, which bypasses row-level security, with
#           WHERE tenant_id = '<tenant>' on the view
#   private as bench_app in a second tenant of the same size made private,
#           acting (crm.user_id) as a user who manages two of the five
#           owners: every row is checked against visible_to (its rows
#           differ by design, so only its time is compared with owner's)
#
# What the policies cost per row is tenant_id = crm.current_tenant() (a C
# function answering from a per-statement cache) and, for owner visibility,
# visible_to IS NULL OR crm.current_user_id() = ANY (visible_to) OR
# crm.is_admin(): no sub-query per row.
#
# Five rounds (RLS_ROUNDS); each round opens one session per side, runs
# every query once to warm the caches, then ten times timed (RLS_REPEAT;
# clock_timestamp before and after, the rows sent to /dev/null): the
# queries take 10 to 20 ms, so one timing per round was mostly noise.  The
# median per query and side over every timed run is printed with the ratio
# rls/owner; the sides take turns round by round.  Both sides must return the same rows, or the
# benchmark fails.
#
# Needs PGHOST/PGPORT/PGUSER (a superuser) and psql; makes and drops the
# database bench_rls, and the role bench_app if it made it.
set -euo pipefail

DB=bench_rls
ROLE=bench_app
TENANTS=${RLS_TENANTS:-20}
PER_TENANT=${RLS_PER_TENANT:-5000}
ROUNDS=${RLS_ROUNDS:-5}
REPEAT=${RLS_REPEAT:-10}
QUERIES=(opportunity_kanban lead_kanban dashboard)

command -v psql >/dev/null || PATH="$("$(dirname "$0")/../scripts/cluster.sh" bindir):$PATH"

psql_admin() { psql -X -q -v ON_ERROR_STOP=1 -d postgres "$@"; }
psql_bench() { psql -X -q -v ON_ERROR_STOP=1 -d "$DB" "$@"; }

made_role=0
cleanup() {
	psql_admin -c "SET client_min_messages = warning" \
		-c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null || true
	if ((made_role)); then
		psql_admin -c "DROP ROLE IF EXISTS $ROLE" >/dev/null || true
	fi
}
trap cleanup EXIT
[[ -n ${KEEP_DB:-} ]] && trap - EXIT

psql_admin -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
psql_admin -c "CREATE DATABASE $DB"

echo "setting up $TENANTS tenants x ($PER_TENANT opportunities + $PER_TENANT leads) in $DB ..."
psql_bench -v tenants="$TENANTS" -v per_tenant="$PER_TENANT" <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION crm;
SELECT crm.setup_roles() \gset

SELECT count(crm.create_tenant(format('bench tenant %s', lpad(i::text, 2, '0')))) AS made FROM generate_series(1, :tenants) i \gset

INSERT INTO crm.app_user (tenant_id, name, email)
SELECT t.tenant_id, 'User ' || u, format('user%s@bench.example', u)
  FROM crm.tenant t, generate_series(1, 5) u;
-- the same rate everywhere: every tenant's amounts convert alike
INSERT INTO crm.currency_rate (tenant_id, from_currency, to_currency, rate, valid_from)
SELECT t.tenant_id, 'EUR', 'USD', 1.08, DATE '2020-01-01' FROM crm.tenant t;

CREATE TEMP TABLE stage_no AS
SELECT s.tenant_id, s.pipeline_id, s.id,
       row_number() OVER (PARTITION BY s.tenant_id ORDER BY p.sequence, s.sequence) - 1 AS k
  FROM crm.stage s JOIN crm.pipeline p ON p.tenant_id = s.tenant_id AND p.id = s.pipeline_id;
CREATE TEMP TABLE user_no AS
SELECT u.tenant_id, u.id, row_number() OVER (PARTITION BY u.tenant_id ORDER BY u.id) - 1 AS k
  FROM crm.app_user u;

-- Every stage of both pipelines gets records; one in ten is in euros, one in
-- seven has no owner.
INSERT INTO crm.opportunity (tenant_id, name, pipeline_id, stage_id, amount, currency, owner_id)
SELECT t.tenant_id, 'Deal ' || i, s.pipeline_id, s.id, (i % 500) * 100,
       CASE WHEN i % 10 = 0 THEN 'EUR' ELSE 'USD' END,
       CASE WHEN i % 7 <> 0 THEN u.id END
  FROM crm.tenant t CROSS JOIN generate_series(1, :per_tenant) i
  JOIN stage_no s ON s.tenant_id = t.tenant_id AND s.k = i % 12
  JOIN user_no u ON u.tenant_id = t.tenant_id AND u.k = i % 5;

-- One lead in five is converted.
INSERT INTO crm.lead (tenant_id, name, pipeline_id, stage_id, expected_revenue, currency, owner_id, converted_at)
SELECT t.tenant_id, 'Lead ' || i, s.pipeline_id, s.id, (i % 300) * 50,
       CASE WHEN i % 10 = 0 THEN 'EUR' ELSE 'USD' END,
       CASE WHEN i % 7 <> 0 THEN u.id END,
       CASE WHEN i % 5 = 0 THEN TIMESTAMPTZ '2025-01-01' + i * interval '1 minute' END
  FROM crm.tenant t CROSS JOIN generate_series(1, :per_tenant) i
  JOIN stage_no s ON s.tenant_id = t.tenant_id AND s.k = (i * 7) % 12
  JOIN user_no u ON u.tenant_id = t.tenant_id AND u.k = i % 5;

VACUUM ANALYZE;
SQL

exists=$(psql_admin -At -c "SELECT count(*) FROM pg_roles WHERE rolname = '$ROLE'")
if [[ $exists == 0 ]]; then
	psql_admin -c "CREATE ROLE $ROLE LOGIN"
	made_role=1
fi
psql_admin -c "GRANT crm_app, crm_reader TO $ROLE"

# The tenant in the middle of the list; the one after it goes private, its
# first user managing the second and third.
tenant=$(psql_bench -At -c "SELECT tenant_id FROM crm.tenant ORDER BY name OFFSET $((TENANTS / 2)) LIMIT 1")
private=$(psql_bench -At -c "SELECT tenant_id FROM crm.tenant ORDER BY name OFFSET $((TENANTS / 2 + 1)) LIMIT 1")
manager=$(psql_bench -At -c "SELECT id FROM crm.app_user WHERE tenant_id = '$private' ORDER BY id LIMIT 1")
psql_bench -q -c "UPDATE crm.app_user SET manager_id = '$manager'
                   WHERE tenant_id = '$private' AND id IN (SELECT id FROM crm.app_user
                                                            WHERE tenant_id = '$private' ORDER BY id OFFSET 1 LIMIT 2)" \
	-c "UPDATE crm.tenant SET visibility = 'private' WHERE tenant_id = '$private'" -c "VACUUM ANALYZE"

# The SQL of one round for one side: a checksum of each query's rows, a
# warm-up run, then the timed run printing "side query ms".
round_sql() {
	local side=$1 where=''
	if [[ $side == rls ]]; then
		echo "SET crm.tenant_id = '$tenant';"
	elif [[ $side == private ]]; then
		echo "SET crm.tenant_id = '$private'; SET crm.user_id = '$manager';"
	else
		where="WHERE tenant_id = '$tenant'"
	fi
	for q in "${QUERIES[@]}"; do
		cat <<SQL
SELECT format('sum $side $q %s %s', count(*), md5(string_agg(v::text, '|' ORDER BY v::text)))
  FROM crm.$q v $where;
SELECT * FROM crm.$q $where \\g /dev/null
SQL
	done
	for _ in $(seq 1 "$REPEAT"); do
		for q in "${QUERIES[@]}"; do
			cat <<SQL
SELECT clock_timestamp() AS t0 \\gset
SELECT * FROM crm.$q $where \\g /dev/null
SELECT format('time $side $q %s', round(extract(epoch FROM clock_timestamp() - :'t0') * 1000, 3));
SQL
		done
	done
}

echo "running: $ROUNDS rounds of ${QUERIES[*]}, for tenant $tenant ..."
results=''
for round in $(seq 1 "$ROUNDS"); do
	results+=$(round_sql rls | psql_bench -At -U "$ROLE")$'\n'
	results+=$(round_sql owner | psql_bench -At)$'\n'
	results+=$(round_sql private | psql_bench -At -U "$ROLE")$'\n'
done

# Both sides must see the same, non-empty, rows: one tenant's 12 stages on
# each kanban and one dashboard row.
fail=0
for q in "${QUERIES[@]}"; do
	sums=$(grep -E "^sum (rls|owner) $q " <<<"$results" | awk '{print $4, $5}' | sort -u)
	if [[ $(wc -l <<<"$sums") != 1 ]]; then
		echo "FAIL: $q: RLS and owner do not return the same rows:" >&2
		grep -E "^sum (rls|owner) $q " <<<"$results" | sort -u >&2
		fail=1
		continue
	fi
	want=12
	[[ $q == dashboard ]] && want=1
	if [[ ${sums%% *} != "$want" ]]; then
		echo "FAIL: $q returned ${sums%% *} rows, not $want" >&2
		fail=1
	fi
done
((fail)) && exit 1

median() { grep "^time $1 $2 " <<<"$results" | awk '{print $4}' | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

echo
echo "views for one tenant of $TENANTS ($PER_TENANT opportunities + $PER_TENANT leads each), median of $ROUNDS rounds x $REPEAT runs"
printf "  %-20s %12s %12s %8s %14s %8s\n" query "RLS (ms)" "owner (ms)" ratio "private (ms)" ratio
for q in "${QUERIES[@]}"; do
	rls=$(median rls "$q")
	owner=$(median owner "$q")
	priv=$(median private "$q")
	awk -v q="$q" -v r="$rls" -v o="$owner" -v p="$priv" \
		'BEGIN { printf "  %-20s %12.2f %12.2f %8.2f %14.2f %8.2f\n", q, r, o, r / o, p, p / o }'
done
echo "  (RLS: $ROLE with SET crm.tenant_id; owner: superuser, bypasses RLS, WHERE tenant_id = ...;"
echo "   private: $ROLE in a private tenant as a manager, against the owner's time for the public tenant; goal 1.2)"
