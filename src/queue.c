/*-------------------------------------------------------------------------
 *
 * queue.c
 *	  The job queue: enqueue, claim, complete, fail, extend, reap, retry
 *	  and purge (src/sql/89_queue.sql declares the tables and functions).
 *
 * Jobs are the server's state: every statement here runs as the owner of
 * the queue tables, with the tenant the caller acts for as a parameter of
 * every query, so a worker needs EXECUTE on these functions and SELECT on
 * the tables but can neither forge a job's attempts and errors nor touch
 * another tenant's jobs.  A job leaves crm.job (the ready set) for
 * crm.job_archive in the statement that finishes it, so claims scan a set
 * that stays small however long the queue has run.
 *
 * Idempotency: crm.job_key holds every key taken (ready, running or
 * archived), so the same key never makes a second job, even while another
 * transaction moves the first one to the archive.
 *
 * Consent: an action that needs e-mail or phone consent (crm.job_action.
 * consent; a call task needs phone consent) is checked against the job's
 * contact when the job is enqueued and again when it is claimed, since the
 * contact may opt out in between; a refused job is archived as skipped with
 * the reason and never handed to a worker.
 *
 * Batches: crm_queue_enqueue_jobs() (crm.h) enqueues many jobs in one
 * statement of arrays, for C callers such as the workflow rules and for
 * crm.enqueue_jobs(); crm.complete_jobs() and crm.fail_jobs() report a
 * worker's batch in one call, all or nothing.
 *
 * One identity: the reads run as the owner too (the records a job names,
 * the contact's consent), with the caller's tenant and visibility applied
 * in the statements, because Citus refuses a transaction that touches a
 * tenant's shards as two different users.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include <math.h>

#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "access/relation.h"
#include "storage/bufmgr.h"
#include "utils/acl.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(crm_queue_enqueue);
PG_FUNCTION_INFO_V1(crm_queue_enqueue_many);
PG_FUNCTION_INFO_V1(crm_queue_claim);
PG_FUNCTION_INFO_V1(crm_queue_complete_many);
PG_FUNCTION_INFO_V1(crm_queue_fail_many);
PG_FUNCTION_INFO_V1(crm_queue_complete);
PG_FUNCTION_INFO_V1(crm_queue_fail);
PG_FUNCTION_INFO_V1(crm_queue_extend_lease);
PG_FUNCTION_INFO_V1(crm_queue_reap);
PG_FUNCTION_INFO_V1(crm_queue_retry);
PG_FUNCTION_INFO_V1(crm_queue_purge);

/* Retry backoff: least(cap, base x 2^attempts), plus up to a tenth more. */
#define BACKOFF_BASE_SECONDS	10.0
#define BACKOFF_CAP_SECONDS		3600.0
#define BACKOFF_JITTER			0.1

typedef enum QueuePlan
{
	PLAN_ACTION,
	PLAN_CONTACT_CONSENT,
	PLAN_KEY_HOLDERS,
	PLAN_DEBOUNCE,
	PLAN_ENQUEUE,
	PLAN_ENQUEUE_ONE,
	PLAN_FINISH,
	PLAN_COMPLETE,
	PLAN_COMPLETE_MANY,
	PLAN_CLAIM,
	PLAN_HELD,
	PLAN_ARCHIVED_OUTCOME,
	PLAN_RETRY_LATER,
	PLAN_ADD_ERROR,
	PLAN_EXTEND,
	PLAN_EXPIRED,
	PLAN_EXPIRED_ALL,
	PLAN_RETRY_DEAD,
	PLAN_PURGE,
	PLAN_PURGE_ALL,
	NUM_QUEUE_PLANS
} QueuePlan;

typedef struct QueuePlanSpec
{
	const char *sql;
	int			nargs;
	Oid			argtypes[13];
} QueuePlanSpec;

/*
 * Every statement is qualified (schema crm, operators and functions of
 * pg_catalog) so that no session setting can redirect it.
 */
