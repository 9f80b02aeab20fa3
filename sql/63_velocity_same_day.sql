-- Sales velocity when the won deals closed minutes after they were made
-- (the demo, an import): cycle_days shows 0.00 and the velocity is NULL,
-- not open deals x amount x rate divided by a few microseconds.
SELECT crm.create_tenant('Velocity Co') AS t \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';
INSERT INTO crm.opportunity (name, amount, currency) VALUES ('Fast win', 1000, 'USD'), ('Still open', 500, 'USD');
SELECT status FROM crm.opportunity_mark_won((SELECT id FROM crm.opportunity WHERE name = 'Fast win'));
SELECT open_deals, avg_won_amount, win_rate, cycle_days, velocity_per_day FROM crm.sales_velocity();
RESET crm.tenant_id;
RESET ROLE;
