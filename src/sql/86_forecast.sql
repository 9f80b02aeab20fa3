-- src/sql/86_forecast.sql: forecasting (DESIGN.md capability 4, issue 11).
--
-- The forecast per period (and owner or team) with Salesforce's categories
-- and cumulative roll-ups, quotas and attainment, amounts converted at the
-- rate of the right day, what-if analysis, the revenue range of the open
-- deals (the C aggregate crm.revenue_distribution, src/forecast.c), and
-- snapshots with the waterfall between two of them and their accuracy once
-- the period is over.

-- The revenue range: a C aggregate ---------------------------------------

CREATE TYPE crm.revenue_range AS (
    mean        numeric,
    stddev      numeric,
    p10         numeric,
    p50         numeric,
    p90         numeric,
    error_bound numeric
);
COMMENT ON TYPE crm.revenue_range IS
    'Total revenue of independent deals: exact mean and standard deviation, P10/P50/P90 and the most by which those three can be off, in currency units';
-- nothing for PUBLIC: crm.setup_roles() grants USAGE to crm_reader
REVOKE ALL ON TYPE crm.revenue_range FROM PUBLIC;

CREATE FUNCTION crm.revenue_distribution_accum(internal, numeric, numeric) RETURNS internal
    AS 'MODULE_PATHNAME', 'crm_forecast_distribution_accum'
    LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION crm.revenue_distribution_accum(internal, numeric, numeric) IS
    'Internal: transition function of crm.revenue_distribution (checks and keeps one deal)';

CREATE FUNCTION crm.revenue_distribution_combine(internal, internal) RETURNS internal
    AS 'MODULE_PATHNAME', 'crm_forecast_distribution_combine'
    LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION crm.revenue_distribution_combine(internal, internal) IS
    'Internal: combine function of crm.revenue_distribution (merges two partial states)';

CREATE FUNCTION crm.revenue_distribution_serialize(internal) RETURNS bytea
    AS 'MODULE_PATHNAME', 'crm_forecast_distribution_serialize'
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION crm.revenue_distribution_serialize(internal) IS
    'Internal: serialize function of crm.revenue_distribution (parallel workers)';

CREATE FUNCTION crm.revenue_distribution_deserialize(bytea, internal) RETURNS internal
    AS 'MODULE_PATHNAME', 'crm_forecast_distribution_deserialize'
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION crm.revenue_distribution_deserialize(bytea, internal) IS
    'Internal: deserialize function of crm.revenue_distribution (parallel workers)';

CREATE FUNCTION crm.revenue_distribution_final(internal) RETURNS crm.revenue_range
    AS 'MODULE_PATHNAME', 'crm_forecast_distribution_final'
    LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION crm.revenue_distribution_final(internal) IS
    'Internal: final function of crm.revenue_distribution (quantiles and their bound)';

CREATE AGGREGATE crm.revenue_distribution(amount numeric, probability numeric) (
    SFUNC = crm.revenue_distribution_accum,
    STYPE = internal,
    FINALFUNC = crm.revenue_distribution_final,
    COMBINEFUNC = crm.revenue_distribution_combine,
    SERIALFUNC = crm.revenue_distribution_serialize,
    DESERIALFUNC = crm.revenue_distribution_deserialize,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE crm.revenue_distribution(numeric, numeric) IS
    'Total revenue when each deal (amount >= 0, probability 0-100 in percent) is won independently with its probability: '
    '(mean, stddev, p10, p50, p90, error_bound); a P-level is the smallest total whose cumulative probability reaches the level. '
    'mean and stddev are exact (numeric). Deals at 0% or 100% are certain and shift the range. '
    'With at most 20 uncertain deals all 2^n outcomes are enumerated: the P-levels are exact and error_bound is 0. '
    'Beyond, each level takes the better of two methods with a proven bound, and error_bound is the largest chosen bound '
    '(plus half a cent where a P-level was rounded to cents): '
    '(a) the normal approximation with the Berry-Esseen bound for independent, non-identically distributed summands, '
    'sup|F(x) - Phi((x - mean)/stddev)| <= eps = C0 * sum E|X - EX|^3 / stddev^3 with C0 = 0.5600 '
    '(I. G. Shevtsova, An improvement of convergence rate estimates in the Lyapunov theorem, Doklady Mathematics 82(3), 2010, 862-864); '
    'the P-level then lies between mean + stddev * z(level - eps) and mean + stddev * z(level + eps) (within 0 and the total of all deals): '
    'the midpoint is returned and half the width is the bound; '
    '(b) an exact convolution on a grid of step h >= 0.01 (at most 2^20 cells and 2e7 steps, run only when it promises less than (a)): '
    'every amount rounded to a multiple of h, so each outcome, hence each P-level, moves by at most D = sum |amount - h * round(amount / h)|, '
    'the bound (0 when every amount is a whole number of cents and h is a cent). '
    'Probabilities are summed in double precision (a level counts as reached within 1e-12). '
    'NULL rows are skipped; no rows give NULL; a NaN, infinite or negative amount or a probability outside 0-100 is refused (22023). '
    'Works with GROUP BY and in parallel plans.';

-- Columns the forecast needs on existing tables ----------------------------

ALTER TABLE crm.stage
    ADD COLUMN expected_value numeric(18,2) CHECK (expected_value >= 0),
    ADD COLUMN expected_value_currency text REFERENCES crm.currency (code),
    ADD CONSTRAINT stage_expected_value_currency_check
        CHECK ((expected_value IS NULL) = (expected_value_currency IS NULL));
COMMENT ON COLUMN crm.stage.expected_value IS
    'Typical deal value in this stage (seeds/001), used by the forecast for deals without an amount (amount 0); NULL: none';
COMMENT ON COLUMN crm.stage.expected_value_currency IS
    'Currency of expected_value (ISO 4217); set together with it';

-- Quotas -------------------------------------------------------------------

CREATE TABLE crm.quota (
    tenant_id    uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    id           uuid NOT NULL DEFAULT crm.uuid_generate_v7(),
    owner_id     uuid,
    team_id      uuid,
    period_type  text NOT NULL CHECK (period_type IN ('day', 'week', 'month', 'quarter', 'year')),
    period_start date NOT NULL,
    amount       numeric(18,2) NOT NULL CHECK (amount > 0),
    currency     text NOT NULL REFERENCES crm.currency (code),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, owner_id) REFERENCES crm.app_user (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, team_id) REFERENCES crm.team (tenant_id, id) ON DELETE CASCADE,
    CONSTRAINT quota_one_target_check CHECK (owner_id IS NULL OR team_id IS NULL),
    CONSTRAINT quota_period_start_check CHECK (period_start = pg_catalog.date_trunc(period_type, period_start::timestamp)::date)
);
CREATE UNIQUE INDEX quota_target_key ON crm.quota (tenant_id, period_type, period_start, owner_id, team_id)
    NULLS NOT DISTINCT;
CREATE INDEX quota_owner_idx ON crm.quota (tenant_id, owner_id);
CREATE INDEX quota_team_idx ON crm.quota (tenant_id, team_id);
COMMENT ON TABLE crm.quota IS 'Sales targets: what an owner, a team or (neither) the whole tenant should win in a period; feeds attainment in crm.forecast()';
COMMENT ON COLUMN crm.quota.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.quota.id IS 'Row id (UUIDv7)';
COMMENT ON COLUMN crm.quota.owner_id IS 'The user whose quota it is; NULL with team_id NULL: the tenant''s';
COMMENT ON COLUMN crm.quota.team_id IS 'The team whose quota it is';
COMMENT ON COLUMN crm.quota.period_type IS 'day, week, month, quarter or year';
COMMENT ON COLUMN crm.quota.period_start IS 'First day of the period (a week starts on Monday)';
COMMENT ON COLUMN crm.quota.amount IS 'Target closed-won amount, in currency';
COMMENT ON COLUMN crm.quota.currency IS 'Currency of amount (ISO 4217); NULL or omitted: the tenant''s default currency (set by crm.currency_default())';
CREATE TRIGGER currency_default BEFORE INSERT ON crm.quota
    FOR EACH ROW EXECUTE FUNCTION crm.currency_default();
