#!/usr/bin/env bash
# test/dump_restore.sh: a crm database survives pg_dump -Fc / pg_restore.
#
# The tables belong to the extension and are registered with
# pg_extension_config_dump, so pg_dump writes their rows (less the built-in
# currencies and activity types, which CREATE EXTENSION makes again) and
# pg_restore must load them back: in foreign-key order, without a trigger
# changing a row on the way in, without doubling a built-in row, and with
# the policies, row-level security flags and grants of the source.
#
# Builds regress_dump_src (3 demo tenants, a custom currency and activity
# type, stage moves, a private tenant, a mapped login role), dumps it,
# restores it into an empty regress_dump_dst in replica mode (so that the
# triggers keep the server-owned columns as dumped), and compares the two.  Prints one
# line per check; exits non-zero if any check fails.  Needs psql, pg_dump and pg_restore on
# PATH and PGHOST/PGPORT/PGUSER naming a superuser of a running server.
set -euo pipefail

SRC=regress_dump_src
DST=regress_dump_dst
LOGIN=regress_dump_login
WORK=$(mktemp -d)
failed=0
checks=0

psql_q() { # DB SQL...: run quietly, stop at the first error
	local db=$1
	shift
	psql -X -q -v ON_ERROR_STOP=1 -d "$db" "$@"
}

drop_all() {
	psql -X -q -d postgres -c 'SET client_min_messages = warning' \
		-c "DROP DATABASE IF EXISTS $SRC WITH (FORCE)" \
		-c "DROP DATABASE IF EXISTS $DST WITH (FORCE)" \
		-c "DROP ROLE IF EXISTS $LOGIN" >/dev/null 2>&1 || true
}
trap 'drop_all; rm -rf "$WORK"' EXIT

ok() {
	checks=$((checks + 1))
	echo "ok - $*"
}
fail() {
	checks=$((checks + 1))
	failed=$((failed + 1))
	echo "FAIL - $*"
}

# Compare the output of one query in both databases.
same() { # DESCRIPTION SQL
	local what=$1 sql=$2
	# (a failing query's error is compared too, so that it fails the check)
	{ psql -X -At -v ON_ERROR_STOP=1 -d "$SRC" -c "$sql" 2>&1 || true; } | sed '/^SET$/d' >"$WORK/src.out"
	{ psql -X -At -v ON_ERROR_STOP=1 -d "$DST" -c "$sql" 2>&1 || true; } | sed '/^SET$/d' >"$WORK/dst.out"
	if cmp -s "$WORK/src.out" "$WORK/dst.out"; then
		ok "$what ($(wc -l <"$WORK/src.out") rows)"
	else
		fail "$what differs (< $SRC, > $DST):"
		diff "$WORK/src.out" "$WORK/dst.out" | head -n 20 | sed 's/^/    /'
	fi
}

drop_all # left over from an interrupted run

# 1. The source ------------------------------------------------------------------
psql_q postgres -c "CREATE DATABASE $SRC TEMPLATE template0" -c "CREATE DATABASE $DST TEMPLATE template0" \
	-c "CREATE ROLE $LOGIN LOGIN"
psql_q "$SRC" >/dev/null <<SQL || { fail "building $SRC (the error is above)"; exit 1; }
CREATE EXTENSION crm;
SELECT crm.setup_roles();
GRANT crm_reader TO $LOGIN;
SELECT crm.load_demo('A') AS ta \gset
SELECT crm.load_demo('B') AS tb \gset
SELECT crm.load_demo('C') AS tc \gset

-- rows added to the global lookups are the DBA's: they must be dumped, and
-- tenant rows refer to them (so they must be loaded first)
INSERT INTO crm.currency (code, name, minor_unit) VALUES ('XRG', 'Regress Guilder', 2);
INSERT INTO crm.activity_type (code, name, module, default_weight)
VALUES ('webinar_attended', 'Webinar attended', 'marketing', 4);
UPDATE crm.tenant SET default_currency = 'XRG' WHERE tenant_id = :'tc';
SET crm.tenant_id = :'ta';
INSERT INTO crm.currency_rate (from_currency, to_currency, rate) VALUES ('XRG', 'USD', 0.5);
INSERT INTO crm.opportunity (name, amount, currency) VALUES ('Guilder deal', 100, 'XRG');
INSERT INTO crm.activity (activity_type, subject, contact_id, status)
SELECT 'webinar_attended', 'Webinar', id, 'completed' FROM crm.contact WHERE tenant_id = :'ta';
RESET crm.tenant_id;

