#!/usr/bin/env bash
# test/setup_check.sh: scripts/setup.sh decides from the files the build
# really needs, not from files another package also ships.
#
# A fake pg_config points at a tree we build under a temporary directory:
# first like a machine with only postgresql-15 and its client (pgxs.mk and
# pg_regress present, no server headers), then with the headers added, then
# without the isolation tester.  `setup.sh --check` prints its decision and
# installs nothing.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0

root=$T/pg
mkdir -p "$root/bin" "$root/lib/pgxs/src/makefiles" "$root/lib/pgxs/src/test/regress" \
	"$root/lib/pgxs/src/test/isolation" "$root/include/server" "$root/share/extension" "$T/inc/uuid"
touch "$root/lib/pgxs/src/makefiles/pgxs.mk" "$root/share/extension/pgtap.control" \
	"$root/share/extension/pg_cron.control" "$root/share/extension/pgq.control" "$T/inc/uuid/uuid.h"
for p in postgres initdb pg_ctl psql pg_dump; do
	printf '#!/bin/sh\nexit 0\n' >"$root/bin/$p"
	chmod +x "$root/bin/$p"
done
printf '#!/bin/sh\nexit 0\n' >"$root/lib/pgxs/src/test/regress/pg_regress"
printf '#!/bin/sh\nexit 0\n' >"$root/lib/pgxs/src/test/isolation/pg_isolation_regress"
chmod +x "$root"/lib/pgxs/src/test/*/pg_*regress
cat >"$root/bin/pg_config" <<CONF
#!/bin/sh
case \$1 in
--version) echo "PostgreSQL 15.99" ;;
--bindir) echo "$root/bin" ;;
--sharedir) echo "$root/share" ;;
--pgxs) echo "$root/lib/pgxs/src/makefiles/pgxs.mk" ;;
--includedir-server) echo "$root/include/server" ;;
*) exit 1 ;;
esac
CONF
chmod +x "$root/bin/pg_config"
# pg_prove, gcc and make are looked up on PATH: give stand-ins for them too.
mkdir -p "$T/path"
for p in pg_prove gcc make; do printf '#!/bin/sh\nexit 0\n' >"$T/path/$p"; chmod +x "$T/path/$p"; done

decide() { # EXPECTED-STATUS EXPECTED-PACKAGES LABEL
	local out status=0
	out=$(PATH="$T/path:/usr/bin:/bin" PG_CONFIG="$root/bin/pg_config" CRM_SETUP_INCLUDEDIR="$T/inc" \
		bash "$REPO/scripts/setup.sh" --check 2>&1) || status=$?
	if [[ $status == "$1" && $out == *"$2"* ]]; then
		echo "ok - $3"
	else
		echo "not ok - $3: exit $status, output:"
		sed 's/^/    /' <<<"$out"
		fails=$((fails + 1))
	fi
}

decide 1 "would install: postgresql-server-dev-15" "client's pgxs.mk without server headers: install postgresql-server-dev-15"
decide 1 "server headers (postgres.h)" "the reason names the missing headers"
touch "$root/include/server/postgres.h" "$root/include/server/pg_config.h"
decide 0 "nothing missing" "with the headers present nothing is missing"
rm "$root/lib/pgxs/src/test/isolation/pg_isolation_regress"
decide 1 "isolation tester" "without pg_isolation_regress: install postgresql-server-dev-15"
touch "$root/lib/pgxs/src/test/isolation/pg_isolation_regress"
chmod +x "$root/lib/pgxs/src/test/isolation/pg_isolation_regress"
rm "$T/inc/uuid/uuid.h"
decide 1 "would install: uuid-dev" "without uuid/uuid.h: install uuid-dev"
touch "$T/inc/uuid/uuid.h"
rm "$root/share/extension/pgtap.control"
decide 1 "would install: postgresql-15-pgtap" "without pgtap.control: install postgresql-15-pgtap"

((fails == 0)) || { echo "$fails setup decision(s) wrong"; exit 1; }
echo "all setup decisions right"
