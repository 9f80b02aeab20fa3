#!/usr/bin/env bash
# bench/stage_history.sh: what the stage triggers cost on a bulk UPDATE.
#
# ROWS (default 100,000) opportunities of one tenant change stage in ONE
# UPDATE (each row toggles between two open stages), timed on the same data
# (RUNS, default 3, runs of each):
#
#   floor     crm.opportunity with no trigger at all
#             (session_replication_role = replica: no user or FK trigger fires)
#   crm       crm.opportunity with the extension's C triggers: stage_sync
#             (BEFORE ROW: looks the stage up, locks it FOR SHARE once per
#             statement and refuses one of another tenant or pipeline, which
#             is why the record has no foreign key to its stage),
#             stage_history (AFTER STATEMENT: reads the transition tables in
#             C and writes the history rows straight into the heap and its
#             indexes; the history has no foreign key to the record),
#             touch_updated_at (BEFORE ROW)
#   plpgsql   ref.opportunity, a copy of the table (same columns, defaults,
#             constraints, indexes and foreign keys) whose triggers do the
#             same work written in idiomatic PL/pgSQL, as src/stage.c and
#             src/touch.c describe it: the same lifecycle rules, the stage
#             read FOR SHARE (what keeps a stage from being deleted under a
#             record entering it), and the history as one INSERT ... SELECT
#             joining the transition tables
#
# and, to show what each part of the whole CRM costs, crm.opportunity with
# only some of its triggers enabled (ALTER TABLE ... DISABLE TRIGGER between
# runs; the UPDATE changes no column that a foreign key of the table covers):
#
#   stage     stage_sync, stage_history, touch_updated_at, _tenant_required:
#             the same work as the PL/pgSQL reference
#   derived   every trigger of crm.opportunity except the events: + the
#             account aggregates, the predictive model (PLS), visibility,
#             win_probability
#   events    + the OpportunityStageChanged events, with the workflow rules
#             of crm.event disabled
#   crm       everything, with the tenant's default rules: "Entered
#             Proposal" makes one job for every deal that enters Proposal
#
# Each is run RUNS times, interleaved, with a VACUUM and a CHECKPOINT before
# every run (so that no run pays for a checkpoint that another one caused,
# and each writes the same full-page images), and both history tables
# emptied (so that every run adds its rows to indexes of the same size: four
# crm variants to one plpgsql run per round had grown crm.stage_history's
# indexes past shared_buffers while the reference's stayed small); the
# median is printed.  Each crm and plpgsql run must have written exactly
# 100,000 history rows, and afterwards every row of both tables and of both
# histories must agree with its stage, or the benchmark fails.
#
# Needs PGHOST/PGPORT/PGUSER (a superuser) and psql; makes and drops the
# database bench_crm.
set -euo pipefail

DB=bench_crm
ROWS=${ROWS:-100000}
RUNS=${RUNS:-3}

command -v psql >/dev/null || PATH="$("$(dirname "$0")/../scripts/cluster.sh" bindir):$PATH"

psql_admin() { psql -X -q -v ON_ERROR_STOP=1 -d postgres "$@"; }
psql_bench() { psql -X -q -v ON_ERROR_STOP=1 -d "$DB" "$@"; }

drop_db() {
	psql_admin -c "SET client_min_messages = warning" \
		-c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
}
trap drop_db EXIT

drop_db
psql_admin -c "CREATE DATABASE $DB"
# KEEP_DB=1 leaves the database for experiments after the run
[[ -n ${KEEP_DB:-} ]] && trap - EXIT

echo "setting up $ROWS opportunities in $DB ..."
psql_bench -v rows="$ROWS" <<'SQL'
CREATE EXTENSION crm;

SELECT crm.create_tenant('bench') AS tenant \gset
CREATE TABLE bench_param AS
SELECT p.tenant_id, p.id AS pipeline_id,
       (SELECT s.id FROM crm.stage s WHERE s.tenant_id = p.tenant_id AND s.pipeline_id = p.id
           AND s.name = 'Qualified') AS stage_a,
       (SELECT s.id FROM crm.stage s WHERE s.tenant_id = p.tenant_id AND s.pipeline_id = p.id
           AND s.name = 'Proposal') AS stage_b
  FROM crm.pipeline p WHERE p.tenant_id = :'tenant' AND p.is_default;

