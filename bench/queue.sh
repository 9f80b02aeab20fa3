#!/usr/bin/env bash
# bench/queue.sh: job queue throughput, and what rule matching costs a change.
#
# 1. Queue throughput: 2 producers and 2 workers run at once for
#    $QUEUE_SECONDS (pgbench -c 2 each, prepared statements); producers
#    enqueue jobs, workers claim them in one transaction and complete them
#    in the next.  Batches of 1 and of 100: a producer's transaction
#    enqueues that many jobs, a worker claims up to that many at once.  The
#    figures are jobs per second enqueued and jobs per second that went
#    through enqueue + claim + complete (counted in the tables afterwards),
#    for three implementations of the same workload:
#
#    crm       crm.enqueue_job / crm.claim_jobs / crm.complete_job (src/queue.c);
#              in the batch runs (batch > 1) the batch forms: a producer's
#              batch is one crm.enqueue_jobs() call, a worker completes its
#              claim with one crm.complete_jobs() call
#    plpgsql   the same queue written as idiomatic PL/pgSQL in schema ref,
#              with the same batch forms (ref.enqueue_jobs, ref.complete_jobs,
#              set-based statements):
#              the same tables (ready set, archive, idempotency keys, the
#              same columns, constraints, indexes, foreign keys and touch
#              trigger), the same checks and errors, FOR UPDATE SKIP LOCKED
#              with a lease, completion moving the row to the archive in one
#              statement, NOTIFY crm_jobs per enqueue (folded per transaction)
#    pgq       PgQ (Debian's postgresql-15-pgq3): producers pgq.insert_event,
#              each worker the consumer of its own queue (a PgQ queue hands a
#              batch to one consumer at a time, so 2 workers = 2 queues, one
#              per producer), reading by batch with pgq.next_batch,
#              pgq.get_batch_events and pgq.finish_batch; the worker drives
#              the ticker itself (pgq.ticker(queue) before each next_batch,
#              ticker_max_lag 0), so a batch is whatever was committed since
#              the last tick: PgQ workers always take a whole tick, also in
#              the "batch 1" runs.  PgQ keeps no per-job state (no lease,
#              no attempts, no archive row, no idempotency key): it is the
#              floor a transactional queue is measured against.
#    bare      crm.job's and crm.job_archive's columns and indexes (schema
#              bare) and nothing else (no idempotency key table, no CHECK, no foreign
#              key, no trigger, no row-level security, no function), plain
#              SQL statements: a producer INSERTs the jobs, a worker claims
#              them with one UPDATE (FOR UPDATE SKIP LOCKED, a lease) and
#              completes them with one DELETE ... RETURNING into the archive.
#              It does the writes every queue with a row, a lease and an
#              archive row per job does (an insert, an update, a delete and
#              an insert, each with its index entries) and none of the work
#              crm adds: how far crm is from it is what crm's checks cost,
#              and how far it is from PgQ is what the per-job state costs.
#
#    Every run starts from empty tables (TRUNCATE; PgQ queues are made
#    afresh).  Runs are interleaved, $QUEUE_RUNS of each; the median is
#    printed.
#
# 2. Rule matching: a single-row INSERT of an activity (pgbench -c 2,
#    $QUEUE_RULE_SECONDS per run, $QUEUE_RULE_RUNS runs) for a tenant with no rule
#    (the outbox event is written, the match trigger finds no rule), for a
#    tenant with the default rules none of which matches (a note), and one
#    that matches (quote_created: the rule quote_follow_up enqueues a job);
#    each is compared with the same activity type in the tenant without
#    rules (a quote and a note differ in what else they do).
#
# The machine is shared: runs are short and the noise is large; compare the
# columns of one run, not runs of different days.
#
# Needs PGHOST/PGPORT/PGUSER (a superuser), psql and pgbench; makes and
# drops the database bench_queue.  Without PgQ installed its column is
# skipped with the command that installs it.
set -euo pipefail

DB=bench_queue
SECS=${QUEUE_SECONDS:-5}
RUNS=${QUEUE_RUNS:-3}
# Rule matching costs little next to the noise: more, shorter runs, each
# variant next to the others, and the median of the per-run differences.
RULE_SECS=${QUEUE_RULE_SECONDS:-2}
RULE_RUNS=${QUEUE_RULE_RUNS:-7}
BATCHES=${QUEUE_BATCHES:-1 100}

command -v psql >/dev/null || PATH="$("$(dirname "$0")/../scripts/cluster.sh" bindir):$PATH"
command -v pgbench >/dev/null || PATH="$(dirname "$(command -v psql)"):$PATH"
command -v pgbench >/dev/null || { echo "queue.sh: pgbench not found" >&2; exit 1; }

WORK=$(mktemp -d)
psql_admin() { psql -X -q -v ON_ERROR_STOP=1 -d postgres "$@"; }
psql_bench() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" "$@"; }

drop_db() {
	psql_admin -c "SET client_min_messages = warning" \
		-c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null || true
	rm -rf "$WORK"
}
trap drop_db EXIT

psql_admin -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" \
	-c "CREATE DATABASE $DB"

have_pgq=$(psql -X -At -d "$DB" -c "SELECT count(*) FROM pg_available_extensions WHERE name = 'pgq'")
variants="crm plpgsql bare"
if [[ $have_pgq == 1 ]]; then
	variants="crm plpgsql bare pgq"
else
	echo "PgQ is not installed in this PostgreSQL: its column is skipped."
	echo "  Install it with: sudo apt-get install postgresql-15-pgq3  (scripts/setup.sh does)"
