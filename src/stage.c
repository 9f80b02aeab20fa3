/*-------------------------------------------------------------------------
 *
 * stage.c
 *	  Pipeline stages of leads and opportunities: defaults, consistency and
 *	  the stage history.
 *
 * Two triggers sit on crm.lead and crm.opportunity:
 *
 *	crm.stage_sync(), BEFORE INSERT OR UPDATE, FOR EACH ROW
 *		fills an omitted pipeline (the tenant's default) and stage (the
 *		pipeline's first), checks that the stage belongs to the pipeline, and
 *		derives status (open/won/lost: the stage's kind), probability (the
 *		stage's, unless set by hand; 100 when won, 0 when lost) and closed_at
 *		from the stage.  Whether a row is changed by crm.opportunity_move_stage()
 *		or by any client's UPDATE, the same rules apply.
 *
 *	crm.stage_history_record(record_column, amount_column), AFTER UPDATE,
 *	FOR EACH STATEMENT, with transition tables
 *		writes one crm.stage_history row per record whose stage changed, with
 *		one INSERT ... SELECT over the statement's old and new rows: a bulk
 *		UPDATE of 100k deals costs one join, not 100k inserts.
 *
 * Stage rows are read through cached SPI plans, and what was read is kept
 * for the rest of the SQL command (see CrmCommandKey): a bulk UPDATE that
 * moves many rows into a few stages looks each stage up once.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(crm_stage_sync);
PG_FUNCTION_INFO_V1(crm_stage_history_record);

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

/* Cached INSERT ... SELECT of the history trigger, one per trigger. */
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

static SPIPlanPtr
prepare_kept(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s",
			 sql, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
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
 * Answer one lookup, from the cache or through SPI.  The queries run with
 * the caller's rights, so row-level security hides other tenants' stages
 * exactly as it would from the caller's own SELECT.
 */
static LookupEntry *
lookup(LookupKind kind, const pg_uuid_t *tenant, const pg_uuid_t *id)
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

				stage_plan = prepare_kept(
										  "SELECT pipeline_id, kind, probability FROM crm.stage"
										  " WHERE tenant_id OPERATOR(pg_catalog.=) $1"
										  " AND id OPERATOR(pg_catalog.=) $2",
										  2, types);
			}
			plan = stage_plan;
			break;
		case LOOKUP_DEFAULT_PIPELINE:
			if (default_pipeline_plan == NULL)
			{
				Oid			types[1] = {UUIDOID};

				default_pipeline_plan = prepare_kept(
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

				first_stage_plan = prepare_kept(
												"SELECT id FROM crm.stage"
												" WHERE tenant_id OPERATOR(pg_catalog.=) $1"
												" AND pipeline_id OPERATOR(pg_catalog.=) $2"
												" ORDER BY sequence, id LIMIT 1",
												2, types);
			}
			plan = first_stage_plan;
			break;
	}
	if (SPI_execute_plan(plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "stage lookup failed");

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
	return entry;
}

static char *
uuid_text(const pg_uuid_t *id)
{
	return DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum((pg_uuid_t *) id)));
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

/* Column positions the stage trigger reads and writes. */
enum
{
	COL_TENANT,
	COL_PIPELINE,
	COL_STAGE,
	COL_STATUS,
	COL_PROBABILITY,
	COL_CLOSED_AT,
	NUM_STAGE_COLUMNS
};

static const char *const stage_column_names[NUM_STAGE_COLUMNS] = {
	"tenant_id", "pipeline_id", "stage_id", "status", "probability", "closed_at"
};

