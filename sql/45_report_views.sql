-- The report views against the values that broke them: sums that overflowed
-- numeric(18,2), archived records, currencies without a rate, rates
-- direct and inverse; and how they are built (no per-row function call,
-- every column documented).

SELECT crm.create_tenant('Reports Co') AS t \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';

-- two deals at the largest amount a deal may have: the sum does not fit
-- numeric(18,2), and the boards and dashboard still answer, to the cent
INSERT INTO crm.opportunity (name, amount) VALUES ('Big one', 9999999999999999.99), ('Big two', 9999999999999999.99);
INSERT INTO crm.lead (name, expected_revenue) VALUES ('Big lead one', 9999999999999999.99),
                                                     ('Big lead two', 9999999999999999.99);
SELECT stage_name, count, amount, weighted_amount, unpriced_count
  FROM crm.opportunity_kanban WHERE pipeline_name = 'Sales Pipeline' AND count > 0;
SELECT stage_name, count, amount, weighted_amount, unpriced_count
  FROM crm.lead_kanban WHERE pipeline_name = 'Sales Pipeline' AND count > 0;
SELECT open_opportunities_count, open_opportunities_value, unpriced_count,
       (SELECT e ->> 'amount' FROM jsonb_array_elements(pipeline_distribution) e
         WHERE e ->> 'pipeline' = 'Sales Pipeline' AND e ->> 'stage' = 'New') AS distribution_amount_in_new
  FROM crm.dashboard;

-- archived records are left out of every view
UPDATE crm.opportunity SET archived_at = now() WHERE name = 'Big two';
UPDATE crm.lead SET archived_at = now() WHERE name = 'Big lead two';
SELECT stage_name, count, amount FROM crm.opportunity_kanban WHERE pipeline_name = 'Sales Pipeline' AND count > 0;
SELECT stage_name, count, amount FROM crm.lead_kanban WHERE pipeline_name = 'Sales Pipeline' AND count > 0;
SELECT total_leads, active_leads, open_opportunities_count, open_opportunities_value FROM crm.dashboard;
DELETE FROM crm.opportunity;
DELETE FROM crm.lead;

-- rates: the direct rate in force today wins over an inverse one; without a
-- direct rate the inverse of the reverse rate; a rate of the future does
-- not count yet; a currency with no rate is unpriced, not summed
INSERT INTO crm.currency_rate (from_currency, to_currency, rate, valid_from) VALUES
    ('EUR', 'USD', 1.10, '2020-01-01'), ('EUR', 'USD', 1.20, '2024-01-01'), ('EUR', 'USD', 9, '2999-01-01'),
    ('USD', 'EUR', 0.5, '2025-01-01'),
    ('USD', 'GBP', 0.8, '2024-01-01'), ('USD', 'GBP', 0.75, '2025-01-01');
INSERT INTO crm.opportunity (name, amount, currency) VALUES
    ('In euros', 1000, 'EUR'), ('In pounds', 300, 'GBP'), ('In yen', 100000, 'JPY'), ('In dollars', 50, 'USD');
SELECT o.currency, o.amount, crm.exchange_rate(o.currency, 'USD') AS rate_by_function,
       round(o.amount * crm.exchange_rate(o.currency, 'USD'), 2) AS converted_by_function
  FROM crm.opportunity o ORDER BY o.currency;
-- 1000 EUR x 1.20 + 300 GBP / 0.75 + 50 USD = 1200 + 400 + 50 = 1650; the yen deal is unpriced
SELECT stage_name, count, amount, weighted_amount, unpriced_count
  FROM crm.opportunity_kanban WHERE pipeline_name = 'Sales Pipeline' AND count > 0;
SELECT open_opportunities_count, open_opportunities_value, unpriced_count FROM crm.dashboard;
-- a tenant's rates do not price another tenant's deals
RESET crm.tenant_id;
RESET ROLE;
SELECT crm.create_tenant('Other Co') AS other \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'other';
INSERT INTO crm.opportunity (name, amount, currency) VALUES ('Euro deal elsewhere', 1000, 'EUR');
SELECT open_opportunities_count, open_opportunities_value, unpriced_count FROM crm.dashboard;
RESET crm.tenant_id;
RESET ROLE;
-- as the superuser (every tenant at once) each tenant keeps its own numbers
SELECT t.name, d.open_opportunities_count, d.open_opportunities_value, d.unpriced_count
  FROM crm.dashboard d JOIN crm.tenant t USING (tenant_id)
 WHERE d.tenant_id IN (:'t', :'other') ORDER BY t.name;

-- how the views are built: no per-row call of crm.exchange_rate(), sums
-- not cast to a bounded numeric, every column with a COMMENT
SELECT c.relname, pg_get_viewdef(c.oid) ~ 'exchange_rate' AS calls_exchange_rate,
       pg_get_viewdef(c.oid) ~ 'numeric\(' AS bounded_numeric
  FROM pg_class c WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind = 'v' ORDER BY 1;
SELECT c.relname, a.attname AS column_without_comment
  FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
 WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind = 'v' AND col_description(c.oid, a.attnum) IS NULL;
SELECT col_description('crm.dashboard'::regclass, 6) AS open_opportunities_count,
       col_description('crm.opportunity_kanban'::regclass, 13) AS unpriced_count;
