-- src/sql/85_analytics.sql: pipeline analytics (issue 7) from the stage
-- history, the records and the activity aggregates.
--
-- Every function reads with its caller's rights (row-level security fences
-- it as it fences the tables) and answers for the current tenant.  Amounts
-- are reported in the tenant's default currency through crm.exchange_rate()
-- in force at the record's close date (today for open records); a record
-- whose currency has no rate is counted in unpriced_count and left out of
-- the sums, as the kanban does.  Periods are [period_start, period_end),
-- NULL meaning open-ended; pipeline NULL means every pipeline.

--
-- On Citus each function reads the tenant into a variable first (tid) and
-- filters every table by tenant_id = tid, so that each query is routed to
-- the tenant's shard group whole; no query calls a function that reads a
-- table (on a worker that would be a distributed query from a query on a
-- shard): the rate lookup of crm.analytics_amount() is written out, the
-- tenant's currency read before, and the rows of another analytics
-- function read first into arrays.

-- Amount of a record in the tenant's currency, NULL when there is no rate.
CREATE FUNCTION crm.analytics_amount(amount numeric, currency text, as_of date, tenant uuid) RETURNS numeric
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    cur text;
    r numeric;
BEGIN
    IF tenant IS DISTINCT FROM crm.current_tenant()
       AND NOT coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user), false) THEN
        RAISE EXCEPTION 'tenant % is not the tenant this session acts for', tenant
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'A tenant argument may name only the caller''s own tenant (issue 8 item 4).';
    END IF;
    -- the currency first, then the rate: one statement calling
    -- crm.exchange_rate() on crm.tenant would run it on a Citus worker
    SELECT t.default_currency INTO cur FROM crm.tenant t WHERE t.tenant_id = $4;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    r := crm.exchange_rate($2, cur, $3, $4);
    -- no rate is NULL, but a code that is no currency is a bad parameter
    IF r IS NULL AND $2 IS NOT NULL AND NOT EXISTS (SELECT 1 FROM crm.currency c WHERE c.code = $2) THEN
        RAISE EXCEPTION 'unknown currency "%"', $2 USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Use an ISO 4217 code listed in crm.currency.';
    END IF;
    RETURN $1 * r;
END
$$;
COMMENT ON FUNCTION crm.analytics_amount(numeric, text, date, uuid) IS
    'An amount converted into the tenant''s default currency at the rate in force on as_of; NULL when there is no rate; a currency not in crm.currency is 22023 (unknown currency); tenant must be the caller''s own (42501 otherwise; superusers excepted)';

CREATE FUNCTION crm.pipeline_funnel(pipeline uuid DEFAULT NULL, period_start timestamptz DEFAULT NULL,
                                    period_end timestamptz DEFAULT NULL)
    RETURNS TABLE (pipeline_id uuid, pipeline_name text, stage_id uuid, stage_name text, stage_sequence integer,
                   reached bigint, moved_on bigint, conversion_rate numeric)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    tid uuid := crm.current_tenant();
