#!/usr/bin/env bash
# test/cluster_separation.sh: the tests run on a cluster of their own, so
# that `make test` never touches the demo's cluster (.pg/) or its database.
#
# Checks what scripts/cluster.sh says for each cluster (directory, socket,
# port), that the server these tests talk to is the test cluster's, and that
# an unknown cluster name is refused.  Prints one line per check; exits
# non-zero if any fails.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
failed=0
check() { # DESCRIPTION COMMAND...
	local what=$1
	shift
	if "$@"; then echo "ok - $what"; else echo "FAIL - $what"; failed=$((failed + 1)); fi
}

demo_env=$(CRM_CLUSTER=demo "$REPO/scripts/cluster.sh" env)
test_env=$(CRM_CLUSTER=test "$REPO/scripts/cluster.sh" env)
demo_host=$(sed -n 's/^export PGHOST=//p' <<<"$demo_env")
test_host=$(sed -n 's/^export PGHOST=//p' <<<"$test_env")
demo_port=$(sed -n 's/^export PGPORT=//p' <<<"$demo_env")
test_port=$(sed -n 's/^export PGPORT=//p' <<<"$test_env")

check "the demo cluster's socket is in .pg/ ($demo_host)" test "$demo_host" = "$REPO/.pg/run"
check "the test cluster's socket is in .pg-test/ ($test_host)" test "$test_host" = "$REPO/.pg-test/run"
check "the two clusters have different ports ($demo_port, $test_port)" test "$demo_port" != "$test_port"
check "the default cluster is the demo's" test "$(env -u CRM_CLUSTER "$REPO/scripts/cluster.sh" logdir)" = "$REPO/.pg/log"
check "an unknown cluster name is refused" bash -c "! CRM_CLUSTER=nope '$REPO/scripts/cluster.sh' env >/dev/null 2>&1"
# under scripts/test.sh, the server the suites use is the test cluster's
if [[ ${CRM_CLUSTER:-} == test ]]; then
	dir=$(psql -X -At -d postgres -c 'SHOW data_directory')
	check "the running tests use $REPO/.pg-test/data ($dir)" test "$dir" = "$REPO/.pg-test/data"
fi
exit $((failed > 0))
