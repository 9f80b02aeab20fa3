/*-------------------------------------------------------------------------
 *
 * common.c
 *	  The module's magic block and the small checks every trigger of the
 *	  extension makes before it does its work.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include "catalog/namespace.h"
#include "commands/async.h"
#include "catalog/pg_class.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"

PG_MODULE_MAGIC;

/*
 * Refuse to run a trigger function outside the kind of trigger it was
 * written for: a user who attaches it to the wrong event gets an error that
 * says so instead of a crash or a silently skipped row.  Refuse too when
 * schema crm is no longer the extension's own (see guard.c): every trigger
 * runs statements that name crm.<table>.
 */
void
crm_require_trigger(FunctionCallInfo fcinfo, const char *funcname,
					bool row_level, bool before)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	crm_guard_require_schema();

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"%s\" was not called by trigger manager",
						funcname)));

	if (row_level != (bool) TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		before != (bool) TRIGGER_FIRED_BEFORE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"%s\" must be fired %s %s",
						funcname,
						before ? "BEFORE" : "AFTER",
						row_level ? "FOR EACH ROW" : "FOR EACH STATEMENT")));
}

/*
 * The name of the extension's table a trigger fires on, as the code knows
 * it.  On a Citus worker the trigger fires on a shard, named after its
 * table with "_<shard id>" appended (crm.activity_102008); no table of the
 * extension ends in "_<digits>", so such a suffix is dropped.  Returns a
 * palloc'd string.
 */
char *
crm_table_name(Relation rel)
{
	const char *name = RelationGetRelationName(rel);
	int			len = strlen(name);
	int			i = len;

	while (i > 0 && name[i - 1] >= '0' && name[i - 1] <= '9')
		i--;
	if (i < len && i > 1 && name[i - 1] == '_')
		return pnstrdup(name, i - 1);
	return pstrdup(name);
}

/*
 * NOTIFY, except in a statement Citus runs on a worker for the coordinator
 * (its internal connections are named "citus_internal ..."): listeners
 * connect to the coordinator, a worker's notification would reach none of
 * them, and Citus cannot PREPARE (two-phase commit) a transaction that
 * notified.
 */
void
crm_notify(const char *channel, const char *payload)
{
	const char *app = GetConfigOption("application_name", true, false);

	if (app != NULL && strncmp(app, "citus_internal", strlen("citus_internal")) == 0)
	{
		/* a call handed over by the coordinator: it sends them (shard.c) */
		if (crm_in_shard_call())
			crm_shard_record_notification(channel, payload);
		return;
	}
	Async_Notify(channel, payload);
}

/*
 * Refuse a trigger created with another number of arguments than the
 * function reads: extra arguments would be silently ignored (the user meant
 * something by them) and missing ones would be read past the end of
 * tgargs.
 */
void
crm_require_trigger_nargs(FunctionCallInfo fcinfo, const char *funcname,
						  int nargs)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (trigdata->tg_trigger->tgnargs != nargs)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"%s\" takes %d trigger argument%s, not %d",
						funcname, nargs, nargs == 1 ? "" : "s",
						trigdata->tg_trigger->tgnargs)));
}

/*
 * A row applied by logical replication (or a restore that asks for it)
 * arrives with its derived data already computed on the origin; deriving it
 * again here would double history rows.  Triggers are normally not fired
 * in that mode at all, but one that a DBA marked ENABLE ALWAYS must still
 * stay out of the way.
 */
bool
crm_replica_skips_work(void)
{
	return SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA;
}

/*
 * Attribute number of a column the trigger relies on, checked to be of the
 * type the trigger reads or writes it as (a domain counts as its base
 * type).  A trigger attached to a table without the column, or with the
 * column of another type, gets an error naming the column instead of
 * reading a Datum of the wrong shape (a crash) or storing one (corruption).
 */
