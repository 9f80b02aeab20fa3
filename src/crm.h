/*-------------------------------------------------------------------------
 *
 * crm.h
 *	  Declarations shared by the C files of the crm extension.
 *
 * Each .c file holds one capability; only what two or more of them need
 * lives here.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CRM_H
#define CRM_H

#include "postgres.h"

#include "access/xact.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "storage/proc.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/uuid.h"

/*
 * Identifies one statement of one transaction in this backend.  Caches
 * that may only be trusted while nothing could have changed underneath
 * them (stage lookups, the tenant a session acts for) are tagged with the
 * key of the statement that filled them and dropped when it differs.  The
 * command id moves on after each write of the transaction; the statement
 * start time moves on with each statement the client sends, so a change
 * another session committed is seen by the next statement even in a
 * transaction that only reads.  The subtransaction is part of the key: a
 * row lock taken under a subtransaction that rolled back (a PL/pgSQL
 * exception block) is gone, so what was read and locked there is read and
 * locked again.
 */
typedef struct CrmCommandKey
{
	LocalTransactionId lxid;
	SubTransactionId subxid;
	CommandId	cid;
	TimestampTz statement_start;
} CrmCommandKey;

static inline CrmCommandKey
crm_command_key_current(void)
{
	CrmCommandKey key;

	key.lxid = MyProc->lxid;
	key.subxid = GetCurrentSubTransactionId();
	key.cid = GetCurrentCommandId(false);
	key.statement_start = GetCurrentStatementStartTimestamp();
	return key;
}

static inline bool
crm_command_key_equal(CrmCommandKey a, CrmCommandKey b)
{
	return a.lxid == b.lxid && a.subxid == b.subxid && a.cid == b.cid &&
		a.statement_start == b.statement_start;
}

/* rowwriter.c */
typedef struct CrmRowWriter CrmRowWriter;
extern bool crm_row_writer_columns_known(Relation rel, const char *const *names,
										 const Oid *types, int ncolumns);
extern bool crm_row_writer_only_triggers(Relation rel, const char *const *functions,
										 int nfunctions, bool tenant_fk);
extern CrmRowWriter *crm_row_writer_open(Oid relid);
extern TupleTableSlot *crm_row_writer_next(CrmRowWriter *w);
extern void crm_row_writer_add(CrmRowWriter *w);
extern void crm_row_writer_flush(CrmRowWriter *w);
extern void crm_row_writer_close(CrmRowWriter *w);

/* common.c */
typedef void (*CrmRelcacheCallback) (Oid relid);
extern void crm_register_relcache_callback(CrmRelcacheCallback callback);
extern void crm_require_trigger(FunctionCallInfo fcinfo, const char *funcname,
								bool row_level, bool before);
extern char *crm_table_name(Relation rel);
extern void crm_notify(const char *channel, const char *payload);
extern bool crm_citus_in_database(void);
extern bool crm_in_shard_call(void);
extern void crm_shard_record_notification(const char *channel, const char *payload);
extern bool crm_shard_delegate(FunctionCallInfo fcinfo, Datum *result);
/*
 * Defines the SQL-callable C function "name" of a function that writes as
 * the tables' owner: with Citus, its call is handed to the twin
 * crm.<sql name>_in_shard on the tenant's node (shard.c) and the twin's
 * result returned; otherwise the body that follows the macro runs, as
 * name##_here, with fcinfo:
 *
 *	CRM_SHARD_ENTRY(crm_queue_claim)
 *	{
 *		... the work ...
 *	}
 */
#define CRM_SHARD_ENTRY(name) \
	static Datum name##_here(FunctionCallInfo fcinfo); \
	Datum \
	name(PG_FUNCTION_ARGS) \
	{ \
		Datum		crm_shard_result_; \
		if (crm_shard_delegate(fcinfo, &crm_shard_result_)) \
			return crm_shard_result_; \
		return name##_here(fcinfo); \
	} \
	static Datum \
	name##_here(FunctionCallInfo fcinfo)
extern void crm_require_trigger_nargs(FunctionCallInfo fcinfo,
									  const char *funcname, int nargs);
extern bool crm_replica_skips_work(void);
extern bool crm_loading_dump(void);
extern void crm_transition_rewind(Tuplestorestate *ts);
extern Oid	crm_relation_owner(Oid relid);
extern Oid	crm_table_owner(const char *relname);
extern char *crm_uuid_text(const pg_uuid_t *id);
extern bool crm_uuid_parse(const char *text, int len, pg_uuid_t *out);
extern JsonbValue *crm_jsonb_field(JsonbContainer *container, const char *key);
/* crm_uuid_parse() as a regular expression, for SQL that checks payload ids */
#define CRM_UUID_TEXT_PATTERN \
	"^([0-9a-fA-F]{4}(-?[0-9a-fA-F]{4}){7}|\\{[0-9a-fA-F]{4}(-?[0-9a-fA-F]{4}){7}\\})$"

