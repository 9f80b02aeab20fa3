/*-------------------------------------------------------------------------
 *
 * stage.c
 *	  Pipeline stages of leads and opportunities: defaults, the lifecycle of
 *	  a record, the stage history, and records that follow their stage.
 *
 * Three triggers sit on crm.lead and crm.opportunity, one on crm.stage:
 *
 *	crm.stage_sync(), BEFORE INSERT OR UPDATE, FOR EACH ROW
 *		fills an omitted pipeline (the tenant's default) and stage (the
 *		pipeline's first), checks that the stage belongs to the pipeline, and
 *		keeps the lifecycle: status (the stage's kind, or "converted" for a
 *		converted lead), probability (the stage's unless set by hand on an
 *		open record; 100 when won, 0 when lost), closed_at (when the record
 *		entered a won or lost stage), lost_reason (only while lost),
 *		converted_at (stamped when a lead is converted).  A client's value
 *		for a derived column is ignored; id and tenant_id cannot change; a
 *		converted lead is final; an archived record does not move.  Whether
 *		a row is changed by an operation such as crm.opportunity_move_stage()
 *		or by any client's UPDATE, the same rules apply.
 *
 *	crm.stage_history_record(record_column, amount_column), AFTER INSERT
 *	and AFTER UPDATE, FOR EACH STATEMENT, with transition tables
 *		writes one crm.stage_history row per record created (from no stage)
 *		and per record whose stage changed.  The transition tables are read
 *		here in C and the rows inserted from arrays, one INSERT per tenant
 *		with the tenant as a parameter (a plan that Citus rebuilds on a
 *		worker could not see a transition table).
 *
 *	crm.stage_keep_records(), AFTER DELETE OR UPDATE OF pipeline_id ON
 *	crm.stage, FOR EACH ROW, and AFTER TRUNCATE, FOR EACH STATEMENT
 *		refuses (23503) to delete a stage that records are in, or to move it
 *		to another pipeline, or to truncate the stages while any record
 *		exists.  Leads and opportunities have no foreign key to
 *		their stage: stage_sync already looks each stage up (and locks it FOR
 *		SHARE, once per statement) to derive status and probability, and
 *		refuses a stage that is not of the tenant and pipeline (23503), so
 *		the foreign key's check of every row was the same work done twice
 *		(a third of what the stage triggers cost on a bulk move of 100,000
 *		deals).  This trigger is the other half of what the foreign key did.
 *
 *	crm.stage_follow(), AFTER UPDATE OF kind, probability ON crm.stage
 *		keeps the records in a stage consistent with it: the kind of a stage
 *		that holds records cannot change (55000), and the records whose
 *		probability is the stage's follow a new probability.
 *
 * Stage rows are read through cached SPI plans, and what was read is kept
 * for the rest of the SQL command (see CrmCommandKey): a bulk UPDATE that
 * moves many rows into a few stages looks each stage up once.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/inval.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(crm_stage_sync);
PG_FUNCTION_INFO_V1(crm_stage_history_record);
PG_FUNCTION_INFO_V1(crm_stage_keep_records);
PG_FUNCTION_INFO_V1(crm_stage_follow);

/*
 * Set while a trigger of unlink.c clears the links to a deleted record: the
 * only time a converted lead's converted_account_id or converted_contact_id
 * may change (to NULL, as the record it named is gone).
 */
bool		crm_stage_unlinking = false;

typedef enum StageKind
{
	STAGE_OPEN,
	STAGE_WON,
	STAGE_LOST
} StageKind;

static const char *const stage_kind_names[] = {"open", "won", "lost"};

/* What one cache entry answers. */
typedef enum LookupKind
{
	LOOKUP_STAGE,				/* id = stage: its pipeline, kind, probability */
	LOOKUP_DEFAULT_PIPELINE,	/* id = zero: the tenant's default pipeline */
	LOOKUP_FIRST_STAGE			/* id = pipeline: its first stage */
} LookupKind;

typedef struct LookupKey
{
	int32		kind;			/* LookupKind */
	pg_uuid_t	tenant;
	pg_uuid_t	id;
} LookupKey;

typedef struct LookupEntry
{
	LookupKey	key;
	bool		found;
	pg_uuid_t	result;			/* pipeline of a stage, or the id asked for */
	StageKind	stage_kind;
	Datum		probability;	/* numeric, allocated in lookup_context */
} LookupEntry;

static HTAB *lookup_cache = NULL;
static MemoryContext lookup_context = NULL;
static CrmCommandKey lookup_cache_key;

static SPIPlanPtr stage_plan = NULL;
static SPIPlanPtr default_pipeline_plan = NULL;
static SPIPlanPtr first_stage_plan = NULL;

/* Cached INSERT of the history trigger, one per trigger. */
typedef struct HistoryPlanEntry
{
	Oid			trigger_oid;
	SPIPlanPtr	plan;
} HistoryPlanEntry;

static HTAB *history_plans = NULL;

/*
 * Start a fresh cache when the SQL command changed: what we read earlier
 * may have been updated since.
 */
static void
lookup_cache_prepare(void)
{
	CrmCommandKey now = crm_command_key_current();

	if (lookup_cache != NULL && crm_command_key_equal(lookup_cache_key, now))
		return;

	if (lookup_context == NULL)
		lookup_context = AllocSetContextCreate(TopMemoryContext,
											   "crm stage lookups",
											   ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(lookup_context);

	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(LookupKey);
		ctl.entrysize = sizeof(LookupEntry);
		ctl.hcxt = lookup_context;
		lookup_cache = hash_create("crm stage lookups", 64, &ctl,
								   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	lookup_cache_key = now;
}

static StageKind
parse_stage_kind(const char *kind)
{
	for (int i = 0; i < lengthof(stage_kind_names); i++)
		if (strcmp(kind, stage_kind_names[i]) == 0)
			return (StageKind) i;
	elog(ERROR, "unexpected stage kind \"%s\"", kind);
	return STAGE_OPEN;			/* keep compiler quiet */
}

/*
 * The row names a tenant: it must be the one the statement acts for.  The
 * stage lookups run as the table owner (see lookup()), so they would find
 * another tenant's stages; a row of another tenant is refused here first,
 * with the error the tenant policy gives for any other table (42501), and
 * nothing about that tenant's pipelines shows in a message.  Roles that
 * bypass row-level security may write any tenant's rows.  Called once per
 * tenant and SQL command (on a cache miss), not once per row.
 */
static void
refuse_foreign_tenant(Relation rel, const pg_uuid_t *tenant)
{
	Oid			userid = GetUserId();
	bool		same = false;

	if (superuser_arg(userid) || has_bypassrls_privilege(userid))
		return;

	{
		pg_uuid_t	current;

		same = crm_current_tenant_id(&current) &&
			memcmp(&current, tenant, sizeof(pg_uuid_t)) == 0;
	}

	if (!same)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("new row violates row-level security policy for table \"%s\"",
						RelationGetRelationName(rel))));
}

/*
 * Answer one lookup, from the cache or through SPI.  The tenant is checked
 * first (refuse_foreign_tenant), and every query filters by it.
 *
 * A stage row is read FOR SHARE, and so as the table owner (a writer holds
 * no UPDATE on crm.stage, which FOR SHARE needs): a concurrent change of
 * the stage's kind or probability then waits for this transaction, or this
 * one for it and reads the new values, so a record never enters a stage
 * with what the stage was before a change that crm.stage_follow() did not
 * see.  Held once per stage and command, not per row.
 */
