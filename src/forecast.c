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
	if (st->nrand <= EXACT_MAX_DEALS && st->keep_exact)
	{
		quantiles_exact(st, q);
		bound = int64_to_numeric(0);
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
		bound = cents(worst, true);
	}
	for (k = 0; k < 3; k++)
		values[2 + k] = NumericGetDatum(numeric_add_opt_error(st->sure, q[k], NULL));
	values[5] = NumericGetDatum(bound);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
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

Datum
crm_forecast_snapshot(PG_FUNCTION_ARGS)
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
											 "SELECT crm.current_tenant(), crm.current_user_id(), crm.tenant_default_currency()",
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
	currency = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
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
