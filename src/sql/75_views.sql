-- src/sql/75_views.sql: kanban boards and dashboard KPIs (shared/seeds/004).
--
-- The views are security_invoker: they read the tables with the rights of
-- whoever queries them, so row-level security fences them exactly as it
-- fences the tables (a view owned by the extension's superuser owner would
-- otherwise bypass it).  Amounts are reported in the tenant's default
-- currency through crm.exchange_rate(); a record whose currency has no rate
-- is counted in unconverted_count instead of being silently summed wrong.

CREATE VIEW crm.opportunity_kanban WITH (security_invoker = true) AS
SELECT s.tenant_id,
       s.pipeline_id,
       p.name AS pipeline_name,
       s.id AS stage_id,
       s.name AS stage_name,
       s.sequence AS stage_sequence,
       s.kind AS stage_kind,
       s.probability AS stage_probability,
       count(o.id) AS count,
       t.default_currency AS currency,
       coalesce(sum(o.amount * fx.rate), 0)::numeric(18,2) AS amount,
       coalesce(sum(o.amount * fx.rate * o.probability / 100), 0)::numeric(18,2) AS weighted_amount,
       count(o.id) FILTER (WHERE fx.rate IS NULL) AS unconverted_count
  FROM crm.stage s
  JOIN crm.pipeline p ON p.tenant_id = s.tenant_id AND p.id = s.pipeline_id
  JOIN crm.tenant t ON t.tenant_id = s.tenant_id
  LEFT JOIN crm.opportunity o ON o.tenant_id = s.tenant_id AND o.stage_id = s.id
  LEFT JOIN LATERAL (SELECT crm.exchange_rate(o.currency, t.default_currency, current_date, t.tenant_id) AS rate) fx ON o.id IS NOT NULL
 GROUP BY s.tenant_id, s.pipeline_id, p.name, p.sequence, s.id, s.name, s.sequence, s.kind, s.probability,
          t.default_currency
 ORDER BY s.tenant_id, p.sequence, p.name, s.sequence;
COMMENT ON VIEW crm.opportunity_kanban IS
    'Opportunities per pipeline and stage, in stage order: count, amount and probability-weighted amount in the tenant''s currency';

CREATE VIEW crm.lead_kanban WITH (security_invoker = true) AS
SELECT s.tenant_id,
       s.pipeline_id,
       p.name AS pipeline_name,
       s.id AS stage_id,
       s.name AS stage_name,
       s.sequence AS stage_sequence,
       s.kind AS stage_kind,
       s.probability AS stage_probability,
       count(l.id) AS count,
       t.default_currency AS currency,
       coalesce(sum(coalesce(l.expected_revenue, 0) * fx.rate), 0)::numeric(18,2) AS amount,
       coalesce(sum(coalesce(l.expected_revenue, 0) * fx.rate * l.probability / 100), 0)::numeric(18,2)
           AS weighted_amount,
       count(l.id) FILTER (WHERE fx.rate IS NULL) AS unconverted_count
  FROM crm.stage s
  JOIN crm.pipeline p ON p.tenant_id = s.tenant_id AND p.id = s.pipeline_id
  JOIN crm.tenant t ON t.tenant_id = s.tenant_id
  LEFT JOIN crm.lead l ON l.tenant_id = s.tenant_id AND l.stage_id = s.id AND l.converted_at IS NULL
  LEFT JOIN LATERAL (SELECT crm.exchange_rate(l.currency, t.default_currency, current_date, t.tenant_id) AS rate) fx ON l.id IS NOT NULL
 GROUP BY s.tenant_id, s.pipeline_id, p.name, p.sequence, s.id, s.name, s.sequence, s.kind, s.probability,
          t.default_currency
 ORDER BY s.tenant_id, p.sequence, p.name, s.sequence;
COMMENT ON VIEW crm.lead_kanban IS
    'Leads not yet converted per pipeline and stage, in stage order: count, expected revenue and its probability-weighted amount in the tenant''s currency';

CREATE VIEW crm.dashboard WITH (security_invoker = true) AS
SELECT t.tenant_id,
       t.default_currency AS currency,
       l.total_leads,
       l.active_leads,
       l.converted_leads,
       o.open_count AS opportunities_count,
       o.open_value AS opportunities_value,
       o.won_count,
       o.won_value,
       o.lost_count,
       CASE WHEN l.total_leads > 0
            THEN round(100.0 * l.converted_leads / l.total_leads, 1) END AS conversion_rate,
       o.unconverted_count,
       coalesce((SELECT jsonb_agg(jsonb_build_object('pipeline', k.pipeline_name, 'stage', k.stage_name,
                                                     'count', k.count, 'amount', k.amount,
                                                     'weighted_amount', k.weighted_amount)
                                  ORDER BY k.pipeline_name, k.stage_sequence)
                   FROM crm.opportunity_kanban k
                  WHERE k.tenant_id = t.tenant_id AND k.stage_kind = 'open'), '[]') AS pipeline_distribution
  FROM crm.tenant t
  CROSS JOIN LATERAL (
      SELECT count(*) AS total_leads,
             count(*) FILTER (WHERE x.status = 'open' AND x.converted_at IS NULL) AS active_leads,
             count(*) FILTER (WHERE x.converted_at IS NOT NULL) AS converted_leads
        FROM crm.lead x WHERE x.tenant_id = t.tenant_id) l
  CROSS JOIN LATERAL (
      SELECT count(*) FILTER (WHERE x.status = 'open') AS open_count,
             coalesce(sum(x.amount * fx.rate) FILTER (WHERE x.status = 'open'), 0)::numeric(18,2) AS open_value,
             count(*) FILTER (WHERE x.status = 'won') AS won_count,
             coalesce(sum(x.amount * fx.rate) FILTER (WHERE x.status = 'won'), 0)::numeric(18,2) AS won_value,
             count(*) FILTER (WHERE x.status = 'lost') AS lost_count,
             count(*) FILTER (WHERE fx.rate IS NULL) AS unconverted_count
        FROM crm.opportunity x
        CROSS JOIN LATERAL (SELECT crm.exchange_rate(x.currency, t.default_currency, current_date, t.tenant_id) AS rate) fx
       WHERE x.tenant_id = t.tenant_id) o;
COMMENT ON VIEW crm.dashboard IS
    'Sales KPIs per tenant: leads (total, active, converted), open, won and lost opportunities with their value, lead-to-opportunity conversion rate (%), pipeline distribution by open stage';