static const QueuePlanSpec plan_specs[NUM_QUEUE_PLANS] = {
	[PLAN_ACTION] = {
		"SELECT queue, consent FROM crm.job_action WHERE code OPERATOR(pg_catalog.=) $1",
		1, {TEXTOID}
	},
	[PLAN_CONTACT_CONSENT] = {
		"SELECT email_opt_out, do_not_call FROM crm.contact"
		" WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND id OPERATOR(pg_catalog.=) $2",
		2, {UUIDOID, UUIDOID}
	},
	[PLAN_KEY_HOLDERS] = {
		/*
		 * The job holding each key, and whether the caller may see it (as
		 * JOB_VISIBLE below): the id of a job hidden from the caller is not
		 * given away.
		 */
		"SELECT k.idempotency_key, k.job_id,"
		" EXISTS (SELECT FROM crm.job j WHERE j.tenant_id OPERATOR(pg_catalog.=) $1"
		"   AND j.id OPERATOR(pg_catalog.=) k.job_id AND (j.visible_to IS NULL"
		"   OR crm.current_user_id() OPERATOR(pg_catalog.=) ANY (j.visible_to) OR crm.is_admin() OR crm.is_service()))"
		" OR EXISTS (SELECT FROM crm.job_archive a WHERE a.tenant_id OPERATOR(pg_catalog.=) $1"
		"   AND a.id OPERATOR(pg_catalog.=) k.job_id AND (a.visible_to IS NULL"
		"   OR crm.current_user_id() OPERATOR(pg_catalog.=) ANY (a.visible_to) OR crm.is_admin() OR crm.is_service()))"
		" FROM crm.job_key k"
		" WHERE k.tenant_id OPERATOR(pg_catalog.=) $1 AND k.idempotency_key OPERATOR(pg_catalog.=) ANY ($2)",
		2, {UUIDOID, UUIDARRAYOID}
	},
	[PLAN_DEBOUNCE] = {
		/*
		 * The debounce windows of a batch (one row per rule and subject):
		 * which of them fire, by their position in the arrays.  A row that
		 * exists fires when its window has passed; the UPDATE re-checks that
		 * on the latest version after waiting for a concurrent firing, so
		 * two transactions never both fire inside one window.  A row that
		 * does not exist fires when this statement makes it; one made
		 * meanwhile by another transaction has just fired (DO NOTHING).
		 */
		"WITH x AS MATERIALIZED (SELECT * FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.uuid[]),"
		"   pg_catalog.unnest($3::pg_catalog.uuid[]), pg_catalog.unnest($4::pg_catalog.interval[]))"
		"  WITH ORDINALITY AS x(rule_id, subject_id, span, n)),"
		" u AS (UPDATE crm.job_debounce d SET last_at = pg_catalog.now() FROM x"
		"  WHERE d.tenant_id OPERATOR(pg_catalog.=) $1 AND d.rule_id OPERATOR(pg_catalog.=) x.rule_id"
		"   AND d.subject_id OPERATOR(pg_catalog.=) x.subject_id"
		"   AND d.last_at OPERATOR(pg_catalog.<=) (pg_catalog.now() OPERATOR(pg_catalog.-) x.span)"
		"  RETURNING x.n),"
		" i AS (INSERT INTO crm.job_debounce (tenant_id, rule_id, subject_id, last_at)"
		"  SELECT $1, x.rule_id, x.subject_id, pg_catalog.now() FROM x"
		"  WHERE NOT EXISTS (SELECT FROM crm.job_debounce d WHERE d.tenant_id OPERATOR(pg_catalog.=) $1"
		"   AND d.rule_id OPERATOR(pg_catalog.=) x.rule_id AND d.subject_id OPERATOR(pg_catalog.=) x.subject_id)"
		"  ON CONFLICT ON CONSTRAINT job_debounce_pkey DO NOTHING RETURNING rule_id, subject_id)"
		" SELECT u.n FROM u UNION ALL"
		" SELECT x.n FROM x JOIN i ON i.rule_id OPERATOR(pg_catalog.=) x.rule_id"
		"  AND i.subject_id OPERATOR(pg_catalog.=) x.subject_id",
		4, {UUIDOID, UUIDARRAYOID, UUIDARRAYOID, INTERVALARRAYOID}
	},
	[PLAN_ENQUEUE] = {
		/*
		 * A batch of jobs, one array per column ($13: the consent each job's
		 * action needs of its contact, NULL for none).  A job is made only
		 * when it takes its idempotency key; its contact's consent is read
		 * then, and a refused job goes straight to the archive as skipped.
		 * Returns the positions of the jobs made, the queues that got a
		 * ready job, and a contact whose consent was needed but that does
		 * not exist (the caller's error).
		 */
		"WITH r AS MATERIALIZED (SELECT * FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.uuid[]),"
		"   pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.text[]),"
		"   pg_catalog.unnest($5::pg_catalog.jsonb[]), pg_catalog.unnest($6::pg_catalog.uuid[]),"
		"   pg_catalog.unnest($7::pg_catalog.text[]), pg_catalog.unnest($8::pg_catalog.uuid[]),"
		"   pg_catalog.unnest($9::pg_catalog.uuid[]), pg_catalog.unnest($10::pg_catalog.uuid[]),"
		"   pg_catalog.unnest($11::pg_catalog.timestamptz[]), pg_catalog.unnest($12::pg_catalog.int4[]),"
		"   pg_catalog.unnest($13::pg_catalog.text[]))"
		"  WITH ORDINALITY AS r(id, action, queue, params, rule_id, source_entity, source_id, contact_id,"
		"   idempotency_key, run_at, max_attempts, consent, n)),"
		" k AS (INSERT INTO crm.job_key (tenant_id, idempotency_key, job_id)"
		"  SELECT $1, r.idempotency_key, r.id FROM r"
		"  ON CONFLICT ON CONSTRAINT job_key_pkey DO NOTHING RETURNING job_id),"
		/*
		 * The contact is read by id, one index probe per job that needs
		 * consent ('' when it does not exist): a join would read every
		 * contact of the tenant.
		 */
		" c AS MATERIALIZED (SELECT r.*, CASE WHEN r.consent IS NULL THEN NULL ELSE coalesce(("
		"   SELECT CASE WHEN r.consent OPERATOR(pg_catalog.=) 'email' AND t.email_opt_out"
		"     THEN 'the contact opted out of e-mail (email_opt_out)'"
		"    WHEN r.consent OPERATOR(pg_catalog.=) 'phone' AND t.do_not_call"
		"     THEN 'the contact asked not to be called (do_not_call)' ELSE 'ok' END"
		"   FROM crm.contact t WHERE t.tenant_id OPERATOR(pg_catalog.=) $1"
		"    AND t.id OPERATOR(pg_catalog.=) r.contact_id), '') END AS verdict"
		"  FROM r JOIN k ON k.job_id OPERATOR(pg_catalog.=) r.id),"
		" ready AS (INSERT INTO crm.job (tenant_id, id, queue, action, params, rule_id, source_entity,"
		"   source_id, contact_id, idempotency_key, run_at, max_attempts)"
		"  SELECT $1, c.id, c.queue, c.action, c.params, c.rule_id, c.source_entity, c.source_id,"
		"   c.contact_id, c.idempotency_key, c.run_at, c.max_attempts FROM c"
		"  WHERE c.verdict IS NULL OR c.verdict OPERATOR(pg_catalog.=) 'ok'"
		"  RETURNING queue),"
		" skipped AS (INSERT INTO crm.job_archive (tenant_id, id, queue, action, params, rule_id,"
		"   source_entity, source_id, contact_id, idempotency_key, run_at, attempts, max_attempts, errors,"
		"   outcome, reason, result, enqueued_at)"
		"  SELECT $1, c.id, c.queue, c.action, c.params, c.rule_id, c.source_entity, c.source_id,"
		"   c.contact_id, c.idempotency_key, c.run_at, 0, c.max_attempts, '[]', 'skipped', c.verdict, NULL,"
		"   pg_catalog.now() FROM c"
		"  WHERE c.verdict OPERATOR(pg_catalog.<>) '' AND c.verdict OPERATOR(pg_catalog.<>) 'ok')"
		" SELECT ARRAY(SELECT c.n FROM c), ARRAY(SELECT DISTINCT ready.queue FROM ready),"
		"  (SELECT c.contact_id FROM c WHERE c.verdict OPERATOR(pg_catalog.=) '' LIMIT 1)",
		13, {UUIDOID, UUIDARRAYOID, TEXTARRAYOID, TEXTARRAYOID, JSONBARRAYOID, UUIDARRAYOID,
			TEXTARRAYOID, UUIDARRAYOID, UUIDARRAYOID, UUIDARRAYOID, TIMESTAMPTZARRAYOID,
		INT4ARRAYOID, TEXTARRAYOID}
	},
	[PLAN_ENQUEUE_ONE] = {
		/*
		 * PLAN_ENQUEUE for one job without a contact (so no consent to
		 * read), the usual single enqueue: the key and the job in one
		 * statement that also reads the action, so nothing else runs.  No
		 * row when the key was taken, or the action does not exist.
		 */
		"WITH k AS (INSERT INTO crm.job_key (tenant_id, idempotency_key, job_id) VALUES ($1, $9, $2)"
		"  ON CONFLICT ON CONSTRAINT job_key_pkey DO NOTHING RETURNING job_id)"
		" INSERT INTO crm.job (tenant_id, id, queue, action, params, rule_id, source_entity, source_id,"
		" contact_id, idempotency_key, run_at, max_attempts)"
		" SELECT $1, k.job_id, a.queue, a.code, $4, $5, $6, $7, $8, $9, $10, $11"
		" FROM k, crm.job_action a WHERE a.code OPERATOR(pg_catalog.=) $3 RETURNING queue",
		11, {UUIDOID, UUIDOID, TEXTOID, JSONBOID, UUIDOID, TEXTOID, UUIDOID, UUIDOID, UUIDOID,
		TIMESTAMPTZOID, INT4OID}
	},
	[PLAN_FINISH] = {
		"WITH gone AS (DELETE FROM crm.job j"
		"  WHERE j.tenant_id OPERATOR(pg_catalog.=) $1 AND j.id OPERATOR(pg_catalog.=) $2 RETURNING j.*)"
		" INSERT INTO crm.job_archive (tenant_id, id, queue, action, params, rule_id, source_entity, source_id,"
		"  contact_id, idempotency_key, run_at, attempts, max_attempts, errors, outcome, reason, result, enqueued_at)"
		" SELECT g.tenant_id, g.id, g.queue, g.action, g.params, g.rule_id, g.source_entity, g.source_id,"
		"  g.contact_id, g.idempotency_key, g.run_at, g.attempts, g.max_attempts, g.errors, $3, $4, $5, g.created_at"
		" FROM gone g",
		5, {UUIDOID, UUIDOID, TEXTOID, TEXTOID, JSONBOID}
	},
	/*
	 * The plans run as the table owner, whom row-level security does not
	 * fence when a superuser installed the extension: a job about a record
	 * the caller cannot see (visible_to, src/sql/93_private_derived.sql) is
	 * neither claimed nor found by id, as the policy would have it.
	 */
#define JOB_VISIBLE(alias) \
		" AND (" alias "visible_to IS NULL" \
		" OR crm.current_user_id() OPERATOR(pg_catalog.=) ANY (" alias "visible_to)" \
		" OR crm.is_admin() OR crm.is_service())"
	[PLAN_COMPLETE] = {
		/*
		 * complete_job in one statement when every check passes: the job is
		 * claimed, by the named worker if one is named ($4), and its lease
		 * has not run out (the checks of job_held, which runs when this
		 * finds no row, to say what is wrong).  The DELETE locks the row and
		 * re-checks the conditions on its latest version, as job_held's
		 * SELECT ... FOR UPDATE does.
		 */
		"WITH gone AS (DELETE FROM crm.job j"
		"  WHERE j.tenant_id OPERATOR(pg_catalog.=) $1 AND j.id OPERATOR(pg_catalog.=) $2"
		"   AND j.locked_by IS NOT NULL"
		"   AND ($4::pg_catalog.text IS NULL OR j.locked_by OPERATOR(pg_catalog.=) $4)"
		"   AND j.locked_until OPERATOR(pg_catalog.>=) pg_catalog.now()"
		JOB_VISIBLE("j.")
		"  RETURNING j.*)"
		" INSERT INTO crm.job_archive (tenant_id, id, queue, action, params, rule_id, source_entity, source_id,"
		"  contact_id, idempotency_key, run_at, attempts, max_attempts, errors, outcome, reason, result, enqueued_at)"
		" SELECT g.tenant_id, g.id, g.queue, g.action, g.params, g.rule_id, g.source_entity, g.source_id,"
		"  g.contact_id, g.idempotency_key, g.run_at, g.attempts, g.max_attempts, g.errors, 'completed', NULL, $3,"
		"  g.created_at"
		" FROM gone g",
		4, {UUIDOID, UUIDOID, JSONBOID, TEXTOID}
	},
	[PLAN_COMPLETE_MANY] = {
		/* PLAN_COMPLETE for an array of jobs ($2): the ids completed */
		"WITH gone AS (DELETE FROM crm.job j"
		"  WHERE j.tenant_id OPERATOR(pg_catalog.=) $1 AND j.id OPERATOR(pg_catalog.=) ANY ($2)"
		"   AND j.locked_by IS NOT NULL"
		"   AND ($4::pg_catalog.text IS NULL OR j.locked_by OPERATOR(pg_catalog.=) $4)"
		"   AND j.locked_until OPERATOR(pg_catalog.>=) pg_catalog.now()"
		JOB_VISIBLE("j.")
		"  RETURNING j.*)"
		" INSERT INTO crm.job_archive (tenant_id, id, queue, action, params, rule_id, source_entity, source_id,"
		"  contact_id, idempotency_key, run_at, attempts, max_attempts, errors, outcome, reason, result, enqueued_at)"
		" SELECT g.tenant_id, g.id, g.queue, g.action, g.params, g.rule_id, g.source_entity, g.source_id,"
		"  g.contact_id, g.idempotency_key, g.run_at, g.attempts, g.max_attempts, g.errors, 'completed', NULL, $3,"
		"  g.created_at"
		" FROM gone g RETURNING id",
		4, {UUIDOID, UUIDARRAYOID, JSONBOID, TEXTOID}
	},
	[PLAN_CLAIM] = {
		/*
		 * The ids come from an array sub-query so that, whatever plan the
		 * cache settles on, the claim is two index scans: a join with a CTE
		 * turns into a scan of the whole ready set once the plan is generic.
		 */
		"UPDATE crm.job r SET locked_by = $4,"
		"  locked_until = pg_catalog.now() OPERATOR(pg_catalog.+) $5,"
		"  attempts = r.attempts OPERATOR(pg_catalog.+) 1, updated_at = pg_catalog.now()"
		" WHERE r.tenant_id OPERATOR(pg_catalog.=) $1"
		"  AND r.id OPERATOR(pg_catalog.=) ANY (ARRAY("
		"   SELECT q.id FROM crm.job q"
		"    WHERE q.tenant_id OPERATOR(pg_catalog.=) $1 AND q.queue OPERATOR(pg_catalog.=) $2"
		"     AND q.locked_by IS NULL AND q.run_at OPERATOR(pg_catalog.<=) pg_catalog.now()"
		"     AND q.run_at OPERATOR(pg_catalog.>=) $6 AND q.run_at OPERATOR(pg_catalog.<) $7"
		JOB_VISIBLE("q.")
		"    ORDER BY q.run_at, q.id LIMIT $3 FOR UPDATE SKIP LOCKED))"
		" RETURNING r.*",
		7, {UUIDOID, TEXTOID, INT4OID, TEXTOID, INTERVALOID, TIMESTAMPTZOID, TIMESTAMPTZOID}
	},
	[PLAN_HELD] = {
		"SELECT locked_by, locked_until OPERATOR(pg_catalog.<) pg_catalog.now(), attempts, max_attempts, queue,"
		" locked_until"
		" FROM crm.job WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND id OPERATOR(pg_catalog.=) $2"
		JOB_VISIBLE("")
		" FOR UPDATE",
		2, {UUIDOID, UUIDOID}
	},
	[PLAN_ARCHIVED_OUTCOME] = {
		"SELECT outcome FROM crm.job_archive"
		" WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND id OPERATOR(pg_catalog.=) $2"
		JOB_VISIBLE(""),
		2, {UUIDOID, UUIDOID}
	},
	/*
	 * The error entry is built from parameters (the attempt and the worker
	 * read under the row lock), not from the row's columns: Citus refuses a
	 * stable function such as jsonb_build_object() over columns in an
	 * UPDATE.
	 */
#define ERROR_ENTRY(err, attempt, worker) \
		" pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(" \
		"  'at', pg_catalog.now(), 'attempt', " attempt "::pg_catalog.int4, 'worker', " worker "::pg_catalog.text," \
		"  'error', " err "::pg_catalog.text))"
	[PLAN_RETRY_LATER] = {
		"UPDATE crm.job SET locked_by = NULL, locked_until = NULL, run_at = $3, updated_at = pg_catalog.now(),"
		" errors = errors OPERATOR(pg_catalog.||)" ERROR_ENTRY("$4", "$5", "$6")
		" WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND id OPERATOR(pg_catalog.=) $2",
		6, {UUIDOID, UUIDOID, TIMESTAMPTZOID, TEXTOID, INT4OID, TEXTOID}
	},
	[PLAN_ADD_ERROR] = {
		"UPDATE crm.job SET updated_at = pg_catalog.now(),"
		" errors = errors OPERATOR(pg_catalog.||)" ERROR_ENTRY("$3", "$4", "$5")
		" WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND id OPERATOR(pg_catalog.=) $2",
		5, {UUIDOID, UUIDOID, TEXTOID, INT4OID, TEXTOID}
	},
	[PLAN_EXTEND] = {
		"UPDATE crm.job SET locked_until = pg_catalog.now() OPERATOR(pg_catalog.+) $3, updated_at = pg_catalog.now()"
		" WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND id OPERATOR(pg_catalog.=) $2 RETURNING locked_until",
		3, {UUIDOID, UUIDOID, INTERVALOID}
	},
	[PLAN_EXPIRED] = {
		/* $2: the maintenance role, which reaps every job of the tenant */
		"SELECT tenant_id, id, attempts OPERATOR(pg_catalog.>=) max_attempts, queue, max_attempts,"
		" attempts, locked_by FROM crm.job"
		" WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND locked_by IS NOT NULL"
		"  AND locked_until OPERATOR(pg_catalog.<) pg_catalog.now()"
		"  AND ($2 OR visible_to IS NULL"
		"   OR crm.current_user_id() OPERATOR(pg_catalog.=) ANY (visible_to) OR crm.is_admin() OR crm.is_service())"
		" ORDER BY tenant_id, id FOR UPDATE SKIP LOCKED",
		2, {UUIDOID, BOOLOID}
	},
	[PLAN_EXPIRED_ALL] = {
		"SELECT tenant_id, id, attempts OPERATOR(pg_catalog.>=) max_attempts, queue, max_attempts,"
		" attempts, locked_by FROM crm.job"
		" WHERE locked_by IS NOT NULL AND locked_until OPERATOR(pg_catalog.<) pg_catalog.now()"
		" ORDER BY tenant_id, id FOR UPDATE SKIP LOCKED",
		0, {0}
	},
	[PLAN_RETRY_DEAD] = {
		"WITH back AS (DELETE FROM crm.job_archive a"
		"  WHERE a.tenant_id OPERATOR(pg_catalog.=) $1 AND a.id OPERATOR(pg_catalog.=) $2"
		"   AND a.outcome OPERATOR(pg_catalog.=) 'dead'"
		JOB_VISIBLE("a.")
		"  RETURNING a.*)"
		" INSERT INTO crm.job (tenant_id, id, queue, action, params, rule_id, source_entity, source_id,"
		"  contact_id, idempotency_key, run_at, attempts, max_attempts, errors, created_at)"
		" SELECT b.tenant_id, b.id, b.queue, b.action, b.params, b.rule_id, b.source_entity, b.source_id,"
		"  b.contact_id, b.idempotency_key, pg_catalog.now(), 0, b.max_attempts, b.errors, b.enqueued_at"
		" FROM back b RETURNING queue",
		2, {UUIDOID, UUIDOID}
	},
	[PLAN_PURGE] = {
		"WITH gone AS (DELETE FROM crm.job_archive a WHERE a.tenant_id OPERATOR(pg_catalog.=) $1"
		"   AND a.finished_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) $2)"
		"  RETURNING a.tenant_id, a.idempotency_key),"
		" keys AS (DELETE FROM crm.job_key k USING gone g"
		"  WHERE k.tenant_id OPERATOR(pg_catalog.=) g.tenant_id"
		"   AND k.tenant_id OPERATOR(pg_catalog.=) $1 AND k.idempotency_key OPERATOR(pg_catalog.=) g.idempotency_key)"
		" SELECT pg_catalog.count(*) FROM gone",
		2, {UUIDOID, INTERVALOID}
	},
	[PLAN_PURGE_ALL] = {
		"WITH gone AS (DELETE FROM crm.job_archive a"
		"  WHERE a.finished_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) $1)"
		"  RETURNING a.tenant_id, a.idempotency_key),"
		" keys AS (DELETE FROM crm.job_key k USING gone g"
		"  WHERE k.tenant_id OPERATOR(pg_catalog.=) g.tenant_id"
		"   AND k.idempotency_key OPERATOR(pg_catalog.=) g.idempotency_key)"
		" SELECT pg_catalog.count(*) FROM gone",
		1, {INTERVALOID}
	},
};