BEGIN
    RETURN QUERY
    -- how far each opportunity (created in the period) got: the highest
    -- open or won stage it has been in, now or in its history
    WITH opp AS (
        SELECT o.tenant_id, o.id, o.pipeline_id,
               (SELECT max(s.sequence) FROM crm.stage s
                 WHERE s.tenant_id = tid AND s.kind <> 'lost'
                   AND (s.id = o.stage_id
                        OR s.id IN (SELECT h.from_stage_id FROM crm.stage_history h
                                     WHERE h.tenant_id = tid AND h.opportunity_id = o.id
                                    UNION ALL
                                    SELECT h.to_stage_id FROM crm.stage_history h
                                     WHERE h.tenant_id = tid AND h.opportunity_id = o.id))) AS reach
          FROM crm.opportunity o
         WHERE o.tenant_id = tid
           AND ($1 IS NULL OR o.pipeline_id = $1)
           AND ($2 IS NULL OR o.created_at >= $2) AND ($3 IS NULL OR o.created_at < $3)
    )
    SELECT s.pipeline_id, p.name, s.id, s.name, s.sequence,
           count(opp.id) FILTER (WHERE opp.reach >= s.sequence),
           count(opp.id) FILTER (WHERE opp.reach > s.sequence),
           round(100.0 * count(opp.id) FILTER (WHERE opp.reach > s.sequence)
                 / nullif(count(opp.id) FILTER (WHERE opp.reach >= s.sequence), 0), 1)
      FROM crm.stage s
      JOIN crm.pipeline p ON p.tenant_id = s.tenant_id AND p.id = s.pipeline_id
      LEFT JOIN opp ON opp.tenant_id = s.tenant_id AND opp.pipeline_id = s.pipeline_id
     WHERE s.tenant_id = tid AND p.tenant_id = tid AND s.kind <> 'lost'
       AND ($1 IS NULL OR s.pipeline_id = $1)
     GROUP BY s.pipeline_id, p.name, p.sequence, s.id, s.name, s.sequence
     ORDER BY p.sequence, p.name, s.sequence;
END
$$;
COMMENT ON FUNCTION crm.pipeline_funnel(uuid, timestamptz, timestamptz) IS
    'Funnel per pipeline and open/won stage of the opportunities created in the period: how many reached the stage, how many moved beyond it, and the conversion rate (%) from it to the next';

CREATE FUNCTION crm.win_rate(group_by text DEFAULT 'owner', period_start timestamptz DEFAULT NULL,
                             period_end timestamptz DEFAULT NULL, pipeline uuid DEFAULT NULL)
    RETURNS TABLE (group_key text, won bigint, lost bigint, win_rate numeric, won_amount numeric,
                   currency text, unpriced_count bigint)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    tid uuid := crm.current_tenant();
    cur text := (SELECT t.default_currency FROM crm.tenant t WHERE t.tenant_id = crm.current_tenant());
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'group_by must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF $1 NOT IN ('owner', 'team', 'source', 'period') THEN
        RAISE EXCEPTION 'cannot group the win rate by "%"', $1 USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Group by owner, team, source or period (the month the deals closed).';
    END IF;
    RETURN QUERY
    WITH closed AS (
        SELECT o.*, o.amount * CASE WHEN o.currency = cur THEN 1::numeric ELSE coalesce(
                   (SELECT cr.rate FROM crm.currency_rate cr
                     WHERE cr.tenant_id = tid AND cr.from_currency = o.currency AND cr.to_currency = cur
                       AND cr.valid_from <= o.closed_at::date ORDER BY cr.valid_from DESC LIMIT 1),
                   (SELECT 1 / cr.rate FROM crm.currency_rate cr
                     WHERE cr.tenant_id = tid AND cr.from_currency = cur AND cr.to_currency = o.currency
                       AND cr.valid_from <= o.closed_at::date ORDER BY cr.valid_from DESC LIMIT 1)) END AS amt
          FROM crm.opportunity o
         WHERE o.tenant_id = tid AND o.status IN ('won', 'lost')
           AND ($2 IS NULL OR o.closed_at >= $2) AND ($3 IS NULL OR o.closed_at < $3)
           AND ($4 IS NULL OR o.pipeline_id = $4)
    ), keyed AS (
        SELECT c.*, k.key
          FROM closed c
         CROSS JOIN LATERAL (
             SELECT (SELECT u.name FROM crm.app_user u WHERE u.tenant_id = tid AND u.id = c.owner_id) AS key
              WHERE $1 = 'owner'
             UNION ALL
             SELECT coalesce(t.name, NULL) FROM crm.team_member m
               JOIN crm.team t ON t.tenant_id = m.tenant_id AND t.id = m.team_id
              WHERE $1 = 'team' AND m.tenant_id = tid AND t.tenant_id = tid AND m.user_id = c.owner_id
             UNION ALL
             SELECT NULL WHERE $1 = 'team' AND NOT EXISTS (
                 SELECT 1 FROM crm.team_member m WHERE m.tenant_id = tid AND m.user_id = c.owner_id)
             UNION ALL
             SELECT c.source WHERE $1 = 'source'
             UNION ALL
             SELECT to_char(c.closed_at, 'YYYY-MM') WHERE $1 = 'period') k
    )
    SELECT coalesce(k.key, '(none)'),
           count(*) FILTER (WHERE k.status = 'won'),
           count(*) FILTER (WHERE k.status = 'lost'),
           round(100.0 * count(*) FILTER (WHERE k.status = 'won') / count(*), 1),
           coalesce(sum(k.amt) FILTER (WHERE k.status = 'won'), 0)::numeric(18,2),
           cur,
           count(*) FILTER (WHERE k.status = 'won' AND k.amt IS NULL)
      FROM keyed k
     GROUP BY 1
     ORDER BY 1;
