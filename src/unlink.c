/*-------------------------------------------------------------------------
 *
 * unlink.c
 *	  What a delete leaves behind: the rows that pointed at a deleted record
 *	  keep their history and lose only the link.
 *
 * Citus refuses ON DELETE SET NULL and SET DEFAULT on distributed tables,
 * and a CRM must not lose an activity because one of the records it is
 * about went away.  So the links to accounts, contacts, leads,
 * opportunities and users are plain foreign keys (NO ACTION, deferrable),
 * and one trigger function does what ON DELETE SET NULL would have done:
 *
 *	crm.clear_links(table, column, links [, table, column, links ...])
 *		BEFORE DELETE FOR EACH STATEMENT: defers the foreign keys named
 *		<table>_tenant_id_<column>_fkey for the rest of the transaction, so that
 *		their check comes after the clearing below (a NO ACTION check
 *		otherwise runs before any AFTER STATEMENT trigger).
 *
 *		AFTER DELETE FOR EACH STATEMENT, REFERENCING OLD TABLE: reads the
 *		deleted (tenant_id, id) pairs from the transition table here in C,
 *		and for each tenant and each (table, column) runs
 *			UPDATE crm.<table> SET <column> = NULL
 *			 WHERE tenant_id = $1 AND <column> = ANY ($2)
 *		with the tenant as a parameter.  When links names the table's link
 *		columns (comma-separated), a row whose only link was the deleted
 *		record is deleted instead (an activity about nothing that remains).
 *		When links is "!", nothing is cleared: a row that still names a
 *		deleted record refuses the delete (23503, as a foreign key would).
 *		That is for crm.tenant_access, a Citus reference table: a trigger
 *		firing on a worker's shard cannot write it (a distributed query
 *		from a query on a shard), so a login role mapped as a user is
 *		revoked or remapped before the user is deleted.
 *
 * On a Citus worker the trigger fires on a shard, and the foreign keys to
 * defer are those of the co-located shards (<name>_<shard id>), found in
 * the catalog by what they reference.
 *
 * The statements run with the rights of the user who deleted, so row-level
 * security applies: a row the user cannot see is left alone, and then the
 * deferred foreign key refuses the delete at commit instead of changing a
 * row behind the user's back.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include "catalog/namespace.h"
#include "catalog/pg_constraint.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(crm_unlink_clear);

/* The prepared statements of one trigger, one pair per target column. */
typedef struct UnlinkPlans
{
	Oid			trigger_oid;
	int			ntargets;
	SPIPlanPtr	defer;
	SPIPlanPtr *clear;
	SPIPlanPtr *orphans;		/* NULL where the target keeps its rows */
	SPIPlanPtr *restrict_;		/* non-NULL: refuse instead of clearing */
	char	  **targets;		/* the target tables' names, for messages */
} UnlinkPlans;

static HTAB *unlink_plans = NULL;

/* The deleted ids of one tenant. */
typedef struct DeletedIds
{
	pg_uuid_t	tenant;
	int			n;
	int			size;
	Datum	   *ids;
	struct DeletedIds *next;
} DeletedIds;

/*
 * Appends to a SET CONSTRAINTS list every foreign key named name (or, on a
 * Citus worker, name_<shard id>) that references the table rel, schema
 * qualified; returns how many.  On one node that is the constraint itself;
 * on a worker the trigger fires on a shard (crm.app_user_102029), whose
 * co-located referencing shards carry the constraint as
 * crm.account_tenant_id_owner_id_fkey_102093: deferring the plain name
 * there would defer the shell table's constraint, which checks nothing, and
 * the shard's check would refuse the delete before the links are cleared.
 * A link without a foreign key (crm.tenant_access.user_id: a Citus
 * reference table, checked by a trigger) has nothing to defer.
 */
