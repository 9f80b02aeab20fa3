/*-------------------------------------------------------------------------
 *
 * forecast.c
 *	  The revenue range of a set of independent deals: the aggregate
 *	  crm.revenue_distribution(amount numeric, probability numeric).
 *
 * Each deal is won with its probability, independently of the others; the
 * total revenue is then a sum of independent two-point variables.  Its mean
 * and standard deviation are sums and are computed exactly in numeric.  Its
 * P10, P50 and P90 (the smallest total whose cumulative probability reaches
 * 0.1, 0.5, 0.9) are:
 *
 *	 - exact (error bound 0) when at most EXACT_MAX_DEALS deals are
 *	   uncertain (0 < probability < 100): all 2^n outcomes are enumerated
 *	   and the quantile is the sum, in numeric, of the deals of the outcome
 *	   found;
 *	 - otherwise the better, level by level, of two methods whose error is
 *	   proven, and the larger of the chosen bounds is reported:
 *	   (a) a normal approximation with the Berry-Esseen bound for sums of
 *		   independent, not identically distributed variables,
 *		   sup |F(x) - Phi((x - mu) / sigma)| <= C0 * sum E|X_i - EX_i|^3
 *		   / sigma^3 = eps, with C0 = 0.5600 (I. G. Shevtsova, "An
 *		   improvement of convergence rate estimates in the Lyapunov
 *		   theorem", Doklady Mathematics 82(3), 2010, 862-864).  Every x
 *		   below mu + sigma * z(level - eps) then has F(x) < level, and
 *		   F(mu + sigma * z(level + eps)) >= level, so the quantile lies in
 *		   that interval (intersected with [0, total of the uncertain
 *		   deals]); its midpoint is returned, half its width is the bound;
 *	   (b) an exact convolution on a grid: each amount is rounded to a
 *		   multiple of h, the distribution of the rounded total is computed
 *		   exactly by dynamic programming, and since every outcome's total
 *		   moves by at most D = sum |a_i - h round(a_i / h)|, each quantile
 *		   moves by at most D, which is the bound.  The grid has at most
 *		   2^20 cells and n * cells <= 2e7 steps; it only runs when D is
 *		   below the Berry-Esseen bound.
 *
 * Probabilities are carried in double precision; a level counts as reached
 * when the cumulative probability is within 1e-12 of it, so that exact ties
 * (two deals at 50%: P50 is the smaller amount) are found despite rounding.
 *
 * The state keeps one (amount, probability) pair per uncertain deal, so the
 * aggregate works with GROUP BY and in parallel plans (combine, serialize
 * and deserialize functions).
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "libpq/pqformat.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"

#include "utils/datum.h"
#include "utils/fmgrprotos.h"
#include "utils/numeric.h"

PG_FUNCTION_INFO_V1(crm_forecast_distribution_accum);
PG_FUNCTION_INFO_V1(crm_forecast_distribution_combine);
PG_FUNCTION_INFO_V1(crm_forecast_distribution_serialize);
PG_FUNCTION_INFO_V1(crm_forecast_distribution_deserialize);
PG_FUNCTION_INFO_V1(crm_forecast_distribution_final);

#define EXACT_MAX_DEALS		20
#define GRID_MAX_CELLS		(1 << 20)
#define GRID_MIN_CELLS		1024
#define GRID_WORK			2e7
#define BERRY_ESSEEN_C0		0.5600
#define LEVEL_SLACK			1e-12

static const double levels[3] = {0.1, 0.5, 0.9};

/* The transition state: what is needed for exact sums and the quantiles. */
typedef struct RevDistState
{
	int64		ndeals;			/* rows aggregated */
	int			nrand;			/* deals with 0 < probability < 100 */
	int			cap;			/* allocated length of amt and prob */
	double	   *amt;			/* amounts of the uncertain deals */
	double	   *prob;			/* their probabilities, in (0, 1) */
	bool		keep_exact;		/* exact[] is complete (nrand <= 20) */
	Numeric		exact[EXACT_MAX_DEALS]; /* their amounts as given */
	Numeric		sure;			/* total of the deals at 100% */
	Numeric		mean100;		/* sum of amount * probability (percent) */
	Numeric		var10000;		/* sum of amount^2 * p * (100 - p) */
} RevDistState;

/*
 * A numeric constant made from text, in the current memory context.
 */
static Numeric
numeric_const(const char *text)
{
	return DatumGetNumeric(DirectFunctionCall3(numeric_in,
											   CStringGetDatum(text),
											   ObjectIdGetDatum(InvalidOid),
											   Int32GetDatum(-1)));
}

/*
 * Three-way comparison of two numerics, as ORDER BY compares them.
 */
static int
numeric_compare(Numeric a, Numeric b)
{
	return DatumGetInt32(DirectFunctionCall2(numeric_cmp,
											 NumericGetDatum(a),
											 NumericGetDatum(b)));
}

/*
 * A numeric as the nearest double: the quantile methods work in doubles.
 */
static double
numeric_to_double(Numeric n)
{
	return DatumGetFloat8(DirectFunctionCall1(numeric_float8,
											  NumericGetDatum(n)));
}

/*
 * Copy a numeric into the aggregate's context, freeing the value it
 * replaces: the state's sums live as long as the group, their intermediate
 * results only as long as the row.
 */
static Numeric
numeric_keep(MemoryContext cxt, Numeric value, Numeric old)
{
	Numeric		copy = MemoryContextAlloc(cxt, VARSIZE(value));

	memcpy(copy, value, VARSIZE(value));
	if (old != NULL)
		pfree(old);
	return copy;
}

/*
 * An empty state in the aggregate's context: no deals, sums at zero.
 */
static RevDistState *
state_new(MemoryContext cxt)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	RevDistState *st = palloc0(sizeof(RevDistState));

	st->cap = 16;
	st->amt = palloc(st->cap * sizeof(double));
	st->prob = palloc(st->cap * sizeof(double));
	st->keep_exact = true;
	st->sure = int64_to_numeric(0);
	st->mean100 = int64_to_numeric(0);
	st->var10000 = int64_to_numeric(0);
	MemoryContextSwitchTo(old);
	return st;
}

/*
 * Append one uncertain deal; its exact amount is kept while the state can
 * still be enumerated exactly.
 */
static void
state_add_random(MemoryContext cxt, RevDistState *st, double amount,
				 double prob, Numeric exact)
{
	if (st->nrand == st->cap)
	{
		if (st->cap >= (int) (MaxAllocSize / sizeof(double) / 2))
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("too many uncertain deals for crm.revenue_distribution")));
		st->cap *= 2;
		st->amt = repalloc(st->amt, st->cap * sizeof(double));
		st->prob = repalloc(st->prob, st->cap * sizeof(double));
	}
	st->amt[st->nrand] = amount;
	st->prob[st->nrand] = prob;
	if (st->keep_exact)
	{
		if (st->nrand < EXACT_MAX_DEALS && exact != NULL)
			st->exact[st->nrand] = numeric_keep(cxt, exact, NULL);
		else
			st->keep_exact = false;
	}
	st->nrand++;
}

/*
 * Transition: validate one deal and fold it into the state.  A row whose
 * amount or probability is NULL is skipped, as sum() skips NULLs.
 */
