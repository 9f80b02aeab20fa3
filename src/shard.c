/*-------------------------------------------------------------------------
 *
 * shard.c
 *	  The calls that write as the tables' owner, run on the node that holds
 *	  the session tenant's shards when Citus is in the database.
 *
 * Several functions check their caller and then write tables that no
 * application role may write, as the tables' owner (SetUserIdAndSecContext):
 * crm.emit_event, crm.subscribe, crm.ack, crm.consume_event, the job queue's
 * functions, crm.snapshot_forecast, crm.pls_rebuild, ...  On one node that
 * is all there is to it.  On a Citus coordinator every statement goes to the
 * workers over one connection per (node, user): the owner's statements
 * would need a second connection to shards the application already wrote
 * as itself in the same transaction, which Citus refuses ("cannot perform
 * query on placements that were modified in this transaction by a different
 * user").
 *
 * So, with Citus in the database, such a function called by a role that is
 * not the tables' owner, for a tenant, hands the call over as the caller to
 * its twin crm.<name>_in_shard(tenant, the same arguments):
 * crm.distribute() makes every twin a Citus distributed function, co-located
 * with crm.tenant by its first argument and force-delegated, so Citus runs
 * the twin on the node that holds the tenant's shards, inside the
 * transaction and over the connection the transaction already uses there.
 * The twin checks that its tenant is the session's and calls the function
 * itself on that node, where the owner's statements run on the local shards
 * without any connection.  Where the twin is not distributed (one node,
 * Citus before crm.distribute()) it runs where it is called, which is what
 * the function would have done anyway.
 *
 * Notifications: a worker's NOTIFY would reach no listener (they listen on
 * the coordinator) and Citus cannot PREPARE a transaction that notified, so
 * inside a twin on a worker crm_notify() records them instead, and the
 * coordinator asks for them afterwards (crm.shard_notifications(tenant),
 * routed to the same node) and sends them itself.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"

#define TWIN_SUFFIX "_in_shard"

/* > 0 while a twin runs its function: the function then does its work */
static int	shard_call_depth = 0;

/* whether Citus is in this database, read once per transaction */
static LocalTransactionId citus_checked_lxid = InvalidLocalTransactionId;
static bool citus_here = false;

/* the notifications recorded by twins on this node in this transaction */
typedef struct RecordedNotification
{
	char	   *channel;
	char	   *payload;		/* NULL for none */
} RecordedNotification;

static LocalTransactionId recorded_lxid = InvalidLocalTransactionId;
static List *recorded = NIL;

bool
crm_citus_in_database(void)
{
	if (citus_checked_lxid != MyProc->lxid)
	{
		citus_here = OidIsValid(get_extension_oid("citus", true));
		citus_checked_lxid = MyProc->lxid;
	}
	return citus_here;
}

bool
crm_in_shard_call(void)
{
	return shard_call_depth > 0;
}

/*
 * crm_notify() inside a twin on a node Citus connected to: kept for the
 * coordinator.  Equal notifications are kept once (PostgreSQL folds them
 * anyway).
 */
void
crm_shard_record_notification(const char *channel, const char *payload)
{
	MemoryContext old;
	ListCell   *lc;
	RecordedNotification *n;

	if (recorded_lxid != MyProc->lxid)
	{
		recorded = NIL;			/* the list of an ended transaction is gone */
		recorded_lxid = MyProc->lxid;
	}
	foreach(lc, recorded)
	{
		n = (RecordedNotification *) lfirst(lc);
		if (strcmp(n->channel, channel) == 0 &&
			((n->payload == NULL && payload == NULL) ||
			 (n->payload != NULL && payload != NULL && strcmp(n->payload, payload) == 0)))
			return;
	}
	old = MemoryContextSwitchTo(TopTransactionContext);
	n = palloc(sizeof(RecordedNotification));
	n->channel = pstrdup(channel);
	n->payload = payload ? pstrdup(payload) : NULL;
	recorded = lappend(recorded, n);
	MemoryContextSwitchTo(old);
}

/*
 * Run crm.<fname>(args) through SPI and return its result as the result of
 * the running C function (fcinfo, whose pg_proc row says retset and
 * rettype; the twin and its function return the same): the scalar or
 * composite value, or, for a set-returning function, its rows into the
 * function's materialized result.
 * The arguments are parameters of known types, passed as constants of the
 * plan (SPI_execute_with_args), which is what Citus needs to route a
 * force-delegated call; no type is named in the text, so no search_path is
 * read.
 */
