/*-------------------------------------------------------------------------
 *
 * scoring.c
 *	  Lead scoring: fit (shared/seeds/002) plus engagement (seeds/003),
 *	  weighted by a per-tenant scoring model, kept live by triggers.
 *
 * A score is computed by one function, compute_score(), from the lead's fit
 * fields, the time-decayed counts of its completed activities (and, once
 * converted, those of its contact) and the model; the triggers and the SQL
 * functions all call it, so a stored score always equals crm.score_lead()
 * for the time it was computed (lead.scored_at).
 *
 *	crm.scoring_lead_sync(), BEFORE INSERT OR UPDATE ON crm.lead, FOR EACH ROW
 *		scores a new lead, or one whose fit fields, e-mail, contact or model
 *		changed, or whose derived columns an UPDATE wrote (a client's values
 *		are ignored: the lead is scored as of now; on Citus this is how the
 *		coordinator's batch UPDATE gets its values on a worker).
 *
 *	crm.scoring_lead_history(), AFTER INSERT / UPDATE ON crm.lead, FOR EACH
 *	STATEMENT, transition tables read here in C
 *		one crm.lead_score_history row per lead whose score changed, written
 *		by one INSERT from arrays; and a LeadQualified event in the outbox
 *		(src/outbox.c) per lead whose score reached its model's threshold.
 *
 *	crm.scoring_refresh(), AFTER INSERT / UPDATE / DELETE ON crm.activity
 *	and crm.contact, FOR EACH STATEMENT
 *		finds the leads whose engagement (activities of the lead or of its
 *		converted contact) or profiling consent (a contact with the lead's
 *		e-mail) the statement changed, and rescores them with one UPDATE
 *		per tenant: a 100k-row COPY of activities costs one pass.
 *
 * Integer arithmetic keeps the explanation exact: each factor earns whole
 * model points, the total is round((fit% x fit + engagement% x engagement)
 * / 100), and the factors' shares of it are apportioned by largest
 * remainder, so the rows of crm.explain_score() add up to the score.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(crm_scoring_lead_sync);
PG_FUNCTION_INFO_V1(crm_scoring_lead_history);
PG_FUNCTION_INFO_V1(crm_scoring_refresh);
PG_FUNCTION_INFO_V1(crm_scoring_rescore);
PG_FUNCTION_INFO_V1(crm_scoring_score_lead);
PG_FUNCTION_INFO_V1(crm_scoring_explain_score);

#define MAX_BANDS 32
#define MAX_TYPES 64

enum
{
	F_SIZE,
	F_INDUSTRY,
	F_BUDGET,
	F_TIMELINE,
	F_DECISION,
	NUM_FIT
};

static const char *const fit_names[NUM_FIT] = {
	"company_size", "industry", "budget", "purchase_timeline", "decision_maker"
};

/* The value sets of crm.lead's CHECK constraints. */
static const char *const industry_names[] = {
	"technology", "finance", "healthcare", "education", "manufacturing",
	"retail", "real_estate", "consulting", "media", "energy",
	"government", "nonprofit", "other"
};
#define NUM_INDUSTRIES lengthof(industry_names)

static const char *const timeline_names[] = {
	"immediate", "within_month", "within_quarter", "within_year", "no_timeline"
};
#define NUM_TIMELINES lengthof(timeline_names)

typedef struct Band
{
	double		min;
	int			points;
} Band;

typedef struct ModelKey
{
	pg_uuid_t	tenant;
	pg_uuid_t	id;				/* zero: the tenant's default */
} ModelKey;

/* A scoring model as the scorer uses it. */
typedef struct Model
{
	ModelKey	key;
	bool		loaded;			/* completely read (an error leaves it false) */
	CrmCommandKey checked;		/* the command that last found it current */
	TransactionId row_xmin;		/* the version of the model row read */
	ItemPointerData row_tid;
	bool		found;
	bool		active;
	pg_uuid_t	id;
	int			threshold;
	int			w_fit;
	int			w_eng;
	int			nbands[2];		/* company_size, budget */
	Band		bands[2][MAX_BANDS];
	int			industry_points[NUM_INDUSTRIES];
	int			timeline_points[NUM_TIMELINES];
	int			decision_yes;
	int			decision_no;
	int			fit_max[NUM_FIT];
	double		half_life_days;
	int			ntypes;
	char		types[MAX_TYPES][NAMEDATALEN];
	double		type_points[MAX_TYPES];
	int			type_cap[MAX_TYPES];
} Model;

/* What a lead's score depends on. */
typedef struct LeadInput
{
	pg_uuid_t	tenant;
	pg_uuid_t	lead;
	bool		size_null;
	int32		size;
	char	   *industry;
	bool		budget_null;
	double		budget;
	char	   *timeline;
	int			decision;		/* 1 yes, 0 no, -1 unknown */
	char	   *email;
	bool		has_contact;
	pg_uuid_t	contact;
	bool		has_model;
	pg_uuid_t	model;
} LeadInput;

typedef struct ScoreResult
{
	Model	   *model;
	bool		opted_out;
	char	   *opted_out_email;
	int			fit_points[NUM_FIT];
	char	   *fit_value[NUM_FIT];
	int			eng_points[MAX_TYPES];
	double		eng_decayed[MAX_TYPES];
	int			eng_count[MAX_TYPES];
	int			fit;
	int			eng;
	int			total;
} ScoreResult;

/* Why the leads being rescored by this backend's own UPDATE are. */
typedef enum RescoreContext
{
	RESCORE_NONE,
	RESCORE_ACTIVITY,
	RESCORE_CONSENT,
	RESCORE_MODEL,				/* a model changed, or was given to the leads */
	RESCORE_REFRESH				/* rescore_leads(): decay, unless the model moved */
} RescoreContext;

static RescoreContext rescore_context = RESCORE_NONE;

/*
 * Set while batch_update() runs its UPDATE: the row trigger keeps the
 * values that UPDATE brings (computed for scored_at = rescore_trusted_as_of).
 */
static bool rescore_trusted = false;
static TimestampTz rescore_trusted_as_of = 0;

static HTAB *model_cache = NULL;
static MemoryContext model_context = NULL;
static CrmCommandKey model_cache_key;

static SPIPlanPtr model_plan = NULL;
static SPIPlanPtr model_check_plan = NULL;
static SPIPlanPtr activity_plan = NULL;
static SPIPlanPtr optout_plan = NULL;
static SPIPlanPtr lead_plan = NULL;
static SPIPlanPtr history_plan = NULL;
static SPIPlanPtr contact_leads_plan = NULL;

static bool
uuid_equal(const pg_uuid_t *a, const pg_uuid_t *b)
{
	return memcmp(a, b, sizeof(pg_uuid_t)) == 0;
}

/*
 * The owner of crm.lead (the extension's owner).  Scoring reads a lead's
 * activities and its contact's consent as the owner, so that a score does
 * not depend on which user's row-level view the change came through; the
 * tenant is always an explicit filter.
 */
static Oid
scoring_owner(void)
{
	Oid			relid = get_relname_relid("lead", get_namespace_oid("crm", false));
	HeapTuple	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation crm.lead");
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	return owner;
}

/* Models -------------------------------------------------------------- */

/*
 * The model cache lives as long as the backend: loading a model expands
 * its JSON weights with a query, which a single-row activity INSERT would
 * otherwise pay every time.  An entry is checked once per command against
 * the model row's version (xmin and ctid, read by a one-row index probe)
 * and loaded again when the row changed.  A backend that met very many
 * tenants starts the cache afresh, between commands only, so that no
 * Model pointer a caller holds goes stale.
 */
static void
model_cache_prepare(void)
{
	CrmCommandKey now = crm_command_key_current();
	HASHCTL		ctl;

	if (model_cache != NULL &&
		(crm_command_key_equal(model_cache_key, now) || hash_get_num_entries(model_cache) < 1000))
	{
		model_cache_key = now;
		return;
	}
	if (model_context == NULL)
		model_context = AllocSetContextCreate(TopMemoryContext, "crm scoring models",
											  ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(model_context);
	ctl.keysize = sizeof(ModelKey);
	ctl.entrysize = sizeof(Model);
	ctl.hcxt = model_context;
	model_cache = hash_create("crm scoring models", 8, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	model_cache_key = now;
}

static int
name_index(const char *const *names, int n, const char *value)
{
	for (int i = 0; i < n; i++)
		if (strcmp(names[i], value) == 0)
			return i;
	return -1;
}

static void
model_invalid(const Model *m, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("scoring model %s cannot be used: %s", crm_uuid_text(&m->id), what),
			 errhint("Call crm.validate_scoring_model(weights) to see every problem.")));
}

/*
 * Load a model (id given) or the tenant's default (id NULL), through the
 * cache (see model_cache_prepare()).  Needs SPI connected.
 */
