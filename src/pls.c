/*-------------------------------------------------------------------------
 *
 * pls.c
 *	  Predictive lead scoring (Odoo's naive Bayes on won and lost history):
 *	  the C entry points that keep the frequency tables of
 *	  src/sql/88_pls.sql live.
 *
 *	crm.win_model_sync(key_column [, email_column]), AFTER INSERT / UPDATE /
 *	DELETE, FOR EACH STATEMENT, with transition tables
 *		reads the statement's old and new rows here in C (never through a
 *		query, which Citus could not route), keeps those of an UPDATE that
 *		changed a column the model depends on, gathers (tenant, key, e-mail)
 *		into arrays and hands them to crm.pls_sync(), which refreshes the
 *		observations of the closed records they reach and the predictions
 *		of open records in predicted mode.
 *
 *	crm.pls_rebuild(tenant)
 *		builds a tenant's table from scratch (crm.pls_rebuild_tables()).
 *
 * The model's tables are the server's: no role may write them.  Both run
 * their SQL as the owner of the table the trigger is on (the extension's
 * owner), as the stage history does; the trigger's rows are the
 * statement's own, and crm.pls_rebuild() refuses another tenant than the
 * one the session acts for.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(crm_pls_sync);
PG_FUNCTION_INFO_V1(crm_pls_rebuild);

static SPIPlanPtr sync_plan = NULL;
static SPIPlanPtr rebuild_plan = NULL;

/*
 * The columns of each table whose change can move what a closed record
 * contributes, or a prediction: an UPDATE that touches none of them (a
 * rescored lead, a note on a deal) costs the model nothing.
 */
static const char *const lead_watch[] = {
	"tenant_id", "id", "pipeline_id", "stage_id", "status", "converted_at", "converted_contact_id",
	"team_id", "source", "industry", "country", "company_size", "rating", "priority", "email",
	"phone", "probability_mode", NULL
};
static const char *const opportunity_watch[] = {
	"tenant_id", "id", "pipeline_id", "stage_id", "status", "team_id", "source", "country",
	"priority", "account_id", "contact_id", "probability_mode", NULL
};
static const char *const contact_watch[] = {
	"tenant_id", "id", "email", "phone", "mobile", "profiling_opt_out", NULL
};
static const char *const account_watch[] = {
	"tenant_id", "id", "industry", "employees", "rating", NULL
};
static const char *const stage_watch[] = {
	"tenant_id", "id", "pipeline_id", "sequence", "kind", NULL
};

static const char *const *
watched_columns(Relation rel)
{
	const char *name = crm_table_name(rel);

	if (strcmp(name, "lead") == 0)
		return lead_watch;
	if (strcmp(name, "opportunity") == 0)
		return opportunity_watch;
	if (strcmp(name, "contact") == 0)
		return contact_watch;
	if (strcmp(name, "account") == 0)
		return account_watch;
	if (strcmp(name, "stage") == 0)
		return stage_watch;
	return NULL;				/* tags: every row counts */
}

/* Did an UPDATE change one of the watched columns of this row? */
static bool
watched_changed(TupleTableSlot *oldslot, TupleTableSlot *newslot, TupleDesc tupdesc,
				const char *const *watch)
{
	if (watch == NULL)
		return true;
	for (int i = 0; watch[i] != NULL; i++)
	{
		for (int a = 0; a < tupdesc->natts; a++)
		{
			Form_pg_attribute att = TupleDescAttr(tupdesc, a);
			bool		oldnull;
			bool		newnull;
			Datum		oldval;
			Datum		newval;

			if (att->attisdropped || strcmp(NameStr(att->attname), watch[i]) != 0)
				continue;
			oldval = slot_getattr(oldslot, a + 1, &oldnull);
			newval = slot_getattr(newslot, a + 1, &newnull);
			if (oldnull != newnull ||
				(!oldnull && !datumIsEqual(oldval, newval, att->attbyval, att->attlen)))
				return true;
			break;
		}
	}
	return false;
}

