/*-------------------------------------------------------------------------
 *
 * visibility.c
 *	  visible_to of the records and of the rows that hang off them, and the
 *	  refusal to link a record the writer cannot see.
 *
 * In a private tenant the policy of a record or of a row that hangs off one
 * (tags, stage history, activities) is a plain predicate on visible_to (see
 * tenant.c).  One trigger function derives it on every INSERT and on every
 * UPDATE of the columns it depends on, whatever a client sent:
 *
 *	crm.visibility_row(table, mode, column=kind ...), BEFORE INSERT OR UPDATE
 *	FOR EACH ROW
 *		mode 'record'	  visible_to = the owner's chain (NULL when unowned or
 *						  the tenant is public); each link (column=kind, e.g.
 *						  account_id=account) that the row sets or changes
 *						  must name a record the writer sees (42501).
 *		mode 'dependent'  visible_to = the intersection of the visible_to of
 *						  every linked record and, when the table has
 *						  owner_id, of the owner's chain; links checked as
 *						  above.
 *		mode 'history'	  as 'dependent' without the check: the server
 *						  writes the history of a change that was allowed.
 *
 *	crm.visibility_propagate(kind), AFTER UPDATE FOR EACH ROW WHEN visible_to
 *	changed, on account, contact, lead, opportunity
 *		makes every row that hangs off the record follow it: each crm table
 *		with visible_to and <kind>_id (found in the catalog, so a table added
 *		later follows too) is touched with SET visible_to = visible_to, and
 *		its own visibility_row trigger recomputes the value.  Plans are kept
 *		per dependent table and dropped on any relation cache invalidation.
 *
 * Foreign keys are checked without row-level security, which is why the
 * link check lives here.  Lookups run as the table's owner through cached
 * SPI plans that filter by tenant_id and id (one shard group on Citus); the
 * table name comes as an argument because on a Citus shard the relation is
 * named account_102031.  This is C rather than PL/pgSQL because it runs for
 * every stage history row: a bulk move of 40,000 deals paid 2.5 s in the
 * PL/pgSQL version.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

PG_FUNCTION_INFO_V1(crm_visibility_row);
PG_FUNCTION_INFO_V1(crm_visibility_propagate);

#define NKINDS 6
static const char *const kinds[NKINDS] = {"account", "contact", "lead", "opportunity", "activity",
"revenue_forecast"};

/*
 * Tables that name the record they are about by a kind column and an id
 * column (crm.event: entity, entity_id; crm.job and crm.job_archive:
 * source_entity, source_id) rather than by <kind>_id.
 */
#define NENTITY_PAIRS 2
static const char *const entity_pairs[NENTITY_PAIRS][2] = {
	{"entity", "entity_id"},
	{"source_entity", "source_id"}
};

static SPIPlanPtr owner_plan = NULL;
static SPIPlanPtr link_plans[NKINDS];

/*
 * The answers of owner_scope() and record_scope() for the current
 * statement (CrmCommandKey): a COPY of 100,000 activities of 100 contacts
 * reads each contact once, not once per row.  The lookups read with the
 * statement's snapshot, so within one statement they would give the same
 * answer every time; the next write of the transaction moves the command id
 * on and empties the cache.  Kind NKINDS is the owner's scope.  At most
 * SCOPE_CACHE_MAX entries; beyond that the lookups are simply not kept.
 */
#define SCOPE_CACHE_MAX 10000

typedef struct ScopeCacheKey
{
	int			kind;
	pg_uuid_t	tenant;
	pg_uuid_t	id;
} ScopeCacheKey;

typedef struct ScopeCacheEntry
{
	ScopeCacheKey key;
	bool		found;
	bool		isnull;
	Datum		value;			/* a uuid[] in scope_context, when !isnull */
} ScopeCacheEntry;

static MemoryContext scope_context = NULL;
static HTAB *scope_cache = NULL;
static CrmCommandKey scope_cache_key;

static ScopeCacheKey
scope_cache_make_key(int kind, Datum tenant, Datum id)
{
	ScopeCacheKey key;

	memset(&key, 0, sizeof(key));
	key.kind = kind;
	memcpy(&key.tenant, DatumGetUUIDP(tenant), sizeof(pg_uuid_t));
	memcpy(&key.id, DatumGetUUIDP(id), sizeof(pg_uuid_t));
	return key;
}