Datum
crm_forecast_distribution_accum(PG_FUNCTION_ARGS)
{
	MemoryContext aggcxt;
	RevDistState *st = PG_ARGISNULL(0) ? NULL : (RevDistState *) PG_GETARG_POINTER(0);
	Numeric		amount;
	Numeric		prob;
	Numeric		zero;
	Numeric		hundred;
	Numeric		term;
	int			cmp0;
	int			cmp100;

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("crm.revenue_distribution transition function called in non-aggregate context")));

	if (PG_ARGISNULL(1) || PG_ARGISNULL(2))
	{
		if (st == NULL)
			PG_RETURN_NULL();
		PG_RETURN_POINTER(st);
	}
	amount = PG_GETARG_NUMERIC(1);
	prob = PG_GETARG_NUMERIC(2);
	zero = int64_to_numeric(0);
	hundred = int64_to_numeric(100);

	if (numeric_is_nan(amount) || numeric_is_inf(amount) ||
		numeric_compare(amount, zero) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("amount must be a finite number of at least 0, not %s",
						DatumGetCString(DirectFunctionCall1(numeric_out,
															NumericGetDatum(amount)))),
				 errdetail("crm.revenue_distribution() sums the amounts of deals.")));
	if (numeric_is_nan(prob) ||
		numeric_compare(prob, zero) < 0 || numeric_compare(prob, hundred) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("probability must be between 0 and 100, not %s",
						DatumGetCString(DirectFunctionCall1(numeric_out,
															NumericGetDatum(prob)))),
				 errdetail("A probability is a percentage.")));

	if (st == NULL)
		st = state_new(aggcxt);
	st->ndeals++;

	cmp0 = numeric_compare(prob, zero);
	cmp100 = numeric_compare(prob, hundred);
	if (cmp0 == 0)
		PG_RETURN_POINTER(st);

	term = numeric_mul_opt_error(amount, prob, NULL);
	st->mean100 = numeric_keep(aggcxt, numeric_add_opt_error(st->mean100, term, NULL),
							   st->mean100);
	if (cmp100 == 0)
	{
		st->sure = numeric_keep(aggcxt, numeric_add_opt_error(st->sure, amount, NULL),
								st->sure);
		PG_RETURN_POINTER(st);
	}

	term = numeric_mul_opt_error(term, amount, NULL);
	term = numeric_mul_opt_error(term, numeric_sub_opt_error(hundred, prob, NULL), NULL);
	st->var10000 = numeric_keep(aggcxt, numeric_add_opt_error(st->var10000, term, NULL),
								st->var10000);
	state_add_random(aggcxt, st, numeric_to_double(amount),
					 numeric_to_double(prob) / 100.0, amount);
	PG_RETURN_POINTER(st);
}

/*
 * Combine two partial states (parallel workers, partial aggregation).
 */
Datum
crm_forecast_distribution_combine(PG_FUNCTION_ARGS)
{
	MemoryContext aggcxt;
	MemoryContext old;
	RevDistState *a = PG_ARGISNULL(0) ? NULL : (RevDistState *) PG_GETARG_POINTER(0);
	RevDistState *b = PG_ARGISNULL(1) ? NULL : (RevDistState *) PG_GETARG_POINTER(1);
	int			i;

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("crm.revenue_distribution combine function called in non-aggregate context")));

	if (b == NULL)
	{
		if (a == NULL)
			PG_RETURN_NULL();
		PG_RETURN_POINTER(a);
	}
	if (a == NULL)
		a = state_new(aggcxt);

	old = MemoryContextSwitchTo(aggcxt);
	a->ndeals += b->ndeals;
	a->sure = numeric_keep(aggcxt, numeric_add_opt_error(a->sure, b->sure, NULL), a->sure);
	a->mean100 = numeric_keep(aggcxt, numeric_add_opt_error(a->mean100, b->mean100, NULL),
							  a->mean100);
	a->var10000 = numeric_keep(aggcxt, numeric_add_opt_error(a->var10000, b->var10000, NULL),
							   a->var10000);
	for (i = 0; i < b->nrand; i++)
		state_add_random(aggcxt, a, b->amt[i], b->prob[i],
						 b->keep_exact ? b->exact[i] : NULL);
	MemoryContextSwitchTo(old);
	PG_RETURN_POINTER(a);
}

/*
 * Write a numeric into a serialized state as its length and raw bytes: the
 * state only travels between processes of the same server.
 */
static void
send_numeric(StringInfo buf, Numeric n)
{
	pq_sendint32(buf, VARSIZE(n));
	pq_sendbytes(buf, (char *) n, VARSIZE(n));
}

/*
 * Read back what send_numeric wrote, refusing a length that runs past the
 * end of the state.
 */
static Numeric
recv_numeric(StringInfo buf)
{
	int32		len = pq_getmsgint(buf, 4);
	Numeric		n;

	if (len < (int32) VARHDRSZ || len > buf->len - buf->cursor)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("invalid crm.revenue_distribution state")));
	n = palloc(len);
	pq_copymsgbytes(buf, (char *) n, len);
	return n;
}

/*
 * Serialize a state for a parallel worker's hand-over: counts, the
 * uncertain deals as doubles, the exact amounts while kept, the sums.
 */
Datum
crm_forecast_distribution_serialize(PG_FUNCTION_ARGS)
{
	RevDistState *st = (RevDistState *) PG_GETARG_POINTER(0);
	StringInfoData buf;
	int			i;

	if (!AggCheckCallContext(fcinfo, NULL))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("crm.revenue_distribution serialize function called in non-aggregate context")));

	pq_begintypsend(&buf);
	pq_sendint64(&buf, st->ndeals);
	pq_sendint32(&buf, st->nrand);
	pq_sendbyte(&buf, st->keep_exact ? 1 : 0);
	for (i = 0; i < st->nrand; i++)
	{
		pq_sendfloat8(&buf, st->amt[i]);
		pq_sendfloat8(&buf, st->prob[i]);
	}
	if (st->keep_exact)
		for (i = 0; i < st->nrand; i++)
			send_numeric(&buf, st->exact[i]);
	send_numeric(&buf, st->sure);
	send_numeric(&buf, st->mean100);
	send_numeric(&buf, st->var10000);
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

/*
 * The inverse of crm_forecast_distribution_serialize.
 */
Datum
crm_forecast_distribution_deserialize(PG_FUNCTION_ARGS)
{
	bytea	   *bytes = PG_GETARG_BYTEA_PP(0);
	MemoryContext aggcxt;
	MemoryContext old;
	StringInfoData buf;
	RevDistState *st;
	int			nrand;
	int			i;

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("crm.revenue_distribution deserialize function called in non-aggregate context")));

	initStringInfo(&buf);
	appendBinaryStringInfo(&buf, VARDATA_ANY(bytes), VARSIZE_ANY_EXHDR(bytes));
	st = state_new(aggcxt);
	old = MemoryContextSwitchTo(aggcxt);
	st->ndeals = pq_getmsgint64(&buf);
	nrand = pq_getmsgint(&buf, 4);
	st->keep_exact = pq_getmsgbyte(&buf) != 0;
	if (nrand < 0 || nrand > (buf.len - buf.cursor) / 16)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("invalid crm.revenue_distribution state")));
	st->cap = Max(16, nrand);
	st->amt = repalloc(st->amt, st->cap * sizeof(double));
	st->prob = repalloc(st->prob, st->cap * sizeof(double));
	for (i = 0; i < nrand; i++)
	{
		st->amt[i] = pq_getmsgfloat8(&buf);
		st->prob[i] = pq_getmsgfloat8(&buf);
	}
	st->nrand = nrand;
	if (st->keep_exact)
	{
		if (nrand > EXACT_MAX_DEALS)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
					 errmsg("invalid crm.revenue_distribution state")));
		for (i = 0; i < nrand; i++)
			st->exact[i] = recv_numeric(&buf);
	}
	st->sure = recv_numeric(&buf);
	st->mean100 = recv_numeric(&buf);
	st->var10000 = recv_numeric(&buf);
	pq_getmsgend(&buf);
	MemoryContextSwitchTo(old);
	PG_RETURN_POINTER(st);
}

/* One outcome of the exact enumeration: which deals are won, total, odds. */
typedef struct Outcome
{
	double		total;
	double		prob;
	uint32		mask;
} Outcome;

