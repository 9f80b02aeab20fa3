-- src/sql/89_queue.sql: the job queue that workflow rules fill (DESIGN.md
-- capability 5).
--
-- A job is enqueued in the same transaction as the change that caused it,
-- so a rolled-back change leaves no job and a committed one always has it.
-- Workers in any language take jobs with crm.claim_jobs() (FOR UPDATE SKIP
-- LOCKED and a lease), report with crm.complete_job() / crm.fail_job(), and
-- are woken by LISTEN crm_jobs.  Delivery is at least once; the
-- idempotency key makes a replayed event or a retried statement harmless.
--
-- The ready set stays small however long the queue runs: a finished, dead
-- or skipped job leaves crm.job for crm.job_archive in the statement that
-- finishes it.  Both live per tenant (tenant_id leads every key), so on
-- Citus a claim is exact within a tenant's shard group and never needs a
-- global order.

CREATE TABLE crm.job (
    tenant_id       uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    id              uuid NOT NULL DEFAULT crm.uuid_generate_v7(),
    queue           text NOT NULL CHECK (queue ~ '^[a-z][a-z0-9_]{0,62}$'),
    action          text NOT NULL CHECK (action ~ '^[a-z][a-z0-9_]{0,62}$'),
    params          jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(params) = 'object'),
    rule_id         uuid,
    source_entity   text,
    source_id       uuid,
    contact_id      uuid,
    idempotency_key uuid NOT NULL,
    run_at          timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts    integer NOT NULL DEFAULT 5 CHECK (max_attempts BETWEEN 1 AND 100),
    locked_by       text,
    locked_until    timestamptz,
    errors          jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(errors) = 'array'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CHECK ((locked_by IS NULL) = (locked_until IS NULL))
);
CREATE INDEX job_ready_idx ON crm.job (tenant_id, queue, run_at, id) WHERE locked_by IS NULL;
CREATE INDEX job_lease_idx ON crm.job (tenant_id, locked_until) WHERE locked_by IS NOT NULL;
COMMENT ON TABLE crm.job IS 'Jobs ready to run or running (the ready set); finished, dead and skipped jobs move to crm.job_archive';
COMMENT ON COLUMN crm.job.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.job.id IS 'Row id (UUIDv7)';
COMMENT ON COLUMN crm.job.queue IS 'Queue the job waits in: crm for in-database actions run by crm.run_jobs(), others for workers';
COMMENT ON COLUMN crm.job.action IS 'What to do: create_task, move_stage, send_email, webhook, ...';
COMMENT ON COLUMN crm.job.params IS 'Parameters of the action (JSON object)';
COMMENT ON COLUMN crm.job.rule_id IS 'The workflow rule that enqueued the job, if any';
COMMENT ON COLUMN crm.job.source_entity IS 'Kind of record the job is about: lead, opportunity, contact, account, activity';
COMMENT ON COLUMN crm.job.source_id IS 'The record the job is about';
COMMENT ON COLUMN crm.job.contact_id IS 'The contact whose consent the action needs (checked at enqueue and at claim)';
COMMENT ON COLUMN crm.job.idempotency_key IS 'Name-based UUID (v5) of rule, record and event: the same event never makes a second job';
COMMENT ON COLUMN crm.job.run_at IS 'Not claimed before this time (delay, retry backoff)';
COMMENT ON COLUMN crm.job.attempts IS 'Claims so far (set by the server)';
COMMENT ON COLUMN crm.job.max_attempts IS 'After this many failed attempts the job is dead';
COMMENT ON COLUMN crm.job.locked_by IS 'Worker holding the lease (NULL while ready)';
COMMENT ON COLUMN crm.job.locked_until IS 'End of the lease; an expired lease is reaped by crm.reap_expired_leases()';
COMMENT ON COLUMN crm.job.errors IS 'Errors of failed attempts, oldest first: [{"at": ..., "attempt": n, "error": ...}]';
COMMENT ON COLUMN crm.job.created_at IS 'When the job was enqueued';
COMMENT ON COLUMN crm.job.updated_at IS 'When the row last changed';