static SPIPlanPtr plans[NUM_QUEUE_PLANS];

/* What a queue function saves while it runs as the tables' owner. */
typedef struct QueueSession
{
	Oid			save_userid;
	int			save_sec_context;
} QueueSession;

/*
 * The planner learns how big crm.job is only when it plans, and a queue's
 * ready set swings from empty to a backlog of thousands and back faster
 * than autovacuum analyzes it: a plan made on the nearly empty table reads
 * the tenant's whole ready set to find the hundred ids of "id = ANY (...)"
 * once the backlog has grown.  So the plans whose shape depends on that
 * size are made afresh whenever the table has doubled or halved (in pages)
 * since they were made: a prepare and a few custom plans, a handful of
 * times as a backlog grows.
 */
static BlockNumber plan_blocks[NUM_QUEUE_PLANS];

static BlockNumber
job_table_blocks(void)
{
	Oid			relid = get_relname_relid("job", get_namespace_oid("crm", false));
	Relation	rel;
	BlockNumber blocks;

	if (!OidIsValid(relid))
		return 0;
	rel = relation_open(relid, AccessShareLock);
	blocks = RelationGetNumberOfBlocks(rel);
	relation_close(rel, AccessShareLock);
	return blocks;
}

static SPIPlanPtr
queue_plan(QueuePlan which)
{
	bool		size_matters = (which == PLAN_CLAIM || which == PLAN_COMPLETE_MANY);
	BlockNumber blocks = size_matters ? job_table_blocks() : 0;

	if (plans[which] != NULL && size_matters &&
		(blocks >= 2 * plan_blocks[which] + 16 || plan_blocks[which] >= 2 * blocks + 16))
	{
		SPI_freeplan(plans[which]);
		plans[which] = NULL;
	}
	plan_blocks[which] = plans[which] == NULL ? blocks : plan_blocks[which];
	if (plans[which] == NULL)
	{
		const QueuePlanSpec *spec = &plan_specs[which];
		/*
		 * PostgreSQL chooses custom or generic plans: forcing generic ones
		 * saved a planning per call on one node, but Citus cannot plan the
		 * batch statements generically when a trigger on a shard runs them
		 * ("could not create distributed plan").
		 */
		SPIPlanPtr	plan = SPI_prepare(spec->sql, spec->nargs, (Oid *) spec->argtypes);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s",
				 spec->sql, SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		plans[which] = plan;
	}
	return plans[which];
}

static int
run(QueuePlan which, Datum *args, const char *nulls, long limit)
{
	int			rc = SPI_execute_plan(queue_plan(which), args, nulls, false, limit);

	if (rc < 0)
		elog(ERROR, "queue statement failed: %s", SPI_result_code_string(rc));
	return rc;
}

/*
 * The owner of the queue tables, looked up once per statement: a batch of
 * a hundred enqueues in one statement asks the catalog once.
 */
static Oid
queue_owner(void)
{
	static CrmCommandKey key;
	static Oid	owner = InvalidOid;
	CrmCommandKey now = crm_command_key_current();

	if (!OidIsValid(owner) || !crm_command_key_equal(key, now))
	{
		owner = crm_table_owner("job");
		key = now;
	}
	return owner;
}

static void
queue_begin(QueueSession *session)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	GetUserIdAndSecContext(&session->save_userid, &session->save_sec_context);
	SetUserIdAndSecContext(queue_owner(),
						   session->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
}

/*
 * The queue and the consent of an action (crm.job_action), remembered for
 * the rest of the statement: a statement that enqueues or claims many jobs
 * of one action reads the row once, and sees what the first read saw (the
 * statement's snapshot would give the same answer every time).  An unknown
 * action is not remembered; the caller raises its error.  Returns false
 * when the action does not exist.  The caller is connected to SPI.
 */
typedef struct ActionInfo
{
	char		code[NAMEDATALEN];
	char		queue[NAMEDATALEN];
	char		consent[NAMEDATALEN];
	bool		has_consent;
} ActionInfo;

#define ACTION_CACHE_SIZE 8

static bool
action_lookup(const char *code, ActionInfo *out)
{
	static CrmCommandKey key;
	static bool key_set = false;
	static ActionInfo cache[ACTION_CACHE_SIZE];
	static int	ncached = 0;
	CrmCommandKey now = crm_command_key_current();
	Datum		args[1];
	char	   *queue;
	char	   *consent;

	if (!key_set || !crm_command_key_equal(key, now))
	{
		key = now;
		key_set = true;
		ncached = 0;
	}
	for (int i = 0; i < ncached; i++)
		if (strcmp(cache[i].code, code) == 0)
		{
			*out = cache[i];
			return true;
		}

	args[0] = CStringGetTextDatum(code);
	run(PLAN_ACTION, args, NULL, 1);
	if (SPI_processed == 0)
		return false;
	queue = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	consent = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	/* the table's checks keep code and queue short; be safe anyway */
	if (strlen(code) >= NAMEDATALEN || strlen(queue) >= NAMEDATALEN ||
		(consent && strlen(consent) >= NAMEDATALEN))
		elog(ERROR, "job action \"%s\" has a name or queue too long", code);
	memset(out, 0, sizeof(*out));
	strlcpy(out->code, code, NAMEDATALEN);
	strlcpy(out->queue, queue, NAMEDATALEN);
	out->has_consent = consent != NULL;
	if (consent)
		strlcpy(out->consent, consent, NAMEDATALEN);
	if (ncached < ACTION_CACHE_SIZE)
		cache[ncached++] = *out;
	return true;
}

/*
 * Back to the caller's identity.  An error raised in between needs no
 * undoing: aborting the (sub)transaction restores the user id and security
 * context, as it does for the owner switch of a SECURITY DEFINER function.
 */
static void
queue_end(QueueSession *session)
{
	SetUserIdAndSecContext(session->save_userid, session->save_sec_context);
	SPI_finish();
}

/* The tenant the caller acts for, or the clear 42501 every function gives. */
static pg_uuid_t
queue_tenant(void)
{
	pg_uuid_t	tenant;

	if (!crm_current_tenant_id(&tenant))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("the job queue needs a tenant, and this session acts for none"),
				 errhint("An application role sets crm.tenant_id per transaction; a login role needs crm.grant_tenant_access().")));
	return tenant;
}

static int
interval_sign(Datum interval)
{
	Interval	zero;

	memset(&zero, 0, sizeof(zero));
	return DatumGetInt32(DirectFunctionCall2(interval_cmp, interval, IntervalPGetDatum(&zero)));
}

/*
 * 22023 unless now() plus (sign 1) or minus (sign -1) the interval is a
 * time PostgreSQL can hold: the statements compute it, and an interval of a
 * million years would otherwise fail there with 22008.  Months are counted
 * generously, so a value within a year or so of the limits is refused too.
 */
static void
require_time_reachable(Datum interval, int sign, const char *what)
{
	Interval   *span = DatumGetIntervalP(interval);
	double		now = (double) GetCurrentTransactionStartTimestamp();
	double		days = (double) span->month * 30.436875 + (double) span->day;
	double		usecs = days * (double) USECS_PER_DAY + (double) span->time;
	double		margin = (fabs((double) span->month) * 2.0 + 366.0) * (double) USECS_PER_DAY;
	double		end = now + sign * usecs;

	if (end - margin < (double) MIN_TIMESTAMP || end + margin >= (double) END_TIMESTAMP)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is out of range", what),
				 errdetail("now() %s it is beyond the times PostgreSQL can hold.", sign > 0 ? "plus" : "minus")));
}

static bool
interval_is_positive(Datum interval)
{
	return interval_sign(interval) > 0;
}

static bool
interval_is_negative(Datum interval)
{
	return interval_sign(interval) < 0;
}

static pg_uuid_t *
uuid_copy(const pg_uuid_t *id)
{
	pg_uuid_t  *copy = palloc(sizeof(pg_uuid_t));

	memcpy(copy, id, sizeof(pg_uuid_t));
	return copy;
}

/*
 * The nil uuid stands, in crm_queue_enqueue_jobs()'s ids, for no job the
 * caller may be shown (held back by debounce, or its key held by a job
 * hidden from the caller); the SQL functions answer NULL for it.
 */
static bool
uuid_is_nil(const pg_uuid_t *id)
{
	static const pg_uuid_t nil;

	return memcmp(id, &nil, sizeof(pg_uuid_t)) == 0;
}

/*
 * The consent an action needs of the job's contact ("email", "phone") or
 * NULL: the action's own (crm.job_action.consent), and phone consent for a
 * call task.
 */
static const char *
consent_needed(const ActionInfo *info, const char *action, Jsonb *params)
{
	if (info->has_consent)
		return info->consent;
	if (strcmp(action, "create_task") == 0 && params != NULL)
	{
		JsonbValue	key;
		JsonbValue *type;

		key.type = jbvString;
		key.val.string.val = "activity_type";
		key.val.string.len = strlen("activity_type");
		type = findJsonbValueFromContainer(&params->root, JB_FOBJECT, &key);
		if (type != NULL && type->type == jbvString &&
			((type->val.string.len == 4 && strncmp(type->val.string.val, "call", 4) == 0) ||
			 (type->val.string.len == 9 && strncmp(type->val.string.val, "call_made", 9) == 0)))
			return "phone";
	}
	return NULL;
}

