-- The demo data (one statement), the kanban boards and the dashboard.

SELECT crm.load_demo('Views Demo', '2026-11-01 12:00+00') AS t \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';

SELECT (SELECT count(*) FROM crm.pipeline) AS pipelines, (SELECT count(*) FROM crm.account) AS accounts,
       (SELECT count(*) FROM crm.contact) AS contacts, (SELECT count(*) FROM crm.lead) AS leads,
       (SELECT count(*) FROM crm.opportunity) AS opportunities, (SELECT count(*) FROM crm.tag) AS tags,
       (SELECT count(*) FROM crm.activity) AS activities,
       (SELECT min(occurred_at)::date FROM crm.activity) AS first_activity,
       (SELECT max(occurred_at)::date FROM crm.activity WHERE status = 'completed') AS last_activity;
SELECT name, account_type, industry, employees FROM crm.account ORDER BY name;
SELECT module, activity_type, count(*) FROM crm.activity GROUP BY 1, 2 ORDER BY 1, 2;

-- the kanban boards: every stage in order, empty ones too; amounts in the
-- tenant's currency (the EUR deal converted at the tenant's rate)
SELECT pipeline_name, stage_name, count, amount, weighted_amount, unpriced_count
  FROM crm.opportunity_kanban WHERE pipeline_name = 'Sales Pipeline';
SELECT pipeline_name, stage_name, count, amount, weighted_amount
  FROM crm.lead_kanban WHERE pipeline_name = 'Sales Pipeline';

SELECT id AS acme_deal FROM crm.opportunity WHERE name LIKE 'Acme%' \gset
SELECT id AS edu_deal FROM crm.opportunity WHERE name LIKE 'EduLearn%' \gset
SELECT id AS webinar FROM crm.lead WHERE name LIKE 'Tech Innovators%' \gset
SELECT status FROM crm.opportunity_mark_won(:'acme_deal');
SELECT status FROM crm.opportunity_mark_lost(:'edu_deal', 'Budget cut');
SELECT opportunity_id IS NOT NULL AS made_opportunity FROM crm.lead_convert(:'webinar');

SELECT currency, total_leads, active_leads, converted_leads, open_opportunities_count, open_opportunities_value,
       won_count, won_value, lost_count, conversion_rate, unpriced_count
  FROM crm.dashboard;
SELECT jsonb_pretty(pipeline_distribution) FROM crm.dashboard;

-- a deal in a currency without a rate is counted apart, not summed wrong
INSERT INTO crm.opportunity (name, amount, currency) VALUES ('Tokyo pilot', 1000000, 'JPY');
SELECT stage_name, count, amount, unpriced_count FROM crm.opportunity_kanban
 WHERE pipeline_name = 'Sales Pipeline' AND stage_name = 'New';
SELECT open_opportunities_count, open_opportunities_value, unpriced_count FROM crm.dashboard;
INSERT INTO crm.currency_rate (from_currency, to_currency, rate, valid_from) VALUES ('USD', 'JPY', 150, '2026-01-01');
SELECT stage_name, count, amount, unpriced_count FROM crm.opportunity_kanban
 WHERE pipeline_name = 'Sales Pipeline' AND stage_name = 'New';
SELECT round(crm.exchange_rate('JPY', 'USD', '2026-06-01') * 150, 12) AS inverse_rate_times_150,
       crm.exchange_rate('JPY', 'USD', '2025-06-01') AS before_valid_from;

RESET crm.tenant_id;
RESET ROLE;
