/*-------------------------------------------------------------------------
 *
 * currency.c
 *	  The currency of a new amount: the tenant's default currency when the
 *	  row names none.
 *
 * A column default that calls a function reading crm.tenant cannot run on
 * Citus: the default is evaluated inside the shard query of an
 * INSERT ... SELECT, where a read of a distributed table is refused.  So
 * the currency columns have no default, and the BEFORE INSERT trigger
 * crm.currency_default() fills a NULL currency from crm.tenant's
 * default_currency of the row's own tenant (USD when the tenant is not
 * found, as the old default did without a tenant).
 *
 * crm.tenant is read without SPI and without the planner: an index scan
 * of every local relation that holds its rows, the table itself on a
 * single node and, on a Citus node, each local shard placement of it
 * (listed in pg_dist_shard).  crm.tenant is co-located with every tenant
 * table, so the tenant's row lives on the node of the row being inserted.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

PG_FUNCTION_INFO_V1(crm_currency_default);

/* The local relations holding crm.tenant's rows, cached until a relcache flush. */
static bool tenant_rels_valid = false;
static bool callback_registered = false;
static int	tenant_nrels = 0;
static Oid	tenant_rels[65];

static void
tenant_rels_invalidate(Oid relid)
{
	tenant_rels_valid = false;
}

/*
 * Find crm.tenant and, on a Citus node, its local shard placements
 * (tenant_<shardid>), from pg_dist_shard read with a plain catalog scan.
 */
static void
tenant_rels_find(void)
{
	Oid			nsp = get_namespace_oid("crm", false);
	Oid			relid = get_relname_relid("tenant", nsp);
	Oid			dist_shard;

	if (!callback_registered)
	{
		crm_register_relcache_callback(tenant_rels_invalidate);
		callback_registered = true;
	}
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"crm.tenant\" does not exist")));
	tenant_nrels = 0;
	tenant_rels[tenant_nrels++] = relid;

	dist_shard = get_relname_relid("pg_dist_shard", PG_CATALOG_NAMESPACE);
	if (OidIsValid(dist_shard))
	{
		Relation	rel = table_open(dist_shard, AccessShareLock);
		TableScanDesc scan = table_beginscan_catalog(rel, 0, NULL);
		HeapTuple	tuple;

		while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
		{
			bool		isnull;
			Datum		logical = heap_getattr(tuple, 1, RelationGetDescr(rel), &isnull);
			Datum		shardid;
			char		name[NAMEDATALEN];
			Oid			placement;

			if (isnull || DatumGetObjectId(logical) != relid)
				continue;
			shardid = heap_getattr(tuple, 2, RelationGetDescr(rel), &isnull);
			if (isnull)
				continue;
			snprintf(name, sizeof(name), "tenant_" INT64_FORMAT, DatumGetInt64(shardid));
			placement = get_relname_relid(name, nsp);
			if (!OidIsValid(placement))
				continue;
			if (tenant_nrels >= lengthof(tenant_rels))
				ereport(ERROR,
						(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						 errmsg("crm.tenant has more than %d shard placements on this node",
								(int) lengthof(tenant_rels) - 1)));
			tenant_rels[tenant_nrels++] = placement;
		}
		table_endscan(scan);
		table_close(rel, AccessShareLock);
	}
	tenant_rels_valid = true;
}

/*
 * A text column of the tenant's row of crm.tenant, read from the local
 * relations that hold crm.tenant's rows through their primary key; NULL
 * when the tenant is not found or the value is NULL.  For other files too
 * (visibility.c asks whether a tenant is public): a lookup without SPI.
 */
text *
crm_tenant_text(Datum tenant, const char *column)
{
	Snapshot	snapshot = ActiveSnapshotSet() ? GetActiveSnapshot() : GetTransactionSnapshot();
	text	   *result = NULL;
	bool		found = false;

	if (!tenant_rels_valid)
		tenant_rels_find();
	for (int r = 0; r < tenant_nrels && !found; r++)
	{
		Relation	rel = table_open(tenant_rels[r], AccessShareLock);
		AttrNumber	tenant_att = crm_attnum(rel, "tenant_id", UUIDOID);
		AttrNumber	value_att = crm_attnum(rel, column, TEXTOID);
		Oid			indexoid = RelationGetPrimaryKeyIndex(rel);
		ScanKeyData key;
		SysScanDesc scan;
		HeapTuple	tuple;

		ScanKeyInit(&key, tenant_att, BTEqualStrategyNumber, F_UUID_EQ, tenant);
		scan = systable_beginscan(rel, indexoid, OidIsValid(indexoid), snapshot, 1, &key);
		if ((tuple = systable_getnext(scan)) != NULL)
		{
			bool		isnull;
			Datum		d = heap_getattr(tuple, value_att, RelationGetDescr(rel), &isnull);

			found = true;
			if (!isnull)
				result = DatumGetTextPCopy(d);
		}
		systable_endscan(scan);
		table_close(rel, AccessShareLock);
	}
	return result;
}

/*
 * crm.currency_default(): BEFORE INSERT FOR EACH ROW.  A row without a
 * currency gets its tenant's default currency (USD when the row has no
 * tenant or the tenant is not found); a row that names one keeps it.
 */
Datum
crm_currency_default(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	desc;
	HeapTuple	tuple;
	int			currency_att;
	int			tenant_att;
	bool		isnull;
	Datum		tenant;
	text	   *currency = NULL;
	Datum		value;
	bool		replnull = false;

	crm_require_trigger(fcinfo, "currency_default", true, true);
	crm_require_trigger_nargs(fcinfo, "currency_default", 0);
	if (!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"currency_default\" must be fired BEFORE INSERT")));
	rel = trigdata->tg_relation;
	desc = RelationGetDescr(rel);
	tuple = trigdata->tg_trigtuple;
	if (crm_replica_skips_work())
		return PointerGetDatum(tuple);

	currency_att = crm_attnum(rel, "currency", TEXTOID);
	tenant_att = crm_attnum(rel, "tenant_id", UUIDOID);
	(void) heap_getattr(tuple, currency_att, desc, &isnull);
	if (!isnull)
		return PointerGetDatum(tuple);

	tenant = heap_getattr(tuple, tenant_att, desc, &isnull);
	if (!isnull)
		currency = crm_tenant_text(tenant, "default_currency");
	if (currency == NULL)
		currency = cstring_to_text("USD");
	value = PointerGetDatum(currency);
	return PointerGetDatum(heap_modify_tuple_by_cols(tuple, desc, 1, &currency_att,
													 &value, &replnull));
}