/* Append the (tenant, key, email) of one row. */
static void
gather_row(TupleTableSlot *slot, int tenant_att, int key_att, int email_att,
		   Datum *tenants, Datum *keys, Datum *emails, bool *email_nulls, int *n)
{
	bool		tenant_null;
	bool		key_null;
	Datum		tenant = slot_getattr(slot, tenant_att, &tenant_null);
	Datum		key = slot_getattr(slot, key_att, &key_null);

	if (tenant_null || key_null)
		return;
	tenants[*n] = datumCopy(tenant, false, UUID_LEN);
	keys[*n] = datumCopy(key, false, UUID_LEN);
	if (email_att != InvalidAttrNumber)
	{
		Datum		email = slot_getattr(slot, email_att, &email_nulls[*n]);

		if (!email_nulls[*n])
			emails[*n] = PointerGetDatum(PG_DETOAST_DATUM_COPY(email));
	}
	else
		email_nulls[*n] = true;
	(*n)++;
}

/*
 * Attribute numbers that say whether a lead or opportunity row matters to
 * the model (see row_involved); status_att is InvalidAttrNumber for the
 * other tables, whose rows always count.
 */
typedef struct InvolvedCols
{
	int			status_att;
	int			converted_att;	/* leads only */
	int			mode_att;
} InvolvedCols;

static bool
text_is(TupleTableSlot *slot, int att, const char *value)
{
	bool		isnull;
	Datum		d = slot_getattr(slot, att, &isnull);

	return !isnull && strcmp(TextDatumGetCString(d), value) == 0;
}

/*
 * Does this version of a lead or opportunity reach the model?  Only closed
 * records (won or lost, or a converted lead) have observations
 * (crm.pls_observations), and only records in predicted mode have a
 * prediction to keep; an open record in stage or manual mode has neither,
 * so a bulk move of open deals between open stages costs the model
 * nothing.  An UPDATE counts when either version is involved.
 */
static bool
row_involved(TupleTableSlot *slot, const InvolvedCols *cols)
{
	bool		isnull;

	if (cols->status_att == InvalidAttrNumber)
		return true;
	if (!text_is(slot, cols->status_att, "open"))
		return true;
	if (cols->converted_att != InvalidAttrNumber)
	{
		(void) slot_getattr(slot, cols->converted_att, &isnull);
		if (!isnull)
			return true;
	}
	return text_is(slot, cols->mode_att, "predicted");
}

/*
 * Append the rows of the statement: every row of an INSERT or DELETE; of an
 * UPDATE, the old and new versions of the rows whose watched columns
 * changed (the two transition tables hold them in the same order).  Leads
 * and opportunities that neither are nor were closed or predicted are left
 * out (row_involved).
 */