END
$$;
COMMENT ON FUNCTION crm.win_rate(text, timestamptz, timestamptz, uuid) IS
    'Won and lost opportunities closed in the period, grouped by owner, team, source or period (month): win rate (%) and won amount in the tenant''s currency';

-- The stays of each opportunity in each stage, from its stage history: the
-- first from creation to the first change, each later one from a change to
-- the next, the last (of an open deal) until as_of.
CREATE FUNCTION crm.opportunity_stays(as_of timestamptz DEFAULT now(), pipeline uuid DEFAULT NULL)
    RETURNS TABLE (opportunity_id uuid, pipeline_id uuid, stage_id uuid, entered_at timestamptz,
                   left_at timestamptz, is_current boolean)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    tid uuid := crm.current_tenant();
BEGIN
    RETURN QUERY
    WITH opp AS (
        SELECT o.tenant_id, o.id, o.pipeline_id, o.stage_id, o.status, o.created_at
          FROM crm.opportunity o
         WHERE o.tenant_id = tid AND ($2 IS NULL OR o.pipeline_id = $2)
    ), h AS (
        SELECT h.opportunity_id, h.from_stage_id, h.to_stage_id, h.changed_at,
               lead(h.changed_at) OVER w AS next_at, row_number() OVER w AS n
          FROM crm.stage_history h
          JOIN opp ON opp.tenant_id = h.tenant_id AND opp.id = h.opportunity_id
         WHERE h.tenant_id = tid AND h.changed_at <= $1
        WINDOW w AS (PARTITION BY h.opportunity_id ORDER BY h.changed_at, h.id)
    )
    SELECT opp.id, opp.pipeline_id, h.from_stage_id, opp.created_at, h.changed_at, false
      FROM h JOIN opp ON opp.id = h.opportunity_id
     WHERE h.n = 1 AND h.from_stage_id IS DISTINCT FROM h.to_stage_id AND h.changed_at >= opp.created_at
    UNION ALL
    SELECT opp.id, opp.pipeline_id, h.to_stage_id, h.changed_at, coalesce(h.next_at, $1), h.next_at IS NULL
      FROM h JOIN opp ON opp.id = h.opportunity_id
    UNION ALL
    SELECT opp.id, opp.pipeline_id, opp.stage_id, opp.created_at, $1, true
      FROM opp
     WHERE opp.created_at <= $1 AND NOT EXISTS (SELECT 1 FROM h WHERE h.opportunity_id = opp.id);
END
$$;
COMMENT ON FUNCTION crm.opportunity_stays(timestamptz, uuid) IS
    'Each stay of an opportunity in a stage, from the stage history: entered, left (as_of for the current stay)';

