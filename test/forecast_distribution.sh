#!/usr/bin/env bash
# test/forecast_distribution.sh: crm.revenue_distribution against brute
# force and simulation.
#
#  1. Exact: 10 seeded random sets of deals of every size from 1 to 16 (160
#     sets, some built to hit the levels exactly: 50%, 90%, equal amounts)
#     go through the aggregate in one GROUP BY; Python computes each
#     distribution with exact fractions by enumerating every outcome.
#     mean must be equal, stddev equal to 1e-12, P10/P50/P90 equal, and
#     error_bound 0.
#  2. Bounded: 10,000 deals (200 classes of 50 identical deals, so that a
#     draw is 200 binomial samples: the same distribution as 10,000
#     Bernoulli draws, fast enough to draw 1,000,000 times) against a
#     seeded simulation in C of 1,000,000 draws: each simulated P-level
#     must lie within error_bound of the aggregate's.
# Prints one line per check; exits non-zero if one fails.  Needs psql,
# python3 and cc, and PGHOST/PGPORT/PGUSER naming a superuser.
set -euo pipefail

DB=regress_forecast_distribution
WORK=$(mktemp -d)
trap 'psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

psql -X -q -v ON_ERROR_STOP=1 -d postgres -c 'SET client_min_messages = warning' \
	-c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" -c 'CREATE EXTENSION crm'

# The simulator: classes (amount in cents, probability in basis points,
# count) on stdin; prints the P10, P50, P90 of the simulated totals, in cents.
cat >"$WORK/simulate.c" <<'EOF'
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static uint64_t state = 0x9E3779B97F4A7C15ULL;	/* fixed seed */