/*
 * Order outcomes by total, ties by mask, so that the enumeration is
 * deterministic whatever qsort does with equal keys.
 */
static int
outcome_cmp(const void *a, const void *b)
{
	const Outcome *x = (const Outcome *) a;
	const Outcome *y = (const Outcome *) b;

	if (x->total != y->total)
		return x->total < y->total ? -1 : 1;
	if (x->mask != y->mask)
		return x->mask < y->mask ? -1 : 1;
	return 0;
}

/*
 * Exact quantiles of the uncertain part by enumerating every outcome;
 * q[k] is the exact numeric total of the outcome where level k is reached.
 */
static void
quantiles_exact(RevDistState *st, Numeric *q)
{
	int			n = st->nrand;
	Size		count = (Size) 1 << n;
	Outcome    *out = palloc_extended(count * sizeof(Outcome), MCXT_ALLOC_HUGE);
	Size		size = 1;
	Size		j;
	int			i;
	int			k;
	long double cum = 0;

	out[0].total = 0;
	out[0].prob = 1;
	out[0].mask = 0;
	for (i = 0; i < n; i++)
	{
		for (j = 0; j < size; j++)
		{
			out[size + j].total = out[j].total + st->amt[i];
			out[size + j].prob = out[j].prob * st->prob[i];
			out[size + j].mask = out[j].mask | ((uint32) 1 << i);
			out[j].prob *= 1.0 - st->prob[i];
		}
		size *= 2;
	}
	qsort(out, count, sizeof(Outcome), outcome_cmp);

	k = 0;
	for (j = 0; j < count && k < 3; j++)
	{
		cum += out[j].prob;
		while (k < 3 && cum >= levels[k] - LEVEL_SLACK)
		{
			Numeric		total = int64_to_numeric(0);

			for (i = 0; i < n; i++)
				if (out[j].mask & ((uint32) 1 << i))
					total = numeric_add_opt_error(total, st->exact[i], NULL);
			q[k++] = total;
		}
	}
	/* rounding can leave the last level a hair short: it is the maximum */
	while (k < 3)
	{
		Numeric		total = int64_to_numeric(0);

		for (i = 0; i < n; i++)
			total = numeric_add_opt_error(total, st->exact[i], NULL);
		q[k++] = total;
	}
	pfree(out);
}

/*
 * The standard normal distribution function, from the C library's erfc.
 */
static double
norm_cdf(double x)
{
	return 0.5 * erfc(-x / M_SQRT2);
}

/*
 * The standard normal quantile by bisection on erfc: deterministic and
 * accurate to the last bits of a double, without tables of coefficients.
 * upper chooses the upper end of the final bracket (for an interval's upper
 * end), so that rounding can only widen the interval.
 */
static double
norm_quantile(double level, bool upper)
{
	double		lo = -40.0;
	double		hi = 40.0;
	int			i;

	for (i = 0; i < 200; i++)
	{
		double		mid = 0.5 * (lo + hi);

		if (mid <= lo || mid >= hi)
			break;
		if (norm_cdf(mid) < level)
			lo = mid;
		else
			hi = mid;
	}
	return upper ? hi : lo;
}

/*
 * Quantiles with a proven bound for many uncertain deals: Berry-Esseen and,
 * where it promises a smaller error, the grid convolution (see the file
 * header).  est[k] and bound[k] are the estimate and its bound for level k,
 * relative to the uncertain part only.
 */
static void
quantiles_bounded(RevDistState *st, double *est, double *bound)
{
	int			n = st->nrand;
	double		mu = 0;
	double		var = 0;
	double		rho = 0;
	double		top = 0;
	double		sigma;
	double		eps;
	double		be_worst = 0;
	int			cells;
	double		h;
	double		dev = 0;
	int			i;
	int			k;

	for (i = 0; i < n; i++)
	{
		double		a = st->amt[i];
		double		p = st->prob[i];
		double		pq = p * (1.0 - p);

		mu += a * p;
		var += a * a * pq;
		rho += a * a * a * pq * (p * p + (1.0 - p) * (1.0 - p));
		top += a;
	}
	if (top <= 0)
	{
		for (k = 0; k < 3; k++)
			est[k] = bound[k] = 0;
		return;
	}
	sigma = sqrt(var);
	eps = sigma > 0 ? BERRY_ESSEEN_C0 * rho / (var * sigma) * (1.0 + 1e-12) : 1.0;

	for (k = 0; k < 3; k++)
	{
		double		lo = 0;
		double		hi = top;

		if (levels[k] - eps > 0)
			lo = Max(0, mu + sigma * norm_quantile(levels[k] - eps, false));
		if (levels[k] + eps < 1)
			hi = Min(top, mu + sigma * norm_quantile(levels[k] + eps, true));
		if (hi < lo)
			hi = lo;
		est[k] = 0.5 * (lo + hi);
		bound[k] = 0.5 * (hi - lo) + 1e-12 * top;
		be_worst = Max(be_worst, bound[k]);
	}

	/* the grid: as fine as the work budget allows, never below a cent */
	cells = (int) Min((double) GRID_MAX_CELLS, Max((double) GRID_MIN_CELLS, GRID_WORK / n));
	h = Max(0.01, top / (cells - 1));
	for (i = 0; i < n; i++)
		dev += fabs(st->amt[i] - h * rint(st->amt[i] / h));
	if (dev < 1e-9 * h)
		dev = 0;

	if (dev < be_worst)
	{
		int64		width = 0;
		int64		cur = 0;
		double	   *f;
		long double cum = 0;
		int64		j;

		for (i = 0; i < n; i++)
			width += (int64) rint(st->amt[i] / h);
		f = palloc_extended((width + 1) * sizeof(double), MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
		f[0] = 1.0;
		for (i = 0; i < n; i++)
		{
			int64		step = (int64) rint(st->amt[i] / h);
			double		p = st->prob[i];

			CHECK_FOR_INTERRUPTS();
			if (step == 0)
				continue;		/* rounds to nothing; counted in dev */
			for (j = cur; j >= 0; j--)
			{
				double		mass = f[j];

				f[j + step] += mass * p;
				f[j] = mass * (1.0 - p);
			}
			cur += step;
		}
		k = 0;
		for (j = 0; j <= width && k < 3; j++)
		{
			cum += f[j];
			while (k < 3 && cum >= levels[k] - LEVEL_SLACK)
			{
				double		lo = Max(0, j * h - dev);
				double		hi = Min(top, j * h + dev);
				double		b = 0.5 * (hi - lo) + 1e-12 * top;

				/* whole cents, none rounded: the grid total is the total */
				if (dev == 0 && h == 0.01)
					b = 0;

				if (b < bound[k])
				{
					est[k] = 0.5 * (lo + hi);
					bound[k] = b;
				}
				k++;
			}
		}
		pfree(f);
	}
}

/*
 * A double as numeric rounded to cents; up rounds towards +infinity.
 */
static Numeric
cents(double value, bool up)
{
	char		text[64];
	double		c = up ? ceil(value * 100.0 - 1e-9) : rint(value * 100.0);

	snprintf(text, sizeof(text), "%.0f", c);
	return numeric_mul_opt_error(numeric_const(text), numeric_const("0.01"), NULL);
}

/*
 * The P-levels of the uncertain deals (q[k], without the certain ones) and
 * the bound of their error: exact enumeration or the bounded methods.  Used
 * by the aggregate's final function and by crm.forecast_totals(), so that
 * both give the same range for the same deals.
 */
static void
distribution_quantiles(RevDistState *st, Numeric *q, Numeric *bound)
{
	int			k;

	if (st->nrand <= EXACT_MAX_DEALS && st->keep_exact)
	{
		quantiles_exact(st, q);
		*bound = int64_to_numeric(0);
	}
	else
	{
		double		est[3];
		double		b[3];
		double		worst = 0;

		quantiles_bounded(st, est, b);
		for (k = 0; k < 3; k++)
		{
			q[k] = cents(est[k], false);
			/* an estimate off the cent grid was rounded: half a cent more */
			if (b[k] > 0)
				worst = Max(worst, b[k] + 0.005);
		}
		*bound = cents(worst, true);
	}
}

/*
 * Final: (mean, stddev, p10, p50, p90, error_bound); NULL for no rows.
 */
Datum
crm_forecast_distribution_final(PG_FUNCTION_ARGS)
{
	RevDistState *st = PG_ARGISNULL(0) ? NULL : (RevDistState *) PG_GETARG_POINTER(0);
	TupleDesc	tupdesc;
	Datum		values[6];
	bool		nulls[6] = {false, false, false, false, false, false};
	Numeric		q[3];
	Numeric		bound;
	int			k;

	if (st == NULL)
		PG_RETURN_NULL();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("crm.revenue_distribution must return a composite type")));
	tupdesc = BlessTupleDesc(tupdesc);

	values[0] = NumericGetDatum(numeric_mul_opt_error(st->mean100, numeric_const("0.01"), NULL));
	values[1] = DirectFunctionCall1(numeric_sqrt,
									NumericGetDatum(numeric_mul_opt_error(st->var10000,
																		  numeric_const("0.0001"),
																		  NULL)));
	distribution_quantiles(st, q, &bound);
	for (k = 0; k < 3; k++)
		values[2 + k] = NumericGetDatum(numeric_add_opt_error(st->sure, q[k], NULL));
	values[5] = NumericGetDatum(bound);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*-------------------------------------------------------------------------
 * crm.forecast_totals: the forecast's per-period totals in one pass
 *
 * crm.forecast() without what-if changes needs, per period (and owner), the
 * counts and sums of the deals by category and the revenue range of the
 * period's deals.  Deriving every deal in SQL and aggregating it with
 * numeric FILTERs and the aggregate above costs several times the scan;
 * here one SPI scan of the deals streams into a DestReceiver (no copy of
 * the rows; the stages come from a hash table, not a join), and each deal
 * is folded into a hash table of groups in C:
 *
 *	 - amounts (numeric(18,2)) and probabilities (numeric(5,2)) are read as
 *	   whole cents and hundredths and summed exactly in 128-bit integers;
 *	   a deal in another currency, or a value that is not a whole number of
 *	   cents, is converted and summed in numeric instead, exactly as well;
 *	 - a rate is looked up once per (currency, day) with crm.exchange_rate,
 *	   and a missing one raises crm.convert_amount's error (P0002);
 *	 - the revenue range state is the aggregate's own (RevDistState), fed
 *	   the same doubles the aggregate would compute, so p10/p50/p90 and the
 *	   bound are the aggregate's to the bit.  The mean and standard
 *	   deviation, which the forecast does not show, are not kept.
 *-------------------------------------------------------------------------
 */

