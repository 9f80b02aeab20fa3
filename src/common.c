/*-------------------------------------------------------------------------
 *
 * common.c
 *	  The module's magic block and the small checks every trigger of the
 *	  extension makes before it does its work.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

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
		if (getBaseType(att->atttypid) != typid)
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