-- stage moves: stage_history rows, closed and converted records
SELECT count(crm.opportunity_mark_won(id)) FROM crm.opportunity WHERE name LIKE 'Acme%';
SELECT count(crm.opportunity_mark_lost(id, 'Price')) FROM crm.opportunity WHERE name LIKE 'Global%';
SELECT count(crm.opportunity_move_stage(o.id, s.id))
  FROM crm.opportunity o JOIN crm.stage s ON s.tenant_id = o.tenant_id AND s.pipeline_id = o.pipeline_id
 WHERE o.name LIKE 'EduLearn%' AND s.name = 'Proposal';
SELECT count(crm.lead_mark_lost(id, 'No budget')) FROM crm.lead WHERE company_name = 'Summit Retail';
SELECT count(*) FROM crm.lead l, crm.lead_convert(l.id) WHERE l.company_name = 'Blue Ocean Labs';
UPDATE crm.contact SET do_not_call = true WHERE email LIKE 'john.smith%';
INSERT INTO crm.contact_tag (tenant_id, contact_id, tag_id)
SELECT c.tenant_id, c.id, g.id FROM crm.contact c JOIN crm.tag g ON g.tenant_id = c.tenant_id AND g.name = 'Strategic'
 WHERE c.email LIKE 'emily.davis%';
UPDATE crm.tenant SET visibility = 'private' WHERE tenant_id = :'tb';

-- a login role mapped to tenant A, as Alice
SELECT crm.grant_tenant_access('$LOGIN', :'ta', u.id) FROM crm.app_user u
 WHERE u.tenant_id = :'ta' AND u.name = 'Alice Morgan';
SQL
echo "# $SRC: $(psql -X -At -d "$SRC" -c 'SELECT count(*) FROM crm.tenant') tenants," \
	"$(psql -X -At -d "$SRC" -c 'SELECT count(*) FROM crm.stage_history') stage changes"

# 2. Dump and restore ------------------------------------------------------------
if pg_dump -Fc -d "$SRC" -f "$WORK/src.dump" >"$WORK/dump.log" 2>&1; then
	ok "pg_dump -Fc $SRC"
else
	fail "pg_dump -Fc $SRC:"
	sed 's/^/    /' "$WORK/dump.log"
	exit 1
fi
# what the archive holds for crm: its data, not its objects
pg_restore -l "$WORK/src.dump" | grep -E 'TABLE DATA crm |EXTENSION' | sed 's/^[0-9]*; [0-9]* [0-9]* /#   /'

# The rows come back as they were dumped, server-owned columns included
# (created_at, updated_at, closed_at, consent times): the restore runs with
# session_replication_role = replica, in which crm's triggers keep out of
# the way (as for logical replication).  The README gives this command.
status=0
PGOPTIONS="${PGOPTIONS:-} -c session_replication_role=replica" \
	pg_restore -d "$DST" "$WORK/src.dump" >"$WORK/restore.log" 2>&1 || status=$?
if ((status == 0)) && ! grep -qi 'error' "$WORK/restore.log"; then
	ok "pg_restore into $DST: exit status 0, no errors"
else
	fail "pg_restore into $DST: exit status $status; its output:"
	sed 's/^/    /' "$WORK/restore.log"
fi

# 3. Compare ---------------------------------------------------------------------
same "the same tables in crm" \
	"SELECT relname FROM pg_class WHERE relnamespace = 'crm'::regnamespace AND relkind = 'r' ORDER BY 1"