static uint64_t
next(void)						/* splitmix64 */
{
	uint64_t	z = (state += 0x9E3779B97F4A7C15ULL);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

static int
cmp(const void *a, const void *b)
{
	int64_t		x = *(const int64_t *) a, y = *(const int64_t *) b;

	return x < y ? -1 : x > y;
}

int
main(int argc, char **argv)
{
	long		draws = atol(argv[1]);
	int64_t		amount[1000];
	int			count[1000];
	double		cdf[1000][101];
	int			n = 0, c, k;
	long		d;
	long		bp;
	int64_t    *total = malloc(sizeof(int64_t) * draws);
	double		levels[3] = {0.1, 0.5, 0.9};

	while (n < 1000 && scanf("%ld %ld %d", &amount[n], &bp, &count[n]) == 3)
	{
		double		p = bp / 10000.0, f = 1, cum = 0;

		/* binomial(count, p) cumulative probabilities, for inversion */
		for (k = 0; k < count[n]; k++)
			f *= 1 - p;
		for (k = 0; k <= count[n]; k++)
		{
			cum += f;
			cdf[n][k] = cum;
			f = f * (count[n] - k) / (k + 1) * p / (1 - p);
		}
		cdf[n][count[n]] = 2;	/* rounding never leaves the top open */
		n++;
	}
	for (d = 0; d < draws; d++)
	{
		int64_t		t = 0;

		for (c = 0; c < n; c++)
		{
			double		u = (next() >> 11) * 0x1.0p-53;
			int			lo = 0, hi = count[c];

			while (lo < hi)
			{
				int			mid = (lo + hi) / 2;

				if (u < cdf[c][mid])
					hi = mid;
				else
					lo = mid + 1;
			}
			t += amount[c] * lo;
		}
		total[d] = t;
	}
	qsort(total, draws, sizeof(int64_t), cmp);
	for (k = 0; k < 3; k++)
	{
		/* the smallest simulated total whose share reaches the level */
		long		i = (long) (levels[k] * draws + 0.5) - 1;

		printf("%ld\n", (long) total[i]);
	}
	return 0;
}
EOF
cc -O2 -o "$WORK/simulate" "$WORK/simulate.c"

DB="$DB" WORK="$WORK" python3 - <<'EOF'
import os, random, subprocess, sys
from decimal import Decimal, getcontext
from fractions import Fraction

getcontext().prec = 60
db, work = os.environ["DB"], os.environ["WORK"]
failed = 0

def psql(sql):
    out = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-F", " ", "-v", "ON_ERROR_STOP=1", "-d", db],
                         input=sql, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit("psql failed: " + out.stderr)
    return [line.split(" ") for line in out.stdout.splitlines() if line]

def check(ok, what):
    global failed
    print(("ok      " if ok else "FAILED  ") + what)
    if not ok:
        failed += 1

# 1. exact, against enumeration with fractions
rng = random.Random(11)
sets = []
for n in range(1, 17):
    for k in range(10):
        deals = []
        for _ in range(n):
            if k == 0:      # every outcome equally likely: levels hit exactly
                a, p = rng.choice([100, 200, 300]), 50
            elif k == 1:    # 90% deals: P(nothing) is exactly .1 for one deal
                a, p = Decimal(rng.randint(1, 50000)) / 100, rng.choice([90, 10, 50])
            elif k == 2:    # some certain and hopeless deals
                a, p = Decimal(rng.randint(0, 10**6)) / 100, rng.choice([0, 100, 25, 75])
            else:
                a, p = Decimal(rng.randint(1, 10**7)) / 100, Decimal(rng.randint(1, 9999)) / 100
            deals.append((Decimal(a), Decimal(p)))
        sets.append(deals)

rows = ",".join(f"({i},{a},{p})" for i, deals in enumerate(sets) for a, p in deals)
got = {int(r[0]): r[1:] for r in psql(
    "SELECT s, (d).mean, (d).stddev, (d).p10, (d).p50, (d).p90, (d).error_bound FROM "
    f"(SELECT s, crm.revenue_distribution(a, p) AS d FROM (VALUES {rows}) v(s, a, p) GROUP BY s) x;")}

bad = []
for i, deals in enumerate(sets):
    # exact integer arithmetic: totals in cents, weights over 10000^n
    dist = {0: 1}
    for a, p in deals:
        a, bp = int(a * 100), int(p * 100)
        nxt = {}
        for t, q in dist.items():
            if bp < 10000:
                nxt[t] = nxt.get(t, 0) + q * (10000 - bp)
            if bp > 0:
                nxt[t + a] = nxt.get(t + a, 0) + q * bp
        dist = nxt
    denominator = 10000 ** len(deals)
    cum, want = 0, []
    for t in sorted(dist):
        cum += dist[t]
        while len(want) < 3 and cum * 10 >= denominator * (1, 5, 9)[len(want)]:
            want.append(Fraction(t, 100))
    mean = sum(Fraction(a) * Fraction(p) / 100 for a, p in deals)
    var = sum(Fraction(a) ** 2 * Fraction(p) / 100 * (1 - Fraction(p) / 100) for a, p in deals)
    g = got[i]
    ok = (Fraction(Decimal(g[0])) == mean
          and abs(Decimal(g[1]) ** 2 - Decimal(var.numerator) / Decimal(var.denominator)) <= Decimal("1e-12") * (1 + Decimal(var.numerator) / Decimal(var.denominator))
          and [Fraction(Decimal(x)) for x in g[2:5]] == want
          and Decimal(g[5]) == 0)
    if not ok:
        bad.append((len(deals), g, [str(Decimal(w.numerator) / w.denominator) for w in want]))
check(not bad, f"{len(sets)} sets of 1 to 16 deals: mean, stddev, P10, P50, P90 equal brute-force enumeration, bound 0")
for b in bad[:5]:
    print("        ", b)

# 2. 10,000 deals against 1,000,000 simulated draws
rng = random.Random(7)
classes = [(rng.randint(100000, 10000000), rng.randint(500, 9500), 50) for _ in range(200)]
with open(os.path.join(work, "classes"), "w") as f:
    for a, bp, c in classes:
        f.write(f"{a} {bp} {c}\n")
values = ",".join(f"({a / 100:.2f},{bp / 100:.2f},{c})" for a, bp, c in classes)
mean, stddev, p10, p50, p90, bound = psql(
    "SELECT (d).mean, (d).stddev, (d).p10, (d).p50, (d).p90, (d).error_bound FROM "
    f"(SELECT crm.revenue_distribution(a, p) AS d FROM (VALUES {values}) v(a, p, c), generate_series(1, c)) x;")[0]
with open(os.path.join(work, "classes")) as f:
    sim = subprocess.run([os.path.join(work, "simulate"), "1000000"], stdin=f, capture_output=True,
                         text=True, check=True).stdout.split()
bound = Decimal(bound)
print(f"        10,000 deals: mean {mean}, stddev {Decimal(stddev):.2f}, error_bound {bound} "
      f"({bound / Decimal(stddev):.4f} stddev)")
for name, est, s in zip(["P10", "P50", "P90"], [p10, p50, p90], sim):
    s = Decimal(s) / 100
    check(abs(s - Decimal(est)) <= bound,
          f"{name}: simulated {s} lies within {bound} of {est} (off by {abs(s - Decimal(est))})")
check(Decimal(0) < bound < Decimal(stddev) / 10, "the bound is positive and below a tenth of a standard deviation")
sys.exit(1 if failed else 0)
EOF