INSERT INTO crm.opportunity (tenant_id, name, pipeline_id, stage_id, amount, currency, expected_close_date)
SELECT b.tenant_id, 'Deal ' || i, b.pipeline_id,
       CASE WHEN i % 2 = 0 THEN b.stage_a ELSE b.stage_b END,
       (i % 1000) * 100, 'USD', DATE '2030-01-01' + i % 365
  FROM bench_param b, generate_series(1, :rows) i;

-- The PL/pgSQL reference: the same table and history table, same data.
CREATE SCHEMA ref;
CREATE TABLE ref.opportunity (LIKE crm.opportunity INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
ALTER TABLE ref.opportunity
    ADD FOREIGN KEY (tenant_id) REFERENCES crm.tenant ON DELETE CASCADE,
    ADD FOREIGN KEY (currency) REFERENCES crm.currency (code),
    ADD FOREIGN KEY (tenant_id, account_id) REFERENCES crm.account (tenant_id, id) DEFERRABLE,
    ADD FOREIGN KEY (tenant_id, contact_id) REFERENCES crm.contact (tenant_id, id) DEFERRABLE,
    ADD FOREIGN KEY (tenant_id, lead_id) REFERENCES crm.lead (tenant_id, id) DEFERRABLE,
    ADD FOREIGN KEY (tenant_id, owner_id) REFERENCES crm.app_user (tenant_id, id) DEFERRABLE;

-- like crm.stage_history, no foreign key to the record
CREATE TABLE ref.stage_history (LIKE crm.stage_history INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);

-- crm.stage_sync() in PL/pgSQL: the same rules, checks and errors as
-- src/stage.c for an opportunity (identity columns fixed, derived columns
-- the server's, lost_reason only while lost, archived records do not
-- move), including its shortcut for updates that touch none of the stage
-- columns.  Every name is qualified instead of a SET search_path, which
-- would cost a GUC save and restore on every row.
CREATE FUNCTION ref.stage_sync() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    st record;
    is_insert boolean := TG_OP = 'INSERT';
    kind_changed boolean;
    stage_moved boolean;
BEGIN
    IF NOT is_insert THEN
        IF NEW.tenant_id IS DISTINCT FROM OLD.tenant_id THEN
            RAISE EXCEPTION 'column "tenant_id" of relation "%" cannot be changed', TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF NEW.id IS DISTINCT FROM OLD.id THEN
            RAISE EXCEPTION 'column "id" of relation "%" cannot be changed', TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF NEW.pipeline_id IS NOT DISTINCT FROM OLD.pipeline_id
           AND NEW.stage_id IS NOT DISTINCT FROM OLD.stage_id
           AND NEW.status IS NOT DISTINCT FROM OLD.status
           AND NEW.probability IS NOT DISTINCT FROM OLD.probability
           AND NEW.closed_at IS NOT DISTINCT FROM OLD.closed_at
           AND NEW.lost_reason IS NOT DISTINCT FROM OLD.lost_reason THEN
            RETURN NEW;
        END IF;
    END IF;
    IF NEW.tenant_id IS NULL THEN
        RETURN NEW;
    END IF;

    IF NEW.pipeline_id IS NULL THEN
        IF NEW.stage_id IS NOT NULL THEN
            SELECT s.pipeline_id INTO NEW.pipeline_id FROM crm.stage s
             WHERE s.tenant_id OPERATOR(pg_catalog.=) NEW.tenant_id
               AND s.id OPERATOR(pg_catalog.=) NEW.stage_id;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'stage % does not exist', NEW.stage_id USING ERRCODE = 'foreign_key_violation';
            END IF;
        ELSE
            SELECT p.id INTO NEW.pipeline_id FROM crm.pipeline p
             WHERE p.tenant_id OPERATOR(pg_catalog.=) NEW.tenant_id AND p.is_default;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'tenant % has no default pipeline', NEW.tenant_id USING ERRCODE = 'no_data_found';
            END IF;
        END IF;
    END IF;
    IF NEW.stage_id IS NULL THEN
        SELECT s.id INTO NEW.stage_id FROM crm.stage s
         WHERE s.tenant_id OPERATOR(pg_catalog.=) NEW.tenant_id
           AND s.pipeline_id OPERATOR(pg_catalog.=) NEW.pipeline_id
         ORDER BY s.sequence, s.id LIMIT 1;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'pipeline % has no stages', NEW.pipeline_id USING ERRCODE = 'no_data_found';
        END IF;
    END IF;

    SELECT s.pipeline_id, s.kind, s.probability INTO st FROM crm.stage s
     WHERE s.tenant_id OPERATOR(pg_catalog.=) NEW.tenant_id
       AND s.id OPERATOR(pg_catalog.=) NEW.stage_id
       FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'stage % does not exist', NEW.stage_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF st.pipeline_id OPERATOR(pg_catalog.<>) NEW.pipeline_id THEN
        RAISE EXCEPTION 'stage % does not belong to pipeline %', NEW.stage_id, NEW.pipeline_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;

    stage_moved := is_insert OR NEW.stage_id IS DISTINCT FROM OLD.stage_id
                   OR NEW.pipeline_id IS DISTINCT FROM OLD.pipeline_id;
    IF NOT is_insert AND stage_moved AND NEW.archived_at IS NOT NULL THEN
        RAISE EXCEPTION '% % is archived and cannot change stage', TG_TABLE_NAME, NEW.id
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    kind_changed := is_insert OR OLD.status OPERATOR(pg_catalog.<>) st.kind;

    -- status: the stage's kind; a client's value is ignored
    NEW.status := st.kind;

    -- probability: 100 when won, 0 when lost, else the stage's unless set
    IF st.kind OPERATOR(pg_catalog.=) 'won' THEN
        NEW.probability := 100;
    ELSIF st.kind OPERATOR(pg_catalog.=) 'lost' THEN
        NEW.probability := 0;
    ELSIF NOT (NEW.probability IS NOT NULL
               AND (is_insert OR NEW.probability IS DISTINCT FROM OLD.probability))
          AND (stage_moved OR NEW.probability IS NULL) THEN
        NEW.probability := st.probability;
    END IF;

    -- closed_at: when the record entered a won or lost stage
    IF st.kind OPERATOR(pg_catalog.=) 'open' THEN
        NEW.closed_at := NULL;
    ELSIF kind_changed THEN
        NEW.closed_at := pg_catalog.transaction_timestamp();
    ELSE
        NEW.closed_at := OLD.closed_at;
    END IF;

    -- lost_reason: only a lost record has one
    IF st.kind OPERATOR(pg_catalog.<>) 'lost' THEN
        NEW.lost_reason := NULL;
    END IF;
    RETURN NEW;
END
$$;

-- crm.stage_history_record() in PL/pgSQL: one INSERT ... SELECT joining the
-- statement's old and new rows.  (The C switches to the table owner for the
-- INSERT; here the benchmark's superuser owns everything, so that is left
-- out: it costs once per statement anyway.)
CREATE FUNCTION ref.stage_history_record() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    who uuid := crm.current_user_id();
BEGIN
    INSERT INTO ref.stage_history
        (tenant_id, opportunity_id, pipeline_id, from_stage_id, to_stage_id,
         amount, currency, probability, changed_at, changed_by, changed_by_role)
    SELECT n.tenant_id, n.id, n.pipeline_id, o.stage_id, n.stage_id,
           n.amount, n.currency, n.probability, pg_catalog.clock_timestamp(), who, CURRENT_USER
      FROM new_rows n
      JOIN old_rows o ON o.tenant_id OPERATOR(pg_catalog.=) n.tenant_id
                     AND o.id OPERATOR(pg_catalog.=) n.id
     WHERE o.stage_id OPERATOR(pg_catalog.<>) n.stage_id;
    RETURN NULL;
