-- src/sql/75_views.sql: kanban boards and dashboard KPIs (shared/seeds/004).
--
-- The views are security_invoker: they read the tables with the rights of
-- whoever queries them, so row-level security fences them exactly as it
-- fences the tables (a view owned by the extension's superuser owner would
-- otherwise bypass it).
--
-- What they report:
--   - archived records (archived_at set) are left out;
--   - amounts are in the tenant's default currency, converted at the rate
--     in force today (the same rate crm.exchange_rate() gives: the latest
--     direct rate, else the inverse of the latest reverse rate); a record
--     whose currency has no rate is counted in unpriced_count instead of
--     being summed wrong;
--   - sums are plain numeric rounded to cents, so no set of valid rows can
--     overflow them.
-- How they are written, so that Citus can push them down to the tenant's
-- shards and row-level security stays cheap: every join is keyed on
-- tenant_id; the tenant's rates are looked up once per currency (the CTE
-- "rate", one row per tenant and currency) and joined, never computed by a
-- function call per row; no scalar sub-query.

CREATE VIEW crm.opportunity_kanban WITH (security_invoker = true) AS
WITH rate AS (
    SELECT DISTINCT ON (x.tenant_id, x.currency) x.tenant_id, x.currency, x.rate
      FROM (SELECT t.tenant_id, t.default_currency AS currency, 1::numeric AS rate, 0 AS preference,
                   NULL::date AS valid_from
              FROM crm.tenant t
            UNION ALL
            SELECT r.tenant_id, r.from_currency, r.rate, 1, r.valid_from
              FROM crm.currency_rate r
              JOIN crm.tenant t ON t.tenant_id OPERATOR(pg_catalog.=) r.tenant_id AND t.default_currency OPERATOR(pg_catalog.=) r.to_currency
             WHERE r.valid_from OPERATOR(pg_catalog.<=) current_date
            UNION ALL
            SELECT r.tenant_id, r.to_currency, 1 OPERATOR(pg_catalog./) r.rate, 2, r.valid_from
              FROM crm.currency_rate r
              JOIN crm.tenant t ON t.tenant_id OPERATOR(pg_catalog.=) r.tenant_id AND t.default_currency OPERATOR(pg_catalog.=) r.from_currency
             WHERE r.valid_from OPERATOR(pg_catalog.<=) current_date) x
     ORDER BY x.tenant_id, x.currency, x.preference, x.valid_from DESC)
SELECT s.tenant_id,
       s.pipeline_id,
       p.name AS pipeline_name,
       s.id AS stage_id,
       s.name AS stage_name,
       s.sequence AS stage_sequence,
       s.kind AS stage_kind,
       s.probability AS stage_probability,
       coalesce(a.count, 0) AS count,
       t.default_currency AS currency,
       pg_catalog.round(coalesce(a.amount, 0), 2) AS amount,
       pg_catalog.round(coalesce(a.weighted_amount, 0), 2) AS weighted_amount,
       coalesce(a.unpriced_count, 0) AS unpriced_count
  FROM crm.stage s
  JOIN crm.pipeline p ON p.tenant_id OPERATOR(pg_catalog.=) s.tenant_id AND p.id OPERATOR(pg_catalog.=) s.pipeline_id
  JOIN crm.tenant t ON t.tenant_id OPERATOR(pg_catalog.=) s.tenant_id
  -- the deals summed per stage first, then put beside their stage: the
  -- planner then never joins every deal to the stages and pipelines, under
  -- row-level security (where it cannot see which tenant) too
  LEFT JOIN (SELECT o.tenant_id, o.stage_id, pg_catalog.count(o.id) AS count,
                    pg_catalog.sum(o.amount OPERATOR(pg_catalog.*) fx.rate) AS amount,
                    pg_catalog.sum(o.amount OPERATOR(pg_catalog.*) fx.rate OPERATOR(pg_catalog.*) o.probability OPERATOR(pg_catalog./) 100) AS weighted_amount,
                    pg_catalog.count(o.id) FILTER (WHERE fx.rate IS NULL) AS unpriced_count
               FROM crm.opportunity o
               LEFT JOIN rate fx ON fx.tenant_id OPERATOR(pg_catalog.=) o.tenant_id AND fx.currency OPERATOR(pg_catalog.=) o.currency
              WHERE o.archived_at IS NULL
              GROUP BY o.tenant_id, o.stage_id) a
         ON a.tenant_id OPERATOR(pg_catalog.=) s.tenant_id AND a.stage_id OPERATOR(pg_catalog.=) s.id
 ORDER BY s.tenant_id, p.sequence, p.name, s.sequence;