int
crm_attnum(Relation rel, const char *colname, Oid typid)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);

	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);

		if (att->attisdropped || strcmp(NameStr(att->attname), colname) != 0)
			continue;
		/* the type itself needs no catalog lookup; only a domain does */
		if (att->atttypid != typid && getBaseType(att->atttypid) != typid)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("column \"%s\" of relation \"%s\" is of type %s, not %s",
							colname, RelationGetRelationName(rel),
							format_type_be(att->atttypid), format_type_be(typid)),
					 errhint("This trigger function only works on crm tables whose column has that type.")));
		return att->attnum;
	}

	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_COLUMN),
			 errmsg("column \"%s\" of relation \"%s\" does not exist",
					colname, RelationGetRelationName(rel)),
			 errhint("This trigger function only works on crm tables that have that column.")));
	return InvalidAttrNumber;	/* keep compiler quiet */
}

/*
 * Attribute number of a column if the relation has it (of any type), else
 * InvalidAttrNumber.
 */
int
crm_optional_attnum(Relation rel, const char *colname)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);

	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);

		if (!att->attisdropped && strcmp(NameStr(att->attname), colname) == 0)
			return att->attnum;
	}
	return InvalidAttrNumber;
}

/*
 * The agreed rule for identity columns: an UPDATE that changes tenant_id or
 * id (where the table has them) is refused with 42501, so that no row moves
 * into another tenant or out from under the history that names it.  The
 * comparison is of the stored images, so it needs no equality operator and
 * works for a column of any type.  touch_updated_at() applies it to every
 * table; a BEFORE UPDATE trigger that fires earlier and would otherwise
 * report a less helpful error for a moved row can call it first.
 */
void
crm_refuse_identity_change(Relation rel, HeapTuple oldtuple, HeapTuple newtuple)
{
	int			attnum;

	if ((attnum = crm_optional_attnum(rel, "tenant_id")) != InvalidAttrNumber)
		crm_refuse_column_change(rel, oldtuple, newtuple, attnum);
	if ((attnum = crm_optional_attnum(rel, "id")) != InvalidAttrNumber)
		crm_refuse_column_change(rel, oldtuple, newtuple, attnum);
}

/* The check of crm_refuse_identity_change() for one identity column. */
void
crm_refuse_column_change(Relation rel, HeapTuple oldtuple, HeapTuple newtuple,
						 int attnum)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);
	Form_pg_attribute att = TupleDescAttr(tupdesc, attnum - 1);
	Datum		oldval;
	Datum		newval;
	bool		oldnull;
	bool		newnull;

	oldval = heap_getattr(oldtuple, attnum, tupdesc, &oldnull);
	newval = heap_getattr(newtuple, attnum, tupdesc, &newnull);
	if (oldnull == newnull &&
		(oldnull || datumIsEqual(oldval, newval, att->attbyval, att->attlen)))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("column \"%s\" of relation \"%s\" cannot be changed",
					NameStr(att->attname), RelationGetRelationName(rel)),
			 errdetail("A row keeps the tenant and the id it was created with.")));
}

/*
 * A session that writes crm rows with row_security = off can only be a
 * superuser or BYPASSRLS role (every crm table forces row-level security,
 * so anyone else gets an error): pg_restore and psql running a pg_dump
 * script set it.  Such a load brings the events, aggregates and jobs with
 * the rows, so deriving them again would double them; like replica mode,
 * it is left alone.
 */
bool
crm_loading_dump(void)
{
	return !row_security || crm_replica_skips_work();
}

/*
 * Position a transition table at its first row for this reader: a read
 * pointer of our own, as the executor's scan of a named tuplestore takes,
 * so that whichever trigger read the table before, and whether it is
 * still in memory or spilled to disk, every row is read.
 */
void
crm_transition_rewind(Tuplestorestate *ts)
{
	int			ptr = tuplestore_alloc_read_pointer(ts, EXEC_FLAG_REWIND);

	tuplestore_select_read_pointer(ts, ptr);
	tuplestore_rescan(ts);
}

/* The owner of a relation: derived rows are written with its rights. */
Oid
crm_relation_owner(Oid relid)
{
	HeapTuple	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	return owner;
}

/* The owner of the table crm.<relname>. */
Oid
crm_table_owner(const char *relname)
{
	Oid			relid = get_relname_relid(relname, get_namespace_oid("crm", false));

	if (!OidIsValid(relid))
		elog(ERROR, "table crm.%s is missing", relname);
	return crm_relation_owner(relid);
}

/*
 * A plan prepared once and kept for the life of the backend, or an error
 * naming the statement.
 */