static LookupEntry *
lookup(Relation rel, LookupKind kind, const pg_uuid_t *tenant, const pg_uuid_t *id)
{
	LookupKey	key;
	LookupEntry *entry;
	bool		hit;
	Datum		args[2];
	SPIPlanPtr	plan;

	lookup_cache_prepare();

	memset(&key, 0, sizeof(key));
	key.kind = kind;
	key.tenant = *tenant;
	if (id)
		key.id = *id;

	entry = hash_search(lookup_cache, &key, HASH_ENTER, &hit);
	if (hit)
		return entry;
	entry->found = false;

	/* on an error the half-made entry must not answer the next call */
	PG_TRY();
	{
		refuse_foreign_tenant(rel, tenant);
	}
	PG_CATCH();
	{
		hash_search(lookup_cache, &key, HASH_REMOVE, NULL);
		PG_RE_THROW();
	}
	PG_END_TRY();

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	args[0] = UUIDPGetDatum(&key.tenant);
	args[1] = UUIDPGetDatum(&key.id);

	switch (kind)
	{
		case LOOKUP_STAGE:
			if (stage_plan == NULL)
			{
				Oid			types[2] = {UUIDOID, UUIDOID};

				stage_plan = crm_prepare_kept(
										  "SELECT pipeline_id, kind, probability FROM crm.stage"
										  " WHERE tenant_id OPERATOR(pg_catalog.=) $1"
										  " AND id OPERATOR(pg_catalog.=) $2 FOR SHARE",
										  2, types);
			}
			plan = stage_plan;
			break;
		case LOOKUP_DEFAULT_PIPELINE:
			if (default_pipeline_plan == NULL)
			{
				Oid			types[1] = {UUIDOID};

				default_pipeline_plan = crm_prepare_kept(
													 "SELECT id FROM crm.pipeline"
													 " WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND is_default",
													 1, types);
			}
			plan = default_pipeline_plan;
			break;
		case LOOKUP_FIRST_STAGE:
		default:
			if (first_stage_plan == NULL)
			{
				Oid			types[2] = {UUIDOID, UUIDOID};

				first_stage_plan = crm_prepare_kept(
												"SELECT id FROM crm.stage"
												" WHERE tenant_id OPERATOR(pg_catalog.=) $1"
												" AND pipeline_id OPERATOR(pg_catalog.=) $2"
												" ORDER BY sequence, id LIMIT 1",
												2, types);
			}
			plan = first_stage_plan;
			break;
	}
	{
		Oid			save_userid;
		int			save_sec_context;
		int			rc;

		GetUserIdAndSecContext(&save_userid, &save_sec_context);
		SetUserIdAndSecContext(rel->rd_rel->relowner,
							   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
		PG_TRY();
		{
			rc = SPI_execute_plan(plan, args, NULL, false, 1);
		}
		PG_FINALLY();
		{
			SetUserIdAndSecContext(save_userid, save_sec_context);
		}
		PG_END_TRY();
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "stage lookup failed");
	}

	if (SPI_processed > 0)
	{
		HeapTuple	tuple = SPI_tuptable->vals[0];
		TupleDesc	tupdesc = SPI_tuptable->tupdesc;
		bool		isnull;

		entry->found = true;
		memcpy(&entry->result,
			   DatumGetUUIDP(SPI_getbinval(tuple, tupdesc, 1, &isnull)),
			   sizeof(pg_uuid_t));
		if (kind == LOOKUP_STAGE)
		{
			char	   *stage_kind = SPI_getvalue(tuple, tupdesc, 2);
			Datum		probability = SPI_getbinval(tuple, tupdesc, 3, &isnull);
			MemoryContext old = MemoryContextSwitchTo(lookup_context);

			entry->stage_kind = parse_stage_kind(stage_kind);
			entry->probability = datumCopy(probability, false, -1);
			MemoryContextSwitchTo(old);
		}
	}

	SPI_finish();

	/*
	 * A query that is not read-only (FOR SHARE) advances the command id;
	 * it changed no data, so what the cache holds stays valid for the rest
	 * of this command, and the next row must not find the cache stale.
	 */
	lookup_cache_key = crm_command_key_current();
	return entry;
}

/* Did the UPDATE change this column?  Compared as stored bytes. */
static bool
column_changed(HeapTuple oldtuple, HeapTuple newtuple, TupleDesc tupdesc, int attnum)
{
	Form_pg_attribute att = TupleDescAttr(tupdesc, attnum - 1);
	bool		oldnull;
	bool		newnull;
	Datum		oldval = heap_getattr(oldtuple, attnum, tupdesc, &oldnull);
	Datum		newval = heap_getattr(newtuple, attnum, tupdesc, &newnull);

	if (oldnull || newnull)
		return oldnull != newnull;
	return !datumIsEqual(oldval, newval, att->attbyval, att->attlen);
}

/* An integer as a numeric of the column's declared precision and scale. */
static Datum
numeric_from_int(int value, int32 typmod)
{
	return DirectFunctionCall2(numeric,
							   DirectFunctionCall1(int4_numeric, Int32GetDatum(value)),
							   Int32GetDatum(typmod));
}

static bool
numeric_equal(Datum a, Datum b)
{
	return DatumGetBool(DirectFunctionCall2(numeric_eq, a, b));
}

/*
 * Column positions the stage trigger reads and writes.  The last four are
 * a lead's only: the trigger treats a table that has converted_at as leads.
 */
enum
{
	COL_TENANT,
	COL_ID,
	COL_PIPELINE,
	COL_STAGE,
	COL_STATUS,
	COL_PROBABILITY,
	COL_CLOSED_AT,
	COL_LOST_REASON,
	COL_ARCHIVED_AT,
	COL_CONVERTED_AT,
	COL_CONVERTED_ACCOUNT,
	COL_CONVERTED_CONTACT,
	NUM_STAGE_COLUMNS
};

#define NUM_COMMON_COLUMNS COL_CONVERTED_AT

static const char *const stage_column_names[NUM_STAGE_COLUMNS] = {
	"tenant_id", "id", "pipeline_id", "stage_id", "status", "probability",
	"closed_at", "lost_reason", "archived_at",
	"converted_at", "converted_account_id", "converted_contact_id"
};

static const Oid stage_column_types[NUM_STAGE_COLUMNS] = {
	UUIDOID, UUIDOID, UUIDOID, UUIDOID, TEXTOID, NUMERICOID,
	TIMESTAMPTZOID, TEXTOID, TIMESTAMPTZOID,
	TIMESTAMPTZOID, UUIDOID, UUIDOID
};

/* Does the relation have this column (of any type, checked later)? */
static bool
has_column(Relation rel, const char *colname)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);

	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);

		if (!att->attisdropped && strcmp(NameStr(att->attname), colname) == 0)
			return true;
	}
	return false;
}

/*
 * The column positions of the last few tables stage_sync ran on, checked
 * once (crm_attnum looks each type up in the catalog) instead of on every
 * row.  An entry is valid while the relation keeps the same tuple
 * descriptor: ALTER TABLE gives it a new one.
 */
typedef struct StageColumns
{
	Oid			relid;
	TupleDesc	tupdesc;
	int			natts;
	bool		is_lead;
	int			attnums[NUM_STAGE_COLUMNS];
	int			updated_at;		/* InvalidAttrNumber if none (of timestamptz) */
} StageColumns;

#define STAGE_COLUMN_CACHE 4
static StageColumns stage_column_cache[STAGE_COLUMN_CACHE];
static int	stage_column_next = 0;

/* A relcache invalidation (ALTER TABLE, or all of them) forgets the entry. */
static void
stage_columns_invalidate(Oid relid)
{
	for (int i = 0; i < STAGE_COLUMN_CACHE; i++)
		if (relid == InvalidOid || stage_column_cache[i].relid == relid)
			stage_column_cache[i].relid = InvalidOid;
}

static const StageColumns *
stage_columns(Relation rel)
{
	static bool callback = false;
	TupleDesc	tupdesc = RelationGetDescr(rel);
	StageColumns *entry;
	StageColumns fresh;

	if (!callback)
	{
		crm_register_relcache_callback(stage_columns_invalidate);
		callback = true;
	}

	for (int i = 0; i < STAGE_COLUMN_CACHE; i++)
	{
		entry = &stage_column_cache[i];
		if (entry->relid == RelationGetRelid(rel) && entry->tupdesc == tupdesc &&
			entry->natts == tupdesc->natts)
			return entry;
	}

	memset(&fresh, 0, sizeof(fresh));
	fresh.is_lead = has_column(rel, "converted_at");
	for (int i = 0; i < (fresh.is_lead ? NUM_STAGE_COLUMNS : NUM_COMMON_COLUMNS); i++)
		fresh.attnums[i] = crm_attnum(rel, stage_column_names[i], stage_column_types[i]);
	fresh.updated_at = crm_optional_attnum(rel, "updated_at");
	if (fresh.updated_at != InvalidAttrNumber &&
		TupleDescAttr(tupdesc, fresh.updated_at - 1)->atttypid != TIMESTAMPTZOID)
		fresh.updated_at = InvalidAttrNumber;
	fresh.relid = RelationGetRelid(rel);
	fresh.tupdesc = tupdesc;
	fresh.natts = tupdesc->natts;

	entry = &stage_column_cache[stage_column_next];
	stage_column_next = (stage_column_next + 1) % STAGE_COLUMN_CACHE;
	*entry = fresh;
	return entry;
}