CREATE FUNCTION crm.time_in_stage(pipeline uuid DEFAULT NULL, as_of timestamptz DEFAULT now())
    RETURNS TABLE (pipeline_id uuid, stage_id uuid, stage_name text, stage_sequence integer, stays bigint,
                   current_stays bigint, avg_days numeric, median_days numeric)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    tid uuid := crm.current_tenant();
    x_stage uuid[];
    x_current boolean[];
    x_days numeric[];
BEGIN
    -- the stays first (crm.opportunity_stays reads tables itself)
    SELECT array_agg(x.stage_id), array_agg(x.is_current),
           array_agg(extract(epoch FROM x.left_at - x.entered_at) / 86400)
      INTO x_stage, x_current, x_days
      FROM crm.opportunity_stays($2, $1) x;
    RETURN QUERY
    SELECT s.pipeline_id, s.id, s.name, s.sequence, count(x.stage_id), count(x.stage_id) FILTER (WHERE x.is_current),
           round(avg(x.days)::numeric, 2),
           round((percentile_cont(0.5) WITHIN GROUP (ORDER BY x.days))::numeric, 2)
      FROM crm.stage s
      JOIN crm.pipeline p ON p.tenant_id = s.tenant_id AND p.id = s.pipeline_id
      LEFT JOIN unnest(x_stage, x_current, x_days) AS x(stage_id, is_current, days) ON x.stage_id = s.id
     WHERE s.tenant_id = tid AND p.tenant_id = tid AND s.kind = 'open' AND ($1 IS NULL OR s.pipeline_id = $1)
     GROUP BY s.pipeline_id, p.sequence, p.name, s.id, s.name, s.sequence
     ORDER BY p.sequence, p.name, s.sequence;
END
$$;
COMMENT ON FUNCTION crm.time_in_stage(uuid, timestamptz) IS
    'Per open stage: how many stays (current ones included, counted until as_of), their average and median length in days';

CREATE FUNCTION crm.sales_cycle(pipeline uuid DEFAULT NULL, period_start timestamptz DEFAULT NULL,
                                period_end timestamptz DEFAULT NULL)
    RETURNS TABLE (closed bigint, won bigint, avg_days numeric, median_days numeric, avg_won_days numeric)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    tid uuid := crm.current_tenant();
BEGIN
    RETURN QUERY
    SELECT count(*), count(*) FILTER (WHERE o.status = 'won'),
           round(avg(extract(epoch FROM o.closed_at - o.created_at) / 86400)::numeric, 2),
           round((percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM o.closed_at - o.created_at) / 86400))::numeric, 2),
           round(avg(extract(epoch FROM o.closed_at - o.created_at) / 86400) FILTER (WHERE o.status = 'won')::numeric, 2)
      FROM crm.opportunity o
     WHERE o.tenant_id = tid AND o.status IN ('won', 'lost')
       AND ($1 IS NULL OR o.pipeline_id = $1)
       AND ($2 IS NULL OR o.closed_at >= $2) AND ($3 IS NULL OR o.closed_at < $3);
END
$$;
COMMENT ON FUNCTION crm.sales_cycle(uuid, timestamptz, timestamptz) IS
    'Sales cycle of the opportunities closed in the period: days from creation to close, average and median, and the average of the won ones';

CREATE FUNCTION crm.sales_velocity(pipeline uuid DEFAULT NULL, period_start timestamptz DEFAULT NULL,
                                   period_end timestamptz DEFAULT NULL)
    RETURNS TABLE (open_deals bigint, avg_won_amount numeric, win_rate numeric, cycle_days numeric,
                   velocity_per_day numeric, currency text, unpriced_count bigint)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    tid uuid := crm.current_tenant();
    cur text := (SELECT t.default_currency FROM crm.tenant t WHERE t.tenant_id = crm.current_tenant());