/*
 * Why the job's contact withholds the consent its action needs (as
 * consent_needed() says), or NULL.  Runs when a job is claimed: a contact
 * that no longer exists (deleted after the job was enqueued, which checked
 * it) gives no consent either, so the job is skipped; an error here would
 * undo every claim that meets the job, and it is the oldest of its queue.
 */
static const char *
consent_refusal(const pg_uuid_t *tenant, const char *consent, const pg_uuid_t *contact)
{
	Datum		args[2];
	bool		isnull;
	bool		email_opt_out;
	bool		do_not_call;

	if (consent == NULL || contact == NULL)
		return NULL;

	args[0] = UUIDPGetDatum(tenant);
	args[1] = UUIDPGetDatum(contact);
	run(PLAN_CONTACT_CONSENT, args, NULL, 1);
	if (SPI_processed == 0)
		return "the contact no longer exists";
	email_opt_out = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	do_not_call = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	if (strcmp(consent, "email") == 0 && email_opt_out)
		return "the contact opted out of e-mail (email_opt_out)";
	if (strcmp(consent, "phone") == 0 && do_not_call)
		return "the contact asked not to be called (do_not_call)";
	return NULL;
}

/* Moves a job of the ready set into the archive with its outcome. */
static void
finish_job(const pg_uuid_t *tenant, const pg_uuid_t *job, const char *outcome,
		   const char *reason, Jsonb *result)
{
	Datum		args[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

	args[0] = UUIDPGetDatum(tenant);
	args[1] = UUIDPGetDatum(job);
	args[2] = CStringGetTextDatum(outcome);
	if (reason)
		args[3] = CStringGetTextDatum(reason);
	else
		nulls[3] = 'n';
	if (result)
		args[4] = JsonbPGetDatum(result);
	else
		nulls[4] = 'n';
	run(PLAN_FINISH, args, nulls, 0);
}

/* An array of n Datums of a type, NULL where nulls[i] (nulls may be NULL). */
static Datum
datum_array(Datum *values, bool *nulls, int n, Oid type)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1] = {n};
	int			lbs[1] = {1};

	get_typlenbyvalalign(type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs, type,
											  typlen, typbyval, typalign));
}

/* A hash table from 32 bytes (two uuids) to a position in a batch. */
typedef struct BatchSlot
{
	pg_uuid_t	key[2];
	int			index;
	pg_uuid_t	holder;
} BatchSlot;

static HTAB *
batch_table(int n, const char *name)
{
	HASHCTL		ctl;

	ctl.keysize = 2 * sizeof(pg_uuid_t);
	ctl.entrysize = sizeof(BatchSlot);
	ctl.hcxt = CurrentMemoryContext;
	return hash_create(name, n, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/*
 * Which requests of a batch the debounce windows hold back (held[i]):
 * one statement for the requests that have a window.  A rule firing twice
 * for one subject in one batch fires at most once (the first).
 */
static void
debounce_batch(const pg_uuid_t *tenant, const CrmJobRequest *jobs, int njobs, bool *held)
{
	Datum	   *rules = palloc(sizeof(Datum) * njobs);
	Datum	   *subjects = palloc(sizeof(Datum) * njobs);
	Datum	   *spans = palloc(sizeof(Datum) * njobs);
	int		   *which = palloc(sizeof(int) * njobs);
	int			n = 0;
	HTAB	   *seen = NULL;
	Datum		args[4];

	for (int i = 0; i < njobs; i++)
	{
		const CrmJobRequest *job = &jobs[i];
		const pg_uuid_t *subject;
		pg_uuid_t	slot_key[2];
		bool		found;

		held[i] = false;
		if (job->debounce == NULL)
			continue;
		if (!job->has_rule || !(job->has_contact || job->has_entity_id))
			continue;
		subject = job->has_contact ? &job->contact : &job->entity_id;
		held[i] = true;			/* until the statement says it fires */
		if (njobs > 1)
		{
			if (seen == NULL)
				seen = batch_table(njobs, "crm debounce batch");
			slot_key[0] = job->rule;
			slot_key[1] = *subject;
			(void) hash_search(seen, slot_key, HASH_ENTER, &found);
			if (found)
				continue;
		}
		rules[n] = UUIDPGetDatum(&job->rule);
		subjects[n] = UUIDPGetDatum(subject);
		spans[n] = IntervalPGetDatum(job->debounce);
		which[n++] = i;
	}
	if (n == 0)
		return;
	args[0] = UUIDPGetDatum(tenant);
	args[1] = datum_array(rules, NULL, n, UUIDOID);
	args[2] = datum_array(subjects, NULL, n, UUIDOID);
	args[3] = datum_array(spans, NULL, n, INTERVALOID);
	run(PLAN_DEBOUNCE, args, NULL, 0);
	for (uint64 row = 0; row < SPI_processed; row++)
	{
		bool		isnull;
		int64		pos = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, 1, &isnull));

		held[which[pos - 1]] = false;
	}
}

/*
 * One job without a contact, in PLAN_ENQUEUE_ONE: crm_queue_enqueue_jobs()
 * for the usual single enqueue, one statement instead of an action lookup
 * and the batch statement.  Returns the job's id, or that of the job
 * holding its key; *made says which.
 */
static pg_uuid_t
enqueue_one(const pg_uuid_t *tenant, const CrmJobRequest *job, bool *made)
{
	Datum		args[11];
	char		nulls[11] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	pg_uuid_t	id;
	pg_uuid_t	key;
	ActionInfo	action;

	crm_uuid_v7(&id);
	key = job->has_key ? job->key : id;
	args[0] = UUIDPGetDatum(tenant);
	args[1] = UUIDPGetDatum(&id);
	args[2] = CStringGetTextDatum(job->action);
	args[3] = JsonbPGetDatum(job->params);
	if (job->has_rule)
		args[4] = UUIDPGetDatum(&job->rule);
	else
		nulls[4] = 'n';
	if (job->entity)
		args[5] = CStringGetTextDatum(job->entity);
	else
		nulls[5] = 'n';
	if (job->has_entity_id)
		args[6] = UUIDPGetDatum(&job->entity_id);
	else
		nulls[6] = 'n';
	nulls[7] = 'n';				/* no contact */
	args[8] = UUIDPGetDatum(&key);
	args[9] = TimestampTzGetDatum(job->run_at);
	args[10] = Int32GetDatum(job->max_attempts);
	run(PLAN_ENQUEUE_ONE, args, nulls, 0);
	if (SPI_processed == 1)
	{
		/* PostgreSQL folds equal notifications of a transaction into one. */
		crm_notify("crm_jobs", SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
		*made = true;
		return id;
	}

	/* no job: an unknown action, or a key taken before */
	*made = false;
	if (!action_lookup(job->action, &action))
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg("job action \"%s\" does not exist", job->action),
				 errhint("The known actions are listed in crm.job_action.")));
	{
		Datum		kargs[2];
		Datum		keyd = UUIDPGetDatum(&key);
		bool		isnull;
		pg_uuid_t	holder;

		kargs[0] = UUIDPGetDatum(tenant);
		kargs[1] = datum_array(&keyd, NULL, 1, UUIDOID);
		run(PLAN_KEY_HOLDERS, kargs, NULL, 1);
		if (SPI_processed == 0)
			elog(ERROR, "idempotency key vanished while it was taken");
		holder = *DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		/* our own key without a job: the action went away meanwhile */
		if (memcmp(&holder, &id, sizeof(pg_uuid_t)) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
					 errmsg("job action \"%s\" does not exist", job->action),
					 errhint("The known actions are listed in crm.job_action.")));
		/* a job the caller cannot see: the nil uuid, not its id */
		if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull)))
			memset(&holder, 0, sizeof(pg_uuid_t));
		return holder;
	}
}

/*
 * Enqueues a batch of jobs for a tenant (crm.h says what it promises); the
 * caller is connected to SPI as the owner of the queue tables.  The jobs
 * go in by one statement of arrays, so a batch costs one plan execution
 * whatever its size.
 */