/*
 * The answer of a lookup this statement already made, if any (emptying
 * the cache first when the statement changed).
 */
static bool
scope_cache_lookup(int kind, Datum tenant, Datum id, bool *found, bool *isnull, Datum *value)
{
	CrmCommandKey now = crm_command_key_current();
	ScopeCacheKey key;
	ScopeCacheEntry *entry;

	if (scope_context == NULL)
		scope_context = AllocSetContextCreate(TopMemoryContext, "crm visibility cache",
											  ALLOCSET_DEFAULT_SIZES);
	if (scope_cache == NULL || !crm_command_key_equal(scope_cache_key, now))
	{
		HASHCTL		ctl;

		scope_cache = NULL;
		MemoryContextReset(scope_context);
		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(ScopeCacheKey);
		ctl.entrysize = sizeof(ScopeCacheEntry);
		ctl.hcxt = scope_context;
		scope_cache = hash_create("crm visibility cache", 64, &ctl,
								  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		scope_cache_key = now;
	}
	key = scope_cache_make_key(kind, tenant, id);
	entry = hash_search(scope_cache, &key, HASH_FIND, NULL);
	if (entry == NULL)
		return false;
	*found = entry->found;
	*isnull = entry->isnull;
	*value = entry->value;
	return true;
}

/* Keep the answer of a lookup for the rest of the statement. */
static void
scope_cache_store(int kind, Datum tenant, Datum id, bool found, bool isnull, Datum value)
{
	ScopeCacheKey key;
	ScopeCacheEntry *entry;
	MemoryContext old;

	if (scope_cache == NULL || hash_get_num_entries(scope_cache) >= SCOPE_CACHE_MAX)
		return;
	key = scope_cache_make_key(kind, tenant, id);
	entry = hash_search(scope_cache, &key, HASH_ENTER, NULL);
	entry->found = found;
	entry->isnull = isnull;
	old = MemoryContextSwitchTo(scope_context);
	entry->value = isnull ? (Datum) 0 : datumCopy(value, false, -1);
	MemoryContextSwitchTo(old);
}

static int
kind_index(const char *kind)
{
	for (int i = 0; i < NKINDS; i++)
		if (strcmp(kinds[i], kind) == 0)
			return i;
	ereport(ERROR,
			(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
			 errmsg("function \"visibility_row\" links only account, contact, lead, opportunity, activity or revenue_forecast, not \"%s\"",
					kind)));
	return -1;					/* keep compiler quiet */
}

static SPIPlanPtr
keep_plan(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/*
 * visible_to of a row of the tenant owned by owner: NULL (everyone) when the
 * tenant is public, else the owner's chain (the owner alone until the chain
 * is computed).  Sets *isnull.
 */
static Datum
owner_scope(Datum tenant, Datum owner, bool *isnull)
{
	Datum		args[2] = {tenant, owner};
	bool		private_isnull;
	bool		chain_isnull;
	Datum		result = (Datum) 0;
	bool		found;

	if (scope_cache_lookup(NKINDS, tenant, owner, &found, isnull, &result))
		return result;
	if (owner_plan == NULL)
	{
		Oid			argtypes[2] = {UUIDOID, UUIDOID};

		owner_plan = keep_plan("SELECT t.visibility OPERATOR(pg_catalog.=) 'private', u.owner_chain"
							   " FROM crm.tenant t LEFT JOIN crm.app_user u"
							   " ON u.tenant_id OPERATOR(pg_catalog.=) t.tenant_id"
							   " AND u.id OPERATOR(pg_catalog.=) $2"
							   " WHERE t.tenant_id OPERATOR(pg_catalog.=) $1",
							   2, argtypes);
	}
	if (SPI_execute_plan(owner_plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.tenant");
	*isnull = true;
	if (SPI_processed == 1 &&
		DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &private_isnull)) &&
		!private_isnull)
	{
		Datum		chain = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &chain_isnull);

		if (!chain_isnull && ArrayGetNItems(ARR_NDIM(DatumGetArrayTypeP(chain)),
											ARR_DIMS(DatumGetArrayTypeP(chain))) > 0)
			result = SPI_datumTransfer(chain, false, -1);
		else
			result = PointerGetDatum(construct_array(&owner, 1, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR));
		*isnull = false;
	}
	scope_cache_store(NKINDS, tenant, owner, true, *isnull, result);
	return result;
}

/*
 * Is the tenant public?  Then every record's visible_to is NULL (owner
 * chains apply in a private tenant only, and crm.visibility_refresh_records
 * clears them when a tenant turns public), and so is that of every row that
 * hangs off a record: the lookups of the records can be left out.  A
 * forecast snapshot keeps the visibility it was taken with (a record of a
 * moment), so a link to one is still looked up.  Cached per statement like
 * the other lookups (kind NKINDS + 1, the tenant as the id).  stage.c
 * asks too: its direct write of stage history rows is for public tenants.
 */
bool
crm_tenant_public(Datum tenant)
{
	bool		found;
	bool		isnull;
	Datum		value;
	text	   *visibility;
	bool		is_public;

	if (scope_cache_lookup(NKINDS + 1, tenant, tenant, &found, &isnull, &value))
		return found;
	/* the tenant's own row, read without SPI (currency.c) */
	visibility = crm_tenant_text(tenant, "visibility");
	is_public = visibility != NULL && strcmp(text_to_cstring(visibility), "public") == 0;
	scope_cache_store(NKINDS + 1, tenant, tenant, is_public, true, (Datum) 0);
	return is_public;
}

/* visible_to of a record; *found says whether it exists. */
static Datum
record_scope(int kind, Datum tenant, Datum id, bool *isnull, bool *found)
{
	Datum		args[2] = {tenant, id};
	Datum		result = (Datum) 0;

	if (scope_cache_lookup(kind, tenant, id, found, isnull, &result))
		return result;
	if (link_plans[kind] == NULL)
	{
		Oid			argtypes[2] = {UUIDOID, UUIDOID};
		char		sql[256];

		snprintf(sql, sizeof(sql),
				 "SELECT r.visible_to FROM crm.%s r"
				 " WHERE r.tenant_id OPERATOR(pg_catalog.=) $1 AND r.id OPERATOR(pg_catalog.=) $2",
				 kinds[kind]);
		link_plans[kind] = keep_plan(sql, 2, argtypes);
	}
	if (SPI_execute_plan(link_plans[kind], args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.%s", kinds[kind]);
	*found = SPI_processed == 1;
	*isnull = true;
	if (*found)
	{
		result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, isnull);
		if (!*isnull)
			result = SPI_datumTransfer(result, false, -1);
	}
	scope_cache_store(kind, tenant, id, *found, *isnull, result);
	return result;
}

/* The elements of a uuid[] both arrays hold (NULL means everyone). */
static Datum
scope_intersect(Datum a, bool a_null, Datum b, bool b_null, bool *isnull)
{
	Datum	   *ae;
	Datum	   *be;
	int			an;
	int			bn;
	Datum	   *out;
	int			n = 0;

	if (a_null || b_null)
	{
		*isnull = a_null && b_null;
		return a_null ? b : a;
	}
	deconstruct_array(DatumGetArrayTypeP(a), UUIDOID, UUID_LEN, false, TYPALIGN_CHAR, &ae, NULL, &an);
	deconstruct_array(DatumGetArrayTypeP(b), UUIDOID, UUID_LEN, false, TYPALIGN_CHAR, &be, NULL, &bn);
	out = palloc(sizeof(Datum) * Max(an, 1));
	for (int i = 0; i < an; i++)
		for (int j = 0; j < bn; j++)
			if (memcmp(DatumGetPointer(ae[i]), DatumGetPointer(be[j]), UUID_LEN) == 0)
			{
				out[n++] = ae[i];
				break;
			}
	*isnull = false;
	return PointerGetDatum(construct_array(out, n, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR));
}

static bool
column_changed(Relation rel, HeapTuple oldtup, HeapTuple newtup, int att)
{
	Form_pg_attribute attr = TupleDescAttr(RelationGetDescr(rel), att - 1);
	bool		oldnull;
	bool		newnull;
	Datum		oldval = heap_getattr(oldtup, att, RelationGetDescr(rel), &oldnull);
	Datum		newval = heap_getattr(newtup, att, RelationGetDescr(rel), &newnull);

	if (oldnull || newnull)
		return oldnull != newnull;
	return !datumIsEqual(oldval, newval, attr->attbyval, attr->attlen);
}

/* Does the relation have this column (not dropped)? */
static bool
has_column(Relation rel, const char *name)
{
	TupleDesc	desc = RelationGetDescr(rel);

	for (int i = 0; i < desc->natts; i++)
		if (!TupleDescAttr(desc, i)->attisdropped &&
			strcmp(NameStr(TupleDescAttr(desc, i)->attname), name) == 0)
			return true;
	return false;
}

/* The kind of a record by name, or -1 when it names none of ours. */
static int
kind_lookup(const char *kind)
{
	for (int i = 0; i < NKINDS; i++)
		if (strcmp(kinds[i], kind) == 0)
			return i;
	return -1;
}

/*
 * May visibility_row() take its short cut for this row: are the trigger's
 * arguments and columns what the full path would accept (it reports
 * anything else), and does the row link no forecast snapshot (whose
 * visibility is kept as taken, even in a public tenant)?
 */
static bool
short_cut_allowed(Trigger *trigger, Relation rel, HeapTuple newtup, bool is_record)
{
	if (is_record || has_column(rel, "owner_id"))
		(void) crm_attnum(rel, "owner_id", UUIDOID);
	for (int i = 2; i < trigger->tgnargs; i++)
	{
		const char *arg = trigger->tgargs[i];
		const char *eq = strchr(arg, '=');
		char		column[NAMEDATALEN];
		bool		isnull;
		Datum		kind;

		if (eq == NULL || eq - arg >= NAMEDATALEN)
			return false;
		memcpy(column, arg, eq - arg);
		column[eq - arg] = '\0';
		(void) crm_attnum(rel, column, UUIDOID);
		if (eq[1] != '@')
		{
			if (kind_lookup(eq + 1) < 0 || strcmp(eq + 1, "revenue_forecast") == 0)
				return false;
			continue;
		}
		kind = heap_getattr(newtup, crm_attnum(rel, eq + 2, TEXTOID), RelationGetDescr(rel), &isnull);
		if (!isnull && strcmp(TextDatumGetCString(kind), "revenue_forecast") == 0)
			return false;
	}
	return true;
}

/*
 * crm.visibility_row(table, mode, column=kind ...): see the file header.
 * A pair column=@kindcolumn takes the kind from the row's text column
 * kindcolumn (crm.event's entity); a kind that names no record kind
 * (an application's own entity) links nothing.
 */
Datum
crm_visibility_row(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Trigger    *trigger;
	Relation	rel;
	TupleDesc	desc;
	HeapTuple	newtup;
	HeapTuple	oldtup = NULL;
	const char *table;
	const char *mode;
	bool		is_record;
	bool		is_history;
	int			tenant_att;
	int			vis_att;
	Datum		tenant;
	bool		isnull;
	Datum		scope = (Datum) 0;
	bool		scope_null = true;
	Oid			save_userid;
	int			save_sec_context;

	crm_require_trigger(fcinfo, "visibility_row", true, true);
	trigger = trigdata->tg_trigger;
	if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"visibility_row\" must be fired BEFORE INSERT OR UPDATE")));
	if (trigger->tgnargs < 2 ||
		(strcmp(trigger->tgargs[1], "record") != 0 && strcmp(trigger->tgargs[1], "dependent") != 0 &&
		 strcmp(trigger->tgargs[1], "history") != 0))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"visibility_row\" takes the table name, 'record', 'dependent' or 'history', then column=kind pairs")));

	rel = trigdata->tg_relation;
	desc = RelationGetDescr(rel);
	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		oldtup = trigdata->tg_trigtuple;
		newtup = trigdata->tg_newtuple;
	}
	else
		newtup = trigdata->tg_trigtuple;
	if (crm_replica_skips_work())
		return PointerGetDatum(newtup);

	table = trigger->tgargs[0];
	mode = trigger->tgargs[1];
	is_record = strcmp(mode, "record") == 0;
	is_history = strcmp(mode, "history") == 0;
	tenant_att = crm_attnum(rel, "tenant_id", UUIDOID);
	vis_att = crm_attnum(rel, "visible_to", UUIDARRAYOID);
	tenant = heap_getattr(newtup, tenant_att, desc, &isnull);
	if (isnull)
		return PointerGetDatum(newtup);

	/*
	 * A public tenant (read without SPI, once per statement), and no link to
	 * a forecast snapshot: everyone's, with no other lookup.
	 */
	{
		if (crm_tenant_public(tenant) && short_cut_allowed(trigger, rel, newtup, is_record))
		{
			int			cols[1] = {vis_att};
			Datum		values[1] = {(Datum) 0};
			bool		nulls[1] = {true};

			(void) heap_getattr(newtup, vis_att, desc, &isnull);
			if (isnull)
				return PointerGetDatum(newtup);
			return PointerGetDatum(heap_modify_tuple_by_cols(newtup, desc, 1, cols, values, nulls));
		}
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(rel->rd_rel->relowner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		bool		first = true;
		bool		public_tenant = crm_tenant_public(tenant);

		if (is_record || has_column(rel, "owner_id"))
		{
			Datum		owner = heap_getattr(newtup, crm_attnum(rel, "owner_id", UUIDOID), desc, &isnull);

			/* owner_scope() is NULL in a public tenant */
			if (!isnull && !public_tenant)
				scope = owner_scope(tenant, owner, &scope_null);
			first = scope_null;
		}

		for (int i = 2; i < trigger->tgnargs; i++)
		{
			const char *arg = trigger->tgargs[i];
			const char *eq = strchr(arg, '=');
			char		column[NAMEDATALEN];
			int			kind;
			int			att;
			Datum		link;
			Datum		link_scope;
			bool		link_null;
			bool		found;
			bool		changed;
			bool		by_kind_column = false;

			if (eq == NULL || eq - arg >= NAMEDATALEN)
				ereport(ERROR,
						(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
						 errmsg("argument \"%s\" of function \"visibility_row\" is not column=kind", arg)));
			memcpy(column, arg, eq - arg);
			column[eq - arg] = '\0';
			if (eq[1] == '@')
			{
				bool		kind_null;
				Datum		kind_value = heap_getattr(newtup, crm_attnum(rel, eq + 2, TEXTOID), desc,
													  &kind_null);

				by_kind_column = true;
				if (kind_null)
					continue;
				kind = kind_lookup(TextDatumGetCString(kind_value));
				if (kind < 0)
					continue;
				/* the kind column changing is a change of the link too */
				att = crm_attnum(rel, column, UUIDOID);
				link = heap_getattr(newtup, att, desc, &isnull);
				if (isnull)
					continue;
				changed = oldtup == NULL || column_changed(rel, oldtup, newtup, att) ||
					column_changed(rel, oldtup, newtup, crm_attnum(rel, eq + 2, TEXTOID));
			}
			else
			{
				kind = kind_index(eq + 1);
				att = crm_attnum(rel, column, UUIDOID);
				link = heap_getattr(newtup, att, desc, &isnull);
				if (isnull)
					continue;
				changed = oldtup == NULL || column_changed(rel, oldtup, newtup, att);
			}
			if (is_record && !changed)
				continue;

			if (public_tenant && strcmp(kinds[kind], "revenue_forecast") != 0)
			{
				/* see crm_tenant_public(): everyone's, and no refusal */
				link_scope = (Datum) 0;
				link_null = true;
				found = true;
			}
			else
				link_scope = record_scope(kind, tenant, link, &link_null, &found);

			/*
			 * No foreign key holds an event or a job to its record: one
			 * about a record that is gone (or never was) is not everyone's
			 * to read in a private tenant, but crm_admin's (and a
			 * service's) only.
			 */
			if (!found && by_kind_column)
			{
				bool		public_tenant;

				/* owner_scope() is NULL exactly when the tenant is public */
				(void) owner_scope(tenant, link, &public_tenant);
				if (!public_tenant)
				{
					link_scope = PointerGetDatum(construct_empty_array(UUIDOID));
					link_null = false;
				}
			}
			/* a record that does not exist is the foreign key's to refuse */
			if (found && changed && !is_history && !crm_current_user_sees(link_scope, link_null))
				ereport(ERROR,
						(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						 errmsg("permission denied to link a row of %s to %s %s", table, kinds[kind],
								DatumGetCString(DirectFunctionCall1(uuid_out, link))),
						 errdetail("In a private tenant a row may link only records the current user can see.")));
			if (is_record)
				continue;
			if (first)
			{
				scope = link_scope;
				scope_null = link_null;
				first = link_null;
			}
			else
				scope = scope_intersect(scope, scope_null, link_scope, link_null, &scope_null);
		}
		/* out of SPI's memory, which SPI_finish() frees */
		if (!scope_null)
			scope = SPI_datumTransfer(scope, false, -1);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
	SPI_finish();

	{
		int			cols[1] = {vis_att};
		Datum		values[1] = {scope};
		bool		nulls[1] = {scope_null};

		return PointerGetDatum(heap_modify_tuple_by_cols(newtup, desc, 1, cols, values, nulls));
	}
}

/* Dependent tables of one record kind, and their kept UPDATE plans. */
#define MAX_DEPENDENTS 32
typedef struct Dependents
{
	bool		valid;
	int			n;
	SPIPlanPtr	plans[MAX_DEPENDENTS];
} Dependents;

static Dependents dependents[NKINDS];
static bool dependents_callback = false;

static void
dependents_invalidate(Oid relid)
{
	for (int k = 0; k < NKINDS; k++)
	{
		/* the plans are freed lazily, when next rebuilt */
		dependents[k].valid = false;
	}
}

/*
 * Find the tables that hang off records of one kind and prepare their
 * UPDATE.  Runs inside SPI.
 */
static void
dependents_build(int kind)
{
	Dependents *d = &dependents[kind];
	Datum		arg;
	Oid			argtype = TEXTOID;
	char		column[NAMEDATALEN];
	uint64		n;

	if (!dependents_callback)
	{
		crm_register_relcache_callback(dependents_invalidate);
		dependents_callback = true;
	}
	for (int i = 0; i < d->n; i++)
		SPI_freeplan(d->plans[i]);
	d->n = 0;

	snprintf(column, sizeof(column), "%s_id", kinds[kind]);
	arg = CStringGetTextDatum(column);
	if (SPI_execute_with_args("SELECT c.relname::pg_catalog.text FROM pg_catalog.pg_class c"
							  " WHERE c.relnamespace OPERATOR(pg_catalog.=) 'crm'::pg_catalog.regnamespace"
							  " AND c.relkind OPERATOR(pg_catalog.=) 'r'"
							  " AND c.relname OPERATOR(pg_catalog.<>) ALL ('{account,contact,lead,opportunity}'::pg_catalog.name[])"
							  " AND c.relname OPERATOR(pg_catalog.!~) '_[0-9]+$'"
							  " AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a"
							  "  WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND NOT a.attisdropped"
							  "  AND a.attname OPERATOR(pg_catalog.=) 'visible_to')"
							  " AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a"
							  "  WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND NOT a.attisdropped"
							  "  AND a.attname OPERATOR(pg_catalog.=) $1::pg_catalog.name)"
							  " ORDER BY c.relname",
							  1, &argtype, &arg, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not list the tables that hang off crm.%s", kinds[kind]);
	n = SPI_processed;
	if (n > MAX_DEPENDENTS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("more than %d tables hang off crm.%s", MAX_DEPENDENTS, kinds[kind])));
	{
		char	  **names = palloc(sizeof(char *) * Max(n, 1));
		Oid			argtypes[2] = {UUIDOID, UUIDOID};

		for (uint64 i = 0; i < n; i++)
			names[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		for (uint64 i = 0; i < n; i++)
		{
			char		sql[512];

			snprintf(sql, sizeof(sql),
					 "UPDATE crm.%s x SET visible_to = x.visible_to"
					 " WHERE x.tenant_id OPERATOR(pg_catalog.=) $1 AND x.%s OPERATOR(pg_catalog.=) $2",
					 quote_identifier(names[i]), quote_identifier(column));
			d->plans[d->n++] = keep_plan(sql, 2, argtypes);
		}
	}

	/* tables about a record by kind and id columns (events, jobs) */
	for (int p = 0; p < NENTITY_PAIRS; p++)
	{
		Datum		pair_args[2];
		Oid			pair_types[2] = {TEXTOID, TEXTOID};
		char	  **names;

		pair_args[0] = CStringGetTextDatum(entity_pairs[p][0]);
		pair_args[1] = CStringGetTextDatum(entity_pairs[p][1]);
		if (SPI_execute_with_args("SELECT c.relname::pg_catalog.text FROM pg_catalog.pg_class c"
								  " WHERE c.relnamespace OPERATOR(pg_catalog.=) 'crm'::pg_catalog.regnamespace"
								  " AND c.relkind OPERATOR(pg_catalog.=) 'r'"
								  " AND c.relname OPERATOR(pg_catalog.!~) '_[0-9]+$'"
								  " AND (SELECT pg_catalog.count(*) FROM pg_catalog.pg_attribute a"
								  "  WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND NOT a.attisdropped"
								  "  AND a.attname OPERATOR(pg_catalog.=) ANY (ARRAY['visible_to'::pg_catalog.name,"
								  "  $1::pg_catalog.name, $2::pg_catalog.name])) OPERATOR(pg_catalog.=) 3"
								  " ORDER BY c.relname",
								  2, pair_types, pair_args, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not list the tables about crm.%s", kinds[kind]);
		n = SPI_processed;
		if (d->n + n > MAX_DEPENDENTS)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("more than %d tables hang off crm.%s", MAX_DEPENDENTS, kinds[kind])));
		names = palloc(sizeof(char *) * Max(n, 1));
		for (uint64 i = 0; i < n; i++)
			names[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		for (uint64 i = 0; i < n; i++)
		{
			char		sql[640];
			Oid			argtypes[2] = {UUIDOID, UUIDOID};

			snprintf(sql, sizeof(sql),
					 "UPDATE crm.%s x SET visible_to = x.visible_to"
					 " WHERE x.tenant_id OPERATOR(pg_catalog.=) $1 AND x.%s OPERATOR(pg_catalog.=) $2"
					 " AND x.%s OPERATOR(pg_catalog.=) '%s'",
					 quote_identifier(names[i]), quote_identifier(entity_pairs[p][1]),
					 quote_identifier(entity_pairs[p][0]), kinds[kind]);
			d->plans[d->n++] = keep_plan(sql, 2, argtypes);
		}
	}
	d->valid = true;
}

/*
 * crm.visibility_propagate(kind): see the file header.
 */
Datum
crm_visibility_propagate(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	int			kind;
	Datum		args[2];
	bool		isnull;
	Oid			save_userid;
	int			save_sec_context;

	crm_require_trigger(fcinfo, "visibility_propagate", true, false);
	if (!TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) || trigdata->tg_trigger->tgnargs != 1)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"visibility_propagate\" must be fired AFTER UPDATE with the record kind as its argument")));
	if (crm_replica_skips_work())
		return PointerGetDatum(NULL);

	rel = trigdata->tg_relation;
	kind = kind_index(trigdata->tg_trigger->tgargs[0]);
	args[0] = heap_getattr(trigdata->tg_newtuple, crm_attnum(rel, "tenant_id", UUIDOID),
						   RelationGetDescr(rel), &isnull);
	if (isnull)
		return PointerGetDatum(NULL);
	args[1] = heap_getattr(trigdata->tg_newtuple, crm_attnum(rel, "id", UUIDOID),
						   RelationGetDescr(rel), &isnull);
	if (isnull)
		return PointerGetDatum(NULL);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(rel->rd_rel->relowner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		if (!dependents[kind].valid)
			dependents_build(kind);
		for (int i = 0; i < dependents[kind].n; i++)
			if (SPI_execute_plan(dependents[kind].plans[i], args, NULL, false, 0) != SPI_OK_UPDATE)
				elog(ERROR, "could not update what hangs off crm.%s", kinds[kind]);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
	SPI_finish();
	return PointerGetDatum(NULL);
}