static const Oid stage_column_types[NUM_STAGE_COLUMNS] = {
	UUIDOID, UUIDOID, UUIDOID, TEXTOID, NUMERICOID, TIMESTAMPTZOID
};

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
	int			attnums[NUM_STAGE_COLUMNS];
	Datum		values[NUM_STAGE_COLUMNS];
	bool		nulls[NUM_STAGE_COLUMNS];
	bool		changed[NUM_STAGE_COLUMNS];
	pg_uuid_t	tenant;
	pg_uuid_t	pipeline;
	pg_uuid_t	stage;
	LookupEntry *info;
	StageKind	kind;
	bool		kind_changed;
	bool		any_changed = false;
	int			replace_cols[NUM_STAGE_COLUMNS];
	Datum		replace_values[NUM_STAGE_COLUMNS];
	bool		replace_nulls[NUM_STAGE_COLUMNS];
	int			nreplace = 0;

	crm_require_trigger(fcinfo, "stage_sync", true, true);
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

	for (int i = 0; i < NUM_STAGE_COLUMNS; i++)
	{
		attnums[i] = crm_attnum(rel, stage_column_names[i], stage_column_types[i]);
		values[i] = heap_getattr(newtuple, attnums[i], tupdesc, &nulls[i]);
		changed[i] = is_insert ? !nulls[i]
			: column_changed(oldtuple, newtuple, tupdesc, attnums[i]);
		any_changed |= changed[i];
	}

	/* Most updates touch neither stage nor the fields derived from it. */
	if (!is_insert && !any_changed)
		return PointerGetDatum(newtuple);

	/* No tenant: the NOT NULL constraint will say so. */
	if (nulls[COL_TENANT])
		return PointerGetDatum(newtuple);
	tenant = *DatumGetUUIDP(values[COL_TENANT]);

	if (!nulls[COL_STAGE])
		stage = *DatumGetUUIDP(values[COL_STAGE]);

	if (nulls[COL_PIPELINE])
	{
		if (!nulls[COL_STAGE])
		{
			info = lookup(LOOKUP_STAGE, &tenant, &stage);
			if (!info->found)
				ereport(ERROR,
						(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
						 errmsg("stage %s does not exist", uuid_text(&stage))));
			pipeline = info->result;
		}
		else
		{
			info = lookup(LOOKUP_DEFAULT_PIPELINE, &tenant, NULL);
			if (!info->found)
				ereport(ERROR,
						(errcode(ERRCODE_NO_DATA_FOUND),
						 errmsg("tenant %s has no default pipeline", uuid_text(&tenant)),
						 errhint("Give a pipeline_id, or mark one pipeline of the tenant as default.")));
			pipeline = info->result;
		}
		replace_cols[nreplace] = attnums[COL_PIPELINE];
		replace_values[nreplace] = UUIDPGetDatum(&pipeline);
		replace_nulls[nreplace++] = false;
	}
	else
		pipeline = *DatumGetUUIDP(values[COL_PIPELINE]);

	if (nulls[COL_STAGE])
	{
		info = lookup(LOOKUP_FIRST_STAGE, &tenant, &pipeline);
		if (!info->found)
			ereport(ERROR,
					(errcode(ERRCODE_NO_DATA_FOUND),
					 errmsg("pipeline %s has no stages", uuid_text(&pipeline)),
					 errhint("Add a stage to the pipeline, or give a stage_id.")));
		stage = info->result;
		replace_cols[nreplace] = attnums[COL_STAGE];
		replace_values[nreplace] = UUIDPGetDatum(&stage);
		replace_nulls[nreplace++] = false;
	}

	info = lookup(LOOKUP_STAGE, &tenant, &stage);
	if (!info->found)
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg("stage %s does not exist", uuid_text(&stage))));
	if (memcmp(&info->result, &pipeline, sizeof(pg_uuid_t)) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg("stage %s does not belong to pipeline %s",
						uuid_text(&stage), uuid_text(&pipeline)),
				 errdetail("The stage belongs to pipeline %s.", uuid_text(&info->result)),
				 errhint("Move the record to a stage of its own pipeline, or change pipeline_id and stage_id together.")));
	kind = info->stage_kind;

	/* status: always the stage's kind; a contradicting value is refused */
	if (changed[COL_STATUS] && !nulls[COL_STATUS])
	{
		char	   *status = TextDatumGetCString(values[COL_STATUS]);

		if (strcmp(status, stage_kind_names[kind]) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("status \"%s\" contradicts the stage, whose kind is \"%s\"",
							status, stage_kind_names[kind]),
					 errhint("The status follows the stage: move the record to a won or lost stage, or use the mark_won and mark_lost functions.")));
	}
	if (is_insert)
		kind_changed = true;
	else
	{
		bool		isnull;
		char	   *old_status = TextDatumGetCString(heap_getattr(oldtuple, attnums[COL_STATUS], tupdesc, &isnull));

		kind_changed = parse_stage_kind(old_status) != kind;
	}
	if (nulls[COL_STATUS] || changed[COL_STATUS] || kind_changed)
	{
		replace_cols[nreplace] = attnums[COL_STATUS];
		replace_values[nreplace] = CStringGetTextDatum(stage_kind_names[kind]);
		replace_nulls[nreplace++] = false;
	}

	/* probability: 100 when won, 0 when lost, else the stage's unless set */
	{
		bool		set_by_hand = changed[COL_PROBABILITY] && !nulls[COL_PROBABILITY];
		bool		stage_moved = is_insert || changed[COL_STAGE] || changed[COL_PIPELINE];
		Datum		probability = values[COL_PROBABILITY];
		bool		replace = false;

		if (kind != STAGE_OPEN)
		{
			Datum		forced = numeric_from_int(kind == STAGE_WON ? 100 : 0,
											  TupleDescAttr(tupdesc, attnums[COL_PROBABILITY] - 1)->atttypmod);

			if (set_by_hand && !numeric_equal(probability, forced))
				ereport(ERROR,
						(errcode(ERRCODE_CHECK_VIOLATION),
						 errmsg("probability of a %s record must be %d",
								stage_kind_names[kind], kind == STAGE_WON ? 100 : 0)));
			if (nulls[COL_PROBABILITY] || !numeric_equal(probability, forced))
			{
				probability = forced;
				replace = true;
			}
		}
		else if (!set_by_hand && (stage_moved || nulls[COL_PROBABILITY]))
		{
			probability = info->probability;
			replace = true;
		}
		if (replace)
		{
			replace_cols[nreplace] = attnums[COL_PROBABILITY];
			replace_values[nreplace] = probability;
			replace_nulls[nreplace++] = false;
		}
	}

	/* closed_at: when the record entered a won or lost stage */
	if (kind == STAGE_OPEN)
	{
		if (!nulls[COL_CLOSED_AT])
		{
			if (changed[COL_CLOSED_AT] && !kind_changed)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("an open record cannot have a closed_at"),
						 errhint("Move the record to a won or lost stage to close it.")));
			replace_cols[nreplace] = attnums[COL_CLOSED_AT];
			replace_values[nreplace] = (Datum) 0;
			replace_nulls[nreplace++] = true;
		}
	}
	else if (nulls[COL_CLOSED_AT] || (kind_changed && !changed[COL_CLOSED_AT]))
	{
		replace_cols[nreplace] = attnums[COL_CLOSED_AT];
		replace_values[nreplace] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
		replace_nulls[nreplace++] = false;
	}

	if (nreplace == 0)
		return PointerGetDatum(newtuple);

	return PointerGetDatum(heap_modify_tuple_by_cols(newtuple, tupdesc, nreplace,
													 replace_cols, replace_values,
													 replace_nulls));
}