PG_FUNCTION_INFO_V1(crm_forecast_totals);

#define CAT_PIPELINE	1
#define CAT_BEST_CASE	2
#define CAT_COMMIT		3
#define CAT_CLOSED		4
#define CAT_OMITTED		5

/* A group of the forecast: a period, and an owner when grouped by owner. */
typedef struct TotalsKey
{
	DateADT		period;
	bool		has_owner;
	pg_uuid_t	owner;
} TotalsKey;

typedef struct TotalsGroup
{
	TotalsKey	key;
	int			open_deals;
	int			stage_value_deals;
	int64		dist_rows;
	int128		pipeline_c;		/* in cents */
	int128		best_c;
	int128		commit_c;
	int128		won_c;
	int128		sure_c;
	int128		weighted_u;		/* in millionths (cents x hundredths) */
	Numeric		pipeline_n;		/* the deals summed in numeric; NULL: none */
	Numeric		best_n;
	Numeric		commit_n;
	Numeric		won_n;
	Numeric		sure_n;
	Numeric		weighted_n;
	RevDistState *dist;
} TotalsGroup;

/* A rate looked up: (currency, day) -> rate. */
typedef struct RateKey
{
	char		code[4];
	DateADT		day;
} RateKey;

typedef struct RateEntry
{
	RateKey		key;
	Numeric		rate;
} RateEntry;

/* A stage of the tenant: its default category and expected value. */
typedef struct StageEntry
{
	pg_uuid_t	id;
	int			category;
	Numeric		expected_value; /* NULL: none */
	char		ev_code[4];
	int			ev_codelen;
} StageEntry;

/* What the scan of the deals folds into, for the DestReceiver. */
typedef struct TotalsState
{
	DestReceiver pub;			/* must be first */
	MemoryContext cxt;			/* groups, rates, stages live here */
	MemoryContext rowcxt;		/* reset after every deal */
	HTAB	   *groups;
	HTAB	   *rates;
	HTAB	   *stages;
	char		period;
	bool		by_owner;
	bool		has_from;
	bool		has_to;
	DateADT		from;
	DateADT		to;
	DateADT		as_of_day;
	text	   *target;
	Datum		tenant;
} TotalsState;

static SPIPlanPtr totals_plan = NULL;
static SPIPlanPtr stages_plan = NULL;
static SPIPlanPtr rate_plan = NULL;
static SPIPlanPtr rate_error_plan = NULL;
static SPIPlanPtr currency_plan = NULL;

/*
 * The target currency must be one of crm.currency: a code that is none is
 * the 22023 crm.forecast gives, checked before any deal is read (else it
 * would surface as a missing rate, P0002, or with no deal not at all).
 */
static void
totals_require_currency(Datum code)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (currency_plan == NULL)
	{
		Oid			types[1] = {TEXTOID};

		currency_plan = crm_prepare_kept("SELECT 1 FROM crm.currency WHERE code OPERATOR(pg_catalog.=) $1",
										 1, types);
	}
	if (SPI_execute_plan(currency_plan, &code, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "crm.forecast_totals: currency lookup failed");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown currency \"%s\"", TextDatumGetCString(code)),
				 errhint("Use an ISO 4217 code listed in crm.currency.")));
	SPI_finish();
}

/*
 * A numeric datum as whole units of 10^-2 (cents of an amount, hundredths
 * of a percentage), read from its stored digits (base 10000, the on-disk
 * format that pg_upgrade keeps).  False when it is special (NaN, infinite),
 * has more than two decimals that are not zero, or is too large for the
 * exact integer sums; the caller then uses numeric arithmetic.
 */
static bool
numeric_hundredths(Datum d, int64 *out)
{
	struct varlena *v = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(d));
	const char *data = VARDATA_ANY(v);
	int			len = VARSIZE_ANY_EXHDR(v);
	uint16		header;
	int			weight;
	bool		neg;
	int			hdr;
	int			ndigits;
	int128		acc = 0;
	int			i;

	if (len < (int) sizeof(uint16))
		return false;
	memcpy(&header, data, sizeof(uint16));
	if ((header & 0xC000) == 0xC000)
		return false;			/* NaN or infinity */
	if ((header & 0xC000) == 0x8000)
	{
		/* short format: sign, display scale and weight in the header */
		neg = (header & 0x2000) != 0;
		weight = (header & 0x0040) ? (int) (~0x003F | (header & 0x003F)) : (int) (header & 0x003F);
		hdr = sizeof(uint16);
	}
	else
	{
		int16		w;

		if (len < (int) (2 * sizeof(uint16)))
			return false;
		neg = (header & 0xC000) == 0x4000;
		memcpy(&w, data + sizeof(uint16), sizeof(int16));
		weight = w;
		hdr = 2 * sizeof(uint16);
	}
	ndigits = (len - hdr) / (int) sizeof(int16);
	for (i = 0; i < ndigits; i++)
	{
		int16		digit;
		int			e = weight - i;
		int			k;
		int128		term;

		memcpy(&digit, data + hdr + i * sizeof(int16), sizeof(int16));
		if (digit == 0)
			continue;
		if (e < -1 || e > 3)
			return false;		/* below 10^-4, or 10^16 and more */
		term = digit;
		for (k = -1; k < e; k++)
			term *= 10000;
		acc += term;			/* in units of 10^-4 */
	}
	if (acc % 100 != 0)
		return false;
	acc /= 100;
	*out = (int64) (neg ? -acc : acc);
	return true;
}