/* The agreed error for an UPDATE that changes an identity column. */
static void
refuse_identity_change(Relation rel, const char *colname)
{
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("column \"%s\" of relation \"%s\" cannot be changed",
					colname, crm_table_name(rel)),
			 errdetail("A row keeps the tenant and the id it was created with.")));
}

/* What a record is called in messages: "lead" or "opportunity". */
static const char *
record_noun(Relation rel)
{
	return crm_table_name(rel);
}

/* The edits that stage_sync collects and applies at once. */
typedef struct RowEdit
{
	int			n;
	int			cols[NUM_STAGE_COLUMNS + 1];	/* + updated_at */
	Datum		values[NUM_STAGE_COLUMNS + 1];
	bool		nulls[NUM_STAGE_COLUMNS + 1];
} RowEdit;

static void
edit_set(RowEdit *edit, int attnum, Datum value, bool isnull)
{
	for (int i = 0; i < edit->n; i++)
		if (edit->cols[i] == attnum)
		{
			edit->values[i] = value;
			edit->nulls[i] = isnull;
			return;
		}
	edit->cols[edit->n] = attnum;
	edit->values[edit->n] = value;
	edit->nulls[edit->n] = isnull;
	edit->n++;
}

/*
 * Put back the stored value of a derived column whose client value is
 * ignored.
 */
static void
edit_keep_old(RowEdit *edit, const int *attnums, const bool *changed,
			  const Datum *old_values, const bool *old_nulls, int col)
{
	if (changed[col])
		edit_set(edit, attnums[col], old_values[col], old_nulls[col]);
}

/*
 * A trigger created with arguments this function does not read: the user
 * meant something by them, so say they are not used.
 */
static void
require_no_arguments(TriggerData *trigdata, const char *funcname)
{
	if (trigdata->tg_trigger->tgnargs != 0)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"%s\" takes 0 trigger arguments, not %d",
						funcname, trigdata->tg_trigger->tgnargs)));
}

/*
 * crm.stage_sync() trigger: see the file header.
 */