static Model *
model_load(const pg_uuid_t *tenant, const pg_uuid_t *id)
{
	ModelKey	key;
	Model	   *m;
	bool		hit;
	Datum		args[2];
	char		nulls[2] = {' ', ' '};

	model_cache_prepare();
	memset(&key, 0, sizeof(key));
	key.tenant = *tenant;
	if (id)
		key.id = *id;
	m = hash_search(model_cache, &key, HASH_ENTER, &hit);
	if (hit && m->loaded)
	{
		CrmCommandKey now = crm_command_key_current();
		bool		same;

		if (crm_command_key_equal(m->checked, now))
			return m;
		if (model_check_plan == NULL)
		{
			Oid			types[2] = {UUIDOID, UUIDOID};

			model_check_plan = crm_prepare_kept(
												"SELECT m.xmin, m.ctid FROM crm.scoring_model m"
												" WHERE m.tenant_id OPERATOR(pg_catalog.=) $1"
												" AND CASE WHEN $2 IS NULL THEN m.is_default"
												" ELSE m.id OPERATOR(pg_catalog.=) $2 END",
												2, types);
		}
		args[0] = UUIDPGetDatum(&key.tenant);
		args[1] = UUIDPGetDatum(&key.id);
		if (!id)
			nulls[1] = 'n';
		if (SPI_execute_plan(model_check_plan, args, nulls, true, 2) != SPI_OK_SELECT)
			elog(ERROR, "scoring model lookup failed");
		if (SPI_processed == 0)
			same = !m->found;
		else
		{
			bool		isnull;
			HeapTuple	tuple = SPI_tuptable->vals[0];

			same = m->found && SPI_processed == 1 &&
				DatumGetTransactionId(SPI_getbinval(tuple, SPI_tuptable->tupdesc, 1, &isnull)) == m->row_xmin &&
				ItemPointerEquals((ItemPointer) DatumGetPointer(SPI_getbinval(tuple, SPI_tuptable->tupdesc, 2, &isnull)),
								  &m->row_tid);
		}
		SPI_freetuptable(SPI_tuptable);
		if (same)
		{
			m->checked = now;
			return m;
		}
	}
	memset(((char *) m) + sizeof(ModelKey), 0, sizeof(Model) - sizeof(ModelKey));

	if (model_plan == NULL)
	{
		Oid			types[2] = {UUIDOID, UUIDOID};

		model_plan = crm_prepare_kept(
								  "SELECT m.id, m.threshold, m.active, r.factor, r.item,"
								  " r.min_value::pg_catalog.float8, r.points::pg_catalog.float8, r.cap,"
								  " m.xmin, m.ctid"
								  " FROM crm.scoring_model m"
								  " LEFT JOIN LATERAL crm.scoring_model_rows(m.weights) r ON true"
								  " WHERE m.tenant_id OPERATOR(pg_catalog.=) $1"
								  " AND CASE WHEN $2 IS NULL THEN m.is_default"
								  " ELSE m.id OPERATOR(pg_catalog.=) $2 END"
								  " ORDER BY r.factor, r.min_value, r.item",
								  2, types);
	}
	args[0] = UUIDPGetDatum(&key.tenant);
	args[1] = UUIDPGetDatum(&key.id);
	if (!id)
		nulls[1] = 'n';
	if (SPI_execute_plan(model_plan, args, nulls, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "scoring model lookup failed");

	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	tupdesc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *factor;
		char	   *item;
		double		min_value;
		double		points;
		bool		points_null;
		int			cap;

		if (i == 0)
		{
			m->found = true;
			memcpy(&m->id, DatumGetUUIDP(SPI_getbinval(tuple, tupdesc, 1, &isnull)), sizeof(pg_uuid_t));
			m->threshold = DatumGetInt32(SPI_getbinval(tuple, tupdesc, 2, &isnull));
			m->active = DatumGetBool(SPI_getbinval(tuple, tupdesc, 3, &isnull));
			m->row_xmin = DatumGetTransactionId(SPI_getbinval(tuple, tupdesc, 9, &isnull));
			ItemPointerCopy((ItemPointer) DatumGetPointer(SPI_getbinval(tuple, tupdesc, 10, &isnull)), &m->row_tid);
		}
		factor = SPI_getvalue(tuple, tupdesc, 4);
		if (factor == NULL)
			continue;
		item = SPI_getvalue(tuple, tupdesc, 5);
		min_value = DatumGetFloat8(SPI_getbinval(tuple, tupdesc, 6, &isnull));
		points = DatumGetFloat8(SPI_getbinval(tuple, tupdesc, 7, &points_null));
		cap = DatumGetInt32(SPI_getbinval(tuple, tupdesc, 8, &isnull));
		if (points_null || isnan(points) || points < 0)
			model_invalid(m, "points must be numbers of at least 0");

		if (strcmp(factor, "combine") == 0)
		{
			if (strcmp(item, "fit") == 0)
				m->w_fit = (int) points;
			else if (strcmp(item, "engagement") == 0)
				m->w_eng = (int) points;
		}
		else if (strcmp(factor, "company_size") == 0 || strcmp(factor, "budget") == 0)
		{
			int			b = strcmp(factor, "budget") == 0;

			if (m->nbands[b] >= MAX_BANDS)
				model_invalid(m, "too many bands");
			m->bands[b][m->nbands[b]].min = min_value;
			m->bands[b][m->nbands[b]++].points = (int) points;
			m->fit_max[b ? F_BUDGET : F_SIZE] = Max(m->fit_max[b ? F_BUDGET : F_SIZE], (int) points);
		}
		else if (strcmp(factor, "industry") == 0)
		{
			int			k = name_index(industry_names, NUM_INDUSTRIES, item);

			if (k < 0)
				model_invalid(m, "unknown industry");
			m->industry_points[k] = (int) points;
			m->fit_max[F_INDUSTRY] = Max(m->fit_max[F_INDUSTRY], (int) points);
		}
		else if (strcmp(factor, "purchase_timeline") == 0)
		{
			int			k = name_index(timeline_names, NUM_TIMELINES, item);

			if (k < 0)
				model_invalid(m, "unknown purchase timeline");
			m->timeline_points[k] = (int) points;
			m->fit_max[F_TIMELINE] = Max(m->fit_max[F_TIMELINE], (int) points);
		}
		else if (strcmp(factor, "decision_maker") == 0)
		{
			if (strcmp(item, "yes") == 0)
				m->decision_yes = (int) points;
			else
				m->decision_no = (int) points;
			m->fit_max[F_DECISION] = Max(m->fit_max[F_DECISION], (int) points);
		}
		else if (strcmp(factor, "half_life_days") == 0)
			m->half_life_days = points;
		else if (strcmp(factor, "engagement") == 0)
		{
			if (m->ntypes >= MAX_TYPES)
				model_invalid(m, "too many activity types");
			strlcpy(m->types[m->ntypes], item, NAMEDATALEN);
			m->type_points[m->ntypes] = points;
			m->type_cap[m->ntypes++] = cap;
		}
	}
	if (m->found && m->ntypes > 0 && !(m->half_life_days > 0))
		model_invalid(m, "the engagement half-life must be greater than 0");
	m->checked = crm_command_key_current();
	m->loaded = true;
	return m;
}

/*
 * The model a lead is scored with: the one asked for (an error if the
 * tenant has no such model), else the lead's own while it is active, else
 * the tenant's default.
 */
static Model *
model_for(const LeadInput *in, const pg_uuid_t *requested)
{
	Model	   *m;

	if (requested)
	{
		m = model_load(&in->tenant, requested);
		if (!m->found)
			ereport(ERROR,
					(errcode(ERRCODE_NO_DATA_FOUND),
					 errmsg("scoring model %s does not exist", crm_uuid_text(requested))));
		return m;
	}
	if (in->has_model)
	{
		m = model_load(&in->tenant, &in->model);
		if (m->found && m->active)
			return m;
	}
	m = model_load(&in->tenant, NULL);
	if (!m->found)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("tenant %s has no default scoring model", crm_uuid_text(&in->tenant)),
				 errhint("Mark one scoring model of the tenant as default.")));
	return m;
}

/* Scoring ------------------------------------------------------------- */

static int
band_points(const Model *m, int b, double value)
{
	int			points = 0;

	for (int i = 0; i < m->nbands[b]; i++)
		if (value >= m->bands[b][i].min)
			points = m->bands[b][i].points;
	return points;
}