/*
 * An exact integer count of 10^-scale units as numeric.
 */
static Numeric
int128_scaled_numeric(int128 value, int scale)
{
	char		buf[64];
	char		digits[48];
	int			n = 0;
	int			pos = 0;
	bool		neg = value < 0;
	uint128		u = neg ? -(uint128) value : (uint128) value;

	do
	{
		digits[n++] = '0' + (int) (u % 10);
		u /= 10;
	} while (u > 0);
	while (n <= scale)
		digits[n++] = '0';
	if (neg)
		buf[pos++] = '-';
	while (n > 0)
	{
		if (n == scale)
			buf[pos++] = '.';
		buf[pos++] = digits[--n];
	}
	buf[pos] = '\0';
	return numeric_const(buf);
}

/*
 * A group's money: the integer part plus the numeric part, if any.
 */
static Datum
group_money(int128 value, int scale, Numeric extra)
{
	Numeric		n = int128_scaled_numeric(value, scale);

	if (extra != NULL)
		n = numeric_add_opt_error(n, extra, NULL);
	return NumericGetDatum(n);
}

/*
 * Add to a numeric sum that starts out NULL.
 */
static Numeric
numeric_sum_null(Numeric sum, Numeric value)
{
	return sum == NULL ? value : numeric_add_opt_error(sum, value, NULL);
}

/*
 * The first day of the period (date_trunc(period, day::timestamp)::date).
 */
static DateADT
period_start(DateADT day, char period)
{
	int			y,
				m,
				d;

	if (DATE_NOT_FINITE(day))
		return day;
	if (day >= (TIMESTAMP_END_JULIAN - POSTGRES_EPOCH_JDATE))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("date out of range for timestamp")));
	if (period == 'd')
		return day;
	if (period == 'w')
		return day - (j2day(day + POSTGRES_EPOCH_JDATE) + 6) % 7;
	j2date(day + POSTGRES_EPOCH_JDATE, &y, &m, &d);
	if (period == 'q')
		m = ((m - 1) / 3) * 3 + 1;
	else if (period == 'y')
		m = 1;
	return date2j(y, m, 1) - POSTGRES_EPOCH_JDATE;
}

/*
 * The rate from code into the target currency on day, looked up once per
 * (currency, day) in a nested SPI connection (the scan of the deals is
 * running); a missing one raises crm.convert_amount's error.
 */
