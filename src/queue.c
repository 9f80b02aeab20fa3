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
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(crm_queue_enqueue);
PG_FUNCTION_INFO_V1(crm_queue_claim);
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
	PLAN_KEY_TAKE,
	PLAN_KEY_FIND,
	PLAN_JOB_INSERT,
	PLAN_ENQUEUE,
	PLAN_FINISH,
	PLAN_COMPLETE,
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
	Oid			argtypes[11];
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
	[PLAN_KEY_TAKE] = {
		"INSERT INTO crm.job_key (tenant_id, idempotency_key, job_id) VALUES ($1, $2, $3)"
		" ON CONFLICT ON CONSTRAINT job_key_pkey DO NOTHING",
		3, {UUIDOID, UUIDOID, UUIDOID}
	},
	[PLAN_KEY_FIND] = {
		"SELECT job_id FROM crm.job_key"
		" WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND idempotency_key OPERATOR(pg_catalog.=) $2",
		2, {UUIDOID, UUIDOID}
	},
	[PLAN_JOB_INSERT] = {
		/* the optional columns are parameters that may be NULL: one plan */
		"INSERT INTO crm.job (tenant_id, id, queue, action, params, rule_id, source_entity, source_id,"
		" contact_id, idempotency_key, run_at, max_attempts)"
		" SELECT $1, $2, a.queue, a.code, $4, $5, $6, $7, $8, $9, $10, $11"
		" FROM crm.job_action a WHERE a.code OPERATOR(pg_catalog.=) $3",
		11, {UUIDOID, UUIDOID, TEXTOID, JSONBOID, UUIDOID, TEXTOID, UUIDOID, UUIDOID, UUIDOID,
		TIMESTAMPTZOID, INT4OID}
	},
	[PLAN_ENQUEUE] = {
		/*
		 * PLAN_KEY_TAKE and PLAN_JOB_INSERT in one statement, for a job whose
		 * consent need not be checked in between: no row when the key was
		 * taken already.
		 */
		"WITH k AS (INSERT INTO crm.job_key (tenant_id, idempotency_key, job_id) VALUES ($1, $9, $2)"
		"  ON CONFLICT ON CONSTRAINT job_key_pkey DO NOTHING RETURNING job_id)"
		" INSERT INTO crm.job (tenant_id, id, queue, action, params, rule_id, source_entity, source_id,"
		" contact_id, idempotency_key, run_at, max_attempts)"
		" SELECT $1, k.job_id, a.queue, a.code, $4, $5, $6, $7, $8, $9, $10, $11"
		" FROM k, crm.job_action a WHERE a.code OPERATOR(pg_catalog.=) $3",
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
	[PLAN_CLAIM] = {
		/*
		 * The ids come from an array sub-query so that, whatever plan the
		 * cache settles on, the claim is two index scans: a join with a CTE
		 * turns into a scan of the whole ready set once the plan is generic.
		 */
		"UPDATE crm.job r SET locked_by = $4,"
		"  locked_until = pg_catalog.now() OPERATOR(pg_catalog.+) $5,"
		"  attempts = r.attempts OPERATOR(pg_catalog.+) 1"
		" WHERE r.tenant_id OPERATOR(pg_catalog.=) $1"
		"  AND r.id OPERATOR(pg_catalog.=) ANY (ARRAY("
		"   SELECT q.id FROM crm.job q"
		"    WHERE q.tenant_id OPERATOR(pg_catalog.=) $1 AND q.queue OPERATOR(pg_catalog.=) $2"
		"     AND q.locked_by IS NULL AND q.run_at OPERATOR(pg_catalog.<=) pg_catalog.now()"
		JOB_VISIBLE("q.")
		"    ORDER BY q.run_at, q.id LIMIT $3 FOR UPDATE SKIP LOCKED))"
		" RETURNING r.*",
		5, {UUIDOID, TEXTOID, INT4OID, TEXTOID, INTERVALOID}
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
	[PLAN_RETRY_LATER] = {
		"UPDATE crm.job SET locked_by = NULL, locked_until = NULL, run_at = $3,"
		" errors = errors OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object("
		"  'at', pg_catalog.now(), 'attempt', attempts, 'worker', locked_by, 'error', $4))"
		" WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND id OPERATOR(pg_catalog.=) $2",
		4, {UUIDOID, UUIDOID, TIMESTAMPTZOID, TEXTOID}
	},
	[PLAN_ADD_ERROR] = {
		"UPDATE crm.job SET"
		" errors = errors OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object("
		"  'at', pg_catalog.now(), 'attempt', attempts, 'worker', locked_by, 'error', $3))"
		" WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND id OPERATOR(pg_catalog.=) $2",
		3, {UUIDOID, UUIDOID, TEXTOID}
	},
	[PLAN_EXTEND] = {
		"UPDATE crm.job SET locked_until = pg_catalog.now() OPERATOR(pg_catalog.+) $3"
		" WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND id OPERATOR(pg_catalog.=) $2 RETURNING locked_until",
		3, {UUIDOID, UUIDOID, INTERVALOID}
	},
	[PLAN_EXPIRED] = {
		"SELECT tenant_id, id, attempts OPERATOR(pg_catalog.>=) max_attempts, queue, max_attempts FROM crm.job"
		" WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND locked_by IS NOT NULL"
		"  AND locked_until OPERATOR(pg_catalog.<) pg_catalog.now()"
		" ORDER BY tenant_id, id FOR UPDATE SKIP LOCKED",
		1, {UUIDOID}
	},
	[PLAN_EXPIRED_ALL] = {
		"SELECT tenant_id, id, attempts OPERATOR(pg_catalog.>=) max_attempts, queue, max_attempts FROM crm.job"
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
		"   AND k.idempotency_key OPERATOR(pg_catalog.=) g.idempotency_key)"
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

static SPIPlanPtr
queue_plan(QueuePlan which)
{
	if (plans[which] == NULL)
	{
		const QueuePlanSpec *spec = &plan_specs[which];
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

static pg_uuid_t
uuid_column(int column)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, column, &isnull);

	return *DatumGetUUIDP(d);
}

/*
 * Why the job's contact withholds the consent its action needs, or NULL.
 * A call task needs phone consent as an e-mail needs e-mail consent.
 */
static const char *
consent_refusal(const pg_uuid_t *tenant, const char *consent, const char *action,
				Jsonb *params, const pg_uuid_t *contact)
{
	Datum		args[2];
	bool		isnull;
	bool		email_opt_out;
	bool		do_not_call;

	if (consent == NULL && strcmp(action, "create_task") == 0 && params != NULL)
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
			consent = "phone";
	}
	if (consent == NULL || contact == NULL)
		return NULL;

	args[0] = UUIDPGetDatum(tenant);
	args[1] = UUIDPGetDatum(contact);
	run(PLAN_CONTACT_CONSENT, args, NULL, 1);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg("contact %s does not exist", crm_uuid_text(contact))));
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

/*
 * Enqueues one job for a tenant; the caller has done queue_begin().
 * Returns the job's id, or the id of the job that already holds the key.
 * Shared by crm.enqueue_job() and the workflow rules (workflow.c).
 */
pg_uuid_t
crm_queue_enqueue_job(const pg_uuid_t *tenant, const CrmJobRequest *request)
{
	Datum		args[11];
	char		nulls[11] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	pg_uuid_t	job_id;
	pg_uuid_t	key;
	ActionInfo	action;
	const char *refusal;

	if (!action_lookup(request->action, &action))
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg("job action \"%s\" does not exist", request->action),
				 errhint("The known actions are listed in crm.job_action.")));

	crm_uuid_v7(&job_id);
	key = request->has_key ? request->key : job_id;

	/* the columns of the job row (PLAN_JOB_INSERT and PLAN_ENQUEUE) */
	args[0] = UUIDPGetDatum(tenant);
	args[1] = UUIDPGetDatum(&job_id);
	args[2] = CStringGetTextDatum(request->action);
	args[3] = JsonbPGetDatum(request->params);
	if (request->has_rule)
		args[4] = UUIDPGetDatum(&request->rule);
	else
		nulls[4] = 'n';
	if (request->entity)
		args[5] = CStringGetTextDatum(request->entity);
	else
		nulls[5] = 'n';
	if (request->has_entity_id)
		args[6] = UUIDPGetDatum(&request->entity_id);
	else
		nulls[6] = 'n';
	if (request->has_contact)
		args[7] = UUIDPGetDatum(&request->contact);
	else
		nulls[7] = 'n';
	args[8] = UUIDPGetDatum(&key);
	args[9] = TimestampTzGetDatum(request->run_at);
	args[10] = Int32GetDatum(request->max_attempts);

	/*
	 * No consent to check (no contact, or an action that needs none): the
	 * key and the job in one statement.
	 */
	if (!request->has_contact ||
		(!action.has_consent && strcmp(request->action, "create_task") != 0))
	{
		run(PLAN_ENQUEUE, args, nulls, 0);
		if (SPI_processed == 0)
		{
			Datum		kargs[2] = {UUIDPGetDatum(tenant), UUIDPGetDatum(&key)};
			pg_uuid_t	holder;

			run(PLAN_KEY_FIND, kargs, NULL, 1);
			if (SPI_processed == 0)
				elog(ERROR, "idempotency key vanished while it was taken");
			holder = uuid_column(1);
			/* our own key without a job: the action went away meanwhile */
			if (memcmp(&holder, &job_id, sizeof(pg_uuid_t)) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
						 errmsg("job action \"%s\" does not exist", request->action),
						 errhint("The known actions are listed in crm.job_action.")));
			return holder;
		}
		crm_notify("crm_jobs", action.queue);
		return job_id;
	}

	{
		Datum		kargs[3] = {UUIDPGetDatum(tenant), UUIDPGetDatum(&key), UUIDPGetDatum(&job_id)};

		run(PLAN_KEY_TAKE, kargs, NULL, 0);
		if (SPI_processed == 0)
		{
			run(PLAN_KEY_FIND, kargs, NULL, 1);
			if (SPI_processed == 0)
				elog(ERROR, "idempotency key vanished while it was taken");
			return uuid_column(1);
		}
	}

	refusal = consent_refusal(tenant, action.has_consent ? action.consent : NULL,
							  request->action, request->params,
							  request->has_contact ? &request->contact : NULL);
	run(PLAN_JOB_INSERT, args, nulls, 0);

	if (refusal)
		finish_job(tenant, &job_id, "skipped", refusal, NULL);
	else
	{
		/* PostgreSQL folds equal notifications of a transaction into one. */
		crm_notify("crm_jobs", action.queue);
	}
	return job_id;
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
 * are left alone (run_jobs ignores them too).  Runs as the caller, inside
 * its own SPI connection; nothing to do (and no statement run) when no id
 * is named.
 */