BEGIN
    RETURN QUERY
    WITH closed AS (
        SELECT o.status, o.created_at, o.closed_at,
               o.amount * CASE WHEN o.currency = cur THEN 1::numeric ELSE coalesce(
                   (SELECT cr.rate FROM crm.currency_rate cr
                     WHERE cr.tenant_id = tid AND cr.from_currency = o.currency AND cr.to_currency = cur
                       AND cr.valid_from <= o.closed_at::date ORDER BY cr.valid_from DESC LIMIT 1),
                   (SELECT 1 / cr.rate FROM crm.currency_rate cr
                     WHERE cr.tenant_id = tid AND cr.from_currency = cur AND cr.to_currency = o.currency
                       AND cr.valid_from <= o.closed_at::date ORDER BY cr.valid_from DESC LIMIT 1)) END AS amt
          FROM crm.opportunity o
         WHERE o.tenant_id = tid AND o.status IN ('won', 'lost')
           AND ($1 IS NULL OR o.pipeline_id = $1)
           AND ($2 IS NULL OR o.closed_at >= $2) AND ($3 IS NULL OR o.closed_at < $3)
    ), k AS (
        SELECT (SELECT count(*) FROM crm.opportunity o
                 WHERE o.tenant_id = tid AND o.status = 'open' AND o.archived_at IS NULL
                   AND ($1 IS NULL OR o.pipeline_id = $1)) AS open_deals,
               avg(c.amt) FILTER (WHERE c.status = 'won') AS avg_won,
               count(*) FILTER (WHERE c.status = 'won')::numeric / nullif(count(*), 0) AS rate,
               avg(extract(epoch FROM c.closed_at - c.created_at) / 86400) FILTER (WHERE c.status = 'won') AS cycle,
               count(*) FILTER (WHERE c.status = 'won' AND c.amt IS NULL) AS unconverted
          FROM closed c
    )
    -- divided by the cycle as shown (to the hundredth of a day): deals won
    -- within minutes of their creation give no velocity rather than billions
    SELECT k.open_deals, round(k.avg_won, 2), round(100 * k.rate, 1), round(k.cycle::numeric, 2),
           round(k.open_deals * k.avg_won * k.rate / nullif(round(k.cycle::numeric, 2), 0), 2),
           cur,
           k.unconverted
      FROM k;
END
$$;
COMMENT ON FUNCTION crm.sales_velocity(uuid, timestamptz, timestamptz) IS
    'Sales velocity: open deals x average won amount x win rate / average won cycle in days, from the deals closed in the period (amount per day, tenant currency; NULL while the cycle is under 0.005 days)';

CREATE FUNCTION crm.lead_source_analytics(period_start timestamptz DEFAULT NULL, period_end timestamptz DEFAULT NULL)
    RETURNS TABLE (source text, leads bigint, converted bigint, conversion_rate numeric, average_won_amount numeric,
                   currency text, unpriced_count bigint)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    tid uuid := crm.current_tenant();
    cur text := (SELECT t.default_currency FROM crm.tenant t WHERE t.tenant_id = crm.current_tenant());
BEGIN
    RETURN QUERY
    WITH l AS (
        SELECT x.tenant_id, x.id, coalesce(x.source, '(none)') AS source, x.converted_at
          FROM crm.lead x
         WHERE x.tenant_id = tid
           AND ($1 IS NULL OR x.created_at >= $1) AND ($2 IS NULL OR x.created_at < $2)
    ), won AS (
        SELECT o.lead_id, o.amount * CASE WHEN o.currency = cur THEN 1::numeric ELSE coalesce(
                   (SELECT cr.rate FROM crm.currency_rate cr
                     WHERE cr.tenant_id = tid AND cr.from_currency = o.currency AND cr.to_currency = cur
                       AND cr.valid_from <= o.closed_at::date ORDER BY cr.valid_from DESC LIMIT 1),
                   (SELECT 1 / cr.rate FROM crm.currency_rate cr
                     WHERE cr.tenant_id = tid AND cr.from_currency = cur AND cr.to_currency = o.currency
                       AND cr.valid_from <= o.closed_at::date ORDER BY cr.valid_from DESC LIMIT 1)) END AS amt
          FROM crm.opportunity o
         WHERE o.tenant_id = tid AND o.status = 'won' AND o.lead_id IS NOT NULL
    )
    SELECT l.source, count(DISTINCT l.id), count(DISTINCT l.id) FILTER (WHERE l.converted_at IS NOT NULL),
           round(100.0 * count(DISTINCT l.id) FILTER (WHERE l.converted_at IS NOT NULL) / count(DISTINCT l.id), 1),
           round(avg(w.amt), 2),
           cur,
           count(w.lead_id) FILTER (WHERE w.amt IS NULL)
      FROM l LEFT JOIN won w ON w.lead_id = l.id
     GROUP BY l.source
     ORDER BY l.source;