# every row of every table, as the superuser (who bypasses row-level security);
# the built-in rows of the lookups are made anew by CREATE EXTENSION, so
# their created_at and updated_at are the restore's
for t in $(psql -X -At -d "$SRC" -c \
	"SELECT relname FROM pg_class WHERE relnamespace = 'crm'::regnamespace AND relkind = 'r' ORDER BY 1"); do
	row='t::text'
	if [[ $t == currency || $t == activity_type || $t == job_action || $t == workflow_event ]]; then
		row="CASE WHEN t.is_builtin THEN (to_jsonb(t) - 'created_at' - 'updated_at')::text ELSE t::text END"
	fi
	sql="SELECT count(*) || ' rows, md5 ' || coalesce(md5(string_agg($row, '|' ORDER BY $row)), '-')
	       FROM crm.$t t"
	src=$(psql -X -At -v ON_ERROR_STOP=1 -d "$SRC" -c "$sql")
	dst=$(psql -X -At -v ON_ERROR_STOP=1 -d "$DST" -c "$sql" 2>&1 || true)
	if [[ $src == "$dst" ]]; then
		ok "crm.$t: identical rows (${src%%,*})"
	else
		fail "crm.$t: $SRC has ${src}; $DST has ${dst}"
	fi
done

# built-in lookup rows come from CREATE EXTENSION only, added ones from the dump
same "crm.currency: built-in and added rows, none doubled" \
	"SELECT is_builtin, count(*), count(DISTINCT code), string_agg(code, ',' ORDER BY code) FILTER (WHERE NOT is_builtin)
	   FROM crm.currency GROUP BY is_builtin ORDER BY 1"
same "crm.activity_type: built-in and added rows, none doubled" \
	"SELECT is_builtin, count(*), count(DISTINCT code), string_agg(code, ',' ORDER BY code) FILTER (WHERE NOT is_builtin)
	   FROM crm.activity_type GROUP BY is_builtin ORDER BY 1"
same "the data derived by triggers (stage history, closed records, consent stamps)" \
	"SELECT (SELECT count(*) FROM crm.stage_history),
	        (SELECT count(*) FROM crm.opportunity WHERE closed_at IS NOT NULL),
	        (SELECT count(*) FROM crm.lead WHERE converted_at IS NOT NULL),
	        (SELECT count(*) FROM crm.contact WHERE do_not_call_at IS NOT NULL)"

# the fences and the rights
same "row-level security policies (pg_policies, schema crm)" \
	"SELECT tablename, policyname, permissive, roles, cmd, qual, with_check
	   FROM pg_policies WHERE schemaname = 'crm' ORDER BY tablename, policyname"
same "row-level security enabled and forced" \
	"SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class
	  WHERE relnamespace = 'crm'::regnamespace AND relkind = 'r' ORDER BY 1"
same "grants on tables and views (relacl)" \
	"SELECT relname, relkind, relacl FROM pg_class
	  WHERE relnamespace = 'crm'::regnamespace AND relkind IN ('r', 'v', 'm', 'S') ORDER BY 1"
same "grants on functions (proacl) and the schema (nspacl)" \
	"SELECT oid::regprocedure::text, proacl FROM pg_proc WHERE pronamespace = 'crm'::regnamespace
	 UNION ALL SELECT nspname, nspacl FROM pg_namespace WHERE nspname = 'crm' ORDER BY 1"
same "triggers and whether they are enabled" \
	"SELECT tgrelid::regclass, tgname, tgenabled FROM pg_trigger
	  WHERE tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'crm'::regnamespace) AND NOT tgisinternal
	  ORDER BY 1, 2"
same "the extension's dumped tables and their filters" \
	"SELECT c.relname, e.cond FROM pg_extension x,
	        unnest(x.extconfig, x.extcondition) AS e(tab, cond) JOIN pg_class c ON c.oid = e.tab
	  WHERE x.extname = 'crm' ORDER BY 1"

# the mapped login role acts for its tenant after the restore as before
same "what the mapped login role sees" \
	"SET ROLE $LOGIN;
	 SELECT t.name, (SELECT count(*) FROM crm.account), (SELECT count(*) FROM crm.opportunity),
	        (SELECT count(DISTINCT tenant_id) FROM crm.contact)
	   FROM crm.tenant t"

echo "$((checks - failed)) of $checks checks passed"
((failed == 0))
