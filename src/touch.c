/*-------------------------------------------------------------------------
 *
 * touch.c
 *	  The columns every crm table has and the server owns: created_at,
 *	  updated_at, and the identity (id, tenant_id); and the consent stamps
 *	  of flags (crm.stamp_flag_times).
 *
 * crm.touch_updated_at() is a BEFORE INSERT OR UPDATE row trigger on every
 * table (src/sql/99_finish.sql attaches it):
 *	- created_at is the transaction's start time on INSERT and never changes
 *	  afterwards; updated_at is the transaction's start time on INSERT and on
 *	  every UPDATE.  Whatever a client writes into them is ignored, on every
 *	  path (INSERT, UPDATE, INSERT ... ON CONFLICT, COPY), so "changed since"
 *	  queries, sync jobs and audits can rely on them;
 *	- an UPDATE that changes id or tenant_id is refused (42501): a row keeps
 *	  the tenant and the id it was created with, so that nothing can move a
 *	  row into another tenant or out from under the history that names it.
 * It is named for updated_at, which it kept first, so that existing
 * triggers keep their name.
 *
 * Rows applied in replica mode (logical replication, a restore run with
 * session_replication_role = replica) keep the values they come with.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include "catalog/pg_type.h"
#include "utils/inval.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(crm_touch_updated_at);

/*
 * Where the columns touch_updated_at reads are, for the last few tables it
 * ran on: found by one pass over the columns per table rather than per row
 * (it fires for every row written).  An entry holds while the relation keeps
 * the same tuple descriptor: ALTER TABLE gives it a new one.
 */
typedef struct TouchColumns
{
	Oid			relid;
	TupleDesc	tupdesc;
	int			natts;
	int			updated_att;
	int			created_att;
	int			identity_att[2];	/* tenant_id, id */
} TouchColumns;

#define TOUCH_COLUMN_CACHE 8
static TouchColumns touch_column_cache[TOUCH_COLUMN_CACHE];
static int	touch_column_next = 0;

/* A relcache invalidation (ALTER TABLE, or all of them) forgets the entry. */
static void
touch_columns_invalidate(Oid relid)
{
	for (int i = 0; i < TOUCH_COLUMN_CACHE; i++)
		if (relid == InvalidOid || touch_column_cache[i].relid == relid)
			touch_column_cache[i].relid = InvalidOid;
}

static const TouchColumns *
touch_columns(Relation rel)
{
	static bool callback = false;
	TupleDesc	tupdesc = RelationGetDescr(rel);
	TouchColumns *entry;
	TouchColumns fresh;

	if (!callback)
	{
		crm_register_relcache_callback(touch_columns_invalidate);
		callback = true;
	}

	for (int i = 0; i < TOUCH_COLUMN_CACHE; i++)
	{
		entry = &touch_column_cache[i];
		if (entry->relid == RelationGetRelid(rel) && entry->tupdesc == tupdesc &&
			entry->natts == tupdesc->natts)
			return entry;
	}

	memset(&fresh, 0, sizeof(fresh));
	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);
		const char *name = NameStr(att->attname);

		if (att->attisdropped)
			continue;
		if (strcmp(name, "updated_at") == 0)
			fresh.updated_att = att->attnum;
		else if (strcmp(name, "created_at") == 0)
			fresh.created_att = att->attnum;
		else if (strcmp(name, "tenant_id") == 0)
			fresh.identity_att[0] = att->attnum;
		else if (strcmp(name, "id") == 0)
			fresh.identity_att[1] = att->attnum;
	}
	fresh.relid = RelationGetRelid(rel);
	fresh.tupdesc = tupdesc;
	fresh.natts = tupdesc->natts;

	entry = &touch_column_cache[touch_column_next];
	touch_column_next = (touch_column_next + 1) % TOUCH_COLUMN_CACHE;
	*entry = fresh;
	return entry;
}

/*
 * crm.touch_updated_at() trigger: see the file header.
 */