fi

echo "setting up $DB ..."
psql_bench <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION crm;
SELECT crm.create_tenant('bench queue') AS t \gset
SELECT crm.create_tenant('bench no rules') AS t_none \gset
SELECT crm.create_tenant('bench rules') AS t_rules \gset
SELECT crm.create_default_rules(:'t_rules') >= 0 AS made \gset
CREATE TABLE bench_tenant AS
    SELECT * FROM (VALUES ('queue', :'t'::uuid), ('none', :'t_none'::uuid), ('rules', :'t_rules'::uuid)) v(name, tenant_id);
-- One contact per pgbench client and tenant: a contact's engagement row
-- is updated by each of its activities, so clients do not share one.
CREATE TABLE bench_contact (tenant_id uuid, k integer, id uuid, PRIMARY KEY (tenant_id, k));
INSERT INTO crm.contact (tenant_id, first_name, email)
SELECT b.tenant_id, 'Bench ' || k, 'bench' || k || '@' || b.name || '.example'
  FROM bench_tenant b, generate_series(0, 1) k WHERE b.name IN ('none', 'rules');
INSERT INTO bench_contact SELECT c.tenant_id, substr(c.first_name, 7)::integer, c.id FROM crm.contact c;

-- The PL/pgSQL queue: the same tables as crm's, the same semantics.
CREATE SCHEMA ref;
CREATE TABLE ref.job (LIKE crm.job INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
CREATE TABLE ref.job_archive (LIKE crm.job_archive INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
CREATE TABLE ref.job_key (LIKE crm.job_key INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
ALTER TABLE ref.job ADD FOREIGN KEY (tenant_id) REFERENCES crm.tenant ON DELETE CASCADE;
ALTER TABLE ref.job_archive ADD FOREIGN KEY (tenant_id) REFERENCES crm.tenant ON DELETE CASCADE;
ALTER TABLE ref.job_key ADD FOREIGN KEY (tenant_id) REFERENCES crm.tenant ON DELETE CASCADE;
CREATE TRIGGER touch_updated_at BEFORE INSERT OR UPDATE ON ref.job FOR EACH ROW EXECUTE FUNCTION crm.touch_updated_at();
CREATE TRIGGER touch_updated_at BEFORE INSERT OR UPDATE ON ref.job_archive FOR EACH ROW EXECUTE FUNCTION crm.touch_updated_at();
CREATE TRIGGER touch_updated_at BEFORE INSERT OR UPDATE ON ref.job_key FOR EACH ROW EXECUTE FUNCTION crm.touch_updated_at();

-- The lower bound: the ready set and the archive with crm's columns and
-- indexes, nothing else (see the header).
CREATE SCHEMA bare;
CREATE TABLE bare.job (LIKE crm.job INCLUDING DEFAULTS INCLUDING INDEXES);
CREATE TABLE bare.job_archive (LIKE crm.job_archive INCLUDING DEFAULTS INCLUDING INDEXES);

-- Every name is qualified instead of a SET search_path, which would cost a
-- GUC save and restore on every call.  Parameters are prefixed so that
-- they never shadow a column.
CREATE FUNCTION ref.consent_refusal(t uuid, p_consent text, p_action text, p_params jsonb, p_contact uuid)
    RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    c record;
BEGIN
    IF p_consent IS NULL AND p_action = 'create_task' AND p_params->>'activity_type' IN ('call', 'call_made') THEN
        p_consent := 'phone';
    END IF;
    IF p_consent IS NULL OR p_contact IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT x.email_opt_out, x.do_not_call INTO c FROM crm.contact x
     WHERE x.tenant_id OPERATOR(pg_catalog.=) t AND x.id OPERATOR(pg_catalog.=) p_contact;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'contact % does not exist', p_contact USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF p_consent = 'email' AND c.email_opt_out THEN
        RETURN 'the contact opted out of e-mail (email_opt_out)';
    ELSIF p_consent = 'phone' AND c.do_not_call THEN
        RETURN 'the contact asked not to be called (do_not_call)';
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION ref.finish_job(t uuid, p_id uuid, p_outcome text, p_reason text, p_result jsonb)
    RETURNS void LANGUAGE sql AS $$
    WITH gone AS (DELETE FROM ref.job j
                   WHERE j.tenant_id OPERATOR(pg_catalog.=) t AND j.id OPERATOR(pg_catalog.=) p_id RETURNING j.*)
    INSERT INTO ref.job_archive (tenant_id, id, queue, action, params, rule_id, source_entity, source_id,
                                 contact_id, idempotency_key, run_at, attempts, max_attempts, errors, outcome,
                                 reason, result, enqueued_at)
    SELECT g.tenant_id, g.id, g.queue, g.action, g.params, g.rule_id, g.source_entity, g.source_id,
           g.contact_id, g.idempotency_key, g.run_at, g.attempts, g.max_attempts, g.errors, p_outcome,
           p_reason, p_result, g.created_at
      FROM gone g
$$;

CREATE FUNCTION ref.enqueue_job(p_action text, p_params jsonb DEFAULT '{}', p_contact uuid DEFAULT NULL,
                                p_run_at timestamptz DEFAULT now(), p_key uuid DEFAULT NULL,
                                p_entity text DEFAULT NULL, p_entity_id uuid DEFAULT NULL,
                                p_rule uuid DEFAULT NULL, p_max_attempts integer DEFAULT 5)
    RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    t uuid := crm.current_tenant();
    a record;
    job uuid := crm.uuid_generate_v7();
    existing uuid;
    refusal text;
BEGIN
    IF t IS NULL THEN
        RAISE EXCEPTION 'the job queue needs a tenant, and this session acts for none'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF p_action IS NULL THEN
        RAISE EXCEPTION 'action must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_params IS NULL OR pg_catalog.jsonb_typeof(p_params) <> 'object' THEN
        RAISE EXCEPTION 'job parameters must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_run_at IS NULL THEN
        RAISE EXCEPTION 'run_at must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_max_attempts IS NULL OR p_max_attempts NOT BETWEEN 1 AND 100 THEN
        RAISE EXCEPTION 'max_attempts must be between 1 and 100' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT x.queue, x.consent INTO a FROM crm.job_action x WHERE x.code OPERATOR(pg_catalog.=) p_action;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job action "%" does not exist', p_action USING ERRCODE = 'foreign_key_violation';
    END IF;
    INSERT INTO ref.job_key (tenant_id, idempotency_key, job_id)
    VALUES (t, coalesce(p_key, job), job) ON CONFLICT (tenant_id, idempotency_key) DO NOTHING;
    IF NOT FOUND THEN
        SELECT k.job_id INTO existing FROM ref.job_key k
         WHERE k.tenant_id OPERATOR(pg_catalog.=) t AND k.idempotency_key OPERATOR(pg_catalog.=) p_key;
        RETURN existing;
    END IF;
    refusal := ref.consent_refusal(t, a.consent, p_action, p_params, p_contact);
    INSERT INTO ref.job (tenant_id, id, queue, action, params, rule_id, source_entity, source_id,
                         contact_id, idempotency_key, run_at, max_attempts)
    VALUES (t, job, a.queue, p_action, p_params, p_rule, p_entity, p_entity_id,
            p_contact, coalesce(p_key, job), p_run_at, p_max_attempts);
    IF refusal IS NOT NULL THEN
        PERFORM ref.finish_job(t, job, 'skipped', refusal, NULL);
    ELSE
        PERFORM pg_catalog.pg_notify('crm_jobs', a.queue);
    END IF;
    RETURN job;
END
$$;

-- The batch forms: one statement of arrays enqueues a producer's batch,
-- one statement completes a worker's; a job that fails the checks is
-- reported by ref.complete_job's own error, all or nothing.
CREATE FUNCTION ref.enqueue_jobs(p_action text, p_params jsonb[], p_contacts uuid[] DEFAULT NULL,
                                 p_run_at timestamptz DEFAULT now(), p_keys uuid[] DEFAULT NULL,
                                 p_max_attempts integer DEFAULT 5)
    RETURNS uuid[] LANGUAGE plpgsql AS $$
DECLARE
    t uuid := crm.current_tenant();
    a record;
    ids uuid[];
    missing uuid;
BEGIN
    IF t IS NULL THEN
        RAISE EXCEPTION 'the job queue needs a tenant, and this session acts for none'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF p_action IS NULL OR p_params IS NULL OR p_run_at IS NULL THEN
        RAISE EXCEPTION 'action, params and run_at must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_max_attempts IS NULL OR p_max_attempts NOT BETWEEN 1 AND 100 THEN
        RAISE EXCEPTION 'max_attempts must be between 1 and 100' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.unnest(p_params) p WHERE p IS NULL OR pg_catalog.jsonb_typeof(p) <> 'object') THEN
        RAISE EXCEPTION 'job parameters must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_catalog.cardinality(p_contacts) <> pg_catalog.cardinality(p_params)
       OR pg_catalog.cardinality(p_keys) <> pg_catalog.cardinality(p_params) THEN
        RAISE EXCEPTION 'every array must have one element per job' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT x.queue, x.consent INTO a FROM crm.job_action x WHERE x.code OPERATOR(pg_catalog.=) p_action;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job action "%" does not exist', p_action USING ERRCODE = 'foreign_key_violation';
    END IF;
    WITH r AS MATERIALIZED (
        SELECT crm.uuid_generate_v7() AS id, u.params, u.contact, u.k, u.n
          FROM ROWS FROM (pg_catalog.unnest(p_params), pg_catalog.unnest(p_contacts), pg_catalog.unnest(p_keys))
               WITH ORDINALITY AS u(params, contact, k, n)),
    taken AS (
        INSERT INTO ref.job_key (tenant_id, idempotency_key, job_id)
        SELECT t, coalesce(r.k, r.id), r.id FROM r ORDER BY r.n
        ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING idempotency_key, job_id),
    checked AS MATERIALIZED (
        SELECT r.*, c.id AS found,
               CASE WHEN a.consent = 'email' AND c.email_opt_out THEN 'the contact opted out of e-mail (email_opt_out)'
                    WHEN (a.consent = 'phone' OR (p_action = 'create_task' AND r.params->>'activity_type' IN ('call', 'call_made')))
                         AND c.do_not_call THEN 'the contact asked not to be called (do_not_call)' END AS refusal
          FROM r JOIN taken ON taken.job_id OPERATOR(pg_catalog.=) r.id
          LEFT JOIN crm.contact c ON c.tenant_id OPERATOR(pg_catalog.=) t AND c.id OPERATOR(pg_catalog.=) r.contact),
    ready AS (
        INSERT INTO ref.job (tenant_id, id, queue, action, params, contact_id, idempotency_key, run_at, max_attempts)
        SELECT t, c.id, a.queue, p_action, c.params, c.contact, coalesce(c.k, c.id), p_run_at, p_max_attempts
          FROM checked c WHERE c.refusal IS NULL),
    skipped AS (
        INSERT INTO ref.job_archive (tenant_id, id, queue, action, params, contact_id, idempotency_key, run_at,
                                     attempts, max_attempts, errors, outcome, reason, enqueued_at)
        SELECT t, c.id, a.queue, p_action, c.params, c.contact, coalesce(c.k, c.id), p_run_at, 0, p_max_attempts,
               '[]', 'skipped', c.refusal, pg_catalog.now()
          FROM checked c WHERE c.refusal IS NOT NULL)
    SELECT pg_catalog.array_agg(coalesce(taken.job_id, k.job_id) ORDER BY r.n),
           (SELECT c.contact FROM checked c WHERE c.contact IS NOT NULL AND c.found IS NULL LIMIT 1)
      INTO ids, missing
      FROM r LEFT JOIN taken ON taken.job_id OPERATOR(pg_catalog.=) r.id
      LEFT JOIN ref.job_key k ON k.tenant_id OPERATOR(pg_catalog.=) t AND k.idempotency_key OPERATOR(pg_catalog.=) r.k;
    IF missing IS NOT NULL AND a.consent IS NOT NULL THEN
        RAISE EXCEPTION 'contact % does not exist', missing USING ERRCODE = 'foreign_key_violation';
    END IF;
    PERFORM pg_catalog.pg_notify('crm_jobs', a.queue);
    RETURN ids;
END
$$;

CREATE FUNCTION ref.claim_jobs(p_queue text, p_worker text, p_max integer DEFAULT 10,
                               p_lease interval DEFAULT '5 minutes')
    RETURNS SETOF ref.job LANGUAGE plpgsql AS $$
DECLARE
    t uuid := crm.current_tenant();
    r ref.job;
    refusal text;
BEGIN
    IF t IS NULL THEN
        RAISE EXCEPTION 'the job queue needs a tenant, and this session acts for none'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF p_queue IS NULL OR p_worker IS NULL THEN
        RAISE EXCEPTION 'queue and worker must be given' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF pg_catalog.btrim(p_worker, E' \t\r\n') = '' THEN
        RAISE EXCEPTION 'worker must not be blank' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_max IS NULL OR p_max <= 0 THEN
        RAISE EXCEPTION 'max must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_lease IS NULL OR p_lease <= interval '0' THEN
        RAISE EXCEPTION 'lease must be a positive interval' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR r IN
        WITH picked AS (SELECT j.tenant_id, j.id FROM ref.job j
                         WHERE j.tenant_id OPERATOR(pg_catalog.=) t AND j.queue OPERATOR(pg_catalog.=) p_queue
                           AND j.locked_by IS NULL AND j.run_at OPERATOR(pg_catalog.<=) pg_catalog.now()
                         ORDER BY j.run_at, j.id LIMIT p_max FOR UPDATE SKIP LOCKED)
        UPDATE ref.job j SET locked_by = p_worker, locked_until = pg_catalog.now() OPERATOR(pg_catalog.+) p_lease,
                             attempts = j.attempts OPERATOR(pg_catalog.+) 1
          FROM picked p
         WHERE j.tenant_id OPERATOR(pg_catalog.=) p.tenant_id AND j.id OPERATOR(pg_catalog.=) p.id
        RETURNING j.*
    LOOP
        -- consent may have been withdrawn since the job was enqueued
        IF r.contact_id IS NOT NULL THEN
            refusal := ref.consent_refusal(t, (SELECT x.consent FROM crm.job_action x
                                                WHERE x.code OPERATOR(pg_catalog.=) r.action),
                                           r.action, r.params, r.contact_id);
            IF refusal IS NOT NULL THEN
                PERFORM ref.finish_job(t, r.id, 'skipped', refusal, NULL);
                CONTINUE;
            END IF;
        END IF;
        RETURN NEXT r;
    END LOOP;
END
$$;

CREATE FUNCTION ref.complete_job(p_id uuid, p_result jsonb DEFAULT NULL, p_worker text DEFAULT NULL)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t uuid := crm.current_tenant();
    r record;
    outcome text;
BEGIN
    IF t IS NULL THEN
        RAISE EXCEPTION 'the job queue needs a tenant, and this session acts for none'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF p_id IS NULL THEN
        RAISE EXCEPTION 'job id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT j.locked_by, j.locked_until OPERATOR(pg_catalog.<) pg_catalog.now() AS expired, j.locked_until INTO r
      FROM ref.job j WHERE j.tenant_id OPERATOR(pg_catalog.=) t AND j.id OPERATOR(pg_catalog.=) p_id FOR UPDATE;
    IF NOT FOUND THEN
        SELECT a.outcome INTO outcome FROM ref.job_archive a
         WHERE a.tenant_id OPERATOR(pg_catalog.=) t AND a.id OPERATOR(pg_catalog.=) p_id;
        IF FOUND THEN
            RAISE EXCEPTION 'job % is already finished (%)', p_id, outcome USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        RAISE EXCEPTION 'job % does not exist', p_id USING ERRCODE = 'no_data_found';
    END IF;
    IF r.locked_by IS NULL THEN
        RAISE EXCEPTION 'job % is not claimed', p_id USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF p_worker IS NOT NULL AND r.locked_by <> p_worker THEN
        RAISE EXCEPTION 'job % is held by worker "%", not "%"', p_id, r.locked_by, p_worker
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF r.expired THEN
        RAISE EXCEPTION 'the lease of job % has expired', p_id USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    PERFORM ref.finish_job(t, p_id, 'completed', NULL, p_result);
END
$$;

CREATE FUNCTION ref.complete_jobs(p_ids uuid[], p_worker text, p_result jsonb DEFAULT NULL)
    RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    t uuid := crm.current_tenant();
    done uuid[];
    x uuid;
BEGIN
    IF t IS NULL THEN
        RAISE EXCEPTION 'the job queue needs a tenant, and this session acts for none'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF p_ids IS NULL OR pg_catalog.array_position(p_ids, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'job ids must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF (SELECT pg_catalog.count(DISTINCT u) FROM pg_catalog.unnest(p_ids) u) <> pg_catalog.cardinality(p_ids) THEN
        RAISE EXCEPTION 'a job is named twice' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WITH gone AS (DELETE FROM ref.job j
                   WHERE j.tenant_id OPERATOR(pg_catalog.=) t AND j.id OPERATOR(pg_catalog.=) ANY (p_ids)
                     AND j.locked_by IS NOT NULL AND (p_worker IS NULL OR j.locked_by OPERATOR(pg_catalog.=) p_worker)
                     AND j.locked_until OPERATOR(pg_catalog.>=) pg_catalog.now()
                  RETURNING j.*),
    archived AS (
        INSERT INTO ref.job_archive (tenant_id, id, queue, action, params, rule_id, source_entity, source_id,
                                     contact_id, idempotency_key, run_at, attempts, max_attempts, errors, outcome,
                                     reason, result, enqueued_at)
        SELECT g.tenant_id, g.id, g.queue, g.action, g.params, g.rule_id, g.source_entity, g.source_id,
               g.contact_id, g.idempotency_key, g.run_at, g.attempts, g.max_attempts, g.errors, 'completed',
               NULL, p_result, g.created_at
          FROM gone g RETURNING id)
    SELECT pg_catalog.array_agg(id) INTO done FROM archived;
    -- the jobs left out: ref.complete_job says what is wrong with the first
    FOR x IN SELECT u FROM pg_catalog.unnest(p_ids) u WHERE u <> ALL (coalesce(done, '{}')) LOOP
        PERFORM ref.complete_job(x, p_result, p_worker);
    END LOOP;
    RETURN pg_catalog.cardinality(p_ids);
END
$$;
SQL

if [[ $have_pgq == 1 ]]; then
	psql_bench <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION pgq;
-- Events made, and events consumed: those committed before the last tick
-- whose batch the worker finished.
CREATE FUNCTION bench_pgq_counts(OUT made bigint, OUT done bigint) LANGUAGE plpgsql AS $$
DECLARE
    q record;
    m bigint;
    d bigint;
BEGIN
    made := 0;
    done := 0;
    FOR q IN SELECT x.queue_data_pfx, t.tick_snapshot FROM pgq.queue x
               JOIN pgq.subscription s ON s.sub_queue = x.queue_id
               JOIN pgq.tick t ON t.tick_queue = x.queue_id AND t.tick_id = s.sub_last_tick
    LOOP
        EXECUTE format('SELECT count(*), count(*) FILTER (WHERE txid_visible_in_snapshot(ev_txid, $1)) FROM %s',
                       q.queue_data_pfx) INTO m, d USING q.tick_snapshot;
        made := made + m;
        done := done + d;
    END LOOP;
END
$$;
SQL
fi

tenant_of() { psql_bench -c "SELECT tenant_id FROM bench_tenant WHERE name = '$1'"; }
T_QUEUE=$(tenant_of queue)
T_NONE=$(tenant_of none)
T_RULES=$(tenant_of rules)

# pgbench scripts.  :client_id is 0 or 1; with -M prepared a variable is a
# parameter, so it is cast where its type must be known.
write_scripts() { # BATCH
	local b=$1 enq
	for v in crm plpgsql; do
		local schema=$v
		[[ $v == plpgsql ]] && schema=ref
		if ((b == 1)); then
			enq="SELECT $schema.enqueue_job('webhook', '{\"n\": 1}');"
			done_sql="SELECT count(*) FROM pg_catalog.unnest(:ids::uuid[]) j, $schema.complete_job(j, NULL, 'w' || :client_id::text);"
		else
			enq="SELECT pg_catalog.cardinality($schema.enqueue_jobs('webhook', ARRAY(SELECT pg_catalog.jsonb_build_object('n', g) FROM pg_catalog.generate_series(1, $b) g)));"
			done_sql="SELECT $schema.complete_jobs(:ids::uuid[], 'w' || :client_id::text);"
		fi
		printf '%s\n' "$enq" >"$WORK/$v-producer-$b.sql"
		cat >"$WORK/$v-worker-$b.sql" <<EOF
SELECT coalesce(array_agg(id), '{}') AS ids FROM $schema.claim_jobs('webhook', 'w' || :client_id::text, $b) \gset
$done_sql
EOF
	done
	enq="INSERT INTO bare.job (queue, action, params, idempotency_key)"
	enq+=" SELECT 'webhook', 'webhook', pg_catalog.jsonb_build_object('n', g), pg_catalog.gen_random_uuid()"
	enq+=" FROM pg_catalog.generate_series(1, $b) g;"
	printf '%s\n' "$enq" >"$WORK/bare-producer-$b.sql"
	cat >"$WORK/bare-worker-$b.sql" <<EOF
WITH c AS (UPDATE bare.job r SET locked_by = 'w' || :client_id::text, locked_until = now() + interval '5 minutes', attempts = r.attempts + 1, updated_at = now() WHERE r.tenant_id = crm.current_tenant() AND r.id = ANY (ARRAY(SELECT q.id FROM bare.job q WHERE q.tenant_id = crm.current_tenant() AND q.queue = 'webhook' AND q.locked_by IS NULL AND q.run_at <= now() ORDER BY q.run_at, q.id LIMIT $b FOR UPDATE SKIP LOCKED)) RETURNING r.id) SELECT coalesce(array_agg(id), '{}') AS ids FROM c \gset
WITH gone AS (DELETE FROM bare.job j WHERE j.tenant_id = crm.current_tenant() AND j.id = ANY (:ids::uuid[]) RETURNING j.*) INSERT INTO bare.job_archive (tenant_id, id, queue, action, params, rule_id, source_entity, source_id, contact_id, idempotency_key, run_at, attempts, max_attempts, errors, outcome, reason, result, enqueued_at) SELECT g.tenant_id, g.id, g.queue, g.action, g.params, g.rule_id, g.source_entity, g.source_id, g.contact_id, g.idempotency_key, g.run_at, g.attempts, g.max_attempts, g.errors, 'completed', NULL, NULL, g.created_at FROM gone g;
EOF
	if ((b == 1)); then
		enq="SELECT pgq.insert_event('bench_' || :client_id::text, 'job', '{\"n\": 1}');"
	else
		enq="SELECT count(pgq.insert_event('bench_' || :client_id::text, 'job', '{\"n\": ' || g || '}')) FROM pg_catalog.generate_series(1, $b) g;"
	fi
	printf '%s\n' "$enq" >"$WORK/pgq-producer-$b.sql"
	cat >"$WORK/pgq-worker-$b.sql" <<'EOF'
SELECT pgq.ticker('bench_' || :client_id::text);
SELECT coalesce(pgq.next_batch('bench_' || :client_id::text, 'worker'), 0) AS batch \gset
\if :batch > 0
BEGIN;
SELECT count(*) FROM pgq.get_batch_events(:batch);
SELECT pgq.finish_batch(:batch);
END;
\endif
EOF
}

# Empty tables (or new PgQ queues) before each run.
reset_variant() { # VARIANT
	case $1 in
		crm) psql_bench -c 'TRUNCATE crm.job, crm.job_archive, crm.job_key' ;;
		plpgsql) psql_bench -c 'TRUNCATE ref.job, ref.job_archive, ref.job_key' ;;
		bare) psql_bench -c 'TRUNCATE bare.job, bare.job_archive' ;;
		pgq) psql_bench >/dev/null <<'SQL'
