/*-------------------------------------------------------------------------
 *
 * activity.c
 *	  crm.activity_sync(): the per-row rules of an activity.
 *
 * BEFORE INSERT OR UPDATE on crm.activity:
 *	- module is the activity type's module (sales, project, communication,
 *	  ...), so that roll-ups by module never disagree with the registry; a
 *	  client's value is ignored (looked up again only when the type
 *	  changes, kept otherwise);
 *	- an unknown type is refused here with a message that names it, before
 *	  any other constraint reports a less helpful symptom;
 *	- completed_at is the server's: the transaction's start time when the
 *	  status becomes completed, kept while it stays completed, NULL
 *	  otherwise; a client's value is ignored.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(crm_activity_sync);

static SPIPlanPtr module_plan = NULL;

/*
 * The modules of the activity types a statement met (CrmCommandKey): a
 * COPY of 100,000 activities of three types looks the types up three
 * times, not once per row.  The lookup reads with the statement's
 * snapshot, so it would answer the same every time within the statement.
 * A type that does not exist is not kept (its row fails).
 */
#define MODULE_CACHE_SIZE 32

typedef struct ModuleCacheEntry
{
	char	   *code;
	Datum		module;
} ModuleCacheEntry;

static MemoryContext module_context = NULL;
static CrmCommandKey module_key;
static ModuleCacheEntry module_cache[MODULE_CACHE_SIZE];
static int	module_ncached = 0;

/* The module of an activity type, or NULL when there is no such type. */
static Datum
activity_type_module(Datum type_code, bool *found)
{
	Datum		result = (Datum) 0;
	Datum		args[1] = {type_code};
	CrmCommandKey now = crm_command_key_current();
	char	   *code = TextDatumGetCString(type_code);

	if (module_context == NULL)
	{
		module_context = AllocSetContextCreate(TopMemoryContext, "crm activity type cache",
											   ALLOCSET_SMALL_SIZES);
		module_key = now;
	}
	if (!crm_command_key_equal(module_key, now))
	{
		MemoryContextReset(module_context);
		module_ncached = 0;
		module_key = now;
	}
	for (int i = 0; i < module_ncached; i++)
		if (strcmp(module_cache[i].code, code) == 0)
		{
			*found = true;
			return module_cache[i].module;
		}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	if (module_plan == NULL)
	{
		Oid			types[1] = {TEXTOID};
		SPIPlanPtr	plan = SPI_prepare("SELECT module FROM crm.activity_type"
									   " WHERE code OPERATOR(pg_catalog.=) $1",
									   1, types);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		module_plan = plan;
	}

	if (SPI_execute_plan(module_plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "activity type lookup failed");

	*found = SPI_processed > 0;
	if (*found)
	{
		bool		isnull;

		/* copy out of SPI's memory before SPI_finish frees it */
		result = SPI_datumTransfer(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 1, &isnull),
								   false, -1);
	}
	SPI_finish();

	if (*found && module_ncached < MODULE_CACHE_SIZE)
	{
		MemoryContext old = MemoryContextSwitchTo(module_context);

		module_cache[module_ncached].code = pstrdup(code);
		module_cache[module_ncached].module = datumCopy(result, false, -1);
		module_ncached++;
		MemoryContextSwitchTo(old);
	}
	return result;
}

Datum
crm_activity_sync(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	tupdesc;
	HeapTuple	newtuple;
	HeapTuple	oldtuple = NULL;
	int			type_att;
	int			module_att;
	int			status_att;
	int			completed_att;
	Datum		type_code;
	Datum		status;
	bool		isnull;
	bool		is_completed;
	int			cols[2];
	Datum		values[2];
	bool		nulls[2];
	int			n = 0;

	crm_require_trigger(fcinfo, "activity_sync", true, true);
	crm_require_trigger_nargs(fcinfo, "activity_sync", 0);
	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		oldtuple = trigdata->tg_trigtuple;
		newtuple = trigdata->tg_newtuple;
	}
	else if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		newtuple = trigdata->tg_trigtuple;
	else
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"activity_sync\" must be fired for INSERT or UPDATE")));

	if (crm_replica_skips_work())
		return PointerGetDatum(newtuple);

	rel = trigdata->tg_relation;
	tupdesc = RelationGetDescr(rel);
	type_att = crm_attnum(rel, "activity_type", TEXTOID);
	module_att = crm_attnum(rel, "module", TEXTOID);
	status_att = crm_attnum(rel, "status", TEXTOID);
	completed_att = crm_attnum(rel, "completed_at", TIMESTAMPTZOID);

	type_code = heap_getattr(newtuple, type_att, tupdesc, &isnull);
	if (!isnull)
	{
		bool		type_changed = true;
		bool		oldnull = true;
		Datum		old_code = (Datum) 0;

		if (oldtuple)
		{
			old_code = heap_getattr(oldtuple, type_att, tupdesc, &oldnull);
			type_changed = oldnull ||
				!DatumGetBool(DirectFunctionCall2Coll(texteq, C_COLLATION_OID, old_code, type_code));
		}
		cols[n] = module_att;
		if (type_changed)
		{
			bool		found;
			Datum		module = activity_type_module(type_code, &found);

			if (!found)
				ereport(ERROR,
						(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
						 errmsg("activity type \"%s\" does not exist",
								TextDatumGetCString(type_code)),
						 errhint("The known types are listed in crm.activity_type.")));
			values[n] = module;
			nulls[n++] = false;
		}
		else
		{
			/* the module the server derived before, whatever the client sent */
			values[n] = heap_getattr(oldtuple, module_att, tupdesc, &nulls[n]);
			n++;
		}
	}

	status = heap_getattr(newtuple, status_att, tupdesc, &isnull);
	is_completed = !isnull &&
		strcmp(TextDatumGetCString(status), "completed") == 0;
	cols[n] = completed_att;
	nulls[n] = true;
	values[n] = (Datum) 0;
	if (is_completed)
	{
		bool		was_completed = false;

		if (oldtuple)
		{
			bool		old_status_null;
			Datum		old_status = heap_getattr(oldtuple, status_att, tupdesc, &old_status_null);

			was_completed = !old_status_null &&
				strcmp(TextDatumGetCString(old_status), "completed") == 0;
			if (was_completed)
				values[n] = heap_getattr(oldtuple, completed_att, tupdesc, &nulls[n]);
		}
		if (nulls[n])
		{
			values[n] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
			nulls[n] = false;
		}
	}
	n++;

	return PointerGetDatum(heap_modify_tuple_by_cols(newtuple, tupdesc, n, cols, values, nulls));
}
