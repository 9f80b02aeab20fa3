#!/usr/bin/env bash
# scripts/setup.sh: make sure this machine can build, test and demo crm.
#
# Checks for PostgreSQL 15 (server, client, build files, pgTAP, pg_cron, PgQ),
# pg_prove, the libuuid headers, gcc and make, and installs what is missing
# with apt-get: directly as root, through sudo otherwise. Without either it
# prints the command to run and fails. Installing postgresql-15 may create
# and start Debian's own cluster "main"; crm never uses it (see cluster.sh).
set -euo pipefail

PG_MAJOR=15

die() {
	echo "setup.sh: $*" >&2
	exit 1
}

# The pg_config to build with: $PG_CONFIG if the caller set it, else
# Debian's one for 15 (/usr/bin/pg_config picks the newest installed major).
pg_config_path() {
	if [[ -n ${PG_CONFIG:-} ]]; then
		echo "$PG_CONFIG"
	elif [[ -x /usr/lib/postgresql/$PG_MAJOR/bin/pg_config ]]; then
		echo "/usr/lib/postgresql/$PG_MAJOR/bin/pg_config"
	else
		command -v pg_config || true
	fi
}

# Fills packages (to install) and missing (what they provide).  Each test
# looks for the file the build or the tests really use, not for one that
# another package also ships: Debian's client package carries pgxs.mk and
# pg_regress, but the server headers come only with postgresql-server-dev.
check() {
	packages=()
	missing=()
	need() {
		local p
		for p in "${packages[@]}"; do [[ $p == "$1" ]] && { missing+=("$2"); return; }; done
		packages+=("$1")
		missing+=("$2")
	}

	local pgc version="" bindir sharedir pgxs="" incserver=""
	pgc=$(pg_config_path)
	if [[ -n $pgc ]] && version=$("$pgc" --version 2>/dev/null) &&
		[[ $version == "PostgreSQL $PG_MAJOR."* ]]; then
		bindir=$("$pgc" --bindir)
		sharedir=$("$pgc" --sharedir)
		pgxs=$("$pgc" --pgxs)
		incserver=$("$pgc" --includedir-server)
	elif [[ -n ${PG_CONFIG:-} ]]; then
		die "PG_CONFIG=$PG_CONFIG is ${version:-not runnable}; crm needs PostgreSQL $PG_MAJOR"
	else
		# Not installed yet: Debian's paths, which the packages below create.
		bindir=/usr/lib/postgresql/$PG_MAJOR/bin
		sharedir=/usr/share/postgresql/$PG_MAJOR
	fi

	[[ -n $pgxs && -f $pgxs ]] || need postgresql-server-dev-$PG_MAJOR "PostgreSQL $PG_MAJOR build files (pgxs.mk)"
	[[ -n $incserver && -f $incserver/postgres.h && -f $incserver/pg_config.h ]] ||
		need postgresql-server-dev-$PG_MAJOR "PostgreSQL $PG_MAJOR server headers (postgres.h)"
	[[ -n $pgxs && -x $(dirname "$pgxs")/../test/isolation/pg_isolation_regress ]] ||
		need postgresql-server-dev-$PG_MAJOR "the isolation tester (pg_isolation_regress)"
	[[ -x $bindir/postgres && -x $bindir/initdb && -x $bindir/pg_ctl ]] ||
		need postgresql-$PG_MAJOR "PostgreSQL $PG_MAJOR server"
	[[ -x $bindir/psql && -x $bindir/pg_dump ]] || need postgresql-client-$PG_MAJOR "psql $PG_MAJOR"
	[[ -f $sharedir/extension/pgtap.control ]] || need postgresql-$PG_MAJOR-pgtap pgTAP
	[[ -f $sharedir/extension/pg_cron.control ]] || need postgresql-$PG_MAJOR-cron pg_cron
	[[ -f $sharedir/extension/pgq.control ]] || need postgresql-$PG_MAJOR-pgq3 "PgQ (bench/queue.sh compares against it)"
	command -v pg_prove >/dev/null || need libtap-parser-sourcehandler-pgtap-perl pg_prove
	[[ -f ${CRM_SETUP_INCLUDEDIR:-/usr/include}/uuid/uuid.h ]] || need uuid-dev "uuid/uuid.h"
	command -v gcc >/dev/null || need gcc gcc
	command -v make >/dev/null || need make make
	return 0
}

# --check: print the decision and exit 0 when nothing is missing, 1 when
# something is (tests use it with a fake pg_config); installs nothing.
if [[ ${1:-} == --check ]]; then
	check
	if ((${#packages[@]} == 0)); then
		echo "setup.sh: nothing missing"
		exit 0
	fi
	printf 'setup.sh: missing: %s\n' "${missing[@]}"
	echo "setup.sh: would install: ${packages[*]}"
	exit 1
fi

check
if ((${#packages[@]} == 0)); then
	echo "setup.sh: everything crm needs is installed (pg_config: $(pg_config_path))"
	exit 0
fi

what=$(printf '%s, ' "${missing[@]}")
what=${what%, }
echo "setup.sh: missing: $what"
if [[ $(id -u) == 0 ]]; then
	sudo=()
elif command -v sudo >/dev/null; then
	sudo=(sudo)
else
	die "missing: $what; run: sudo apt-get install -y ${packages[*]}"
fi
command -v apt-get >/dev/null ||
	die "missing: $what; no apt-get here: install them (Debian names: ${packages[*]})"

# Debian 12 ships all of these; where the default PostgreSQL is not 15,
# they come from apt.postgresql.org, which must be configured first.
"${sudo[@]}" apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
	apt-get install -y --no-install-recommends "${packages[@]}"

check
((${#packages[@]} == 0)) || die "still missing after apt-get install: ${missing[*]}"
echo "setup.sh: installed ${#missing[@]} missing requirement(s)"