COMMENT ON VIEW crm.opportunity_kanban IS
    'Opportunities per pipeline and stage, in stage order: count, amount and probability-weighted amount in the tenant''s currency (archived deals left out)';

CREATE VIEW crm.lead_kanban WITH (security_invoker = true) AS
WITH rate AS (
    SELECT DISTINCT ON (x.tenant_id, x.currency) x.tenant_id, x.currency, x.rate
      FROM (SELECT t.tenant_id, t.default_currency AS currency, 1::numeric AS rate, 0 AS preference,
                   NULL::date AS valid_from
              FROM crm.tenant t
            UNION ALL
            SELECT r.tenant_id, r.from_currency, r.rate, 1, r.valid_from
              FROM crm.currency_rate r
              JOIN crm.tenant t ON t.tenant_id OPERATOR(pg_catalog.=) r.tenant_id AND t.default_currency OPERATOR(pg_catalog.=) r.to_currency
             WHERE r.valid_from OPERATOR(pg_catalog.<=) current_date
            UNION ALL
            SELECT r.tenant_id, r.to_currency, 1 OPERATOR(pg_catalog./) r.rate, 2, r.valid_from
              FROM crm.currency_rate r
              JOIN crm.tenant t ON t.tenant_id OPERATOR(pg_catalog.=) r.tenant_id AND t.default_currency OPERATOR(pg_catalog.=) r.from_currency
             WHERE r.valid_from OPERATOR(pg_catalog.<=) current_date) x
     ORDER BY x.tenant_id, x.currency, x.preference, x.valid_from DESC)
SELECT s.tenant_id,
       s.pipeline_id,
       p.name AS pipeline_name,
       s.id AS stage_id,
       s.name AS stage_name,
       s.sequence AS stage_sequence,
       s.kind AS stage_kind,
       s.probability AS stage_probability,
       coalesce(a.count, 0) AS count,
       t.default_currency AS currency,
       pg_catalog.round(coalesce(a.amount, 0), 2) AS amount,
       pg_catalog.round(coalesce(a.weighted_amount, 0), 2) AS weighted_amount,
       coalesce(a.unpriced_count, 0) AS unpriced_count
  FROM crm.stage s
  JOIN crm.pipeline p ON p.tenant_id OPERATOR(pg_catalog.=) s.tenant_id AND p.id OPERATOR(pg_catalog.=) s.pipeline_id
  JOIN crm.tenant t ON t.tenant_id OPERATOR(pg_catalog.=) s.tenant_id
  -- the leads summed per stage first (as in crm.opportunity_kanban)
  LEFT JOIN (SELECT l.tenant_id, l.stage_id, pg_catalog.count(l.id) AS count,
                    pg_catalog.sum(coalesce(l.expected_revenue, 0) OPERATOR(pg_catalog.*) fx.rate) AS amount,
                    pg_catalog.sum(coalesce(l.expected_revenue, 0) OPERATOR(pg_catalog.*) fx.rate OPERATOR(pg_catalog.*) l.probability OPERATOR(pg_catalog./) 100) AS weighted_amount,
                    pg_catalog.count(l.id) FILTER (WHERE fx.rate IS NULL) AS unpriced_count
               FROM crm.lead l
               LEFT JOIN rate fx ON fx.tenant_id OPERATOR(pg_catalog.=) l.tenant_id AND fx.currency OPERATOR(pg_catalog.=) l.currency
              WHERE l.converted_at IS NULL AND l.archived_at IS NULL
              GROUP BY l.tenant_id, l.stage_id) a
         ON a.tenant_id OPERATOR(pg_catalog.=) s.tenant_id AND a.stage_id OPERATOR(pg_catalog.=) s.id
 ORDER BY s.tenant_id, p.sequence, p.name, s.sequence;
COMMENT ON VIEW crm.lead_kanban IS
    'Leads not yet converted per pipeline and stage, in stage order: count, expected revenue and its probability-weighted amount in the tenant''s currency (archived leads left out)';