static void
gather(TriggerData *trigdata, TupleDesc tupdesc, int tenant_att, int key_att, int email_att,
	   Datum *tenants, Datum *keys, Datum *emails, bool *email_nulls, int *n)
{
	TupleTableSlot *oldslot = MakeSingleTupleTableSlot(tupdesc, &TTSOpsMinimalTuple);
	TupleTableSlot *newslot = MakeSingleTupleTableSlot(tupdesc, &TTSOpsMinimalTuple);
	Tuplestorestate *oldstore = trigdata->tg_oldtable;
	Tuplestorestate *newstore = trigdata->tg_newtable;
	const char *const *watch = watched_columns(trigdata->tg_relation);
	const char *table = crm_table_name(trigdata->tg_relation);
	InvolvedCols involved;

	involved.status_att = involved.converted_att = involved.mode_att = InvalidAttrNumber;
	if (strcmp(table, "lead") == 0 || strcmp(table, "opportunity") == 0)
	{
		involved.status_att = crm_attnum(trigdata->tg_relation, "status", TEXTOID);
		involved.mode_att = crm_attnum(trigdata->tg_relation, "probability_mode", TEXTOID);
		if (strcmp(table, "lead") == 0)
			involved.converted_att = crm_attnum(trigdata->tg_relation, "converted_at", TIMESTAMPTZOID);
	}

	/*
	 * Read pointers of our own that may rewind: other triggers read the same
	 * tables, and one spilled to disk forgets what a non-rewinding pointer
	 * has passed.
	 */
	if (oldstore)
		tuplestore_select_read_pointer(oldstore, tuplestore_alloc_read_pointer(oldstore, EXEC_FLAG_REWIND));
	if (newstore)
		tuplestore_select_read_pointer(newstore, tuplestore_alloc_read_pointer(newstore, EXEC_FLAG_REWIND));
	if (oldstore && newstore)
	{
		tuplestore_rescan(oldstore);
		tuplestore_rescan(newstore);
		while (tuplestore_gettupleslot(oldstore, true, false, oldslot) &&
			   tuplestore_gettupleslot(newstore, true, false, newslot))
		{
			if (!watched_changed(oldslot, newslot, tupdesc, watch))
				continue;
			if (!row_involved(oldslot, &involved) && !row_involved(newslot, &involved))
				continue;
			gather_row(oldslot, tenant_att, key_att, email_att, tenants, keys, emails, email_nulls, n);
			gather_row(newslot, tenant_att, key_att, email_att, tenants, keys, emails, email_nulls, n);
		}
	}
	else
	{
		Tuplestorestate *store = oldstore ? oldstore : newstore;

		tuplestore_rescan(store);
		while (tuplestore_gettupleslot(store, true, false, newslot))
			if (row_involved(newslot, &involved))
				gather_row(newslot, tenant_att, key_att, email_att, tenants, keys, emails, email_nulls, n);
	}
	ExecDropSingleTupleTableSlot(oldslot);
	ExecDropSingleTupleTableSlot(newslot);
	if (oldstore)
		tuplestore_select_read_pointer(oldstore, 0);
	if (newstore)
		tuplestore_select_read_pointer(newstore, 0);
}

static int64
store_rows(Tuplestorestate *store)
{
	return store ? tuplestore_tuple_count(store) : 0;
}

/*
 * crm.win_model_sync() trigger: see the file header.
 */