SET client_min_messages = warning;
SELECT pgq.unregister_consumer(q.queue_name, 'worker') FROM pgq.queue q;
SELECT pgq.drop_queue(q.queue_name) FROM pgq.queue q;
SELECT pgq.create_queue(n), pgq.set_queue_config(n, 'ticker_max_lag', '0'),
       pgq.register_consumer(n, 'worker')
  FROM (VALUES ('bench_0'), ('bench_1')) v(n);
SQL
			;;
	esac
	psql_bench -c 'CHECKPOINT' >/dev/null
}

# "enqueued completed" after a run.
count_variant() { # VARIANT
	case $1 in
		crm) psql_bench -c "SELECT (SELECT count(*) FROM crm.job_key) || ' ' ||
		                           (SELECT count(*) FROM crm.job_archive WHERE outcome = 'completed')" ;;
		plpgsql) psql_bench -c "SELECT (SELECT count(*) FROM ref.job_key) || ' ' ||
		                               (SELECT count(*) FROM ref.job_archive WHERE outcome = 'completed')" ;;
		bare) psql_bench -c "SELECT (SELECT count(*) FROM bare.job) + (SELECT count(*) FROM bare.job_archive) || ' ' ||
		                            (SELECT count(*) FROM bare.job_archive)" ;;
		pgq) psql_bench -c "SELECT made || ' ' || done FROM bench_pgq_counts()" ;;
	esac
}