static Datum
call_through_spi(FunctionCallInfo fcinfo, bool retset, Oid rettype, const char *fname,
				 int nargs, Oid *argtypes, Datum *values, const bool *isnull)
{
	StringInfoData sql;
	char	   *nulls = palloc(nargs + 1);
	ReturnSetInfo *rsinfo = NULL;
	Datum		result = (Datum) 0;
	int			rc;

	/*
	 * Citus delegates "SELECT ... FROM f(constants)" only: the FROM form,
	 * also for a function of one value (a plain "SELECT f()" from inside a
	 * function is evaluated as a simple expression, never delegated).
	 */
	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT %s FROM crm.%s(", retset ? "*" : "r", quote_identifier(fname));
	for (int i = 0; i < nargs; i++)
	{
		appendStringInfo(&sql, "%s$%d", i > 0 ? ", " : "", i + 1);
		nulls[i] = isnull[i] ? 'n' : ' ';
	}
	appendStringInfoString(&sql, ") AS r");

	if (retset)
	{
		TupleDesc	desc;

		rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
		InitMaterializedSRF(fcinfo,
							get_call_result_type(fcinfo, NULL, &desc) == TYPEFUNC_COMPOSITE ?
							0 : MAT_SRF_USE_EXPECTED_DESC);
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute_with_args(sql.data, nargs, argtypes, values, nulls, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "%s failed: %s", sql.data, SPI_result_code_string(rc));

	if (retset)
	{
		for (uint64 i = 0; i < SPI_processed; i++)
			tuplestore_puttuple(rsinfo->setResult, SPI_tuptable->vals[i]);
	}
	else
	{
		bool		null;
		Datum		d;

		if (SPI_processed != 1)
			elog(ERROR, "%s returned " UINT64_FORMAT " rows", sql.data, SPI_processed);
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &null);
		fcinfo->isnull = null;
		if (!null && rettype != VOIDOID)
		{
			int16		typlen;
			bool		typbyval;

			get_typlenbyval(SPI_gettypeid(SPI_tuptable->tupdesc, 1), &typlen, &typbyval);
			result = SPI_datumTransfer(d, typbyval, typlen);
		}
	}
	SPI_finish();
	return result;
}

/*
 * Whether a call for the session's tenant (*tenant) goes to its twin: Citus
 * in the database, not inside the twin already, a tenant in the session (a
 * superuser's maintenance over every tenant stays here), and a caller that
 * is not the tables' owner (the owner writes as itself, on one connection).
 */
static bool
hand_over_wanted(pg_uuid_t *tenant)
{
	if (shard_call_depth > 0 || !crm_citus_in_database())
		return false;
	if (GetUserId() == crm_table_owner("tenant"))
		return false;
	return crm_current_tenant_id(tenant);
}

/*
 * crm.shard_call_wanted() returns boolean: the same for a function written
 * in SQL, which then calls its twin itself (crm.poll).
 */
PG_FUNCTION_INFO_V1(crm_shard_call_wanted);
Datum
crm_shard_call_wanted(PG_FUNCTION_ARGS)
{
	pg_uuid_t	tenant;

	PG_RETURN_BOOL(hand_over_wanted(&tenant));
}

/*
 * Called first by each function that writes as the tables' owner: true when
 * the call was handed to its twin (the result is then in *result, and the
 * function returns it at once), false when the function does its work
 * here: no Citus in the database, inside the twin already, no tenant in the
 * session (a superuser's maintenance over every tenant), or a caller that is
 * the tables' owner (it writes as itself, on one connection).
 */
bool
crm_shard_delegate(FunctionCallInfo fcinfo, Datum *result)
{
	pg_uuid_t	tenant;
	HeapTuple	proctup;
	Form_pg_proc proc;
	int			nargs;
	Oid		   *argtypes;
	Datum	   *values;
	bool	   *isnull;
	char	   *twin;
	bool		retset;
	Oid			rettype;

	if (!hand_over_wanted(&tenant))
		return false;

	proctup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fcinfo->flinfo->fn_oid));
	if (!HeapTupleIsValid(proctup))
		elog(ERROR, "cache lookup failed for function %u", fcinfo->flinfo->fn_oid);
	proc = (Form_pg_proc) GETSTRUCT(proctup);
	nargs = proc->pronargs + 1;
	argtypes = palloc(sizeof(Oid) * nargs);
	values = palloc(sizeof(Datum) * nargs);
	isnull = palloc(sizeof(bool) * nargs);
	argtypes[0] = UUIDOID;
	{
		pg_uuid_t  *copy = palloc(sizeof(pg_uuid_t));

		*copy = tenant;
		values[0] = UUIDPGetDatum(copy);
	}
	isnull[0] = false;
	for (int i = 1; i < nargs; i++)
	{
		argtypes[i] = proc->proargtypes.values[i - 1];
		values[i] = fcinfo->args[i - 1].value;
		isnull[i] = fcinfo->args[i - 1].isnull;
	}
	twin = psprintf("%s" TWIN_SUFFIX, NameStr(proc->proname));
	retset = proc->proretset;
	rettype = proc->prorettype;
	ReleaseSysCache(proctup);

	*result = call_through_spi(fcinfo, retset, rettype, twin, nargs, argtypes, values, isnull);

	/* the notifications the twin recorded on the worker, sent from here */
	{
		Oid			drain_type = UUIDOID;
		int			rc;

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		rc = SPI_execute_with_args("SELECT n.channel, n.payload FROM crm.shard_notifications($1) AS n",
								   1, &drain_type, values, NULL, true, 0);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "crm.shard_notifications failed: %s", SPI_result_code_string(rc));
		for (uint64 i = 0; i < SPI_processed; i++)
			Async_Notify(SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1),
						 SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2));
		SPI_finish();
	}
	return true;
}

