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
    -- queue and action are copied by the server from crm.job_action, whose
    -- CHECKs hold their form; a regular expression per row here cost every
    -- enqueue and every claim a tenth of its time.
    queue           text NOT NULL,
    action          text NOT NULL,
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
-- No index on the leases: the reaper, which runs once a minute, scans the
-- ready set (small by design), while an index would cost every claim an
-- entry and gave crm.complete_job a plan that walked every lease of the
-- tenant when the plan was made on an empty table.
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

-- The queue's functions are written in C (src/queue.c): they run as the
-- owner of the queue tables with the caller's tenant as a parameter of
-- every statement, so workers need no write access to the tables.

CREATE FUNCTION crm.enqueue_job(action text, params jsonb DEFAULT '{}', contact uuid DEFAULT NULL,
                                run_at timestamptz DEFAULT now(), idempotency_key uuid DEFAULT NULL,
                                source_entity text DEFAULT NULL, source_id uuid DEFAULT NULL,
                                rule uuid DEFAULT NULL, max_attempts integer DEFAULT 5)
    RETURNS uuid
    AS 'MODULE_PATHNAME', 'crm_queue_enqueue'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.enqueue_job(text, jsonb, uuid, timestamptz, uuid, text, uuid, uuid, integer) IS
    'Enqueues a job in its action''s queue and returns its id; with an idempotency key already taken, returns that job''s id and makes none '
    '(NULL when that job is one the caller cannot see: a private tenant''s job about a record hidden from the caller, so its id is not given away); a job whose contact withholds the consent its action needs is archived as skipped at once; NOTIFY crm_jobs with the queue name, once per queue and transaction';

CREATE FUNCTION crm.enqueue_jobs(action text, params jsonb[], contacts uuid[] DEFAULT NULL,
                                 run_at timestamptz DEFAULT now(), idempotency_keys uuid[] DEFAULT NULL,
                                 source_entity text DEFAULT NULL, source_ids uuid[] DEFAULT NULL,
                                 rule uuid DEFAULT NULL, max_attempts integer DEFAULT 5)
    RETURNS uuid[]
    AS 'MODULE_PATHNAME', 'crm_queue_enqueue_many'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.enqueue_jobs(text, jsonb[], uuid[], timestamptz, uuid[], text, uuid[], uuid, integer) IS
    'Enqueues one job of an action per element of params in one statement and returns their ids in order: crm.enqueue_job() for many jobs. contacts, idempotency_keys and source_ids, when given, have one element per job (NULL elements allowed); a key already taken, or taken by an earlier job of the same call, gives that job''s id and makes none (NULL when the caller cannot see that job, as crm.enqueue_job); an empty params makes nothing and returns {}, its action and other arguments checked all the same (an unknown action is 23503)';

CREATE FUNCTION crm.claim_jobs(queue text, worker text, max integer DEFAULT 10,
                               lease interval DEFAULT '5 minutes')
    RETURNS SETOF crm.job
    AS 'MODULE_PATHNAME', 'crm_queue_claim'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.claim_jobs(text, text, integer, interval) IS
    'Takes up to max due jobs of a queue for a worker (FOR UPDATE SKIP LOCKED: two workers never hold the same job) with a lease, oldest due first from where the session''s last claim of the queue began (a job due before that is taken by the next claim that looks from the start: every hundredth, or one a second later); a job whose contact has since withdrawn consent is archived as skipped instead of returned';

CREATE FUNCTION crm.complete_job(id uuid, result jsonb DEFAULT NULL, worker text DEFAULT NULL)
    RETURNS void
    AS 'MODULE_PATHNAME', 'crm_queue_complete'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.complete_job(uuid, jsonb, text) IS
    'Reports a claimed job done: it moves to crm.job_archive with the result. Refused (55000) when the job is not claimed, is held by another worker than the one named, or its lease expired';

CREATE FUNCTION crm.complete_jobs(ids uuid[], worker text, result jsonb DEFAULT NULL)
    RETURNS integer
    AS 'MODULE_PATHNAME', 'crm_queue_complete_many'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.complete_jobs(uuid[], text, jsonb) IS
    'Reports a batch of claimed jobs done in one statement (each moves to crm.job_archive with the result); returns how many. All or nothing: when one job is not claimed, is held by another worker than the one named (NULL: any), its lease expired, or it is named twice, nothing is completed and the error names that job (55000, P0002, 22023)';

CREATE FUNCTION crm.fail_job(id uuid, error text, worker text DEFAULT NULL)
    RETURNS timestamptz
    AS 'MODULE_PATHNAME', 'crm_queue_fail'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.fail_job(uuid, text, text) IS
    'Reports a claimed job failed: the error is kept and the job retried after least(1 hour, 10 s x 2^attempts) plus up to 10 % jitter (returns when); after max_attempts it is dead (archived; returns NULL). Refused (55000) like crm.complete_job()';

CREATE FUNCTION crm.fail_jobs(ids uuid[], worker text, error text)
    RETURNS TABLE (id uuid, next_run timestamptz)
    AS 'MODULE_PATHNAME', 'crm_queue_fail_many'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.fail_jobs(uuid[], text, text) IS
    'Reports a batch of claimed jobs failed with one error, as crm.fail_job() does for each: returns each job with when it runs again (NULL: it died). All or nothing, as crm.complete_jobs()';

CREATE FUNCTION crm.extend_lease(id uuid, lease interval, worker text DEFAULT NULL)
    RETURNS timestamptz
    AS 'MODULE_PATHNAME', 'crm_queue_extend_lease'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.extend_lease(uuid, interval, text) IS
    'Makes the lease of a claimed job end the given interval from now; returns the new end. Refused (55000) like crm.complete_job()';

CREATE FUNCTION crm.reap_expired_leases() RETURNS integer
    AS 'MODULE_PATHNAME', 'crm_queue_reap'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.reap_expired_leases() IS
    'Makes running jobs whose lease expired ready again (dead after their last attempt); returns how many. With a tenant, only the jobs the caller may see (in a private tenant, visible_to), unless the caller is a superuser or BYPASSRLS role, which reaps them all. Without a tenant it reaps every tenant: the operator''s scheduled maintenance (a superuser or BYPASSRLS role); any other role needs a tenant (42501)';

CREATE FUNCTION crm.retry_job(id uuid) RETURNS uuid
    AS 'MODULE_PATHNAME', 'crm_queue_retry'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.retry_job(uuid) IS
    'Puts a dead job back in its queue, due now, attempts reset and errors kept; returns its id. Only a dead job (55000 otherwise)';

CREATE FUNCTION crm.purge_jobs(older_than interval) RETURNS bigint
    AS 'MODULE_PATHNAME', 'crm_queue_purge'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.purge_jobs(interval) IS
    'Deletes archived jobs finished longer ago than older_than, with their idempotency keys (a replay after that makes a new job); returns how many. Without a tenant it purges every tenant: the operator''s scheduled maintenance (a superuser or BYPASSRLS role); any other role needs a tenant (42501)';

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['job', 'job_archive', 'job_key'] LOOP
        EXECUTE format('ALTER TABLE crm.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE crm.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON crm.%I'
                       ' USING (tenant_id = crm.current_tenant())'
                       ' WITH CHECK (tenant_id = crm.current_tenant())', t);
        EXECUTE format('COMMENT ON POLICY tenant_isolation ON crm.%I IS %L', t,
                       'Rows of the tenant the statement acts for (crm.current_tenant()) only');
    END LOOP;
END
$$;