CREATE TABLE crm.job_archive (
    tenant_id       uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    id              uuid NOT NULL DEFAULT crm.uuid_generate_v7(),
    queue           text NOT NULL,
    action          text NOT NULL,
    params          jsonb NOT NULL,
    rule_id         uuid,
    source_entity   text,
    source_id       uuid,
    contact_id      uuid,
    idempotency_key uuid NOT NULL,
    run_at          timestamptz NOT NULL,
    attempts        integer NOT NULL,
    max_attempts    integer NOT NULL,
    errors          jsonb NOT NULL,
    outcome         text NOT NULL CHECK (outcome IN ('completed', 'dead', 'skipped')),
    reason          text,
    result          jsonb,
    enqueued_at     timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX job_archive_finished_idx ON crm.job_archive (tenant_id, finished_at);
COMMENT ON TABLE crm.job_archive IS 'Jobs that completed, died after their last attempt, or were skipped (consent); kept until crm.purge_jobs()';
COMMENT ON COLUMN crm.job_archive.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.job_archive.id IS 'The job''s id';
COMMENT ON COLUMN crm.job_archive.queue IS 'Queue the job waited in';
COMMENT ON COLUMN crm.job_archive.action IS 'The action';
COMMENT ON COLUMN crm.job_archive.params IS 'Parameters of the action';
COMMENT ON COLUMN crm.job_archive.rule_id IS 'The workflow rule that enqueued the job, if any';
COMMENT ON COLUMN crm.job_archive.source_entity IS 'Kind of record the job was about';
COMMENT ON COLUMN crm.job_archive.source_id IS 'The record the job was about';
COMMENT ON COLUMN crm.job_archive.contact_id IS 'The contact whose consent the action needed';
COMMENT ON COLUMN crm.job_archive.idempotency_key IS 'The job''s idempotency key: a replay of its event still makes no new job';
COMMENT ON COLUMN crm.job_archive.run_at IS 'When the job was last due';
COMMENT ON COLUMN crm.job_archive.attempts IS 'Claims made';
COMMENT ON COLUMN crm.job_archive.max_attempts IS 'Attempts allowed';
COMMENT ON COLUMN crm.job_archive.errors IS 'Errors of failed attempts, oldest first';
COMMENT ON COLUMN crm.job_archive.outcome IS 'completed, dead (failed max_attempts times) or skipped (consent)';
COMMENT ON COLUMN crm.job_archive.reason IS 'Why the job was skipped or died';
COMMENT ON COLUMN crm.job_archive.result IS 'What the worker reported on completion';
COMMENT ON COLUMN crm.job_archive.enqueued_at IS 'When the job was enqueued';
COMMENT ON COLUMN crm.job_archive.finished_at IS 'When the job left the ready set';
COMMENT ON COLUMN crm.job_archive.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.job_archive.updated_at IS 'When the row last changed';

-- Which actions exist, where they run and which consent they need: a
-- global lookup like crm.activity_type.  In-database actions wait in the
-- queue 'crm' for crm.run_jobs(); the others wait for workers.
CREATE TABLE crm.job_action (
    code         text PRIMARY KEY CHECK (code ~ '^[a-z][a-z0-9_]{0,62}$'),
    queue        text NOT NULL CHECK (queue ~ '^[a-z][a-z0-9_]{0,62}$'),
    in_database  boolean NOT NULL,
    consent      text CHECK (consent IN ('email', 'phone')),
    description  text NOT NULL,
    is_builtin   boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE crm.job_action IS 'The actions a job can carry, the queue they wait in and the consent they need (global lookup)';
COMMENT ON COLUMN crm.job_action.code IS 'Action code, e.g. create_task, send_email';
COMMENT ON COLUMN crm.job_action.queue IS 'Queue of its jobs: crm for in-database actions, else the workers'' queue';
COMMENT ON COLUMN crm.job_action.in_database IS 'Run by crm.run_jobs() inside the database';
COMMENT ON COLUMN crm.job_action.consent IS 'Consent the job''s contact must give: email (not email_opt_out) or phone (not do_not_call); NULL for none';
COMMENT ON COLUMN crm.job_action.description IS 'What the action does and its parameters';
COMMENT ON COLUMN crm.job_action.is_builtin IS 'Shipped by the extension (left out of pg_dump; added rows are dumped)';
COMMENT ON COLUMN crm.job_action.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.job_action.updated_at IS 'When the row last changed';

INSERT INTO crm.job_action (code, queue, in_database, consent, description, is_builtin) VALUES
    ('create_task',        'crm',      true,  NULL,    'An activity to do: {"activity_type": "task"|"call"|..., "subject", "due_in" (interval), "owner_id"}; a call needs phone consent', true),
    ('move_stage',         'crm',      true,  NULL,    'Moves the source opportunity or lead: {"stage": name or id}', true),
    ('mark_won',           'crm',      true,  NULL,    'Marks the source opportunity won', true),
    ('set_probability',    'crm',      true,  NULL,    'Sets the source record''s probability by hand: {"probability": 0-100} or {"delta": -100..100}', true),
    ('add_tag',            'crm',      true,  NULL,    'Tags the source record: {"tag": name}', true),
    ('set_field',          'crm',      true,  NULL,    'Sets one user field of the source record: {"field": name, "value": ...}', true),
    ('create_opportunity', 'crm',      true,  NULL,    'Creates an opportunity for the source contact or account: {"name", "amount", "currency"}', true),
    ('send_email',         'email',    false, 'email', 'An e-mail to the job''s contact: {"template", ...}; skipped for email_opt_out', true),
    ('webhook',            'webhook',  false, NULL,    'An HTTP call by a worker: {"url", ...}', true),
    ('invoice',            'billing',  false, NULL,    'An invoice made by the billing worker', true),
    ('receipt',            'billing',  false, 'email', 'A receipt e-mailed to the job''s contact; skipped for email_opt_out', true),
    ('feedback_request',   'email',    false, 'email', 'A feedback request e-mailed to the job''s contact; skipped for email_opt_out', true),
    ('notify',             'notify',   false, NULL,    'A notification to a CRM user: {"user_id", "message"}', true);

-- The authority on idempotency: a key is taken once per tenant and kept as
-- long as its job is ready, running or archived.  crm.job and
-- crm.job_archive cannot carry a unique key between them, and a job moves
-- from one to the other while another transaction may replay its event.
CREATE TABLE crm.job_key (
    tenant_id       uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    idempotency_key uuid NOT NULL,
    job_id          uuid NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, idempotency_key)
);
COMMENT ON TABLE crm.job_key IS 'Idempotency keys taken, with their job: an event replayed or a statement retried finds its key and makes no second job';
COMMENT ON COLUMN crm.job_key.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.job_key.idempotency_key IS 'The key';
COMMENT ON COLUMN crm.job_key.job_id IS 'The job made for it (in crm.job or crm.job_archive)';
COMMENT ON COLUMN crm.job_key.created_at IS 'When the key was taken';
COMMENT ON COLUMN crm.job_key.updated_at IS 'When the row last changed';

-- Internal: the tenant a queue function acts for, or 42501.
CREATE FUNCTION crm.queue_tenant() RETURNS uuid
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    t uuid := crm.current_tenant();
BEGIN
    IF t IS NULL THEN
        RAISE EXCEPTION 'the job queue needs a tenant, and this session acts for none'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'An application role sets crm.tenant_id per transaction; a login role needs crm.grant_tenant_access().';
    END IF;
    RETURN t;
END
$$;
COMMENT ON FUNCTION crm.queue_tenant() IS 'Internal: the tenant the queue functions act for; an error when there is none';

-- Internal: why a job may not run for its contact now, or NULL.  A call
-- task needs phone consent like an e-mail needs e-mail consent.
CREATE FUNCTION crm.job_consent_refusal(tenant uuid, action text, params jsonb, contact uuid)
    RETURNS text
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    channel text;
    c record;
BEGIN
    SELECT a.consent INTO channel FROM crm.job_action a WHERE a.code = $2;
    IF channel IS NULL AND $2 = 'create_task' AND $3->>'activity_type' IN ('call', 'call_made') THEN
        channel := 'phone';
    END IF;
    IF channel IS NULL OR $4 IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT ct.email_opt_out, ct.do_not_call INTO c
      FROM crm.contact ct WHERE ct.tenant_id = $1 AND ct.id = $4;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'contact % does not exist', $4 USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF channel = 'email' AND c.email_opt_out THEN
        RETURN 'the contact opted out of e-mail (email_opt_out)';
    ELSIF channel = 'phone' AND c.do_not_call THEN
        RETURN 'the contact asked not to be called (do_not_call)';
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm.job_consent_refusal(uuid, text, jsonb, uuid) IS
    'Internal: the consent a job''s contact withholds from its action (e-mail opt-out, do-not-call), or NULL';

-- Internal: moves one job of the ready set into the archive.
CREATE FUNCTION crm.job_finish(tenant uuid, job uuid, outcome text, reason text, result jsonb)
    RETURNS void
    LANGUAGE sql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
    WITH gone AS (
        DELETE FROM crm.job j WHERE j.tenant_id = $1 AND j.id = $2 RETURNING j.*)
    INSERT INTO crm.job_archive (tenant_id, id, queue, action, params, rule_id, source_entity, source_id,
                                 contact_id, idempotency_key, run_at, attempts, max_attempts, errors,
                                 outcome, reason, result, enqueued_at)
    SELECT g.tenant_id, g.id, g.queue, g.action, g.params, g.rule_id, g.source_entity, g.source_id,
           g.contact_id, g.idempotency_key, g.run_at, g.attempts, g.max_attempts, g.errors,
           $3, $4, $5, g.created_at
      FROM gone g
$$;
COMMENT ON FUNCTION crm.job_finish(uuid, uuid, text, text, jsonb) IS
    'Internal: moves a job from the ready set to crm.job_archive with its outcome';

CREATE FUNCTION crm.enqueue_job(action text, params jsonb DEFAULT '{}', contact uuid DEFAULT NULL,
                                run_at timestamptz DEFAULT now(), idempotency_key uuid DEFAULT NULL,
                                source_entity text DEFAULT NULL, source_id uuid DEFAULT NULL,
                                rule uuid DEFAULT NULL, max_attempts integer DEFAULT 5)
    RETURNS uuid
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    tenant uuid := crm.queue_tenant();
    act crm.job_action;
    job_id uuid := crm.uuid_generate_v7();
    key uuid := coalesce($5, job_id);
    existing uuid;
    refusal text;
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'action must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO act FROM crm.job_action a WHERE a.code = $1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job action "%" does not exist', $1
            USING ERRCODE = 'foreign_key_violation', HINT = 'The known actions are listed in crm.job_action.';
    END IF;
    IF $2 IS NULL OR jsonb_typeof($2) <> 'object' THEN
        RAISE EXCEPTION 'job parameters must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF $4 IS NULL THEN
        RAISE EXCEPTION 'run_at must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF $9 IS NULL OR $9 NOT BETWEEN 1 AND 100 THEN
        RAISE EXCEPTION 'max_attempts must be between 1 and 100' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    INSERT INTO crm.job_key AS k (tenant_id, idempotency_key, job_id)
    VALUES (tenant, key, job_id)
    ON CONFLICT ON CONSTRAINT job_key_pkey DO NOTHING;
    IF NOT FOUND THEN
        SELECT k.job_id INTO existing FROM crm.job_key k
         WHERE k.tenant_id = tenant AND k.idempotency_key = key;
        RETURN existing;
    END IF;

    refusal := crm.job_consent_refusal(tenant, $1, $2, $3);
    INSERT INTO crm.job (tenant_id, id, queue, action, params, rule_id, source_entity, source_id, contact_id,
                         idempotency_key, run_at, max_attempts)
    VALUES (tenant, job_id, act.queue, $1, $2, $8, $6, $7, $3, key, $4, $9);
    IF refusal IS NOT NULL THEN
        PERFORM crm.job_finish(tenant, job_id, 'skipped', refusal, NULL);
    ELSE
        -- PostgreSQL folds equal notifications of one transaction into one.
        PERFORM pg_notify('crm_jobs', act.queue);
    END IF;
    RETURN job_id;
END
$$;
COMMENT ON FUNCTION crm.enqueue_job(text, jsonb, uuid, timestamptz, uuid, text, uuid, uuid, integer) IS
    'Enqueues a job in its action''s queue and returns its id; with an idempotency key already taken, returns that job''s id and makes none; a job whose contact withholds the consent its action needs is archived as skipped at once; NOTIFY crm_jobs with the queue name, once per queue and transaction';

CREATE FUNCTION crm.claim_jobs(queue text, worker text, max integer DEFAULT 10,
                               lease interval DEFAULT '5 minutes')
    RETURNS SETOF crm.job
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    tenant uuid := crm.queue_tenant();
    j crm.job;
    refusal text;
BEGIN
    IF $1 IS NULL OR $2 IS NULL OR btrim($2) = '' THEN
        RAISE EXCEPTION 'queue and worker must be given' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF $3 IS NULL OR $3 <= 0 THEN
        RAISE EXCEPTION 'max must be positive, not %', $3 USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF $4 IS NULL OR $4 <= interval '0' THEN
        RAISE EXCEPTION 'lease must be a positive interval, not %', $4 USING ERRCODE = 'invalid_parameter_value';
    END IF;

    FOR j IN
        WITH picked AS (
            SELECT r.tenant_id, r.id FROM crm.job r
             WHERE r.tenant_id = tenant AND r.queue = $1 AND r.locked_by IS NULL AND r.run_at <= now()
             ORDER BY r.run_at, r.id
             LIMIT $3
             FOR UPDATE SKIP LOCKED)
        UPDATE crm.job r SET locked_by = $2, locked_until = now() + $4, attempts = r.attempts + 1
          FROM picked p
         WHERE r.tenant_id = p.tenant_id AND r.id = p.id
        RETURNING r.*
    LOOP
        -- Consent may have been withdrawn since the job was enqueued.
        refusal := crm.job_consent_refusal(tenant, j.action, j.params, j.contact_id);
        IF refusal IS NOT NULL THEN
            PERFORM crm.job_finish(tenant, j.id, 'skipped', refusal, NULL);
        ELSE
            RETURN NEXT j;
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION crm.claim_jobs(text, text, integer, interval) IS
    'Takes up to max due jobs of a queue for a worker (FOR UPDATE SKIP LOCKED: two workers never hold the same job) with a lease; a job whose contact has since withdrawn consent is archived as skipped instead of returned';

-- Internal: the job a worker reports on, locked, after checking that it is
-- running, held by that worker (when named) and that its lease holds.
CREATE FUNCTION crm.job_held(job uuid, worker text) RETURNS crm.job
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    tenant uuid := crm.queue_tenant();
    j crm.job;
    done text;
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'job id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO j FROM crm.job r WHERE r.tenant_id = tenant AND r.id = $1 FOR UPDATE;
    IF NOT FOUND THEN
        SELECT a.outcome INTO done FROM crm.job_archive a WHERE a.tenant_id = tenant AND a.id = $1;
        IF FOUND THEN
            RAISE EXCEPTION 'job % is already finished (%)', $1, done USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        RAISE EXCEPTION 'job % does not exist', $1 USING ERRCODE = 'no_data_found';
    END IF;
    IF j.locked_by IS NULL THEN
        RAISE EXCEPTION 'job % is not claimed', $1
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Claim it with crm.claim_jobs() first.';
    END IF;
    IF $2 IS NOT NULL AND j.locked_by <> $2 THEN
        RAISE EXCEPTION 'job % is held by worker "%", not "%"', $1, j.locked_by, $2
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF j.locked_until < now() THEN
        RAISE EXCEPTION 'the lease of job % has expired', $1
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('The lease ended at %s.', j.locked_until),
                  HINT = 'Another worker may hold it now; extend leases with crm.extend_lease() before they run out.';
    END IF;
    RETURN j;
END
$$;
COMMENT ON FUNCTION crm.job_held(uuid, text) IS
    'Internal: locks a running job and checks that the worker holds it and its lease has not expired';

CREATE FUNCTION crm.complete_job(id uuid, result jsonb DEFAULT NULL, worker text DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    j crm.job := crm.job_held($1, $3);
BEGIN
    PERFORM crm.job_finish(j.tenant_id, j.id, 'completed', NULL, $2);
END
$$;
COMMENT ON FUNCTION crm.complete_job(uuid, jsonb, text) IS
    'Reports a claimed job done: it moves to crm.job_archive with the result. Refused (55000) when the job is not claimed, is held by another worker, or its lease expired';

CREATE FUNCTION crm.fail_job(id uuid, error text, worker text DEFAULT NULL)
    RETURNS timestamptz
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    j crm.job := crm.job_held($1, $3);
    errs jsonb;
    backoff float8;
    next_run timestamptz;
BEGIN
    errs := j.errors || jsonb_build_array(jsonb_build_object(
        'at', now(), 'attempt', j.attempts, 'worker', j.locked_by, 'error', coalesce($2, 'unknown error')));
    IF j.attempts >= j.max_attempts THEN
        UPDATE crm.job r SET errors = errs WHERE r.tenant_id = j.tenant_id AND r.id = j.id;
        PERFORM crm.job_finish(j.tenant_id, j.id, 'dead',
                               format('failed %s of %s attempts', j.attempts, j.max_attempts), NULL);
        RETURN NULL;
    END IF;
    -- least(1 hour, 10 s x 2^attempts), plus up to a tenth of it at random
    -- so that jobs failing together do not retry together.
    backoff := least(3600, 10 * power(2, j.attempts));
    next_run := now() + make_interval(secs => backoff * (1 + 0.1 * random()));
    UPDATE crm.job r SET errors = errs, locked_by = NULL, locked_until = NULL, run_at = next_run
     WHERE r.tenant_id = j.tenant_id AND r.id = j.id;
    RETURN next_run;
END
$$;
COMMENT ON FUNCTION crm.fail_job(uuid, text, text) IS
    'Reports a claimed job failed: the error is kept and the job retried after least(1 hour, 10 s x 2^attempts) plus up to 10 % jitter (returns when); after max_attempts it is dead (archived, returns NULL). Refused (55000) like crm.complete_job()';

CREATE FUNCTION crm.extend_lease(id uuid, lease interval, worker text DEFAULT NULL)
    RETURNS timestamptz
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    j crm.job;
    until timestamptz;
BEGIN
    IF $2 IS NULL OR $2 <= interval '0' THEN
        RAISE EXCEPTION 'lease must be a positive interval, not %', $2 USING ERRCODE = 'invalid_parameter_value';
    END IF;
    j := crm.job_held($1, $3);
    UPDATE crm.job r SET locked_until = now() + $2
     WHERE r.tenant_id = j.tenant_id AND r.id = j.id RETURNING r.locked_until INTO until;
    RETURN until;
END
$$;
COMMENT ON FUNCTION crm.extend_lease(uuid, interval, text) IS
    'Makes the lease of a claimed job end the given interval from now; returns the new end. Refused (55000) like crm.complete_job()';

CREATE FUNCTION crm.reap_expired_leases() RETURNS integer
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    tenant uuid := crm.current_tenant();
    j crm.job;
    n integer := 0;
    errs jsonb;
BEGIN
    -- Without a tenant (the operator's maintenance job) every tenant's
    -- jobs are reaped, as far as row-level security lets the caller see.
    FOR j IN
        SELECT * FROM crm.job r
         WHERE (tenant IS NULL OR r.tenant_id = tenant) AND r.locked_by IS NOT NULL AND r.locked_until < now()
         ORDER BY r.tenant_id, r.id
         FOR UPDATE SKIP LOCKED
    LOOP
        errs := j.errors || jsonb_build_array(jsonb_build_object(
            'at', now(), 'attempt', j.attempts, 'worker', j.locked_by, 'error', 'lease expired'));
        IF j.attempts >= j.max_attempts THEN
            UPDATE crm.job r SET errors = errs WHERE r.tenant_id = j.tenant_id AND r.id = j.id;
            PERFORM crm.job_finish(j.tenant_id, j.id, 'dead',
                                   format('lease expired on the last of %s attempts', j.max_attempts), NULL);
        ELSE
            UPDATE crm.job r SET errors = errs, locked_by = NULL, locked_until = NULL, run_at = now()
             WHERE r.tenant_id = j.tenant_id AND r.id = j.id;
            PERFORM pg_notify('crm_jobs', j.queue);
        END IF;
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;
COMMENT ON FUNCTION crm.reap_expired_leases() IS
    'Makes running jobs whose lease expired ready again (or dead after their last attempt); returns how many. Without a tenant it reaps every tenant the caller may see';

CREATE FUNCTION crm.retry_job(id uuid) RETURNS uuid
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    tenant uuid := crm.queue_tenant();
    a crm.job_archive;
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'job id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO a FROM crm.job_archive r WHERE r.tenant_id = tenant AND r.id = $1 FOR UPDATE;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM crm.job r WHERE r.tenant_id = tenant AND r.id = $1) THEN
            RAISE EXCEPTION 'job % is not dead: it is still in the queue', $1
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        RAISE EXCEPTION 'job % does not exist', $1 USING ERRCODE = 'no_data_found';
    END IF;
    IF a.outcome <> 'dead' THEN
        RAISE EXCEPTION 'job % is % and only a dead job can be retried', $1, a.outcome
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    DELETE FROM crm.job_archive r WHERE r.tenant_id = tenant AND r.id = $1;
    INSERT INTO crm.job (tenant_id, id, queue, action, params, rule_id, source_entity, source_id, contact_id,
                         idempotency_key, run_at, attempts, max_attempts, errors, created_at)
    VALUES (a.tenant_id, a.id, a.queue, a.action, a.params, a.rule_id, a.source_entity, a.source_id,
            a.contact_id, a.idempotency_key, now(), 0, a.max_attempts, a.errors, a.enqueued_at);
    PERFORM pg_notify('crm_jobs', a.queue);
    RETURN a.id;
END
$$;
COMMENT ON FUNCTION crm.retry_job(uuid) IS
    'Puts a dead job back in its queue, due now, with its attempts reset and its errors kept; returns its id';

CREATE FUNCTION crm.purge_jobs(older_than interval) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    tenant uuid := crm.current_tenant();
    n bigint;
BEGIN
    IF $1 IS NULL OR $1 < interval '0' THEN
        RAISE EXCEPTION 'older_than must be a non-negative interval, not %', $1
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WITH gone AS (
        DELETE FROM crm.job_archive a
         WHERE (tenant IS NULL OR a.tenant_id = tenant) AND a.finished_at < now() - $1
        RETURNING a.tenant_id, a.idempotency_key),
    keys AS (
        DELETE FROM crm.job_key k USING gone g
         WHERE k.tenant_id = g.tenant_id AND k.idempotency_key = g.idempotency_key)
    SELECT count(*) INTO n FROM gone;
    RETURN n;
END
$$;
COMMENT ON FUNCTION crm.purge_jobs(interval) IS
    'Deletes archived jobs finished longer ago than older_than, with their idempotency keys (a replay after that makes a new job); returns how many. Without a tenant it purges every tenant the caller may see';

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['job', 'job_archive', 'job_key'] LOOP
        EXECUTE format('ALTER TABLE crm.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE crm.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON crm.%I'
                       ' USING (tenant_id = (SELECT crm.current_tenant()))'
                       ' WITH CHECK (tenant_id = (SELECT crm.current_tenant()))', t);
        EXECUTE format('COMMENT ON POLICY tenant_isolation ON crm.%I IS %L', t,
                       'Rows of the tenant the statement acts for (crm.current_tenant()) only');
    END LOOP;
END
$$;