# One queue run: producers and workers at once; prints "variant batch enq/s done/s".
queue_run() { # VARIANT BATCH
	local v=$1 b=$2 counts
	reset_variant "$v"
	PGOPTIONS="-c crm.tenant_id=$T_QUEUE -c client_min_messages=warning" \
		pgbench -n -M prepared -c 2 -j 2 -T "$SECS" -f "$WORK/$v-producer-$b.sql" "$DB" >"$WORK/p.out" 2>&1 &
	local pp=$!
	# The bare worker's claim is one SQL statement: a generic plan made on
	# the empty table walks the tenant's whole ready set for the ids (crm's
	# C claim is written so that it never does); a custom plan each time.
	local plans=""
	[[ $v == bare ]] && plans="-c plan_cache_mode=force_custom_plan"
	PGOPTIONS="-c crm.tenant_id=$T_QUEUE -c client_min_messages=warning $plans" \
		pgbench -n -M prepared -c 2 -j 2 -T "$SECS" -f "$WORK/$v-worker-$b.sql" "$DB" >"$WORK/w.out" 2>&1 &
	local wp=$!
	local status=0
	wait "$pp" || status=1
	wait "$wp" || status=1
	if ((status)); then
		echo "queue.sh: pgbench failed for $v, batch $b:" >&2
		tail -n 5 "$WORK/p.out" "$WORK/w.out" >&2
		exit 1
	fi
	counts=$(count_variant "$v")
	read -r made done <<<"$counts"
	awk -v v="$v" -v b="$b" -v m="$made" -v d="$done" -v s="$SECS" 'BEGIN { printf "%s %s %.0f %.0f\n", v, b, m / s, d / s }'
}