Datum
crm_stage_sync(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	tupdesc;
	HeapTuple	oldtuple = NULL;
	HeapTuple	newtuple;
	bool		is_insert;
	bool		is_lead;
	int			ncols;
	int			updated_at_att;
	int			attnums[NUM_STAGE_COLUMNS];
	Datum		values[NUM_STAGE_COLUMNS];
	bool		nulls[NUM_STAGE_COLUMNS];
	bool		changed[NUM_STAGE_COLUMNS];
	Datum		old_values[NUM_STAGE_COLUMNS];
	bool		old_nulls[NUM_STAGE_COLUMNS];
	Datum	   *new_all_values;
	bool	   *new_all_nulls;
	Datum	   *old_all_values = NULL;
	bool	   *old_all_nulls = NULL;
	pg_uuid_t	tenant;
	pg_uuid_t	pipeline;
	pg_uuid_t	stage;
	LookupEntry *info;
	StageKind	kind;
	bool		kind_changed;
	bool		stage_moved;
	bool		converting = false;
	bool		any_changed = false;
	RowEdit		edit;
	int32		prob_typmod;

	crm_require_trigger(fcinfo, "stage_sync", true, true);
	require_no_arguments(trigdata, "stage_sync");
	is_insert = TRIGGER_FIRED_BY_INSERT(trigdata->tg_event);
	if (!is_insert && !TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"stage_sync\" must be fired for INSERT or UPDATE")));

	if (is_insert)
		newtuple = trigdata->tg_trigtuple;
	else
	{
		oldtuple = trigdata->tg_trigtuple;
		newtuple = trigdata->tg_newtuple;
	}

	if (crm_replica_skips_work())
		return PointerGetDatum(newtuple);

	rel = trigdata->tg_relation;
	tupdesc = RelationGetDescr(rel);
	{
		const StageColumns *columns = stage_columns(rel);

		is_lead = columns->is_lead;
		memcpy(attnums, columns->attnums, sizeof(attnums));
		updated_at_att = columns->updated_at;
	}
	ncols = is_lead ? NUM_STAGE_COLUMNS : NUM_COMMON_COLUMNS;

	/* one pass over each tuple, not one walk per column */
	new_all_values = palloc(tupdesc->natts * sizeof(Datum));
	new_all_nulls = palloc(tupdesc->natts * sizeof(bool));
	heap_deform_tuple(newtuple, tupdesc, new_all_values, new_all_nulls);
	if (!is_insert)
	{
		old_all_values = palloc(tupdesc->natts * sizeof(Datum));
		old_all_nulls = palloc(tupdesc->natts * sizeof(bool));
		heap_deform_tuple(oldtuple, tupdesc, old_all_values, old_all_nulls);
	}
	for (int i = 0; i < ncols; i++)
	{
		int			a = attnums[i] - 1;

		values[i] = new_all_values[a];
		nulls[i] = new_all_nulls[a];
		if (is_insert)
			changed[i] = !nulls[i];
		else
		{
			Form_pg_attribute att = TupleDescAttr(tupdesc, a);

			old_values[i] = old_all_values[a];
			old_nulls[i] = old_all_nulls[a];
			changed[i] = (old_nulls[i] || nulls[i]) ? old_nulls[i] != nulls[i]
				: !datumIsEqual(old_values[i], values[i], att->attbyval, att->attlen);
		}
		if (i != COL_ARCHIVED_AT)
			any_changed |= changed[i];
	}
	prob_typmod = TupleDescAttr(tupdesc, attnums[COL_PROBABILITY] - 1)->atttypmod;
	edit.n = 0;

	if (!is_insert)
	{
		/* checked here first: this trigger would otherwise fail on a lookup */
		if (changed[COL_TENANT])
			refuse_identity_change(rel, "tenant_id");
		if (changed[COL_ID])
			refuse_identity_change(rel, "id");
		/* Most updates touch neither stage nor the fields derived from it. */
		if (!any_changed)
			return PointerGetDatum(newtuple);
	}

	/* No tenant: the NOT NULL constraint will say so. */
	if (nulls[COL_TENANT])
		return PointerGetDatum(newtuple);
	tenant = *DatumGetUUIDP(values[COL_TENANT]);

	/*
	 * A converted lead is final: it keeps its stage, status, probability,
	 * dates and reason; only the links to the records it became may be
	 * cleared, when such a record is deleted.
	 */
	if (is_lead && !is_insert)
	{
		if (!old_nulls[COL_CONVERTED_AT])
		{
			if (changed[COL_STAGE] || changed[COL_PIPELINE])
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("lead %s is converted and cannot change stage",
								crm_uuid_text(DatumGetUUIDP(values[COL_ID]))),
						 errdetail("A converted lead is final; its opportunity carries on.")));
			if (changed[COL_LOST_REASON])
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("lead %s is converted and cannot be marked lost",
								crm_uuid_text(DatumGetUUIDP(values[COL_ID]))),
						 errdetail("A converted lead is final; its opportunity carries on.")));
			for (int i = COL_CONVERTED_ACCOUNT; i <= COL_CONVERTED_CONTACT; i++)
				if (changed[i] && !(crm_stage_unlinking && nulls[i]))
					ereport(ERROR,
							(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
							 errmsg("the conversion of lead %s cannot be changed",
									crm_uuid_text(DatumGetUUIDP(values[COL_ID]))),
							 errdetail("Column \"%s\" records what the lead was converted into.",
									   stage_column_names[i])));
			edit_keep_old(&edit, attnums, changed, old_values, old_nulls, COL_STATUS);
			edit_keep_old(&edit, attnums, changed, old_values, old_nulls, COL_PROBABILITY);
			edit_keep_old(&edit, attnums, changed, old_values, old_nulls, COL_CLOSED_AT);
			edit_keep_old(&edit, attnums, changed, old_values, old_nulls, COL_CONVERTED_AT);
			goto apply;
		}
	}

	if (!nulls[COL_STAGE])
		stage = *DatumGetUUIDP(values[COL_STAGE]);

	if (nulls[COL_PIPELINE])
	{
		if (!nulls[COL_STAGE])
		{
			info = lookup(rel, LOOKUP_STAGE, &tenant, &stage);
			if (!info->found)
			{
				ereport(ERROR,
						(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
						 errmsg("stage %s does not exist", crm_uuid_text(&stage))));
			}
			pipeline = info->result;
		}
		else
		{
			info = lookup(rel, LOOKUP_DEFAULT_PIPELINE, &tenant, NULL);
			if (!info->found)
			{
				ereport(ERROR,
						(errcode(ERRCODE_NO_DATA_FOUND),
						 errmsg("tenant %s has no default pipeline", crm_uuid_text(&tenant)),
						 errhint("Give a pipeline_id, or mark one pipeline of the tenant as default.")));
			}
			pipeline = info->result;
		}
		edit_set(&edit, attnums[COL_PIPELINE], UUIDPGetDatum(&pipeline), false);
	}
	else
		pipeline = *DatumGetUUIDP(values[COL_PIPELINE]);

	if (nulls[COL_STAGE])
	{
		info = lookup(rel, LOOKUP_FIRST_STAGE, &tenant, &pipeline);
		if (!info->found)
		{
			ereport(ERROR,
					(errcode(ERRCODE_NO_DATA_FOUND),
					 errmsg("pipeline %s has no stages", crm_uuid_text(&pipeline)),
					 errhint("Add a stage to the pipeline, or give a stage_id.")));
		}
		stage = info->result;
		edit_set(&edit, attnums[COL_STAGE], UUIDPGetDatum(&stage), false);
	}

	info = lookup(rel, LOOKUP_STAGE, &tenant, &stage);
	if (!info->found)
	{
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg("stage %s does not exist", crm_uuid_text(&stage))));
	}
	if (memcmp(&info->result, &pipeline, sizeof(pg_uuid_t)) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg("stage %s does not belong to pipeline %s",
						crm_uuid_text(&stage), crm_uuid_text(&pipeline)),
				 errdetail("The stage belongs to pipeline %s.", crm_uuid_text(&info->result)),
				 errhint("Move the record to a stage of its own pipeline, or change pipeline_id and stage_id together.")));
	kind = info->stage_kind;

	stage_moved = is_insert || changed[COL_STAGE] || changed[COL_PIPELINE];
	if (!is_insert && stage_moved && !nulls[COL_ARCHIVED_AT])
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s %s is archived and cannot change stage",
						record_noun(rel), crm_uuid_text(DatumGetUUIDP(values[COL_ID]))),
				 errhint("Unarchive it first: UPDATE crm.%s SET archived_at = NULL.",
						 record_noun(rel))));

	if (is_insert)
		kind_changed = true;
	else
	{
		char	   *old_status = TextDatumGetCString(old_values[COL_STATUS]);

		kind_changed = parse_stage_kind(old_status) != kind;
	}

	/*
	 * A lead is converted when converted_contact_id is first set (which
	 * crm.lead_convert() does); the server stamps converted_at.  Otherwise
	 * the conversion columns keep their stored values (none on INSERT).
	 */
	if (is_lead)
	{
		converting = !is_insert && changed[COL_CONVERTED_CONTACT] && !nulls[COL_CONVERTED_CONTACT];
		if (converting)
		{
			if (kind == STAGE_LOST)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("lead %s is lost and cannot be converted",
								crm_uuid_text(DatumGetUUIDP(values[COL_ID]))),
						 errhint("Reopen the lead first with crm.lead_reopen().")));
			if (!nulls[COL_ARCHIVED_AT])
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("lead %s is archived and cannot be converted",
								crm_uuid_text(DatumGetUUIDP(values[COL_ID]))),
						 errhint("Unarchive it first: UPDATE crm.lead SET archived_at = NULL.")));
			edit_set(&edit, attnums[COL_CONVERTED_AT],
					 TimestampTzGetDatum(GetCurrentTransactionStartTimestamp()), false);
		}
		else if (is_insert)
		{
			for (int i = COL_CONVERTED_AT; i <= COL_CONVERTED_CONTACT; i++)
				if (!nulls[i])
					edit_set(&edit, attnums[i], (Datum) 0, true);
		}
		else
		{
			edit_keep_old(&edit, attnums, changed, old_values, old_nulls, COL_CONVERTED_AT);
			edit_keep_old(&edit, attnums, changed, old_values, old_nulls, COL_CONVERTED_ACCOUNT);
		}
	}

	/* status: the stage's kind, or converted; a client's value is ignored */
	{
		const char *status = converting ? "converted" : stage_kind_names[kind];

		if (nulls[COL_STATUS] ||
			strcmp(TextDatumGetCString(values[COL_STATUS]), status) != 0)
			edit_set(&edit, attnums[COL_STATUS], CStringGetTextDatum(status), false);
	}

	/* probability: 100 when won, 0 when lost, else the stage's unless set */
	{
		bool		set_by_hand = changed[COL_PROBABILITY] && !nulls[COL_PROBABILITY];
		Datum		probability = values[COL_PROBABILITY];

		if (kind != STAGE_OPEN)
		{
			Datum		forced = numeric_from_int(kind == STAGE_WON ? 100 : 0, prob_typmod);

			if (nulls[COL_PROBABILITY] || !numeric_equal(probability, forced))
				edit_set(&edit, attnums[COL_PROBABILITY], forced, false);
		}
		else if (!set_by_hand && (stage_moved || nulls[COL_PROBABILITY]))
			edit_set(&edit, attnums[COL_PROBABILITY], info->probability, false);
	}

	/* closed_at: when the record entered a won or lost stage */
	if (kind == STAGE_OPEN)
	{
		if (!nulls[COL_CLOSED_AT])
			edit_set(&edit, attnums[COL_CLOSED_AT], (Datum) 0, true);
	}
	else if (kind_changed)
		edit_set(&edit, attnums[COL_CLOSED_AT],
				 TimestampTzGetDatum(GetCurrentTransactionStartTimestamp()), false);
	else
		edit_keep_old(&edit, attnums, changed, old_values, old_nulls, COL_CLOSED_AT);

	/* lost_reason: only a lost record has one; reopening clears it */
	if (kind != STAGE_LOST && !nulls[COL_LOST_REASON])
		edit_set(&edit, attnums[COL_LOST_REASON], (Datum) 0, true);

apply:
	if (edit.n == 0)
		return PointerGetDatum(newtuple);

	/*
	 * The row is being rebuilt anyway: give it the updated_at that
	 * touch_updated_at, which fires next, would, so that touch finds it right
	 * and need not build the row a second time.
	 */
	if (updated_at_att != InvalidAttrNumber)
		edit_set(&edit, updated_at_att,
				 TimestampTzGetDatum(GetCurrentTransactionStartTimestamp()), false);

	{
		HeapTuple	result;

		for (int i = 0; i < edit.n; i++)
		{
			new_all_values[edit.cols[i] - 1] = edit.values[i];
			new_all_nulls[edit.cols[i] - 1] = edit.nulls[i];
		}
		result = heap_form_tuple(tupdesc, new_all_values, new_all_nulls);
		/* as heap_modify_tuple does: the new version keeps the row's identity */
		result->t_data->t_ctid = newtuple->t_data->t_ctid;
		result->t_self = newtuple->t_self;
		result->t_tableOid = newtuple->t_tableOid;
		return PointerGetDatum(result);
	}
}

/* Columns of a record that a history row copies. */
enum
{
	HCOL_TENANT,
	HCOL_ID,
	HCOL_PIPELINE,
	HCOL_STAGE,
	HCOL_AMOUNT,
	HCOL_CURRENCY,
	HCOL_PROBABILITY,
	NUM_HISTORY_COLUMNS
};