static Numeric
totals_rate(TotalsState *ts, const char *code, int codelen, DateADT day)
{
	RateKey		key;
	RateEntry  *entry;
	bool		found;

	memset(&key, 0, sizeof(key));
	memcpy(key.code, code, Min(codelen, 3));
	key.day = day;
	entry = hash_search(ts->rates, &key, HASH_ENTER, &found);
	if (!found)
	{
		Datum		args[4];
		bool		isnull;
		Datum		rate;

		entry->rate = NULL;
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		args[0] = PointerGetDatum(cstring_to_text_with_len(code, codelen));
		args[1] = PointerGetDatum(ts->target);
		args[2] = DateADTGetDatum(day);
		args[3] = ts->tenant;
		if (SPI_execute_plan(rate_plan, args, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "crm.forecast_totals: rate lookup failed");
		rate = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (isnull)
		{
			/* the error the SQL path raises, from the same function */
			hash_search(ts->rates, &key, HASH_REMOVE, NULL);
			SPI_execute_plan(rate_error_plan, args, NULL, true, 1);
			elog(ERROR, "crm.forecast_totals: no rate from %.*s", codelen, code);
		}
		entry->rate = numeric_keep(ts->cxt, DatumGetNumeric(rate), NULL);
		SPI_finish();
	}
	return entry->rate;
}

/*
 * Fold one uncertain or certain deal into the group's revenue range, as
 * crm_forecast_distribution_accum would (without the mean and variance).
 */
static void
totals_dist_add(MemoryContext cxt, TotalsGroup *g, int64 cents, bool exact_cents,
				Numeric converted, int64 prob_h)
{
	double		amount;

	g->dist_rows++;
	if (g->dist == NULL)
		g->dist = state_new(cxt);
	g->dist->ndeals++;
	if (prob_h == 0)
		return;
	if (prob_h == 10000)
	{
		if (exact_cents)
			g->sure_c += cents;
		else
			g->sure_n = numeric_keep(cxt, numeric_sum_null(g->sure_n, converted), g->sure_n);
		return;
	}
	if (exact_cents && cents <= ((int64) 1 << 53))
		amount = (double) cents / 100.0;
	else
	{
		if (converted == NULL)
			converted = int128_scaled_numeric(cents, 2);
		amount = numeric_to_double(converted);
	}
	if (g->dist->keep_exact && g->dist->nrand < EXACT_MAX_DEALS && converted == NULL)
		converted = int128_scaled_numeric(cents, 2);
	state_add_random(cxt, g->dist, amount, ((double) prob_h / 100.0) / 100.0,
					 g->dist->nrand < EXACT_MAX_DEALS ? converted : NULL);
}

/*
 * The category code of a category's name (CAT_*); 0 for anything else.
 */
static int
category_code(const char *name, int len)
{
	if (len == 8 && memcmp(name, "pipeline", 8) == 0)
		return CAT_PIPELINE;
	if (len == 9 && memcmp(name, "best_case", 9) == 0)
		return CAT_BEST_CASE;
	if (len == 6 && memcmp(name, "commit", 6) == 0)
		return CAT_COMMIT;
	if (len == 6 && memcmp(name, "closed", 6) == 0)
		return CAT_CLOSED;
	if (len == 7 && memcmp(name, "omitted", 7) == 0)
		return CAT_OMITTED;
	return 0;
}

/*
 * Load the tenant's stages (a few dozen rows) into a hash table, so that
 * the scan of the deals needs no join.
 */
static void
totals_load_stages(TotalsState *ts)
{
	HASHCTL		ctl;
	Datum		args[1];
	uint64		i;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(pg_uuid_t);
	ctl.entrysize = sizeof(StageEntry);
	ctl.hcxt = ts->cxt;
	ts->stages = hash_create("crm.forecast_totals stages", 64, &ctl,
							 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	args[0] = ts->tenant;
	if (SPI_execute_plan(stages_plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "crm.forecast_totals: stage lookup failed");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	td = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		id = SPI_getbinval(tup, td, 1, &isnull);
		Datum		cat = SPI_getbinval(tup, td, 2, &isnull);
		Datum		ev;
		StageEntry *st;
		text	   *t;

		st = hash_search(ts->stages, DatumGetUUIDP(id), HASH_ENTER, NULL);
		t = DatumGetTextPP(cat);
		st->category = category_code(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
		ev = SPI_getbinval(tup, td, 3, &isnull);
		st->expected_value = isnull ? NULL : numeric_keep(ts->cxt, DatumGetNumeric(ev), NULL);
		st->ev_codelen = 0;
		ev = SPI_getbinval(tup, td, 4, &isnull);
		if (!isnull)
		{
			t = DatumGetTextPP(ev);
			st->ev_codelen = Min(VARSIZE_ANY_EXHDR(t), 3);
			memcpy(st->ev_code, VARDATA_ANY(t), st->ev_codelen);
		}
		else if (st->expected_value != NULL)
			st->expected_value = NULL;	/* the CHECK makes them go together */
	}
	SPI_freetuptable(SPI_tuptable);
}

/*
 * Fold one deal into its group.  Columns: owner_id, won, forecast_category,
 * amount, currency, stage_id, close day, probability.
 */
static bool
totals_receive(TupleTableSlot *slot, DestReceiver *self)
{
	TotalsState *ts = (TotalsState *) self;
	Datum	   *v;
	bool	   *isnull;
	StageEntry *stage;
	DateADT		day;
	bool		won;
	int			cat;
	bool		used_stage_value;
	Datum		value;
	const char *code;
	int			codelen;
	bool		same;
	int64		prob_h;
	int64		cents = 0;
	bool		exact_cents;
	Numeric		converted = NULL;
	Numeric		prob_n = NULL;
	TotalsKey	key;
	bool		found;
	TotalsGroup *g;
	MemoryContext old;
	MemoryContext cxt = ts->cxt;

	slot_getallattrs(slot);
	v = slot->tts_values;
	isnull = slot->tts_isnull;

	/* the window, by close day (a deal without one is in no window) */
	if (isnull[6])
		return true;
	day = DatumGetDateADT(v[6]);
	if ((ts->has_from && day < ts->from) || (ts->has_to && day > ts->to))
		return true;
	stage = hash_search(ts->stages, DatumGetUUIDP(v[5]), HASH_FIND, NULL);
	if (stage == NULL)
		return true;			/* not a stage of the tenant: no deal */

	old = MemoryContextSwitchTo(ts->rowcxt);
	won = DatumGetBool(v[1]);
	if (won)
		cat = CAT_CLOSED;
	else if (isnull[2])
		cat = stage->category;
	else
	{
		text	   *t = DatumGetTextPP(v[2]);

		cat = category_code(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
	}

	/* the stage's expected value stands in for no amount */
	used_stage_value = false;
	if (stage->expected_value != NULL)
	{
		if (numeric_hundredths(v[3], &cents))
			used_stage_value = cents == 0;
		else
			used_stage_value = DatumGetBool(DirectFunctionCall2(numeric_eq, v[3],
																NumericGetDatum(int64_to_numeric(0))));
	}
	if (used_stage_value)
	{
		value = NumericGetDatum(stage->expected_value);
		code = stage->ev_code;
		codelen = stage->ev_codelen;
	}
	else
	{
		text	   *t = DatumGetTextPP(v[4]);

		value = v[3];
		code = VARDATA_ANY(t);
		codelen = VARSIZE_ANY_EXHDR(t);
	}
	same = codelen == VARSIZE_ANY_EXHDR(ts->target) &&
		memcmp(code, VARDATA_ANY(ts->target), codelen) == 0;

	exact_cents = same && numeric_hundredths(value, &cents);
	if (!exact_cents)
	{
		Numeric		rate = same ? NULL :
		totals_rate(ts, code, codelen, won ? day : ts->as_of_day);

		converted = rate == NULL ? DatumGetNumeric(value) :
			numeric_mul_opt_error(DatumGetNumeric(value), rate, NULL);
	}
	if (won)
		prob_h = 10000;
	else if (!numeric_hundredths(v[7], &prob_h) || prob_h < 0 || prob_h > 10000)
	{
		/* a probability that is not whole hundredths: numeric */
		prob_h = -1;
		prob_n = DatumGetNumeric(v[7]);
		if (converted == NULL)
			converted = int128_scaled_numeric(cents, 2);
		exact_cents = false;
	}

	memset(&key, 0, sizeof(key));
	key.period = period_start(day, ts->period);
	if (ts->by_owner && !isnull[0])
	{
		key.has_owner = true;
		memcpy(&key.owner, DatumGetUUIDP(v[0]), sizeof(pg_uuid_t));
	}
	g = hash_search(ts->groups, &key, HASH_ENTER, &found);
	if (!found)
		memset(((char *) g) + sizeof(TotalsKey), 0, sizeof(TotalsGroup) - sizeof(TotalsKey));
	if (used_stage_value)
		g->stage_value_deals++;
	if (won)
	{
		if (exact_cents)
			g->won_c += cents;
		else
			g->won_n = numeric_keep(cxt, numeric_sum_null(g->won_n, converted), g->won_n);
	}
	else if (cat != CAT_OMITTED)
	{
		bool		best = cat == CAT_BEST_CASE || cat == CAT_COMMIT || cat == CAT_CLOSED;
		bool		commit = cat == CAT_COMMIT || cat == CAT_CLOSED;

		g->open_deals++;
		if (exact_cents)
		{
			g->pipeline_c += cents;
			if (best)
				g->best_c += cents;
			if (commit)
				g->commit_c += cents;
			g->weighted_u += (int128) cents * prob_h;
		}
		else
		{
			Numeric		w;

			g->pipeline_n = numeric_keep(cxt, numeric_sum_null(g->pipeline_n, converted), g->pipeline_n);
			if (best)
				g->best_n = numeric_keep(cxt, numeric_sum_null(g->best_n, converted), g->best_n);
			if (commit)
				g->commit_n = numeric_keep(cxt, numeric_sum_null(g->commit_n, converted), g->commit_n);
			if (prob_n == NULL)
				prob_n = int128_scaled_numeric(prob_h, 2);
			w = numeric_mul_opt_error(numeric_mul_opt_error(converted, prob_n, NULL),
									  numeric_const("0.01"), NULL);
			g->weighted_n = numeric_keep(cxt, numeric_sum_null(g->weighted_n, w), g->weighted_n);
		}
	}
	if (won || cat != CAT_OMITTED)
	{
		if (prob_h < 0)
		{
			/* not hundredths: what the aggregate would compute */
			int			c0 = numeric_compare(prob_n, int64_to_numeric(0));
			int			c100 = numeric_compare(prob_n, int64_to_numeric(100));

			g->dist_rows++;
			if (g->dist == NULL)
				g->dist = state_new(cxt);
			g->dist->ndeals++;
			if (c0 == 0)
				;
			else if (c100 == 0)
				g->sure_n = numeric_keep(cxt, numeric_sum_null(g->sure_n, converted), g->sure_n);
			else
				state_add_random(cxt, g->dist, numeric_to_double(converted),
								 numeric_to_double(prob_n) / 100.0,
								 g->dist->nrand < EXACT_MAX_DEALS ? converted : NULL);
		}
		else
			totals_dist_add(cxt, g, cents, exact_cents, converted, prob_h);
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(ts->rowcxt);
	CHECK_FOR_INTERRUPTS();
	return true;
}

static void
totals_startup(DestReceiver *self, int operation, TupleDesc typeinfo)
{
}

static void
totals_shutdown(DestReceiver *self)
{
}

static void
totals_destroy(DestReceiver *self)
{
}

/*
 * crm.forecast_totals(period, from_date, to_date, pipeline, owner, currency,
 * as_of, by_owner): one row per period (and owner) with the sums
 * crm.forecast shows, unrounded, and the revenue range.  The deals are
 * scanned by SPI into a DestReceiver that folds each as it comes: no copy
 * of the rows, no join (the stages are in a hash table).
 */
Datum
crm_forecast_totals(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TotalsState *ts;
	MemoryContext old;
	char	   *period_name;
	ParamListInfo params;
	SPIExecuteOptions options;
	HASHCTL		ctl;
	HASH_SEQ_STATUS seq;
	TotalsGroup *g;
	pg_uuid_t  *tenant;
	bool		has_tenant;
	int			i;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(5) || PG_ARGISNULL(6) || PG_ARGISNULL(7))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("period, currency, as_of and by_owner must not be null")));
	period_name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (!PG_ARGISNULL(1) && !PG_ARGISNULL(2) &&
		PG_GETARG_DATEADT(1) > PG_GETARG_DATEADT(2))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("from_date %s is after to_date %s",
						DatumGetCString(DirectFunctionCall1(date_out, PG_GETARG_DATUM(1))),
						DatumGetCString(DirectFunctionCall1(date_out, PG_GETARG_DATUM(2))))));

	totals_require_currency(PG_GETARG_DATUM(5));

	InitMaterializedSRF(fcinfo, 0);
	old = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	ts = palloc0(sizeof(TotalsState));
	ts->cxt = rsinfo->econtext->ecxt_per_query_memory;
	if (strcmp(period_name, "day") == 0)
		ts->period = 'd';
	else if (strcmp(period_name, "week") == 0)
		ts->period = 'w';
	else if (strcmp(period_name, "month") == 0)
		ts->period = 'm';
	else if (strcmp(period_name, "quarter") == 0)
		ts->period = 'q';
	else if (strcmp(period_name, "year") == 0)
		ts->period = 'y';
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown period \"%s\"", period_name),
				 errhint("Use day, week, month, quarter or year.")));
	ts->has_from = !PG_ARGISNULL(1);
	ts->from = ts->has_from ? PG_GETARG_DATEADT(1) : 0;
	ts->has_to = !PG_ARGISNULL(2);
	ts->to = ts->has_to ? PG_GETARG_DATEADT(2) : 0;
	ts->target = PG_GETARG_TEXT_P_COPY(5);
	ts->as_of_day = DatumGetDateADT(DirectFunctionCall1(timestamptz_date, PG_GETARG_DATUM(6)));
	ts->by_owner = PG_GETARG_BOOL(7);
	tenant = palloc(sizeof(pg_uuid_t));
	has_tenant = crm_current_tenant_id(tenant);
	ts->tenant = UUIDPGetDatum(tenant);
	MemoryContextSwitchTo(old);

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(TotalsKey);
	ctl.entrysize = sizeof(TotalsGroup);
	ctl.hcxt = ts->cxt;
	ts->groups = hash_create("crm.forecast_totals groups", 64, &ctl,
							 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(RateKey);
	ctl.entrysize = sizeof(RateEntry);
	ctl.hcxt = ts->cxt;
	ts->rates = hash_create("crm.forecast_totals rates", 16, &ctl,
							HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	ts->rowcxt = AllocSetContextCreate(CurrentMemoryContext, "crm.forecast_totals row",
									   ALLOCSET_DEFAULT_SIZES);

	if (!has_tenant)
		return (Datum) 0;		/* no tenant: no deals, as under the policy */

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (totals_plan == NULL)
	{
		Oid			types[3] = {UUIDOID, UUIDOID, UUIDOID};
		Oid			stypes[1] = {UUIDOID};
		Oid			rtypes[4] = {TEXTOID, TEXTOID, DATEOID, UUIDOID};
		SPIPlanPtr	p1;
		SPIPlanPtr	p2;
		SPIPlanPtr	p3;
		SPIPlanPtr	p4;

		/*
		 * The tenant's active open and won deals; the window is C's.  Planned
		 * for each call (custom plan): a big tenant among small ones wants a
		 * sequential scan, a small one the tenant's index.
		 */
		p1 = SPI_prepare_cursor("SELECT o.owner_id, o.status OPERATOR(pg_catalog.=) 'won', o.forecast_category, "
						 "       o.amount, o.currency, o.stage_id, "
						 "       CASE WHEN o.status OPERATOR(pg_catalog.=) 'open' THEN o.expected_close_date "
						 "            ELSE (o.closed_at)::pg_catalog.date END, "
						 "       o.probability "
						 "  FROM crm.opportunity o "
						 " WHERE o.tenant_id OPERATOR(pg_catalog.=) $3 "
						 "   AND o.archived_at IS NULL "
						 "   AND o.status OPERATOR(pg_catalog.=) ANY ('{open,won}'::pg_catalog.text[]) "
						 "   AND ($1 IS NULL OR o.pipeline_id OPERATOR(pg_catalog.=) $1) "
						 "   AND ($2 IS NULL OR o.owner_id OPERATOR(pg_catalog.=) $2)",
						 3, types, CURSOR_OPT_CUSTOM_PLAN);
		p2 = SPI_prepare("SELECT s.id, s.forecast_category, s.expected_value, s.expected_value_currency "
						 "  FROM crm.stage s WHERE s.tenant_id OPERATOR(pg_catalog.=) $1",
						 1, stypes);
		p3 = SPI_prepare("SELECT crm.exchange_rate($1, $2, $3, $4)", 4, rtypes);
		p4 = SPI_prepare("SELECT crm.convert_amount(1::pg_catalog.numeric, $1, $2, $3, $4)", 4, rtypes);
		if (p1 == NULL || p2 == NULL || p3 == NULL || p4 == NULL)
			elog(ERROR, "crm.forecast_totals: SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(p1);
		SPI_keepplan(p2);
		SPI_keepplan(p3);
		SPI_keepplan(p4);
		stages_plan = p2;
		rate_plan = p3;
		rate_error_plan = p4;
		totals_plan = p1;
	}

	totals_load_stages(ts);

	params = makeParamList(3);
	params->params[0].value = PG_GETARG_DATUM(3);
	params->params[0].isnull = PG_ARGISNULL(3);
	params->params[1].value = PG_GETARG_DATUM(4);
	params->params[1].isnull = PG_ARGISNULL(4);
	params->params[2].value = ts->tenant;
	params->params[2].isnull = false;
	for (i = 0; i < 3; i++)
	{
		params->params[i].pflags = PARAM_FLAG_CONST;
		params->params[i].ptype = UUIDOID;
	}

	ts->pub.receiveSlot = totals_receive;
	ts->pub.rStartup = totals_startup;
	ts->pub.rShutdown = totals_shutdown;
	ts->pub.rDestroy = totals_destroy;
	ts->pub.mydest = DestNone;

	memset(&options, 0, sizeof(options));
	options.params = params;
	options.read_only = true;
	options.dest = (DestReceiver *) ts;
	/* a receiver that is not SPI's makes SPI report SPI_OK_UTILITY */
	if (SPI_execute_plan_extended(totals_plan, &options) < 0)
		elog(ERROR, "crm.forecast_totals: the scan of the deals failed");

	/* one row per group */
	hash_seq_init(&seq, ts->groups);
	while ((g = hash_seq_search(&seq)) != NULL)
	{
		Datum		values[13];
		bool		rnulls[13];
		int			k;

		memset(rnulls, 0, sizeof(rnulls));
		old = MemoryContextSwitchTo(ts->rowcxt);
		values[0] = DateADTGetDatum(g->key.period);
		if (g->key.has_owner)
			values[1] = UUIDPGetDatum(&g->key.owner);
		else
			rnulls[1] = true;
		values[2] = Int32GetDatum(g->open_deals);
		values[3] = group_money(g->pipeline_c, 2, g->pipeline_n);
		values[4] = group_money(g->best_c, 2, g->best_n);
		values[5] = group_money(g->commit_c, 2, g->commit_n);
		values[6] = group_money(g->won_c, 2, g->won_n);
		values[7] = group_money(g->weighted_u, 6, g->weighted_n);
		if (g->dist_rows > 0)
		{
			Numeric		q[3];
			Numeric		bound;
			Numeric		sure = DatumGetNumeric(group_money(g->sure_c, 2, g->sure_n));

			distribution_quantiles(g->dist, q, &bound);
			for (k = 0; k < 3; k++)
				values[8 + k] = NumericGetDatum(numeric_add_opt_error(sure, q[k], NULL));
			values[11] = NumericGetDatum(bound);
		}
		else
		{
			for (k = 8; k < 12; k++)
				rnulls[k] = true;
		}
		values[12] = Int32GetDatum(g->stage_value_deals);
		MemoryContextSwitchTo(old);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, rnulls);
		MemoryContextReset(ts->rowcxt);
	}
	SPI_finish();
	return (Datum) 0;
}

/*
 * crm.snapshot_forecast(name, period_type, from_date, to_date, pipeline,
 * owner, as_of): stores a forecast snapshot.
 *
 * No role may write crm.revenue_forecast or crm.forecast_deal (issue 8 item
 * 4: a writer could otherwise store a snapshot with any totals, user or
 * window, and crm.forecast_accuracy would report on it).  So the deals are
 * read here with the caller's rights (row-level security and private
 * visibility apply), and the rows are written by the internal
 * crm.forecast_snapshot_store running as the tables' owner, with the
 * caller's tenant, user and currency as parameters.
 */
PG_FUNCTION_INFO_V1(crm_forecast_snapshot);

static SPIPlanPtr snapshot_who_plan = NULL;
static SPIPlanPtr snapshot_currency_plan = NULL;
static SPIPlanPtr snapshot_deals_plan = NULL;
static SPIPlanPtr snapshot_store_plan = NULL;

static SPIPlanPtr
snapshot_prepare(const char *sql, int nargs, Oid *types)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

	if (plan == NULL || SPI_keepplan(plan) != 0)
		elog(ERROR, "could not prepare a forecast snapshot statement: %s",
			 SPI_result_code_string(SPI_result));
	return plan;
}