END
$$;
COMMENT ON FUNCTION crm.lead_source_analytics(timestamptz, timestamptz) IS
    'Per lead source (seeds/002 LeadSourceAnalytics), over the leads created in the period: leads, converted, conversion rate (%), average won amount of their opportunities in the tenant''s currency';

CREATE FUNCTION crm.rotting_deals(as_of timestamptz DEFAULT now(), pipeline uuid DEFAULT NULL)
    RETURNS TABLE (opportunity_id uuid, name text, stage_id uuid, stage_name text, owner_id uuid,
                   last_activity_at timestamptz, idle_since timestamptz, idle_days numeric, rotting_days integer)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    tid uuid := crm.current_tenant();
BEGIN
    RETURN QUERY
    SELECT x.id, x.name, x.stage_id, x.stage_name, x.owner_id, x.last_activity_at, x.idle_since,
           round((extract(epoch FROM $1 - x.idle_since) / 86400)::numeric, 1), x.rotting_days
      FROM (
        SELECT o.id, o.name, o.stage_id, s.name AS stage_name, o.owner_id, s.rotting_days,
               a.last_at AS last_activity_at,
               -- no activity since: the latest completed activity on the deal or
               -- with its contact, else when it entered its stage
               coalesce(a.last_at,
                        (SELECT max(h.changed_at) FROM crm.stage_history h
                          WHERE h.tenant_id = tid AND h.opportunity_id = o.id AND h.to_stage_id = o.stage_id),
                        o.created_at) AS idle_since
          FROM crm.opportunity o
          JOIN crm.stage s ON s.tenant_id = o.tenant_id AND s.id = o.stage_id
         CROSS JOIN LATERAL (
             SELECT greatest(
                 (SELECT max(v.occurred_at) FROM crm.activity v
                   WHERE v.tenant_id = tid AND v.opportunity_id = o.id AND v.status = 'completed'
                     AND v.occurred_at <= $1),
                 (SELECT e.last_activity_at FROM crm.contact_engagement e
                   WHERE e.tenant_id = tid AND e.contact_id = o.contact_id AND e.last_activity_at <= $1))
                 AS last_at) a
         WHERE o.tenant_id = tid AND s.tenant_id = tid AND o.status = 'open' AND o.archived_at IS NULL
           AND s.rotting_days IS NOT NULL AND ($2 IS NULL OR o.pipeline_id = $2)) x
     WHERE $1 - x.idle_since > x.rotting_days * interval '1 day'
     ORDER BY x.idle_since, x.id;
END
$$;
COMMENT ON FUNCTION crm.rotting_deals(timestamptz, uuid) IS
    'Open deals with no activity (on the deal or with its contact) for longer than their stage''s rotting_days, as of a time';

CREATE FUNCTION crm.owner_dashboard(period_start timestamptz DEFAULT NULL, period_end timestamptz DEFAULT NULL,
                                    as_of timestamptz DEFAULT now())
    RETURNS TABLE (owner_id uuid, owner_name text, open_deals bigint, open_amount numeric, won_deals bigint,
                   won_amount numeric, lost_deals bigint, win_rate numeric, activities_completed bigint,
                   rotting_deals bigint, currency text, unpriced_count bigint)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    tid uuid := crm.current_tenant();
    cur text := (SELECT t.default_currency FROM crm.tenant t WHERE t.tenant_id = crm.current_tenant());
    rot_owner uuid[];
    rot_count bigint[];