Datum
crm_pls_sync(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Trigger    *trigger;
	Relation	rel;
	TupleDesc	tupdesc;
	int			tenant_att;
	int			key_att;
	int			email_att = InvalidAttrNumber;
	int64		capacity;
	Datum	   *tenants;
	Datum	   *keys;
	Datum	   *emails;
	bool	   *email_nulls;
	int			n = 0;
	Datum		args[4];
	Oid			save_userid;
	int			save_sec_context;
	int			dims[1];
	int			lbs[1] = {1};

	crm_require_trigger(fcinfo, "win_model_sync", false, false);
	if (crm_loading_dump())
		return PointerGetDatum(NULL);

	trigger = trigdata->tg_trigger;
	if (trigger->tgnargs < 1 || trigger->tgnargs > 2)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"win_model_sync\" needs the key column and optionally the e-mail column as arguments")));
	rel = trigdata->tg_relation;
	tupdesc = RelationGetDescr(rel);
	tenant_att = crm_attnum(rel, "tenant_id", UUIDOID);
	key_att = crm_attnum(rel, trigger->tgargs[0], UUIDOID);
	if (trigger->tgnargs == 2)
		email_att = crm_attnum(rel, trigger->tgargs[1], TEXTOID);

	capacity = store_rows(trigdata->tg_oldtable) + store_rows(trigdata->tg_newtable);
	if (capacity == 0)
		return PointerGetDatum(NULL);
	tenants = palloc(sizeof(Datum) * capacity);
	keys = palloc(sizeof(Datum) * capacity);
	emails = palloc(sizeof(Datum) * capacity);
	email_nulls = palloc0(sizeof(bool) * capacity);
	gather(trigdata, tupdesc, tenant_att, key_att, email_att,
		   tenants, keys, emails, email_nulls, &n);
	if (n == 0)
		return PointerGetDatum(NULL);

	dims[0] = n;
	args[0] = CStringGetTextDatum(crm_table_name(rel));
	args[1] = PointerGetDatum(construct_md_array(tenants, NULL, 1, dims, lbs, UUIDOID,
												 UUID_LEN, false, TYPALIGN_CHAR));
	args[2] = PointerGetDatum(construct_md_array(keys, NULL, 1, dims, lbs, UUIDOID,
												 UUID_LEN, false, TYPALIGN_CHAR));
	args[3] = PointerGetDatum(construct_md_array(emails, email_nulls, 1, dims, lbs, TEXTOID,
												 -1, false, TYPALIGN_INT));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (sync_plan == NULL)
	{
		Oid			types[4] = {TEXTOID, UUIDARRAYOID, UUIDARRAYOID, TEXTARRAYOID};

		sync_plan = crm_prepare_kept("SELECT crm.pls_sync($1, $2, $3, $4)", 4, types);
	}
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(rel->rd_rel->relowner,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		if (SPI_execute_plan(sync_plan, args, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not keep the predictive model");
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
	SPI_finish();
	return PointerGetDatum(NULL);
}

/*
 * crm.pls_rebuild(tenant): the tenant's predictive model from scratch.  The
 * session must act for that tenant, unless it is an operator (superuser or
 * BYPASSRLS), who sees every tenant anyway.
 */
CRM_SHARD_ENTRY(crm_pls_rebuild)
{
	pg_uuid_t  *tenant;
	bool		operator_role;
	Datum		args[1];
	Oid			owner;
	Oid			save_userid;
	int			save_sec_context;
	int64		result = 0;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tenant must not be null")));
	tenant = PG_GETARG_UUID_P(0);

	operator_role = superuser() || has_bypassrls_privilege(GetUserId());
	if (!operator_role)
	{
		pg_uuid_t	current;
		bool		has_current = crm_current_tenant_id(&current);

		if (!has_current || memcmp(&current, tenant, UUID_LEN) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("cannot rebuild the predictive model of another tenant"),
					 errdetail("The session acts for %s.",
							   has_current ? "another tenant" : "no tenant")));
	}

	owner = crm_table_owner("pls_frequency");

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (rebuild_plan == NULL)
	{
		Oid			types[1] = {UUIDOID};

		rebuild_plan = crm_prepare_kept("SELECT crm.pls_rebuild_tables($1)", 1, types);
	}
	args[0] = UUIDPGetDatum(tenant);
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		bool		isnull;

		if (SPI_execute_plan(rebuild_plan, args, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not rebuild the predictive model");
		result = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
	SPI_finish();
	PG_RETURN_INT64(result);
}

/*
 * crm.win_probability(): BEFORE INSERT OR UPDATE FOR EACH ROW on crm.lead
 * and crm.opportunity, after stage_sync (trigger names fire in order).
 *	- team_id, when omitted and the owner is set (or changed): the owner's
 *	  first team;
 *	- probability_mode, when omitted: the pipeline's, else 'stage';
 *	- an UPDATE of an open record that stays open: a manual probability
 *	  survives a stage move (stage_sync set the stage's), a predicted one
 *	  is the server's (the statement's end sets the new one, through
 *	  crm.pls_apply(), which sets crm.pls_applying).
 * In C because it runs for every row of a bulk stage change, where the
 * PL/pgSQL version cost more than the stage history; the lookups run as
 * the caller, under row-level security, as the PL/pgSQL version did, and
 * only when a column they fill is missing or a manual record moved.
 */
PG_FUNCTION_INFO_V1(crm_pls_win_probability);

static SPIPlanPtr team_plan = NULL;
static SPIPlanPtr pipeline_mode_plan = NULL;
static SPIPlanPtr stage_probability_plan = NULL;

/*
 * The first column (of length typlen, by reference) of the only row that
 * sql, a statement of the parameters (tenant uuid, id uuid), returns for
 * (tenant, id), or NULL.  Its plan is made on first use and kept in *plan;
 * SPI is connected first when *connected is not yet (the caller finishes).
 */
static Datum
lookup_one(SPIPlanPtr *plan, const char *sql, Datum tenant, Datum id, int typlen,
		   bool *connected, bool *isnull)
{
	Datum		args[2] = {tenant, id};
	Datum		d;

	if (!*connected)
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		*connected = true;
	}
	if (*plan == NULL)
	{
		Oid			types[2] = {UUIDOID, UUIDOID};

		*plan = crm_prepare_kept(sql, 2, types);
	}
	if (SPI_execute_plan(*plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up the defaults of a record");
	if (SPI_processed == 0)
	{
		*isnull = true;
		return (Datum) 0;
	}
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, isnull);
	return *isnull ? d : SPI_datumTransfer(d, false, typlen);
}

static bool
datum_text_is(Datum d, bool isnull, const char *value)
{
	return !isnull && strcmp(TextDatumGetCString(d), value) == 0;
}

Datum
crm_pls_win_probability(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	desc;
	HeapTuple	newtup;
	HeapTuple	oldtup = NULL;
	bool		is_update;
	int			tenant_att,
				owner_att,
				team_att,
				mode_att,
				pipeline_att,
				status_att,
				stage_att,
				prob_att;
	int			cols[3];
	Datum		values[3];
	bool		nulls[3];
	int			ncols = 0;
	bool		connected = false;
	bool		isnull;
	bool		tenant_null;
	Datum		tenant;
	Datum		mode;
	bool		mode_null;

	crm_require_trigger(fcinfo, "win_probability", true, true);
	if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event) || TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"win_probability\" must be fired BEFORE INSERT OR UPDATE")));
	is_update = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event);
	newtup = is_update ? trigdata->tg_newtuple : trigdata->tg_trigtuple;
	if (is_update)
		oldtup = trigdata->tg_trigtuple;
	/* a dump being loaded (replica mode, or row_security off) brings its own values */
	if (crm_loading_dump())
		return PointerGetDatum(newtup);

	rel = trigdata->tg_relation;
	desc = RelationGetDescr(rel);
	tenant_att = crm_attnum(rel, "tenant_id", UUIDOID);
	owner_att = crm_attnum(rel, "owner_id", UUIDOID);
	team_att = crm_attnum(rel, "team_id", UUIDOID);
	mode_att = crm_attnum(rel, "probability_mode", TEXTOID);
	pipeline_att = crm_attnum(rel, "pipeline_id", UUIDOID);
	status_att = crm_attnum(rel, "status", TEXTOID);
	stage_att = crm_attnum(rel, "stage_id", UUIDOID);
	prob_att = crm_attnum(rel, "probability", NUMERICOID);
	tenant = heap_getattr(newtup, tenant_att, desc, &tenant_null);

	/* the owner's team when omitted */
	(void) heap_getattr(newtup, team_att, desc, &isnull);
	if (isnull)
	{
		bool		owner_null;
		Datum		owner = heap_getattr(newtup, owner_att, desc, &owner_null);
		bool		owner_changed = !is_update;

		if (is_update && !owner_null)
		{
			bool		old_null;
			Datum		old_owner = heap_getattr(oldtup, owner_att, desc, &old_null);

			owner_changed = old_null ||
				memcmp(DatumGetUUIDP(owner), DatumGetUUIDP(old_owner), UUID_LEN) != 0;
		}
		if (!owner_null && owner_changed)
		{
			if (tenant_null)
				nulls[ncols] = true;
			else
				values[ncols] = lookup_one(&team_plan,
										   "SELECT tm.team_id FROM crm.team_member tm"
										   " WHERE tm.tenant_id OPERATOR(pg_catalog.=) $1"
										   " AND tm.user_id OPERATOR(pg_catalog.=) $2"
										   " ORDER BY tm.created_at, tm.team_id LIMIT 1",
										   tenant, owner, UUID_LEN, &connected, &nulls[ncols]);
			cols[ncols++] = team_att;
		}
	}

	/* the pipeline's probability mode when omitted */
	mode = heap_getattr(newtup, mode_att, desc, &mode_null);
	if (mode_null)
	{
		bool		pipeline_null;
		Datum		pipeline = heap_getattr(newtup, pipeline_att, desc, &pipeline_null);

		mode_null = true;
		if (!tenant_null && !pipeline_null)
			mode = lookup_one(&pipeline_mode_plan,
							  "SELECT p.probability_mode FROM crm.pipeline p"
							  " WHERE p.tenant_id OPERATOR(pg_catalog.=) $1"
							  " AND p.id OPERATOR(pg_catalog.=) $2",
							  tenant, pipeline, -1, &connected, &mode_null);
		if (mode_null)
		{
			mode = CStringGetTextDatum("stage");
			mode_null = false;
		}
		values[ncols] = mode;
		nulls[ncols] = false;
		cols[ncols++] = mode_att;
	}

	/* an open record that stays open: manual and predicted probabilities */
	if (is_update)
	{
		bool		snull;
		bool		osnull;
		Datum		status = heap_getattr(newtup, status_att, desc, &snull);
		Datum		old_status = heap_getattr(oldtup, status_att, desc, &osnull);

		if (datum_text_is(status, snull, "open") && datum_text_is(old_status, osnull, "open"))
		{
			bool		pnull;
			bool		opnull;
			Datum		prob = heap_getattr(newtup, prob_att, desc, &pnull);
			Datum		old_prob = heap_getattr(oldtup, prob_att, desc, &opnull);

			if (datum_text_is(mode, mode_null, "manual"))
			{
				bool		stnull;
				bool		ostnull;
				Datum		stage = heap_getattr(newtup, stage_att, desc, &stnull);
				Datum		old_stage = heap_getattr(oldtup, stage_att, desc, &ostnull);

				if (!stnull && !ostnull &&
					memcmp(DatumGetUUIDP(stage), DatumGetUUIDP(old_stage), UUID_LEN) != 0)
				{
					/* a move resets a stage-mode probability; a manual one stays */
					Datum		stage_prob = (Datum) 0;
					bool		stage_prob_null = true;

					if (!tenant_null)
						stage_prob = lookup_one(&stage_probability_plan,
												"SELECT s.probability FROM crm.stage s"
												" WHERE s.tenant_id OPERATOR(pg_catalog.=) $1"
												" AND s.id OPERATOR(pg_catalog.=) $2",
												tenant, stage, -1, &connected, &stage_prob_null);
					if (!pnull && !stage_prob_null &&
						DatumGetBool(DirectFunctionCall2(numeric_eq, prob, stage_prob)))
					{
						values[ncols] = old_prob;
						nulls[ncols] = opnull;
						cols[ncols++] = prob_att;
					}
				}
			}
			else if (datum_text_is(mode, mode_null, "predicted"))
			{
				const char *applying = GetConfigOption("crm.pls_applying", true, false);

				/* the server's prediction; the statement's end sets the new one */
				if (applying == NULL || strcmp(applying, "on") != 0)
				{
					values[ncols] = old_prob;
					nulls[ncols] = opnull;
					cols[ncols++] = prob_att;
				}
			}
		}
	}

	if (connected)
	{
		HeapTuple	result = ncols > 0 ? heap_modify_tuple_by_cols(newtup, desc, ncols, cols, values, nulls) : newtup;

		/* out of SPI's memory, which SPI_finish() frees */
		if (result != newtup)
			result = SPI_copytuple(result);
		SPI_finish();
		return PointerGetDatum(result);
	}
	if (ncols == 0)
		return PointerGetDatum(newtup);
	return PointerGetDatum(heap_modify_tuple_by_cols(newtup, desc, ncols, cols, values, nulls));
}
