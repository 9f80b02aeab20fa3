#!/usr/bin/env bash
# test/crash_queue.sh: workflow jobs survive a SIGKILL of the server exactly
# once (issue 12: enqueued in the transaction of the change, never lost,
# never doubled).
#
# In a database of its own, with one tenant and its default rules:
#   - $CLIENTS clients make changes that fire rules, as fast as they can:
#     crm.track_activity(contact, 'quote_created') (rule quote_follow_up) and
#     crm.consume_event('OrderCreated', ...) (rules order_won and
#     order_follow_up).  Each change writes a marker row crash.change(n) in
#     its own transaction.  Three changes in four commit (one statement in
#     autocommit; the client logs "C|n" only when the server acknowledged
#     the commit); the fourth rolls back, half by ROLLBACK, half by an error
#     raised after the change.
#   - $WORKERS workers claim the jobs of queue crm and complete them, each
#     completion acknowledged and logged ("D|job id").
# After $LOAD_SECONDS the postmaster and then every one of its processes
# are killed with SIGKILL (the postmaster first, so that nothing reports a
# crashed backend), and the server is started again (crash recovery).  Then:
#   - every acknowledged change is there (its marker), no rolled-back change
#     left anything (marker, activity, inbound event, job);
#   - every committed change has exactly one job per rule it matches, ready
#     or archived, and every job belongs to a committed change;
#   - a job is either ready or archived, never both, and has its one
#     idempotency key;
#   - no acknowledged completion is ready again: it is archived as
#     completed;
#   - the queue still works: the leftover ready jobs are claimed and
#     completed after the restart.
# This repeats $ROUNDS times on the same data.
#
# Clients and workers run with synchronous_commit = on: an acknowledged
# commit has been written to the kernel (the test cluster runs with
# fsync = off, which keeps it across a kill of PostgreSQL's processes, not
# across an OS crash; a SIGKILL of PostgreSQL is what is tested here).
#
# Needs psql, pg_ctl (PostgreSQL 15) and PGHOST/PGPORT/PGUSER naming a
# superuser of a running server that this script may kill and restart (the
# test cluster of scripts/test.sh).  Prints TAP-ish "ok - ..." lines;
# exits non-zero if a check fails.  About 25 s.
set -euo pipefail

DB=regress_crash_queue
CLIENTS=${CRASH_CLIENTS:-2}
WORKERS=${CRASH_WORKERS:-2}
LOAD_SECONDS=${CRASH_LOAD_SECONDS:-5}
ROUNDS=${CRASH_ROUNDS:-2}
WORK=$(mktemp -d)
failed=0
checks=0

ok() {
	checks=$((checks + 1))
	echo "ok - $*"
}
fail() {
	checks=$((checks + 1))
	failed=$((failed + 1))
	echo "FAIL - $*"
}
die() {
	echo "crash_queue.sh: $*" >&2
	exit 1
}

psql_q() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }
psql_v() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" "$@"; }