# One rule-matching run: prints "variant tps latency_ms".
rules_run() { # VARIANT
	local tenant type
	case $1 in
		none) tenant=$T_NONE type=quote_created ;;
		nonenote) tenant=$T_NONE type=note ;;
		nomatch) tenant=$T_RULES type=note ;;
		match) tenant=$T_RULES type=quote_created ;;
	esac
	cat >"$WORK/rules-$1.sql" <<EOF
INSERT INTO crm.activity (tenant_id, activity_type, subject, status, occurred_at, contact_id)
SELECT c.tenant_id, '$type', 'Bench', 'completed', pg_catalog.now(), c.id
  FROM bench_contact c WHERE c.tenant_id = '$tenant' AND c.k = :client_id;
EOF
	PGOPTIONS="-c crm.tenant_id=$tenant -c client_min_messages=warning" \
		pgbench -n -M prepared -c 2 -j 2 -T "$RULE_SECS" -f "$WORK/rules-$1.sql" "$DB" >"$WORK/r.out" 2>&1 || {
		echo "queue.sh: pgbench failed for rules $1:" >&2
		tail -n 5 "$WORK/r.out" >&2
		exit 1
	}
	awk -v v="$1" '/^latency average/ { lat = $4 } /^tps = / { tps = $3 } END { printf "%s %s %s\n", v, tps, lat }' "$WORK/r.out"
}