COMMENT ON TRIGGER currency_default ON crm.quota IS 'Fills a NULL currency with the tenant''s default currency';
COMMENT ON COLUMN crm.quota.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.quota.updated_at IS 'When the row last changed';

-- Snapshots (seeds/001 revenue_forecasts and forecast_deals) ---------------

CREATE TABLE crm.revenue_forecast (
    tenant_id           uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    id                  uuid NOT NULL DEFAULT crm.uuid_generate_v7(),
    name                text NOT NULL CHECK (btrim(name) <> ''),
    user_id             uuid,
    forecast_date       date NOT NULL,
    as_of               timestamptz NOT NULL,
    period_type         text NOT NULL CHECK (period_type IN ('day', 'week', 'month', 'quarter', 'year')),
    from_date           date NOT NULL,
    to_date             date NOT NULL,
    pipeline_id         uuid,
    owner_id            uuid,
    currency            text NOT NULL REFERENCES crm.currency (code),
    open_deals          integer NOT NULL,
    open_pipeline       numeric NOT NULL,
    best_case           numeric NOT NULL,
    commit              numeric NOT NULL,
    closed_won          numeric NOT NULL,
    weighted            numeric NOT NULL,
    expected            numeric NOT NULL,
    confidence_interval jsonb NOT NULL CHECK (jsonb_typeof(confidence_interval) = 'object'),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CHECK (from_date <= to_date)
);
CREATE INDEX revenue_forecast_period_idx ON crm.revenue_forecast (tenant_id, period_type, from_date);
COMMENT ON TABLE crm.revenue_forecast IS
    'A stored forecast (crm.snapshot_forecast): its filters, totals and revenue range as they were at as_of';
COMMENT ON COLUMN crm.revenue_forecast.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.revenue_forecast.id IS 'Row id (UUIDv7)';
COMMENT ON COLUMN crm.revenue_forecast.name IS 'Name given by whoever took it';
COMMENT ON COLUMN crm.revenue_forecast.user_id IS 'The CRM user who took it (crm.current_user_id())';
COMMENT ON COLUMN crm.revenue_forecast.forecast_date IS 'The day it was taken (as_of''s date)';
COMMENT ON COLUMN crm.revenue_forecast.as_of IS 'The moment the forecast describes; open deals converted at the rates of that day';
COMMENT ON COLUMN crm.revenue_forecast.period_type IS 'day, week, month, quarter or year';
COMMENT ON COLUMN crm.revenue_forecast.from_date IS 'First day of the forecast window';
COMMENT ON COLUMN crm.revenue_forecast.to_date IS 'Last day of the forecast window';
COMMENT ON COLUMN crm.revenue_forecast.pipeline_id IS 'Pipeline filter; NULL: all';
COMMENT ON COLUMN crm.revenue_forecast.owner_id IS 'Owner filter; NULL: all';
COMMENT ON COLUMN crm.revenue_forecast.currency IS 'Currency of every amount of the snapshot';
COMMENT ON COLUMN crm.revenue_forecast.open_deals IS 'Open deals in the window, less omitted ones';
COMMENT ON COLUMN crm.revenue_forecast.open_pipeline IS 'Open pipeline: open deals of categories pipeline, best case and commit';
COMMENT ON COLUMN crm.revenue_forecast.best_case IS 'Closed won + open best case and commit deals';
COMMENT ON COLUMN crm.revenue_forecast.commit IS 'Closed won + open commit deals';
COMMENT ON COLUMN crm.revenue_forecast.closed_won IS 'Won in the window';
COMMENT ON COLUMN crm.revenue_forecast.weighted IS 'Sum of amount x probability of the open, not omitted deals';
COMMENT ON COLUMN crm.revenue_forecast.expected IS 'closed_won + weighted';
COMMENT ON COLUMN crm.revenue_forecast.confidence_interval IS
    'The revenue range of the window: {"mean", "stddev", "p10", "p50", "p90", "error_bound"} (crm.revenue_distribution)';
COMMENT ON COLUMN crm.revenue_forecast.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.revenue_forecast.updated_at IS 'When the row last changed';

CREATE TABLE crm.forecast_deal (
    tenant_id           uuid NOT NULL DEFAULT crm.current_tenant(),
    forecast_id         uuid NOT NULL,
    opportunity_id      uuid NOT NULL,
    owner_id            uuid,
    stage_id            uuid NOT NULL,
    status              text NOT NULL CHECK (status IN ('open', 'won', 'lost')),
    category            text NOT NULL CHECK (category IN ('pipeline', 'best_case', 'commit', 'closed', 'omitted')),
    amount              numeric NOT NULL,
    currency            text NOT NULL,
    converted_amount    numeric,
    probability         numeric NOT NULL CHECK (probability BETWEEN 0 AND 100),
    close_date          date,
    in_period           boolean NOT NULL,
    used_stage_value    boolean NOT NULL,
    expected_value      numeric NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, forecast_id, opportunity_id),
    FOREIGN KEY (tenant_id, forecast_id) REFERENCES crm.revenue_forecast (tenant_id, id) ON DELETE CASCADE
);
COMMENT ON TABLE crm.forecast_deal IS
    'The deals behind a snapshot, as they were: every open deal of its filters, and the closed ones in its window or closed in the year before it was taken';
COMMENT ON COLUMN crm.forecast_deal.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.forecast_deal.forecast_id IS 'The snapshot (crm.revenue_forecast)';
COMMENT ON COLUMN crm.forecast_deal.opportunity_id IS 'The deal (no foreign key: the snapshot outlives the record)';
COMMENT ON COLUMN crm.forecast_deal.owner_id IS 'Its owner then';
COMMENT ON COLUMN crm.forecast_deal.stage_id IS 'Its stage then';
COMMENT ON COLUMN crm.forecast_deal.status IS 'open, won or lost then';
COMMENT ON COLUMN crm.forecast_deal.category IS 'Forecast category then (the deal''s override, else the stage''s; closed when won, omitted when lost)';
COMMENT ON COLUMN crm.forecast_deal.amount IS 'Amount then, in currency (the stage''s expected value when used_stage_value)';
COMMENT ON COLUMN crm.forecast_deal.currency IS 'Currency of amount';
COMMENT ON COLUMN crm.forecast_deal.converted_amount IS 'amount in the snapshot''s currency (won deals at the rate of their close date, others at as_of); NULL for a deal outside the window whose currency had no rate';
COMMENT ON COLUMN crm.forecast_deal.probability IS 'Win probability then, 0-100';
COMMENT ON COLUMN crm.forecast_deal.close_date IS 'Close date (won or lost) or expected close date (open)';
COMMENT ON COLUMN crm.forecast_deal.in_period IS 'close_date falls in the snapshot''s window';
COMMENT ON COLUMN crm.forecast_deal.used_stage_value IS 'The deal had no amount and the stage''s expected value stood in';
COMMENT ON COLUMN crm.forecast_deal.expected_value IS
    'What the deal adds to the snapshot''s expected total: converted_amount when won, x probability/100 when open and not omitted, else 0; 0 outside the window';
COMMENT ON COLUMN crm.forecast_deal.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.forecast_deal.updated_at IS 'When the row last changed';

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['quota', 'revenue_forecast', 'forecast_deal'] LOOP
        EXECUTE format('ALTER TABLE crm.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE crm.%I FORCE ROW LEVEL SECURITY', t);
        -- the same plain predicate as every other table's (Citus refuses sub-selects in policies)
        EXECUTE format('CREATE POLICY tenant_isolation ON crm.%I'
                       ' USING (tenant_id = crm.current_tenant())'
                       ' WITH CHECK (tenant_id = crm.current_tenant())', t);
        EXECUTE format('COMMENT ON POLICY tenant_isolation ON crm.%I IS %L', t,
                       'Rows of the tenant the statement acts for (crm.current_tenant()) only');
    END LOOP;
END
$$;