BEGIN
    -- the rotting deals per owner first (crm.rotting_deals reads tables itself)
    SELECT array_agg(r.owner_id), array_agg(r.n) INTO rot_owner, rot_count
      FROM (SELECT d.owner_id, count(*) AS n FROM crm.rotting_deals($3) d
             WHERE d.owner_id IS NOT NULL GROUP BY d.owner_id) r;
    RETURN QUERY
    WITH o AS (
        SELECT x.owner_id, x.status, x.closed_at,
               x.amount * CASE WHEN x.currency = cur THEN 1::numeric ELSE coalesce(
                   (SELECT cr.rate FROM crm.currency_rate cr
                     WHERE cr.tenant_id = tid AND cr.from_currency = x.currency AND cr.to_currency = cur
                       AND cr.valid_from <= coalesce(x.closed_at::date, current_date) ORDER BY cr.valid_from DESC LIMIT 1),
                   (SELECT 1 / cr.rate FROM crm.currency_rate cr
                     WHERE cr.tenant_id = tid AND cr.from_currency = cur AND cr.to_currency = x.currency
                       AND cr.valid_from <= coalesce(x.closed_at::date, current_date) ORDER BY cr.valid_from DESC LIMIT 1)) END AS amt
          FROM crm.opportunity x
         WHERE x.tenant_id = tid AND x.archived_at IS NULL
    ), closed_in AS (
        SELECT * FROM o WHERE o.status <> 'open'
           AND ($1 IS NULL OR o.closed_at >= $1) AND ($2 IS NULL OR o.closed_at < $2)
    )
    SELECT u.id, u.name,
           (SELECT count(*) FROM o WHERE o.owner_id = u.id AND o.status = 'open'),
           (SELECT coalesce(sum(o.amt), 0)::numeric(18,2) FROM o WHERE o.owner_id = u.id AND o.status = 'open'),
           (SELECT count(*) FROM closed_in c WHERE c.owner_id = u.id AND c.status = 'won'),
           (SELECT coalesce(sum(c.amt), 0)::numeric(18,2) FROM closed_in c WHERE c.owner_id = u.id AND c.status = 'won'),
           (SELECT count(*) FROM closed_in c WHERE c.owner_id = u.id AND c.status = 'lost'),
           (SELECT round(100.0 * count(*) FILTER (WHERE c.status = 'won') / nullif(count(*), 0), 1)
              FROM closed_in c WHERE c.owner_id = u.id),
           (SELECT count(*) FROM crm.activity a
             WHERE a.tenant_id = tid AND a.owner_id = u.id AND a.status = 'completed'
               AND ($1 IS NULL OR a.occurred_at >= $1) AND ($2 IS NULL OR a.occurred_at < $2)),
           coalesce((SELECT r.n FROM unnest(rot_owner, rot_count) AS r(owner_id, n) WHERE r.owner_id = u.id), 0),
           cur,
           (SELECT count(*) FROM o WHERE o.owner_id = u.id AND o.amt IS NULL
               AND (o.status = 'open' OR o.closed_at >= coalesce($1, '-infinity') AND o.closed_at < coalesce($2, 'infinity')))
      FROM crm.app_user u
     WHERE u.tenant_id = tid
     ORDER BY u.name, u.id;
END
$$;
COMMENT ON FUNCTION crm.owner_dashboard(timestamptz, timestamptz, timestamptz) IS
    'Per CRM user: open deals and amount, deals won and lost in the period with the won amount and win rate (%), completed activities in the period, rotting deals, in the tenant''s currency';