END
$$;

CREATE FUNCTION ref.stage_history_created() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    who uuid := crm.current_user_id();
BEGIN
    INSERT INTO ref.stage_history
        (tenant_id, opportunity_id, pipeline_id, from_stage_id, to_stage_id,
         amount, currency, probability, changed_at, changed_by, changed_by_role)
    SELECT n.tenant_id, n.id, n.pipeline_id, NULL, n.stage_id,
           n.amount, n.currency, n.probability, pg_catalog.clock_timestamp(), who, CURRENT_USER
      FROM new_rows n;
    RETURN NULL;
END
$$;

CREATE FUNCTION ref.touch_updated_at() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    NEW.updated_at := pg_catalog.now();
    RETURN NEW;
END
$$;

-- Same names as crm's, so they fire in the same order.
CREATE TRIGGER stage_sync BEFORE INSERT OR UPDATE ON ref.opportunity
    FOR EACH ROW EXECUTE FUNCTION ref.stage_sync();
CREATE TRIGGER stage_history AFTER UPDATE ON ref.opportunity
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ref.stage_history_record();
CREATE TRIGGER stage_history_created AFTER INSERT ON ref.opportunity
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ref.stage_history_created();
CREATE TRIGGER touch_updated_at BEFORE UPDATE ON ref.opportunity
    FOR EACH ROW EXECUTE FUNCTION ref.touch_updated_at();