int
crm_queue_enqueue_jobs(const pg_uuid_t *tenant, const CrmJobRequest *jobs, int njobs,
					   pg_uuid_t *ids)
{
	pg_uuid_t  *made_ids;
	bool	   *held;
	int		   *dup_of;
	int		   *which;
	Datum	   *cols[12];
	bool	   *colnulls[12];
	Oid			coltypes[12] = {UUIDOID, TEXTOID, TEXTOID, JSONBOID, UUIDOID, TEXTOID, UUIDOID,
	UUIDOID, UUIDOID, TIMESTAMPTZOID, INT4OID, TEXTOID};
	pg_uuid_t  *keys;
	bool	   *made;
	int			n = 0;
	int			nmade = 0;
	int			nholders = 0;
	HTAB	   *seen = NULL;
	Datum		args[13];
	bool		isnull;
	HeapTuple	tuple;
	TupleDesc	tupdesc;
	Datum		d;

	if (njobs <= 0)
		return 0;
	if (njobs == 1 && !jobs[0].has_contact && jobs[0].debounce == NULL)
	{
		bool		made_one;
		pg_uuid_t	id = enqueue_one(tenant, &jobs[0], &made_one);

		if (ids != NULL)
			ids[0] = id;
		return made_one ? 1 : 0;
	}
	made_ids = palloc(sizeof(pg_uuid_t) * njobs);
	held = palloc(sizeof(bool) * njobs);
	dup_of = palloc(sizeof(int) * njobs);
	which = palloc(sizeof(int) * njobs);
	keys = palloc(sizeof(pg_uuid_t) * njobs);
	made = palloc0(sizeof(bool) * njobs);
	for (int c = 0; c < 12; c++)
	{
		cols[c] = palloc(sizeof(Datum) * njobs);
		colnulls[c] = palloc0(sizeof(bool) * njobs);
	}

	debounce_batch(tenant, jobs, njobs, held);

	for (int i = 0; i < njobs; i++)
	{
		const CrmJobRequest *job = &jobs[i];
		ActionInfo	action;
		const char *consent;

		dup_of[i] = -1;
		memset(&made_ids[i], 0, sizeof(pg_uuid_t));
		if (!action_lookup(job->action, &action))
			ereport(ERROR,
					(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
					 errmsg("job action \"%s\" does not exist", job->action),
					 errhint("The known actions are listed in crm.job_action.")));
		if (held[i])
			continue;
		crm_uuid_v7(&made_ids[i]);
		keys[i] = job->has_key ? job->key : made_ids[i];

		/* a key given twice in the batch: the later jobs are the first's */
		if (job->has_key && njobs > 1)
		{
			pg_uuid_t	slot_key[2];
			bool		found;
			BatchSlot  *slot;

			if (seen == NULL)
				seen = batch_table(njobs, "crm enqueue batch");
			slot_key[0] = job->key;
			memset(&slot_key[1], 0, sizeof(pg_uuid_t));
			slot = hash_search(seen, slot_key, HASH_ENTER, &found);
			if (found)
			{
				dup_of[i] = slot->index;
				continue;
			}
			slot->index = i;
		}

		consent = job->has_contact ? consent_needed(&action, job->action, job->params) : NULL;
		cols[0][n] = UUIDPGetDatum(&made_ids[i]);
		cols[1][n] = CStringGetTextDatum(job->action);
		cols[2][n] = CStringGetTextDatum(action.queue);
		cols[3][n] = JsonbPGetDatum(job->params);
		cols[4][n] = job->has_rule ? UUIDPGetDatum(&job->rule) : (Datum) 0;
		colnulls[4][n] = !job->has_rule;
		cols[5][n] = job->entity ? CStringGetTextDatum(job->entity) : (Datum) 0;
		colnulls[5][n] = job->entity == NULL;
		cols[6][n] = job->has_entity_id ? UUIDPGetDatum(&job->entity_id) : (Datum) 0;
		colnulls[6][n] = !job->has_entity_id;
		cols[7][n] = job->has_contact ? UUIDPGetDatum(&job->contact) : (Datum) 0;
		colnulls[7][n] = !job->has_contact;
		cols[8][n] = UUIDPGetDatum(&keys[i]);
		cols[9][n] = TimestampTzGetDatum(job->run_at);
		cols[10][n] = Int32GetDatum(job->max_attempts);
		cols[11][n] = consent ? CStringGetTextDatum(consent) : (Datum) 0;
		colnulls[11][n] = consent == NULL;
		which[n++] = i;
	}

	if (n > 0)
	{
		ArrayType  *positions;
		ArrayType  *queues;
		Datum	   *elems;
		bool	   *elemnulls;
		int			nelems;

		args[0] = UUIDPGetDatum(tenant);
		for (int c = 0; c < 12; c++)
			args[c + 1] = datum_array(cols[c], colnulls[c], n, coltypes[c]);
		run(PLAN_ENQUEUE, args, NULL, 1);
		tuple = SPI_tuptable->vals[0];
		tupdesc = SPI_tuptable->tupdesc;

		d = SPI_getbinval(tuple, tupdesc, 3, &isnull);
		if (!isnull)
			ereport(ERROR,
					(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
					 errmsg("contact %s does not exist", crm_uuid_text(DatumGetUUIDP(d)))));

		positions = DatumGetArrayTypeP(SPI_getbinval(tuple, tupdesc, 1, &isnull));
		deconstruct_array(positions, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
						  &elems, &elemnulls, &nelems);
		for (int e = 0; e < nelems; e++)
			made[which[DatumGetInt64(elems[e]) - 1]] = true;
		nmade = nelems;

		/* PostgreSQL folds equal notifications of a transaction into one. */
		queues = DatumGetArrayTypeP(SPI_getbinval(tuple, tupdesc, 2, &isnull));
		deconstruct_array(queues, TEXTOID, -1, false, TYPALIGN_INT, &elems, &elemnulls, &nelems);
		for (int e = 0; e < nelems; e++)
			crm_notify("crm_jobs", TextDatumGetCString(elems[e]));
	}

	/* keys taken before: the jobs that hold them, read afresh */
	for (int p = 0; p < n; p++)
		if (!made[which[p]])
			cols[0][nholders++] = UUIDPGetDatum(&keys[which[p]]);
	if (nholders > 0)
	{
		HTAB	   *holders = batch_table(nholders, "crm enqueue holders");

		args[0] = UUIDPGetDatum(tenant);
		args[1] = datum_array(cols[0], NULL, nholders, UUIDOID);
		run(PLAN_KEY_HOLDERS, args, NULL, 0);
		for (uint64 row = 0; row < SPI_processed; row++)
		{
			pg_uuid_t	slot_key[2];
			BatchSlot  *slot;

			slot_key[0] = *DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, 1, &isnull));
			memset(&slot_key[1], 0, sizeof(pg_uuid_t));
			slot = hash_search(holders, slot_key, HASH_ENTER, NULL);
			slot->holder = *DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, 2, &isnull));
			/* a job the caller cannot see: the nil uuid, not its id */
			if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, 3, &isnull)))
				memset(&slot->holder, 0, sizeof(pg_uuid_t));
		}
		for (int p = 0; p < n; p++)
		{
			int			i = which[p];
			pg_uuid_t	slot_key[2];
			BatchSlot  *slot;

			if (made[i])
				continue;
			slot_key[0] = keys[i];
			memset(&slot_key[1], 0, sizeof(pg_uuid_t));
			slot = hash_search(holders, slot_key, HASH_FIND, NULL);
			if (slot == NULL)
				elog(ERROR, "idempotency key vanished while it was taken");
			made_ids[i] = slot->holder;
		}
	}

	if (ids != NULL)
		for (int i = 0; i < njobs; i++)
			ids[i] = dup_of[i] >= 0 ? made_ids[dup_of[i]] : made_ids[i];
	return nmade;
}

/*
 * Enqueues one job for a tenant: crm_queue_enqueue_jobs() with one job.
 * Returns the job's id, or the id of the job that already holds the key
 * (the nil uuid when the debounce window held it back).
 */
pg_uuid_t
crm_queue_enqueue_job(const pg_uuid_t *tenant, const CrmJobRequest *request)
{
	pg_uuid_t	id;

	(void) crm_queue_enqueue_jobs(tenant, request, 1, &id);
	return id;
}

/*
 * The records a job or an event names must be ones the caller can see.
 * Jobs run later, and the operator's scheduled crm.run_jobs() runs them as
 * a superuser, past row-level security: a writer of a private tenant who
 * could name a record hidden from them in crm.enqueue_job() (contact,
 * source, the ids of params.payload) or in crm.emit_event() (entity, the
 * ids of the payload, which rules copy into their jobs) would have it
 * marked won, moved or linked to a task.  So, as foreign keys and the
 * visibility triggers do for a plain write: an id of a record the caller
 * cannot see is 42501, an id of no record 23503.  Ids that are not uuids
 * are left alone (run_jobs ignores them too).  Nothing to do (and no
 * statement run) when no id is named.
 *
 * The statement runs as the owner of the queue tables, like every other
 * statement of the queue, and applies the records' policy itself: the
 * session's tenant as a parameter, and what the caller sees of a private
 * tenant (visible_to; crm.current_user_id() and crm.is_admin() answer for
 * the caller, not for the owner).  On Citus a transaction may not touch a
 * tenant's shards as two different users, so a check made as the caller
 * after a queue write of the same transaction was refused.  A caller who
 * bypasses row-level security sees every record of its tenant, as before.
 */
/*
 * The event payload a job's params carry ({"payload": {...}}), or NULL.  A
 * job given no contact takes the one its payload relates it to
 * (relatedTo.contactId, which crm.run_jobs() links the job's task to): the
 * consent its action needs is that contact's, at enqueue and at claim.
 */
static Jsonb *
job_payload(CrmJobRequest *job)
{
	JsonbValue *inner = crm_jsonb_field(&job->params->root, "payload");
	JsonbValue *related;
	JsonbValue *contact;

	if (inner == NULL || inner->type != jbvBinary)
		return NULL;
	if (!job->has_contact &&
		(related = crm_jsonb_field(inner->val.binary.data, "relatedTo")) != NULL &&
		related->type == jbvBinary &&
		(contact = crm_jsonb_field(related->val.binary.data, "contactId")) != NULL &&
		contact->type == jbvString)
		job->has_contact = crm_uuid_parse(contact->val.string.val, contact->val.string.len,
										  &job->contact);
	return JsonbValueToJsonb(inner);
}

static SPIPlanPtr visible_plan = NULL;

#define VISIBLE_SEES(alias) \
	" AND ($5 OR " alias ".visible_to IS NULL" \
	" OR crm.current_user_id() OPERATOR(pg_catalog.=) ANY (" alias ".visible_to) OR crm.is_admin())"

#define VISIBLE_PLAN_SQL \
	"SELECT v.k, v.i, v.state FROM (SELECT n.k, n.i, CASE" \
	"  WHEN n.k OPERATOR(pg_catalog.=) 'contact' THEN " VISIBLE_STATE_N("contact") \
	"  WHEN n.k OPERATOR(pg_catalog.=) 'opportunity' THEN " VISIBLE_STATE_N("opportunity") \
	"  WHEN n.k OPERATOR(pg_catalog.=) 'lead' THEN " VISIBLE_STATE_N("lead") \
	"  WHEN n.k OPERATOR(pg_catalog.=) 'account' THEN " VISIBLE_STATE_N("account") \
	"  ELSE 2 END AS state FROM (" \
	" SELECT x.k, CASE WHEN x.t OPERATOR(pg_catalog.~) '" CRM_UUID_TEXT_PATTERN "'" \
	"   THEN x.t::pg_catalog.uuid END" \
	" FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.text[]), pg_catalog.unnest($3::pg_catalog.text[])) AS x(k, t)" \
	" UNION ALL" \
	" SELECT p.k, CASE WHEN ($4::pg_catalog.jsonb OPERATOR(pg_catalog.#>>) p.path)" \
	"   OPERATOR(pg_catalog.~) '" CRM_UUID_TEXT_PATTERN "'" \
	"   THEN ($4::pg_catalog.jsonb OPERATOR(pg_catalog.#>>) p.path)::pg_catalog.uuid END" \
	" FROM (VALUES ('opportunity'::pg_catalog.text, '{opportunityId}'::pg_catalog.text[])," \
	"   ('lead', '{leadId}'), ('contact', '{contactId}'), ('account', '{accountId}')," \
	"   ('opportunity', '{relatedTo,opportunityId}'), ('lead', '{relatedTo,leadId}')," \
	"   ('contact', '{relatedTo,contactId}'), ('account', '{relatedTo,accountId}')) AS p(k, path)" \
	" ) AS n(k, i) WHERE n.i IS NOT NULL) AS v" \
	" WHERE v.state IS NULL OR v.state OPERATOR(pg_catalog.<) 2" \
	" LIMIT 1"

#define VISIBLE_STATE_N(table) \
	"(SELECT CASE WHEN TRUE" VISIBLE_SEES("r") " THEN 2 ELSE 1 END FROM crm." table " r" \
	" WHERE r.tenant_id OPERATOR(pg_catalog.=) $1 AND r.id OPERATOR(pg_catalog.=) n.i)"

