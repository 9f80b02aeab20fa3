-- Pipeline analytics (issue 7) on four deals whose history is dated by hand.
-- Sales Pipeline: New 1, Qualified 2, Proposal 3, Negotiation 4, Won 5, Lost 6.
--   O1 Alice 1000 USD: New 01-01, Qualified 01-11, Proposal 01-21, Won 01-31
--   O2 Alice 2000 EUR: New 01-01, Qualified 01-06, Lost 01-16
--   O3 Bob    500 USD: New 01-01, Qualified 01-03, still open
--   O4 Bob    300 GBP: New 01-01, Won 01-11 (no GBP rate: counted apart)
-- Times are set with session_replication_role = replica, which no trigger
-- touches, as a restore would bring them back.
SELECT crm.create_tenant('Analytics Co') AS t \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';
INSERT INTO crm.app_user (name) VALUES ('Alice') RETURNING id AS alice \gset
INSERT INTO crm.app_user (name) VALUES ('Bob') RETURNING id AS bob \gset
INSERT INTO crm.team (name, manager_id) VALUES ('North', :'alice') RETURNING id AS north \gset
INSERT INTO crm.team_member (team_id, user_id) VALUES (:'north', :'alice');
INSERT INTO crm.currency_rate (from_currency, to_currency, rate, valid_from) VALUES ('EUR', 'USD', 1.1, '2025-01-01');
INSERT INTO crm.lead (name, source) VALUES ('L1', 'website') RETURNING id AS l1 \gset
INSERT INTO crm.lead (name, source) VALUES ('L2', 'website'), ('L3', 'referral');
UPDATE crm.stage SET rotting_days = 14 WHERE name = 'Qualified';
SELECT id AS qualified FROM crm.stage s WHERE name = 'Qualified' AND pipeline_id = (SELECT id FROM crm.pipeline WHERE is_default) \gset
SELECT id AS proposal FROM crm.stage s WHERE name = 'Proposal' AND pipeline_id = (SELECT id FROM crm.pipeline WHERE is_default) \gset
SELECT id AS won FROM crm.stage s WHERE name = 'Won' AND pipeline_id = (SELECT id FROM crm.pipeline WHERE is_default) \gset
SELECT id AS lost FROM crm.stage s WHERE name = 'Lost' AND pipeline_id = (SELECT id FROM crm.pipeline WHERE is_default) \gset
INSERT INTO crm.opportunity (name, owner_id, amount, currency, source, lead_id) VALUES ('O1', :'alice', 1000, 'USD', 'website', :'l1');
INSERT INTO crm.opportunity (name, owner_id, amount, currency, source) VALUES ('O2', :'alice', 2000, 'EUR', 'referral');
INSERT INTO crm.opportunity (name, owner_id, amount, currency) VALUES ('O3', :'bob', 500, 'USD'), ('O4', :'bob', 300, 'GBP');
UPDATE crm.opportunity SET stage_id = :'qualified' WHERE name IN ('O1', 'O2', 'O3');
UPDATE crm.opportunity SET stage_id = :'proposal' WHERE name = 'O1';
UPDATE crm.opportunity SET stage_id = :'won' WHERE name IN ('O1', 'O4');
UPDATE crm.opportunity SET stage_id = :'lost' WHERE name = 'O2';
RESET ROLE;
SET session_replication_role = replica;
UPDATE crm.opportunity SET created_at = '2026-01-01 00:00+00' WHERE tenant_id = :'t';
UPDATE crm.opportunity SET closed_at = CASE name WHEN 'O1' THEN timestamptz '2026-01-31 00:00+00'
                                                 WHEN 'O2' THEN '2026-01-16 00:00+00' WHEN 'O4' THEN '2026-01-11 00:00+00' END
 WHERE tenant_id = :'t';