for b in $BATCHES; do write_scripts "$b"; done

echo "queue: $RUNS x ($variants) x batches ($BATCHES), ${SECS}s each, 2 producers + 2 workers ..."
results=""
for ((run = 1; run <= RUNS; run++)); do
	for b in $BATCHES; do
		for v in $variants; do
			results+="$(queue_run "$v" "$b")"$'\n'
		done
	done
done

# The worker side alone: 2 workers claim and complete a backlog enqueued
# beforehand, with no producer running (all of the machine theirs); prints
# "variant batch done/s".  The backlog is larger than they can finish.
backlog_run() { # VARIANT BATCH
	local v=$1 b=$2 plans="" done
	reset_variant "$v"
	case $v in
		crm) for ((i = 0; i < BACKLOG; i += 100000)); do
				PGOPTIONS="-c crm.tenant_id=$T_QUEUE" psql_bench -c "SELECT pg_catalog.cardinality(crm.enqueue_jobs('webhook',
					ARRAY(SELECT pg_catalog.jsonb_build_object('n', g) FROM pg_catalog.generate_series(1, 100000) g)))" >/dev/null
			done ;;
		bare) PGOPTIONS="-c crm.tenant_id=$T_QUEUE" psql_bench -c "INSERT INTO bare.job (queue, action, params, idempotency_key)
				SELECT 'webhook', 'webhook', pg_catalog.jsonb_build_object('n', g), pg_catalog.gen_random_uuid()
				  FROM pg_catalog.generate_series(1, $BACKLOG) g" ;;
	esac
	psql_bench -c "VACUUM ANALYZE $v.job" -c 'CHECKPOINT' >/dev/null
	[[ $v == bare ]] && plans="-c plan_cache_mode=force_custom_plan"
	PGOPTIONS="-c crm.tenant_id=$T_QUEUE -c client_min_messages=warning $plans" \
		pgbench -n -M prepared -c 2 -j 2 -T "$SECS" -f "$WORK/$v-worker-$b.sql" "$DB" >"$WORK/w.out" 2>&1 || {
		echo "queue.sh: pgbench failed for $v workers on a backlog:" >&2
		tail -n 5 "$WORK/w.out" >&2
		exit 1
	}
	done=$(psql_bench -c "SELECT count(*) FROM $v.job_archive WHERE outcome = 'completed'")
	awk -v v="$v" -v b="$b" -v d="$done" -v s="$SECS" 'BEGIN { printf "%s %s %.0f\n", v, b, d / s }'
}
BACKLOG=${QUEUE_BACKLOG:-600000}
BACKLOG_BATCH=${BATCHES##* }
echo "workers alone: $RUNS x (crm, bare) on a backlog of $BACKLOG jobs, batch $BACKLOG_BATCH, ${SECS}s each ..."
backlog=""
for ((run = 1; run <= RUNS; run++)); do
	for v in crm bare; do
		backlog+="$(backlog_run "$v" "$BACKLOG_BATCH")"$'\n'
	done
done

echo "rule matching: $RULE_RUNS x (none, nonenote, nomatch, match), ${RULE_SECS}s each, pgbench -c 2 single-row INSERT ..."
rules=""
for ((run = 1; run <= RULE_RUNS; run++)); do
	for v in none nonenote nomatch match; do
		rules+="$run $(rules_run "$v")"$'\n'
	done
done
jobs_made=$(psql_bench -c "SELECT count(*) FROM crm.job j JOIN bench_tenant b ON b.tenant_id = j.tenant_id WHERE b.name = 'rules'")
quotes_made=$(psql_bench -c "SELECT count(*) FROM crm.activity a JOIN bench_tenant b ON b.tenant_id = a.tenant_id
                              WHERE b.name = 'rules' AND a.activity_type = 'quote_created'")

median() { # FIELD FILTER...: the median of a field over the matching lines
	local field=$1
	shift
	awk "$*"' { print $'"$field"' }' | sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "-" }'
}

echo
echo "Job queue throughput, jobs/s: enqueued / through enqueue+claim+complete"
echo "(2 producers + 2 workers at once, ${SECS}s per run, median of $RUNS; shared machine: expect +-20 % noise;"
echo " completed < enqueued means the workers fell behind and a backlog grew during the run)"
printf '  %-26s' ""
for b in $BATCHES; do printf '  %-22s' "batch $b"; done
echo
for v in crm plpgsql bare pgq; do
	case $v in
		crm) label="crm (C, src/queue.c)" ;;
		plpgsql) label="same queue in PL/pgSQL" ;;
		bare) label="bare tables (same writes)" ;;
		pgq) label="PgQ 3 (tick batches)" ;;
	esac
	printf '  %-26s' "$label"
	for b in $BATCHES; do
		if [[ " $variants " == *" $v "* ]]; then
			e=$(median 3 "\$1 == \"$v\" && \$2 == \"$b\"" <<<"$results")
			d=$(median 4 "\$1 == \"$v\" && \$2 == \"$b\"" <<<"$results")
			printf '  %9s / %-10s' "$e" "$d"
		else
			printf '  %-22s' "(PgQ not installed)"
		fi
	done
	echo