-- Money in the forecast's currency -------------------------------------------

CREATE FUNCTION crm.convert_amount(amount numeric, from_currency text, to_currency text,
                                   on_date date DEFAULT current_date, tenant uuid DEFAULT crm.current_tenant())
    RETURNS numeric
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    r numeric := crm.exchange_rate(from_currency, to_currency, on_date, tenant);
    bad text;
BEGIN
    -- an amount to convert needs both codes and a day: a NULL one is a
    -- missing argument (22004), not a missing rate
    IF amount IS NOT NULL AND (from_currency IS NULL OR to_currency IS NULL OR on_date IS NULL) THEN
        RAISE EXCEPTION 'from_currency, to_currency and on_date must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF r IS NULL THEN
        -- a code that is no currency is a bad parameter, as in crm.forecast
        SELECT x.code INTO bad FROM unnest(ARRAY[from_currency, to_currency]) AS x(code)
         WHERE x.code IS NOT NULL AND NOT EXISTS (SELECT 1 FROM crm.currency c WHERE c.code = x.code) LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'unknown currency "%"', bad USING ERRCODE = 'invalid_parameter_value',
                HINT = 'Use an ISO 4217 code listed in crm.currency.';
        END IF;
    END IF;
    IF r IS NULL AND amount IS NOT NULL THEN
        RAISE EXCEPTION 'no exchange rate from % to % on %', from_currency, to_currency, on_date
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'Amounts are converted, never summed across currencies unconverted.',
                  HINT = 'Add a row to crm.currency_rate valid from that day or earlier.';
    END IF;
    RETURN amount * r;
END
$$;
COMMENT ON FUNCTION crm.convert_amount(numeric, text, text, date, uuid) IS
    'amount of from_currency in to_currency at the tenant''s rate in force on on_date (crm.exchange_rate); no rate is an error (P0002) naming both currencies and the day; a code not in crm.currency is 22023 (unknown currency); a NULL code or day with an amount is 22004';

-- The error of a missing rate, raised inside a query: crm.convert_amount's
-- message without its table read, so that a query Citus routes to a
-- worker can raise it there.
CREATE FUNCTION crm.forecast_no_rate(from_currency text, to_currency text, on_date date) RETURNS numeric
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    RAISE EXCEPTION 'no exchange rate from % to % on %', from_currency, to_currency, on_date
        USING ERRCODE = 'no_data_found',
              DETAIL = 'Amounts are converted, never summed across currencies unconverted.',
              HINT = 'Add a row to crm.currency_rate valid from that day or earlier.';
END
$$;
COMMENT ON FUNCTION crm.forecast_no_rate(text, text, date) IS
    'Raises crm.convert_amount''s error for a missing rate (P0002) without reading a table; called by crm.forecast_deals inside its query (on Citus, on the worker that holds the tenant''s rows)';

-- The deals behind a forecast, in one query that Citus routes to the
-- tenant's shard group: every table is filtered by tenant_id = t, a
-- PL/pgSQL variable (a parameter Citus prunes shards with), and the query
-- calls no function that reads a table (on a worker that would be a
-- distributed query from a query on a shard): the tenant's default currency
-- is read before it, and a missing rate is raised by
-- crm.forecast_no_rate().  (The SQL function it was, inlined with
-- crm.current_tenant() in its filters, could not be pushed down: a lateral
-- outer join with local rows, and a parameterised SQL function where it
-- was not inlined.)  A missing rate is found on the distinct (currency,
-- day) pairs' joins, not per deal.
CREATE FUNCTION crm.forecast_deals(from_date date DEFAULT NULL, to_date date DEFAULT NULL, pipeline uuid DEFAULT NULL,
                                   owner uuid DEFAULT NULL, team uuid DEFAULT NULL, currency text DEFAULT NULL,
                                   as_of timestamptz DEFAULT now(), changes jsonb DEFAULT NULL)
    RETURNS TABLE (opportunity_id uuid, owner_id uuid, stage_id uuid, status text, category text,
                   amount numeric, amount_currency text, converted numeric, probability numeric,
                   close_date date, in_period boolean, used_stage_value boolean)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    t uuid := crm.current_tenant();
    target text := coalesce(forecast_deals.currency, crm.tenant_default_currency());
BEGIN
    -- checked before the query, as crm.forecast does (else a bad code would
    -- be a missing rate, P0002, or with no deal nothing at all)
    IF NOT EXISTS (SELECT 1 FROM crm.currency x WHERE x.code = target) THEN
        RAISE EXCEPTION 'unknown currency "%"', target USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Use an ISO 4217 code listed in crm.currency.';
    END IF;
    RETURN QUERY
    WITH change AS (
        -- with the stage a deal moves to, so that the deals join one row each
        SELECT x.opportunity, x.stage, x.probability, x.amount, x.expected_close_date, x.forecast_category,
               ns.id AS ns_id, ns.kind AS ns_kind, ns.forecast_category AS ns_category,
               ns.probability AS ns_probability, ns.expected_value AS ns_expected_value,
               ns.expected_value_currency AS ns_expected_value_currency
          FROM pg_catalog.jsonb_to_recordset(coalesce(forecast_deals.changes, '[]'::jsonb))
               AS x(opportunity uuid, stage uuid, probability numeric, amount numeric,
                    expected_close_date date, forecast_category text)
          LEFT JOIN crm.stage ns ON ns.tenant_id = t AND ns.id = x.stage
    ), deal AS (
        SELECT o.id, o.owner_id, coalesce(dc.ns_id, os.id) AS stage_id,
               CASE WHEN dc.stage IS NULL THEN o.status ELSE dc.ns_kind END AS status,
               coalesce(dc.forecast_category, CASE WHEN dc.stage IS NULL THEN o.forecast_category END,
                        sc.forecast_category, coalesce(dc.ns_category, os.forecast_category)) AS category,
               coalesce(dc.amount, o.amount) AS own_amount,
               o.currency AS own_currency,
               coalesce(dc.ns_expected_value, os.expected_value) AS expected_value,
               coalesce(dc.ns_expected_value_currency, os.expected_value_currency) AS expected_value_currency,
               CASE WHEN dc.probability IS NOT NULL THEN dc.probability
                    WHEN dc.stage IS NOT NULL OR o.probability = os.probability
                         THEN coalesce(sc.probability, dc.ns_probability, os.probability)
                    ELSE o.probability END AS probability,
               CASE WHEN (CASE WHEN dc.stage IS NULL THEN o.status ELSE dc.ns_kind END) = 'open'
                         THEN coalesce(dc.expected_close_date, o.expected_close_date)
                    WHEN dc.stage IS NULL OR o.status <> 'open'
                         THEN (o.closed_at)::date
                    ELSE coalesce(dc.expected_close_date, o.expected_close_date, (forecast_deals.as_of)::date) END AS close_date
          FROM crm.opportunity o
          JOIN crm.stage os ON os.tenant_id = o.tenant_id AND os.id = o.stage_id
          LEFT JOIN change dc ON dc.opportunity = o.id
          LEFT JOIN change sc ON sc.opportunity IS NULL AND sc.stage = coalesce(dc.ns_id, os.id)
         WHERE o.tenant_id = t AND os.tenant_id = t
           AND o.archived_at IS NULL
           AND (forecast_deals.pipeline IS NULL OR o.pipeline_id = forecast_deals.pipeline)
           AND (forecast_deals.owner IS NULL OR o.owner_id = forecast_deals.owner)
           AND (forecast_deals.team IS NULL OR o.owner_id IN (
                    SELECT tm.user_id FROM crm.team_member tm
                     WHERE tm.tenant_id = t AND tm.team_id = forecast_deals.team))
    ), valued AS (
        SELECT d.*,
               (d.own_amount = 0 AND d.expected_value IS NOT NULL) AS used_stage_value,
               CASE WHEN d.own_amount = 0 AND d.expected_value IS NOT NULL
                    THEN d.expected_value ELSE d.own_amount END AS value,
               CASE WHEN d.own_amount = 0 AND d.expected_value IS NOT NULL
                    THEN d.expected_value_currency ELSE d.own_currency END AS value_currency,
               CASE WHEN d.status = 'won' THEN d.close_date ELSE (forecast_deals.as_of)::date END AS rate_date,
               coalesce(d.close_date BETWEEN coalesce(forecast_deals.from_date, '-infinity'::date)
                                         AND coalesce(forecast_deals.to_date, 'infinity'::date), false) AS in_period
          FROM deal d
    ), rated AS (
        -- as crm.exchange_rate(), written out so that a deal in the target
        -- currency reads no rate and the others join rather than call
        SELECT v.*,
               CASE WHEN v.value_currency = target THEN 1::numeric
                    ELSE coalesce(
                        (SELECT cr.rate FROM crm.currency_rate cr
                          WHERE cr.tenant_id = t AND cr.from_currency = v.value_currency
                            AND cr.to_currency = target AND cr.valid_from <= v.rate_date
                          ORDER BY cr.valid_from DESC LIMIT 1),
                        (SELECT 1 / cr.rate FROM crm.currency_rate cr
                          WHERE cr.tenant_id = t AND cr.from_currency = target
                            AND cr.to_currency = v.value_currency AND cr.valid_from <= v.rate_date
                          ORDER BY cr.valid_from DESC LIMIT 1)) END AS rate
          FROM valued v
    )
    SELECT v.id, v.owner_id, v.stage_id, v.status,
           CASE v.status WHEN 'won' THEN 'closed' WHEN 'lost' THEN 'omitted' ELSE v.category END AS category,
           v.value, v.value_currency,
           CASE WHEN v.rate IS NOT NULL THEN v.value * v.rate
                WHEN v.in_period AND v.value IS NOT NULL
                     THEN crm.forecast_no_rate(v.value_currency, target, v.rate_date) END AS converted,
           CASE v.status WHEN 'won' THEN 100 WHEN 'lost' THEN 0 ELSE v.probability END AS probability,
           v.close_date, v.in_period, v.used_stage_value
      FROM rated v;