static void
check_opt_out(const LeadInput *in, ScoreResult *r)
{
	Datum		args[3];
	char		nulls[3] = {' ', ' ', ' '};

	if (in->email == NULL && !in->has_contact)
		return;
	if (optout_plan == NULL)
	{
		Oid			types[3] = {UUIDOID, TEXTOID, UUIDOID};

		optout_plan = crm_prepare_kept(
								   "SELECT c.email::pg_catalog.text FROM crm.contact c"
								   " WHERE c.tenant_id OPERATOR(pg_catalog.=) $1 AND c.profiling_opt_out"
								   " AND (crm.casefold(c.email) OPERATOR(pg_catalog.=) crm.casefold($2)"
								   "  OR c.id OPERATOR(pg_catalog.=) $3)"
								   " ORDER BY c.id LIMIT 1",
								   3, types);
	}
	args[0] = UUIDPGetDatum((pg_uuid_t *) &in->tenant);
	if (in->email)
		args[1] = CStringGetTextDatum(in->email);
	else
		nulls[1] = 'n';
	if (in->has_contact)
		args[2] = UUIDPGetDatum((pg_uuid_t *) &in->contact);
	else
		nulls[2] = 'n';
	if (SPI_execute_plan(optout_plan, args, nulls, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "profiling consent lookup failed");
	if (SPI_processed > 0)
	{
		r->opted_out = true;
		r->opted_out_email = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	}
}

/*
 * Count one completed activity of a lead (of type type, at time at) into
 * its decayed engagement.  Every scorer adds a lead's activities in id
 * order through here, so the floating-point sums are the same bits.
 */
static void
engagement_add(const Model *m, text *type, TimestampTz at, TimestampTz as_of, ScoreResult *r)
{
	const char *name = VARDATA_ANY(type);
	int			len = VARSIZE_ANY_EXHDR(type);
	double		age_days = (double) (as_of - at) / (double) USECS_PER_DAY;

	for (int t = 0; t < m->ntypes; t++)
		if (strncmp(m->types[t], name, len) == 0 && m->types[t][len] == '\0')
		{
			r->eng_count[t]++;
			r->eng_decayed[t] += pow(2.0, -age_days / m->half_life_days);
			break;
		}
}

/*
 * Per model activity type: the number of the lead's completed activities
 * up to as_of and their sum of 2^(-age / half-life).  Summed in id order,
 * so every caller adds the same numbers in the same order.
 */
static void
engagement_counts(const LeadInput *in, const Model *m, TimestampTz as_of, ScoreResult *r)
{
	Datum		args[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};

	if (m->ntypes == 0)
		return;
	if (activity_plan == NULL)
	{
		Oid			types[4] = {UUIDOID, UUIDOID, TIMESTAMPTZOID, UUIDOID};

		activity_plan = crm_prepare_kept(
									 "SELECT x.activity_type, x.occurred_at FROM ("
									 " SELECT a.id, a.activity_type, a.occurred_at FROM crm.activity a"
									 "  WHERE a.tenant_id OPERATOR(pg_catalog.=) $1"
									 "  AND a.lead_id OPERATOR(pg_catalog.=) $2"
									 "  AND a.status OPERATOR(pg_catalog.=) 'completed'"
									 "  AND a.occurred_at OPERATOR(pg_catalog.<=) $3"
									 " UNION ALL"
									 " SELECT a.id, a.activity_type, a.occurred_at FROM crm.activity a"
									 "  WHERE a.tenant_id OPERATOR(pg_catalog.=) $1"
									 "  AND a.contact_id OPERATOR(pg_catalog.=) $4"
									 "  AND (a.lead_id IS NULL OR a.lead_id OPERATOR(pg_catalog.<>) $2)"
									 "  AND a.status OPERATOR(pg_catalog.=) 'completed'"
									 "  AND a.occurred_at OPERATOR(pg_catalog.<=) $3"
									 ") x ORDER BY x.id",
									 4, types);
	}
	args[0] = UUIDPGetDatum((pg_uuid_t *) &in->tenant);
	args[1] = UUIDPGetDatum((pg_uuid_t *) &in->lead);
	args[2] = TimestampTzGetDatum(as_of);
	if (in->has_contact)
		args[3] = UUIDPGetDatum((pg_uuid_t *) &in->contact);
	else
		nulls[3] = 'n';
	if (SPI_execute_plan(activity_plan, args, nulls, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "activity lookup failed");

	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		bool		isnull;
		text	   *type = DatumGetTextPP(SPI_getbinval(tuple, SPI_tuptable->tupdesc, 1, &isnull));
		TimestampTz at = DatumGetTimestampTz(SPI_getbinval(tuple, SPI_tuptable->tupdesc, 2, &isnull));

		engagement_add(m, type, at, as_of, r);
	}
}

/* The fit points of a lead (the first part of every score). */
static void
score_fit(const LeadInput *in, const Model *m, ScoreResult *r)
{
	r->fit_points[F_SIZE] = in->size_null ? 0 : band_points(m, 0, (double) in->size);
	r->fit_points[F_BUDGET] = in->budget_null ? 0 : band_points(m, 1, in->budget);
	if (in->industry)
	{
		int			k = name_index(industry_names, NUM_INDUSTRIES, in->industry);

		r->fit_points[F_INDUSTRY] = k < 0 ? 0 : m->industry_points[k];
	}
	if (in->timeline)
	{
		int			k = name_index(timeline_names, NUM_TIMELINES, in->timeline);

		r->fit_points[F_TIMELINE] = k < 0 ? 0 : m->timeline_points[k];
	}
	r->fit_points[F_DECISION] = in->decision == 1 ? m->decision_yes
		: in->decision == 0 ? m->decision_no : 0;
	for (int f = 0; f < NUM_FIT; f++)
		r->fit += r->fit_points[f];
}

/* Engagement points from the decayed counts, and the total (the last part). */
static void
score_finish(const Model *m, ScoreResult *r)
{
	for (int t = 0; t < m->ntypes; t++)
	{
		double		p = Min((double) m->type_cap[t], m->type_points[t] * r->eng_decayed[t]);

		r->eng_points[t] = (int) floor(p + 0.5);
		r->eng += r->eng_points[t];
	}
	/* validation keeps both at most 100; a hand-made row cannot break the column checks */
	r->fit = Min(r->fit, 100);
	r->eng = Min(r->eng, 100);
	r->total = (m->w_fit * r->fit + m->w_eng * r->eng + 50) / 100;
}

/*
 * The score of one lead.  Needs SPI connected; reads activities and
 * consent as the caller of this function is (see scoring_owner()).  The
 * batch scorer (batch_score()) does the same steps for many leads with one
 * query each.
 */
static void
compute_score(const LeadInput *in, Model *m, TimestampTz as_of, bool want_values,
			  ScoreResult *r)
{
	memset(r, 0, sizeof(*r));
	r->model = m;

	check_opt_out(in, r);
	if (r->opted_out)
		return;
	score_fit(in, m, r);
	engagement_counts(in, m, as_of, r);
	score_finish(m, r);

	if (want_values)
	{
		r->fit_value[F_SIZE] = in->size_null ? NULL : psprintf("%d employees", in->size);
		r->fit_value[F_INDUSTRY] = in->industry ? pstrdup(in->industry) : NULL;
		r->fit_value[F_BUDGET] = in->budget_null ? NULL : psprintf("%.2f", in->budget);
		r->fit_value[F_TIMELINE] = in->timeline ? pstrdup(in->timeline) : NULL;
		r->fit_value[F_DECISION] = in->decision < 0 ? NULL : pstrdup(in->decision ? "yes" : "no");
	}
}

/* Lead columns the trigger reads and writes. */
enum
{
	C_TENANT,
	C_ID,
	C_SIZE,
	C_INDUSTRY,
	C_BUDGET,
	C_TIMELINE,
	C_DECISION,
	C_EMAIL,
	C_CONTACT,
	C_MODEL,
	/* derived */
	C_SCORE,
	C_FIT,
	C_ENG,
	C_QUALIFICATION,
	C_SCORED_AT,
	NUM_LEAD_COLUMNS
};

#define FIRST_DERIVED C_SCORE

static const char *const lead_column_names[NUM_LEAD_COLUMNS] = {
	"tenant_id", "id", "company_size", "industry", "budget", "purchase_timeline",
	"is_decision_maker", "email", "converted_contact_id", "scoring_model_id",
	"score", "fit_score", "engagement_score", "qualification", "scored_at"
};

static const Oid lead_column_types[NUM_LEAD_COLUMNS] = {
	UUIDOID, UUIDOID, INT4OID, TEXTOID, NUMERICOID, TEXTOID,
	BOOLOID, TEXTOID, UUIDOID, UUIDOID,
	INT2OID, INT2OID, INT2OID, TEXTOID, TIMESTAMPTZOID
};

/*
 * The attribute numbers of the lead columns in rel, looked up (and their
 * types checked) once per relation: the triggers run per row, and the
 * lookup compares names.  A relcache invalidation of the relation (ALTER
 * TABLE) forgets them.
 */
static Oid	lead_attnums_relid = InvalidOid;
static int	lead_attnums_cached[NUM_LEAD_COLUMNS];
static bool lead_attnums_callback = false;

static void
lead_attnums_invalidate(Oid relid)
{
	if (relid == InvalidOid || relid == lead_attnums_relid)
		lead_attnums_relid = InvalidOid;
}

static void
lead_attnums(Relation rel, int *attnums)
{
	if (!lead_attnums_callback)
	{
		crm_register_relcache_callback(lead_attnums_invalidate);
		lead_attnums_callback = true;
	}
	if (lead_attnums_relid != RelationGetRelid(rel))
	{
		lead_attnums_relid = InvalidOid;
		for (int i = 0; i < NUM_LEAD_COLUMNS; i++)
			lead_attnums_cached[i] = crm_attnum(rel, lead_column_names[i], lead_column_types[i]);
		lead_attnums_relid = RelationGetRelid(rel);
	}
	memcpy(attnums, lead_attnums_cached, sizeof(lead_attnums_cached));
}

/* The scoring inputs of a lead row. */
static void
lead_input_from_tuple(HeapTuple tuple, TupleDesc tupdesc, const int *attnums, LeadInput *in)
{
	bool		isnull;
	Datum		d;

	memset(in, 0, sizeof(*in));
	d = heap_getattr(tuple, attnums[C_TENANT], tupdesc, &isnull);
	if (!isnull)
		in->tenant = *DatumGetUUIDP(d);
	d = heap_getattr(tuple, attnums[C_ID], tupdesc, &isnull);
	if (!isnull)
		in->lead = *DatumGetUUIDP(d);
	d = heap_getattr(tuple, attnums[C_SIZE], tupdesc, &in->size_null);
	if (!in->size_null)
		in->size = DatumGetInt32(d);
	d = heap_getattr(tuple, attnums[C_INDUSTRY], tupdesc, &isnull);
	in->industry = isnull ? NULL : TextDatumGetCString(d);
	d = heap_getattr(tuple, attnums[C_BUDGET], tupdesc, &in->budget_null);
	if (!in->budget_null)
		in->budget = DatumGetFloat8(DirectFunctionCall1(numeric_float8, d));
	d = heap_getattr(tuple, attnums[C_TIMELINE], tupdesc, &isnull);
	in->timeline = isnull ? NULL : TextDatumGetCString(d);
	d = heap_getattr(tuple, attnums[C_DECISION], tupdesc, &isnull);
	in->decision = isnull ? -1 : DatumGetBool(d) ? 1 : 0;
	d = heap_getattr(tuple, attnums[C_EMAIL], tupdesc, &isnull);
	in->email = isnull ? NULL : TextDatumGetCString(d);
	d = heap_getattr(tuple, attnums[C_CONTACT], tupdesc, &isnull);
	if (!isnull)
	{
		in->has_contact = true;
		in->contact = *DatumGetUUIDP(d);
	}
	d = heap_getattr(tuple, attnums[C_MODEL], tupdesc, &isnull);
	if (!isnull)
	{
		in->has_model = true;
		in->model = *DatumGetUUIDP(d);
	}
}

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

/*
 * crm.scoring_lead_sync() trigger: see the file header.
 */
Datum
crm_scoring_lead_sync(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	tupdesc;
	HeapTuple	oldtuple = NULL;
	HeapTuple	newtuple;
	bool		is_insert;
	bool		rescore;
	int			attnums[NUM_LEAD_COLUMNS];
	int			cols[NUM_LEAD_COLUMNS];
	Datum		values[NUM_LEAD_COLUMNS];
	bool		nulls[NUM_LEAD_COLUMNS];
	int			n = 0;

	crm_require_trigger(fcinfo, "scoring_lead_sync", true, true);
	is_insert = TRIGGER_FIRED_BY_INSERT(trigdata->tg_event);
	if (!is_insert && !TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"scoring_lead_sync\" must be fired for INSERT or UPDATE")));
	if (is_insert)
		newtuple = trigdata->tg_trigtuple;
	else
	{
		oldtuple = trigdata->tg_trigtuple;
		newtuple = trigdata->tg_newtuple;
	}
	if (crm_loading_dump())
		return PointerGetDatum(newtuple);

	rel = trigdata->tg_relation;
	tupdesc = RelationGetDescr(rel);
	lead_attnums(rel, attnums);

	/*
	 * The batch scorer's own UPDATE (batch_update()) brings the values it
	 * computed from this very row version: keep them.  Its WHERE clause
	 * took only the version it read, and it changes no input.
	 */
	if (rescore_trusted && !is_insert)
	{
		bool		same = true;
		bool		isnull;
		Datum		at = heap_getattr(newtuple, attnums[C_SCORED_AT], tupdesc, &isnull);

		same = !isnull && DatumGetTimestampTz(at) == rescore_trusted_as_of;
		for (int i = 0; same && i < FIRST_DERIVED; i++)
			if (i != C_MODEL)
				same = !column_changed(oldtuple, newtuple, tupdesc, attnums[i]);
		if (same)
			return PointerGetDatum(newtuple);
	}

	/*
	 * Rescore a new lead, a lead rescored under a context of this backend,
	 * one whose inputs changed, and one whose derived columns an UPDATE
	 * wrote without changing an input.  The last is a client's write (its
	 * values are ignored: it gets the score of now, never its own) or the
	 * batch scorer's UPDATE run where its trusted flag is not set: on Citus
	 * the coordinator's crm.rescore_leads() sends that UPDATE to a worker,
	 * whose backend must compute the values again rather than put the old
	 * ones back (which would leave a stale score and scored_at).
	 */
	rescore = is_insert || rescore_context != RESCORE_NONE;
	for (int i = 0; !rescore && i < NUM_LEAD_COLUMNS; i++)
		rescore = column_changed(oldtuple, newtuple, tupdesc, attnums[i]);

	if (rescore)
	{
		LeadInput	in;
		ScoreResult r;
		Model	   *m;
		bool		isnull;
		Oid			save_userid;
		int			save_sec_context;
		TimestampTz as_of = GetCurrentTransactionStartTimestamp();
		bool		fresh = false;

		heap_getattr(newtuple, attnums[C_TENANT], tupdesc, &isnull);
		if (isnull)
			return PointerGetDatum(newtuple);	/* NOT NULL says so */
		lead_input_from_tuple(newtuple, tupdesc, attnums, &in);

		/*
		 * The row version this UPDATE replaces may be newer than the
		 * statement's snapshot (READ COMMITTED took it after waiting for
		 * its lock): then another transaction changed what the score
		 * depends on (every such change rewrites the lead) after the
		 * snapshot, so its activities and consent are read with a snapshot
		 * that sees that transaction.
		 */
		if (!is_insert && ActiveSnapshotSet())
		{
			TransactionId xmin = HeapTupleHeaderGetXmin(oldtuple->t_data);

			fresh = TransactionIdIsNormal(xmin) &&
				!TransactionIdIsCurrentTransactionId(xmin) &&
				XidInMVCCSnapshot(xmin, GetActiveSnapshot());
		}

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		GetUserIdAndSecContext(&save_userid, &save_sec_context);
		SetUserIdAndSecContext(rel->rd_rel->relowner,
							   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
		if (fresh)
			PushActiveSnapshot(GetLatestSnapshot());
		PG_TRY();
		{
			/* a model the client names must be one of the tenant's */
			if (in.has_model &&
				(is_insert || column_changed(oldtuple, newtuple, tupdesc, attnums[C_MODEL])) &&
				!model_load(&in.tenant, &in.model)->found)
				ereport(ERROR,
						(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
						 errmsg("scoring model %s does not exist", crm_uuid_text(&in.model))));
			m = model_for(&in, NULL);
			compute_score(&in, m, as_of, false, &r);
		}
		PG_FINALLY();
		{
			SetUserIdAndSecContext(save_userid, save_sec_context);
		}
		PG_END_TRY();
		if (fresh)
			PopActiveSnapshot();
		SPI_finish();

		cols[n] = attnums[C_SCORE];
		values[n] = Int16GetDatum((int16) r.total);
		nulls[n++] = r.opted_out;
		cols[n] = attnums[C_FIT];
		values[n] = Int16GetDatum((int16) r.fit);
		nulls[n++] = r.opted_out;
		cols[n] = attnums[C_ENG];
		values[n] = Int16GetDatum((int16) r.eng);
		nulls[n++] = r.opted_out;
		cols[n] = attnums[C_QUALIFICATION];
		values[n] = CStringGetTextDatum(r.total >= m->threshold ? "qualified" : "unqualified");
		nulls[n++] = r.opted_out;
		cols[n] = attnums[C_MODEL];
		values[n] = UUIDPGetDatum(&m->id);
		nulls[n++] = false;
		cols[n] = attnums[C_SCORED_AT];
		values[n] = TimestampTzGetDatum(as_of);
		nulls[n++] = false;
	}
	if (n == 0)
		return PointerGetDatum(newtuple);
	return PointerGetDatum(heap_modify_tuple_by_cols(newtuple, tupdesc, n, cols, values, nulls));
}