CREATE VIEW crm.dashboard WITH (security_invoker = true) AS
WITH rate AS (
    SELECT DISTINCT ON (x.tenant_id, x.currency) x.tenant_id, x.currency, x.rate
      FROM (SELECT t.tenant_id, t.default_currency AS currency, 1::numeric AS rate, 0 AS preference,
                   NULL::date AS valid_from
              FROM crm.tenant t
            UNION ALL
            SELECT r.tenant_id, r.from_currency, r.rate, 1, r.valid_from
              FROM crm.currency_rate r
              JOIN crm.tenant t ON t.tenant_id OPERATOR(pg_catalog.=) r.tenant_id AND t.default_currency OPERATOR(pg_catalog.=) r.to_currency
             WHERE r.valid_from OPERATOR(pg_catalog.<=) current_date
            UNION ALL
            SELECT r.tenant_id, r.to_currency, 1 OPERATOR(pg_catalog./) r.rate, 2, r.valid_from
              FROM crm.currency_rate r
              JOIN crm.tenant t ON t.tenant_id OPERATOR(pg_catalog.=) r.tenant_id AND t.default_currency OPERATOR(pg_catalog.=) r.from_currency
             WHERE r.valid_from OPERATOR(pg_catalog.<=) current_date) x
     ORDER BY x.tenant_id, x.currency, x.preference, x.valid_from DESC)
SELECT t.tenant_id,
       t.default_currency AS currency,
       coalesce(l.total_leads, 0) AS total_leads,
       coalesce(l.active_leads, 0) AS active_leads,
       coalesce(l.converted_leads, 0) AS converted_leads,
       coalesce(o.open_count, 0) AS open_opportunities_count,
       pg_catalog.round(coalesce(o.open_value, 0), 2) AS open_opportunities_value,
       coalesce(o.won_count, 0) AS won_count,
       pg_catalog.round(coalesce(o.won_value, 0), 2) AS won_value,
       coalesce(o.lost_count, 0) AS lost_count,
       CASE WHEN l.total_leads OPERATOR(pg_catalog.>) 0
            THEN pg_catalog.round(100.0 OPERATOR(pg_catalog.*) l.converted_leads OPERATOR(pg_catalog./) l.total_leads, 1) END AS conversion_rate,
       coalesce(o.unpriced_count, 0) AS unpriced_count,
       coalesce(d.distribution, '[]') AS pipeline_distribution
  FROM crm.tenant t
  LEFT JOIN (
      SELECT x.tenant_id,
             pg_catalog.count(*) AS total_leads,
             pg_catalog.count(*) FILTER (WHERE x.status OPERATOR(pg_catalog.=) 'open' AND x.converted_at IS NULL) AS active_leads,
             pg_catalog.count(*) FILTER (WHERE x.converted_at IS NOT NULL) AS converted_leads
        FROM crm.lead x
       WHERE x.archived_at IS NULL
       GROUP BY x.tenant_id) l ON l.tenant_id OPERATOR(pg_catalog.=) t.tenant_id
  LEFT JOIN (
      SELECT x.tenant_id,
             pg_catalog.count(*) FILTER (WHERE x.status OPERATOR(pg_catalog.=) 'open') AS open_count,
             pg_catalog.sum(x.amount OPERATOR(pg_catalog.*) fx.rate) FILTER (WHERE x.status OPERATOR(pg_catalog.=) 'open') AS open_value,
             pg_catalog.count(*) FILTER (WHERE x.status OPERATOR(pg_catalog.=) 'won') AS won_count,
             pg_catalog.sum(x.amount OPERATOR(pg_catalog.*) fx.rate) FILTER (WHERE x.status OPERATOR(pg_catalog.=) 'won') AS won_value,
             pg_catalog.count(*) FILTER (WHERE x.status OPERATOR(pg_catalog.=) 'lost') AS lost_count,
             pg_catalog.count(*) FILTER (WHERE fx.rate IS NULL) AS unpriced_count
        FROM crm.opportunity x
        LEFT JOIN rate fx ON fx.tenant_id OPERATOR(pg_catalog.=) x.tenant_id AND fx.currency OPERATOR(pg_catalog.=) x.currency
       WHERE x.archived_at IS NULL
       GROUP BY x.tenant_id) o ON o.tenant_id OPERATOR(pg_catalog.=) t.tenant_id
  LEFT JOIN (
      SELECT k.tenant_id,
             pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('pipeline', k.pipeline_name, 'stage', k.stage_name,
                                          'count', k.count, 'amount', k.amount,
                                          'weighted_amount', k.weighted_amount)
                       ORDER BY k.pipeline_name, k.stage_sequence) AS distribution
        FROM crm.opportunity_kanban k
       WHERE k.stage_kind OPERATOR(pg_catalog.=) 'open'
       GROUP BY k.tenant_id) d ON d.tenant_id OPERATOR(pg_catalog.=) t.tenant_id;