UPDATE crm.stage_history h SET changed_at = CASE
        WHEN o.name = 'O1' AND s.name = 'Qualified' THEN timestamptz '2026-01-11 00:00+00'
        WHEN o.name = 'O1' AND s.name = 'Proposal' THEN '2026-01-21 00:00+00'
        WHEN o.name = 'O1' AND s.name = 'Won' THEN '2026-01-31 00:00+00'
        WHEN o.name = 'O2' AND s.name = 'Qualified' THEN '2026-01-06 00:00+00'
        WHEN o.name = 'O2' AND s.name = 'Lost' THEN '2026-01-16 00:00+00'
        WHEN o.name = 'O3' AND s.name = 'Qualified' THEN '2026-01-03 00:00+00'
        WHEN o.name = 'O4' AND s.name = 'Won' THEN '2026-01-11 00:00+00'
        -- the row some versions write when a deal is created (into New)
        WHEN s.name = 'New' THEN '2026-01-01 00:00+00'
        ELSE h.changed_at END
  FROM crm.opportunity o, crm.stage s
 WHERE o.tenant_id = h.tenant_id AND o.id = h.opportunity_id AND s.tenant_id = h.tenant_id AND s.id = h.to_stage_id
   AND h.tenant_id = :'t';
UPDATE crm.lead SET converted_at = '2026-01-02 00:00+00' WHERE id = :'l1';
RESET session_replication_role;
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';

-- funnel: O1 and O4 reached Won (and so every open stage), O2 and O3 Qualified
SELECT stage_name, reached, moved_on, conversion_rate FROM crm.pipeline_funnel((SELECT id FROM crm.pipeline WHERE is_default));
-- win rate: Alice 1 of 2; Bob 1 of 1 but his GBP win has no rate
SELECT * FROM crm.win_rate('owner');
SELECT group_key, won, lost, win_rate FROM crm.win_rate('team');
SELECT group_key, won, lost, win_rate, won_amount FROM crm.win_rate('source');
SELECT group_key, won, lost, win_rate FROM crm.win_rate('period', '2026-01-01', '2026-02-01');
SELECT count(*) AS closed_in_february FROM crm.win_rate('owner', '2026-02-01', '2026-03-01');
-- time in stage as of Feb 1: New 10, 5, 2, 10 days; Qualified 10, 10 and O3's current 29
SELECT stage_name, stays, current_stays, avg_days, median_days FROM crm.time_in_stage(NULL, '2026-02-01 00:00+00')
 WHERE pipeline_id = (SELECT id FROM crm.pipeline WHERE is_default);
-- cycle: O1 30 days (won), O2 15 (lost), O4 10 (won)
SELECT * FROM crm.sales_cycle();
-- velocity: 1 open deal x 1000 (O4 unconverted) x 2/3 / 20 days
SELECT * FROM crm.sales_velocity();
-- lead sources: website 2 leads, 1 converted whose deal won 1000
SELECT * FROM crm.lead_source_analytics();
-- rotting: O3 idle in Qualified (14 days) since Jan 3
SELECT name, stage_name, last_activity_at, idle_since, idle_days, rotting_days FROM crm.rotting_deals('2026-02-01 00:00+00');
SELECT count(*) AS rotting_on_jan_10 FROM crm.rotting_deals('2026-01-10 00:00+00');
INSERT INTO crm.activity (activity_type, subject, opportunity_id, owner_id, status, occurred_at)
SELECT 'call', 'Check-in', id, :'bob', 'completed', '2026-01-25 00:00+00' FROM crm.opportunity WHERE name = 'O3';
SELECT count(*) AS rotting_after_call FROM crm.rotting_deals('2026-02-01 00:00+00');
SELECT owner_name, open_deals, open_amount, won_deals, won_amount, lost_deals, win_rate, activities_completed,
       rotting_deals, currency, unpriced_count
  FROM crm.owner_dashboard(NULL, NULL, '2026-02-01 00:00+00');
-- errors
SELECT try($$SELECT * FROM crm.win_rate('colour')$$);
SELECT try($$SELECT * FROM crm.win_rate(NULL)$$);
RESET crm.tenant_id;
RESET ROLE;
