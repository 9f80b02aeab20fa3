/*-------------------------------------------------------------------------
 *
 * touch.c
 *	  crm.touch_updated_at(): keeps updated_at of every table truthful.
 *
 * A BEFORE UPDATE row trigger on each table sets updated_at to the
 * transaction's start time, the same now() a client would write, so that
 * "changed since" queries and sync jobs can rely on it whichever client
 * made the change.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include "catalog/pg_type.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(crm_touch_updated_at);

Datum
crm_touch_updated_at(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	int			attnum;
	Datum		value;
	bool		isnull = false;

	crm_require_trigger(fcinfo, "touch_updated_at", true, true);
	crm_require_trigger_nargs(fcinfo, "touch_updated_at", 0);
	if (!TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"touch_updated_at\" must be fired for UPDATE")));

	if (crm_replica_skips_work())
		return PointerGetDatum(trigdata->tg_newtuple);

	attnum = crm_attnum(trigdata->tg_relation, "updated_at", TIMESTAMPTZOID);
	value = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());

	return PointerGetDatum(heap_modify_tuple_by_cols(trigdata->tg_newtuple,
													 RelationGetDescr(trigdata->tg_relation),
													 1, &attnum, &value, &isnull));
}

/*
 * crm.stamp_flag_times(flag, flag_at [, flag, flag_at ...]) trigger
 *
 * BEFORE INSERT OR UPDATE: for each pair of a boolean column and a
 * timestamptz column, records when the flag was set.  Consent flags
 * (do_not_call, email_opt_out, profiling_opt_out) must say since when they
 * hold: the time is the transaction's unless the client gave one, kept
 * while the flag stays set, and cleared when it is unset.
 */
PG_FUNCTION_INFO_V1(crm_stamp_flag_times);

Datum
crm_stamp_flag_times(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Trigger    *trigger;
	Relation	rel;
	TupleDesc	tupdesc;
	HeapTuple	newtuple;
	int			npairs;
	int		   *cols;
	Datum	   *values;
	bool	   *nulls;
	int			n = 0;

	crm_require_trigger(fcinfo, "stamp_flag_times", true, true);
	trigger = trigdata->tg_trigger;
	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		newtuple = trigdata->tg_newtuple;
	else if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		newtuple = trigdata->tg_trigtuple;
	else
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"stamp_flag_times\" must be fired for INSERT or UPDATE")));
	if (trigger->tgnargs == 0 || trigger->tgnargs % 2 != 0)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"stamp_flag_times\" needs pairs of arguments: a boolean column and its timestamptz column")));

	if (crm_replica_skips_work())
		return PointerGetDatum(newtuple);

	rel = trigdata->tg_relation;
	tupdesc = RelationGetDescr(rel);
	npairs = trigger->tgnargs / 2;
	cols = palloc(sizeof(int) * npairs);
	values = palloc(sizeof(Datum) * npairs);
	nulls = palloc(sizeof(bool) * npairs);

	for (int i = 0; i < npairs; i++)
	{
		int			flag_att = crm_attnum(rel, trigger->tgargs[2 * i], BOOLOID);
		int			at_att = crm_attnum(rel, trigger->tgargs[2 * i + 1], TIMESTAMPTZOID);
		bool		flag_null;
		bool		at_null;
		bool		flag = DatumGetBool(heap_getattr(newtuple, flag_att, tupdesc, &flag_null));

		(void) heap_getattr(newtuple, at_att, tupdesc, &at_null);
		flag = flag && !flag_null;
		if (flag && at_null)
		{
			cols[n] = at_att;
			values[n] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
			nulls[n++] = false;
		}
		else if (!flag && !at_null)
		{
			cols[n] = at_att;
			values[n] = (Datum) 0;
			nulls[n++] = true;
		}
	}

	if (n == 0)
		return PointerGetDatum(newtuple);
	return PointerGetDatum(heap_modify_tuple_by_cols(newtuple, tupdesc, n, cols, values, nulls));
}