/*
 * The tenant a twin is routed by must be the one the session acts for on
 * this node: the twin is no way into another tenant's shards.
 */
static void
require_session_tenant(Datum routed, bool isnull, const char *fname)
{
	pg_uuid_t	tenant;

	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tenant must not be null"),
				 errdetail("crm.%s() runs for the tenant of the session.", fname)));
	if (!crm_current_tenant_id(&tenant))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("tenant %s is not the tenant of this session", crm_uuid_text(DatumGetUUIDP(routed))),
				 errdetail("crm.%s() runs for the tenant of the session, and the session acts for no tenant here.",
						   fname),
				 errhint("On Citus, set crm.tenant_id with SET LOCAL at the top of the transaction, with citus.propagate_set_commands = 'local': a session-level SET does not reach the workers.")));
	if (memcmp(&tenant, DatumGetUUIDP(routed), UUID_LEN) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("tenant %s is not the tenant of this session", crm_uuid_text(DatumGetUUIDP(routed))),
				 errdetail("crm.%s() runs for the tenant of the session.", fname)));
}

/*
 * crm.<name>_in_shard(tenant uuid, the arguments of crm.<name>): the twin.
 * One C function for every twin: it calls crm.<name> with the arguments
 * after the tenant, with crm_shard_delegate() off, so the function works
 * where the twin runs.
 */
PG_FUNCTION_INFO_V1(crm_in_shard);
Datum
crm_in_shard(PG_FUNCTION_ARGS)
{
	HeapTuple	proctup;
	Form_pg_proc proc;
	char	   *name;
	char	   *fname;
	size_t		len;
	int			nargs;
	Oid		   *argtypes;
	Datum	   *values;
	bool	   *isnull;
	bool		retset;
	Oid			rettype;
	Datum		result;

	proctup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fcinfo->flinfo->fn_oid));
	if (!HeapTupleIsValid(proctup))
		elog(ERROR, "cache lookup failed for function %u", fcinfo->flinfo->fn_oid);
	proc = (Form_pg_proc) GETSTRUCT(proctup);
	name = pstrdup(NameStr(proc->proname));
	len = strlen(name);
	if (len <= strlen(TWIN_SUFFIX) || strcmp(name + len - strlen(TWIN_SUFFIX), TWIN_SUFFIX) != 0 ||
		proc->pronargs < 1 || proc->proargtypes.values[0] != UUIDOID)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("function %s is not a twin of a crm function", name),
				 errhint("A twin is named <function>" TWIN_SUFFIX " and takes the tenant (uuid) first.")));
	fname = pnstrdup(name, len - strlen(TWIN_SUFFIX));
	nargs = proc->pronargs - 1;
	argtypes = palloc(sizeof(Oid) * (nargs + 1));
	for (int i = 0; i < nargs; i++)
		argtypes[i] = proc->proargtypes.values[i + 1];
	retset = proc->proretset;
	rettype = proc->prorettype;
	ReleaseSysCache(proctup);

	require_session_tenant(PG_GETARG_DATUM(0), PG_ARGISNULL(0), fname);

	values = palloc(sizeof(Datum) * (nargs + 1));
	isnull = palloc(sizeof(bool) * (nargs + 1));
	for (int i = 0; i < nargs; i++)
	{
		values[i] = fcinfo->args[i + 1].value;
		isnull[i] = fcinfo->args[i + 1].isnull;
	}

	shard_call_depth++;
	PG_TRY();
	{
		result = call_through_spi(fcinfo, retset, rettype, fname, nargs, argtypes, values, isnull);
	}
	PG_FINALLY();
	{
		shard_call_depth--;
	}
	PG_END_TRY();
	return result;
}

/*
 * crm.shard_notifications(tenant uuid) returns table (channel text, payload
 * text): the notifications twins recorded on this node in this
 * transaction, handed over once (the list is emptied).
 */
PG_FUNCTION_INFO_V1(crm_shard_notifications);
Datum
crm_shard_notifications(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ListCell   *lc;

	require_session_tenant(PG_GETARG_DATUM(0), PG_ARGISNULL(0), "shard_notifications");
	InitMaterializedSRF(fcinfo, 0);
	if (recorded_lxid != MyProc->lxid)
		return (Datum) 0;
	foreach(lc, recorded)
	{
		RecordedNotification *n = (RecordedNotification *) lfirst(lc);
		Datum		values[2];
		bool		nulls[2] = {false, n->payload == NULL};

		values[0] = CStringGetTextDatum(n->channel);
		values[1] = n->payload ? CStringGetTextDatum(n->payload) : (Datum) 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	recorded = NIL;
	return (Datum) 0;
}