INSERT INTO ref.opportunity SELECT * FROM crm.opportunity;

SELECT count(*) = :rows AS loaded FROM crm.opportunity \gset
\if :loaded
\else
\warn 'crm.opportunity does not have the rows asked for'
\quit 1
\endif
DO $$
BEGIN
    IF (SELECT count(*) FROM crm.opportunity) <> (SELECT count(*) FROM ref.opportunity)
       OR EXISTS (SELECT * FROM crm.opportunity EXCEPT SELECT * FROM ref.opportunity) THEN
        RAISE EXCEPTION 'ref.opportunity is not a copy of crm.opportunity';
    END IF;
END
$$;

-- The script vacuums before every run; autovacuum must not add its own.
ALTER TABLE crm.opportunity SET (autovacuum_enabled = off);
ALTER TABLE crm.stage_history SET (autovacuum_enabled = off);
ALTER TABLE ref.opportunity SET (autovacuum_enabled = off);
ALTER TABLE ref.stage_history SET (autovacuum_enabled = off);
VACUUM ANALYZE;
SQL

# One session runs everything, interleaved, and prints "variant ms rows history".
run_sql() {
	cat <<'SQL'
SELECT tenant_id AS t, stage_a AS a, stage_b AS b FROM bench_param \gset
SQL
	for run in $(seq 1 "$RUNS"); do
		for variant in floor stage derived events crm plpgsql; do
			case $variant in
				floor)   table=crm.opportunity history=crm.stage_history
				         pre='SET session_replication_role = replica;' post='RESET session_replication_role;' ;;
				stage)   table=crm.opportunity history=crm.stage_history
				         pre='ALTER TABLE crm.opportunity DISABLE TRIGGER USER;
				              ALTER TABLE crm.opportunity ENABLE TRIGGER stage_sync, ENABLE TRIGGER stage_history,
				                  ENABLE TRIGGER touch_updated_at, ENABLE TRIGGER _tenant_required;'
				         post='ALTER TABLE crm.opportunity ENABLE TRIGGER USER;' ;;
				derived) table=crm.opportunity history=crm.stage_history
				         pre='ALTER TABLE crm.opportunity DISABLE TRIGGER outbox_update;'
				         post='ALTER TABLE crm.opportunity ENABLE TRIGGER outbox_update;' ;;
				events)  table=crm.opportunity history=crm.stage_history
				         pre='ALTER TABLE crm.event DISABLE TRIGGER workflow_match;'
				         post='ALTER TABLE crm.event ENABLE TRIGGER workflow_match;' ;;
				crm)     table=crm.opportunity history=crm.stage_history pre='' post='' ;;
				plpgsql) table=ref.opportunity history=ref.stage_history pre='' post='' ;;
			esac
			cat <<SQL
TRUNCATE crm.stage_history, ref.stage_history;
VACUUM $table;
CHECKPOINT;
SELECT count(*) AS h0 FROM $history \\gset
$pre
SELECT clock_timestamp() AS t0 \\gset
UPDATE $table SET stage_id = CASE WHEN stage_id = :'a' THEN :'b'::uuid ELSE :'a'::uuid END WHERE tenant_id = :'t';
\\set n :ROW_COUNT
SELECT round(extract(epoch FROM clock_timestamp() - :'t0') * 1000, 1) AS ms \\gset
$post
SELECT format('$variant %s %s %s', :'ms', :'n', count(*) - :h0) FROM $history;
SQL
		done
	done
}

echo "running: $RUNS x (floor, stage, derived, events, crm, plpgsql), one UPDATE of $ROWS rows each ..."
results=$(run_sql | psql_bench -At)

fail=0
while read -r variant ms n history; do
	if [[ $n != "$ROWS" ]]; then
		echo "FAIL: $variant updated $n rows, not $ROWS" >&2
		fail=1
	fi
	want=$ROWS
	[[ $variant == floor ]] && want=0
	if [[ $history != "$want" ]]; then
		echo "FAIL: $variant wrote $history history rows, not $want" >&2
		fail=1
	fi
done <<<"$results"