END
$$;
COMMENT ON FUNCTION crm.forecast_deals(date, date, uuid, uuid, uuid, text, timestamptz, jsonb) IS
    'The deals behind crm.forecast() (seeds/001: the deals behind each forecast), with the what-if changes of crm.forecast_what_if applied: '
    'every active opportunity of the current tenant under the filters, its category (the deal''s, else the stage''s; closed when won, omitted when lost), '
    'amount and its currency (the stage''s expected_value when the deal''s amount is 0: used_stage_value), the amount converted into currency '
    '(won deals at the rate of their close date, others at as_of; NULL only outside the window when no rate exists, an error P0002 inside it), '
    'probability (100 won, 0 lost), close date (won or lost: closed_at''s day; open: expected_close_date) and whether it falls in from_date..to_date. '
    'A currency not in crm.currency is 22023 (unknown currency)';

-- The forecast's totals in one pass, in C: crm.forecast() without what-if
-- changes (and without team filter or grouping) aggregates here rather than
-- through crm.forecast_deals() and numeric FILTERs (issue 11's goal: the
-- forecast within 1.5x of a plain sum over the same rows).
CREATE FUNCTION crm.forecast_totals(period text, from_date date, to_date date, pipeline uuid, owner uuid,
                                    currency text, as_of timestamptz, by_owner boolean)
    RETURNS TABLE (period_start date, owner_id uuid, open_deals integer, open_pipeline numeric,
                   best_case_open numeric, commit_open numeric, closed_won numeric, weighted numeric,
                   p10 numeric, p50 numeric, p90 numeric, error_bound numeric, stage_value_deals integer)
    AS 'MODULE_PATHNAME', 'crm_forecast_totals'
    LANGUAGE C STABLE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION crm.forecast_totals(text, date, date, uuid, uuid, text, timestamptz, boolean) IS
    'The per-period sums behind crm.forecast(), unrounded, from one pass over the current tenant''s active open and won deals '
    'whose close day (open: expected_close_date; won: closed_at''s day) falls in from_date..to_date (NULL: unbounded), '
    'filtered by pipeline and owner (NULL: any), one row per period start (and per owner when by_owner): open_deals, open_pipeline, '
    'best_case_open and commit_open (open deals of those categories), closed_won, weighted (sum of converted amount x probability / 100), '
    'p10/p50/p90/error_bound as crm.revenue_distribution gives them for the period''s won and not omitted open deals (NULL when none), '
    'stage_value_deals. Amounts in currency: won deals at the rate of their close day, open ones at as_of''s (crm.exchange_rate, '
    'looked up once per currency and day); a missing rate is crm.convert_amount''s error (P0002). '
    'Errors: unknown period or currency, or from_date after to_date 22023, a NULL period, currency, as_of or by_owner 22004';

-- The forecast ---------------------------------------------------------------

CREATE FUNCTION crm.forecast_what_if(changes jsonb, period text DEFAULT 'month', from_date date DEFAULT NULL,
                                     to_date date DEFAULT NULL, pipeline uuid DEFAULT NULL, owner uuid DEFAULT NULL,
                                     team uuid DEFAULT NULL, currency text DEFAULT NULL,
                                     as_of timestamptz DEFAULT now(), by text DEFAULT NULL)
    RETURNS TABLE (period_start date, period_end date, owner_id uuid, team_id uuid, currency_code text,
                   open_deals integer, open_pipeline numeric, best_case numeric, commit numeric,
                   closed_won numeric, weighted numeric, expected numeric, quota numeric,
                   attainment numeric, p10 numeric, p50 numeric, p90 numeric, error_bound numeric,
                   stage_value_deals integer)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    p_changes jsonb := $1;
    p_period text := $2;
    p_from date := $3;
    p_to date := $4;
    p_pipeline uuid := $5;
    p_owner uuid := $6;
    p_team uuid := $7;
    cur text := coalesce($8, crm.tenant_default_currency());
    p_as_of timestamptz := $9;
    p_by text := $10;
    t uuid := crm.current_tenant();
    step interval;
    c jsonb;
    -- the tenant's quotas of the period type and team memberships, read
    -- first by queries Citus routes to the tenant's shards, so that the
    -- queries that join them to the totals or deals (functions that read
    -- tables themselves) read no distributed table
    q_start date[];
    q_owner uuid[];
    q_team uuid[];
    q_amount numeric[];
    q_currency text[];
    tm_user uuid[];
    tm_team uuid[];
    k text;
    deal_pipeline uuid;
    stage_pipeline uuid;