/* The history rows of one tenant, gathered from the transition tables. */
typedef struct HistoryBatch
{
	pg_uuid_t	tenant;
	int			n;
	int			size;
	Datum	   *ids;
	Datum	   *pipelines;
	Datum	   *from_stages;
	bool	   *from_nulls;
	Datum	   *to_stages;
	Datum	   *amounts;
	bool	   *amount_nulls;
	Datum	   *currencies;
	Datum	   *probabilities;
	struct HistoryBatch *next;
} HistoryBatch;

static HistoryBatch *
history_batch(HistoryBatch **batches, const pg_uuid_t *tenant)
{
	HistoryBatch *b;

	for (b = *batches; b != NULL; b = b->next)
		if (memcmp(&b->tenant, tenant, sizeof(pg_uuid_t)) == 0)
			return b;

	b = palloc0(sizeof(HistoryBatch));
	b->tenant = *tenant;
	b->size = 64;
	b->ids = palloc(b->size * sizeof(Datum));
	b->pipelines = palloc(b->size * sizeof(Datum));
	b->from_stages = palloc(b->size * sizeof(Datum));
	b->from_nulls = palloc(b->size * sizeof(bool));
	b->to_stages = palloc(b->size * sizeof(Datum));
	b->amounts = palloc(b->size * sizeof(Datum));
	b->amount_nulls = palloc(b->size * sizeof(bool));
	b->currencies = palloc(b->size * sizeof(Datum));
	b->probabilities = palloc(b->size * sizeof(Datum));
	b->next = *batches;
	*batches = b;
	return b;
}

static void
history_batch_grow(HistoryBatch *b)
{
	if (b->n < b->size)
		return;
	b->size *= 2;
	b->ids = repalloc_huge(b->ids, b->size * sizeof(Datum));
	b->pipelines = repalloc_huge(b->pipelines, b->size * sizeof(Datum));
	b->from_stages = repalloc_huge(b->from_stages, b->size * sizeof(Datum));
	b->from_nulls = repalloc_huge(b->from_nulls, b->size * sizeof(bool));
	b->to_stages = repalloc_huge(b->to_stages, b->size * sizeof(Datum));
	b->amounts = repalloc_huge(b->amounts, b->size * sizeof(Datum));
	b->amount_nulls = repalloc_huge(b->amount_nulls, b->size * sizeof(bool));
	b->currencies = repalloc_huge(b->currencies, b->size * sizeof(Datum));
	b->probabilities = repalloc_huge(b->probabilities, b->size * sizeof(Datum));
}

static Datum
uuid_copy_datum(Datum value)
{
	pg_uuid_t  *copy = palloc(sizeof(pg_uuid_t));

	memcpy(copy, DatumGetUUIDP(value), sizeof(pg_uuid_t));
	return UUIDPGetDatum(copy);
}

static Datum
array_of(Datum *values, bool *nulls, int n, Oid elemtype)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1] = {n};
	int			lbs[1] = {1};

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs,
											  elemtype, typlen, typbyval, typalign));
}

/*
 * The INSERT that records the stage changes of one tenant, from arrays.
 * Every name is qualified and every operator is pg_catalog's, so a hostile
 * search_path of the session cannot redirect it.
 */
static SPIPlanPtr
history_plan(Trigger *trigger)
{
	HistoryPlanEntry *entry;
	bool		found;
	StringInfoData sql;

	if (history_plans == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(HistoryPlanEntry);
		history_plans = hash_create("crm stage history plans", 8, &ctl,
									HASH_ELEM | HASH_BLOBS);
	}

	entry = hash_search(history_plans, &trigger->tgoid, HASH_ENTER, &found);
	if (found && entry->plan != NULL)
		return entry->plan;
	entry->plan = NULL;

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "INSERT INTO crm.stage_history"
					 " (tenant_id, %s, pipeline_id, from_stage_id, to_stage_id,"
					 "  amount, currency, probability, changed_at, changed_by, changed_by_role)"
					 " SELECT $1, u.id, u.pipeline_id, u.from_stage_id, u.to_stage_id,"
					 "  u.amount, u.currency, u.probability, pg_catalog.clock_timestamp(), $9, $10"
					 " FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3),"
					 "  pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6),"
					 "  pg_catalog.unnest($7), pg_catalog.unnest($8))"
					 "  AS u(id, pipeline_id, from_stage_id, to_stage_id, amount, currency, probability)",
					 quote_identifier(trigger->tgargs[0]));

	{
		Oid			argtypes[10] = {UUIDOID, UUIDARRAYOID, UUIDARRAYOID, UUIDARRAYOID,
			UUIDARRAYOID, NUMERICARRAYOID, TEXTARRAYOID, NUMERICARRAYOID,
		UUIDOID, NAMEOID};

		entry->plan = crm_prepare_kept_generic(sql.data, 10, argtypes);
	}
	pfree(sql.data);
	return entry->plan;
}

/*
 * crm.stage_history as 60_stage.sql and 90_security.sql make it: the
 * columns the direct path writes (all of them), and the triggers whose work
 * it does itself: tenant_require (tenant_id is the record's),
 * touch_updated_at (created_at and updated_at are the transaction's start)
 * and visibility_row 'history' (visible_to is NULL in a public tenant).
 */
enum
{
	HT_TENANT, HT_ID, HT_LEAD, HT_OPPORTUNITY, HT_PIPELINE,
	HT_FROM_STAGE, HT_TO_STAGE, HT_AMOUNT, HT_CURRENCY, HT_PROBABILITY,
	HT_CHANGED_AT, HT_CHANGED_BY, HT_CHANGED_BY_ROLE, HT_CREATED_AT, HT_UPDATED_AT,
	HT_VISIBLE_TO,
	NUM_HT_COLUMNS
};
static const char *const history_table_columns[NUM_HT_COLUMNS] = {
	"tenant_id", "id", "lead_id", "opportunity_id", "pipeline_id",
	"from_stage_id", "to_stage_id", "amount", "currency", "probability",
	"changed_at", "changed_by", "changed_by_role", "created_at", "updated_at",
	"visible_to"
};
static const Oid history_table_types[NUM_HT_COLUMNS] = {
	UUIDOID, UUIDOID, UUIDOID, UUIDOID, UUIDOID,
	UUIDOID, UUIDOID, NUMERICOID, TEXTOID, NUMERICOID,
	TIMESTAMPTZOID, UUIDOID, NAMEOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
	UUIDARRAYOID
};
static const char *const history_table_triggers[] = {
	"tenant_require", "touch_updated_at", "visibility_row"
};

/* qsort_arg comparator: rows of a HistoryBatch by their record's id */
static int
history_order_by_record(const void *a, const void *b, void *arg)
{
	HistoryBatch *batch = (HistoryBatch *) arg;

	return memcmp(DatumGetUUIDP(batch->ids[*(const int *) a]),
				  DatumGetUUIDP(batch->ids[*(const int *) b]), sizeof(pg_uuid_t));
}

/*
 * Writes the history rows straight into crm.stage_history (rowwriter.c)
 * when it may, and says whether it did; otherwise the caller inserts them
 * through SPI, which fires whatever triggers the table has.  It may when
 * the trigger is on crm.lead or crm.opportunity themselves, whose owner may
 * insert into the history (the SPI path runs as that owner too), every
 * tenant of the statement is public (in a private tenant a history row
 * takes the visible_to the record has when the row is written, which a
 * later trigger of the same statement may have changed: the SPI path's
 * visibility_row reads it then), the history table is as the extension
 * made it (its columns, its triggers, not a partition, amount and
 * probability of the record's precision), and Citus is not in the
 * database.
 */
