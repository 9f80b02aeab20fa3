#!/usr/bin/env bash
# test/citus_check.sh: without Citus, scripts/citus.sh (make test-citus)
# fails and says how to get Citus, and starts nothing.  A fake pg_config
# points at an empty PostgreSQL tree.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lib" "$tmp/share/extension" "$tmp/bin"
cat >"$tmp/bin/pg_config" <<CONF
#!/bin/sh
case "\$1" in
--pkglibdir) echo "$tmp/lib" ;;
--sharedir) echo "$tmp/share" ;;
--bindir) echo "$tmp/bin" ;;
esac
CONF
chmod +x "$tmp/bin/pg_config"
fail() { echo "citus_check: $*"; exit 1; }

status=0
PG_CONFIG=$tmp/bin/pg_config CITUS_DIR=$tmp/citus "$REPO/scripts/citus.sh" test >"$tmp/out" 2>&1 || status=$?
((status != 0)) || fail "scripts/citus.sh test exited 0 without Citus"
grep -q 'Citus is not installed' "$tmp/out" || fail "no explanation: $(cat "$tmp/out")"
grep -q 'fetch github:citusdata/citus' "$tmp/out" || fail "does not say how to fetch Citus"
grep -q 'CITUS_GIT=' "$tmp/out" || fail "does not say how to build Citus"
[[ ! -e $tmp/citus ]] || fail "made a cluster directory without Citus"

# with citus.so and citus.control present, check passes
touch "$tmp/lib/citus.so" "$tmp/share/extension/citus.control"
PG_CONFIG=$tmp/bin/pg_config "$REPO/scripts/citus.sh" check || fail "check fails with Citus installed"
echo "citus_check: ok"