static int
append_link_constraints(StringInfo defer, Oid rel, const char *name, int before)
{
	Oid			types[2] = {OIDOID, TEXTOID};
	Datum		args[2] = {ObjectIdGetDatum(rel), CStringGetTextDatum(name)};
	int			n;

	if (SPI_execute_with_args("SELECT pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.'"
							  " OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.conname)"
							  " FROM pg_catalog.pg_constraint c"
							  " JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.connamespace"
							  " WHERE c.contype OPERATOR(pg_catalog.=) 'f'"
							  " AND c.confrelid OPERATOR(pg_catalog.=) $1"
							  " AND (c.conname OPERATOR(pg_catalog.=) $2::pg_catalog.name"
							  " OR c.conname::pg_catalog.text OPERATOR(pg_catalog.~)"
							  " ('^' OPERATOR(pg_catalog.||) $2 OPERATOR(pg_catalog.||) '_[0-9]+$'))"
							  " ORDER BY 1",
							  2, types, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not find the foreign keys to defer");
	n = (int) SPI_processed;
	for (int i = 0; i < n; i++)
		appendStringInfo(defer, "%s%s", before + i > 0 ? ", " : "",
						 SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
	return n;
}

/*
 * Has this statement (or one before it) deleted the tenant's row?  Then
 * its ON DELETE CASCADE is what deleted its users.  The row is read
 * without SPI (crm_tenant_text(), which finds the local shard on Citus)
 * under the statement's snapshot moved past the statement's own changes,
 * as a non-read-only SPI query would see them: the statement's snapshot
 * itself still shows the row it deleted.
 */
static bool
tenant_deleted(Datum tenant)
{
	bool		gone;

	CommandCounterIncrement();
	PushCopiedSnapshot(ActiveSnapshotSet() ? GetActiveSnapshot() : GetTransactionSnapshot());
	UpdateActiveSnapshotCommandId();
	gone = crm_tenant_text(tenant, "name") == NULL;
	PopActiveSnapshot();
	return gone;
}

/*
 * The statements of a trigger, prepared on its first use.  Table and column
 * names come from the trigger's arguments and are quoted; the tables are
 * always crm's.
 */
static UnlinkPlans *
unlink_plans_for(Trigger *trigger, Relation rel)
{
	UnlinkPlans *entry;
	bool		found;
	Oid			types[2] = {UUIDOID, UUIDARRAYOID};
	StringInfoData defer;
	int			ndefer = 0;
	MemoryContext old;

	if (unlink_plans == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(UnlinkPlans);
		unlink_plans = hash_create("crm unlink plans", 16, &ctl,
								   HASH_ELEM | HASH_BLOBS);
	}
	entry = hash_search(unlink_plans, &trigger->tgoid, HASH_ENTER, &found);
	if (found && entry->defer != NULL)
		return entry;

	entry->ntargets = trigger->tgnargs / 3;
	entry->defer = NULL;
	old = MemoryContextSwitchTo(TopMemoryContext);
	entry->clear = palloc0(entry->ntargets * sizeof(SPIPlanPtr));
	entry->orphans = palloc0(entry->ntargets * sizeof(SPIPlanPtr));
	entry->restrict_ = palloc0(entry->ntargets * sizeof(SPIPlanPtr));
	entry->targets = palloc0(entry->ntargets * sizeof(char *));
	for (int i = 0; i < entry->ntargets; i++)
		entry->targets[i] = pstrdup(trigger->tgargs[3 * i]);
	MemoryContextSwitchTo(old);

	initStringInfo(&defer);
	appendStringInfoString(&defer, "SET CONSTRAINTS ");
	for (int i = 0; i < entry->ntargets; i++)
	{
		const char *table = trigger->tgargs[3 * i];
		const char *column = trigger->tgargs[3 * i + 1];
		const char *links = trigger->tgargs[3 * i + 2];
		StringInfoData sql;

		initStringInfo(&sql);
		if (strcmp(links, "!") == 0)
		{
			/*
			 * A link that is not cleared but refuses the delete: the target
			 * is a Citus reference table (crm.tenant_access), which a
			 * trigger firing on a worker's shard cannot write (Citus
			 * refuses a distributed query from a query on a shard), so
			 * clearing it would work on one node only.
			 */
			appendStringInfo(&sql,
							 "SELECT %s::pg_catalog.text FROM crm.%s"
							 " WHERE tenant_id OPERATOR(pg_catalog.=) $1"
							 " AND %s OPERATOR(pg_catalog.=) ANY ($2) LIMIT 1",
							 quote_identifier(column), quote_identifier(table),
							 quote_identifier(column));
			entry->restrict_[i] = crm_prepare_kept(sql.data, 2, types);
			pfree(sql.data);
			continue;
		}

		ndefer += append_link_constraints(&defer, RelationGetRelid(rel),
										  psprintf("%s_tenant_id_%s_fkey", table, column),
										  ndefer);

		appendStringInfo(&sql,
						 "UPDATE crm.%s SET %s = NULL"
						 " WHERE tenant_id OPERATOR(pg_catalog.=) $1"
						 " AND %s OPERATOR(pg_catalog.=) ANY ($2)",
						 quote_identifier(table), quote_identifier(column),
						 quote_identifier(column));
		entry->clear[i] = crm_prepare_kept(sql.data, 2, types);

		if (links[0] != '\0')
		{
			char	   *list = pstrdup(links);
			char	   *save = NULL;
			bool		any = false;

			resetStringInfo(&sql);
			appendStringInfo(&sql,
							 "DELETE FROM crm.%s"
							 " WHERE tenant_id OPERATOR(pg_catalog.=) $1"
							 " AND %s OPERATOR(pg_catalog.=) ANY ($2)"
							 " AND pg_catalog.num_nonnulls(",
							 quote_identifier(table), quote_identifier(column));
			for (char *link = strtok_r(list, ",", &save); link != NULL;
				 link = strtok_r(NULL, ",", &save))
			{
				if (strcmp(link, column) == 0)
					continue;
				appendStringInfo(&sql, "%s%s", any ? ", " : "", quote_identifier(link));
				any = true;
			}
			if (any)
				appendStringInfoString(&sql, ") OPERATOR(pg_catalog.=) 0");
			else
			{
				/* no other link: every such row goes */
				resetStringInfo(&sql);
				appendStringInfo(&sql,
								 "DELETE FROM crm.%s"
								 " WHERE tenant_id OPERATOR(pg_catalog.=) $1"
								 " AND %s OPERATOR(pg_catalog.=) ANY ($2)",
								 quote_identifier(table), quote_identifier(column));
			}
			entry->orphans[i] = crm_prepare_kept(sql.data, 2, types);
		}
		pfree(sql.data);
	}
	appendStringInfoString(&defer, " DEFERRED");
	entry->defer = crm_prepare_kept(ndefer > 0 ? defer.data : "SELECT", 0, NULL);
	pfree(defer.data);
	return entry;
}

/* The deleted rows' ids, by tenant, read from the transition table. */
static DeletedIds *
deleted_ids(Relation rel, Tuplestorestate *store)
{
	int			a_tenant = crm_attnum(rel, "tenant_id", UUIDOID);
	int			a_id = crm_attnum(rel, "id", UUIDOID);
	TupleTableSlot *slot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsMinimalTuple);
	DeletedIds *groups = NULL;
	int			ptr = tuplestore_alloc_read_pointer(store, EXEC_FLAG_REWIND);

	tuplestore_select_read_pointer(store, ptr);
	tuplestore_rescan(store);
	while (tuplestore_gettupleslot(store, true, false, slot))
	{
		bool		isnull;
		Datum		tenant = slot_getattr(slot, a_tenant, &isnull);
		Datum		id = slot_getattr(slot, a_id, &isnull);
		DeletedIds *g;
		pg_uuid_t  *copy;

		for (g = groups; g != NULL; g = g->next)
			if (memcmp(&g->tenant, DatumGetUUIDP(tenant), sizeof(pg_uuid_t)) == 0)
				break;
		if (g == NULL)
		{
			g = palloc0(sizeof(DeletedIds));
			memcpy(&g->tenant, DatumGetUUIDP(tenant), sizeof(pg_uuid_t));
			g->size = 16;
			g->ids = palloc(g->size * sizeof(Datum));
			g->next = groups;
			groups = g;
		}
		if (g->n == g->size)
		{
			g->size *= 2;
			g->ids = repalloc_huge(g->ids, g->size * sizeof(Datum));
		}
		copy = palloc(sizeof(pg_uuid_t));
		memcpy(copy, DatumGetUUIDP(id), sizeof(pg_uuid_t));
		g->ids[g->n++] = UUIDPGetDatum(copy);
	}
	tuplestore_select_read_pointer(store, 0);
	ExecDropSingleTupleTableSlot(slot);
	return groups;
}

/*
 * crm.clear_links() trigger: see the file header.
 */
Datum
crm_unlink_clear(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Trigger    *trigger;
	UnlinkPlans *plans;
	bool		before;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"clear_links\" was not called by trigger manager")));
	before = TRIGGER_FIRED_BEFORE(trigdata->tg_event);
	crm_require_trigger(fcinfo, "clear_links", false, before);
	trigger = trigdata->tg_trigger;
	if (!TRIGGER_FIRED_BY_DELETE(trigdata->tg_event) ||
		(!before && trigdata->tg_oldtable == NULL))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"clear_links\" must be fired BEFORE DELETE, or AFTER DELETE with REFERENCING OLD TABLE")));
	if (trigger->tgnargs == 0 || trigger->tgnargs % 3 != 0)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"clear_links\" takes (table, column, links) triples as trigger arguments")));

	if (crm_replica_skips_work())
		return PointerGetDatum(NULL);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	plans = unlink_plans_for(trigger, trigdata->tg_relation);

	if (before)
	{
		int			rc = SPI_execute_plan(plans->defer, NULL, NULL, false, 0);

		if (rc != SPI_OK_UTILITY && rc != SPI_OK_SELECT)
			elog(ERROR, "could not defer the foreign keys to a deleted record");
	}
	else
	{
		DeletedIds *groups = deleted_ids(trigdata->tg_relation, trigdata->tg_oldtable);

		crm_stage_unlinking = true;
		PG_TRY();
		{
			for (DeletedIds *g = groups; g != NULL; g = g->next)
			{
				Datum		args[2];
				int			dims[1] = {g->n};
				int			lbs[1] = {1};

				args[0] = UUIDPGetDatum(&g->tenant);
				args[1] = PointerGetDatum(construct_md_array(g->ids, NULL, 1, dims, lbs,
															 UUIDOID, UUID_LEN, false,
															 TYPALIGN_CHAR));
				for (int i = 0; i < plans->ntargets; i++)
				{
					if (plans->restrict_[i] != NULL)
					{
						/*
						 * The tenant itself is being deleted (its users go
						 * by its ON DELETE CASCADE): the rows that name them
						 * go the same way, so nothing is left to refuse.
						 */
						if (tenant_deleted(args[0]))
							continue;
						if (SPI_execute_plan(plans->restrict_[i], args, NULL, true, 1) != SPI_OK_SELECT)
							elog(ERROR, "could not look for the rows that still name a deleted record");
						if (SPI_processed > 0)
						{
							const char *table = crm_table_name(trigdata->tg_relation);
							const char *column = trigger->tgargs[3 * i + 1];

							ereport(ERROR,
									(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
									 errmsg("update or delete on table \"%s\" violates foreign key constraint \"%s_tenant_id_%s_fkey\" on table \"%s\"",
											table, plans->targets[i], column, plans->targets[i]),
									 errdetail("Key (tenant_id, %s)=(%s, %s) is still referenced from table \"%s\".",
											   column, crm_uuid_text(&g->tenant),
											   SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1),
											   plans->targets[i]),
									 errhint("Revoke the login role's mapping (crm.revoke_tenant_access) or map it to another user first.")));
						}
						continue;
					}
					if (plans->orphans[i] != NULL &&
						SPI_execute_plan(plans->orphans[i], args, NULL, false, 0) != SPI_OK_DELETE)
						elog(ERROR, "could not delete the rows left without a link");
					if (SPI_execute_plan(plans->clear[i], args, NULL, false, 0) != SPI_OK_UPDATE)
						elog(ERROR, "could not clear the links to a deleted record");
				}
			}
		}
		PG_FINALLY();
		{
			crm_stage_unlinking = false;
		}
		PG_END_TRY();
	}

	SPI_finish();
	return PointerGetDatum(NULL);
}
