/*-------------------------------------------------------------------------
 *
 * rowwriter.c
 *	  Writes rows the server made itself straight into one of the
 *	  extension's bookkeeping tables: the heap in batches, each index, each
 *	  CHECK constraint, as COPY FROM does, without the executor and SPI.
 *
 * A trigger that records what a statement did (src/stage.c: a stage
 * history row per record moved) would otherwise build arrays, hand them to
 * an INSERT ... SELECT FROM unnest() through SPI, and have the executor
 * evaluate the table's defaults, its row-level security policy and its
 * BEFORE ROW triggers for every row, all to recompute values the caller
 * already has: a bulk move of 100,000 deals spent half its trigger time
 * there.  The caller of this writer fills every column itself, so it may
 * only be used
 *	- where the caller knows every column of the table (the caller checks
 *	  with crm_row_writer_columns_known(), which refuses a table with a
 *	  column it does not know, e.g. one a DBA added, whose default would
 *	  not be evaluated);
 *	- where the table's triggers are the extension's own and the caller
 *	  does their work (crm_row_writer_only_triggers(): a trigger a DBA
 *	  added, an audit say, makes the caller take its SPI path, which fires
 *	  it);
 *	- without Citus, whose distributed tables are not written by heap
 *	  access on the coordinator (the caller's SPI path again).
 * Row-level security is not applied: the writer runs for the server, and
 * the caller decides each value, tenant_id included, from rows the user was
 * allowed to write.  Serializable transactions, WAL, statistics and
 * logical decoding see the rows as they see any insert (heap_multi_insert
 * does that part).  The rows are visible to the next command: the writer
 * advances the command counter when it is closed.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include "access/heapam.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_trigger.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "nodes/makefuncs.h"
#include "parser/parsetree.h"
#include "utils/array.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"

/* rows per heap_multi_insert, as COPY FROM buffers (MAX_BUFFERED_TUPLES) */
#define ROW_WRITER_BATCH 1000

struct CrmRowWriter
{
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *result_rel;
	BulkInsertState bulk;
	CommandId	cid;
	MemoryContext batch_context;	/* what a flush allocates, reset after it */
	TupleTableSlot *slots[ROW_WRITER_BATCH];
	int			nslots;			/* slots made so far */
	int			nbuffered;		/* rows waiting for the next flush */
};

/*
 * Does the table have only columns the caller knows, each of the type the
 * caller writes?  names/types: the caller's columns (an unknown column, a
 * known name of another type, or a generated column makes it refuse).
 */
bool
crm_row_writer_columns_known(Relation rel, const char *const *names,
							 const Oid *types, int ncolumns)
{
	TupleDesc	desc = RelationGetDescr(rel);

	if (desc->constr != NULL && desc->constr->has_generated_stored)
		return false;
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		bool		known = false;

		if (att->attisdropped)
			continue;
		for (int c = 0; c < ncolumns && !known; c++)
			known = strcmp(NameStr(att->attname), names[c]) == 0 &&
				att->atttypid == types[c];
		if (!known)
			return false;
	}
	return true;
}

/*
 * Is the trigger the check of a foreign key (tenant_id) REFERENCES
 * crm.tenant, as the extension declares on its tables?
 */
static bool
tenant_fk_check(Relation rel, const Trigger *trigger)
{
	HeapTuple	tuple;
	bool		result = false;

	if (!trigger->tgisinternal || trigger->tgfoid != F_RI_FKEY_CHECK_INS ||
		!OidIsValid(trigger->tgconstraint))
		return false;
	tuple = SearchSysCache1(CONSTROID, ObjectIdGetDatum(trigger->tgconstraint));
	if (HeapTupleIsValid(tuple))
	{
		Form_pg_constraint con = (Form_pg_constraint) GETSTRUCT(tuple);
		bool		isnull;
		Datum		conkey = SysCacheGetAttr(CONSTROID, tuple, Anum_pg_constraint_conkey, &isnull);

		if (con->contype == CONSTRAINT_FOREIGN && con->conrelid == RelationGetRelid(rel) &&
			con->confrelid == get_relname_relid("tenant", get_namespace_oid("crm", false)) &&
			!isnull && ArrayGetNItems(ARR_NDIM(DatumGetArrayTypeP(conkey)),
									  ARR_DIMS(DatumGetArrayTypeP(conkey))) == 1)
		{
			int16		attnum = ((int16 *) ARR_DATA_PTR(DatumGetArrayTypeP(conkey)))[0];

			result = attnum > 0 && attnum <= RelationGetDescr(rel)->natts &&
				strcmp(NameStr(TupleDescAttr(RelationGetDescr(rel), attnum - 1)->attname), "tenant_id") == 0;
		}
		ReleaseSysCache(tuple);
	}
	return result;
}

/*
 * Are the table's INSERT triggers only these functions of the crm schema
 * (by name), and has it no rules?  Disabled triggers count too: the caller
 * does their work either way, which is what they would have done when
 * enabled.  With tenant_fk, the check of a foreign key (tenant_id)
 * REFERENCES crm.tenant is allowed too: the caller locks each tenant row
 * its rows name (FOR KEY SHARE, as the check does) once, instead of once
 * per row.
 */