# Both triggered tables must end with every row agreeing with its stage, and
# every history row must describe a move between the two stages with the
# probability of the stage entered.  (The floor runs toggle crm.opportunity
# too, so the two histories differ in direction and are not compared.)
check=$(psql_bench -At <<'SQL'
SELECT format('%s %s', x.what, x.bad)
  FROM (SELECT 'crm.opportunity' AS what,
               count(*) FILTER (WHERE o.status <> s.kind OR o.probability <> s.probability
                                OR o.closed_at IS NOT NULL OR o.updated_at < o.created_at) AS bad
          FROM crm.opportunity o JOIN crm.stage s ON s.tenant_id = o.tenant_id AND s.id = o.stage_id
        UNION ALL
        SELECT 'ref.opportunity',
               count(*) FILTER (WHERE o.status <> s.kind OR o.probability <> s.probability
                                OR o.closed_at IS NOT NULL OR o.updated_at < o.created_at)
          FROM ref.opportunity o JOIN crm.stage s ON s.tenant_id = o.tenant_id AND s.id = o.stage_id
        UNION ALL
        SELECT 'crm.stage_history',
               count(*) FILTER (WHERE h.from_stage_id = h.to_stage_id OR h.probability <> s.probability
                                OR h.to_stage_id NOT IN (b.stage_a, b.stage_b) OR h.changed_by_role <> current_user)
          FROM crm.stage_history h CROSS JOIN bench_param b
          JOIN crm.stage s ON s.tenant_id = h.tenant_id AND s.id = h.to_stage_id
        UNION ALL
        SELECT 'ref.stage_history',
               count(*) FILTER (WHERE h.from_stage_id = h.to_stage_id OR h.probability <> s.probability
                                OR h.to_stage_id NOT IN (b.stage_a, b.stage_b) OR h.changed_by_role <> current_user)
          FROM ref.stage_history h CROSS JOIN bench_param b
          JOIN crm.stage s ON s.tenant_id = h.tenant_id AND s.id = h.to_stage_id) x;
SQL
)
while read -r what bad; do
	if [[ $bad != 0 ]]; then
		echo "FAIL: $what: $bad rows disagree" >&2
		fail=1
	fi
done <<<"$check"
if ((fail)); then
	echo "$results" >&2
	exit 1
fi

median() { grep "^$1 " <<<"$results" | awk '{print $2}' | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
floor=$(median floor)
stage=$(median stage)
derived=$(median derived)
events=$(median events)
crm=$(median crm)
plpgsql=$(median plpgsql)
jobs=$(psql_bench -At -c "SELECT count(*) FROM crm.job")

echo
echo "stage changes, $ROWS rows, bulk UPDATE (median of $RUNS)"
awk -v x="$floor" -v st="$stage" -v d="$derived" -v e="$events" -v y="$crm" -v z="$plpgsql" -v jobs="$jobs" 'BEGIN {
	printf "  floor (no triggers, session_replication_role=replica): %9.1f ms\n", x
	printf "  crm, whole CRM:                                        %9.1f ms   ratio to floor: %.2f\n", y, y / x
	printf "  PL/pgSQL reference (stage work only):                  %9.1f ms   ratio to floor: %.2f\n", z, z / x
	printf "  what each part of the whole CRM costs (ms, ratio to floor):\n"
	printf "    stage triggers alone (the reference'"'"'s work)   %9.1f  %.2f\n", st, st / x
	printf "    + aggregates, PLS, visibility, win_probability %9.1f  %.2f  (+%.1f)\n", d, d / x, d - st
	printf "    + OpportunityStageChanged events              %9.1f  %.2f  (+%.1f)\n", e, e / x, e - d
	printf "    + workflow rules (jobs enqueued)              %9.1f  %.2f  (+%.1f)\n", y, y / x, y - e
	printf "  same work, C against PL/pgSQL above the floor: C %.1f ms, PL/pgSQL %.1f ms (C/PL/pgSQL: %.2f)\n", st - x, z - x, (st - x) / (z - x)
	printf "  whole CRM against the PL/pgSQL stage work above the floor: %.2f\n", (y - x) / (z - x)
	printf "  goals: C <= 1.5x the floor (whole CRM %s, stage triggers alone %s), C above the floor <= half of PL/pgSQL'"'"'s (%s)\n", y / x <= 1.5 ? "met" : "NOT met", st / x <= 1.5 ? "met" : "NOT met", (st - x) <= (z - x) / 2 ? "met" : "NOT met"
	printf "  jobs in crm.job after all runs: %d\n", jobs
}'
echo "  (each triggered run wrote $ROWS history rows; all runs, ms:"
awk '{printf "    %-8s %s\n", $1, $2}' <<<"$results"
echo "  )"