BEGIN
    IF p_period IS NULL OR p_as_of IS NULL THEN
        RAISE EXCEPTION 'period and as_of must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_period NOT IN ('day', 'week', 'month', 'quarter', 'year') THEN
        RAISE EXCEPTION 'unknown period "%"', p_period USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Use day, week, month, quarter or year.';
    END IF;
    IF p_from > p_to THEN
        RAISE EXCEPTION 'from_date % is after to_date %', p_from, p_to USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM crm.currency x WHERE x.code = cur) THEN
        RAISE EXCEPTION 'unknown currency "%"', cur USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Use an ISO 4217 code listed in crm.currency.';
    END IF;
    IF p_by IS NOT NULL AND p_by NOT IN ('owner', 'team') THEN
        RAISE EXCEPTION 'unknown grouping "%"', p_by USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Use owner, team or NULL.';
    END IF;

    -- the changes: an array of objects naming an opportunity or a stage
    IF jsonb_typeof(p_changes) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'changes must be a JSON array of objects' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'For example [{"opportunity": "<id>", "probability": 80}, {"stage": "<id>", "probability": 40}].';
    END IF;
    FOR c IN SELECT e FROM jsonb_array_elements(p_changes) e LOOP
        IF jsonb_typeof(c) <> 'object' THEN
            RAISE EXCEPTION 'changes must be a JSON array of objects' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        FOR k IN SELECT jsonb_object_keys(c) LOOP
            IF k NOT IN ('opportunity', 'stage', 'probability', 'amount', 'expected_close_date', 'forecast_category') THEN
                RAISE EXCEPTION 'unknown key "%" in a forecast change', k USING ERRCODE = 'invalid_parameter_value',
                    HINT = 'Use opportunity, stage, probability, amount, expected_close_date, forecast_category.';
            END IF;
        END LOOP;
        IF NOT (c ? 'opportunity') AND NOT (c ? 'stage') THEN
            RAISE EXCEPTION 'a forecast change must name an opportunity or a stage' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF NOT (c ? 'opportunity') AND (c ? 'amount' OR c ? 'expected_close_date') THEN
            RAISE EXCEPTION 'a stage change may set probability and forecast_category only'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        BEGIN
            PERFORM (c ->> 'probability')::numeric, (c ->> 'amount')::numeric, (c ->> 'expected_close_date')::date,
                    (c ->> 'opportunity')::uuid, (c ->> 'stage')::uuid;
        EXCEPTION WHEN data_exception THEN
            RAISE EXCEPTION 'invalid value in forecast change %', c USING ERRCODE = 'invalid_parameter_value';
        END;
        IF (c ->> 'probability')::numeric = 'NaN' OR (c ->> 'probability')::numeric NOT BETWEEN 0 AND 100 THEN
            RAISE EXCEPTION 'probability must be between 0 and 100, not %', c ->> 'probability'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF (c ->> 'amount')::numeric = 'NaN' OR (c ->> 'amount')::numeric < 0 THEN
            RAISE EXCEPTION 'amount must be a number of at least 0, not %', c ->> 'amount'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF c ->> 'forecast_category' NOT IN ('pipeline', 'best_case', 'commit', 'closed', 'omitted') THEN
            RAISE EXCEPTION 'unknown forecast category "%"', c ->> 'forecast_category'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Use pipeline, best_case, commit, closed or omitted.';
        END IF;
        IF c ? 'opportunity' THEN
            SELECT o.pipeline_id INTO deal_pipeline FROM crm.opportunity o
             WHERE o.tenant_id = t AND o.id = (c ->> 'opportunity')::uuid;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'opportunity % does not exist', c ->> 'opportunity' USING ERRCODE = 'no_data_found';
            END IF;
        END IF;
        IF c ? 'stage' THEN
            SELECT s.pipeline_id INTO stage_pipeline FROM crm.stage s
             WHERE s.tenant_id = t AND s.id = (c ->> 'stage')::uuid;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'stage % does not exist', c ->> 'stage' USING ERRCODE = 'no_data_found';
            END IF;
            IF c ? 'opportunity' AND stage_pipeline <> deal_pipeline THEN
                RAISE EXCEPTION 'stage % belongs to another pipeline than opportunity %', c ->> 'stage', c ->> 'opportunity'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        END IF;
    END LOOP;

    step := CASE p_period WHEN 'quarter' THEN interval '3 months' ELSE ('1 ' || p_period)::interval END;
    SELECT array_agg(qq.period_start), array_agg(qq.owner_id), array_agg(qq.team_id), array_agg(qq.amount),
           array_agg(qq.currency)
      INTO q_start, q_owner, q_team, q_amount, q_currency
      FROM crm.quota qq
     WHERE qq.tenant_id = t AND qq.period_type = p_period;
    IF p_changes = '[]'::jsonb AND p_team IS NULL AND p_by IS DISTINCT FROM 'team' THEN
        -- no changes and no teams: the totals in one pass (crm.forecast_totals, in C)
        RETURN QUERY
        SELECT a.period_start, (a.period_start + step - interval '1 day')::date, a.owner_id, NULL::uuid, cur,
               a.open_deals, round(a.open_pipeline, 2), round(a.closed_won + a.best_case_open, 2),
               round(a.closed_won + a.commit_open, 2), round(a.closed_won, 2), round(a.weighted, 2),
               round(a.closed_won + a.weighted, 2),
               round(q.amount, 2), round(a.closed_won / nullif(q.amount, 0) * 100, 2),
               round(a.p10, 2), round(a.p50, 2), round(a.p90, 2), a.error_bound, a.stage_value_deals
          FROM crm.forecast_totals(p_period, p_from, p_to, p_pipeline, p_owner, cur, p_as_of, p_by IS NOT DISTINCT FROM 'owner') a
          LEFT JOIN LATERAL (
              SELECT crm.convert_amount(qq.amount, qq.currency, cur, (p_as_of)::date, t) AS amount
                FROM unnest(q_start, q_owner, q_team, q_amount, q_currency)
                     AS qq(period_start, owner_id, team_id, amount, currency)
               WHERE qq.period_start = a.period_start
                 AND qq.owner_id IS NOT DISTINCT FROM CASE p_by WHEN 'owner' THEN a.owner_id ELSE p_owner END
                 AND qq.team_id IS NULL
                 AND (p_by IS DISTINCT FROM 'owner' OR a.owner_id IS NOT NULL)
          ) q ON true
         ORDER BY a.period_start, a.owner_id;
        RETURN;
    END IF;
    IF p_by = 'team' THEN
        SELECT array_agg(tm.user_id), array_agg(tm.team_id) INTO tm_user, tm_team
          FROM crm.team_member tm WHERE tm.tenant_id = t;
    END IF;
    RETURN QUERY
    WITH d AS (
        SELECT f.*, pg_catalog.date_trunc(p_period, (f.close_date)::timestamp)::date AS ps
          FROM crm.forecast_deals(p_from, p_to, p_pipeline, p_owner, p_team, cur, p_as_of, p_changes) f
         WHERE f.in_period AND f.status IN ('open', 'won')
    ), g AS (
        -- a deal counts once per period, or once per team of its owner
        SELECT d.*, CASE WHEN p_by = 'owner' THEN d.owner_id END AS g_owner, NULL::uuid AS g_team
          FROM d WHERE p_by IS DISTINCT FROM 'team'
        UNION ALL
        SELECT d.*, NULL::uuid, tm.team_id
          FROM d JOIN unnest(tm_user, tm_team) AS tm(user_id, team_id) ON tm.user_id = d.owner_id
         WHERE p_by = 'team'
    ), agg AS (
        SELECT g.ps, g.g_owner, g.g_team,
               count(*) FILTER (WHERE g.status = 'open' AND g.category <> 'omitted')::integer AS open_deals,
               coalesce(sum(g.converted) FILTER (WHERE g.status = 'open' AND g.category <> 'omitted'), 0) AS pipeline,
               coalesce(sum(g.converted) FILTER (WHERE g.status = 'open' AND g.category IN ('best_case', 'commit', 'closed')), 0) AS best_case_open,
               coalesce(sum(g.converted) FILTER (WHERE g.status = 'open' AND g.category IN ('commit', 'closed')), 0) AS commit_open,
               coalesce(sum(g.converted) FILTER (WHERE g.status = 'won'), 0) AS closed_won,
               coalesce(sum(g.converted * g.probability * 0.01) FILTER (WHERE g.status = 'open' AND g.category <> 'omitted'), 0) AS weighted,
               crm.revenue_distribution(g.converted, g.probability)
                   FILTER (WHERE g.status = 'won' OR g.category <> 'omitted') AS dist,
               count(*) FILTER (WHERE g.used_stage_value)::integer AS stage_value_deals
          FROM g
         GROUP BY g.ps, g.g_owner, g.g_team
    )
    SELECT a.ps, (a.ps + step - interval '1 day')::date, a.g_owner, a.g_team, cur,
           a.open_deals, round(a.pipeline, 2), round(a.closed_won + a.best_case_open, 2),
           round(a.closed_won + a.commit_open, 2), round(a.closed_won, 2), round(a.weighted, 2),
           round(a.closed_won + a.weighted, 2),
           round(q.amount, 2), round(a.closed_won / nullif(q.amount, 0) * 100, 2),
           round((a.dist).p10, 2), round((a.dist).p50, 2), round((a.dist).p90, 2),
           (a.dist).error_bound, a.stage_value_deals
      FROM agg a
      LEFT JOIN LATERAL (
          SELECT crm.convert_amount(qq.amount, qq.currency, cur, (p_as_of)::date, t) AS amount
            FROM unnest(q_start, q_owner, q_team, q_amount, q_currency)
                 AS qq(period_start, owner_id, team_id, amount, currency)
           WHERE qq.period_start = a.ps
             AND qq.owner_id IS NOT DISTINCT FROM
                 CASE p_by WHEN 'owner' THEN a.g_owner WHEN 'team' THEN NULL ELSE p_owner END
             AND qq.team_id IS NOT DISTINCT FROM
                 CASE p_by WHEN 'team' THEN a.g_team WHEN 'owner' THEN NULL ELSE p_team END
             -- the deals of nobody have no quota (not the tenant's)
             AND (p_by IS DISTINCT FROM 'owner' OR a.g_owner IS NOT NULL)
      ) q ON true
     ORDER BY a.ps, a.g_owner, a.g_team;
END
$$;
COMMENT ON FUNCTION crm.forecast_what_if(jsonb, text, date, date, uuid, uuid, uuid, text, timestamptz, text) IS
    'crm.forecast() as it would be with changes, writing nothing. changes is a JSON array of objects: '
    '{"opportunity": id, and any of "stage" (moves it; a won stage counts it won on its expected close date), "probability", "amount", "expected_close_date", "forecast_category"} '
    'or {"stage": id, and "probability" and/or "forecast_category"} for every deal in that stage that follows its probability; [] changes nothing. '
    'A bad key or value is refused (22023), an unknown opportunity or stage too (P0002)';

CREATE FUNCTION crm.forecast(period text DEFAULT 'month', from_date date DEFAULT NULL, to_date date DEFAULT NULL,
                             pipeline uuid DEFAULT NULL, owner uuid DEFAULT NULL, team uuid DEFAULT NULL,
                             currency text DEFAULT NULL, as_of timestamptz DEFAULT now(), by text DEFAULT NULL)
    RETURNS TABLE (period_start date, period_end date, owner_id uuid, team_id uuid, currency_code text,
                   open_deals integer, open_pipeline numeric, best_case numeric, commit numeric,
                   closed_won numeric, weighted numeric, expected numeric, quota numeric,
                   attainment numeric, p10 numeric, p50 numeric, p90 numeric, error_bound numeric,
                   stage_value_deals integer)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    -- PL/pgSQL, not SQL: Citus refuses a parameterised SQL function whose
    -- query reaches distributed tables
    RETURN QUERY SELECT * FROM crm.forecast_what_if('[]'::jsonb, $1, $2, $3, $4, $5, $6, $7, $8, $9);
END
$$;
COMMENT ON FUNCTION crm.forecast(text, date, date, uuid, uuid, uuid, text, timestamptz, text) IS
    'The sales forecast of the current tenant, one row per period (day, week (ISO, from Monday), month, quarter, year: open deals by expected close date, won deals by close date) '
    'within from_date..to_date (NULL: unbounded), and per owner or team when by is ''owner'' or ''team''; filters: pipeline, owner, team (its members'' deals). '
    'Categories are the deal''s forecast_category, else its stage''s; the totals roll up as Salesforce''s cumulative forecasts: '
    'open_pipeline = open deals of categories pipeline, best_case and commit; commit = closed_won + open commit; best_case = commit + open best_case; omitted deals count nowhere. '
    'weighted = sum of amount x probability / 100 of open deals; expected = closed_won + weighted; quota from crm.quota (the owner''s, team''s, or with neither filter the tenant''s) '
    'and attainment = closed_won / quota in percent; p10/p50/p90/error_bound: crm.revenue_distribution of the period''s won and open deals. '
    'Every amount is converted into currency (currency_code; default the tenant''s): won deals at the rate of their close date, open deals and quotas at as_of; '
    'a missing rate is an error (P0002). A deal without an amount (0) counts at its stage''s expected_value; stage_value_deals says how many did. '
    'Money is rounded to cents. Errors: unknown period, grouping or currency, from_date after to_date 22023; NULL period or as_of 22004';

-- Snapshots ------------------------------------------------------------------

CREATE FUNCTION crm.snapshot_forecast(name text, period_type text, from_date date, to_date date,
                                      pipeline uuid DEFAULT NULL, owner uuid DEFAULT NULL,
                                      as_of timestamptz DEFAULT now())
    RETURNS uuid
    AS 'MODULE_PATHNAME', 'crm_forecast_snapshot'
    LANGUAGE C VOLATILE;

-- The write half of crm.snapshot_forecast, run as the owner of the snapshot
-- tables (issue 8 item 4: no role writes them, so a snapshot cannot be
-- forged): the C function reads the deals with the caller's rights and
-- visibility, then calls this with the caller's tenant, user and currency.
CREATE FUNCTION crm.forecast_snapshot_store(tenant uuid, taken_by uuid, snapshot_currency text, name text, period_type text,
                                            from_date date, to_date date, pipeline uuid, owner uuid,
                                            as_of timestamptz, deals jsonb)
    RETURNS uuid
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    t uuid := forecast_snapshot_store.tenant;
    cur text := forecast_snapshot_store.snapshot_currency;
    snap uuid := crm.uuid_generate_v7();
    r record;
BEGIN
    IF t IS NULL OR t IS DISTINCT FROM crm.current_tenant() THEN
        RAISE EXCEPTION 'a forecast snapshot is stored for the tenant the session acts for only'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO crm.revenue_forecast (tenant_id, id, name, user_id, forecast_date, as_of, period_type, from_date,
                                      to_date, pipeline_id, owner_id, currency, open_deals, open_pipeline, best_case,
                                      commit, closed_won, weighted, expected, confidence_interval)
    VALUES (t, snap, btrim(forecast_snapshot_store.name), forecast_snapshot_store.taken_by, (forecast_snapshot_store.as_of)::date,
            forecast_snapshot_store.as_of, forecast_snapshot_store.period_type, forecast_snapshot_store.from_date,
            forecast_snapshot_store.to_date, forecast_snapshot_store.pipeline, forecast_snapshot_store.owner, cur,
            0, 0, 0, 0, 0, 0, 0, '{}');

    INSERT INTO crm.forecast_deal (tenant_id, forecast_id, opportunity_id, owner_id, stage_id, status, category,
                                   amount, currency, converted_amount, probability, close_date, in_period,
                                   used_stage_value, expected_value)
    SELECT t, snap, f.opportunity_id, f.owner_id, f.stage_id, f.status, f.category, f.amount, f.amount_currency,
           f.converted, f.probability, f.close_date, f.in_period, f.used_stage_value,
           CASE WHEN NOT f.in_period THEN 0::numeric
                WHEN f.status = 'won' THEN f.converted
                WHEN f.status = 'open' AND f.category <> 'omitted' THEN f.converted * f.probability * 0.01
                ELSE 0 END
      FROM pg_catalog.jsonb_to_recordset(forecast_snapshot_store.deals)
           AS f(opportunity_id uuid, owner_id uuid, stage_id uuid, status text, category text, amount numeric,
                amount_currency text, converted numeric, probability numeric, close_date date,
                in_period boolean, used_stage_value boolean);

    SELECT count(*) FILTER (WHERE d.status = 'open' AND d.category <> 'omitted')::integer AS open_deals,
           coalesce(sum(d.converted_amount) FILTER (WHERE d.status = 'open' AND d.category <> 'omitted'), 0) AS pipeline,
           coalesce(sum(d.converted_amount) FILTER (WHERE d.status = 'open' AND d.category IN ('best_case', 'commit', 'closed')), 0) AS best_case_open,
           coalesce(sum(d.converted_amount) FILTER (WHERE d.status = 'open' AND d.category IN ('commit', 'closed')), 0) AS commit_open,
           coalesce(sum(d.converted_amount) FILTER (WHERE d.status = 'won'), 0) AS closed_won,
           coalesce(sum(d.expected_value) FILTER (WHERE d.status = 'open'), 0) AS weighted,
           crm.revenue_distribution(d.converted_amount, d.probability)
               FILTER (WHERE d.status = 'won' OR (d.status = 'open' AND d.category <> 'omitted')) AS dist
      INTO r
      FROM crm.forecast_deal d
     WHERE d.tenant_id = t AND d.forecast_id = snap AND d.in_period;

    UPDATE crm.revenue_forecast f
       SET open_deals = r.open_deals, open_pipeline = r.pipeline, best_case = r.closed_won + r.best_case_open,
           commit = r.closed_won + r.commit_open, closed_won = r.closed_won, weighted = r.weighted,
           expected = r.closed_won + r.weighted,
           confidence_interval = jsonb_build_object('mean', round(coalesce((r.dist).mean, 0), 2),
                                                    'stddev', round(coalesce((r.dist).stddev, 0), 2),
                                                    'p10', round(coalesce((r.dist).p10, 0), 2),
                                                    'p50', round(coalesce((r.dist).p50, 0), 2),
                                                    'p90', round(coalesce((r.dist).p90, 0), 2),
                                                    'error_bound', coalesce((r.dist).error_bound, 0))
     WHERE f.tenant_id = t AND f.id = snap;

    -- the outbox (issue 7), in the same transaction
    PERFORM crm.emit_event('ForecastCreated',
        jsonb_build_object('forecastId', snap, 'name', btrim(forecast_snapshot_store.name),
                           'periodType', forecast_snapshot_store.period_type,
                           'fromDate', forecast_snapshot_store.from_date, 'toDate', forecast_snapshot_store.to_date,
                           'pipelineId', forecast_snapshot_store.pipeline, 'ownerId', forecast_snapshot_store.owner,
                           'currency', cur, 'openDeals', r.open_deals,
                           'closedWon', round(r.closed_won, 2), 'weighted', round(r.weighted, 2),
                           'expected', round(r.closed_won + r.weighted, 2),
                           'p10', round((r.dist).p10, 2), 'p50', round((r.dist).p50, 2),
                           'p90', round((r.dist).p90, 2), 'createdBy', forecast_snapshot_store.taken_by),
        'revenue_forecast', snap);
    RETURN snap;
END
$$;
COMMENT ON FUNCTION crm.forecast_snapshot_store(uuid, uuid, text, text, text, date, date, uuid, uuid, timestamptz, jsonb) IS
    'Internal: the write half of crm.snapshot_forecast, run as the owner of crm.revenue_forecast (from C, with the caller''s tenant): stores the header, the deals (read by the caller) and the totals, emits ForecastCreated; returns the id';
COMMENT ON FUNCTION crm.snapshot_forecast(text, text, date, date, uuid, uuid, timestamptz) IS
    'Stores the forecast of from_date..to_date (pipeline and owner filters optional) in the tenant''s currency as it is at as_of: '
    'totals and revenue range in crm.revenue_forecast, the deals behind it in crm.forecast_deal (every open deal of the filters, '
    'and closed ones in the window or closed in the year before as_of, so that crm.forecast_changes can tell deals that moved), '
    'emits ForecastCreated into the event outbox (crm.event) with the totals and range; returns its id. '
    'Errors: unknown period or from_date after to_date 22023, a NULL or empty argument 22004, a missing rate P0002';

CREATE FUNCTION crm.forecast_changes(from_snapshot uuid, to_snapshot uuid)
    RETURNS TABLE (step text, deals integer, amount numeric)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    a crm.revenue_forecast;
    b crm.revenue_forecast;
BEGIN
    IF from_snapshot IS NULL OR to_snapshot IS NULL THEN
        RAISE EXCEPTION 'from_snapshot and to_snapshot must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO a FROM crm.revenue_forecast r WHERE r.tenant_id = crm.current_tenant() AND r.id = from_snapshot;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'forecast snapshot % does not exist', from_snapshot USING ERRCODE = 'no_data_found',
            DETAIL = 'Snapshots of other tenants are not visible.';
    END IF;
    SELECT * INTO b FROM crm.revenue_forecast r WHERE r.tenant_id = crm.current_tenant() AND r.id = to_snapshot;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'forecast snapshot % does not exist', to_snapshot USING ERRCODE = 'no_data_found',
            DETAIL = 'Snapshots of other tenants are not visible.';
    END IF;
    IF (a.period_type, a.from_date, a.to_date, a.currency) IS DISTINCT FROM (b.period_type, b.from_date, b.to_date, b.currency)
       OR a.pipeline_id IS DISTINCT FROM b.pipeline_id OR a.owner_id IS DISTINCT FROM b.owner_id THEN
        RAISE EXCEPTION 'forecast snapshots % and % were taken with different filters', a.id, b.id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('%s %s..%s pipeline %s owner %s in %s against %s %s..%s pipeline %s owner %s in %s.',
                                  a.period_type, a.from_date, a.to_date, coalesce(a.pipeline_id::text, 'any'),
                                  coalesce(a.owner_id::text, 'any'), a.currency,
                                  b.period_type, b.from_date, b.to_date, coalesce(b.pipeline_id::text, 'any'),
                                  coalesce(b.owner_id::text, 'any'), b.currency),
                  HINT = 'Compare snapshots of the same period, window, pipeline, owner and currency.';
    END IF;
    RETURN QUERY
    WITH x AS (
        SELECT coalesce(f.opportunity_id, t.opportunity_id) AS id,
               f.opportunity_id IS NOT NULL AS in_from, t.opportunity_id IS NOT NULL AS in_to,
               f.status AS f_status, t.status AS t_status, f.in_period AS f_in, t.in_period AS t_in,
               coalesce(f.expected_value, 0) AS f_value, coalesce(t.expected_value, 0) AS t_value,
               f.converted_amount AS f_conv, t.converted_amount AS t_conv,
               CASE WHEN f.status = 'won' THEN 1 WHEN f.status = 'open' AND f.category <> 'omitted'
                    THEN f.probability * 0.01 ELSE 0 END AS f_weight,
               CASE WHEN t.status = 'won' THEN 1 WHEN t.status = 'open' AND t.category <> 'omitted'
                    THEN t.probability * 0.01 ELSE 0 END AS t_weight
          FROM (SELECT * FROM crm.forecast_deal d WHERE d.tenant_id = a.tenant_id AND d.forecast_id = a.id) f
          FULL JOIN (SELECT * FROM crm.forecast_deal d WHERE d.tenant_id = b.tenant_id AND d.forecast_id = b.id) t
            ON t.opportunity_id = f.opportunity_id
    ), parts AS (
        -- each deal's change, split into steps that add up to it exactly
        SELECT CASE WHEN NOT x.in_from THEN 'new deals'
                    WHEN NOT x.in_to THEN 'deals removed'
                    WHEN x.f_status = 'open' AND x.t_status = 'won' THEN 'deals won'
                    WHEN x.f_status = 'open' AND x.t_status = 'lost' THEN 'deals lost'
                    WHEN NOT x.f_in AND x.t_in THEN 'close date moved in'
                    WHEN x.f_in AND NOT x.t_in THEN 'close date moved out'
                    ELSE 'amount' END AS kind,
               x.*
          FROM x
    ), steps AS (
        SELECT CASE WHEN p.kind <> 'amount' THEN p.kind
                    WHEN s.part = 1 AND s.value > 0 THEN 'amount up'
                    WHEN s.part = 1 THEN 'amount down'
                    ELSE 'probability or category change' END AS step,
               s.value
          FROM parts p
          CROSS JOIN LATERAL (
              SELECT 1 AS part, CASE WHEN p.kind = 'amount' THEN
                                     CASE WHEN p.f_in THEN (p.t_conv - p.f_conv) * p.f_weight ELSE 0 END
                                ELSE p.t_value - p.f_value END AS value
              UNION ALL
              SELECT 2, CASE WHEN p.f_in THEN p.t_conv * (p.t_weight - p.f_weight) ELSE 0 END
               WHERE p.kind = 'amount'
          ) s
         WHERE s.value <> 0
    ), ordered AS (
        -- column names in the select list, not in a list after the CTE's
        -- name: Citus 13.0.5 loses that list when it routes the query
        SELECT 1 AS n, 'start' AS step, (SELECT count(*)::integer FROM x WHERE x.f_value <> 0) AS deals,
               (SELECT sum(x.f_value) FROM x) AS value
        UNION ALL
        SELECT k.n, k.step, coalesce(c.deals, 0), coalesce(c.value, 0)
          FROM (VALUES (2, 'new deals'), (3, 'deals won'), (4, 'deals lost'), (5, 'deals removed'),
                       (6, 'close date moved in'), (7, 'close date moved out'), (8, 'amount up'),
                       (9, 'amount down'), (10, 'probability or category change')) k(n, step)
          LEFT JOIN (SELECT st.step, count(*)::integer AS deals, sum(st.value) AS value
                       FROM steps st GROUP BY st.step) c ON c.step = k.step
    ), cumulative AS (
        SELECT o.n, o.step, o.deals, sum(coalesce(o.value, 0)) OVER (ORDER BY o.n) AS running
          FROM ordered o
    ), shown AS (
        SELECT c.n, c.step, c.deals,
               round(c.running, 2) - coalesce(round(lag(c.running) OVER (ORDER BY c.n), 2), 0) AS amount
          FROM cumulative c
        UNION ALL
        SELECT 11, 'end', (SELECT count(*)::integer FROM x WHERE x.t_value <> 0),
               round((SELECT coalesce(sum(x.t_value), 0) FROM x), 2)
    )
    SELECT sh.step, sh.deals, sh.amount FROM shown sh ORDER BY sh.n;
END
$$;
COMMENT ON FUNCTION crm.forecast_changes(uuid, uuid) IS
    'How the expected total (closed won + weighted) moved from one snapshot to another, as a waterfall: start, new deals, deals won, deals lost, '
    'deals removed (archived or deleted), close date moved in, close date moved out, amount up, amount down (including rate changes), '
    'probability or category change, end. A deal that stayed open in the window splits its change exactly into an amount part '
    '(change of amount x old probability) and a probability part (new amount x change of probability). Each step is rounded so that '
    'start plus the steps is exactly end, to the cent. Unknown snapshots or those of another tenant: P0002; different filters: 22023';

CREATE FUNCTION crm.forecast_accuracy(snapshot uuid, as_of timestamptz DEFAULT now())
    RETURNS TABLE (owner_id uuid, weighted numeric, commit numeric, best_case numeric, actual numeric,
                   error numeric, abs_pct_error numeric, bias_pct numeric, commit_error numeric,
                   best_case_error numeric, snapshots integer, mape numeric)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    s crm.revenue_forecast;
    -- the snapshots and their forecast per owner, read first by queries
    -- Citus routes to the tenant's shards, so that the query that calls
    -- crm.forecast_deals() for the actuals reads no distributed table
    snap_rows crm.revenue_forecast[];
    snap_ids uuid[];
    fc_forecast uuid[];
    fc_owner uuid[];
    fc_weighted numeric[];
    fc_commit numeric[];
    fc_best_case numeric[];
BEGIN
    IF snapshot IS NULL OR as_of IS NULL THEN
        RAISE EXCEPTION 'snapshot and as_of must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO s FROM crm.revenue_forecast r WHERE r.tenant_id = crm.current_tenant() AND r.id = snapshot;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'forecast snapshot % does not exist', snapshot USING ERRCODE = 'no_data_found',
            DETAIL = 'Snapshots of other tenants are not visible.';
    END IF;
    IF s.to_date >= (forecast_accuracy.as_of)::date THEN
        RAISE EXCEPTION 'the period of forecast snapshot % has not ended', s.id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('It runs to %s.', s.to_date),
                  HINT = 'Ask again after the last day of the window.';
    END IF;
    -- the snapshot itself and every ended one like it (for the MAPE)
    SELECT array_agg(r), array_agg(r.id) INTO snap_rows, snap_ids
      FROM crm.revenue_forecast r
     WHERE r.tenant_id = s.tenant_id AND r.period_type = s.period_type AND r.currency = s.currency
       AND r.pipeline_id IS NOT DISTINCT FROM s.pipeline_id
       AND r.to_date < (forecast_accuracy.as_of)::date;
    SELECT array_agg(x.forecast_id), array_agg(x.owner_id), array_agg(x.weighted), array_agg(x.commit),
           array_agg(x.best_case)
      INTO fc_forecast, fc_owner, fc_weighted, fc_commit, fc_best_case
      FROM (SELECT d.forecast_id, d.owner_id,
                   sum(d.expected_value) AS weighted,
                   sum(d.converted_amount) FILTER (WHERE d.status = 'won' OR (d.status = 'open' AND d.category IN ('commit', 'closed'))) AS commit,
                   sum(d.converted_amount) FILTER (WHERE d.status = 'won' OR (d.status = 'open' AND d.category IN ('best_case', 'commit', 'closed'))) AS best_case
              FROM crm.forecast_deal d
             WHERE d.tenant_id = s.tenant_id AND d.in_period
               AND d.forecast_id = ANY (snap_ids)
             GROUP BY d.forecast_id, d.owner_id) x;
    RETURN QUERY
    WITH snaps AS (
        SELECT * FROM pg_catalog.unnest(snap_rows)
    ), fc AS (
        SELECT * FROM unnest(fc_forecast, fc_owner, fc_weighted, fc_commit, fc_best_case)
                      AS x(forecast_id, owner_id, weighted, commit, best_case)
    ), act AS (
        SELECT sn.id AS forecast_id, w.owner_id, sum(w.converted) AS actual
          FROM snaps sn
          CROSS JOIN LATERAL crm.forecast_deals(sn.from_date, sn.to_date, sn.pipeline_id, sn.owner_id, NULL,
                                                sn.currency, forecast_accuracy.as_of, NULL) w
         WHERE w.status = 'won' AND w.in_period
         GROUP BY sn.id, w.owner_id
    ), per AS (
        SELECT coalesce(fc.forecast_id, act.forecast_id) AS forecast_id,
               coalesce(fc.owner_id, act.owner_id) AS owner_id,
               coalesce(fc.weighted, 0) AS weighted, coalesce(fc.commit, 0) AS commit,
               coalesce(fc.best_case, 0) AS best_case, coalesce(act.actual, 0) AS actual
          FROM fc FULL JOIN act ON act.forecast_id = fc.forecast_id
                               AND act.owner_id IS NOT DISTINCT FROM fc.owner_id
    ), scored AS (
        SELECT per.*, per.weighted - per.actual AS error,
               abs(per.weighted - per.actual) / nullif(per.actual, 0) * 100 AS ape
          FROM per
    )
    SELECT sc.owner_id, round(sc.weighted, 2), round(sc.commit, 2), round(sc.best_case, 2), round(sc.actual, 2),
           round(sc.error, 2), round(sc.ape, 2), round(sc.error / nullif(sc.actual, 0) * 100, 2),
           round(sc.commit - sc.actual, 2), round(sc.best_case - sc.actual, 2),
           m.n, round(m.mape, 2)
      FROM scored sc
      CROSS JOIN LATERAL (
          SELECT count(*)::integer AS n, avg(o.ape) AS mape FROM scored o
           WHERE o.owner_id IS NOT DISTINCT FROM sc.owner_id AND (o.ape IS NOT NULL OR o.forecast_id = sc.forecast_id)
      ) m
     WHERE sc.forecast_id = s.id
     ORDER BY sc.owner_id;
END
$$;
COMMENT ON FUNCTION crm.forecast_accuracy(uuid, timestamptz) IS
    'Once a snapshot''s window has ended (else 55000): per owner, what it forecast (weighted = closed won then + weighted open; commit; best case) '
    'against what was won in the window (actual, converted as crm.forecast converts), error = weighted - actual, abs_pct_error = |error| / actual in percent, '
    'bias_pct = error / actual in percent (positive: over-forecast; NULL when nothing was won), commit_error, best_case_error, and over every ended snapshot '
    'of the same period type, pipeline and currency that the owner appears in (snapshots), their mean absolute percentage error (mape, of those with actual > 0)';