Datum
crm_touch_updated_at(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	tupdesc;
	HeapTuple	newtuple;
	HeapTuple	oldtuple = NULL;
	int			updated_att = InvalidAttrNumber;
	int			created_att = InvalidAttrNumber;
	int			identity_att[2] = {InvalidAttrNumber, InvalidAttrNumber};
	int			cols[2];
	Datum		values[2];
	bool		nulls[2] = {false, false};
	int			n = 0;

	crm_require_trigger(fcinfo, "touch_updated_at", true, true);
	crm_require_trigger_nargs(fcinfo, "touch_updated_at", 0);
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
				 errmsg("function \"touch_updated_at\" must be fired for INSERT or UPDATE")));

	if (crm_replica_skips_work())
		return PointerGetDatum(newtuple);

	rel = trigdata->tg_relation;
	tupdesc = RelationGetDescr(rel);

	{
		const TouchColumns *columns = touch_columns(rel);

		updated_att = columns->updated_att;
		created_att = columns->created_att;
		identity_att[0] = columns->identity_att[0];
		identity_att[1] = columns->identity_att[1];
	}
	/* a missing updated_at or either of another type: the error names it */
	if (updated_att == InvalidAttrNumber ||
		TupleDescAttr(tupdesc, updated_att - 1)->atttypid != TIMESTAMPTZOID)
		updated_att = crm_attnum(rel, "updated_at", TIMESTAMPTZOID);
	if (created_att != InvalidAttrNumber &&
		TupleDescAttr(tupdesc, created_att - 1)->atttypid != TIMESTAMPTZOID)
		created_att = crm_attnum(rel, "created_at", TIMESTAMPTZOID);

	for (int i = 0; i < lengthof(identity_att) && oldtuple != NULL; i++)
		if (identity_att[i] != InvalidAttrNumber)
			crm_refuse_column_change(rel, oldtuple, newtuple, identity_att[i]);

	cols[n] = updated_att;
	values[n++] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	if (created_att != InvalidAttrNumber)
	{
		cols[n] = created_att;
		if (oldtuple != NULL)
			values[n] = heap_getattr(oldtuple, created_att, tupdesc, &nulls[n]);
		else
			values[n] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
		n++;
	}

	/*
	 * Already right (another trigger of this row, such as stage_sync, set
	 * them): the row need not be built again.
	 */
	{
		bool		same = true;

		for (int i = 0; i < n && same; i++)
		{
			bool		isnull;
			Datum		current = heap_getattr(newtuple, cols[i], tupdesc, &isnull);

			same = isnull == nulls[i] &&
				(isnull || DatumGetTimestampTz(current) == DatumGetTimestampTz(values[i]));
		}
		if (same)
			return PointerGetDatum(newtuple);
	}

	return PointerGetDatum(heap_modify_tuple_by_cols(newtuple, tupdesc,
													 n, cols, values, nulls));
}

/*
 * crm.stamp_flag_times(flag, flag_at [, flag, flag_at ...]) trigger
 *
 * BEFORE INSERT OR UPDATE: for each pair of a boolean column and a
 * timestamptz column, records since when the flag holds.  Consent flags
 * (do_not_call, email_opt_out, profiling_opt_out) must say since when they
 * hold, and that time is evidence, so it is the server's: the
 * transaction's start time when the flag becomes set, kept while it stays
 * set, cleared when it is unset; a client's value is ignored.
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
	HeapTuple	oldtuple = NULL;
	int			npairs;
	int		   *cols;
	Datum	   *values;
	bool	   *nulls;

	crm_require_trigger(fcinfo, "stamp_flag_times", true, true);
	trigger = trigdata->tg_trigger;
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
		bool		flag = DatumGetBool(heap_getattr(newtuple, flag_att, tupdesc, &flag_null));
		bool		old_at_null = true;
		Datum		old_at = (Datum) 0;

		flag = flag && !flag_null;
		cols[i] = at_att;
		if (oldtuple != NULL)
		{
			bool		old_flag_null;
			bool		old_flag = DatumGetBool(heap_getattr(oldtuple, flag_att, tupdesc, &old_flag_null));

			if (old_flag && !old_flag_null)
				old_at = heap_getattr(oldtuple, at_att, tupdesc, &old_at_null);
		}
		if (!flag)
		{
			values[i] = (Datum) 0;
			nulls[i] = true;
		}
		else if (!old_at_null)
		{
			values[i] = old_at;
			nulls[i] = false;
		}
		else
		{
			values[i] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
			nulls[i] = false;
		}
	}

	return PointerGetDatum(heap_modify_tuple_by_cols(newtuple, tupdesc, npairs, cols, values, nulls));
}