static SPIPlanPtr visible_plan = NULL;

#define VISIBLE_PLAN_SQL \
	"SELECT v.k, v.i FROM (" \
	" SELECT x.k, CASE WHEN x.t OPERATOR(pg_catalog.~) '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'" \
	"   THEN x.t::pg_catalog.uuid END" \
	" FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.text[]), pg_catalog.unnest($3::pg_catalog.text[])) AS x(k, t)" \
	" UNION ALL" \
	" SELECT p.k, CASE WHEN ($4::pg_catalog.jsonb OPERATOR(pg_catalog.#>>) p.path)" \
	"   OPERATOR(pg_catalog.~) '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'" \
	"   THEN ($4::pg_catalog.jsonb OPERATOR(pg_catalog.#>>) p.path)::pg_catalog.uuid END" \
	" FROM (VALUES ('opportunity'::pg_catalog.text, '{opportunityId}'::pg_catalog.text[])," \
	"   ('lead', '{leadId}'), ('contact', '{contactId}'), ('account', '{accountId}')," \
	"   ('opportunity', '{relatedTo,opportunityId}'), ('lead', '{relatedTo,leadId}')," \
	"   ('contact', '{relatedTo,contactId}'), ('account', '{relatedTo,accountId}')) AS p(k, path)" \
	") AS v(k, i)" \
	" WHERE v.i IS NOT NULL AND NOT CASE" \
	"  WHEN v.k OPERATOR(pg_catalog.=) 'contact' THEN EXISTS (SELECT 1 FROM crm.contact r" \
	"   WHERE r.tenant_id OPERATOR(pg_catalog.=) $1 AND r.id OPERATOR(pg_catalog.=) v.i)" \
	"  WHEN v.k OPERATOR(pg_catalog.=) 'opportunity' THEN EXISTS (SELECT 1 FROM crm.opportunity r" \
	"   WHERE r.tenant_id OPERATOR(pg_catalog.=) $1 AND r.id OPERATOR(pg_catalog.=) v.i)" \
	"  WHEN v.k OPERATOR(pg_catalog.=) 'lead' THEN EXISTS (SELECT 1 FROM crm.lead r" \
	"   WHERE r.tenant_id OPERATOR(pg_catalog.=) $1 AND r.id OPERATOR(pg_catalog.=) v.i)" \
	"  WHEN v.k OPERATOR(pg_catalog.=) 'account' THEN EXISTS (SELECT 1 FROM crm.account r" \
	"   WHERE r.tenant_id OPERATOR(pg_catalog.=) $1 AND r.id OPERATOR(pg_catalog.=) v.i)" \
	"  ELSE true END" \
	" LIMIT 1"