/* History and events -------------------------------------------------- */

/*
 * Read a whole transition table into memory (it is the statement's own),
 * through a read pointer of our own that may rewind: other triggers read
 * the same table, and one spilled to disk forgets what a non-rewinding
 * pointer has passed.
 */
static void
read_transition(Tuplestorestate *store, TupleDesc tupdesc, List **tuples)
{
	TupleTableSlot *slot = MakeSingleTupleTableSlot(tupdesc, &TTSOpsMinimalTuple);

	tuplestore_select_read_pointer(store, tuplestore_alloc_read_pointer(store, EXEC_FLAG_REWIND));
	tuplestore_rescan(store);
	while (tuplestore_gettupleslot(store, true, false, slot))
		*tuples = lappend(*tuples, ExecCopySlotHeapTuple(slot));
	ExecDropSingleTupleTableSlot(slot);
	tuplestore_select_read_pointer(store, 0);
}

static Datum
smallint_or_null(HeapTuple tuple, TupleDesc tupdesc, int attnum, bool *isnull)
{
	if (tuple == NULL)
	{
		*isnull = true;
		return (Datum) 0;
	}
	return heap_getattr(tuple, attnum, tupdesc, isnull);
}

static ArrayType *
build_array(Datum *values, bool *nulls, int n, Oid type)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1] = {n};
	int			lbs[1] = {1};

	get_typlenbyvalalign(type, &typlen, &typbyval, &typalign);
	return construct_md_array(values, nulls, 1, dims, lbs, type, typlen, typbyval, typalign);
}

/*
 * Why one lead's score changed, as the history records it.
 */
static const char *
history_reason(HeapTuple oldtuple, HeapTuple newtuple, TupleDesc tupdesc, const int *attnums,
			   bool old_null, bool new_null)
{
	switch (rescore_context)
	{
		case RESCORE_ACTIVITY:
			return "activity";
		case RESCORE_CONSENT:
			return "profiling opt-out";
		case RESCORE_MODEL:
			return "model change";
		case RESCORE_REFRESH:
			if (oldtuple == NULL ||
				column_changed(oldtuple, newtuple, tupdesc, attnums[C_MODEL]) ||
				column_changed(oldtuple, newtuple, tupdesc, attnums[C_FIT]))
				return "model change";
			return "decay";
		default:
			if (oldtuple == NULL)
				return "fit change";
			if (column_changed(oldtuple, newtuple, tupdesc, attnums[C_MODEL]))
				return "model change";
			for (int i = 0; i < C_MODEL; i++)
				if (column_changed(oldtuple, newtuple, tupdesc, attnums[i]))
					return old_null != new_null ? "profiling opt-out" : "fit change";

			/*
			 * No input changed: the lead was rescored as it stands (the
			 * batch scorer's UPDATE on a Citus worker, or a client's write
			 * to the derived columns), as by crm.rescore_leads().
			 */
			if (column_changed(oldtuple, newtuple, tupdesc, attnums[C_FIT]))
				return "model change";
			return "decay";
	}
}

/*
 * crm.scoring_lead_history() trigger: see the file header.  The history
 * and the events are the extension's, so they are written as the owner of
 * crm.lead, from the statement's own rows.
 */