void
crm_queue_require_visible(const pg_uuid_t *tenant, const pg_uuid_t *contact,
						  const char *entity, const pg_uuid_t *entity_id,
						  Jsonb *payload)
{
	Datum		kinds[2];
	Datum		ids[2];
	int			n = 0;
	Datum		args[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	char	   *kind;
	char	   *id;
	bool		hidden;
	bool		isnull;
	QueueSession session;

	if (contact != NULL)
	{
		kinds[n] = CStringGetTextDatum("contact");
		ids[n++] = CStringGetTextDatum(crm_uuid_text(contact));
	}
	if (entity != NULL && entity_id != NULL &&
		(strcmp(entity, "contact") == 0 || strcmp(entity, "opportunity") == 0 ||
		 strcmp(entity, "lead") == 0 || strcmp(entity, "account") == 0))
	{
		kinds[n] = CStringGetTextDatum(entity);
		ids[n++] = CStringGetTextDatum(crm_uuid_text(entity_id));
	}
	if (n == 0 && (payload == NULL || !JB_ROOT_IS_OBJECT(payload) || JB_ROOT_COUNT(payload) == 0))
		return;

	/* the caller's rights, before the switch to the owner */
	args[4] = BoolGetDatum(superuser() || has_bypassrls_privilege(GetUserId()));
	queue_begin(&session);
	if (visible_plan == NULL)
	{
		Oid			types[5] = {UUIDOID, TEXTARRAYOID, TEXTARRAYOID, JSONBOID, BOOLOID};

		visible_plan = crm_prepare_kept(VISIBLE_PLAN_SQL, 5, types);
	}
	args[0] = UUIDPGetDatum(tenant);
	args[1] = PointerGetDatum(construct_array(kinds, n, TEXTOID, -1, false, TYPALIGN_INT));
	args[2] = PointerGetDatum(construct_array(ids, n, TEXTOID, -1, false, TYPALIGN_INT));
	if (payload != NULL && JB_ROOT_IS_OBJECT(payload))
		args[3] = JsonbPGetDatum(payload);
	else
		nulls[3] = 'n';
	if (SPI_execute_plan(visible_plan, args, nulls, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not check the records a job names");
	if (SPI_processed == 0)
	{
		queue_end(&session);
		return;
	}
	kind = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	id = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	(void) SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
	hidden = !isnull;			/* state 1: exists, not visible */
	if (hidden)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to name %s %s", kind, id),
				 errdetail("The %s is not visible to the current user; a job or event naming it would act on it later with other rights.", kind)));
	ereport(ERROR,
			(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
			 errmsg("%s %s does not exist", kind, id)));
}

/*
 * crm.enqueue_job(action, params, contact, run_at, idempotency_key,
 *				   source_entity, source_id, rule, max_attempts) returns uuid
 */
CRM_SHARD_ENTRY(crm_queue_enqueue)
{
	CrmJobRequest request;
	pg_uuid_t	tenant = queue_tenant();
	QueueSession session;
	pg_uuid_t	job;

	memset(&request, 0, sizeof(request));
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("action must not be null")));
	request.action = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("params must not be null")));
	if (JB_ROOT_IS_SCALAR(PG_GETARG_JSONB_P(1)) || !JB_ROOT_IS_OBJECT(PG_GETARG_JSONB_P(1)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("job parameters must be a JSON object")));
	request.params = PG_GETARG_JSONB_P(1);
	if (!PG_ARGISNULL(2))
	{
		request.has_contact = true;
		request.contact = *PG_GETARG_UUID_P(2);
	}
	if (PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("run_at must not be null")));
	request.run_at = PG_GETARG_TIMESTAMPTZ(3);
	if (TIMESTAMP_NOT_FINITE(request.run_at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("run_at must be a finite time"),
				 errdetail("A job that runs at infinity never runs, and one at -infinity cannot be ordered.")));
	if (!PG_ARGISNULL(4))
	{
		request.has_key = true;
		request.key = *PG_GETARG_UUID_P(4);
	}
	if (!PG_ARGISNULL(5))
		request.entity = text_to_cstring(PG_GETARG_TEXT_PP(5));
	if (!PG_ARGISNULL(6))
	{
		request.has_entity_id = true;
		request.entity_id = *PG_GETARG_UUID_P(6);
	}
	if (!PG_ARGISNULL(7))
	{
		request.has_rule = true;
		request.rule = *PG_GETARG_UUID_P(7);
	}
	if (PG_ARGISNULL(8) || PG_GETARG_INT32(8) < 1 || PG_GETARG_INT32(8) > 100)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_attempts must be between 1 and 100")));
	request.max_attempts = PG_GETARG_INT32(8);

	{
		Jsonb	   *payload = job_payload(&request);

		crm_queue_require_visible(&tenant, request.has_contact ? &request.contact : NULL,
								  request.entity, request.has_entity_id ? &request.entity_id : NULL,
								  payload);
	}

	queue_begin(&session);
	job = crm_queue_enqueue_job(&tenant, &request);
	queue_end(&session);
	/* the nil uuid: the key is held by a job the caller cannot see */
	if (uuid_is_nil(&job))
		PG_RETURN_NULL();
	return UUIDPGetDatum(uuid_copy(&job));
}

/*
 * The elements of an optional uuid[] argument with one element per job
 * (NULL elements allowed), or NULL when the argument is NULL.
 */
static Datum *
per_job_uuids(FunctionCallInfo fcinfo, int argno, const char *name, int njobs, bool **nulls)
{
	Datum	   *elems;
	int			n;

	*nulls = NULL;
	if (PG_ARGISNULL(argno))
		return NULL;
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(argno), UUIDOID, UUID_LEN, false, TYPALIGN_CHAR,
					  &elems, nulls, &n);
	if (n != njobs)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must have one element per job", name),
				 errdetail("params has %d elements and %s %d.", njobs, name, n)));
	return elems;
}

/*
 * crm.enqueue_jobs(action, params[], contacts[], run_at, idempotency_keys[],
 *					source_entity, source_ids[], rule, max_attempts)
 *	returns uuid[]
 *
 * crm.enqueue_job() for many jobs of one action: the same checks per job,
 * then crm_queue_enqueue_jobs(), one statement for the batch.
 */
CRM_SHARD_ENTRY(crm_queue_enqueue_many)
{
	pg_uuid_t	tenant = queue_tenant();
	QueueSession session;
	CrmJobRequest *jobs;
	pg_uuid_t  *ids;
	Datum	   *params;
	bool	   *params_nulls;
	int			njobs;
	Datum	   *contacts;
	bool	   *contact_nulls;
	Datum	   *keys;
	bool	   *key_nulls;
	Datum	   *sources;
	bool	   *source_nulls;
	char	   *action;
	char	   *entity = NULL;
	TimestampTz run_at;
	int			max_attempts;
	Datum	   *out;
	bool	   *outnulls;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("action must not be null")));
	action = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("params must not be null"),
				 errhint("Pass one JSON object per job.")));
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(1), JSONBOID, -1, false, TYPALIGN_INT,
					  &params, &params_nulls, &njobs);
	if (PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("run_at must not be null")));
	run_at = PG_GETARG_TIMESTAMPTZ(3);
	if (TIMESTAMP_NOT_FINITE(run_at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("run_at must be a finite time"),
				 errdetail("A job that runs at infinity never runs, and one at -infinity cannot be ordered.")));
	if (PG_ARGISNULL(8) || PG_GETARG_INT32(8) < 1 || PG_GETARG_INT32(8) > 100)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_attempts must be between 1 and 100")));
	max_attempts = PG_GETARG_INT32(8);
	if (!PG_ARGISNULL(5))
		entity = text_to_cstring(PG_GETARG_TEXT_PP(5));
	contacts = per_job_uuids(fcinfo, 2, "contacts", njobs, &contact_nulls);
	keys = per_job_uuids(fcinfo, 4, "idempotency_keys", njobs, &key_nulls);
	sources = per_job_uuids(fcinfo, 6, "source_ids", njobs, &source_nulls);

	jobs = palloc0(sizeof(CrmJobRequest) * Max(njobs, 1));
	for (int i = 0; i < njobs; i++)
	{
		CrmJobRequest *job = &jobs[i];
		Jsonb	   *payload = NULL;

		if (params_nulls[i] || !JB_ROOT_IS_OBJECT(DatumGetJsonbP(params[i])) ||
			JB_ROOT_IS_SCALAR(DatumGetJsonbP(params[i])))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("job parameters must be a JSON object"),
					 errdetail("Element %d of params is not.", i + 1)));
		job->action = action;
		job->params = DatumGetJsonbP(params[i]);
		job->run_at = run_at;
		job->max_attempts = max_attempts;
		job->entity = entity;
		if (contacts && !contact_nulls[i])
		{
			job->has_contact = true;
			job->contact = *DatumGetUUIDP(contacts[i]);
		}
		if (keys && !key_nulls[i])
		{
			job->has_key = true;
			job->key = *DatumGetUUIDP(keys[i]);
		}
		if (sources && !source_nulls[i])
		{
			job->has_entity_id = true;
			job->entity_id = *DatumGetUUIDP(sources[i]);
		}
		if (!PG_ARGISNULL(7))
		{
			job->has_rule = true;
			job->rule = *PG_GETARG_UUID_P(7);
		}

		/* as crm.enqueue_job(): the records a job names must be visible */
		payload = job_payload(job);
		if (job->has_contact || (entity && job->has_entity_id) || payload)
			crm_queue_require_visible(&tenant, job->has_contact ? &job->contact : NULL,
									  entity, job->has_entity_id ? &job->entity_id : NULL,
									  payload);
	}

	ids = palloc(sizeof(pg_uuid_t) * Max(njobs, 1));
	queue_begin(&session);
	if (njobs > 0)
		(void) crm_queue_enqueue_jobs(&tenant, jobs, njobs, ids);
	else
	{
		/* nothing to enqueue, but the same mistake gets the same error */
		ActionInfo	info;

		if (!action_lookup(action, &info))
			ereport(ERROR,
					(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
					 errmsg("job action \"%s\" does not exist", action),
					 errhint("The known actions are listed in crm.job_action.")));
	}
	queue_end(&session);
	out = palloc(sizeof(Datum) * Max(njobs, 1));
	outnulls = palloc(sizeof(bool) * Max(njobs, 1));
	for (int i = 0; i < njobs; i++)
	{
		out[i] = UUIDPGetDatum(&ids[i]);
		/* the nil uuid: the key is held by a job the caller cannot see */
		outnulls[i] = uuid_is_nil(&ids[i]);
	}
	{
		int			dims[1] = {njobs};
		int			lbs[1] = {1};

		if (njobs == 0)
			PG_RETURN_ARRAYTYPE_P(construct_empty_array(UUIDOID));
		PG_RETURN_ARRAYTYPE_P(construct_md_array(out, outnulls, 1, dims, lbs, UUIDOID, UUID_LEN,
												 false, TYPALIGN_CHAR));
	}
}

/*
 * Where a worker's claims start.  The ready index is ordered by run_at, and
 * every job claimed leaves a dead entry at its front until VACUUM removes
 * it: a queue that moves ten thousand jobs a second between two autovacuum
 * runs makes each claim walk pages of them before the first ready job.  So
 * a backend remembers, per tenant and queue (and role and CRM user, who may
 * see different jobs), the oldest run_at its last claim took, and the next
 * claim starts there.  A job due before that point
 * (one a concurrent claim skipped and then gave back, one enqueued with an
 * earlier run_at) is taken by the next claim that looks from the start,
 * which one in CLAIM_FULL_EVERY claims does, and any claim in a transaction
 * that began a second or more after the last such look: "oldest due first"
 * holds within that.
 */
#define CLAIM_FULL_EVERY	100
#define CLAIM_FULL_USECS	USECS_PER_SEC
#define CLAIM_FLOORS		8

typedef struct ClaimFloor
{
	bool		used;
	pg_uuid_t	tenant;
	char		queue[NAMEDATALEN];
	Oid			role;			/* who claimed: the jobs one sees differ */
	bool		has_user;
	pg_uuid_t	user;
	TimestampTz floor;
	TimestampTz full_at;		/* when a claim last looked from the start */
	int			uses;
} ClaimFloor;

static ClaimFloor claim_floors[CLAIM_FLOORS];
static int	claim_floor_next = 0;

static ClaimFloor *
claim_floor(const pg_uuid_t *tenant, const char *queue, bool create)
{
	ClaimFloor *f;
	Oid			role = GetOuterUserId();
	pg_uuid_t	user;
	bool		has_user = crm_current_app_user_id(&user);

	if (strlen(queue) >= NAMEDATALEN)
		return NULL;
	if (!has_user)
		memset(&user, 0, sizeof(user));
	for (int i = 0; i < CLAIM_FLOORS; i++)
	{
		f = &claim_floors[i];
		if (f->used && strcmp(f->queue, queue) == 0 && f->role == role &&
			f->has_user == has_user &&
			memcmp(&f->tenant, tenant, sizeof(pg_uuid_t)) == 0 &&
			memcmp(&f->user, &user, sizeof(pg_uuid_t)) == 0)
			return f;
	}
	if (!create)
		return NULL;
	f = &claim_floors[claim_floor_next];
	claim_floor_next = (claim_floor_next + 1) % CLAIM_FLOORS;
	memset(f, 0, sizeof(*f));
	f->used = true;
	f->tenant = *tenant;
	strlcpy(f->queue, queue, NAMEDATALEN);
	f->role = role;
	f->has_user = has_user;
	f->user = user;
	return f;
}