COMMENT ON VIEW crm.dashboard IS
    'Sales KPIs per tenant: leads (total, active, converted), open, won and lost opportunities with their value, lead-to-opportunity conversion rate (%), pipeline distribution by open stage (archived records left out)';

-- What each column means, for psql's \d+ and BI tools.
DO $$
DECLARE
    v text;
    noun text;
BEGIN
    FOREACH v IN ARRAY ARRAY['opportunity_kanban', 'lead_kanban'] LOOP
        noun := CASE v WHEN 'opportunity_kanban' THEN 'opportunities' ELSE 'leads not yet converted' END;
        EXECUTE pg_catalog.format('COMMENT ON COLUMN crm.%I.tenant_id IS %L', v, 'Owning tenant');
        EXECUTE pg_catalog.format('COMMENT ON COLUMN crm.%I.pipeline_id IS %L', v, 'The pipeline');
        EXECUTE pg_catalog.format('COMMENT ON COLUMN crm.%I.pipeline_name IS %L', v, 'Pipeline name');
        EXECUTE pg_catalog.format('COMMENT ON COLUMN crm.%I.stage_id IS %L', v, 'The stage (one row per stage, empty stages too)');
        EXECUTE pg_catalog.format('COMMENT ON COLUMN crm.%I.stage_name IS %L', v, 'Stage name');
        EXECUTE pg_catalog.format('COMMENT ON COLUMN crm.%I.stage_sequence IS %L', v, 'Order of the stage within its pipeline');
        EXECUTE pg_catalog.format('COMMENT ON COLUMN crm.%I.stage_kind IS %L', v, 'open, won or lost');
        EXECUTE pg_catalog.format('COMMENT ON COLUMN crm.%I.stage_probability IS %L', v, 'Win probability of the stage, 0-100');
        EXECUTE pg_catalog.format('COMMENT ON COLUMN crm.%I.count IS %L', v,
            'Number of ' || noun || ' in the stage (archived ones left out)');
        EXECUTE pg_catalog.format('COMMENT ON COLUMN crm.%I.currency IS %L', v,
            'The tenant''s default currency, that of amount and weighted_amount');
        EXECUTE pg_catalog.format('COMMENT ON COLUMN crm.%I.amount IS %L', v,
            CASE v WHEN 'opportunity_kanban' THEN 'Sum of the deal amounts' ELSE 'Sum of the expected revenue' END
            || ' in currency at today''s rates, rounded to cents; records without a rate are left out (see unpriced_count)');
        EXECUTE pg_catalog.format('COMMENT ON COLUMN crm.%I.weighted_amount IS %L', v,
            'Sum of each amount times its probability / 100, in currency, rounded to cents');
        EXECUTE pg_catalog.format('COMMENT ON COLUMN crm.%I.unpriced_count IS %L', v,
            'Number of ' || noun || ' in the stage whose currency has no exchange rate into currency (not in amount)');
    END LOOP;
END
$$;
COMMENT ON COLUMN crm.dashboard.tenant_id IS 'The tenant';
COMMENT ON COLUMN crm.dashboard.currency IS 'The tenant''s default currency, that of every value column';
COMMENT ON COLUMN crm.dashboard.total_leads IS 'Leads, converted or not (archived ones left out)';
COMMENT ON COLUMN crm.dashboard.active_leads IS 'Open leads not yet converted';
COMMENT ON COLUMN crm.dashboard.converted_leads IS 'Leads converted by crm.lead_convert()';
COMMENT ON COLUMN crm.dashboard.open_opportunities_count IS 'Open opportunities (status open; won and lost ones are in won_count and lost_count)';
COMMENT ON COLUMN crm.dashboard.open_opportunities_value IS 'Sum of the open opportunities'' amounts in currency at today''s rates, rounded to cents';
COMMENT ON COLUMN crm.dashboard.won_count IS 'Won opportunities';
COMMENT ON COLUMN crm.dashboard.won_value IS 'Sum of the won opportunities'' amounts in currency at today''s rates, rounded to cents';
COMMENT ON COLUMN crm.dashboard.lost_count IS 'Lost opportunities';
COMMENT ON COLUMN crm.dashboard.conversion_rate IS 'converted_leads / total_leads in %, one decimal; NULL without leads';
COMMENT ON COLUMN crm.dashboard.unpriced_count IS 'Opportunities whose currency has no exchange rate into currency (left out of the values)';
COMMENT ON COLUMN crm.dashboard.pipeline_distribution IS 'Per open stage, in pipeline and stage order: a JSON array of {pipeline, stage, count, amount, weighted_amount}';