Datum
crm_scoring_lead_history(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	tupdesc;
	int			attnums[NUM_LEAD_COLUMNS];
	List	   *newrows = NIL;
	List	   *oldrows = NIL;
	bool		is_update;
	int			nrows;
	int			nh = 0;
	int			ne = 0;
	Datum	   *h[10];
	bool	   *hn[10];
	Datum	   *ev[4];
	bool	   *ev_model_null;
	Oid			save_userid;
	int			save_sec_context;

	crm_require_trigger(fcinfo, "scoring_lead_history", false, false);
	is_update = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event);
	if (trigdata->tg_newtable == NULL || (is_update && trigdata->tg_oldtable == NULL))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"scoring_lead_history\" must be fired AFTER INSERT or UPDATE with transition tables")));
	if (crm_loading_dump())
		return PointerGetDatum(NULL);

	rel = trigdata->tg_relation;
	tupdesc = RelationGetDescr(rel);
	lead_attnums(rel, attnums);
	read_transition(trigdata->tg_newtable, tupdesc, &newrows);
	if (is_update)
		read_transition(trigdata->tg_oldtable, tupdesc, &oldrows);
	nrows = list_length(newrows);
	if (nrows == 0)
		return PointerGetDatum(NULL);

	/* tenant, lead, model, old/new score, fit, engagement, reason */
	for (int c = 0; c < 10; c++)
	{
		h[c] = palloc(sizeof(Datum) * nrows);
		hn[c] = palloc0(sizeof(bool) * nrows);
	}
	for (int c = 0; c < 4; c++)
		ev[c] = palloc(sizeof(Datum) * nrows);
	ev_model_null = palloc0(sizeof(bool) * nrows);

	for (int i = 0; i < nrows; i++)
	{
		HeapTuple	newtuple = list_nth(newrows, i);
		HeapTuple	oldtuple = is_update ? list_nth(oldrows, i) : NULL;
		bool		old_null;
		bool		new_null;
		bool		isnull;
		Datum		old_score = smallint_or_null(oldtuple, tupdesc, attnums[C_SCORE], &old_null);
		Datum		new_score = heap_getattr(newtuple, attnums[C_SCORE], tupdesc, &new_null);
		bool		old_qualified = false;
		Datum		q;

		/* the old and new rows of an UPDATE come in the same order */
		if (oldtuple != NULL &&
			!datumIsEqual(heap_getattr(oldtuple, attnums[C_ID], tupdesc, &isnull),
						  heap_getattr(newtuple, attnums[C_ID], tupdesc, &isnull), false, UUID_LEN))
			elog(ERROR, "transition tables of crm.lead are out of step");

		if (old_null != new_null ||
			(!new_null && DatumGetInt16(old_score) != DatumGetInt16(new_score)))
		{
			h[0][nh] = heap_getattr(newtuple, attnums[C_TENANT], tupdesc, &isnull);
			h[1][nh] = heap_getattr(newtuple, attnums[C_ID], tupdesc, &isnull);
			h[2][nh] = heap_getattr(newtuple, attnums[C_MODEL], tupdesc, &hn[2][nh]);
			h[3][nh] = old_score;
			hn[3][nh] = old_null;
			h[4][nh] = new_score;
			hn[4][nh] = new_null;
			h[5][nh] = smallint_or_null(oldtuple, tupdesc, attnums[C_FIT], &hn[5][nh]);
			h[6][nh] = heap_getattr(newtuple, attnums[C_FIT], tupdesc, &hn[6][nh]);
			h[7][nh] = smallint_or_null(oldtuple, tupdesc, attnums[C_ENG], &hn[7][nh]);
			h[8][nh] = heap_getattr(newtuple, attnums[C_ENG], tupdesc, &hn[8][nh]);
			h[9][nh] = CStringGetTextDatum(history_reason(oldtuple, newtuple, tupdesc, attnums,
														  old_null, new_null));
			nh++;
		}

		if (oldtuple != NULL)
		{
			q = heap_getattr(oldtuple, attnums[C_QUALIFICATION], tupdesc, &isnull);
			old_qualified = !isnull && strcmp(TextDatumGetCString(q), "qualified") == 0;
		}
		q = heap_getattr(newtuple, attnums[C_QUALIFICATION], tupdesc, &isnull);
		if (!isnull && !old_qualified && strcmp(TextDatumGetCString(q), "qualified") == 0)
		{
			ev[0][ne] = heap_getattr(newtuple, attnums[C_TENANT], tupdesc, &isnull);
			ev[1][ne] = heap_getattr(newtuple, attnums[C_ID], tupdesc, &isnull);
			ev[2][ne] = new_score;
			ev[3][ne] = heap_getattr(newtuple, attnums[C_MODEL], tupdesc, &ev_model_null[ne]);
			ne++;
		}
	}
	if (nh == 0 && ne == 0)
		return PointerGetDatum(NULL);

	/* LeadQualified: the workflow's follow-up task hangs off it */
	for (int i = 0; i < ne; i++)
	{
		char	   *lead = crm_uuid_text(DatumGetUUIDP(ev[1][i]));
		char	   *model = ev_model_null[i] ? NULL : crm_uuid_text(DatumGetUUIDP(ev[3][i]));
		char	   *json = psprintf("{\"leadId\": \"%s\", \"score\": %d, \"modelId\": %s%s%s, \"qualifiedAt\": \"%s\"}",
									lead, (int) DatumGetInt16(ev[2][i]),
									model ? "\"" : "", model ? model : "null", model ? "\"" : "",
									timestamptz_to_str(GetCurrentTransactionStartTimestamp()));
		Jsonb	   *payload = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));

		crm_outbox_emit(DatumGetUUIDP(ev[0][i]), "LeadQualified", "lead",
						DatumGetUUIDP(ev[1][i]), payload);
	}
	if (nh == 0)
		return PointerGetDatum(NULL);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(rel->rd_rel->relowner,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		if (nh > 0)
		{
			static const Oid htypes[10] = {UUIDOID, UUIDOID, UUIDOID, INT2OID, INT2OID,
			INT2OID, INT2OID, INT2OID, INT2OID, TEXTOID};
			Datum		args[11];
			Oid			argtypes[11];

			for (int c = 0; c < 10; c++)
			{
				args[c] = PointerGetDatum(build_array(h[c], hn[c], nh, htypes[c]));
				argtypes[c] = get_array_type(htypes[c]);
			}
			argtypes[10] = UUIDOID;
			/*
			 * One INSERT per tenant, the tenant a scalar parameter: Citus
			 * routes it to the tenant's shard (from a trigger on a shard
			 * it could not run an INSERT ... SELECT across shards).
			 */
			if (history_plan == NULL)
				history_plan = crm_prepare_kept(
											"INSERT INTO crm.lead_score_history"
											" (tenant_id, lead_id, model_id, old_score, new_score, old_fit_score,"
											"  new_fit_score, old_engagement_score, new_engagement_score, reason)"
											" SELECT $11, u.c2, u.c3, u.c4, u.c5, u.c6, u.c7, u.c8, u.c9, u.c10"
											" FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3),"
											" pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7),"
											" pg_catalog.unnest($8), pg_catalog.unnest($9), pg_catalog.unnest($10))"
											" u(c1, c2, c3, c4, c5, c6, c7, c8, c9, c10)"
											" WHERE u.c1 OPERATOR(pg_catalog.=) $11",
											11, argtypes);
			for (int i = 0; i < nh; i++)
			{
				bool		seen = false;

				for (int j = 0; j < i && !seen; j++)
					seen = uuid_equal(DatumGetUUIDP(h[0][j]), DatumGetUUIDP(h[0][i]));
				if (seen)
					continue;
				args[10] = h[0][i];
				if (SPI_execute_plan(history_plan, args, NULL, false, 0) != SPI_OK_INSERT)
					elog(ERROR, "could not record the score history");
			}
		}
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
	SPI_finish();
	return PointerGetDatum(NULL);
}

/* Rescoring ----------------------------------------------------------- */

typedef struct TenantLead
{
	pg_uuid_t	tenant;
	pg_uuid_t	lead;
} TenantLead;

static int
tenant_lead_cmp(const void *a, const void *b)
{
	return memcmp(a, b, sizeof(TenantLead));
}

/*
 * The batch scorer.  Rescoring many leads one row trigger at a time costs
 * two or three queries (and their executor start-up) per lead; instead a
 * batch of up to SCORING_BATCH leads is read by one query, the profiling
 * consent and the activities of the whole batch by one query each, the
 * points computed here in C (the same functions as compute_score(), adding
 * each lead's activities in the same id order), and the results written
 * by one UPDATE from arrays.
 *
 * That UPDATE takes a lead only in the row version the batch read (ctid and
 * xmin): one that another transaction changed in between is left out by
 * its WHERE clause (READ COMMITTED re-checks it on the new version), and
 * rescored again by the row trigger with a snapshot that sees the change
 * (batch_retry()).  Every change of what a score depends on rewrites the
 * lead, so a lead whose version is unchanged has unchanged inputs.
 */
#define SCORING_BATCH 10000

static SPIPlanPtr batch_read_plans[2][2];	/* [of one model][after an id] */
static SPIPlanPtr batch_read_ids_plan = NULL;
static SPIPlanPtr batch_optout_plan = NULL;
static SPIPlanPtr batch_activity_plan = NULL;
static SPIPlanPtr batch_update_plan = NULL;
static SPIPlanPtr batch_retry_plan = NULL;

/* Columns 1-10 in the order of lead_column_names, then ctid and xmin. */
#define BATCH_LEAD_SELECT \
	"SELECT l.tenant_id, l.id, l.company_size, l.industry, l.budget, l.purchase_timeline," \
	" l.is_decision_maker, l.email, l.converted_contact_id, l.scoring_model_id, l.ctid, l.xmin" \
	" FROM crm.lead l WHERE l.tenant_id OPERATOR(pg_catalog.=) $1"