# The server this script talks to: its data directory, postmaster, programs
# and log, read while it runs so that it can be started again after the kill.
DATA=$(psql -X -At -d postgres -c 'SHOW data_directory') || die "no server at PGHOST=${PGHOST:-} PGPORT=${PGPORT:-}"
[[ -f $DATA/postmaster.pid ]] || die "cannot read $DATA/postmaster.pid (the server must run on this machine)"
postmaster_pid() { head -n 1 "$DATA/postmaster.pid"; }
PM=$(postmaster_pid)
PGBIN=$(dirname "$(readlink "/proc/$PM/exe")")
[[ -x $PGBIN/pg_ctl ]] || PGBIN=$(dirname "$(command -v pg_ctl)")
LOGFILE=$(readlink "/proc/$PM/fd/2" 2>/dev/null || true)
[[ $LOGFILE == /* && -f $LOGFILE ]] || LOGFILE=$DATA/crash_queue.log
OWNER=$(stat -c %U "$DATA")

start_server() {
	local -a as=()
	[[ $(id -u) == 0 && $OWNER != root ]] && as=(runuser -u "$OWNER" --)
	# (pg_ctl warns that "another server might be running": the dead
	# postmaster's pid file is still there, and the server replaces it.)
	if ! "${as[@]}" "$PGBIN/pg_ctl" -D "$DATA" -l "$LOGFILE" -w -t 120 start >"$WORK/pg_ctl.out" 2>&1; then
		cat "$WORK/pg_ctl.out" >&2
		return 1
	fi
}

# Load processes of this script (subshells running psql), killed on exit.
LOAD_PIDS=()
cleanup() {
	local p
	for p in "${LOAD_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	# Leave a running server to the suites after this one.
	if ! psql -X -At -d postgres -c 'SELECT 1' >/dev/null 2>&1; then
		start_server || echo "crash_queue.sh: could not restart the server in $DATA" >&2
	fi
	psql -X -q -d postgres -c 'SET client_min_messages = warning' \
		-c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT

psql_q -d postgres -c 'SET client_min_messages = warning' \
	-c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
TENANT=$(psql_v <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION crm;
SELECT crm.create_tenant('crash queue') AS t \gset
SELECT crm.create_default_rules(:'t') >= 0 AS rules \gset
SET crm.tenant_id = :'t';

-- Each client has its own contact and deal (a contact's engagement row is
-- updated by every activity: clients sharing one would wait on each other).
INSERT INTO crm.contact (first_name, email)
SELECT 'Crash ' || c, 'crash' || c || '@crash.example' FROM generate_series(1, 16) c;
INSERT INTO crm.opportunity (name, amount, currency)
SELECT 'Crash deal ' || c, 1000, 'USD' FROM generate_series(1, 16) c;

CREATE SCHEMA crash;
-- The marker of a change, written in the change's transaction.
CREATE TABLE crash.change (n bigint PRIMARY KEY, kind text NOT NULL CHECK (kind IN ('quote', 'order')));

CREATE FUNCTION crash.change(n bigint, client integer, fail boolean DEFAULT false) RETURNS bigint
    LANGUAGE plpgsql AS $$
DECLARE
    -- quotes and orders in turns of 8, so that both kinds roll back both ways
    kind text := CASE WHEN n / 8 % 2 = 0 THEN 'quote' ELSE 'order' END;
BEGIN
    INSERT INTO crash.change VALUES (n, kind);
    IF kind = 'quote' THEN
        PERFORM crm.track_activity((SELECT id FROM crm.contact WHERE first_name = 'Crash ' || client),
                                   'quote_created', jsonb_build_object('n', n));
    ELSE
        PERFORM crm.consume_event('OrderCreated',
                                  jsonb_build_object('opportunityId',
                                                     (SELECT id FROM crm.opportunity WHERE name = 'Crash deal ' || client),
                                                     'orderId', n),
                                  'order-' || n);
    END IF;
    IF fail THEN
        RAISE EXCEPTION 'change % fails after firing its rules', n;
    END IF;
    RETURN n;
END
$$;

-- Which change a job belongs to: the n of its quote activity or order.
CREATE FUNCTION crash.job_change(p jsonb) RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT CASE p->>'event_type'
           WHEN 'OrderCreated' THEN (p->'payload'->>'orderId')::bigint
           ELSE (SELECT (a.details->>'n')::bigint FROM crm.activity a
                  WHERE a.id = (p->'payload'->>'activityId')::uuid) END
$$;
SELECT :'t';
SQL
)
[[ $TENANT =~ ^[0-9a-f-]{36}$ ]] || die "setup failed: $TENANT"
rules=$(psql_v -c "SELECT string_agg(event || ':' || coalesce(builtin_key, name), ' ' ORDER BY event, builtin_key)
                     FROM crm.workflow_rule WHERE active AND event IN ('quote_created', 'OrderCreated')")
if [[ $rules == 'OrderCreated:order_follow_up OrderCreated:order_won quote_created:quote_follow_up' ]]; then
	ok "the tenant's active rules for the changes: $rules"
else
	fail "the tenant's active rules for the changes are not the defaults: '$rules'"
fi

export PGOPTIONS="-c crm.tenant_id=$TENANT -c synchronous_commit=on -c client_min_messages=warning"

# A client's statements: change n = round*10^7 + client*10^6 + i; i % 4 = 3
# rolls back (by ROLLBACK when i % 8 = 3, by an error when i % 8 = 7).
client_script() { # ROUND CLIENT
	awk -v r="$1" -v c="$2" 'BEGIN {
		for (i = 1; i <= 200000; i++) {
			n = r * 10000000 + c * 1000000 + i
			if (i % 8 == 3)
				printf "BEGIN;\nSELECT crash.change(%d, %d) AS rolled_back \\gset\nROLLBACK;\n", n, c
			else if (i % 8 == 7)
				printf "SELECT crash.change(%d, %d, true);\n", n, c
			else
				printf "SELECT %cC|%d%c FROM crash.change(%d, %d);\n", 39, n, 39, n, c
		}
	}'
}

# A worker's statements: claim up to 20, complete them in one statement
# (printing each acknowledged completion).
worker_script() { # WORKER
	awk -v w="$1" 'BEGIN {
		for (i = 1; i <= 200000; i++) {
			printf "SELECT coalesce(array_agg(id), %c{}%c) AS ids FROM crm.claim_jobs(%ccrm%c, %c%s%c, 20, %c10 minutes%c) \\gset\n", 39, 39, 39, 39, 39, w, 39, 39, 39
			printf "SELECT %cD|%c || j FROM unnest(:%cids%c::uuid[]) j, crm.complete_job(j, NULL, %c%s%c);\n", 39, 39, 39, 39, 39, w, 39
		}
	}'
}

start_load() { # ROUND
	local c w
	LOAD_PIDS=()
	for ((c = 1; c <= CLIENTS; c++)); do
		(client_script "$1" "$c" | psql -X -At -d "$DB" >"$WORK/client-$1-$c.log" 2>"$WORK/client-$1-$c.err" || true) &
		LOAD_PIDS+=($!)
	done
	for ((w = 1; w <= WORKERS; w++)); do
		(worker_script "w$w" | psql -X -At -d "$DB" >"$WORK/worker-$1-$w.log" 2>"$WORK/worker-$1-$w.err" || true) &
		LOAD_PIDS+=($!)
	done
}

# SIGKILL the postmaster, then every process it had started; wait until
# they are all gone (the next postmaster refuses to start while one still
# holds the shared memory).
kill_server() {
	local pm pids p i
	pm=$(postmaster_pid)
	pids=$(ps -o pid= --ppid "$pm" | tr '\n' ' ')
	# shellcheck disable=SC2086 # a list of pids
	kill -KILL "$pm" $pids 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		local alive=0
		for p in $pm $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
		((alive)) || return 0
		sleep 0.1
	done
	die "server processes still alive 10 s after SIGKILL: $pm $pids"
}

for ((round = 1; round <= ROUNDS; round++)); do
	start_load "$round"
	sleep "$LOAD_SECONDS"
	kill_server
	# The clients and workers lose their connection and stop.
	for p in "${LOAD_PIDS[@]}"; do
		for ((i = 0; i < 100; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	LOAD_PIDS=()
	recoveries=$(grep -c 'database system was not properly shut down' "$LOGFILE" || true)
	if start_server && psql_v -c 'SELECT 1' >/dev/null &&
		(($(grep -c 'database system was not properly shut down' "$LOGFILE" || true) > recoveries)); then
		ok "round $round: server killed with SIGKILL under load after ${LOAD_SECONDS}s, restarted, crash recovery ran"
	else
		fail "round $round: the server did not come back after SIGKILL, or ran no crash recovery"
		tail -n 20 "$LOGFILE" || true
		break
	fi

	acked=$(cat "$WORK"/client-*.log | grep -c '^C|' || true)
	completed=$(cat "$WORK"/worker-*.log | grep -c '^D|' || true)
	if ((acked >= 10 && completed >= 5)); then
		ok "round $round: load ran (so far $acked changes acknowledged, $completed completions acknowledged)"
	else
		fail "round $round: too little load to prove anything ($acked changes, $completed completions acknowledged)"
		head -n 5 "$WORK"/client-"$round"-*.err "$WORK"/worker-"$round"-*.err || true
	fi
	# Errors other than the planned ones and the lost connection are failures.
	unexpected=$(cat "$WORK"/client-"$round"-*.err "$WORK"/worker-"$round"-*.err |
		grep -E '^(psql:.*)?(ERROR|FATAL|error)' |
		grep -vE 'fails after firing its rules|connection to server was lost|server closed the connection|terminating connection|connection to server .* failed|could not send data to server|SSL SYSCALL|no connection to the server' || true)
	if [[ -z $unexpected ]]; then
		ok "round $round: clients and workers saw no error but the planned ones and the lost connection"
	else
		fail "round $round: unexpected errors:"
		head -n 10 <<<"$unexpected" | sed 's/^/    /'
	fi

	# The acknowledgements, for the checks.
	sed -n 's/^C|//p' "$WORK"/client-*.log >"$WORK/acked"
	sed -n 's/^D|//p' "$WORK"/worker-*.log >"$WORK/completed"
	# (\copy takes no variables: the two file names are put in the script.)
	result=$( (printf '%s\n' 'CREATE TEMP TABLE acked (n bigint);' 'CREATE TEMP TABLE completed (id uuid);' \
		"\\copy acked FROM '$WORK/acked'" "\\copy completed FROM '$WORK/completed'"
		cat <<'SQL'
CREATE TEMP TABLE jobs AS
    SELECT 'ready' AS place, id, rule_id, idempotency_key, crash.job_change(params) AS n FROM crm.job
    UNION ALL
    SELECT 'archived', id, rule_id, idempotency_key, crash.job_change(params) FROM crm.job_archive;
CREATE TEMP TABLE expected AS
    SELECT c.n, r.id AS rule_id
      FROM crash.change c
      JOIN crm.workflow_rule r
        ON r.active AND r.event = CASE c.kind WHEN 'quote' THEN 'quote_created' ELSE 'OrderCreated' END;
SELECT format('acked_missing %s', count(*)) FROM acked a WHERE NOT EXISTS (SELECT 1 FROM crash.change c WHERE c.n = a.n);
SELECT format('rolled_back_markers %s', count(*)) FROM crash.change WHERE n % 1000000 % 4 = 3;
SELECT format('rolled_back_activities %s', count(*)) FROM crm.activity
 WHERE activity_type = 'quote_created' AND (details->>'n')::bigint % 1000000 % 4 = 3;
SELECT format('rolled_back_inbound %s', count(*)) FROM crm.inbound_event
 WHERE split_part(external_id, '-', 2)::bigint % 1000000 % 4 = 3;
SELECT format('markers %s', count(*)) FROM crash.change;
SELECT format('expected_jobs %s', count(*)) FROM expected;
SELECT format('jobs %s', count(*)) FROM jobs;
SELECT format('not_exactly_one %s', count(*)) FROM (
    SELECT e.n, e.rule_id FROM expected e LEFT JOIN jobs j ON j.n = e.n AND j.rule_id = e.rule_id
     GROUP BY 1, 2 HAVING count(j.id) <> 1) x;
SELECT format('orphan_jobs %s', count(*)) FROM jobs j
 WHERE j.n IS NULL OR NOT EXISTS (SELECT 1 FROM expected e WHERE e.n = j.n AND e.rule_id = j.rule_id);
SELECT format('ready_and_archived %s', count(*)) FROM (SELECT id FROM jobs GROUP BY id HAVING count(*) > 1) x;
SELECT format('keys_wrong %s', (SELECT count(*) FROM crm.job_key) - (SELECT count(*) FROM jobs)
       + (SELECT count(*) FROM jobs j WHERE NOT EXISTS (SELECT 1 FROM crm.job_key k
               WHERE k.idempotency_key = j.idempotency_key AND k.job_id = j.id))::bigint);
SELECT format('completed %s', count(*)) FROM completed;
SELECT format('completed_ready_again %s', count(*)) FROM completed c JOIN crm.job j ON j.id = c.id;
SELECT format('completed_not_archived %s', count(*)) FROM completed c
 WHERE NOT EXISTS (SELECT 1 FROM crm.job_archive a WHERE a.id = c.id AND a.outcome = 'completed');
SELECT format('running %s', count(*)) FROM crm.job WHERE locked_by IS NOT NULL;
SQL
	) | psql_v) || {
		fail "round $round: the checks' query failed"
		break
	}
	declare -A v=()
	while read -r k val; do v[$k]=$val; done <<<"$result"
	expect_zero() { # KEY DESCRIPTION
		if [[ ${v[$1]:-x} == 0 ]]; then ok "round $round: $2"; else fail "round $round: $2 (found ${v[$1]:-nothing})"; fi
	}
	expect_zero acked_missing "every acknowledged change is there ($acked)"
	expect_zero rolled_back_markers "no rolled-back change committed its marker"
	expect_zero rolled_back_activities "no rolled-back quote left its activity"
	expect_zero rolled_back_inbound "no rolled-back order left its inbound event"
	expect_zero not_exactly_one "every committed change has exactly one job per matching rule (${v[markers]:-?} changes, ${v[expected_jobs]:-?} rule matches, ${v[jobs]:-?} jobs)"
	expect_zero orphan_jobs "no job without a committed change (none of a rolled-back change)"
	expect_zero ready_and_archived "no job both ready and archived"
	expect_zero keys_wrong "each job has its one idempotency key, and each key its job"
	expect_zero completed_ready_again "no acknowledged completion is ready again (${v[completed]:-?} completions)"
	expect_zero completed_not_archived "every acknowledged completion is archived as completed"
	unset v
done

# After the last crash the queue still works: jobs claimed by a dead worker
# stay leased (their lease has not run out); all the others are claimed and
# completed now.
left=$(psql_v <<'SQL'
SELECT count(*) FROM (SELECT crm.complete_job(id, NULL, 'after') FROM crm.claim_jobs('crm', 'after', 100000)) x;
SELECT count(*) FROM crm.job WHERE queue = 'crm' AND locked_by IS NULL;
SQL
)
read -r -d '' done_now ready_now <<<"$left" || true
if [[ $ready_now == 0 && $done_now =~ ^[0-9]+$ ]]; then
	ok "after the restart the queue works: $done_now leftover jobs claimed and completed, none ready"
else
	fail "after the restart the queue does not drain: '$left'"
fi

echo "$((checks - failed)) of $checks checks passed"
((failed == 0))
