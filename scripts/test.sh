#!/usr/bin/env bash
# scripts/test.sh: run every crm test suite on a brand-new throwaway cluster.
#
# Expects crm to be built and installed (make test does both first). Suites:
#   1. pg_regress (sql/, expected/) and pg_isolation_regress (specs/), through
#      make installcheck; one unit per test
#   2. pgTAP: test/pgtap/*.sql with pg_prove in a fresh database crm_tap that
#      has crm and pgtap; one unit per file
#   3. test/*.sh, run with bash; one unit per script, passing if it exits 0
# Every runner's output is shown as it runs. The last line is
# "N passed, N failed"; the exit status is non-zero if a unit failed or none ran.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"
# The tests' own cluster (.pg-test/, its own socket): the demo's .pg/ and
# its database survive a test run.
export CRM_CLUSTER=test
shopt -s nullglob

passed=0
failed=0
OUT=$(mktemp -d) # runners' captured output, for counting
trap 'scripts/cluster.sh stop >/dev/null 2>&1 || true; rm -rf "$OUT"' EXIT

# A failing runner that printed no failing unit (a build error, no server)
# still counts as one failure, so that it cannot pass unnoticed.
runner_failed() { # NAME STATUS
	echo "test.sh: $1 exited with status $2 without reporting a failed test"
	failed=$((failed + 1))
}

# pg_regress and pg_isolation_regress (PostgreSQL 15) print one line per test:
#   "test accounts                  ... ok           12 ms"
#   "     accounts                  ... FAILED       12 ms"   (parallel group)
# Tests marked ignored in a schedule print "failed (ignored)"; they count as passed.
count_regress() { # FILE -> "passed failed"
	awk '/^(test +| +)[^ ]+ +\.\.\. / {
			if ($0 ~ /\.\.\. +(ok|failed \(ignored\))/) p++; else f++
		}
		END { print p + 0, f + 0 }' "$1"
}

# make installcheck runs pg_regress, then pg_isolation_regress; it stops at
# the first that fails, so each gets its own make to always run both.
regress_suite() { # NAME DIFFS MAKE-ARGS...
	local name=$1 diffs=$2 status=0 p f
	shift 2
	echo "=== $name"
	rm -f "$diffs"
	make --no-print-directory installcheck "$@" 2>&1 | tee "$OUT/$name" || status=$?
	read -r p f < <(count_regress "$OUT/$name")
	passed=$((passed + p))
	failed=$((failed + f))
	((status == 0 || f > 0)) || runner_failed "make installcheck ($name)" "$status"
	if ((status != 0)) && [[ -f $diffs ]]; then
		echo "=== $diffs (first 300 lines)"
		head -n 300 "$diffs"
	fi
}

tap_suite() {
	local files=(test/pgtap/*.sql) status=0 bad
	((${#files[@]})) || return 0
	echo "=== pgTAP"
	if ! psql -X -q -v ON_ERROR_STOP=1 -d postgres \
		-c 'SET client_min_messages = warning' \
		-c 'DROP DATABASE IF EXISTS crm_tap' -c 'CREATE DATABASE crm_tap' ||
		! psql -X -q -v ON_ERROR_STOP=1 -d crm_tap \
			-c 'CREATE EXTENSION crm' -c 'CREATE EXTENSION pgtap'; then
		echo "test.sh: could not prepare database crm_tap; ${#files[@]} pgTAP files not run"
		failed=$((failed + ${#files[@]}))
		return 0
	fi
	pg_prove -h "$PGHOST" -p "$PGPORT" -U postgres -d crm_tap "${files[@]}" 2>&1 |
		tee "$OUT/pgtap" || status=$?
	# A file that failed is listed in pg_prove's "Test Summary Report" as
	# "test/pgtap/x.sql (Wstat: 0 Tests: 5 Failed: 1)".
	bad=$(sed -n '/^Test Summary Report/,$p' "$OUT/pgtap" | grep -cE '^[^ ]+\.sql \(Wstat: ' || true)
	if ((status != 0 && bad == 0)); then
		echo "test.sh: pg_prove exited with status $status without naming a failed file; counting all as failed"
		bad=${#files[@]}
	fi
	passed=$((passed + ${#files[@]} - bad))
	failed=$((failed + bad))
}

shell_suite() {
	local t
	for t in test/*.sh; do
		echo "=== $t"
		if bash "$t"; then
			passed=$((passed + 1))
		else
			echo "test.sh: $t failed (exit status $?)"
			failed=$((failed + 1))
		fi
	done
}

# A new cluster for every run: nothing left from an earlier run.
scripts/cluster.sh destroy
scripts/cluster.sh start
eval "$(scripts/cluster.sh env)"

regress_suite regress regression.diffs ISOLATION=
regress_suite isolation output_iso/regression.diffs REGRESS=
tap_suite
shell_suite

scripts/cluster.sh stop

# A backend that crashed took the statement it ran with it, and the suites
# may still pass (pg_regress reconnects); the server log keeps the trace.
crash_check() {
	local log lines
	log=$(scripts/cluster.sh logdir)/postgresql.log
	echo "=== server log: crashes"
	if [[ ! -f $log ]]; then
		echo "test.sh: no server log at $log"
		failed=$((failed + 1))
		return 0
	fi
	lines=$(grep -E 'terminated by signal|server process \(PID [0-9]+\) (was terminated|exited with)|terminating any other active server processes' "$log" || true)
	if [[ -n $lines ]]; then
		echo "test.sh: the server log reports a crashed backend:"
		printf '%s\n' "$lines" | head -n 20
		failed=$((failed + 1))
	else
		echo "ok - no backend crashed"
		passed=$((passed + 1))
	fi
}
crash_check
echo "logs: $(scripts/cluster.sh logdir)/"
if ((passed + failed == 0)); then
	echo "test.sh: no tests ran"
fi
# The Citus suite needs its own 3-node cluster: make test-citus runs it.
if PG_CONFIG=${PG_CONFIG:-} scripts/citus.sh check >/dev/null 2>&1; then
	echo "Citus suite skipped: Citus is installed; run make test-citus"
else
	echo "Citus suite skipped: Citus is not installed (make test-citus says how to get it)"
fi
echo "$passed passed, $failed failed"
((failed == 0 && passed > 0))