static void
batch_prepare(void)
{
	if (batch_retry_plan != NULL)	/* the last one prepared */
		return;
	for (int f = 0; f < 2; f++)
		for (int a = 0; a < 2; a++)
		{
			Oid			types[4] = {UUIDOID, UUIDOID, UUIDOID, INT4OID};

			batch_read_plans[f][a] = crm_prepare_kept_generic(
													  psprintf("%s%s%s ORDER BY l.id LIMIT $4", BATCH_LEAD_SELECT,
															   f ? " AND l.scoring_model_id OPERATOR(pg_catalog.=) $2" : "",
															   a ? " AND l.id OPERATOR(pg_catalog.>) $3" : ""),
													  4, types);
		}
	{
		Oid			types[2] = {UUIDOID, UUIDARRAYOID};

		batch_read_ids_plan = crm_prepare_kept_generic(
											   BATCH_LEAD_SELECT
											   " AND l.id OPERATOR(pg_catalog.=) ANY ($2) ORDER BY l.id",
											   2, types);
	}
	{
		Oid			types[3] = {UUIDOID, TEXTARRAYOID, UUIDARRAYOID};

		batch_optout_plan = crm_prepare_kept_generic(
											 "SELECT u.ord FROM pg_catalog.unnest($2) WITH ORDINALITY u(email, ord)"
											 " JOIN crm.contact c ON c.tenant_id OPERATOR(pg_catalog.=) $1"
											 " AND crm.casefold(c.email) OPERATOR(pg_catalog.=) crm.casefold(u.email)"
											 " WHERE c.profiling_opt_out"
											 " UNION ALL"
											 " SELECT u.ord FROM pg_catalog.unnest($3) WITH ORDINALITY u(contact, ord)"
											 " JOIN crm.contact c ON c.tenant_id OPERATOR(pg_catalog.=) $1"
											 " AND c.id OPERATOR(pg_catalog.=) u.contact"
											 " WHERE c.profiling_opt_out",
											 3, types);
	}
	{
		Oid			types[6] = {UUIDOID, UUIDARRAYOID, TIMESTAMPTZOID, INT8ARRAYOID, UUIDARRAYOID, UUIDARRAYOID};

		batch_activity_plan = crm_prepare_kept_generic(
											   "SELECT x.ord, x.activity_type, x.occurred_at FROM ("
											   " SELECT u.ord, a.id, a.activity_type, a.occurred_at"
											   "  FROM pg_catalog.unnest($2) WITH ORDINALITY u(lead, ord)"
											   "  JOIN crm.activity a ON a.tenant_id OPERATOR(pg_catalog.=) $1"
											   "  AND a.lead_id OPERATOR(pg_catalog.=) u.lead"
											   "  WHERE a.status OPERATOR(pg_catalog.=) 'completed'"
											   "  AND a.occurred_at OPERATOR(pg_catalog.<=) $3"
											   " UNION ALL"
											   " SELECT u.ord, a.id, a.activity_type, a.occurred_at"
											   "  FROM ROWS FROM (pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6))"
											   "  u(ord, lead, contact)"
											   "  JOIN crm.activity a ON a.tenant_id OPERATOR(pg_catalog.=) $1"
											   "  AND a.contact_id OPERATOR(pg_catalog.=) u.contact"
											   "  WHERE (a.lead_id IS NULL OR a.lead_id OPERATOR(pg_catalog.<>) u.lead)"
											   "  AND a.status OPERATOR(pg_catalog.=) 'completed'"
											   "  AND a.occurred_at OPERATOR(pg_catalog.<=) $3"
											   ") x ORDER BY x.ord, x.id",
											   6, types);
	}
	{
		Oid			types[10];

		types[0] = UUIDOID;
		types[1] = UUIDARRAYOID;
		types[2] = get_array_type(TIDOID);
		types[3] = get_array_type(XIDOID);
		types[4] = INT2ARRAYOID;
		types[5] = INT2ARRAYOID;
		types[6] = INT2ARRAYOID;
		types[7] = TEXTARRAYOID;
		types[8] = UUIDARRAYOID;
		types[9] = TIMESTAMPTZOID;
		batch_update_plan = crm_prepare_kept_generic(
											 "UPDATE crm.lead l SET score = u.score, fit_score = u.fit,"
											 " engagement_score = u.eng, qualification = u.q,"
											 " scoring_model_id = u.model, scored_at = $10"
											 " FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4),"
											 " pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7),"
											 " pg_catalog.unnest($8), pg_catalog.unnest($9)) WITH ORDINALITY"
											 " u(id, tid, xmin, score, fit, eng, q, model, ord)"
											 " WHERE l.tenant_id OPERATOR(pg_catalog.=) $1"
											 " AND l.ctid OPERATOR(pg_catalog.=) u.tid"
											 " AND l.id OPERATOR(pg_catalog.=) u.id"
											 " AND l.xmin OPERATOR(pg_catalog.=) u.xmin"
											 " RETURNING u.ord",
											 10, types);
	}
	{
		Oid			types[3] = {UUIDOID, UUIDARRAYOID, UUIDOID};

		/*
		 * scored_at written ('-infinity', never a stored value; the row
		 * trigger sets it again): a write to a derived column makes the
		 * row trigger rescore the lead even where this backend's rescore
		 * context does not reach it (a Citus worker, for the coordinator's
		 * crm.rescore_leads()).
		 */
		batch_retry_plan = crm_prepare_kept_generic(
											"UPDATE crm.lead l SET scoring_model_id = COALESCE($3, l.scoring_model_id),"
											" scored_at = '-infinity'::pg_catalog.timestamptz"
											" WHERE l.tenant_id OPERATOR(pg_catalog.=) $1"
											" AND l.id OPERATOR(pg_catalog.=) ANY ($2)",
											3, types);
	}
}

/*
 * SPI_execute_plan() for the batch scorer, read-write (a fresh snapshot per
 * query), that comes back in the caller's memory context: SPI returns in
 * its procedure context, which lives until SPI_finish(), so the arrays and
 * strings of every batch would pile up there (400 MB over a million leads)
 * instead of going with the batch's context.
 */
static int
batch_execute(SPIPlanPtr plan, Datum *args, const char *nulls)
{
	MemoryContext cxt = CurrentMemoryContext;
	int			rc = SPI_execute_plan(plan, args, nulls, false, 0);

	MemoryContextSwitchTo(cxt);
	return rc;
}

/*
 * Score the leads of one tenant that the read query left in lt (nl rows,
 * id order) and write them; assign: give them that model.  Runs the reads
 * of activities and consent as the owner of crm.lead (like the row
 * trigger), the UPDATE as the current user.  Returns the leads rescored.
 */
static uint64
batch_score(SPITupleTable *lt, uint64 nl, const pg_uuid_t *tenant, const pg_uuid_t *assign,
			TimestampTz as_of)
{
	static const int attnums[NUM_LEAD_COLUMNS] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
	int			n = (int) nl;
	LeadInput  *in = palloc(sizeof(LeadInput) * n);
	Model	  **models = palloc(sizeof(Model *) * n);
	bool	   *opted = palloc0(sizeof(bool) * n);
	bool	   *done = palloc0(sizeof(bool) * n);
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum	   *tids = palloc(sizeof(Datum) * n);
	Datum	   *xmins = palloc(sizeof(Datum) * n);
	Datum	   *emails = palloc(sizeof(Datum) * n);
	bool	   *email_nulls = palloc(sizeof(bool) * n);
	Datum	   *contacts = palloc(sizeof(Datum) * n);
	bool	   *contact_nulls = palloc(sizeof(bool) * n);
	Datum	   *c_ords = palloc(sizeof(Datum) * n);
	Datum	   *c_leads = palloc(sizeof(Datum) * n);
	Datum	   *c_contacts = palloc(sizeof(Datum) * n);
	Datum	   *scores = palloc(sizeof(Datum) * n);
	Datum	   *fits = palloc(sizeof(Datum) * n);
	Datum	   *engs = palloc(sizeof(Datum) * n);
	Datum	   *quals = palloc(sizeof(Datum) * n);
	bool	   *score_nulls = palloc(sizeof(bool) * n);
	Datum	   *model_ids = palloc(sizeof(Datum) * n);
	Datum		qualified = CStringGetTextDatum("qualified");
	Datum		unqualified = CStringGetTextDatum("unqualified");
	int			nc = 0;
	bool		any_types = false;
	bool		any_consent = false;
	SPITupleTable *at = NULL;
	uint64		nat = 0;
	uint64		next = 0;
	uint64		total = 0;
	int			nretry = 0;
	Oid			save_userid;
	int			save_sec_context;

	for (int i = 0; i < n; i++)
	{
		HeapTuple	tuple = lt->vals[i];
		bool		isnull;

		lead_input_from_tuple(tuple, lt->tupdesc, attnums, &in[i]);
		if (assign)
		{
			in[i].has_model = true;
			in[i].model = *assign;
		}
		ids[i] = UUIDPGetDatum(&in[i].lead);
		tids[i] = datumCopy(SPI_getbinval(tuple, lt->tupdesc, 11, &isnull), false, sizeof(ItemPointerData));
		xmins[i] = SPI_getbinval(tuple, lt->tupdesc, 12, &isnull);
		email_nulls[i] = in[i].email == NULL;
		emails[i] = email_nulls[i] ? (Datum) 0 : CStringGetTextDatum(in[i].email);
		contact_nulls[i] = !in[i].has_contact;
		contacts[i] = in[i].has_contact ? UUIDPGetDatum(&in[i].contact) : (Datum) 0;
		any_consent |= !email_nulls[i] || !contact_nulls[i];
		if (in[i].has_contact)
		{
			c_ords[nc] = Int64GetDatum(i + 1);
			c_leads[nc] = ids[i];
			c_contacts[nc++] = contacts[i];
		}
	}

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(scoring_owner(), save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		MemoryContext cxt = CurrentMemoryContext;

		for (int i = 0; i < n; i++)
		{
			models[i] = model_for(&in[i], NULL);
			any_types |= models[i]->ntypes > 0;
		}
		MemoryContextSwitchTo(cxt);	/* model_for() may have run SPI */
		if (any_consent)
		{
			Datum		args[3];

			args[0] = UUIDPGetDatum((pg_uuid_t *) tenant);
			args[1] = PointerGetDatum(build_array(emails, email_nulls, n, TEXTOID));
			args[2] = PointerGetDatum(build_array(contacts, contact_nulls, n, UUIDOID));
			if (batch_execute(batch_optout_plan, args, NULL) != SPI_OK_SELECT)
				elog(ERROR, "profiling consent lookup failed");
			for (uint64 k = 0; k < SPI_processed; k++)
			{
				bool		isnull;
				int64		ord = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[k], SPI_tuptable->tupdesc, 1, &isnull));

				opted[ord - 1] = true;
			}
			SPI_freetuptable(SPI_tuptable);
		}
		if (any_types)
		{
			Datum		args[6];

			args[0] = UUIDPGetDatum((pg_uuid_t *) tenant);
			args[1] = PointerGetDatum(build_array(ids, NULL, n, UUIDOID));
			args[2] = TimestampTzGetDatum(as_of);
			args[3] = PointerGetDatum(build_array(c_ords, NULL, nc, INT8OID));
			args[4] = PointerGetDatum(build_array(c_leads, NULL, nc, UUIDOID));
			args[5] = PointerGetDatum(build_array(c_contacts, NULL, nc, UUIDOID));
			if (batch_execute(batch_activity_plan, args, NULL) != SPI_OK_SELECT)
				elog(ERROR, "activity lookup failed");
			at = SPI_tuptable;
			nat = SPI_processed;
		}
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();

	for (int i = 0; i < n; i++)
	{
		ScoreResult r;
		Model	   *m = models[i];

		memset(&r, 0, sizeof(r));
		r.model = m;
		if (!opted[i])
			score_fit(&in[i], m, &r);
		for (; next < nat; next++)
		{
			HeapTuple	tuple = at->vals[next];
			bool		isnull;
			int64		ord = DatumGetInt64(SPI_getbinval(tuple, at->tupdesc, 1, &isnull));

			if (ord != i + 1)
				break;
			if (!opted[i])
				engagement_add(m, DatumGetTextPP(SPI_getbinval(tuple, at->tupdesc, 2, &isnull)),
							   DatumGetTimestampTz(SPI_getbinval(tuple, at->tupdesc, 3, &isnull)),
							   as_of, &r);
		}
		if (!opted[i])
			score_finish(m, &r);
		score_nulls[i] = opted[i];
		scores[i] = Int16GetDatum((int16) r.total);
		fits[i] = Int16GetDatum((int16) r.fit);
		engs[i] = Int16GetDatum((int16) r.eng);
		quals[i] = r.total >= m->threshold ? qualified : unqualified;
		model_ids[i] = UUIDPGetDatum(&m->id);
	}
	if (at)
		SPI_freetuptable(at);

	{
		Datum		args[10];

		args[0] = UUIDPGetDatum((pg_uuid_t *) tenant);
		args[1] = PointerGetDatum(build_array(ids, NULL, n, UUIDOID));
		args[2] = PointerGetDatum(build_array(tids, NULL, n, TIDOID));
		args[3] = PointerGetDatum(build_array(xmins, NULL, n, XIDOID));
		args[4] = PointerGetDatum(build_array(scores, score_nulls, n, INT2OID));
		args[5] = PointerGetDatum(build_array(fits, score_nulls, n, INT2OID));
		args[6] = PointerGetDatum(build_array(engs, score_nulls, n, INT2OID));
		args[7] = PointerGetDatum(build_array(quals, score_nulls, n, TEXTOID));
		args[8] = PointerGetDatum(build_array(model_ids, NULL, n, UUIDOID));
		args[9] = TimestampTzGetDatum(as_of);
		rescore_trusted = true;
		rescore_trusted_as_of = as_of;
		PG_TRY();
		{
			if (batch_execute(batch_update_plan, args, NULL) != SPI_OK_UPDATE_RETURNING)
				elog(ERROR, "could not rescore leads");
		}
		PG_FINALLY();
		{
			rescore_trusted = false;
		}
		PG_END_TRY();
		total = SPI_processed;
		for (uint64 k = 0; k < SPI_processed; k++)
		{
			bool		isnull;
			int64		ord = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[k], SPI_tuptable->tupdesc, 1, &isnull));

			done[ord - 1] = true;
		}
		SPI_freetuptable(SPI_tuptable);
	}

	/* leads another transaction changed since the read: the row trigger rescores them */
	for (int i = 0; i < n; i++)
		if (!done[i])
			ids[nretry++] = ids[i];
	if (nretry > 0)
	{
		Datum		args[3];
		char		nulls[3] = {' ', ' ', ' '};

		args[0] = UUIDPGetDatum((pg_uuid_t *) tenant);
		args[1] = PointerGetDatum(build_array(ids, NULL, nretry, UUIDOID));
		if (assign)
			args[2] = UUIDPGetDatum((pg_uuid_t *) assign);
		else
			nulls[2] = 'n';
		if (batch_execute(batch_retry_plan, args, nulls) != SPI_OK_UPDATE)
			elog(ERROR, "could not rescore leads");
		total += SPI_processed;
	}
	return total;
}