done
for b in $BATCHES; do
	c=$(median 4 "\$1 == \"crm\" && \$2 == \"$b\"" <<<"$results")
	p=$(median 4 "\$1 == \"plpgsql\" && \$2 == \"$b\"" <<<"$results")
	line="  batch $b: crm/PL/pgSQL $(awk -v a="$c" -v b="$p" 'BEGIN { printf (b > 0 ? "%.2fx" : "-"), a / b }')"
	if [[ " $variants " == *" pgq "* ]]; then
		q=$(median 4 "\$1 == \"pgq\" && \$2 == \"$b\"" <<<"$results")
		line+=", crm/PgQ $(awk -v a="$c" -v b="$q" 'BEGIN { printf (b > 0 ? "%.2fx" : "-"), a / b }')"
		line+=" (goal >= 1: $(awk -v a="$c" -v b="$q" 'BEGIN { print (a >= b ? "met" : "NOT met") }'))"
	fi
	r=$(median 4 "\$1 == \"bare\" && \$2 == \"$b\"" <<<"$results")
	line+=", crm/bare tables $(awk -v a="$c" -v b="$r" 'BEGIN { printf (b > 0 ? "%.2fx" : "-"), a / b }')"
	if [[ " $variants " == *" pgq "* ]]; then
		line+=", bare tables/PgQ $(awk -v a="$r" -v b="$q" 'BEGIN { printf (b > 0 ? "%.2fx" : "-"), a / b }')"
	fi
	if ((b > 1)); then
		line+=", goal >= 10,000 jobs/s batched: $(awk -v a="$c" 'BEGIN { print (a >= 10000 ? "met" : "NOT met") }')"
	fi
	echo "$line"