void
crm_queue_require_visible(const pg_uuid_t *tenant, const pg_uuid_t *contact,
						  const char *entity, const pg_uuid_t *entity_id,
						  Jsonb *payload)
{
	Datum		kinds[2];
	Datum		ids[2];
	int			n = 0;
	Datum		args[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	char	   *kind;
	char	   *id;
	bool		hidden;

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

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (visible_plan == NULL)
	{
		Oid			types[4] = {UUIDOID, TEXTARRAYOID, TEXTARRAYOID, JSONBOID};
		SPIPlanPtr	plan = SPI_prepare(VISIBLE_PLAN_SQL, 4, types);

		if (plan == NULL || SPI_keepplan(plan) != 0)
			elog(ERROR, "could not prepare the visibility check of the queue");
		visible_plan = plan;
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
		SPI_finish();
		return;
	}
	kind = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	id = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);

	/* not visible: hidden (exists for the owner) or absent? */
	{
		Oid			save_userid;
		int			save_sec_context;

		GetUserIdAndSecContext(&save_userid, &save_sec_context);
		SetUserIdAndSecContext(crm_table_owner(kind),
							   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
		if (SPI_execute_plan(visible_plan, args, nulls, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not check the records a job names");
		hidden = (SPI_processed == 0);
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
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
Datum
crm_queue_enqueue(PG_FUNCTION_ARGS)
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
	if (PG_ARGISNULL(1) || JB_ROOT_IS_SCALAR(PG_GETARG_JSONB_P(1)) ||
		!JB_ROOT_IS_OBJECT(PG_GETARG_JSONB_P(1)))
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
		JsonbValue	key;
		JsonbValue *inner;
		Jsonb	   *payload = NULL;

		key.type = jbvString;
		key.val.string.val = "payload";
		key.val.string.len = strlen("payload");
		inner = findJsonbValueFromContainer(&request.params->root, JB_FOBJECT, &key);
		if (inner != NULL && inner->type == jbvBinary)
			payload = JsonbValueToJsonb(inner);
		crm_queue_require_visible(&tenant, request.has_contact ? &request.contact : NULL,
								  request.entity, request.has_entity_id ? &request.entity_id : NULL,
								  payload);
	}

	queue_begin(&session);
	job = crm_queue_enqueue_job(&tenant, &request);
	queue_end(&session);
	return UUIDPGetDatum(uuid_copy(&job));
}

/*
 * crm.claim_jobs(queue, worker, max, lease) returns setof crm.job
 */
Datum
crm_queue_claim(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	pg_uuid_t	tenant = queue_tenant();
	QueueSession session;
	Datum		args[5];
	SPITupleTable *claimed;
	uint64		nclaimed;
	char	   *worker;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("queue and worker must be given")));
	worker = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (worker[strspn(worker, " \t\r\n")] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("worker must not be blank")));
	if (PG_ARGISNULL(2) || PG_GETARG_INT32(2) <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max must be positive")));
	if (PG_ARGISNULL(3) ||
		!interval_is_positive(PG_GETARG_DATUM(3)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lease must be a positive interval")));
	require_time_reachable(PG_GETARG_DATUM(3), 1, "lease");

	InitMaterializedSRF(fcinfo, 0);

	queue_begin(&session);
	args[0] = UUIDPGetDatum(&tenant);
	args[1] = PG_GETARG_DATUM(0);
	args[2] = PG_GETARG_DATUM(2);
	args[3] = PG_GETARG_DATUM(1);
	args[4] = PG_GETARG_DATUM(3);
	run(PLAN_CLAIM, args, NULL, 0);
	claimed = SPI_tuptable;
	nclaimed = SPI_processed;

	for (uint64 i = 0; i < nclaimed; i++)
	{
		HeapTuple	tuple = claimed->vals[i];
		TupleDesc	tupdesc = claimed->tupdesc;
		bool		isnull;
		pg_uuid_t	job = *DatumGetUUIDP(SPI_getbinval(tuple, tupdesc, SPI_fnumber(tupdesc, "id"), &isnull));
		char	   *action = SPI_getvalue(tuple, tupdesc, SPI_fnumber(tupdesc, "action"));
		Datum		params = SPI_getbinval(tuple, tupdesc, SPI_fnumber(tupdesc, "params"), &isnull);
		Datum		contact = SPI_getbinval(tuple, tupdesc, SPI_fnumber(tupdesc, "contact_id"), &isnull);
		const char *refusal = NULL;

		/* Consent may have been withdrawn since the job was enqueued. */
		if (!isnull)
		{
			pg_uuid_t	contact_id = *DatumGetUUIDP(contact);
			ActionInfo	info;
			char	   *consent = NULL;

			if (action_lookup(action, &info) && info.has_consent)
				consent = info.consent;
			refusal = consent_refusal(&tenant, consent, action, DatumGetJsonbP(params), &contact_id);
		}
		if (refusal)
			finish_job(&tenant, &job, "skipped", refusal, NULL);
		else
			tuplestore_puttuple(rsinfo->setResult, tuple);
	}
	queue_end(&session);
	return (Datum) 0;
}

/*
 * Locks a running job and checks that the caller may report on it: it is
 * in the ready set and claimed, held by the named worker (when one is
 * named), and its lease has not run out.  Fills attempts, max_attempts and
 * the queue.
 */
static void
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
Datum
crm_queue_complete(PG_FUNCTION_ARGS)
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
 * crm.fail_job(id, error, worker) returns timestamptz: when the job runs
 * again, or NULL when it died.
 */
Datum
crm_queue_fail(PG_FUNCTION_ARGS)
{
	pg_uuid_t	tenant = queue_tenant();
	pg_uuid_t	job = job_argument(fcinfo);
	char	   *worker = worker_argument(fcinfo, 2);
	Datum		error = PG_ARGISNULL(1) ? CStringGetTextDatum("unknown error") : PG_GETARG_DATUM(1);
	QueueSession session;
	int			attempts;
	int			max_attempts;
	TimestampTz next_run;

	queue_begin(&session);
	job_held(&tenant, &job, worker, &attempts, &max_attempts);
	if (attempts >= max_attempts)
	{
		Datum		args[3] = {UUIDPGetDatum(&tenant), UUIDPGetDatum(&job), error};

		run(PLAN_ADD_ERROR, args, NULL, 0);
		finish_job(&tenant, &job, "dead",
				   psprintf("failed %d of %d attempts", attempts, max_attempts), NULL);
		queue_end(&session);
		PG_RETURN_NULL();
	}
	else
	{
		double		backoff = BACKOFF_BASE_SECONDS * pow(2.0, attempts);
		Datum		args[4];

		if (backoff > BACKOFF_CAP_SECONDS)
			backoff = BACKOFF_CAP_SECONDS;
		backoff *= 1.0 + BACKOFF_JITTER * pg_prng_double(&pg_global_prng_state);
		next_run = GetCurrentTransactionStartTimestamp() + (TimestampTz) (backoff * USECS_PER_SEC);
		args[0] = UUIDPGetDatum(&tenant);
		args[1] = UUIDPGetDatum(&job);
		args[2] = TimestampTzGetDatum(next_run);
		args[3] = error;
		run(PLAN_RETRY_LATER, args, NULL, 0);
	}
	queue_end(&session);
	PG_RETURN_TIMESTAMPTZ(next_run);
}

/*
 * crm.extend_lease(id, lease, worker) returns timestamptz: the lease now
 * ends that long from now.
 */
Datum
crm_queue_extend_lease(PG_FUNCTION_ARGS)
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

	if (PG_ARGISNULL(1) ||
		!interval_is_positive(PG_GETARG_DATUM(1)))
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
 * expired leases are reaped.
 */
Datum
crm_queue_reap(PG_FUNCTION_ARGS)
{
	pg_uuid_t	tenant;
	bool		has_tenant = crm_current_tenant_id(&tenant);
	QueueSession session;
	SPITupleTable *expired;
	uint64		nexpired;
	Datum		args[1];

	queue_begin(&session);
	args[0] = UUIDPGetDatum(&tenant);
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

		if (last)
		{
			Datum		err_args[3] = {UUIDPGetDatum(&job_tenant), UUIDPGetDatum(&job),
			CStringGetTextDatum("lease expired")};

			run(PLAN_ADD_ERROR, err_args, NULL, 0);
			finish_job(&job_tenant, &job, "dead",
					   psprintf("lease expired on the last of %d attempts", max_attempts), NULL);
		}
		else
		{
			Datum		retry_args[4] = {UUIDPGetDatum(&job_tenant), UUIDPGetDatum(&job),
				TimestampTzGetDatum(GetCurrentTransactionStartTimestamp()),
			CStringGetTextDatum("lease expired")};

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
Datum
crm_queue_retry(PG_FUNCTION_ARGS)
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
 */
Datum
crm_queue_purge(PG_FUNCTION_ARGS)
{
	pg_uuid_t	tenant;
	bool		has_tenant = crm_current_tenant_id(&tenant);
	QueueSession session;
	Datum		args[2];
	bool		isnull;
	int64		purged;

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
