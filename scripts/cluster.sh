#!/usr/bin/env bash
# scripts/cluster.sh {start|stop|status|env|bindir|logdir|destroy}
#
# A throwaway PostgreSQL 15 cluster for crm's demo, tests and benchmarks.
# Everything lives in $REPO/.pg: data/, run/ (the Unix socket; the server
# listens on no network address), log/postgresql.log. No system service is
# used or touched.
#
# CRM_CLUSTER=test selects a second cluster, $REPO/.pg-test, which
# scripts/test.sh makes and destroys for every run; the demo's .pg/ (and
# its crm_demo database) is left alone.
#
#   start    initialise if needed, then start (already running is fine)
#   stop     fast shutdown (not running is fine)
#   status   say whether it runs; exit 0 if it does
#   env      print export lines for the shell: eval "$(scripts/cluster.sh env)"
#   bindir   print the directory of the PostgreSQL 15 programs used
#   logdir   print the directory of the server log
#   destroy  stop and delete the cluster's directory
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
case ${CRM_CLUSTER:-demo} in
demo)
	PGROOT=$REPO/.pg
	PORT=54329 # names the socket file only: listen_addresses is empty
	;;
test)
	PGROOT=$REPO/.pg-test
	PORT=54339
	;;
*)
	echo "cluster.sh: CRM_CLUSTER must be demo or test, not '$CRM_CLUSTER'" >&2
	exit 2
	;;
esac
DATA=$PGROOT/data
RUN=$PGROOT/run
LOGDIR=$PGROOT/log
LOG=$LOGDIR/postgresql.log
STAMP=$PGROOT/layout

die() {
	echo "cluster.sh: $*" >&2
	exit 1
}

# PostgreSQL 15's programs: those of $PG_CONFIG if the caller set it, else
# Debian's directory for 15 (the unversioned pg_config may be another major).
if [[ -n ${PG_CONFIG:-} ]]; then
	PGBIN=$("$PG_CONFIG" --bindir)
elif [[ -x /usr/lib/postgresql/15/bin/initdb ]]; then
	PGBIN=/usr/lib/postgresql/15/bin
elif command -v pg_config >/dev/null; then
	PGBIN=$(pg_config --bindir)
else
	PGBIN=/usr/lib/postgresql/15/bin
fi

# PostgreSQL refuses to run as root, so as root the server runs as the OS
# user postgres; otherwise as whoever calls this script.
if [[ $(id -u) == 0 ]]; then
	SERVER_USER=postgres
	as_server() { runuser -u postgres -- "$@"; }
else
	SERVER_USER=$(id -un)
	as_server() { "$@"; }
fi

SETTINGS="
# crm throwaway cluster (scripts/cluster.sh)
listen_addresses = ''
port = $PORT
unix_socket_directories = '${RUN//\'/\'\'}'
max_connections = 50
fsync = off
synchronous_commit = off
full_page_writes = off
shared_preload_libraries = 'pg_cron,crm'
cron.database_name = 'postgres'"

INITDB_OPTS=(-U postgres --auth=trust -E UTF8 --locale=C)

# What a data directory made by this version of the script looks like. A
# data directory without the same stamp (older layout, half-finished initdb)
# is recreated.
LAYOUT="layout 1; major 15; server user $SERVER_USER; initdb ${INITDB_OPTS[*]};$SETTINGS"