/*
 * Claims up to limit due jobs with lo <= run_at < hi, re-checks their
 * consent and puts those a worker may have into the result.  Returns how
 * many rows the claim took (skipped ones included) and their oldest run_at.
 */
static int
claim_range(const pg_uuid_t *tenant, Datum *args, int limit, TimestampTz lo, TimestampTz hi,
			ReturnSetInfo *rsinfo, TimestampTz *oldest)
{
	SPITupleTable *claimed;
	uint64		nclaimed;
	int			att_id;
	int			att_action;
	int			att_params;
	int			att_contact;
	int			att_run_at;

	args[2] = Int32GetDatum(limit);
	args[5] = TimestampTzGetDatum(lo);
	args[6] = TimestampTzGetDatum(hi);
	run(PLAN_CLAIM, args, NULL, 0);
	claimed = SPI_tuptable;
	nclaimed = SPI_processed;
	if (nclaimed == 0)
		return 0;
	att_id = SPI_fnumber(claimed->tupdesc, "id");
	att_action = SPI_fnumber(claimed->tupdesc, "action");
	att_params = SPI_fnumber(claimed->tupdesc, "params");
	att_contact = SPI_fnumber(claimed->tupdesc, "contact_id");
	att_run_at = SPI_fnumber(claimed->tupdesc, "run_at");

	for (uint64 i = 0; i < nclaimed; i++)
	{
		HeapTuple	tuple = claimed->vals[i];
		TupleDesc	tupdesc = claimed->tupdesc;
		bool		isnull;
		pg_uuid_t	job = *DatumGetUUIDP(SPI_getbinval(tuple, tupdesc, att_id, &isnull));
		TimestampTz run_at = DatumGetTimestampTz(SPI_getbinval(tuple, tupdesc, att_run_at, &isnull));
		Datum		contact = SPI_getbinval(tuple, tupdesc, att_contact, &isnull);
		const char *refusal = NULL;

		if (run_at < *oldest)
			*oldest = run_at;
		/* Consent may have been withdrawn since the job was enqueued. */
		if (!isnull)
		{
			pg_uuid_t	contact_id = *DatumGetUUIDP(contact);
			char	   *action = SPI_getvalue(tuple, tupdesc, att_action);
			Datum		params = SPI_getbinval(tuple, tupdesc, att_params, &isnull);
			ActionInfo	info;
			const char *consent = NULL;

			if (action_lookup(action, &info))
				consent = consent_needed(&info, action, DatumGetJsonbP(params));
			refusal = consent_refusal(tenant, consent, &contact_id);
		}
		if (refusal)
			finish_job(tenant, &job, "skipped", refusal, NULL);
		else
			tuplestore_puttuple(rsinfo->setResult, tuple);
	}
	return (int) nclaimed;
}

/*
 * crm.claim_jobs(queue, worker, max, lease) returns setof crm.job
 */
CRM_SHARD_ENTRY(crm_queue_claim)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	pg_uuid_t	tenant = queue_tenant();
	QueueSession session;
	Datum		args[7];
	char	   *worker;
	char	   *queue;
	int			max;
	int			taken;
	TimestampTz oldest = DT_NOEND;
	ClaimFloor *f;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("queue and worker must be given")));
	worker = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (worker[strspn(worker, " \t\r\n")] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("worker must not be blank")));
	/* a NULL argument is 22004 in every queue function */
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("max must not be null")));
	if (PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("lease must not be null")));
	if (PG_GETARG_INT32(2) <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max must be positive")));
	if (!interval_is_positive(PG_GETARG_DATUM(3)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lease must be a positive interval")));
	require_time_reachable(PG_GETARG_DATUM(3), 1, "lease");
	queue = text_to_cstring(PG_GETARG_TEXT_PP(0));
	max = PG_GETARG_INT32(2);

	InitMaterializedSRF(fcinfo, 0);

	queue_begin(&session);
	args[0] = UUIDPGetDatum(&tenant);
	args[1] = PG_GETARG_DATUM(0);
	args[3] = PG_GETARG_DATUM(1);
	args[4] = PG_GETARG_DATUM(3);
	f = claim_floor(&tenant, queue, false);
	if (f != NULL && f->uses < CLAIM_FULL_EVERY &&
		GetCurrentTransactionStartTimestamp() - f->full_at < CLAIM_FULL_USECS)
	{
		f->uses++;
		taken = claim_range(&tenant, args, max, f->floor, DT_NOEND, rsinfo, &oldest);
		if (taken > 0)
			f->floor = oldest;
	}
	else
	{
		taken = claim_range(&tenant, args, max, DT_NOBEGIN, DT_NOEND, rsinfo, &oldest);
		f = claim_floor(&tenant, queue, true);
		if (f != NULL)
		{
			f->uses = 0;
			f->full_at = GetCurrentTransactionStartTimestamp();
			/* nothing due: the next claims look from the start too */
			if (taken == 0)
				f->used = false;
			else
				f->floor = oldest;
		}
	}
	queue_end(&session);
	return (Datum) 0;
}

/*
 * Locks a running job and checks that the caller may report on it: it is
 * in the ready set and claimed, held by the named worker (when one is
 * named), and its lease has not run out.  Fills attempts and max_attempts;
 * returns the worker holding it.
 */
static char *
job_held(const pg_uuid_t *tenant, const pg_uuid_t *job, const char *worker,
		 int *attempts, int *max_attempts)
{
	Datum		args[2];
	HeapTuple	tuple;
	TupleDesc	tupdesc;
	bool		isnull;
	char	   *holder;

	args[0] = UUIDPGetDatum(tenant);
	args[1] = UUIDPGetDatum(job);
	run(PLAN_HELD, args, NULL, 1);
	if (SPI_processed == 0)
	{
		run(PLAN_ARCHIVED_OUTCOME, args, NULL, 1);
		if (SPI_processed > 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("job %s is already finished (%s)", crm_uuid_text(job),
							SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1))));
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("job %s does not exist", crm_uuid_text(job))));
	}
	tuple = SPI_tuptable->vals[0];
	tupdesc = SPI_tuptable->tupdesc;
	holder = SPI_getvalue(tuple, tupdesc, 1);
	if (holder == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job %s is not claimed", crm_uuid_text(job)),
				 errhint("Claim it with crm.claim_jobs() first.")));
	if (worker != NULL && strcmp(holder, worker) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job %s is held by worker \"%s\", not \"%s\"", crm_uuid_text(job), holder, worker)));
	if (DatumGetBool(SPI_getbinval(tuple, tupdesc, 2, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the lease of job %s has expired", crm_uuid_text(job)),
				 errdetail("The lease ended at %s.", SPI_getvalue(tuple, tupdesc, 6)),
				 errhint("Another worker may hold it now; extend leases with crm.extend_lease() before they run out.")));
	*attempts = DatumGetInt32(SPI_getbinval(tuple, tupdesc, 3, &isnull));
	*max_attempts = DatumGetInt32(SPI_getbinval(tuple, tupdesc, 4, &isnull));
	return holder;
}

static pg_uuid_t
job_argument(FunctionCallInfo fcinfo)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job id must not be null")));
	return *PG_GETARG_UUID_P(0);
}

static char *
worker_argument(FunctionCallInfo fcinfo, int argno)
{
	return PG_ARGISNULL(argno) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(argno));
}

/*
 * crm.complete_job(id, result, worker) returns void
 */
CRM_SHARD_ENTRY(crm_queue_complete)
{
	pg_uuid_t	tenant = queue_tenant();
	pg_uuid_t	job = job_argument(fcinfo);
	char	   *worker = worker_argument(fcinfo, 2);
	QueueSession session;
	int			attempts;
	int			max_attempts;
	Datum		args[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};

	queue_begin(&session);
	args[0] = UUIDPGetDatum(&tenant);
	args[1] = UUIDPGetDatum(&job);
	if (PG_ARGISNULL(1))
		nulls[2] = 'n';
	else
		args[2] = PG_GETARG_DATUM(1);
	if (worker)
		args[3] = CStringGetTextDatum(worker);
	else
		nulls[3] = 'n';
	run(PLAN_COMPLETE, args, nulls, 0);
	if (SPI_processed == 0)
	{
		/* something is wrong: job_held says what, or it was a race */
		job_held(&tenant, &job, worker, &attempts, &max_attempts);
		finish_job(&tenant, &job, "completed", NULL, PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1));
	}
	queue_end(&session);
	PG_RETURN_VOID();
}

/*
 * Fails one held job (job_held() checks it): retried later with backoff
 * (returns true and the time in *next_run) or, after its last attempt,
 * archived as dead (returns false).  The caller is in queue_begin().
 */
static bool
fail_one(const pg_uuid_t *tenant, const pg_uuid_t *job, const char *worker, Datum error,
		 TimestampTz *next_run)
{
	int			attempts;
	int			max_attempts;
	double		backoff;
	Datum		args[6];
	char	   *holder;

	holder = job_held(tenant, job, worker, &attempts, &max_attempts);
	args[0] = UUIDPGetDatum(tenant);
	args[1] = UUIDPGetDatum(job);
	if (attempts >= max_attempts)
	{
		args[2] = error;
		args[3] = Int32GetDatum(attempts);
		args[4] = CStringGetTextDatum(holder);
		run(PLAN_ADD_ERROR, args, NULL, 0);
		finish_job(tenant, job, "dead",
				   psprintf("failed %d of %d attempts", attempts, max_attempts), NULL);
		return false;
	}
	backoff = BACKOFF_BASE_SECONDS * pow(2.0, attempts);
	if (backoff > BACKOFF_CAP_SECONDS)
		backoff = BACKOFF_CAP_SECONDS;
	backoff *= 1.0 + BACKOFF_JITTER * pg_prng_double(&pg_global_prng_state);
	*next_run = GetCurrentTransactionStartTimestamp() + (TimestampTz) (backoff * USECS_PER_SEC);
	args[2] = TimestampTzGetDatum(*next_run);
	args[3] = error;
	args[4] = Int32GetDatum(attempts);
	args[5] = CStringGetTextDatum(holder);
	run(PLAN_RETRY_LATER, args, NULL, 0);
	return true;
}

/*
 * crm.fail_job(id, error, worker) returns timestamptz: when the job runs
 * again, or NULL when it died.
 */
CRM_SHARD_ENTRY(crm_queue_fail)
{
	pg_uuid_t	tenant = queue_tenant();
	pg_uuid_t	job = job_argument(fcinfo);
	char	   *worker = worker_argument(fcinfo, 2);
	Datum		error = PG_ARGISNULL(1) ? CStringGetTextDatum("unknown error") : PG_GETARG_DATUM(1);
	QueueSession session;
	TimestampTz next_run;
	bool		again;

	queue_begin(&session);
	again = fail_one(&tenant, &job, worker, error, &next_run);
	queue_end(&session);
	if (!again)
		PG_RETURN_NULL();
	PG_RETURN_TIMESTAMPTZ(next_run);
}

/*
 * The job ids of a batch function's first argument: 22004 for a NULL
 * array or element, 22023 for an id named twice (a batch reports each job
 * once).  Sets *n.
 */
