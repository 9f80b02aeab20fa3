/*-------------------------------------------------------------------------
 *
 * engagement.c
 *	  Activity aggregates per contact, lead and account, kept exact by
 *	  statement triggers, and the engagement score with time decay.
 *
 * crm.engagement_track(), AFTER INSERT / UPDATE / DELETE FOR EACH
 * STATEMENT with transition tables, on crm.activity, crm.contact and
 * crm.opportunity:
 *	- reads the statement's old and new rows here in C (never through SPI:
 *	  a plan that Citus rebuilds cannot see transition tables);
 *	- folds them into one delta per (tenant, contact), (tenant, lead) and
 *	  (tenant, account): an old row that counted is taken out, a new row
 *	  that counts is put in, an UPDATE that changed nothing we count is
 *	  skipped;
 *	- applies the deltas with one INSERT ... ON CONFLICT DO UPDATE per
 *	  aggregate table and tenant, tenant_id a parameter, keys sorted: a
 *	  100k-row COPY is one pass and one upsert, and two statements touching
 *	  the same contacts lock them in the same order, so they never deadlock.
 *
 * The score is kept as (score_value, score_ref): the sum of
 * weight * 2^(-(score_ref - occurred_at) / half_life) with score_ref at or
 * after every counted activity.  A delta carries its own (value, ref); the
 * upsert rescales both to the later ref and adds them: O(1) per activity,
 * for any insert order, update or delete.
 *
 * Counts, sums and "latest" times are exact from deltas alone.  When a
 * counted activity is taken out, a first/last time may have been it, so
 * those keys get their times recomputed from the rows (index scans) in a
 * second statement, after the upsert has locked their rows: every
 * transaction that changed the same key earlier has committed by then and
 * the new snapshot of that statement sees its rows.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"

#include <math.h>

PG_FUNCTION_INFO_V1(crm_engagement_track);
PG_FUNCTION_INFO_V1(crm_engagement_combine);
PG_FUNCTION_INFO_V1(crm_engagement_lead_converted);
PG_FUNCTION_INFO_V1(crm_engagement_settings_changed);
PG_FUNCTION_INFO_V1(crm_engagement_refresh);

typedef struct AggKey
{
	pg_uuid_t	tenant;
	pg_uuid_t	id;
} AggKey;

/* A named count (activity type, module) or amount (currency). */
typedef struct NamedDelta
{
	char	   *name;
	int64		n;
	Datum		amount;			/* numeric, for currencies */
} NamedDelta;

typedef struct AggDelta
{
	AggKey		key;
	bool		has_add;		/* something was put in */
	bool		removed_activity;	/* a counted activity was taken out */
	int64		count;
	List	   *by_type;
	List	   *by_module;
	bool		has_score;
	double		score;
	TimestampTz score_ref;
	TimestampTz first;			/* DT_NOBEGIN/DT_NOEND when none */
	TimestampTz last;
	TimestampTz last_in;
	TimestampTz last_out;
	TimestampTz last_meeting;
	/* account only */
	int64		contacts;
	int64		open_count;
	List	   *open_amounts;
	List	   *won_amounts;
} AggDelta;

typedef struct WeightKey
{
	pg_uuid_t	tenant;
	char		type[NAMEDATALEN];
} WeightKey;

typedef struct WeightEntry
{
	WeightKey	key;
	double		weight;
} WeightEntry;

typedef struct HalfLifeEntry
{
	pg_uuid_t	tenant;
	double		seconds;
} HalfLifeEntry;

/* What one statement trigger call works with. */
typedef struct TrackState
{
	MemoryContext cxt;
	HTAB	   *contacts;
	HTAB	   *leads;
	HTAB	   *accounts;
	HTAB	   *weights;
	HTAB	   *half_lives;
} TrackState;

/* Attribute numbers of the activity columns we read. */
typedef struct ActivityCols
{
	int			tenant,
				contact,
				lead,
				account,
				type,
				module,
				direction,
				status,
				occurred;
} ActivityCols;

static SPIPlanPtr weight_plan = NULL;
static SPIPlanPtr half_life_plan = NULL;
static SPIPlanPtr account_upsert_plan = NULL;
static SPIPlanPtr account_upsert_one_plan = NULL;
static SPIPlanPtr fix_plans[2];
static SPIPlanPtr rebase_plans[2];
static SPIPlanPtr account_fix_plan = NULL;
static SPIPlanPtr convert_plan = NULL;
static SPIPlanPtr rebuild_plan = NULL;