SPIPlanPtr
crm_prepare_kept(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s",
			 sql, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/* The value at key of a JSON object, or NULL (also when it is no object). */
JsonbValue *
crm_jsonb_field(JsonbContainer *container, const char *key)
{
	JsonbValue	k;

	if (!JsonContainerIsObject(container))
		return NULL;
	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	return findJsonbValueFromContainer(container, JB_FOBJECT, &k);
}

/* A uuid in its text form, for messages. */
char *
crm_uuid_text(const pg_uuid_t *id)
{
	return DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum((pg_uuid_t *) id)));
}

static int
hex_nibble(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * A uuid written in a payload, read exactly as the uuid type's input reads
 * it (32 hex digits, a hyphen allowed after any group of four but the
 * last, the whole optionally in braces), or false: an id that a check
 * reads must be the id the action that follows it reads, whichever form
 * the client chose (CRM_UUID_TEXT_PATTERN is the same in SQL).
 */
bool
crm_uuid_parse(const char *text, int len, pg_uuid_t *out)
{
	int			i = 0;
	bool		braces = false;

	if (len > 0 && text[0] == '{')
	{
		braces = true;
		i++;
	}
	for (int byte = 0; byte < UUID_LEN; byte++)
	{
		int			hi,
					lo;

		if (i + 1 >= len)
			return false;
		hi = hex_nibble(text[i]);
		lo = hex_nibble(text[i + 1]);
		if (hi < 0 || lo < 0)
			return false;
		out->data[byte] = (unsigned char) ((hi << 4) | lo);
		i += 2;
		if (i < len && text[i] == '-' && byte % 2 == 1 && byte < UUID_LEN - 1)
			i++;
	}
	if (braces)
	{
		if (i >= len || text[i] != '}')
			return false;
		i++;
	}
	return i == len;
}

/*
 * crm_prepare_kept() for a statement whose best plan does not depend on
 * its parameter values (an upsert from arrays, an insert of rows, a lookup
 * by primary key): the plan cache would otherwise plan it again on every
 * call, because a generic plan over unnest() of an array parameter is
 * estimated at 100 rows and never looks cheaper than a custom plan for
 * one.  Planning was a sixth of a single-row activity insert.
 *
 * Not where Citus is loaded: Citus plans an INSERT ... SELECT on a
 * distributed table only when its parameters are constants ("could not
 * create distributed plan"), which a custom plan makes them.
 */
SPIPlanPtr
crm_prepare_kept_generic(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan;

	if (GetConfigOption("citus.shard_count", true, false) != NULL)
		return crm_prepare_kept(sql, nargs, argtypes);
	plan = SPI_prepare_cursor(sql, nargs, argtypes, CURSOR_OPT_GENERIC_PLAN);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s",
			 sql, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/*
 * PostgreSQL keeps a fixed, small table of relcache callbacks for the whole
 * backend (ten in PostgreSQL 15), shared with every other extension: Citus
 * alone takes several.  The caches of this extension that follow ALTER
 * TABLE therefore share one entry: each registers its function here, and
 * one callback calls them all.
 */
#define CRM_RELCACHE_CALLBACKS 16
static CrmRelcacheCallback crm_relcache_callbacks[CRM_RELCACHE_CALLBACKS];
static int	crm_relcache_ncallbacks = 0;
static bool crm_relcache_registered = false;

static void
crm_relcache_dispatch(Datum arg, Oid relid)
{
	for (int i = 0; i < crm_relcache_ncallbacks; i++)
		crm_relcache_callbacks[i] (relid);
}

void
crm_register_relcache_callback(CrmRelcacheCallback callback)
{
	for (int i = 0; i < crm_relcache_ncallbacks; i++)
		if (crm_relcache_callbacks[i] == callback)
			return;
	if (crm_relcache_ncallbacks == CRM_RELCACHE_CALLBACKS)
		elog(ERROR, "too many crm relcache callbacks");
	if (!crm_relcache_registered)
	{
		CacheRegisterRelcacheCallback(crm_relcache_dispatch, (Datum) 0);
		crm_relcache_registered = true;
	}
	crm_relcache_callbacks[crm_relcache_ncallbacks++] = callback;
}