# The pid of our postmaster if it runs. A pid file left by a crash may name
# a pid that some other process has since taken, so check the process name.
server_pid() {
	local pid comm
	[[ -f $DATA/postmaster.pid ]] || return 1
	pid=$(head -n 1 "$DATA/postmaster.pid")
	[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
	if [[ -r /proc/$pid/comm ]]; then
		comm=$(<"/proc/$pid/comm")
		[[ $comm == postgres ]] || return 1
	fi
	echo "$pid"
}

running() {
	server_pid >/dev/null
}

# Lock files from a crashed server make the next one refuse to start when
# their pid has been reused; no server runs, so they can go.
remove_stale_locks() {
	rm -f "$DATA/postmaster.pid" "$RUN/.s.PGSQL.$PORT.lock" "$RUN/.s.PGSQL.$PORT"
}

ensure_server_user() {
	[[ $(id -u) == 0 ]] || return 0
	id -u postgres >/dev/null 2>&1 && return 0
	echo "cluster.sh: creating the system user postgres"
	useradd --system --user-group --no-create-home --home-dir /nonexistent \
		--shell /usr/sbin/nologin postgres
}

init() {
	[[ -x $PGBIN/initdb ]] || die "no PostgreSQL 15 server in $PGBIN: run scripts/setup.sh"
	# A Unix socket path is limited to 107 bytes.
	((${#RUN} + ${#PORT} + 10 <= 107)) ||
		die "socket path $RUN/.s.PGSQL.$PORT is too long; move the checkout to a shorter path"
	ensure_server_user
	rm -rf "$DATA" "$STAMP"
	mkdir -p "$RUN" "$LOGDIR"
	if [[ $(id -u) == 0 ]]; then
		chown -R postgres: "$PGROOT"
		as_server test -w "$PGROOT" ||
			die "user postgres cannot reach $PGROOT; every directory above it must be world-executable"
	fi
	echo "cluster.sh: initdb $DATA"
	if ! as_server "$PGBIN/initdb" -D "$DATA" "${INITDB_OPTS[@]}" >"$LOGDIR/initdb.log" 2>&1; then
		cat "$LOGDIR/initdb.log" >&2
		die "initdb failed"
	fi
	# Later settings in postgresql.conf override the defaults above them.
	printf '%s\n' "$SETTINGS" | as_server tee -a "$DATA/postgresql.conf" >/dev/null
	printf '%s\n' "$LAYOUT" >"$STAMP"
}

# A non-root user cannot manage a cluster that root made (it belongs to the
# user postgres); say so instead of failing halfway.
check_owner() {
	[[ $(id -u) == 0 || ! -e $PGROOT || -O $PGROOT ]] ||
		die "$PGROOT belongs to another user (made as root?); remove it as root"
}

start() {
	check_owner
	if [[ -d $DATA && "$(cat "$STAMP" 2>/dev/null)" != "$LAYOUT" ]]; then
		echo "cluster.sh: $DATA is from an older layout; recreating it"
		running && as_server "$PGBIN/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null
		rm -rf "$DATA"
	fi
	if running; then
		echo "cluster.sh: already running (socket $RUN, port $PORT)"
		return 0
	fi
	[[ -d $DATA ]] || init
	remove_stale_locks
	if ! as_server "$PGBIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 120 start >/dev/null; then
		tail -n 30 "$LOG" >&2 || true
		die "the server did not start; see $LOG"
	fi
	echo "cluster.sh: running (socket $RUN, port $PORT, log $LOG)"
}

stop() {
	if [[ -d $DATA ]] && running; then
		as_server "$PGBIN/pg_ctl" -D "$DATA" -m fast -w -t 120 stop >/dev/null
		echo "cluster.sh: stopped"
	else
		echo "cluster.sh: not running"
	fi
}

case ${1:-} in
start) start ;;
stop) stop ;;
status)
	if running; then
		echo "cluster.sh: running (pid $(server_pid), socket $RUN, port $PORT)"
	else
		echo "cluster.sh: not running"
		exit 3
	fi
	;;
env)
	printf 'export PGHOST=%q\n' "$RUN"
	printf 'export PGPORT=%q\n' "$PORT"
	printf 'export PGUSER=postgres\n'
	# So that psql, pg_dump and friends are PostgreSQL 15's.
	# shellcheck disable=SC2016 # $PATH is for the eval, not for now
	printf 'export PATH=%q:"$PATH"\n' "$PGBIN"
	;;
bindir) echo "$PGBIN" ;;
logdir) echo "$LOGDIR" ;;
destroy)
	check_owner
	stop
	rm -rf "$PGROOT"
	echo "cluster.sh: removed $PGROOT"
	;;
*)
	echo "usage: $0 {start|stop|status|env|bindir|logdir|destroy}" >&2
	exit 2
	;;
esac