/*
 * The INSERT ... SELECT that records the stage changes of one statement.
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

	if (trigger->tgnargs != 2)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"stage_history_record\" needs two arguments: the history column for the record and the record's amount column")));

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "INSERT INTO crm.stage_history"
					 " (tenant_id, %s, pipeline_id, from_stage_id, to_stage_id,"
					 "  amount, currency, probability, changed_at, changed_by, changed_by_role)"
					 " SELECT n.tenant_id, n.id, n.pipeline_id, o.stage_id, n.stage_id,"
					 "  n.%s, n.currency, n.probability, pg_catalog.clock_timestamp(),"
					 "  $1, $2"
					 " FROM crm_new_rows n JOIN crm_old_rows o"
					 "  ON o.tenant_id OPERATOR(pg_catalog.=) n.tenant_id"
					 "  AND o.id OPERATOR(pg_catalog.=) n.id"
					 " WHERE o.stage_id OPERATOR(pg_catalog.<>) n.stage_id",
					 quote_identifier(trigger->tgargs[0]),
					 quote_identifier(trigger->tgargs[1]));

	{
		Oid			argtypes[2] = {UUIDOID, NAMEOID};

		entry->plan = prepare_kept(sql.data, 2, argtypes);
	}
	pfree(sql.data);
	return entry->plan;
}

/*
 * crm.stage_history_record() trigger: see the file header.
 *
 * The history is the extension's record of what happened, not the user's to
 * write: crm_writer may read crm.stage_history but holds no INSERT on it.
 * The INSERT therefore runs as the owner of the table the trigger is on (the
 * extension's owner), as pg_cron does for its own bookkeeping.  Who made the
 * change is taken before the switch.  The rows come from the statement's
 * own transition tables, so they can only describe rows the user was
 * allowed to update, with their own tenant_id.
 */
Datum
crm_stage_history_record(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	pg_uuid_t	changed_by;
	NameData	changed_by_role;
	Datum		args[2];
	char		nulls[2] = {' ', ' '};
	Oid			save_userid;
	int			save_sec_context;
	int			rc;

	crm_require_trigger(fcinfo, "stage_history_record", false, false);
	if (!TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ||
		trigdata->tg_oldtable == NULL || trigdata->tg_newtable == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"stage_history_record\" must be fired AFTER UPDATE with REFERENCING OLD TABLE AS crm_old_rows NEW TABLE AS crm_new_rows")));

	if (crm_replica_skips_work())
		return PointerGetDatum(NULL);

	if (crm_current_app_user_id(&changed_by))
		args[0] = UUIDPGetDatum(&changed_by);
	else
		nulls[0] = 'n';
	namestrcpy(&changed_by_role, GetUserNameFromId(GetUserId(), false));
	args[1] = NameGetDatum(&changed_by_role);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_register_trigger_data(trigdata) != SPI_OK_TD_REGISTER)
		elog(ERROR, "could not register the transition tables");

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(trigdata->tg_relation->rd_rel->relowner,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		rc = SPI_execute_plan(history_plan(trigdata->tg_trigger), args, nulls, false, 0);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();

	if (rc != SPI_OK_INSERT)
		elog(ERROR, "could not record the stage history");

	SPI_finish();
	return PointerGetDatum(NULL);
}