static pg_uuid_t *
job_ids_argument(FunctionCallInfo fcinfo, int *n)
{
	ArrayType  *array;
	Datum	   *elems;
	bool	   *nulls;
	pg_uuid_t  *ids;
	HTAB	   *seen;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job ids must not be null")));
	array = PG_GETARG_ARRAYTYPE_P(0);
	deconstruct_array(array, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR, &elems, &nulls, n);
	ids = palloc(sizeof(pg_uuid_t) * Max(*n, 1));
	seen = *n > 1 ? batch_table(*n, "crm job ids") : NULL;
	for (int i = 0; i < *n; i++)
	{
		pg_uuid_t	slot_key[2];
		bool		found;

		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("job ids must not be null"),
					 errdetail("Element %d is null.", i + 1)));
		ids[i] = *DatumGetUUIDP(elems[i]);
		if (seen == NULL)
			continue;
		slot_key[0] = ids[i];
		memset(&slot_key[1], 0, sizeof(pg_uuid_t));
		(void) hash_search(seen, slot_key, HASH_ENTER, &found);
		if (found)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("job %s is named twice", crm_uuid_text(&ids[i])),
					 errdetail("A batch reports each job once.")));
	}
	return ids;
}

/*
 * crm.complete_jobs(ids, worker, result) returns integer
 *
 * One statement completes every job that is held as it should be; when
 * that is not all of them, the first job left out (in the order given)
 * gets job_held()'s error, which undoes the statement: all or nothing.
 * A job left out only by a race (job_held() finds nothing wrong) is
 * completed by itself, as crm.complete_job() does.
 */
CRM_SHARD_ENTRY(crm_queue_complete_many)
{
	pg_uuid_t	tenant = queue_tenant();
	char	   *worker = worker_argument(fcinfo, 1);
	int			n;
	pg_uuid_t  *ids = job_ids_argument(fcinfo, &n);
	Jsonb	   *result = PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2);
	QueueSession session;
	Datum	   *elems;
	Datum		args[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	uint64		done;

	if (n == 0)
		PG_RETURN_INT32(0);
	elems = palloc(sizeof(Datum) * n);
	for (int i = 0; i < n; i++)
		elems[i] = UUIDPGetDatum(&ids[i]);

	queue_begin(&session);
	args[0] = UUIDPGetDatum(&tenant);
	args[1] = datum_array(elems, NULL, n, UUIDOID);
	if (result)
		args[2] = JsonbPGetDatum(result);
	else
		nulls[2] = 'n';
	if (worker)
		args[3] = CStringGetTextDatum(worker);
	else
		nulls[3] = 'n';
	run(PLAN_COMPLETE_MANY, args, nulls, 0);
	done = SPI_processed;
	if (done < (uint64) n)
	{
		HTAB	   *completed = batch_table(n, "crm completed jobs");
		SPITupleTable *tuptable = SPI_tuptable;

		for (uint64 row = 0; row < done; row++)
		{
			pg_uuid_t	slot_key[2];
			bool		isnull;

			slot_key[0] = *DatumGetUUIDP(SPI_getbinval(tuptable->vals[row], tuptable->tupdesc, 1, &isnull));
			memset(&slot_key[1], 0, sizeof(pg_uuid_t));
			(void) hash_search(completed, slot_key, HASH_ENTER, NULL);
		}
		for (int i = 0; i < n; i++)
		{
			pg_uuid_t	slot_key[2];
			int			attempts;
			int			max_attempts;

			slot_key[0] = ids[i];
			memset(&slot_key[1], 0, sizeof(pg_uuid_t));
			if (hash_search(completed, slot_key, HASH_FIND, NULL) != NULL)
				continue;
			job_held(&tenant, &ids[i], worker, &attempts, &max_attempts);
			finish_job(&tenant, &ids[i], "completed", NULL, result);
		}
	}
	queue_end(&session);
	PG_RETURN_INT32(n);
}

/*
 * crm.fail_jobs(ids, worker, error) returns table (id, next_run)
 *
 * Failures are the exception, so each job goes through crm.fail_job()'s
 * statements; one call still reports the batch, all or nothing (the first
 * error undoes the jobs failed before it).
 */
CRM_SHARD_ENTRY(crm_queue_fail_many)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	pg_uuid_t	tenant = queue_tenant();
	char	   *worker = worker_argument(fcinfo, 1);
	int			n;
	pg_uuid_t  *ids = job_ids_argument(fcinfo, &n);
	Datum		error = PG_ARGISNULL(2) ? CStringGetTextDatum("unknown error") : PG_GETARG_DATUM(2);
	QueueSession session;

	InitMaterializedSRF(fcinfo, 0);
	queue_begin(&session);
	for (int i = 0; i < n; i++)
	{
		TimestampTz next_run;
		Datum		values[2];
		bool		nulls[2] = {false, false};

		if (fail_one(&tenant, &ids[i], worker, error, &next_run))
			values[1] = TimestampTzGetDatum(next_run);
		else
			nulls[1] = true;
		values[0] = UUIDPGetDatum(uuid_copy(&ids[i]));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	queue_end(&session);
	return (Datum) 0;
}

/*
 * crm.extend_lease(id, lease, worker) returns timestamptz: the lease now
 * ends that long from now.
 */
CRM_SHARD_ENTRY(crm_queue_extend_lease)
{
	pg_uuid_t	tenant = queue_tenant();
	pg_uuid_t	job = job_argument(fcinfo);
	char	   *worker = worker_argument(fcinfo, 2);
	QueueSession session;
	int			attempts;
	int			max_attempts;
	Datum		args[3];
	bool		isnull;
	TimestampTz until;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("lease must not be null")));
	if (!interval_is_positive(PG_GETARG_DATUM(1)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lease must be a positive interval")));
	require_time_reachable(PG_GETARG_DATUM(1), 1, "lease");

	queue_begin(&session);
	job_held(&tenant, &job, worker, &attempts, &max_attempts);
	args[0] = UUIDPGetDatum(&tenant);
	args[1] = UUIDPGetDatum(&job);
	args[2] = PG_GETARG_DATUM(1);
	run(PLAN_EXTEND, args, NULL, 0);
	until = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	queue_end(&session);
	PG_RETURN_TIMESTAMPTZ(until);
}

/*
 * crm.reap_expired_leases() returns integer
 *
 * Without a tenant (the operator's scheduled maintenance) every tenant's
 * expired leases are reaped; only a superuser or BYPASSRLS role may: an
 * application role that sets no tenant would act on tenants it does not
 * serve.  With a tenant, any other role reaps (and counts) only the jobs
 * it may see in a private tenant.
 */
CRM_SHARD_ENTRY(crm_queue_reap)
{
	pg_uuid_t	tenant;
	bool		has_tenant = crm_current_tenant_id(&tenant);
	QueueSession session;
	SPITupleTable *expired;
	uint64		nexpired;
	Datum		args[2];
	bool		maintenance = superuser() || has_bypassrls_privilege(GetUserId());

	/* every tenant: the operator's maintenance only */
	if (!has_tenant && !maintenance)
		(void) queue_tenant();

	/*
	 * A tenant's: only the jobs the caller may see (visible_to), so that
	 * the count reveals no hidden job; the maintenance role reaps them all.
	 */
	queue_begin(&session);
	args[0] = UUIDPGetDatum(&tenant);
	args[1] = BoolGetDatum(maintenance);
	run(has_tenant ? PLAN_EXPIRED : PLAN_EXPIRED_ALL, args, NULL, 0);
	expired = SPI_tuptable;
	nexpired = SPI_processed;
	for (uint64 i = 0; i < nexpired; i++)
	{
		HeapTuple	tuple = expired->vals[i];
		TupleDesc	tupdesc = expired->tupdesc;
		bool		isnull;
		pg_uuid_t	job_tenant = *DatumGetUUIDP(SPI_getbinval(tuple, tupdesc, 1, &isnull));
		pg_uuid_t	job = *DatumGetUUIDP(SPI_getbinval(tuple, tupdesc, 2, &isnull));
		bool		last = DatumGetBool(SPI_getbinval(tuple, tupdesc, 3, &isnull));
		char	   *queue = SPI_getvalue(tuple, tupdesc, 4);
		int			max_attempts = DatumGetInt32(SPI_getbinval(tuple, tupdesc, 5, &isnull));
		Datum		attempts = SPI_getbinval(tuple, tupdesc, 6, &isnull);
		Datum		holder = SPI_getbinval(tuple, tupdesc, 7, &isnull);

		if (last)
		{
			Datum		err_args[5] = {UUIDPGetDatum(&job_tenant), UUIDPGetDatum(&job),
			CStringGetTextDatum("lease expired"), attempts, holder};

			run(PLAN_ADD_ERROR, err_args, NULL, 0);
			finish_job(&job_tenant, &job, "dead",
					   psprintf("lease expired on the last of %d attempts", max_attempts), NULL);
		}
		else
		{
			Datum		retry_args[6] = {UUIDPGetDatum(&job_tenant), UUIDPGetDatum(&job),
				TimestampTzGetDatum(GetCurrentTransactionStartTimestamp()),
			CStringGetTextDatum("lease expired"), attempts, holder};

			run(PLAN_RETRY_LATER, retry_args, NULL, 0);
			crm_notify("crm_jobs", queue);
		}
	}
	queue_end(&session);
	PG_RETURN_INT32((int32) nexpired);
}

/*
 * crm.retry_job(id) returns uuid: a dead job back in its queue, due now,
 * attempts reset, errors kept.
 */
CRM_SHARD_ENTRY(crm_queue_retry)
{
	pg_uuid_t	tenant = queue_tenant();
	pg_uuid_t	job = job_argument(fcinfo);
	QueueSession session;
	Datum		args[2] = {UUIDPGetDatum(&tenant), UUIDPGetDatum(&job)};

	queue_begin(&session);
	run(PLAN_RETRY_DEAD, args, NULL, 0);
	if (SPI_processed == 0)
	{
		run(PLAN_ARCHIVED_OUTCOME, args, NULL, 1);
		if (SPI_processed > 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("job %s is %s and only a dead job can be retried", crm_uuid_text(&job),
							SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1))));
		run(PLAN_HELD, args, NULL, 1);
		if (SPI_processed > 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("job %s is not dead: it is still in the queue", crm_uuid_text(&job))));
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("job %s does not exist", crm_uuid_text(&job))));
	}
	crm_notify("crm_jobs", SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	queue_end(&session);
	return UUIDPGetDatum(uuid_copy(&job));
}

/*
 * crm.purge_jobs(older_than) returns bigint
 *
 * Without a tenant every tenant's archive is purged, by the operator only
 * (as crm.reap_expired_leases()).
 */
CRM_SHARD_ENTRY(crm_queue_purge)
{
	pg_uuid_t	tenant;
	bool		has_tenant = crm_current_tenant_id(&tenant);
	QueueSession session;
	Datum		args[2];
	bool		isnull;
	int64		purged;

	/* every tenant: the operator's maintenance only */
	if (!has_tenant && !superuser() && !has_bypassrls_privilege(GetUserId()))
		(void) queue_tenant();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("older_than must not be null")));
	if (interval_is_negative(PG_GETARG_DATUM(0)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("older_than must be a non-negative interval")));
	require_time_reachable(PG_GETARG_DATUM(0), -1, "older_than");

	queue_begin(&session);
	if (has_tenant)
	{
		args[0] = UUIDPGetDatum(&tenant);
		args[1] = PG_GETARG_DATUM(0);
		run(PLAN_PURGE, args, NULL, 0);
	}
	else
	{
		args[0] = PG_GETARG_DATUM(0);
		run(PLAN_PURGE_ALL, args, NULL, 0);
	}
	purged = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	queue_end(&session);
	PG_RETURN_INT64(purged);
}