static bool
history_write_direct(Relation rec, const char *record_column, const int *rec_attnums,
					 HistoryBatch *batches, const pg_uuid_t *changed_by, bool has_user,
					 NameData *changed_by_role)
{
	Oid			crm_namespace = get_namespace_oid("crm", false);
	const char *recname = RelationGetRelationName(rec);
	Oid			history_relid;
	Relation	history;
	bool		as_made;
	int			att[NUM_HT_COLUMNS];
	Datum		now = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	CrmRowWriter *writer;
	Oid			save_userid;
	int			save_sec_context;

	if (RelationGetNamespace(rec) != crm_namespace ||
		!((strcmp(recname, "opportunity") == 0 && strcmp(record_column, "opportunity_id") == 0) ||
		  (strcmp(recname, "lead") == 0 && strcmp(record_column, "lead_id") == 0)) ||
		crm_citus_in_database())
		return false;
	history_relid = get_relname_relid("stage_history", crm_namespace);
	if (!OidIsValid(history_relid) ||
		pg_class_aclcheck(history_relid, rec->rd_rel->relowner, ACL_INSERT) != ACLCHECK_OK)
		return false;

	/* visible_to is NULL for all: see above */
	for (HistoryBatch *b = batches; b != NULL; b = b->next)
		if (!crm_tenant_public(UUIDPGetDatum(&b->tenant)))
			return false;

	history = table_open(history_relid, RowExclusiveLock);
	as_made = history->rd_rel->relkind == RELKIND_RELATION &&
		!history->rd_rel->relispartition &&
		crm_row_writer_columns_known(history, history_table_columns, history_table_types,
									 NUM_HT_COLUMNS) &&
		crm_row_writer_only_triggers(history, history_table_triggers,
									 lengthof(history_table_triggers), false);
	for (int c = 0; as_made && c < NUM_HT_COLUMNS; c++)
	{
		att[c] = crm_optional_attnum(history, history_table_columns[c]) - 1;
		as_made = att[c] >= 0;
	}
	/*
	 * amount and probability are copied as they are: the record's columns
	 * must have the history's precision and scale (an INSERT would coerce)
	 */
	if (as_made)
		as_made = TupleDescAttr(RelationGetDescr(rec), rec_attnums[HCOL_AMOUNT] - 1)->atttypmod ==
			TupleDescAttr(RelationGetDescr(history), att[HT_AMOUNT])->atttypmod &&
			TupleDescAttr(RelationGetDescr(rec), rec_attnums[HCOL_PROBABILITY] - 1)->atttypmod ==
			TupleDescAttr(RelationGetDescr(history), att[HT_PROBABILITY])->atttypmod;
	table_close(history, NoLock);
	if (!as_made)
		return false;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(rec->rd_rel->relowner,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		writer = crm_row_writer_open(history_relid);
		for (HistoryBatch *b = batches; b != NULL; b = b->next)
		{
			pg_uuid_t  *ids = palloc(sizeof(pg_uuid_t) * b->n);
			int		   *order = palloc(sizeof(int) * b->n);

			/*
			 * In the order of the records' ids, so that the inserts into the
			 * index on (tenant_id, <record>_id, changed_at) walk its leaf
			 * pages once, in order, instead of landing on a random page of
			 * an index larger than shared_buffers for every row.
			 */
			for (int i = 0; i < b->n; i++)
				order[i] = i;
			qsort_arg(order, b->n, sizeof(int), history_order_by_record, b);

			for (int r = 0; r < b->n; r++)
			{
				int			i = order[r];
				TupleTableSlot *slot = crm_row_writer_next(writer);
				Datum	   *v = slot->tts_values;
				bool	   *null = slot->tts_isnull;

				crm_uuid_v7(&ids[i]);
#define SET(col, value) (v[att[col]] = (value), null[att[col]] = false)
				SET(HT_TENANT, UUIDPGetDatum(&b->tenant));
				SET(HT_ID, UUIDPGetDatum(&ids[i]));
				SET(record_column[0] == 'l' ? HT_LEAD : HT_OPPORTUNITY, b->ids[i]);
				SET(HT_PIPELINE, b->pipelines[i]);
				if (!b->from_nulls[i])
					SET(HT_FROM_STAGE, b->from_stages[i]);
				SET(HT_TO_STAGE, b->to_stages[i]);
				if (!b->amount_nulls[i])
					SET(HT_AMOUNT, b->amounts[i]);
				SET(HT_CURRENCY, b->currencies[i]);
				SET(HT_PROBABILITY, b->probabilities[i]);
				SET(HT_CHANGED_AT, TimestampTzGetDatum(GetCurrentTimestamp()));
				if (has_user)
					SET(HT_CHANGED_BY, UUIDPGetDatum(changed_by));
				SET(HT_CHANGED_BY_ROLE, NameGetDatum(changed_by_role));
				SET(HT_CREATED_AT, now);
				SET(HT_UPDATED_AT, now);
#undef SET
				crm_row_writer_add(writer);
			}
			/* the ids must outlive the rows that point at them */
			crm_row_writer_flush(writer);
			pfree(ids);
			pfree(order);
		}
		crm_row_writer_close(writer);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
	return true;
}

/*
 * crm.stage_history_record() trigger: see the file header.
 *
 * The old and new transition tables of an UPDATE hold the old and new
 * version of each row at the same position (the executor appends both for
 * each row it updates), so the i-th rows are paired; their ids are compared
 * to make sure, and stage_sync refuses an UPDATE that changes an id.
 *
 * The history is the extension's record of what happened, not the user's to
 * write: crm_writer may read crm.stage_history but holds no INSERT on it.
 * The INSERT therefore runs as the owner of the table the trigger is on (the
 * extension's owner), as pg_cron does for its own bookkeeping.  Who made the
 * change is taken before the switch.  The rows come from the statement's
 * own transition tables, so they can only describe rows the user was
 * allowed to write, with their own tenant_id.  crm.stage_history has no
 * foreign key to the record: history outlives the record, and the rows
 * cost no foreign-key check.
 */
Datum
crm_stage_history_record(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	bool		is_insert;
	Tuplestorestate *newstore;
	Tuplestorestate *oldstore = NULL;
	TupleTableSlot *newslot;
	TupleTableSlot *oldslot = NULL;
	pg_uuid_t  *old_ids = NULL;
	pg_uuid_t  *old_stages = NULL;
	uint64		nold = 0;
	uint64		oldcap = 0;
	int			attnums[NUM_HISTORY_COLUMNS];
	HistoryBatch *batches = NULL;
	MemoryContext work;
	MemoryContext caller;
	pg_uuid_t	changed_by;
	NameData	changed_by_role;
	bool		has_user;
	SPIPlanPtr	plan;
	Oid			save_userid;
	int			save_sec_context;

	crm_require_trigger(fcinfo, "stage_history_record", false, false);
	is_insert = TRIGGER_FIRED_BY_INSERT(trigdata->tg_event);
	if (is_insert ? trigdata->tg_newtable == NULL
		: (!TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ||
		   trigdata->tg_oldtable == NULL || trigdata->tg_newtable == NULL))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"stage_history_record\" must be fired AFTER INSERT with REFERENCING NEW TABLE, or AFTER UPDATE with REFERENCING OLD TABLE and NEW TABLE")));
	if (trigdata->tg_trigger->tgnargs != 2)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"stage_history_record\" needs two arguments: the history column for the record and the record's amount column")));

	if (crm_replica_skips_work())
		return PointerGetDatum(NULL);

	rel = trigdata->tg_relation;
	attnums[HCOL_TENANT] = crm_attnum(rel, "tenant_id", UUIDOID);
	attnums[HCOL_ID] = crm_attnum(rel, "id", UUIDOID);
	attnums[HCOL_PIPELINE] = crm_attnum(rel, "pipeline_id", UUIDOID);
	attnums[HCOL_STAGE] = crm_attnum(rel, "stage_id", UUIDOID);
	attnums[HCOL_AMOUNT] = crm_attnum(rel, trigdata->tg_trigger->tgargs[1], NUMERICOID);
	attnums[HCOL_CURRENCY] = crm_attnum(rel, "currency", TEXTOID);
	attnums[HCOL_PROBABILITY] = crm_attnum(rel, "probability", NUMERICOID);

	has_user = crm_current_app_user_id(&changed_by);
	namestrcpy(&changed_by_role, GetUserNameFromId(GetUserId(), false));

	work = AllocSetContextCreate(CurrentMemoryContext, "crm stage history",
								 ALLOCSET_DEFAULT_SIZES);
	caller = MemoryContextSwitchTo(work);

	/*
	 * The old rows first, whole, then the new ones: the two tables hold the
	 * versions of each row at the same position, but reading two spilled
	 * tuplestores in turn after another trigger has read them loses that
	 * step (measured with 20k rows and the outbox trigger before this one).
	 */
	if (!is_insert)
	{
		oldstore = trigdata->tg_oldtable;
		crm_transition_rewind(oldstore);
		oldslot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsMinimalTuple);
		while (tuplestore_gettupleslot(oldstore, true, false, oldslot))
		{
			bool		isnull;

			if (nold == oldcap)
			{
				oldcap = oldcap ? oldcap * 2 : 1024;
				old_ids = old_ids ? repalloc(old_ids, sizeof(pg_uuid_t) * oldcap)
					: palloc(sizeof(pg_uuid_t) * oldcap);
				old_stages = old_stages ? repalloc(old_stages, sizeof(pg_uuid_t) * oldcap)
					: palloc(sizeof(pg_uuid_t) * oldcap);
			}
			old_ids[nold] = *DatumGetUUIDP(slot_getattr(oldslot, attnums[HCOL_ID], &isnull));
			old_stages[nold] = *DatumGetUUIDP(slot_getattr(oldslot, attnums[HCOL_STAGE], &isnull));
			nold++;
		}
		ExecDropSingleTupleTableSlot(oldslot);
	}

	newstore = trigdata->tg_newtable;
	crm_transition_rewind(newstore);
	newslot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsMinimalTuple);

	for (uint64 row = 0;; row++)
	{
		bool		isnull;
		bool		from_null = true;
		Datum		from_stage = (Datum) 0;
		Datum		to_stage;
		Datum		tenant;
		HistoryBatch *b;

		if (!tuplestore_gettupleslot(newstore, true, false, newslot))
			break;
		to_stage = slot_getattr(newslot, attnums[HCOL_STAGE], &isnull);
		tenant = slot_getattr(newslot, attnums[HCOL_TENANT], &isnull);
		if (!is_insert)
		{
			Datum		new_id;

			if (row >= nold)
				elog(ERROR, "transition tables of different lengths");
			new_id = slot_getattr(newslot, attnums[HCOL_ID], &isnull);
			if (memcmp(&old_ids[row], DatumGetUUIDP(new_id), sizeof(pg_uuid_t)) != 0)
				elog(ERROR, "transition tables out of step");
			if (memcmp(&old_stages[row], DatumGetUUIDP(to_stage), sizeof(pg_uuid_t)) == 0)
				continue;
			from_stage = UUIDPGetDatum(&old_stages[row]);
			from_null = false;
		}

		b = history_batch(&batches, DatumGetUUIDP(tenant));
		history_batch_grow(b);
		b->ids[b->n] = uuid_copy_datum(slot_getattr(newslot, attnums[HCOL_ID], &isnull));
		b->pipelines[b->n] = uuid_copy_datum(slot_getattr(newslot, attnums[HCOL_PIPELINE], &isnull));
		b->from_nulls[b->n] = from_null;
		b->from_stages[b->n] = from_null ? (Datum) 0 : uuid_copy_datum(from_stage);
		b->to_stages[b->n] = uuid_copy_datum(to_stage);
		{
			Datum		amount = slot_getattr(newslot, attnums[HCOL_AMOUNT], &isnull);

			b->amount_nulls[b->n] = isnull;
			b->amounts[b->n] = isnull ? (Datum) 0 : datumCopy(amount, false, -1);
		}
		b->currencies[b->n] = datumCopy(slot_getattr(newslot, attnums[HCOL_CURRENCY], &isnull), false, -1);
		b->probabilities[b->n] = datumCopy(slot_getattr(newslot, attnums[HCOL_PROBABILITY], &isnull), false, -1);
		b->n++;
	}
	ExecDropSingleTupleTableSlot(newslot);

	if (batches == NULL)
	{
		MemoryContextSwitchTo(caller);
		MemoryContextDelete(work);
		return PointerGetDatum(NULL);
	}

	if (history_write_direct(rel, trigdata->tg_trigger->tgargs[0], attnums, batches,
							 &changed_by, has_user, &changed_by_role))
	{
		MemoryContextSwitchTo(caller);
		MemoryContextDelete(work);
		return PointerGetDatum(NULL);
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	plan = history_plan(trigdata->tg_trigger);

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(rel->rd_rel->relowner,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		for (HistoryBatch *b = batches; b != NULL; b = b->next)
		{
			Datum		args[10];
			char		nulls[10];

			memset(nulls, ' ', sizeof(nulls));
			args[0] = UUIDPGetDatum(&b->tenant);
			args[1] = array_of(b->ids, NULL, b->n, UUIDOID);
			args[2] = array_of(b->pipelines, NULL, b->n, UUIDOID);
			args[3] = array_of(b->from_stages, b->from_nulls, b->n, UUIDOID);
			args[4] = array_of(b->to_stages, NULL, b->n, UUIDOID);
			args[5] = array_of(b->amounts, b->amount_nulls, b->n, NUMERICOID);
			args[6] = array_of(b->currencies, NULL, b->n, TEXTOID);
			args[7] = array_of(b->probabilities, NULL, b->n, NUMERICOID);
			if (has_user)
				args[8] = UUIDPGetDatum(&changed_by);
			else
				nulls[8] = 'n';
			args[9] = NameGetDatum(&changed_by_role);
			if (SPI_execute_plan(plan, args, nulls, false, 0) != SPI_OK_INSERT)
				elog(ERROR, "could not record the stage history");
		}
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();

	SPI_finish();
	MemoryContextSwitchTo(caller);
	MemoryContextDelete(work);
	return PointerGetDatum(NULL);
}

/*
 * How many opportunities and leads are in a stage (key: tenant, pipeline,
 * id); with key NULL, whether there are any at all (each count 0 or 1).
 * Read as the owner of rel (crm.stage), with the latest snapshot: under
 * REPEATABLE READ too, a record that entered the stage in a transaction that
 * committed after this one began is counted (as the foreign key's own check
 * does), and a TRUNCATE sees a record committed while it waited for its
 * lock.  A record entering the stage in a transaction still running holds
 * the stage FOR SHARE (stage_sync's lookup), so whoever deletes the stage
 * waited for that transaction first.
 */
static void
stage_records(Relation rel, Datum *key, int64 *opportunities, int64 *leads)
{
	static SPIPlanPtr in_stage_plan = NULL;
	static SPIPlanPtr any_plan = NULL;
	Oid			save_userid;
	int			save_sec_context;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(rel->rd_rel->relowner,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		SPIPlanPtr	plan;
		bool		isnull;

		if (key != NULL && in_stage_plan == NULL)
		{
			Oid			types[3] = {UUIDOID, UUIDOID, UUIDOID};

			in_stage_plan = crm_prepare_kept("SELECT (SELECT pg_catalog.count(*) FROM crm.opportunity o"
											 "         WHERE o.tenant_id OPERATOR(pg_catalog.=) $1"
											 "           AND o.pipeline_id OPERATOR(pg_catalog.=) $2"
											 "           AND o.stage_id OPERATOR(pg_catalog.=) $3),"
											 "       (SELECT pg_catalog.count(*) FROM crm.lead l"
											 "         WHERE l.tenant_id OPERATOR(pg_catalog.=) $1"
											 "           AND l.pipeline_id OPERATOR(pg_catalog.=) $2"
											 "           AND l.stage_id OPERATOR(pg_catalog.=) $3)",
											 3, types);
		}
		if (key == NULL && any_plan == NULL)
			any_plan = crm_prepare_kept("SELECT (SELECT pg_catalog.count(*) FROM"
										"         (SELECT FROM crm.opportunity LIMIT 1) o),"
										"       (SELECT pg_catalog.count(*) FROM"
										"         (SELECT FROM crm.lead LIMIT 1) l)",
										0, NULL);
		plan = key != NULL ? in_stage_plan : any_plan;
		/*
		 * not read-only: the command counter moves on first, so that rows the
		 * same statement deleted before (a cascade) are seen gone
		 */
		if (SPI_execute_snapshot(plan, key, NULL, GetLatestSnapshot(), InvalidSnapshot,
								 false, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not count the records of a stage");
		*opportunities = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		*leads = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
	SPI_finish();
}

/*
 * crm.stage_keep_records() trigger: see the file header.
 *
 * AFTER ROW, so that it runs when the statement is done: a stage deleted by
 * the cascade of a tenant's or pipeline's delete is checked after the same
 * statement deleted the records in it too (the triggers of a cascade fire
 * at the end of the statement that caused it).
 */
Datum
crm_stage_keep_records(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	tupdesc;
	HeapTuple	oldtuple;
	bool		is_delete;
	int			a_pipeline;
	Datum		key[3];
	bool		isnull;
	int64		opportunities;
	int64		leads;

	/*
	 * TRUNCATE (with CASCADE, as the workflow rules that name a stage
	 * require) would leave every lead and deal without its stage: refused
	 * while there is any, as a DELETE of each stage would be.  AFTER the
	 * TRUNCATE, so that one that empties the records too (TRUNCATE crm.tenant
	 * CASCADE, or the stages with the leads and deals) goes through.
	 */
	if (CALLED_AS_TRIGGER(fcinfo) && TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
	{
		crm_require_trigger(fcinfo, "stage_keep_records", false, false);
		require_no_arguments(trigdata, "stage_keep_records");
		if (crm_replica_skips_work())
			return PointerGetDatum(NULL);
		stage_records(trigdata->tg_relation, NULL, &opportunities, &leads);
		if (opportunities + leads > 0)
			ereport(ERROR,
					(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
					 errmsg("stages cannot be truncated while records are in them"),
					 errhint("Delete or truncate the leads and opportunities first.")));
		return PointerGetDatum(NULL);
	}
	crm_require_trigger(fcinfo, "stage_keep_records", true, false);
	require_no_arguments(trigdata, "stage_keep_records");
	is_delete = TRIGGER_FIRED_BY_DELETE(trigdata->tg_event);
	if (!is_delete && !TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"stage_keep_records\" must be fired for DELETE or UPDATE")));
	if (crm_replica_skips_work())
		return PointerGetDatum(NULL);

	rel = trigdata->tg_relation;
	tupdesc = RelationGetDescr(rel);
	oldtuple = trigdata->tg_trigtuple;
	a_pipeline = crm_attnum(rel, "pipeline_id", UUIDOID);
	/* an UPDATE that leaves the stage in its pipeline changes no record's key */
	if (!is_delete && !column_changed(oldtuple, trigdata->tg_newtuple, tupdesc, a_pipeline))
		return PointerGetDatum(NULL);

	key[0] = heap_getattr(oldtuple, crm_attnum(rel, "tenant_id", UUIDOID), tupdesc, &isnull);
	key[1] = heap_getattr(oldtuple, a_pipeline, tupdesc, &isnull);
	key[2] = heap_getattr(oldtuple, crm_attnum(rel, "id", UUIDOID), tupdesc, &isnull);

	stage_records(rel, key, &opportunities, &leads);
	if (opportunities + leads > 0)
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg(is_delete ? "stage \"%s\" cannot be deleted while records are in it"
						: "stage \"%s\" cannot move to another pipeline while records are in it",
						TextDatumGetCString(heap_getattr(oldtuple, crm_attnum(rel, "name", TEXTOID),
														 tupdesc, &isnull))),
				 errdetail("The stage holds " INT64_FORMAT " opportunities and " INT64_FORMAT " leads (archived ones included).",
						   opportunities, leads),
				 errhint("Move the records to another stage first.")));
	return PointerGetDatum(NULL);
}

/*
 * crm.stage_follow() trigger: see the file header.
 *
 * Re-deriving the records of a stage whose kind changed would close or
 * reopen deals that nobody moved (and stamp closed_at for no event), so a
 * kind change is refused while the stage holds any lead or opportunity,
 * archived or converted ones included.  A probability is only a default,
 * so the records whose probability is the stage's old one take the new
 * one; a record whose probability was set by hand to another value keeps
 * it.  Both run as the table owner over the stage's tenant only, so records
 * hidden from the admin by owner visibility count and follow too.
 */
Datum
crm_stage_follow(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr follow_opportunity_plan = NULL;
	static SPIPlanPtr follow_lead_plan = NULL;
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	tupdesc;
	HeapTuple	oldtuple;
	HeapTuple	newtuple;
	int			a_tenant;
	int			a_id;
	int			a_kind;
	int			a_probability;
	bool		isnull;
	Datum		args[4];
	bool		kind_changed;
	bool		probability_changed;
	Oid			save_userid;
	int			save_sec_context;

	crm_require_trigger(fcinfo, "stage_follow", true, false);
	require_no_arguments(trigdata, "stage_follow");
	if (!TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"stage_follow\" must be fired for UPDATE")));

	rel = trigdata->tg_relation;
	tupdesc = RelationGetDescr(rel);
	oldtuple = trigdata->tg_trigtuple;
	newtuple = trigdata->tg_newtuple;

	if (crm_replica_skips_work())
		return PointerGetDatum(newtuple);

	a_tenant = crm_attnum(rel, "tenant_id", UUIDOID);
	a_id = crm_attnum(rel, "id", UUIDOID);
	a_kind = crm_attnum(rel, "kind", TEXTOID);
	a_probability = crm_attnum(rel, "probability", NUMERICOID);

	kind_changed = column_changed(oldtuple, newtuple, tupdesc, a_kind);
	probability_changed =
		!numeric_equal(heap_getattr(oldtuple, a_probability, tupdesc, &isnull),
					   heap_getattr(newtuple, a_probability, tupdesc, &isnull));
	if (!kind_changed && !probability_changed)
		return PointerGetDatum(newtuple);

	/* records stay with the stage's old tenant and id */
	args[0] = heap_getattr(oldtuple, a_tenant, tupdesc, &isnull);
	args[1] = heap_getattr(oldtuple, a_id, tupdesc, &isnull);
	args[2] = heap_getattr(oldtuple, a_probability, tupdesc, &isnull);
	args[3] = heap_getattr(newtuple, a_probability, tupdesc, &isnull);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(rel->rd_rel->relowner,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		if (kind_changed)
		{
			Datum		key[3];
			int64		opportunities;
			int64		leads;

			key[0] = args[0];
			key[1] = heap_getattr(oldtuple, crm_attnum(rel, "pipeline_id", UUIDOID), tupdesc, &isnull);
			key[2] = args[1];
			stage_records(rel, key, &opportunities, &leads);
			if (opportunities + leads > 0)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("the kind of stage \"%s\" cannot change while records are in it",
								TextDatumGetCString(heap_getattr(oldtuple, crm_attnum(rel, "name", TEXTOID),
																 tupdesc, &isnull))),
						 errdetail("The stage holds " INT64_FORMAT " opportunities and " INT64_FORMAT " leads.",
								   opportunities, leads),
						 errhint("Move the records to another stage first, or add a new stage of the kind wanted.")));
		}
		if (probability_changed)
		{
			if (follow_opportunity_plan == NULL)
			{
				Oid			types[4] = {UUIDOID, UUIDOID, NUMERICOID, NUMERICOID};

				follow_opportunity_plan = crm_prepare_kept(
													   "UPDATE crm.opportunity SET probability = $4"
													   " WHERE tenant_id OPERATOR(pg_catalog.=) $1"
													   " AND stage_id OPERATOR(pg_catalog.=) $2"
													   " AND probability OPERATOR(pg_catalog.=) $3",
													   4, types);
				follow_lead_plan = crm_prepare_kept(
												"UPDATE crm.lead SET probability = $4"
												" WHERE tenant_id OPERATOR(pg_catalog.=) $1"
												" AND stage_id OPERATOR(pg_catalog.=) $2"
												" AND probability OPERATOR(pg_catalog.=) $3"
												" AND converted_at IS NULL",
												4, types);
			}
			if (SPI_execute_plan(follow_opportunity_plan, args, NULL, false, 0) != SPI_OK_UPDATE ||
				SPI_execute_plan(follow_lead_plan, args, NULL, false, 0) != SPI_OK_UPDATE)
				elog(ERROR, "could not update the records of a stage");
		}
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
	SPI_finish();
	return PointerGetDatum(newtuple);
}
