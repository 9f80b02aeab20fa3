#!/usr/bin/env bash
# scripts/citus.sh {test|start|stop|env|check}
#
# crm distributed with Citus on a throwaway cluster of its own: one
# coordinator and two workers on loopback (127.0.0.1), data, sockets and logs
# under $CITUS_DIR (default $REPO/.citus), ports $CITUS_PORTS (default
# "55400 55401 55402": coordinator first).  Nothing is fetched or built here:
# Citus must already be installed in the PostgreSQL of $PG_CONFIG.
#
#   check  exit 0 if Citus is installed, else say how to get it and exit 1
#   start  make (afresh) and start the three nodes, register the workers
#   stop   stop the three nodes (not running is fine)
#   env    print export lines that point psql at the coordinator
#   test   check, start, then the comparison of test/citus/compare.sql run
#          in a distributed database (crm_citus, after crm.distribute())
#          and in a single-node database (crm_single, no Citus, same
#          coordinator instance); prints every difference; stops the nodes;
#          exit 0 only with 0 differences (make test-citus)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
DIR=${CITUS_DIR:-$REPO/.citus}
read -r -a PORTS <<<"${CITUS_PORTS:-55400 55401 55402}"
((${#PORTS[@]} == 3)) || { echo "citus.sh: CITUS_PORTS must name three ports" >&2; exit 2; }
COORD=${PORTS[0]}

if [[ -n ${PG_CONFIG:-} ]]; then
	PGBIN=$("$PG_CONFIG" --bindir)
elif [[ -x /usr/lib/postgresql/15/bin/pg_config ]]; then
	PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
	PGBIN=/usr/lib/postgresql/15/bin
else
	PG_CONFIG=pg_config
	PGBIN=$(pg_config --bindir)
fi
PSQL=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres)

if [[ $(id -u) == 0 ]]; then
	as_server() { runuser -u postgres -- "$@"; }
else
	as_server() { "$@"; }
fi

die() {
	echo "citus.sh: $*" >&2
	exit 1
}

check() {
	local lib ext
	lib=$("$PG_CONFIG" --pkglibdir)
	ext=$("$PG_CONFIG" --sharedir)/extension
	if [[ -f $lib/citus.so && -f $ext/citus.control ]]; then
		return 0
	fi
	cat >&2 <<EOF
citus.sh: Citus is not installed in the PostgreSQL of $PG_CONFIG
  ($lib/citus.so or $ext/citus.control is missing).
Citus is not a Debian package; build it from its public source (tag v13.0.5):
  1. fetch github:citusdata/citus        (the search tool's fetch; it prints a git directory)
  2. as root: CITUS_GIT=<that git directory> ../shared/tools/citus-build.sh
     (it installs into /usr/lib/postgresql/15; for another PostgreSQL, build
     the same source with ./configure PG_CONFIG=\$PG_CONFIG && make install)
then run make test-citus again.
EOF
	return 1
}

node_stop() { # PORT
	local data=$DIR/$1
	[[ -f $data/postmaster.pid ]] || return 0
	as_server "$PGBIN/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
}

stop() {
	local p
	for p in "${PORTS[@]}"; do node_stop "$p"; done
}

start() {
	local p
	check || exit 1
	stop
	rm -rf "$DIR"
	mkdir -p "$DIR"
	if [[ $(id -u) == 0 ]]; then
		id -u postgres >/dev/null 2>&1 || die "no system user postgres (scripts/cluster.sh start makes it)"
		chown postgres: "$DIR"
	fi
	for p in "${PORTS[@]}"; do
		as_server "$PGBIN/initdb" -D "$DIR/$p" -U postgres --auth=trust -E UTF8 --locale=C \
			>"$DIR/initdb-$p.log" 2>&1 || { cat "$DIR/initdb-$p.log" >&2; die "initdb failed"; }
		as_server tee -a "$DIR/$p/postgresql.conf" >/dev/null <<CONF
# crm Citus test node (scripts/citus.sh)
shared_preload_libraries = 'citus,crm'
listen_addresses = '127.0.0.1'
port = $p
unix_socket_directories = ''
max_connections = 60
fsync = off
synchronous_commit = off
full_page_writes = off
citus.shard_count = 4
CONF
		as_server "$PGBIN/pg_ctl" -D "$DIR/$p" -l "$DIR/$p.log" -w -t 120 start >/dev/null ||
			{ tail -n 30 "$DIR/$p.log" >&2; die "node $p did not start"; }
		# The distributed database and the single-node one; Citus does not
		# propagate CREATE DATABASE, so each node makes crm_citus itself.
		"${PSQL[@]}" -p "$p" -d postgres -c 'CREATE DATABASE crm_citus'
		"${PSQL[@]}" -p "$p" -d crm_citus -c 'CREATE EXTENSION citus'
	done
	"${PSQL[@]}" -p "$COORD" -d postgres -c 'CREATE DATABASE crm_single'
	"${PSQL[@]}" -p "$COORD" -d crm_citus -c "SELECT pg_catalog.citus_set_coordinator_host('127.0.0.1', $COORD)" \
		-c "SELECT pg_catalog.citus_add_node('127.0.0.1', ${PORTS[1]})" \
		-c "SELECT pg_catalog.citus_add_node('127.0.0.1', ${PORTS[2]})" >/dev/null
	echo "citus.sh: coordinator 127.0.0.1:$COORD, workers :${PORTS[1]} :${PORTS[2]} (data and logs in $DIR)"
}

run_compare() { # DATABASE OUTPUT
	local db=$1 out=$2
	# Errors go into the output too (they are results); ids are masked, and
	# so are the shard numbers Citus adds to a relation's or constraint's
	# name in its messages (crm.account_102030 is crm.account).
	PGOPTIONS='-c client_min_messages=warning' \
		"$PGBIN/psql" -X -q -h 127.0.0.1 -p "$COORD" -U postgres -d "$db" \
		-v VERBOSITY=terse -f "$REPO/test/citus/compare.sql" 2>&1 |
		sed -E -e 's/with PID [0-9]+/with PID <pid>/' -e 's/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/<uuid>/g' \
			-e 's/([a-z])_[0-9]{6,}\b/\1/g' >"$out"
}

test_citus() {
	local out=$DIR/out status=0 n diffs tables again before placed after
	check || exit 1
	trap stop EXIT
	start
	mkdir -p "$out"
	# Roles are cluster-wide: made once, from the distributed database, so
	# that Citus makes them on the workers too.
	echo "=== crm on every node, roles"
	if ! "${PSQL[@]}" -p "$COORD" -d crm_citus -f "$REPO/test/citus/setup.sql"; then
		echo "test-citus: CREATE EXTENSION crm or crm.setup_roles() failed on the Citus coordinator; nothing compared"
		exit 1
	fi
	# The single-node run first (same roles, no Citus in crm_single): it
	# shows what is expected even when the distribution below fails.
	"${PSQL[@]}" -p "$COORD" -d crm_single -c 'CREATE EXTENSION crm' -c 'SELECT crm.setup_roles()' >/dev/null
	echo "=== test/citus/compare.sql on the single node"
	run_compare crm_single "$out/single.out"
	n=$(grep -c '^## ' "$out/single.out" || true)
	((n > 0)) || die "no comparison ran (see $out/single.out)"
	echo "=== crm.distribute()"
	# A CRM that holds rows is refused (55000), and nothing is placed.
	"${PSQL[@]}" -p "$COORD" -d crm_citus -c "SELECT crm.create_tenant('Too early')" >/dev/null
	if "${PSQL[@]}" -p "$COORD" -d crm_citus -c 'SELECT crm.distribute()' >"$out/early.out" 2>&1 ||
		! grep -q 'cannot distribute table crm\.[a-z_]* because it holds rows' "$out/early.out"; then
		cat "$out/early.out"
		die "crm.distribute() did not refuse a CRM that holds rows"
	fi
	"${PSQL[@]}" -p "$COORD" -d crm_citus -c 'DELETE FROM crm.tenant' >/dev/null
	if ! "${PSQL[@]}" -p "$COORD" -d crm_citus -c 'SELECT count(*) AS distributed FROM crm.distribute()'; then
		echo "test-citus: crm.distribute() failed; $n comparisons not run (the single-node output is $out/single.out)"
		exit 1
	fi
	tables=$("${PSQL[@]}" -p "$COORD" -d crm_citus -At -c \
		"SELECT count(*) FROM pg_catalog.pg_dist_partition WHERE logicalrelid::regclass::text LIKE 'crm.%'")
	# Row-level security on the shards: every shard keeps the policies of its
	# table, permissive or restrictive alike (Citus 13.0.5 once dropped
	# AS RESTRICTIVE: crm.distribute() refuses such policies).
	echo "=== policies of every shard against its table's"
	policy_sets >"$out/policies.out"
	if [[ -s $out/policies.out ]]; then
		cat "$out/policies.out"
		die "the shards' policies differ from their tables' (above: node, table, policy)"
	fi
	echo "=== test/citus/compare.sql on Citus"
	run_compare crm_citus "$out/citus.out"
	# A second call places nothing new, refuses nothing and loses no row.
	again=$("${PSQL[@]}" -p "$COORD" -d crm_citus -At -c 'SELECT count(*) FROM crm.account' \
		-c 'SELECT count(*) FROM crm.distribute()' -c 'SELECT count(*) FROM crm.account' | tr '\n' ' ')
	read -r before placed after <<<"$again"
	if ((before != after || placed != tables)); then
		die "second crm.distribute(): $placed tables (expected $tables), accounts $before -> $after"
	fi
	echo "=== second crm.distribute(): $placed tables, $after accounts kept"
	echo "=== outbox: an event behind a running transaction is held back, not skipped"
	if ! outbox_hold >"$out/outbox_hold.out" 2>&1; then
		cat "$out/outbox_hold.out"
		echo "citus.sh: the outbox skipped or lost an event (above)"
		status=1
	fi
	cat "$out/outbox_hold.out"
	if ! cmp -s <(grep -c '^## ' "$out/citus.out") <(echo "$n"); then
		echo "citus.sh: the two runs have different sections"
	fi
	diffs=$(compare_sections "$out/single.out" "$out/citus.out")
	diff -u --label single --label citus "$out/single.out" "$out/citus.out" >"$out/compare.diff" || status=1
	if ((status != 0)); then
		echo "=== differences (first 400 lines; all in $out/compare.diff)"
		head -n 400 "$out/compare.diff"
	fi
	echo "test-citus: $n comparisons, $diffs differences"
	((status == 0 && diffs == 0))
}

# The outbox's promise on Citus: a transaction that wrote a tenant's event
# and is still running on the tenant's worker holds back crm.poll (the
# worker's head stays below its transaction id), so an event emitted and
# committed after it is handed out only once it committed, after its event.
outbox_hold() {
	local app=("$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$COORD" -U crm_citus_app -d crm_citus)
	local t u pid before after
	t=$("${PSQL[@]}" -p "$COORD" -d crm_citus -At -c "SELECT crm.create_tenant('Held Co')")
	u=$("${PSQL[@]}" -p "$COORD" -d crm_citus -At \
		-c "BEGIN" -c "SET LOCAL crm.tenant_id = '$t'" \
		-c "INSERT INTO crm.app_user (tenant_id, name, email) VALUES ('$t', 'Hal', 'hal@held.example') RETURNING id" \
		-c "COMMIT")
	export PGOPTIONS='-c citus.propagate_set_commands=local'
	"${app[@]}" -c "BEGIN" -c "SET LOCAL crm.tenant_id = '$t'" -c "SELECT crm.subscribe('held') >= 0" -c "COMMIT" >/dev/null
	"${app[@]}" -c "BEGIN" -c "SET LOCAL crm.tenant_id = '$t'" -c "SET LOCAL crm.user_id = '$u'" \
		-c "INSERT INTO crm.lead (name, owner_id) VALUES ('Held lead', '$u')" -c "SELECT pg_sleep(6)" -c "COMMIT" >/dev/null &
	pid=$!
	sleep 2
	"${app[@]}" -c "BEGIN" -c "SET LOCAL crm.tenant_id = '$t'" -c "SELECT crm.emit_event('AfterHeld', '{}') > 0" -c "COMMIT" >/dev/null
	before=$("${app[@]}" -c "BEGIN" -c "SET LOCAL crm.tenant_id = '$t'" \
		-c "SELECT coalesce(string_agg(event_type, ' ' ORDER BY position), '') FROM crm.poll('held')" -c "COMMIT")
	wait "$pid"
	after=$("${app[@]}" -c "BEGIN" -c "SET LOCAL crm.tenant_id = '$t'" \
		-c "SELECT coalesce(string_agg(event_type, ' ' ORDER BY position), '') FROM crm.poll('held')" -c "COMMIT")
	unset PGOPTIONS
	echo "while held: [$before]; after its commit: [$after]"
	[[ $before == "" && $after == "LeadCreated AfterHeld" ]]
}

# The policies of the crm tables on the coordinator, then each worker's
# shard placements of them; prints each worker's placement (node, table,
# policy) whose policy is not exactly its table's, and each table policy that
# a placement lacks.
policy_sets() {
	local p want
	want=$("${PSQL[@]}" -p "$COORD" -d crm_citus -At -c "$(policy_query '!~')")
	[[ -n $want ]] || { echo "coordinator: no policies"; return; }
	for p in "${PORTS[@]:1}"; do
		PGOPTIONS='-c citus.override_table_visibility=off' \
			"${PSQL[@]}" -p "$p" -d crm_citus -At -c "$(policy_query '~')" |
			diff <(printf '%s\n' "$want") - | sed -n "s/^[<>] /$p: /p"
	done
}

# The policies of crm's tables (OP '!~') or of their shards (OP '~', named
# table_<shard id>), one line each, the shard number left out.
policy_query() { # OP
	cat <<SQL
SELECT DISTINCT regexp_replace(c.relname, '_[0-9]+\$', ''), p.polname, p.polpermissive, p.polcmd,
       p.polroles::regrole[]::text, pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
  FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
 WHERE c.relnamespace = 'crm'::regnamespace AND c.relname $1 '_[0-9]+\$'
 ORDER BY 1, 2
SQL
}

# The number of sections whose output differs between two runs.
compare_sections() { # FILE FILE
	awk 'FNR == 1 { f++ }
		/^## / { name = $0; next }
		name != "" { text[f, name] = text[f, name] $0 "\n"; seen[name] = 1 }
		END { for (s in seen) if (text[1, s] != text[2, s]) d++; print d + 0 }' "$1" "$2"
}

case ${1:-} in
check) check ;;
start) start ;;
stop) stop ;;
env)
	printf 'export PGHOST=127.0.0.1 PGPORT=%q PGUSER=postgres PGDATABASE=crm_citus\n' "$COORD"
	printf 'export PATH=%q:"$PATH"\n' "$PGBIN"
	;;
test) test_citus ;;
*)
	echo "usage: $0 {test|start|stop|env|check}" >&2
	exit 2
	;;
esac