done

wc=$(median 3 '$1 == "crm"' <<<"$backlog")
wb=$(median 3 '$1 == "bare"' <<<"$backlog")
echo
echo "The worker side alone, jobs/s claimed and completed by 2 workers from a backlog enqueued beforehand"
echo "(batch $BACKLOG_BATCH, no producer running, median of $RUNS):"
echo "  crm $wc, bare tables $wb (crm/bare tables $(awk -v a="$wc" -v b="$wb" 'BEGIN { printf (b > 0 ? "%.2fx" : "-"), a / b }'))"
if [[ " $variants " == *" pgq "* ]]; then
	q=$(median 4 "\$1 == \"pgq\" && \$2 == \"$BACKLOG_BATCH\"" <<<"$results")
	echo "  PgQ's whole throughput above, its producers included: $q"
	if awk -v a="$wb" -v b="$q" 'BEGIN { exit !(a < b) }'; then
		echo "  (the bare tables' claim and complete, with the machine to themselves, stay below it: with producers"
		echo "   sharing the two cores, no queue that writes these rows per job reaches PgQ here)"
	fi
fi

echo
echo "Rule matching on a single-row INSERT of an activity (pgbench -c 2, ${RULE_SECS}s per run, median of $RULE_RUNS;"
echo "the difference is the median of the differences between runs made one after the other, each against"
echo "the same activity type in the tenant without rules: a quote and a note cost differently in themselves)"
for v in none nonenote nomatch match; do
	case $v in
		none) label="tenant without rules (quote_created)" base=none ;;
		nonenote) label="tenant without rules (note)" base=nonenote ;;
		nomatch) label="default rules, none matches (note)" base=nonenote ;;
		match) label="default rules, one matches (quote_created -> job)" base=none ;;
	esac
	tps=$(median 3 "\$2 == \"$v\"" <<<"$rules")
	lat=$(median 4 "\$2 == \"$v\"" <<<"$rules")
	# per run: this variant's latency minus the no-rule one's of the same type, in us
	diff=$(awk -v v="$v" -v base="$base" '{ lat[$1, $2] = $4; runs[$1] = 1 }
		END { for (r in runs) if ((r, v) in lat && (r, base) in lat) printf "%.0f\n", (lat[r, v] - lat[r, base]) * 1000 }' <<<"$rules" |
		sort -n | awk '{ d[NR] = $1 } END { print (NR ? d[int((NR + 1) / 2)] : 0) }')
	awk -v l="$label" -v t="$tps" -v m="$lat" -v d="$diff" \
		'BEGIN { printf "  %-50s %8.0f changes/s  %6.3f ms each  (%+d us vs no rules)\n", l, t, m, d }'
done
echo "  (the matching runs made $quotes_made quotes and $jobs_made jobs: one job per quote)"
if [[ $quotes_made != "$jobs_made" ]]; then
	echo "queue.sh: FAIL: $quotes_made quotes but $jobs_made jobs" >&2
	exit 1
fi
echo "  all runs:"
sed 's/^/    /' <<<"$results$backlog$rules" | sed '/^ *$/d'