/*
 * Rescore the given leads (sorted, so that two sessions lock them in the
 * same order) with the batch scorer, per tenant, under a rescore context
 * that the triggers of its UPDATE read.  Needs SPI connected and runs as
 * the owner of crm.lead.
 */
static uint64
rescore_leads(TenantLead *leads, int n, RescoreContext context)
{
	RescoreContext save = rescore_context;
	uint64		total = 0;
	int			start = 0;
	MemoryContext batch_cxt;
	MemoryContext old;
	TimestampTz as_of = GetCurrentTransactionStartTimestamp();

	if (n == 0)
		return 0;
	qsort(leads, n, sizeof(TenantLead), tenant_lead_cmp);
	batch_prepare();
	batch_cxt = AllocSetContextCreate(CurrentMemoryContext, "crm scoring batch", ALLOCSET_DEFAULT_SIZES);
	rescore_context = context;
	PG_TRY();
	{
		while (start < n)
		{
			int			end = start;
			int			m = 0;
			Datum	   *ids;
			Datum		args[2];

			old = MemoryContextSwitchTo(batch_cxt);
			ids = palloc(sizeof(Datum) * Min(n - start, SCORING_BATCH));
			while (end < n && uuid_equal(&leads[end].tenant, &leads[start].tenant))
			{
				if (end == start || !uuid_equal(&leads[end].lead, &leads[end - 1].lead))
				{
					if (m == SCORING_BATCH)
						break;
					ids[m++] = UUIDPGetDatum(&leads[end].lead);
				}
				end++;
			}
			args[0] = UUIDPGetDatum(&leads[start].tenant);
			args[1] = PointerGetDatum(build_array(ids, NULL, m, UUIDOID));
			if (batch_execute(batch_read_ids_plan, args, NULL) != SPI_OK_SELECT)
				elog(ERROR, "could not read leads");
			{
				SPITupleTable *lt = SPI_tuptable;
				uint64		nl = SPI_processed;

				if (nl > 0)
					total += batch_score(lt, nl, &leads[start].tenant, NULL, as_of);
				SPI_freetuptable(lt);
			}
			MemoryContextSwitchTo(old);
			MemoryContextReset(batch_cxt);
			start = end;
		}
	}
	PG_FINALLY();
	{
		rescore_context = save;
	}
	PG_END_TRY();
	MemoryContextDelete(batch_cxt);
	return total;
}

/*
 * crm.scoring_refresh() trigger: see the file header.  On crm.activity the
 * leads are the activities' lead_id and the leads converted into their
 * contact_id; on crm.contact, the leads with the contact's e-mail or
 * converted into it.  Old and new rows both count: an activity moved from
 * one lead to another changes both.
 */