CRM_SHARD_ENTRY(crm_forecast_snapshot)
{
	bool		isnull;
	Datum		tenant;
	Datum		user_id;
	bool		user_null;
	Datum		currency;
	Datum		deals;
	Datum		snap;
	char	   *period = NULL;
	Oid			save_userid;
	int			save_sec_context;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (snapshot_who_plan == NULL)
		snapshot_who_plan = snapshot_prepare(
											 "SELECT crm.current_tenant(), crm.current_user_id()",
											 0, NULL);
	if (SPI_execute_plan(snapshot_who_plan, NULL, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read the current tenant");
	tenant = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("no tenant to take a forecast snapshot for")));
	tenant = datumCopy(tenant, false, 16);
	user_id = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &user_null);
	if (!user_null)
		user_id = datumCopy(user_id, false, 16);

	/*
	 * The tenant's currency by a statement that names the tenant (on Citus
	 * routed to its shard; crm.tenant_default_currency() filters by a
	 * function call, which a worker cannot route).
	 */
	if (snapshot_currency_plan == NULL)
	{
		Oid			uuid_type = UUIDOID;

		snapshot_currency_plan = snapshot_prepare(
												  "SELECT t.default_currency FROM crm.tenant t"
												  " WHERE t.tenant_id OPERATOR(pg_catalog.=) $1",
												  1, &uuid_type);
	}
	if (SPI_execute_plan(snapshot_currency_plan, &tenant, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read the tenant's default currency");
	currency = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		elog(ERROR, "the tenant has no default currency");
	currency = SPI_datumTransfer(currency, false, -1);

	if (PG_ARGISNULL(0) || PG_ARGISNULL(2) || PG_ARGISNULL(3) || PG_ARGISNULL(6))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("name, from_date, to_date and as_of must not be null or empty")));
	{
		char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
		bool		blank = true;

		for (char *c = name; *c; c++)
			if (*c != ' ')
				blank = false;
		if (blank)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("name, from_date, to_date and as_of must not be null or empty")));
	}
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("period_type must not be null")));
	period = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (strcmp(period, "day") != 0 && strcmp(period, "week") != 0 && strcmp(period, "month") != 0 &&
		strcmp(period, "quarter") != 0 && strcmp(period, "year") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown period \"%s\"", period),
				 errhint("Use day, week, month, quarter or year.")));
	if (PG_GETARG_DATEADT(2) > PG_GETARG_DATEADT(3))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("from_date %s is after to_date %s",
						DatumGetCString(DirectFunctionCall1(date_out, PG_GETARG_DATUM(2))),
						DatumGetCString(DirectFunctionCall1(date_out, PG_GETARG_DATUM(3))))));

	/* the deals, as the caller sees them */
	if (snapshot_deals_plan == NULL)
	{
		Oid			types[6] = {DATEOID, DATEOID, UUIDOID, UUIDOID, TEXTOID, TIMESTAMPTZOID};

		snapshot_deals_plan = snapshot_prepare(
											   "SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(f)), '[]'::pg_catalog.jsonb)"
											   " FROM crm.forecast_deals($1, $2, $3, $4, NULL, $5, $6, NULL) f"
											   " WHERE f.in_period OR f.status OPERATOR(pg_catalog.=) 'open'"
											   " OR f.close_date OPERATOR(pg_catalog.>=)"
											   " ($6 OPERATOR(pg_catalog.-) '1 year'::pg_catalog.interval)::pg_catalog.date",
											   6, types);
	}
	{
		Datum		args[6];
		char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};

		args[0] = PG_GETARG_DATUM(2);
		args[1] = PG_GETARG_DATUM(3);
		args[2] = PG_ARGISNULL(4) ? (Datum) 0 : PG_GETARG_DATUM(4);
		nulls[2] = PG_ARGISNULL(4) ? 'n' : ' ';
		args[3] = PG_ARGISNULL(5) ? (Datum) 0 : PG_GETARG_DATUM(5);
		nulls[3] = PG_ARGISNULL(5) ? 'n' : ' ';
		args[4] = currency;
		args[5] = PG_GETARG_DATUM(6);
		if (SPI_execute_plan(snapshot_deals_plan, args, nulls, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "could not read the deals of the forecast");
		deals = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		deals = SPI_datumTransfer(deals, false, -1);
	}

	/* the rows, written as the owner with the caller's tenant */
	if (snapshot_store_plan == NULL)
	{
		Oid			types[11] = {UUIDOID, UUIDOID, TEXTOID, TEXTOID, TEXTOID, DATEOID, DATEOID,
		UUIDOID, UUIDOID, TIMESTAMPTZOID, JSONBOID};

		snapshot_store_plan = snapshot_prepare(
											   "SELECT crm.forecast_snapshot_store($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
											   11, types);
	}
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(crm_table_owner("revenue_forecast"),
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	{
		Datum		args[11];
		char		nulls[11] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

		args[0] = tenant;
		args[1] = user_id;
		nulls[1] = user_null ? 'n' : ' ';
		args[2] = currency;
		args[3] = PG_GETARG_DATUM(0);
		args[4] = PG_GETARG_DATUM(1);
		args[5] = PG_GETARG_DATUM(2);
		args[6] = PG_GETARG_DATUM(3);
		args[7] = PG_ARGISNULL(4) ? (Datum) 0 : PG_GETARG_DATUM(4);
		nulls[7] = PG_ARGISNULL(4) ? 'n' : ' ';
		args[8] = PG_ARGISNULL(5) ? (Datum) 0 : PG_GETARG_DATUM(5);
		nulls[8] = PG_ARGISNULL(5) ? 'n' : ' ';
		args[9] = PG_GETARG_DATUM(6);
		args[10] = deals;
		/* an error aborts the (sub)transaction, which restores the user id */
		if (SPI_execute_plan(snapshot_store_plan, args, nulls, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "could not store the forecast snapshot");
		snap = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		snap = SPI_datumTransfer(snap, false, 16);
	}
	SetUserIdAndSecContext(save_userid, save_sec_context);
	SPI_finish();
	PG_RETURN_DATUM(snap);
}