static HTAB *
make_hash(const char *name, Size keysize, Size entrysize, MemoryContext cxt)
{
	HASHCTL		ctl;

	ctl.keysize = keysize;
	ctl.entrysize = entrysize;
	ctl.hcxt = cxt;
	return hash_create(name, 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/*
 * Weight of an activity type in a tenant (its crm.activity_weight, else the
 * type's default), looked up once per statement.  The caller is connected
 * to SPI.
 */
static void aggregates_lock(const pg_uuid_t *tenant, LOCKMODE mode);

static double
type_weight(TrackState *st, const pg_uuid_t *tenant, const char *type)
{
	WeightKey	key;
	WeightEntry *entry;
	bool		found;

	memset(&key, 0, sizeof(key));
	key.tenant = *tenant;
	strlcpy(key.type, type, NAMEDATALEN);
	entry = hash_search(st->weights, &key, HASH_ENTER, &found);
	if (!found)
	{
		Datum		args[2];
		bool		isnull;
		Datum		d;
		HalfLifeEntry *hl;

		/* the weight and, in the same query, the tenant's half-life */
		if (weight_plan == NULL)
		{
			Oid			types[2] = {UUIDOID, TEXTOID};

			weight_plan = crm_prepare_kept_generic(
									   "SELECT pg_catalog.float8(coalesce("
									   " (SELECT w.weight FROM crm.activity_weight w"
									   "   WHERE w.tenant_id OPERATOR(pg_catalog.=) $1"
									   "   AND w.activity_type OPERATOR(pg_catalog.=) $2),"
									   " (SELECT t.default_weight FROM crm.activity_type t"
									   "   WHERE t.code OPERATOR(pg_catalog.=) $2), 0)),"
									   " (SELECT pg_catalog.float8(pg_catalog.date_part('epoch', s.half_life))"
									   "   FROM crm.engagement_setting s WHERE s.tenant_id OPERATOR(pg_catalog.=) $1)",
									   2, types);
		}
		args[0] = UUIDPGetDatum(tenant);
		args[1] = CStringGetTextDatum(type);
		/*
		 * The tenant's aggregate lock first, then the weight with a snapshot
		 * taken after it (read_only false): a rebuild for a changed weight
		 * that committed while this statement ran is seen, and one that
		 * starts now waits for this transaction.
		 */
		aggregates_lock(tenant, ShareLock);
		if (SPI_execute_plan(weight_plan, args, NULL, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "could not read the weight of activity type \"%s\"", type);
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		entry->weight = isnull ? 0 : DatumGetFloat8(d);
		hl = hash_search(st->half_lives, tenant, HASH_ENTER, &found);
		if (!found)
		{
			/* no setting: the default of crm.engagement_half_life(), 30 days */
			d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
			hl->seconds = isnull ? 30.0 * 86400.0 : DatumGetFloat8(d);
		}
	}
	return entry->weight;
}

/* The tenant's half-life in seconds, looked up once per statement. */
static double
tenant_half_life(TrackState *st, const pg_uuid_t *tenant)
{
	HalfLifeEntry *entry;
	bool		found;

	entry = hash_search(st->half_lives, tenant, HASH_ENTER, &found);
	if (!found)
	{
		Datum		args[1] = {UUIDPGetDatum(tenant)};
		bool		isnull;
		Datum		d;

		if (half_life_plan == NULL)
		{
			Oid			types[1] = {UUIDOID};

			half_life_plan = crm_prepare_kept_generic(
										  "SELECT pg_catalog.float8(pg_catalog.date_part('epoch', s.half_life))"
										  " FROM crm.engagement_setting s WHERE s.tenant_id OPERATOR(pg_catalog.=) $1",
										  1, types);
		}
		/* as type_weight(): the lock, then a snapshot taken after it */
		aggregates_lock(tenant, ShareLock);
		if (SPI_execute_plan(half_life_plan, args, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read the engagement half-life");
		/* no setting: the default of crm.engagement_half_life(), 30 days */
		d = SPI_processed == 1 ? SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull) : (Datum) 0;
		entry->seconds = (SPI_processed != 1 || isnull) ? 30.0 * 86400.0 : DatumGetFloat8(d);
	}
	return entry->seconds;
}

static AggDelta *
delta_for(HTAB *hash, const pg_uuid_t *tenant, const pg_uuid_t *id)
{
	AggKey		key;
	AggDelta   *d;
	bool		found;

	key.tenant = *tenant;
	key.id = *id;
	d = hash_search(hash, &key, HASH_ENTER, &found);
	if (!found)
	{
		memset(((char *) d) + sizeof(AggKey), 0, sizeof(AggDelta) - sizeof(AggKey));
		d->first = DT_NOEND;
		d->last = d->last_in = d->last_out = d->last_meeting = DT_NOBEGIN;
	}
	return d;
}

static List *
named_add(List *list, const char *name, int64 n, Datum amount, MemoryContext cxt)
{
	ListCell   *lc;
	NamedDelta *nd;
	MemoryContext old;

	foreach(lc, list)
	{
		nd = lfirst(lc);
		if (strcmp(nd->name, name) == 0)
		{
			nd->n += n;
			if (amount != (Datum) 0)
			{
				old = MemoryContextSwitchTo(cxt);
				nd->amount = DirectFunctionCall2(numeric_add, nd->amount, amount);
				MemoryContextSwitchTo(old);
			}
			return list;
		}
	}
	old = MemoryContextSwitchTo(cxt);
	nd = palloc(sizeof(NamedDelta));
	nd->name = pstrdup(name);
	nd->n = n;
	nd->amount = amount != (Datum) 0 ? datumCopy(amount, false, -1) : (Datum) 0;
	list = lappend(list, nd);
	MemoryContextSwitchTo(old);
	return list;
}

/* Add (sign +1) or take out (sign -1) one weighted term of the score. */
static void
score_add(AggDelta *d, double term, TimestampTz t, double half_life)
{
	if (!d->has_score)
	{
		d->has_score = true;
		d->score = term;
		d->score_ref = t;
	}
	else if (t > d->score_ref)
	{
		d->score = d->score * pow(2.0, -((double) (t - d->score_ref) / USECS_PER_SEC) / half_life) + term;
		d->score_ref = t;
	}
	else
		d->score += term * pow(2.0, -((double) (d->score_ref - t) / USECS_PER_SEC) / half_life);
}

/* One counted activity, in (sign +1) or out (-1), for a contact or lead. */
static void
engagement_apply(TrackState *st, AggDelta *d, int sign, const char *type,
				 const char *module, const char *direction, TimestampTz at,
				 double weight, double half_life)
{
	d->count += sign;
	d->by_type = named_add(d->by_type, type, sign, (Datum) 0, st->cxt);
	d->by_module = named_add(d->by_module, module, sign, (Datum) 0, st->cxt);
	score_add(d, sign * weight, at, half_life);
	if (sign > 0)
	{
		d->has_add = true;
		if (at < d->first)
			d->first = at;
		if (at > d->last)
			d->last = at;
		if (direction && strcmp(direction, "inbound") == 0 && at > d->last_in)
			d->last_in = at;
		if (direction && strcmp(direction, "outbound") == 0 && at > d->last_out)
			d->last_out = at;
		if (strcmp(type, "meeting") == 0 && at > d->last_meeting)
			d->last_meeting = at;
	}
	else
		d->removed_activity = true;
}

static bool
datum_same(Datum a, bool anull, Datum b, bool bnull, TupleDesc tupdesc, int attnum)
{
	Form_pg_attribute att = TupleDescAttr(tupdesc, attnum - 1);

	if (anull || bnull)
		return anull == bnull;
	return datumIsEqual(a, b, att->attbyval, att->attlen);
}

/* True when no column the aggregates read differs between the versions. */
static bool
rows_same(TupleTableSlot *a, TupleTableSlot *b, const int *attnums, int n)
{
	for (int i = 0; i < n; i++)
	{
		bool		an,
					bn;
		Datum		ad = slot_getattr(a, attnums[i], &an);
		Datum		bd = slot_getattr(b, attnums[i], &bn);

		if (!datum_same(ad, an, bd, bn, a->tts_tupleDescriptor, attnums[i]))
			return false;
	}
	return true;
}

static char *
text_or_null(TupleTableSlot *slot, int attnum)
{
	bool		isnull;
	Datum		d = slot_getattr(slot, attnum, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/* An activity row, in or out of every aggregate it belongs to. */
static void
activity_row(TrackState *st, TupleTableSlot *slot, const ActivityCols *c, int sign)
{
	bool		isnull;
	char	   *status = text_or_null(slot, c->status);
	pg_uuid_t	tenant;
	char	   *type;
	char	   *module;
	char	   *direction;
	TimestampTz at;
	double		weight;
	double		half_life;
	Datum		d;

	if (status == NULL || strcmp(status, "completed") != 0)
		return;
	tenant = *DatumGetUUIDP(slot_getattr(slot, c->tenant, &isnull));
	type = text_or_null(slot, c->type);
	module = text_or_null(slot, c->module);
	direction = text_or_null(slot, c->direction);
	at = DatumGetTimestampTz(slot_getattr(slot, c->occurred, &isnull));
	if (type == NULL || module == NULL || isnull)
		return;
	weight = type_weight(st, &tenant, type);
	half_life = tenant_half_life(st, &tenant);

	d = slot_getattr(slot, c->contact, &isnull);
	if (!isnull)
		engagement_apply(st, delta_for(st->contacts, &tenant, DatumGetUUIDP(d)), sign,
						 type, module, direction, at, weight, half_life);
	d = slot_getattr(slot, c->lead, &isnull);
	if (!isnull)
		engagement_apply(st, delta_for(st->leads, &tenant, DatumGetUUIDP(d)), sign,
						 type, module, direction, at, weight, half_life);
	d = slot_getattr(slot, c->account, &isnull);
	if (!isnull)
	{
		AggDelta   *a = delta_for(st->accounts, &tenant, DatumGetUUIDP(d));

		a->count += sign;
		if (sign > 0)
		{
			a->has_add = true;
			if (at > a->last)
				a->last = at;
		}
		else
			a->removed_activity = true;
	}
}

/* A contact row, in or out of its account's contact count. */
static void
contact_row(TrackState *st, TupleTableSlot *slot, int tenant_att, int account_att, int sign)
{
	bool		isnull;
	Datum		account = slot_getattr(slot, account_att, &isnull);
	pg_uuid_t	tenant;
	AggDelta   *a;

	if (isnull)
		return;
	tenant = *DatumGetUUIDP(slot_getattr(slot, tenant_att, &isnull));
	a = delta_for(st->accounts, &tenant, DatumGetUUIDP(account));
	a->contacts += sign;
	if (sign > 0)
		a->has_add = true;
}

/* An opportunity row, in or out of its account's open and won figures. */
static void
opportunity_row(TrackState *st, TupleTableSlot *slot, const int *att, int sign)
{
	bool		isnull;
	Datum		account = slot_getattr(slot, att[1], &isnull);
	pg_uuid_t	tenant;
	char	   *status;
	char	   *currency;
	Datum		amount;
	AggDelta   *a;

	if (isnull)
		return;
	status = text_or_null(slot, att[2]);
	if (status == NULL || (strcmp(status, "open") != 0 && strcmp(status, "won") != 0))
		return;
	tenant = *DatumGetUUIDP(slot_getattr(slot, att[0], &isnull));
	currency = text_or_null(slot, att[4]);
	amount = slot_getattr(slot, att[3], &isnull);
	if (currency == NULL || isnull)
		return;
	if (sign < 0)
		amount = DirectFunctionCall1(numeric_uminus, amount);
	a = delta_for(st->accounts, &tenant, DatumGetUUIDP(account));
	if (sign > 0)
		a->has_add = true;
	if (strcmp(status, "open") == 0)
	{
		a->open_count += sign;
		a->open_amounts = named_add(a->open_amounts, currency, 0, amount, st->cxt);
	}
	else
		a->won_amounts = named_add(a->won_amounts, currency, 0, amount, st->cxt);
}

static int
agg_key_cmp(const void *a, const void *b)
{
	return memcmp(*(AggDelta *const *) a, *(AggDelta *const *) b, sizeof(AggKey));
}

/* The entries of a hash, sorted by (tenant, id). */
static AggDelta **
sorted_deltas(HTAB *hash, int *n)
{
	HASH_SEQ_STATUS seq;
	AggDelta   *d;
	AggDelta  **all;
	int			i = 0;

	*n = hash_get_num_entries(hash);
	all = palloc(sizeof(AggDelta *) * Max(*n, 1));
	hash_seq_init(&seq, hash);
	while ((d = hash_seq_search(&seq)) != NULL)
		all[i++] = d;
	qsort(all, *n, sizeof(AggDelta *), agg_key_cmp);
	return all;
}

/* {"name": n, ...} or {"name": amount, ...}; zero entries left out. */
static char *
named_json(List *list, bool amounts)
{
	StringInfoData buf;
	ListCell   *lc;
	bool		first = true;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	foreach(lc, list)
	{
		NamedDelta *nd = lfirst(lc);

		if (!amounts && nd->n == 0)
			continue;
		if (amounts && DatumGetBool(DirectFunctionCall2(numeric_eq, nd->amount,
														DirectFunctionCall1(int8_numeric, Int64GetDatum(0)))))
			continue;
		if (!first)
			appendStringInfoChar(&buf, ',');
		first = false;
		escape_json(&buf, nd->name);
		appendStringInfoChar(&buf, ':');
		if (amounts)
			appendStringInfoString(&buf, DatumGetCString(DirectFunctionCall1(numeric_out, nd->amount)));
		else
			appendStringInfo(&buf, INT64_FORMAT, nd->n);
	}
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

static Datum
ts_array(Datum *values, bool *nulls, int n)
{
	int			dims[1] = {n};
	int			lbs[1] = {1};

	return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs, TIMESTAMPTZOID, 8,
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

static Datum
simple_array(Datum *values, int n, Oid type)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;

	get_typlenbyvalalign(type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_array(values, n, type, typlen, typbyval, typalign));
}

/*
 * The half-life, used by the ON CONFLICT clause only, is a literal of the
 * statement, not a parameter: Citus runs this INSERT ... SELECT by
 * inserting the SELECT's rows into the shard with a statement of its own,
 * which carries no parameters ("there is no parameter $14").  The plan is
 * made again when the half-life changes.
 */
static const char *const engagement_upsert_sql =
"INSERT INTO crm.%s AS e (tenant_id, %s, activity_count, counts_by_type, counts_by_module,"
" first_activity_at, last_activity_at, last_inbound_at, last_outbound_at, last_meeting_at,"
" score_value, score_ref)"
" SELECT $1, x.k, x.n, x.bt::pg_catalog.jsonb, x.bm::pg_catalog.jsonb, x.f, x.l, x.li, x.lo, x.lm, x.s, x.r"
" FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9), pg_catalog.unnest($10), pg_catalog.unnest($11), pg_catalog.unnest($12), pg_catalog.unnest($13))"
"  AS x(k, n, bt, bm, s, r, f, l, li, lo, lm, a)"
" WHERE x.a OR EXISTS (SELECT 1 FROM crm.%s e2"
"  WHERE e2.tenant_id OPERATOR(pg_catalog.=) $1 AND e2.%s OPERATOR(pg_catalog.=) x.k)"
" ORDER BY x.k";

/*
 * The same for one key that something was put in (a single-row INSERT, the
 * common case): the values as scalar parameters, numbered as the arrays
 * above, so that the executor starts a plan of one VALUES row instead of
 * a function scan, a sort and a sub-plan.
 */
static const char *const engagement_upsert_one_sql =
"INSERT INTO crm.%s AS e (tenant_id, %s, activity_count, counts_by_type, counts_by_module,"
" first_activity_at, last_activity_at, last_inbound_at, last_outbound_at, last_meeting_at,"
" score_value, score_ref)"
" VALUES ($1, $2, $3, $4::pg_catalog.jsonb, $5::pg_catalog.jsonb, $8, $9, $10, $11, $12, $6, $7)";

static const char *const engagement_conflict_sql =
" ON CONFLICT (tenant_id, %s) DO UPDATE SET"
" activity_count = e.activity_count OPERATOR(pg_catalog.+) excluded.activity_count,"
" counts_by_type = CASE WHEN excluded.counts_by_type OPERATOR(pg_catalog.=) '{}' THEN e.counts_by_type"
"  ELSE crm.engagement_add_counts(e.counts_by_type, excluded.counts_by_type) END,"
" counts_by_module = CASE WHEN excluded.counts_by_module OPERATOR(pg_catalog.=) '{}' THEN e.counts_by_module"
"  ELSE crm.engagement_add_counts(e.counts_by_module, excluded.counts_by_module) END,"
" first_activity_at = LEAST(e.first_activity_at, excluded.first_activity_at),"
" last_activity_at = GREATEST(e.last_activity_at, excluded.last_activity_at),"
" last_inbound_at = GREATEST(e.last_inbound_at, excluded.last_inbound_at),"
" last_outbound_at = GREATEST(e.last_outbound_at, excluded.last_outbound_at),"
" last_meeting_at = GREATEST(e.last_meeting_at, excluded.last_meeting_at),"
" score_value = CASE WHEN e.activity_count OPERATOR(pg_catalog.+) excluded.activity_count OPERATOR(pg_catalog.=) 0"
"  THEN 0 ELSE crm.engagement_combine(e.score_value, e.score_ref, excluded.score_value, excluded.score_ref, %s::pg_catalog.float8) END,"
" score_ref = CASE WHEN e.activity_count OPERATOR(pg_catalog.+) excluded.activity_count OPERATOR(pg_catalog.=) 0"
"  THEN NULL ELSE GREATEST(e.score_ref, excluded.score_ref) END";

static const char *const engagement_fix_sql =
"UPDATE crm.%1$s e SET"
" first_activity_at = (SELECT pg_catalog.min(a.occurred_at) FROM crm.activity a"
"  WHERE a.tenant_id OPERATOR(pg_catalog.=) $1 AND a.%2$s OPERATOR(pg_catalog.=) e.%2$s"
"  AND a.status OPERATOR(pg_catalog.=) 'completed'),"
" last_activity_at = (SELECT pg_catalog.max(a.occurred_at) FROM crm.activity a"
"  WHERE a.tenant_id OPERATOR(pg_catalog.=) $1 AND a.%2$s OPERATOR(pg_catalog.=) e.%2$s"
"  AND a.status OPERATOR(pg_catalog.=) 'completed'),"
" last_inbound_at = (SELECT pg_catalog.max(a.occurred_at) FROM crm.activity a"
"  WHERE a.tenant_id OPERATOR(pg_catalog.=) $1 AND a.%2$s OPERATOR(pg_catalog.=) e.%2$s"
"  AND a.status OPERATOR(pg_catalog.=) 'completed' AND a.direction OPERATOR(pg_catalog.=) 'inbound'),"
" last_outbound_at = (SELECT pg_catalog.max(a.occurred_at) FROM crm.activity a"
"  WHERE a.tenant_id OPERATOR(pg_catalog.=) $1 AND a.%2$s OPERATOR(pg_catalog.=) e.%2$s"
"  AND a.status OPERATOR(pg_catalog.=) 'completed' AND a.direction OPERATOR(pg_catalog.=) 'outbound'),"
" last_meeting_at = (SELECT pg_catalog.max(a.occurred_at) FROM crm.activity a"
"  WHERE a.tenant_id OPERATOR(pg_catalog.=) $1 AND a.%2$s OPERATOR(pg_catalog.=) e.%2$s"
"  AND a.status OPERATOR(pg_catalog.=) 'completed' AND a.activity_type OPERATOR(pg_catalog.=) 'meeting')"
" WHERE e.tenant_id OPERATOR(pg_catalog.=) $1 AND e.%2$s OPERATOR(pg_catalog.=) ANY ($2)";

/*
 * After the latest activity of a key was taken away (deleted, moved,
 * uncompleted), the stored sum is still relative to its time: the removed
 * term was the largest of the sum and taking it out leaves the older terms'
 * few last bits, or nothing where they were a century older.  The sum is
 * then made afresh relative to the latest activity left (the score at any
 * time is the same; only its precision changes), from that key's rows:
 * deletes of the latest activity pay a scan of the key's activities, every
 * other change stays O(1).  $3 is the half-life in seconds.
 */
static const char *const engagement_rebase_sql =
"UPDATE crm.%1$s e SET score_ref = e.last_activity_at,"
" score_value = coalesce((SELECT pg_catalog.sum(pg_catalog.float8(coalesce(w.weight, t.default_weight))"
"   OPERATOR(pg_catalog.*) pg_catalog.pow('2'::pg_catalog.float8, GREATEST("
"    pg_catalog.date_part('epoch', a.occurred_at OPERATOR(pg_catalog.-) e.last_activity_at)"
"    OPERATOR(pg_catalog./) $3, '-1074'::pg_catalog.float8)))"
"  FROM crm.activity a"
"  JOIN crm.activity_type t ON t.code OPERATOR(pg_catalog.=) a.activity_type"
"  LEFT JOIN crm.activity_weight w ON w.tenant_id OPERATOR(pg_catalog.=) a.tenant_id"
"   AND w.activity_type OPERATOR(pg_catalog.=) a.activity_type"
"  WHERE a.tenant_id OPERATOR(pg_catalog.=) $1 AND a.%2$s OPERATOR(pg_catalog.=) e.%2$s"
"  AND a.status OPERATOR(pg_catalog.=) 'completed'), '0'::pg_catalog.float8)"
" WHERE e.tenant_id OPERATOR(pg_catalog.=) $1 AND e.%2$s OPERATOR(pg_catalog.=) ANY ($2)"
" AND e.score_ref OPERATOR(pg_catalog.>) e.last_activity_at";

/*
 * A plan of one of the statements above, whose %1$s is the aggregate table
 * and %2$s its key column, for contacts (plans[0]) or leads (plans[1]).
 */
static SPIPlanPtr
engagement_key_plan(SPIPlanPtr plans[2], const char *sql, bool lead, int nargs, Oid *types)
{
	SPIPlanPtr *slot = &plans[lead ? 1 : 0];

	if (*slot == NULL)
		*slot = crm_prepare_kept_generic(psprintf(sql, lead ? "lead_engagement" : "contact_engagement",
												  lead ? "lead_id" : "contact_id"),
										 nargs, types);
	return *slot;
}

static SPIPlanPtr
engagement_upsert_plan(bool lead, bool one, double half_life)
{
	static SPIPlanPtr plans[2][2];
	static double planned_half_life[2][2];
	SPIPlanPtr *slot = &plans[lead ? 1 : 0][one ? 1 : 0];
	double	   *planned = &planned_half_life[lead ? 1 : 0][one ? 1 : 0];

	if (*slot != NULL && *planned != half_life)
	{
		SPI_freeplan(*slot);
		*slot = NULL;
	}
	if (*slot == NULL)
	{
		const char *table = lead ? "lead_engagement" : "contact_engagement";
		const char *key = lead ? "lead_id" : "contact_id";
		Oid			array_types[13] = {UUIDOID, UUIDARRAYOID, INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
			FLOAT8ARRAYOID, TIMESTAMPTZARRAYOID, TIMESTAMPTZARRAYOID, TIMESTAMPTZARRAYOID,
		TIMESTAMPTZARRAYOID, TIMESTAMPTZARRAYOID, TIMESTAMPTZARRAYOID, BOOLARRAYOID};
		Oid			one_types[12] = {UUIDOID, UUIDOID, INT8OID, TEXTOID, TEXTOID,
			FLOAT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
		TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID};
		char		literal[64];
		char	   *head;

		snprintf(literal, sizeof(literal), "'%.17g'", half_life);
		if (one)
			head = psprintf(engagement_upsert_one_sql, table, key);
		else
			head = psprintf(engagement_upsert_sql, table, key, table, key);
		*slot = crm_prepare_kept_generic(psprintf("%s%s", head,
												  psprintf(engagement_conflict_sql, key, literal)),
										 one ? 12 : 13, one ? one_types : array_types);
		*planned = half_life;
	}
	return *slot;
}


static Datum
opt_ts(TimestampTz t, bool *isnull)
{
	*isnull = TIMESTAMP_NOT_FINITE(t);
	return TimestampTzGetDatum(t);
}

/*
 * Apply the contact or lead deltas of one tenant: deltas[0..n) all have
 * that tenant and are sorted by id.
 */
static void
engagement_write(TrackState *st, bool lead, AggDelta **deltas, int n)
{
	Datum	   *keys = palloc(sizeof(Datum) * n);
	Datum	   *counts = palloc(sizeof(Datum) * n);
	Datum	   *bt = palloc(sizeof(Datum) * n);
	Datum	   *bm = palloc(sizeof(Datum) * n);
	Datum	   *score = palloc(sizeof(Datum) * n);
	Datum	   *times[6];
	bool	   *tnulls[6];
	Datum	   *adds = palloc(sizeof(Datum) * n);
	Datum	   *fix = palloc(sizeof(Datum) * n);
	int			nfix = 0;
	Datum		args[13];
	double		half_life;
	pg_uuid_t	tenant = deltas[0]->key.tenant;

	for (int j = 0; j < 6; j++)
	{
		times[j] = palloc(sizeof(Datum) * n);
		tnulls[j] = palloc(sizeof(bool) * n);
	}
	for (int i = 0; i < n; i++)
	{
		AggDelta   *d = deltas[i];

		keys[i] = UUIDPGetDatum(&d->key.id);
		counts[i] = Int64GetDatum(d->count);
		bt[i] = CStringGetTextDatum(named_json(d->by_type, false));
		bm[i] = CStringGetTextDatum(named_json(d->by_module, false));
		score[i] = Float8GetDatum(d->has_score ? d->score : 0.0);
		times[0][i] = TimestampTzGetDatum(d->score_ref);
		tnulls[0][i] = !d->has_score;
		times[1][i] = opt_ts(d->first, &tnulls[1][i]);
		times[2][i] = opt_ts(d->last, &tnulls[2][i]);
		times[3][i] = opt_ts(d->last_in, &tnulls[3][i]);
		times[4][i] = opt_ts(d->last_out, &tnulls[4][i]);
		times[5][i] = opt_ts(d->last_meeting, &tnulls[5][i]);
		adds[i] = BoolGetDatum(d->has_add);
		if (d->removed_activity)
			fix[nfix++] = keys[i];
	}
	args[0] = UUIDPGetDatum(&tenant);
	args[1] = simple_array(keys, n, UUIDOID);
	args[2] = simple_array(counts, n, INT8OID);
	args[3] = simple_array(bt, n, TEXTOID);
	args[4] = simple_array(bm, n, TEXTOID);
	args[5] = simple_array(score, n, FLOAT8OID);
	for (int j = 0; j < 6; j++)
		args[6 + j] = ts_array(times[j], tnulls[j], n);
	args[12] = simple_array(adds, n, BOOLOID);
	half_life = tenant_half_life(st, &tenant);

	if (n == 1 && deltas[0]->has_add)
	{
		Datum		one[12];
		char		nulls[12];

		memset(nulls, ' ', sizeof(nulls));
		one[0] = UUIDPGetDatum(&tenant);
		one[1] = keys[0];
		one[2] = counts[0];
		one[3] = bt[0];
		one[4] = bm[0];
		one[5] = score[0];
		for (int j = 0; j < 6; j++)
		{
			one[6 + j] = times[j][0];
			if (tnulls[j][0])
				nulls[6 + j] = 'n';
		}
		if (SPI_execute_plan(engagement_upsert_plan(lead, true, half_life), one, nulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not update the engagement aggregates");
	}
	else if (SPI_execute_plan(engagement_upsert_plan(lead, false, half_life), args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not update the engagement aggregates");
	if (nfix > 0)
	{
		Datum		fargs[2] = {UUIDPGetDatum(&tenant), simple_array(fix, nfix, UUIDOID)};

		Datum		rargs[3] = {fargs[0], fargs[1], Float8GetDatum(half_life)};

		if (SPI_execute_plan(engagement_key_plan(fix_plans, engagement_fix_sql, lead, 2,
												 (Oid[]) {UUIDOID, UUIDARRAYOID}),
							 fargs, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not update the engagement aggregates");
		if (SPI_execute_plan(engagement_key_plan(rebase_plans, engagement_rebase_sql, lead, 3,
												 (Oid[]) {UUIDOID, UUIDARRAYOID, FLOAT8OID}),
							 rargs, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not update the engagement aggregates");
	}
}

static const char *const account_conflict_sql =
" ON CONFLICT (tenant_id, account_id) DO UPDATE SET"
" contact_count = e.contact_count OPERATOR(pg_catalog.+) excluded.contact_count,"
" activity_count = e.activity_count OPERATOR(pg_catalog.+) excluded.activity_count,"
" last_activity_at = GREATEST(e.last_activity_at, excluded.last_activity_at),"
" open_opportunity_count = e.open_opportunity_count OPERATOR(pg_catalog.+) excluded.open_opportunity_count,"
" open_amounts = CASE WHEN excluded.open_amounts OPERATOR(pg_catalog.=) '{}' THEN e.open_amounts"
"  ELSE crm.engagement_add_amounts(e.open_amounts, excluded.open_amounts) END,"
" won_amounts = CASE WHEN excluded.won_amounts OPERATOR(pg_catalog.=) '{}' THEN e.won_amounts"
"  ELSE crm.engagement_add_amounts(e.won_amounts, excluded.won_amounts) END";

static void
account_write(AggDelta **deltas, int n)
{
	Datum	   *keys = palloc(sizeof(Datum) * n);
	Datum	   *contacts = palloc(sizeof(Datum) * n);
	Datum	   *counts = palloc(sizeof(Datum) * n);
	Datum	   *last = palloc(sizeof(Datum) * n);
	bool	   *lastnull = palloc(sizeof(bool) * n);
	Datum	   *open = palloc(sizeof(Datum) * n);
	Datum	   *open_amt = palloc(sizeof(Datum) * n);
	Datum	   *won_amt = palloc(sizeof(Datum) * n);
	Datum	   *adds = palloc(sizeof(Datum) * n);
	Datum	   *fix = palloc(sizeof(Datum) * n);
	int			nfix = 0;
	Datum		args[9];
	pg_uuid_t	tenant = deltas[0]->key.tenant;

	if (account_upsert_plan == NULL)
	{
		Oid			types[9] = {UUIDOID, UUIDARRAYOID, INT8ARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID,
		INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, BOOLARRAYOID};
		Oid			one_types[8] = {UUIDOID, UUIDOID, INT8OID, INT8OID, TIMESTAMPTZOID,
		INT8OID, TEXTOID, TEXTOID};

		account_upsert_plan = crm_prepare_kept_generic(psprintf("%s%s",
																 "INSERT INTO crm.account_summary AS e (tenant_id, account_id, contact_count, activity_count,"
																 " last_activity_at, open_opportunity_count, open_amounts, won_amounts)"
																 " SELECT $1, x.k, x.c, x.n, x.l, x.o, x.oa::pg_catalog.jsonb, x.wa::pg_catalog.jsonb"
																 " FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9)) AS x(k, c, n, l, o, oa, wa, a)"
																 " WHERE x.a OR EXISTS (SELECT 1 FROM crm.account_summary e2"
																 "  WHERE e2.tenant_id OPERATOR(pg_catalog.=) $1 AND e2.account_id OPERATOR(pg_catalog.=) x.k)"
																 " ORDER BY x.k",
																 account_conflict_sql),
													   9, types);
		/* one account something was put in: scalar parameters, one VALUES row */
		account_upsert_one_plan = crm_prepare_kept_generic(psprintf("%s%s",
																	 "INSERT INTO crm.account_summary AS e (tenant_id, account_id, contact_count, activity_count,"
																	 " last_activity_at, open_opportunity_count, open_amounts, won_amounts)"
																	 " VALUES ($1, $2, $3, $4, $5, $6, $7::pg_catalog.jsonb, $8::pg_catalog.jsonb)",
																	 account_conflict_sql),
														   8, one_types);
	}
	if (account_fix_plan == NULL)
	{
		Oid			types[2] = {UUIDOID, UUIDARRAYOID};

		account_fix_plan = crm_prepare_kept_generic(
										"UPDATE crm.account_summary e SET"
										" last_activity_at = (SELECT pg_catalog.max(a.occurred_at) FROM crm.activity a"
										"  WHERE a.tenant_id OPERATOR(pg_catalog.=) $1 AND a.account_id OPERATOR(pg_catalog.=) e.account_id"
										"  AND a.status OPERATOR(pg_catalog.=) 'completed')"
										" WHERE e.tenant_id OPERATOR(pg_catalog.=) $1 AND e.account_id OPERATOR(pg_catalog.=) ANY ($2)",
										2, types);
	}

	for (int i = 0; i < n; i++)
	{
		AggDelta   *d = deltas[i];

		keys[i] = UUIDPGetDatum(&d->key.id);
		contacts[i] = Int64GetDatum(d->contacts);
		counts[i] = Int64GetDatum(d->count);
		last[i] = opt_ts(d->last, &lastnull[i]);
		open[i] = Int64GetDatum(d->open_count);
		open_amt[i] = CStringGetTextDatum(named_json(d->open_amounts, true));
		won_amt[i] = CStringGetTextDatum(named_json(d->won_amounts, true));
		adds[i] = BoolGetDatum(d->has_add);
		if (d->removed_activity)
			fix[nfix++] = keys[i];
	}
	args[0] = UUIDPGetDatum(&tenant);
	args[1] = simple_array(keys, n, UUIDOID);
	args[2] = simple_array(contacts, n, INT8OID);
	args[3] = simple_array(counts, n, INT8OID);
	args[4] = ts_array(last, lastnull, n);
	args[5] = simple_array(open, n, INT8OID);
	args[6] = simple_array(open_amt, n, TEXTOID);
	args[7] = simple_array(won_amt, n, TEXTOID);
	args[8] = simple_array(adds, n, BOOLOID);
	if (n == 1 && deltas[0]->has_add)
	{
		Datum		one[8] = {args[0], keys[0], contacts[0], counts[0], last[0], open[0],
		open_amt[0], won_amt[0]};
		char		nulls[8] = {' ', ' ', ' ', ' ', lastnull[0] ? 'n' : ' ', ' ', ' ', ' '};

		if (SPI_execute_plan(account_upsert_one_plan, one, nulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not update the account summaries");
	}
	else if (SPI_execute_plan(account_upsert_plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not update the account summaries");
	if (nfix > 0)
	{
		Datum		fargs[2] = {UUIDPGetDatum(&tenant), simple_array(fix, nfix, UUIDOID)};

		if (SPI_execute_plan(account_fix_plan, fargs, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not update the account summaries");
	}
}

/* Write every delta of a hash, one tenant at a time, keys in order. */
static void
write_all(TrackState *st, HTAB *hash, int kind)
{
	int			n;
	AggDelta  **all;
	int			start = 0;

	if (hash_get_num_entries(hash) == 0)
		return;
	all = sorted_deltas(hash, &n);
	while (start < n)
	{
		int			end = start + 1;

		while (end < n && memcmp(&all[end]->key.tenant, &all[start]->key.tenant, sizeof(pg_uuid_t)) == 0)
			end++;
		aggregates_lock(&all[start]->key.tenant, ShareLock);
		if (kind == 2)
			account_write(all + start, end - start);
		else
			engagement_write(st, kind == 1, all + start, end - start);
		start = end;
	}
}

/*
 * crm.engagement_track(): see the file header.  The aggregate tables are
 * the server's (no role may write them), so the upserts run as the owner of
 * the table the trigger is on (the extension's owner), as the stage
 * history does; the rows they write come from the statement's own
 * transition tables, so with their own tenant_id.
 */
Datum
crm_engagement_track(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	tupdesc;
	const char *relname;
	Tuplestorestate *oldrows;
	Tuplestorestate *newrows;
	TupleTableSlot *oldslot = NULL;
	TupleTableSlot *newslot = NULL;
	TrackState	st;
	MemoryContext rowcxt;
	MemoryContext old;
	Oid			save_userid;
	int			save_sec_context;
	int			kind;
	ActivityCols ac;
	int			watch[9];
	int			nwatch = 0;
	int			opp_att[5];
	int			contact_att[2];

	crm_require_trigger(fcinfo, "engagement_track", false, false);
	crm_require_trigger_nargs(fcinfo, "engagement_track", 1);
	if (crm_loading_dump())
		return PointerGetDatum(NULL);

	rel = trigdata->tg_relation;
	tupdesc = RelationGetDescr(rel);
	/*
	 * The table kind is the trigger's argument, not the relation's name: on
	 * a Citus worker the trigger fires on a shard (crm.activity_102008).
	 */
	relname = trigdata->tg_trigger->tgargs[0];
	oldrows = trigdata->tg_oldtable;
	newrows = trigdata->tg_newtable;
	if ((TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) && newrows == NULL) ||
		(TRIGGER_FIRED_BY_DELETE(trigdata->tg_event) && oldrows == NULL) ||
		(TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) && (oldrows == NULL || newrows == NULL)) ||
		TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"engagement_track\" must be fired AFTER INSERT, UPDATE or DELETE with transition tables")));

	if (strcmp(relname, "activity") == 0)
	{
		kind = 0;
		ac.tenant = crm_attnum(rel, "tenant_id", UUIDOID);
		ac.contact = crm_attnum(rel, "contact_id", UUIDOID);
		ac.lead = crm_attnum(rel, "lead_id", UUIDOID);
		ac.account = crm_attnum(rel, "account_id", UUIDOID);
		ac.type = crm_attnum(rel, "activity_type", TEXTOID);
		ac.module = crm_attnum(rel, "module", TEXTOID);
		ac.direction = crm_attnum(rel, "direction", TEXTOID);
		ac.status = crm_attnum(rel, "status", TEXTOID);
		ac.occurred = crm_attnum(rel, "occurred_at", TIMESTAMPTZOID);
		memcpy(watch, &ac, sizeof(int) * 9);
		nwatch = 9;
	}
	else if (strcmp(relname, "contact") == 0)
	{
		kind = 1;
		contact_att[0] = crm_attnum(rel, "tenant_id", UUIDOID);
		contact_att[1] = crm_attnum(rel, "account_id", UUIDOID);
		memcpy(watch, contact_att, sizeof(int) * 2);
		nwatch = 2;
	}
	else if (strcmp(relname, "opportunity") == 0)
	{
		kind = 2;
		opp_att[0] = crm_attnum(rel, "tenant_id", UUIDOID);
		opp_att[1] = crm_attnum(rel, "account_id", UUIDOID);
		opp_att[2] = crm_attnum(rel, "status", TEXTOID);
		opp_att[3] = crm_attnum(rel, "amount", NUMERICOID);
		opp_att[4] = crm_attnum(rel, "currency", TEXTOID);
		memcpy(watch, opp_att, sizeof(int) * 5);
		nwatch = 5;
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"engagement_track\" takes \"activity\", \"contact\" or \"opportunity\" as its trigger argument, not \"%s\"", relname)));

	st.cxt = CurrentMemoryContext;
	st.contacts = make_hash("crm contact deltas", sizeof(AggKey), sizeof(AggDelta), st.cxt);
	st.leads = make_hash("crm lead deltas", sizeof(AggKey), sizeof(AggDelta), st.cxt);
	st.accounts = make_hash("crm account deltas", sizeof(AggKey), sizeof(AggDelta), st.cxt);
	st.weights = make_hash("crm weights", sizeof(WeightKey), sizeof(WeightEntry), st.cxt);
	st.half_lives = make_hash("crm half-lives", sizeof(pg_uuid_t), sizeof(HalfLifeEntry), st.cxt);
	rowcxt = AllocSetContextCreate(CurrentMemoryContext, "crm engagement row", ALLOCSET_SMALL_SIZES);

	if (oldrows)
	{
		oldslot = MakeSingleTupleTableSlot(tupdesc, &TTSOpsMinimalTuple);
		crm_transition_rewind(oldrows);
	}
	if (newrows)
	{
		newslot = MakeSingleTupleTableSlot(tupdesc, &TTSOpsMinimalTuple);
		crm_transition_rewind(newrows);
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(rel->rd_rel->relowner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		/* SPI_connect switched to its own context; deltas live in ours */
		old = MemoryContextSwitchTo(rowcxt);

		for (;;)
		{
			bool		have_old;
			bool		have_new;

			/*
			 * A spilled transition table hands out each row in memory of the
			 * current context, freed by the slot at the next fetch: fetch
			 * outside the per-row context that is reset below.
			 */
			MemoryContextSwitchTo(st.cxt);
			have_old = oldrows && tuplestore_gettupleslot(oldrows, true, false, oldslot);
			have_new = newrows && tuplestore_gettupleslot(newrows, true, false, newslot);
			MemoryContextSwitchTo(rowcxt);
			if (!have_old && !have_new)
				break;
			MemoryContextReset(rowcxt);
			/* an UPDATE that changed nothing counted is no change at all */
			if (have_old && have_new && rows_same(oldslot, newslot, watch, nwatch))
				continue;
			for (int sign = -1; sign <= 1; sign += 2)
			{
				TupleTableSlot *slot = sign < 0 ? (have_old ? oldslot : NULL) : (have_new ? newslot : NULL);

				if (slot == NULL)
					continue;
				if (kind == 0)
					activity_row(&st, slot, &ac, sign);
				else if (kind == 1)
					contact_row(&st, slot, contact_att[0], contact_att[1], sign);
				else
					opportunity_row(&st, slot, opp_att, sign);
			}
		}
		MemoryContextSwitchTo(old);

		/* always in the same order: contacts, leads, accounts */
		write_all(&st, st.contacts, 0);
		write_all(&st, st.leads, 1);
		write_all(&st, st.accounts, 2);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();

	SPI_finish();
	if (oldslot)
		ExecDropSingleTupleTableSlot(oldslot);
	if (newslot)
		ExecDropSingleTupleTableSlot(newslot);
	MemoryContextDelete(rowcxt);
	return PointerGetDatum(NULL);
}

/*
 * crm.engagement_combine(v1, r1, v2, r2, half_life_seconds): two decayed
 * sums, each at its own reference time, as one sum at the later of the two.
 * A NULL reference means an empty sum.
 */
Datum
crm_engagement_combine(PG_FUNCTION_ARGS)
{
	double		h = PG_GETARG_FLOAT8(4);
	double		v1 = PG_ARGISNULL(0) || PG_ARGISNULL(1) ? 0.0 : PG_GETARG_FLOAT8(0);
	double		v2 = PG_ARGISNULL(2) || PG_ARGISNULL(3) ? 0.0 : PG_GETARG_FLOAT8(2);
	TimestampTz r1 = PG_ARGISNULL(1) ? DT_NOBEGIN : PG_GETARG_TIMESTAMPTZ(1);
	TimestampTz r2 = PG_ARGISNULL(3) ? DT_NOBEGIN : PG_GETARG_TIMESTAMPTZ(3);
	TimestampTz ref = Max(r1, r2);

	if (PG_ARGISNULL(4) || !(h > 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("half-life must be positive")));
	if (v1 != 0.0)
		v1 *= pow(2.0, -((double) (ref - r1) / USECS_PER_SEC) / h);
	if (v2 != 0.0)
		v2 *= pow(2.0, -((double) (ref - r2) / USECS_PER_SEC) / h);
	PG_RETURN_FLOAT8(v1 + v2);
}

/*
 * crm.engagement_lead_converted(): AFTER UPDATE FOR EACH STATEMENT on
 * crm.lead.  For every lead the statement converted (converted_contact_id
 * newly set), its activities without a contact are linked to that contact
 * and, where they have none, to the account: the contact's engagement then
 * continues the lead's.  Runs as the owner (the link is the server's
 * doing, whatever rows the user may see), one UPDATE per converted lead
 * with tenant_id a parameter; the activity triggers keep the aggregates.
 */
Datum
crm_engagement_lead_converted(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleTableSlot *oldslot;
	TupleTableSlot *newslot;
	int			tenant_att,
				id_att,
				contact_att,
				account_att;
	Oid			save_userid;
	int			save_sec_context;
	bool		connected = false;

	crm_require_trigger(fcinfo, "engagement_lead_converted", false, false);
	if (!TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ||
		trigdata->tg_oldtable == NULL || trigdata->tg_newtable == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"engagement_lead_converted\" must be fired AFTER UPDATE with transition tables")));
	if (crm_loading_dump())
		return PointerGetDatum(NULL);

	rel = trigdata->tg_relation;
	tenant_att = crm_attnum(rel, "tenant_id", UUIDOID);
	id_att = crm_attnum(rel, "id", UUIDOID);
	contact_att = crm_attnum(rel, "converted_contact_id", UUIDOID);
	account_att = crm_attnum(rel, "converted_account_id", UUIDOID);
	oldslot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsMinimalTuple);
	newslot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsMinimalTuple);
	crm_transition_rewind(trigdata->tg_oldtable);
	crm_transition_rewind(trigdata->tg_newtable);

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	while (tuplestore_gettupleslot(trigdata->tg_newtable, true, false, newslot))
	{
		bool		oldnull,
					newnull,
					accnull,
					isnull;
		Datum		args[4];
		char		nulls[4] = {' ', ' ', ' ', ' '};

		if (!tuplestore_gettupleslot(trigdata->tg_oldtable, true, false, oldslot))
			elog(ERROR, "transition tables of different lengths");
		(void) slot_getattr(oldslot, contact_att, &oldnull);
		args[2] = slot_getattr(newslot, contact_att, &newnull);
		if (!oldnull || newnull)
			continue;
		args[0] = slot_getattr(newslot, tenant_att, &isnull);
		args[1] = slot_getattr(newslot, id_att, &isnull);
		args[3] = slot_getattr(newslot, account_att, &accnull);
		if (accnull)
			nulls[3] = 'n';

		if (!connected)
		{
			if (SPI_connect() != SPI_OK_CONNECT)
				elog(ERROR, "SPI_connect failed");
			connected = true;
		}
		if (convert_plan == NULL)
		{
			Oid			types[4] = {UUIDOID, UUIDOID, UUIDOID, UUIDOID};

			convert_plan = crm_prepare_kept(
										"UPDATE crm.activity a SET contact_id = $3,"
										" account_id = coalesce(a.account_id, $4)"
										" WHERE a.tenant_id OPERATOR(pg_catalog.=) $1"
										" AND a.lead_id OPERATOR(pg_catalog.=) $2 AND a.contact_id IS NULL",
										4, types);
		}
		SetUserIdAndSecContext(rel->rd_rel->relowner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
		PG_TRY();
		{
			if (SPI_execute_plan(convert_plan, args, nulls, false, 0) != SPI_OK_UPDATE)
				elog(ERROR, "could not link the activities of a converted lead");
		}
		PG_FINALLY();
		{
			SetUserIdAndSecContext(save_userid, save_sec_context);
		}
		PG_END_TRY();
	}
	/* the slots may own tuples read into SPI's memory: drop them first */
	ExecDropSingleTupleTableSlot(oldslot);
	ExecDropSingleTupleTableSlot(newslot);
	if (connected)
		SPI_finish();
	return PointerGetDatum(NULL);
}

/*
 * A tenant's aggregate lock: shared by the triggers that write its
 * aggregates (write_all), exclusive for crm.refresh_aggregates() of the
 * tenant, which deletes and recomputes its rows: a trigger's change then
 * lands either before the rebuild reads the rows or after it wrote them,
 * never in between, and no other tenant waits (a lock on the tables made
 * every tenant's writes wait while one tenant's admin changed a weight).
 * An advisory lock of a class of its own (the fourth field; PostgreSQL's
 * functions use 1 and 2, Citus from 4 up), keyed by the tenant's uuid
 * folded to 64 bits: two tenants that fold alike merely wait for each
 * other.
 */
#define AGGREGATE_LOCK_CLASS 0x6372

static void
aggregates_lock(const pg_uuid_t *tenant, LOCKMODE mode)
{
	LOCKTAG		tag;
	uint32		key1 = 0;
	uint32		key2 = 0;

	for (int i = 0; i < 4; i++)
	{
		key1 = (key1 << 8) | (tenant->data[i] ^ tenant->data[i + 8]);
		key2 = (key2 << 8) | (tenant->data[i + 4] ^ tenant->data[i + 12]);
	}
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, key1, key2, AGGREGATE_LOCK_CLASS);
	(void) LockAcquire(&tag, mode, false, false);
}

/*
 * crm.refresh_aggregates(tenant): recompute from the rows.  The rebuild
 * writes the aggregate tables, which no role may write, so it runs as their
 * owner; the fence is checked here first: a session may refresh the tenant
 * it acts for, a superuser any tenant or (NULL, acting for none) all.
 */
Datum
crm_engagement_refresh(PG_FUNCTION_ARGS)
{
	pg_uuid_t	current_tenant;
	bool		has_current;
	Datum		args[1];
	char		nulls[1] = {' '};
	Oid			save_userid;
	int			save_sec_context;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	has_current = crm_current_tenant_id(&current_tenant);

	if (!PG_ARGISNULL(0))
	{
		pg_uuid_t  *wanted = PG_GETARG_UUID_P(0);

		if (!superuser() &&
			(!has_current || memcmp(wanted, &current_tenant, sizeof(pg_uuid_t)) != 0))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("tenant %s is not the tenant this session acts for",
							DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(wanted)))),
					 errdetail("A session refreshes the aggregates of its own tenant only.")));
		args[0] = UUIDPGetDatum(wanted);
	}
	else if (has_current)
		args[0] = UUIDPGetDatum(&current_tenant);
	else if (superuser())
		nulls[0] = 'n';
	else
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("no tenant to refresh the aggregates of"),
				 errhint("Act for a tenant (crm.tenant_id or a mapping made with crm.grant_tenant_access).")));

	if (rebuild_plan == NULL)
	{
		Oid			types[1] = {UUIDOID};

		rebuild_plan = crm_prepare_kept("SELECT crm.aggregates_rebuild($1)", 1, types);
	}
	if (nulls[0] != 'n')
		aggregates_lock(DatumGetUUIDP(args[0]), ExclusiveLock);
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(crm_table_owner("contact_engagement"),
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		if (SPI_execute_plan(rebuild_plan, args, nulls, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not rebuild the aggregates");
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
	SPI_finish();
	PG_RETURN_VOID();
}

/* list_sort comparator: tenants (pg_uuid_t *) in byte order */
static int
tenant_order(const ListCell *a, const ListCell *b)
{
	return memcmp(lfirst(a), lfirst(b), sizeof(pg_uuid_t));
}

/* The tenant_id of every row of a transition table, appended to tenants. */
static List *
transition_tenants(Relation rel, Tuplestorestate *rows, List *tenants)
{
	TupleTableSlot *slot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsMinimalTuple);
	AttrNumber	att = crm_attnum(rel, "tenant_id", UUIDOID);

	crm_transition_rewind(rows);
	while (tuplestore_gettupleslot(rows, true, false, slot))
	{
		bool		isnull;
		Datum		d = slot_getattr(slot, att, &isnull);

		if (!isnull)
		{
			pg_uuid_t  *t = palloc(sizeof(pg_uuid_t));

			*t = *DatumGetUUIDP(d);
			tenants = lappend(tenants, t);
		}
	}
	ExecDropSingleTupleTableSlot(slot);
	return tenants;
}

/*
 * crm.engagement_settings_changed(): AFTER FOR EACH STATEMENT on
 * crm.activity_weight and crm.engagement_setting (INSERT, UPDATE and
 * DELETE with their transition tables, and TRUNCATE), on
 * crm.activity_type (UPDATE OF default_weight), and AFTER TRUNCATE on the
 * tables the aggregates are made from.  A changed weight or half-life
 * recomputes the aggregates of the tenants of the rows the statement
 * changed (read here in C: a plan cannot see the transition tables on a
 * Citus shard), in tenant order; a default weight or a TRUNCATE (the
 * operator's statements) those of every tenant.  The recomputation is
 * crm.refresh_aggregates(), with its fence, as the caller.  A restore
 * (row_security off, replica mode) brings the aggregates with it.
 */
Datum
crm_engagement_settings_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	List	   *tenants = NIL;
	ListCell   *lc;
	static SPIPlanPtr refresh_one_plan = NULL;
	static SPIPlanPtr refresh_all_plan = NULL;

	crm_require_trigger(fcinfo, "engagement_settings_changed", false, false);
	if (crm_loading_dump())
		return PointerGetDatum(NULL);
	rel = trigdata->tg_relation;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event) ||
		strcmp(RelationGetRelationName(rel), "activity_type") == 0)
	{
		if (refresh_all_plan == NULL)
			refresh_all_plan = crm_prepare_kept(
												"SELECT crm.refresh_aggregates(x.tenant_id) FROM crm.tenant x ORDER BY x.tenant_id",
												0, NULL);
		if (SPI_execute_plan(refresh_all_plan, NULL, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not refresh the aggregates");
		SPI_finish();
		return PointerGetDatum(NULL);
	}
	if (trigdata->tg_newtable == NULL && trigdata->tg_oldtable == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"engagement_settings_changed\" must be fired with transition tables on \"%s\"",
						RelationGetRelationName(rel))));
	if (trigdata->tg_newtable != NULL)
		tenants = transition_tenants(rel, trigdata->tg_newtable, tenants);
	if (trigdata->tg_oldtable != NULL)
		tenants = transition_tenants(rel, trigdata->tg_oldtable, tenants);
	list_sort(tenants, tenant_order);
	if (refresh_one_plan == NULL)
	{
		Oid			types[1] = {UUIDOID};

		refresh_one_plan = crm_prepare_kept("SELECT crm.refresh_aggregates($1)", 1, types);
	}
	foreach(lc, tenants)
	{
		Datum		arg = UUIDPGetDatum(lfirst(lc));

		/* sorted: a tenant named by several rows is refreshed once */
		if (foreach_current_index(lc) > 0 &&
			memcmp(lfirst(lc), list_nth(tenants, foreach_current_index(lc) - 1), sizeof(pg_uuid_t)) == 0)
			continue;
		if (SPI_execute_plan(refresh_one_plan, &arg, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not refresh the aggregates");
	}
	SPI_finish();
	return PointerGetDatum(NULL);
}

/* One key of a merged object and its running sum. */
typedef struct MergeItem
{
	char	   *key;
	int			keylen;
	Datum		sum;			/* numeric */
} MergeItem;

static void
merge_object(Jsonb *obj, MergeItem **items, int *n, int *cap)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *key = NULL;
	int			keylen = 0;

	if (!JB_ROOT_IS_OBJECT(obj))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("counts must be a JSON object")));
	it = JsonbIteratorInit(&obj->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			key = v.val.string.val;
			keylen = v.val.string.len;
		}
		else if (tok == WJB_VALUE)
		{
			int			i;

			if (v.type != jbvNumeric)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("counts must be numbers")));
			for (i = 0; i < *n; i++)
				if ((*items)[i].keylen == keylen && memcmp((*items)[i].key, key, keylen) == 0)
					break;
			if (i == *n)
			{
				if (*n == *cap)
				{
					*cap *= 2;
					*items = repalloc(*items, sizeof(MergeItem) * *cap);
				}
				(*items)[i].key = key;
				(*items)[i].keylen = keylen;
				(*items)[i].sum = NumericGetDatum(v.val.numeric);
				(*n)++;
			}
			else
				(*items)[i].sum = DirectFunctionCall2(numeric_add, (*items)[i].sum,
													  NumericGetDatum(v.val.numeric));
		}
	}
}

/*
 * crm.engagement_add_counts(a, b) and crm.engagement_add_amounts(a, b):
 * two {"name": number} objects added key by key, keys whose sum is zero left
 * out.  In C because the upserts call them once per aggregate row.
 */
PG_FUNCTION_INFO_V1(crm_engagement_add_counts);

Datum
crm_engagement_add_counts(PG_FUNCTION_ARGS)
{
	int			n = 0;
	int			cap = 8;
	MergeItem  *items = palloc(sizeof(MergeItem) * cap);
	JsonbParseState *state = NULL;
	JsonbValue *res;
	Datum		zero = DirectFunctionCall1(int8_numeric, Int64GetDatum(0));

	if (!PG_ARGISNULL(0))
		merge_object(PG_GETARG_JSONB_P(0), &items, &n, &cap);
	if (!PG_ARGISNULL(1))
		merge_object(PG_GETARG_JSONB_P(1), &items, &n, &cap);

	(void) pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < n; i++)
	{
		JsonbValue	k;
		JsonbValue	v;

		if (DatumGetBool(DirectFunctionCall2(numeric_eq, items[i].sum, zero)))
			continue;
		k.type = jbvString;
		k.val.string.val = items[i].key;
		k.val.string.len = items[i].keylen;
		v.type = jbvNumeric;
		v.val.numeric = DatumGetNumeric(items[i].sum);
		(void) pushJsonbValue(&state, WJB_KEY, &k);
		(void) pushJsonbValue(&state, WJB_VALUE, &v);
	}
	res = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	PG_RETURN_JSONB_P(JsonbValueToJsonb(res));
}