Datum
crm_scoring_refresh(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	tupdesc;
	bool		on_contact;
	List	   *rows = NIL;
	int			tenant_att;
	int			lead_att = InvalidAttrNumber;
	int			contact_att;
	int			email_att = InvalidAttrNumber;
	int			nrows;
	TenantLead *leads;
	int			nleads = 0;
	Datum	   *c_tenants;
	Datum	   *c_ids;
	Datum	   *c_emails;
	bool	   *c_email_nulls;
	int			ncontacts = 0;
	ListCell   *lc;
	Oid			save_userid;
	int			save_sec_context;

	crm_require_trigger(fcinfo, "scoring_refresh", false, false);
	if (crm_loading_dump())
		return PointerGetDatum(NULL);

	rel = trigdata->tg_relation;
	tupdesc = RelationGetDescr(rel);
	on_contact = strcmp(crm_table_name(rel), "contact") == 0;
	tenant_att = crm_attnum(rel, "tenant_id", UUIDOID);
	if (on_contact)
	{
		contact_att = crm_attnum(rel, "id", UUIDOID);
		email_att = crm_attnum(rel, "email", TEXTOID);
	}
	else
	{
		contact_att = crm_attnum(rel, "contact_id", UUIDOID);
		lead_att = crm_attnum(rel, "lead_id", UUIDOID);
	}
	if (trigdata->tg_oldtable)
		read_transition(trigdata->tg_oldtable, tupdesc, &rows);
	if (trigdata->tg_newtable)
		read_transition(trigdata->tg_newtable, tupdesc, &rows);
	nrows = list_length(rows);
	if (nrows == 0)
		return PointerGetDatum(NULL);

	leads = palloc(sizeof(TenantLead) * nrows);
	c_tenants = palloc(sizeof(Datum) * nrows);
	c_ids = palloc(sizeof(Datum) * nrows);
	c_emails = palloc(sizeof(Datum) * nrows);
	c_email_nulls = palloc0(sizeof(bool) * nrows);
	foreach(lc, rows)
	{
		HeapTuple	tuple = (HeapTuple) lfirst(lc);
		bool		isnull;
		Datum		tenant = heap_getattr(tuple, tenant_att, tupdesc, &isnull);
		Datum		d;

		if (isnull)
			continue;
		if (lead_att != InvalidAttrNumber)
		{
			d = heap_getattr(tuple, lead_att, tupdesc, &isnull);
			if (!isnull)
			{
				leads[nleads].tenant = *DatumGetUUIDP(tenant);
				leads[nleads++].lead = *DatumGetUUIDP(d);
			}
		}
		d = heap_getattr(tuple, contact_att, tupdesc, &isnull);
		if (!isnull)
		{
			c_tenants[ncontacts] = tenant;
			c_ids[ncontacts] = d;
			if (email_att != InvalidAttrNumber)
				c_emails[ncontacts] = heap_getattr(tuple, email_att, tupdesc, &c_email_nulls[ncontacts]);
			else
				c_email_nulls[ncontacts] = true;
			ncontacts++;
		}
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(rel->rd_rel->relowner,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		if (ncontacts > 0)
		{
			Datum		args[4];
			char		nulls[4] = {' ', ' ', ' ', ' '};

			if (contact_leads_plan == NULL)
			{
				Oid			types[4] = {UUIDARRAYOID, UUIDARRAYOID, TEXTARRAYOID, UUIDOID};

				contact_leads_plan = crm_prepare_kept(
												  "SELECT l.tenant_id, l.id FROM crm.lead l"
												  " JOIN ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3)) c(tenant_id, id, email)"
												  "  ON l.tenant_id OPERATOR(pg_catalog.=) c.tenant_id"
												  " AND l.converted_contact_id OPERATOR(pg_catalog.=) c.id"
												  " WHERE l.tenant_id OPERATOR(pg_catalog.=) $4"
												  " UNION"
												  " SELECT l.tenant_id, l.id FROM crm.lead l"
												  " JOIN ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3)) c(tenant_id, id, email)"
												  "  ON l.tenant_id OPERATOR(pg_catalog.=) c.tenant_id"
												  " AND crm.casefold(l.email) OPERATOR(pg_catalog.=) crm.casefold(c.email)"
												  " WHERE l.tenant_id OPERATOR(pg_catalog.=) $4",
												  4, types);
			}
			args[0] = PointerGetDatum(build_array(c_tenants, NULL, ncontacts, UUIDOID));
			args[1] = PointerGetDatum(build_array(c_ids, NULL, ncontacts, UUIDOID));
			args[2] = PointerGetDatum(build_array(c_emails, c_email_nulls, ncontacts, TEXTOID));
			/*
			 * One query per tenant, the tenant a scalar parameter, so that
			 * Citus routes it to the tenant's shard.
			 */
			for (int t = 0; t < ncontacts; t++)
			{
				bool		seen = false;

				for (int u = 0; u < t && !seen; u++)
					seen = uuid_equal(DatumGetUUIDP(c_tenants[u]), DatumGetUUIDP(c_tenants[t]));
				if (seen)
					continue;
				args[3] = c_tenants[t];
				if (SPI_execute_plan(contact_leads_plan, args, nulls, true, 0) != SPI_OK_SELECT)
					elog(ERROR, "could not find the leads of contacts");
				if (SPI_processed > 0)
				{
					leads = repalloc(leads, sizeof(TenantLead) * (nleads + SPI_processed));
					for (uint64 i = 0; i < SPI_processed; i++)
					{
						bool		isnull;

						leads[nleads].tenant = *DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
						leads[nleads++].lead = *DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
					}
				}
			}
		}
		rescore_leads(leads, nleads, on_contact ? RESCORE_CONSENT : RESCORE_ACTIVITY);
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
 * crm.scoring_rescore(tenant, model, assign): the leads of a tenant (of one
 * model, or all when model is NULL) rescored now by the batch scorer, in
 * id order, SCORING_BATCH leads per UPDATE (a million leads stay within
 * bounded memory, in the caller's transaction); with assign, every lead of
 * the tenant is given the model.  Runs as the caller: crm.rescore_leads()
 * checks the tenant and the model first.
 */
CRM_SHARD_ENTRY(crm_scoring_rescore)
{
	pg_uuid_t	tenant;
	pg_uuid_t	model;
	pg_uuid_t	after;
	bool		has_model = !PG_ARGISNULL(1);
	bool		assign = has_model && !PG_ARGISNULL(2) && PG_GETARG_BOOL(2);
	bool		has_after = false;
	RescoreContext save = rescore_context;
	TimestampTz as_of = GetCurrentTransactionStartTimestamp();
	MemoryContext batch_cxt;
	uint64		n = 0;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tenant must not be null")));
	tenant = *PG_GETARG_UUID_P(0);
	if (has_model)
		model = *PG_GETARG_UUID_P(1);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	batch_prepare();
	batch_cxt = AllocSetContextCreate(CurrentMemoryContext, "crm scoring batch", ALLOCSET_DEFAULT_SIZES);
	rescore_context = has_model ? RESCORE_MODEL : RESCORE_REFRESH;
	PG_TRY();
	{
		for (;;)
		{
			Datum		args[4];
			char		nulls[4] = {' ', ' ', ' ', ' '};
			bool		one_model = has_model && !assign;
			SPITupleTable *lt;
			uint64		nl;
			MemoryContext old = MemoryContextSwitchTo(batch_cxt);

			args[0] = UUIDPGetDatum(&tenant);
			args[1] = UUIDPGetDatum(&model);
			if (!one_model)
				nulls[1] = 'n';
			args[2] = UUIDPGetDatum(&after);
			if (!has_after)
				nulls[2] = 'n';
			args[3] = Int32GetDatum(SCORING_BATCH);
			if (batch_execute(batch_read_plans[one_model][has_after], args, nulls) != SPI_OK_SELECT)
				elog(ERROR, "could not read leads");
			lt = SPI_tuptable;
			nl = SPI_processed;
			if (nl > 0)
			{
				bool		isnull;

				after = *DatumGetUUIDP(SPI_getbinval(lt->vals[nl - 1], lt->tupdesc, 2, &isnull));
				has_after = true;
				n += batch_score(lt, nl, &tenant, assign ? &model : NULL, as_of);
			}
			SPI_freetuptable(lt);
			MemoryContextSwitchTo(old);
			MemoryContextReset(batch_cxt);
			if (nl < SCORING_BATCH)
				break;
		}
	}
	PG_FINALLY();
	{
		rescore_context = save;
	}
	PG_END_TRY();
	MemoryContextDelete(batch_cxt);
	SPI_finish();
	PG_RETURN_INT64((int64) n);
}

/* score_lead and explain_score ---------------------------------------- */

/*
 * Read a lead of the current tenant (with the caller's rights: a lead the
 * caller cannot see does not exist for it) and score it.
 */
static void
score_one(FunctionCallInfo fcinfo, bool want_values, ScoreResult *r)
{
	pg_uuid_t  *lead;
	pg_uuid_t	model;
	bool		has_model = !PG_ARGISNULL(1);
	TimestampTz as_of;
	Datum		args[1];
	LeadInput	in;
	Model	   *m;
	Oid			save_userid;
	int			save_sec_context;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("lead must not be null")));
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("as_of must not be null")));
	lead = PG_GETARG_UUID_P(0);
	if (has_model)
		model = *PG_GETARG_UUID_P(1);
	as_of = PG_GETARG_TIMESTAMPTZ(2);

	if (lead_plan == NULL)
	{
		Oid			types[1] = {UUIDOID};

		lead_plan = crm_prepare_kept(
								 "SELECT * FROM crm.lead l"
								 " WHERE l.tenant_id OPERATOR(pg_catalog.=) crm.current_tenant()"
								 " AND l.id OPERATOR(pg_catalog.=) $1",
								 1, types);
	}
	args[0] = UUIDPGetDatum(lead);
	if (SPI_execute_plan(lead_plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "lead lookup failed");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("lead %s does not exist", crm_uuid_text(lead))));
	{
		int			attnums[NUM_LEAD_COLUMNS];
		TupleDesc	tupdesc = SPI_tuptable->tupdesc;

		for (int i = 0; i < NUM_LEAD_COLUMNS; i++)
		{
			attnums[i] = SPI_fnumber(tupdesc, lead_column_names[i]);
			if (attnums[i] <= 0)
				elog(ERROR, "crm.lead has no column \"%s\"", lead_column_names[i]);
		}
		lead_input_from_tuple(SPI_tuptable->vals[0], tupdesc, attnums, &in);
	}

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(scoring_owner(), save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		m = model_for(&in, has_model ? &model : NULL);
		compute_score(&in, m, as_of, want_values, r);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
}

/*
 * crm.score_lead(lead, model, as_of): see the SQL comment.
 */
Datum
crm_scoring_score_lead(PG_FUNCTION_ARGS)
{
	ScoreResult r;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	score_one(fcinfo, false, &r);
	SPI_finish();
	if (r.opted_out)
		PG_RETURN_NULL();
	PG_RETURN_INT32(r.total);
}

/*
 * Shares of the total by largest remainder: exact[i] is a factor's share in
 * hundredths; the shares are whole, add up to total, and each is its exact
 * share rounded down or up (ties go to the earlier factor).
 */
static void
apportion(const int *exact, int n, int total, int *share)
{
	int			assigned = 0;
	bool	   *bumped = palloc0(sizeof(bool) * n);

	for (int i = 0; i < n; i++)
	{
		share[i] = exact[i] / 100;
		assigned += share[i];
	}
	while (assigned < total)
	{
		int			best = -1;

		for (int i = 0; i < n; i++)
			if (!bumped[i] && exact[i] % 100 > 0 &&
				(best < 0 || exact[i] % 100 > exact[best] % 100))
				best = i;
		if (best < 0)
			break;
		share[best]++;
		bumped[best] = true;
		assigned++;
	}
}

/*
 * crm.explain_score(lead, model, as_of): see the SQL comment.
 */
Datum
crm_scoring_explain_score(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ScoreResult r;
	Model	   *m;
	int			nrows;
	int		   *exact;
	int		   *share;
	MemoryContext per_query;
	MemoryContext old;
	Tuplestorestate *store;
	TupleDesc	tupdesc;

	InitMaterializedSRF(fcinfo, 0);
	store = rsinfo->setResult;
	tupdesc = rsinfo->setDesc;
	per_query = rsinfo->econtext->ecxt_per_query_memory;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	score_one(fcinfo, true, &r);
	m = r.model;

	old = MemoryContextSwitchTo(per_query);
	if (r.opted_out)
	{
		Datum		values[6];
		bool		nulls[6] = {false, false, false, true, true, true};

		values[0] = CStringGetTextDatum("privacy");
		values[1] = CStringGetTextDatum("profiling_opt_out");
		values[2] = CStringGetTextDatum(psprintf("contact %s opted out of profiling: the lead is not scored",
												 r.opted_out_email));
		tuplestore_putvalues(store, tupdesc, values, nulls);
		MemoryContextSwitchTo(old);
		SPI_finish();
		return (Datum) 0;
	}

	nrows = NUM_FIT + m->ntypes;
	exact = palloc(sizeof(int) * nrows);
	share = palloc(sizeof(int) * nrows);
	for (int f = 0; f < NUM_FIT; f++)
		exact[f] = m->w_fit * r.fit_points[f];
	for (int t = 0; t < m->ntypes; t++)
		exact[NUM_FIT + t] = m->w_eng * r.eng_points[t];
	apportion(exact, nrows, r.total, share);

	for (int i = 0; i < nrows; i++)
	{
		Datum		values[6];
		bool		nulls[6] = {false, false, false, false, false, false};

		if (i < NUM_FIT)
		{
			values[0] = CStringGetTextDatum("fit");
			values[1] = CStringGetTextDatum(fit_names[i]);
			if (r.fit_value[i])
				values[2] = CStringGetTextDatum(r.fit_value[i]);
			else
				nulls[2] = true;
			values[3] = Int32GetDatum(r.fit_points[i]);
			values[4] = Int32GetDatum(m->fit_max[i]);
		}
		else
		{
			int			t = i - NUM_FIT;

			values[0] = CStringGetTextDatum("engagement");
			values[1] = CStringGetTextDatum(m->types[t]);
			values[2] = CStringGetTextDatum(psprintf("%d, decayed %.3f", r.eng_count[t], r.eng_decayed[t]));
			values[3] = Int32GetDatum(r.eng_points[t]);
			values[4] = Int32GetDatum(m->type_cap[t]);
		}
		values[5] = Int32GetDatum(share[i]);
		tuplestore_putvalues(store, tupdesc, values, nulls);
	}
	MemoryContextSwitchTo(old);
	SPI_finish();
	return (Datum) 0;
}