extern struct _SPI_plan *crm_prepare_kept(const char *sql, int nargs, Oid *argtypes);
extern struct _SPI_plan *crm_prepare_kept_generic(const char *sql, int nargs, Oid *argtypes);
extern int	crm_attnum(Relation rel, const char *colname, Oid typid);
extern int	crm_optional_attnum(Relation rel, const char *colname);
extern void crm_refuse_identity_change(Relation rel, HeapTuple oldtuple,
									   HeapTuple newtuple);
extern void crm_refuse_column_change(Relation rel, HeapTuple oldtuple,
									 HeapTuple newtuple, int attnum);

/*
 * guard.c: errors out (42501) unless schema crm is still the extension's
 * own.  Every C entry point whose statements name crm.<object> calls it
 * first (cheap: cached per statement); triggers get it through
 * crm_require_trigger().
 */
extern void crm_guard_require_schema(void);

/* uuid.c */
extern void crm_uuid_v7(pg_uuid_t *out);

/*
 * queue.c: one job to enqueue.  Optional parts have a has_ flag (or are
 * NULL); run_at and max_attempts (1..100) are required.  debounce, when
 * not NULL, is a positive window: the job is made only if the same rule
 * (has_rule) made none for the same subject (the contact when there is
 * one, else entity_id) within it (crm.job_debounce), as workflow rules do.
 */
typedef struct CrmJobRequest
{
	const char *action;
	Jsonb	   *params;
	TimestampTz run_at;
	int			max_attempts;
	bool		has_key;
	pg_uuid_t	key;
	bool		has_contact;
	pg_uuid_t	contact;
	const char *entity;
	bool		has_entity_id;
	pg_uuid_t	entity_id;
	bool		has_rule;
	pg_uuid_t	rule;
	const Interval *debounce;
} CrmJobRequest;

/*
 * crm_queue_enqueue_jobs(tenant, jobs, njobs, ids): enqueues njobs jobs of
 * one tenant in one statement (plus one for the debounce windows when a
 * request has one).  Call it inside an SPI connection, as the owner of the
 * queue tables (a trigger switches to its table's owner; crm.enqueue_job
 * does the same).  Per job, as crm.enqueue_job() does: an unknown action
 * is 23503; an idempotency key already taken (before, or by an earlier job
 * of the same batch) makes no job and gives the id of the job holding it;
 * a job whose contact withholds the consent its action needs is archived
 * as skipped at once (23503 when that contact does not exist); one NOTIFY
 * crm_jobs per queue that got a ready job.  ids (may be NULL) receives
 * each job's id in order, the nil uuid for a job the debounce window held
 * back or whose key is held by a job the caller cannot see (visible_to).
 * Returns how many jobs were made (skipped ones included).
 * crm_queue_enqueue_job() is the same for one job and returns its id.
 */
extern int	crm_queue_enqueue_jobs(const pg_uuid_t *tenant, const CrmJobRequest *jobs,
								   int njobs, pg_uuid_t *ids);
extern pg_uuid_t crm_queue_enqueue_job(const pg_uuid_t *tenant, const CrmJobRequest *request);
extern void crm_queue_require_visible(const pg_uuid_t *tenant, const pg_uuid_t *contact,
									  const char *entity, const pg_uuid_t *entity_id,
									  Jsonb *payload);

/* stage.c */
extern bool crm_stage_unlinking;

/* workflow.c: the rules matched against events written without the trigger */
typedef struct CrmEventRow
{
	pg_uuid_t	tenant;
	pg_uuid_t	id;
	char	   *event_type;
	char	   *entity;			/* NULL: about no record */
	bool		has_entity_id;
	pg_uuid_t	entity_id;
	Jsonb	   *payload;
} CrmEventRow;
extern void crm_workflow_match_rows(Oid event_owner, CrmEventRow *events, int n);

/* outbox.c */
extern int64 crm_outbox_emit(const pg_uuid_t *tenant, const char *event_type,
							 const char *entity, const pg_uuid_t *entity_id,
							 Jsonb *payload);

/* currency.c */
extern text *crm_tenant_text(Datum tenant, const char *column);

/* tenant.c */
extern bool crm_current_tenant_id(pg_uuid_t *tenant);
extern bool crm_current_app_user_id(pg_uuid_t *user);
extern bool crm_current_user_sees(Datum visible_to, bool isnull);

/* visibility.c */
extern bool crm_tenant_public(Datum tenant);

#endif							/* CRM_H */