bool
crm_row_writer_only_triggers(Relation rel, const char *const *functions, int nfunctions,
							 bool tenant_fk)
{
	TriggerDesc *trigdesc = rel->trigdesc;
	Oid			crm_namespace = get_namespace_oid("crm", false);

	if (rel->rd_rules != NULL)
		return false;
	for (int i = 0; trigdesc != NULL && i < trigdesc->numtriggers; i++)
	{
		Trigger    *trigger = &trigdesc->triggers[i];
		Oid			fn = trigger->tgfoid;
		char	   *name;
		bool		ours = false;

		/* the writer only inserts */
		if (!TRIGGER_FOR_INSERT(trigger->tgtype))
			continue;
		if (tenant_fk && tenant_fk_check(rel, trigger))
			continue;
		name = get_func_name(fn);
		if (name != NULL && get_func_namespace(fn) == crm_namespace)
			for (int f = 0; f < nfunctions && !ours; f++)
				ours = strcmp(name, functions[f]) == 0;
		if (!ours)
			return false;
	}
	return true;
}

/*
 * Opens the writer on a table the caller holds no lock on; rows go in with
 * the current command id.  The executor state gives the CHECK constraints
 * and the partial indexes' predicates somewhere to be evaluated, and the
 * constraint's error the range table it reports the row from.
 */
CrmRowWriter *
crm_row_writer_open(Oid relid)
{
	CrmRowWriter *w = palloc0(sizeof(CrmRowWriter));
	RangeTblEntry *rte;

	w->rel = table_open(relid, RowExclusiveLock);
	w->estate = CreateExecutorState();

	rte = makeNode(RangeTblEntry);
	rte->rtekind = RTE_RELATION;
	rte->relid = relid;
	rte->relkind = w->rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	ExecInitRangeTable(w->estate, list_make1(rte));

	w->result_rel = makeNode(ResultRelInfo);
	InitResultRelInfo(w->result_rel, w->rel, 1, NULL, 0);
	ExecOpenIndices(w->result_rel, false);

	w->cid = GetCurrentCommandId(true);
	w->estate->es_output_cid = w->cid;
	w->bulk = GetBulkInsertState();
	w->batch_context = AllocSetContextCreate(CurrentMemoryContext, "crm row writer batch",
											 ALLOCSET_DEFAULT_SIZES);
	return w;
}

/*
 * An empty row to fill: the caller sets slot->tts_values and tts_isnull of
 * every column (the slot comes with every column NULL) and then calls
 * crm_row_writer_add().  The values must stay valid until the writer is
 * flushed or closed.
 */
TupleTableSlot *
crm_row_writer_next(CrmRowWriter *w)
{
	TupleTableSlot *slot;

	if (w->nbuffered == ROW_WRITER_BATCH)
		crm_row_writer_flush(w);
	if (w->nbuffered == w->nslots)
		w->slots[w->nslots++] = table_slot_create(w->rel, &w->estate->es_tupleTable);
	slot = w->slots[w->nbuffered];
	ExecClearTuple(slot);
	memset(slot->tts_isnull, true, sizeof(bool) * slot->tts_tupleDescriptor->natts);
	return slot;
}

/* The row filled in the slot crm_row_writer_next() gave is complete. */
void
crm_row_writer_add(CrmRowWriter *w)
{
	TupleTableSlot *slot = w->slots[w->nbuffered];

	ExecStoreVirtualTuple(slot);
	if (w->rel->rd_att->constr != NULL)
	{
		ExecConstraints(w->result_rel, slot, w->estate);
		ResetExprContext(GetPerTupleExprContext(w->estate));
	}
	w->nbuffered++;
}

/* Writes the rows buffered so far: the heap in one go, then each index. */
void
crm_row_writer_flush(CrmRowWriter *w)
{
	ExprContext *econtext = GetPerTupleExprContext(w->estate);
	MemoryContext caller;

	if (w->nbuffered == 0)
		return;
	/* heap_multi_insert leaves its array of tuples behind: in batch_context */
	caller = MemoryContextSwitchTo(w->batch_context);
	table_multi_insert(w->rel, w->slots, w->nbuffered, w->cid, 0, w->bulk);
	MemoryContextSwitchTo(caller);
	MemoryContextReset(w->batch_context);
	for (int i = 0; i < w->nbuffered; i++)
	{
		List	   *recheck;

		if (w->result_rel->ri_NumIndices > 0)
		{
			recheck = ExecInsertIndexTuples(w->result_rel, w->slots[i], w->estate,
											false, false, NULL, NIL);
			list_free(recheck);
		}
		ResetExprContext(econtext);
	}
	w->nbuffered = 0;
}

/* Writes what is left, releases everything, and makes the rows visible. */
void
crm_row_writer_close(CrmRowWriter *w)
{
	crm_row_writer_flush(w);
	FreeBulkInsertState(w->bulk);
	table_finish_bulk_insert(w->rel, 0);
	ExecCloseIndices(w->result_rel);
	ExecResetTupleTable(w->estate->es_tupleTable, false);
	FreeExecutorState(w->estate);
	MemoryContextDelete(w->batch_context);
	table_close(w->rel, NoLock);
	pfree(w);
	CommandCounterIncrement();
}
