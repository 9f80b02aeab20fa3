#!/usr/bin/env bash
# test/schedule_maintenance.sh: crm.schedule_maintenance() with pg_cron.
#
# pg_cron lives in one database per cluster (cron.database_name; the test
# cluster's is postgres), so this runs there, inside a transaction that is
# rolled back: pg_cron and crm are installed, the maintenance is scheduled
# twice (one job of each name), unscheduled, and without pg_cron the
# function says what to install.  Prints one line per check; exits non-zero
# if any fails.  Needs PGHOST/PGPORT of a cluster that preloads pg_cron.
set -euo pipefail

failed=0
check() { # DESCRIPTION EXPECTED ACTUAL
	if [[ $2 == "$3" ]]; then
		echo "ok - $1"
	else
		echo "FAIL - $1: expected [$2], got [$3]"
		failed=$((failed + 1))
	fi
}

db=$(psql -X -At -d postgres -c 'SHOW cron.database_name')
out=$(psql -X -At -v ON_ERROR_STOP=1 -d "$db" <<'SQL' 2>&1
SET client_min_messages = warning;
BEGIN;
CREATE EXTENSION IF NOT EXISTS pg_cron;
CREATE EXTENSION crm;
SELECT 'first:' || string_agg(j, ',' ORDER BY j) FROM crm.schedule_maintenance() j;
SELECT 'again:' || string_agg(j, ',' ORDER BY j) FROM crm.schedule_maintenance() j;
SELECT 'jobs:' || count(*) || ':' || count(DISTINCT jobname) FROM cron.job WHERE jobname LIKE 'crm-%';
SELECT 'run-jobs:' || schedule || ' ' || command FROM cron.job WHERE jobname = 'crm-run-jobs';
SELECT 'removed:' || string_agg(j, ',' ORDER BY j) FROM crm.unschedule_maintenance() j;
SELECT 'left:' || count(*) FROM cron.job WHERE jobname LIKE 'crm-%';
ROLLBACK;
SQL
) || { echo "FAIL - the pg_cron session failed: $out"; exit 1; }

names=crm-purge-events,crm-purge-jobs,crm-reap-leases,crm-run-jobs,crm-time-rules
check "schedule_maintenance() schedules run_jobs, the reaper, time rules and both purges" \
	"first:$names" "$(grep '^first:' <<<"$out")"
check "a second call returns the same jobs" "again:$names" "$(grep '^again:' <<<"$out")"
check "and leaves one job of each name" "jobs:5:5" "$(grep '^jobs:' <<<"$out")"
check "run_jobs every minute" "run-jobs:* * * * * SELECT crm.run_jobs(1000)" "$(grep '^run-jobs:' <<<"$out")"
check "unschedule_maintenance() removes them" "removed:$names" "$(grep '^removed:' <<<"$out")"
check "none is left" "left:0" "$(grep '^left:' <<<"$out")"

# Without pg_cron in the database: a clear 55000 that says what to install.
tmpdb=crm_no_cron_$$
psql -X -q -d postgres -c "CREATE DATABASE $tmpdb" >/dev/null
trap 'psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $tmpdb" >/dev/null 2>&1' EXIT
err=$(psql -X -At -d "$tmpdb" -c 'SET client_min_messages = warning' -c 'CREATE EXTENSION crm' \
	-c '\set VERBOSITY verbose' -c 'SELECT crm.schedule_maintenance()' 2>&1 || true)
check "without pg_cron: 55000" "1" "$(grep -c 'ERROR:  55000: pg_cron is not installed in this database' <<<"$err")"
check "and a hint that says what to install" "1" "$(grep -c 'HINT:  Install pg_cron (Debian: postgresql-15-cron)' <<<"$err")"
exit $((failed > 0))
