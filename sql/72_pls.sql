-- Predictive win probability (issue 10): Odoo's naive Bayes on won and lost
-- history, per team, kept exact by triggers.  A small history worked by hand.
--
-- P(won) ~ prior_won x product of won(v, x) / won_total(v), P(lost) alike;
-- every count + 0.1; the prior and the stage's totals are the counts of the
-- pipeline's first stage; won_total(v) is the sum over v's values; a tag is
-- used from 50 observations; 100 x P rounded to 2 places, clamped to
-- [0.01, 99.99].

SELECT crm.create_tenant('Predict Co') AS t \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';
SELECT crm.pls_configure(ARRAY['country', 'source', 'tags']) AS variables;

SELECT id AS sales FROM crm.pipeline WHERE is_default \gset
SELECT max(id::text) FILTER (WHERE name = 'New') AS s_new,
       max(id::text) FILTER (WHERE name = 'Qualified') AS s_qualified,
       max(id::text) FILTER (WHERE name = 'Proposal') AS s_proposal,
       max(id::text) FILTER (WHERE name = 'Won') AS s_won,
       max(id::text) FILTER (WHERE name = 'Lost') AS s_lost
  FROM crm.stage WHERE pipeline_id = :'sales' \gset
INSERT INTO crm.app_user (name) VALUES ('Ann North') RETURNING id AS ann \gset
INSERT INTO crm.app_user (name) VALUES ('Bob South') RETURNING id AS bob \gset
INSERT INTO crm.app_user (name) VALUES ('Dan Bulk') RETURNING id AS dan \gset
INSERT INTO crm.app_user (name) VALUES ('Eve East') RETURNING id AS eve \gset
INSERT INTO crm.team (name) VALUES ('North') RETURNING id AS north \gset
INSERT INTO crm.team (name) VALUES ('South') RETURNING id AS south \gset
INSERT INTO crm.team (name) VALUES ('Bulk') RETURNING id AS bulk \gset
INSERT INTO crm.team (name) VALUES ('East') RETURNING id AS east \gset
INSERT INTO crm.team_member (team_id, user_id)
VALUES (:'north', :'ann'), (:'south', :'bob'), (:'bulk', :'dan'), (:'east', :'eve');

CREATE VIEW pg_temp.freq AS
SELECT coalesce(t.name, 'no team') AS team, f.record_kind, f.variable,
       coalesce(s.name, g.name, f.value) AS value, f.won_count AS won, f.lost_count AS lost
  FROM crm.pls_frequency f
  LEFT JOIN crm.team t ON t.id = f.team_key
  LEFT JOIN crm.stage s ON s.id::text = f.value AND f.variable = 'stage'
  LEFT JOIN crm.tag g ON g.id::text = f.value AND f.variable = 'tags'
 ORDER BY 1, 2, 3, (SELECT x.sequence FROM crm.stage x WHERE x.id::text = f.value), 4;

-- The history ------------------------------------------------------------------
-- North (owner Ann): two won from the website, one lost from a referral after
-- reaching Proposal, one from the website lost at New.
-- South (owner Bob): a referral won, a referral lost at Qualified.
-- No team: a website deal lost at New.
INSERT INTO crm.opportunity (name, owner_id, source, stage_id) VALUES
    ('n1', :'ann', 'website', :'s_won'), ('n2', :'ann', 'website', :'s_won'),
    ('n3', :'ann', 'referral', :'s_new'), ('n4', :'ann', 'website', :'s_lost'),
    ('s1', :'bob', 'referral', :'s_won'), ('s2', :'bob', 'referral', :'s_new'),
    ('x1', NULL, 'website', :'s_lost');
-- the team follows the owner
SELECT name, (SELECT t.name FROM crm.team t WHERE t.id = o.team_id) AS team, status FROM crm.opportunity o ORDER BY name;
SELECT count(crm.opportunity_move_stage(id, :'s_proposal')) FROM crm.opportunity WHERE name = 'n3';
SELECT count(crm.opportunity_move_stage(id, :'s_qualified')) FROM crm.opportunity WHERE name = 's2';
SELECT count(crm.opportunity_mark_lost(id, 'Price')) FROM crm.opportunity WHERE name IN ('n3', 's2');
-- A won deal counts as won in every stage of its pipeline; a lost one as
-- lost in the last open stage before it was lost and every stage before:
--   North: won n1, n2 in all six stages: 2 each; lost n3 (Proposal) in New,
--          Qualified, Proposal; n4 (never moved: New) in New.
--          New 2/2, Qualified 2/1, Proposal 2/1, Negotiation, Won, Lost 2/0;
--          website 2/1 (n1, n2 / n4), referral 0/1 (n3)
--   South: s1 won everywhere; s2 lost at Qualified: New 1/1, Qualified 1/1, the rest 1/0;
--          referral 1/1
--   no team: x1 lost at New: New 0/1, website 0/1
SELECT * FROM pg_temp.freq;
-- the live table equals one built from scratch
SELECT count(*) AS drift FROM crm.pls_check();

-- Predictions ----------------------------------------------------------------
INSERT INTO crm.opportunity (name, owner_id, source, stage_id)
VALUES ('p1 north', :'ann', 'website', :'s_proposal'),
       ('p2 no team', NULL, 'referral', :'s_qualified'),
       ('p3 east', :'eve', 'referral', :'s_qualified');
SELECT id AS p1 FROM crm.opportunity WHERE name = 'p1 north' \gset
SELECT id AS p2 FROM crm.opportunity WHERE name = 'p2 no team' \gset
SELECT id AS p3 FROM crm.opportunity WHERE name = 'p3 east' \gset
-- p1 (North has rows: North's table):
--   prior = New: won 2.1, lost 2.1
--   stage Proposal: 2.1 / 2.1 against the prior; lost 1.1 / 2.1
--   source website: won 2.1 / (2.1 + 0.1) = 2.1/2.2; lost 1.1 / (1.1 + 1.1) = 1.1/2.2
--   P(won) ~ 2.1 x 1 x 2.1/2.2 = 2.004545;  P(lost) ~ 2.1 x 1.1/2.1 x 1.1/2.2 = 0.55
--   P = 2.004545 / 2.554545 = 0.784698 -> 78.47
SELECT * FROM crm.explain_win(:'p1');
SELECT crm.predict_win(:'p1') AS p1;
-- p2 (no team) and p3 (East, a team without history): the sum over all teams
--   prior = New: won 2 + 1 + 0 = 3 -> 3.1, lost 2 + 1 + 1 = 4 -> 4.1
--   stage Qualified: won 3.1 / 3.1; lost 2 + 0.1 = 2.1 / 4.1
--   source referral: won 1.1 / (website 2.1 + referral 1.1 = 3.2);
--                    lost 2.1 / (website 2.1 + referral 2.1 = 4.2)
--   P(won) ~ 3.1 x 1 x 1.1/3.2 = 1.065625;  P(lost) ~ 4.1 x 2.1/4.1 x 2.1/4.2 = 1.05
--   P = 1.065625 / 2.115625 = 0.503693 -> 50.37
SELECT * FROM crm.explain_win(:'p2');
SELECT crm.predict_win(:'p2') AS p2, crm.predict_win(:'p3') AS p3;
-- a closed record: 100 won, 0 lost
SELECT name, crm.predict_win(id) FROM crm.opportunity WHERE name IN ('n1', 'n4') ORDER BY name;

-- The tag threshold and the clamp (team Bulk) -------------------------------------
-- 30 won (partner, US, tag Hot), 19 lost at New (cold call, DE, tag Hot; two also Cold)
INSERT INTO crm.tag (name) VALUES ('Hot') RETURNING id AS hot \gset
INSERT INTO crm.tag (name) VALUES ('Cold') RETURNING id AS cold \gset
INSERT INTO crm.opportunity (name, owner_id, source, country, stage_id)
SELECT 'won ' || g, :'dan', 'partner', 'US', :'s_won' FROM generate_series(1, 30) g;
INSERT INTO crm.opportunity (name, owner_id, source, country, stage_id)
SELECT 'lost ' || g, :'dan', 'cold_call', 'DE', :'s_lost' FROM generate_series(1, 19) g;
INSERT INTO crm.opportunity_tag (opportunity_id, tag_id)
SELECT id, :'hot'::uuid FROM crm.opportunity WHERE name LIKE 'won %' OR name LIKE 'lost %'
UNION ALL
SELECT id, :'cold'::uuid FROM crm.opportunity WHERE name IN ('lost 1', 'lost 2');
INSERT INTO crm.opportunity (name, owner_id, stage_id) VALUES ('p4 hot', :'dan', :'s_new') RETURNING id AS p4 \gset
INSERT INTO crm.opportunity_tag (opportunity_id, tag_id) VALUES (:'p4', :'hot');
-- p4 (Bulk): prior New 30.1 / 19.1; stage New against itself: 1; tag Hot
-- 30.1 + 19.1 = 49.2 < 50: not used.  P = 30.1 / 49.2 = 0.611789 -> 61.18
SELECT * FROM crm.explain_win(:'p4');
SELECT crm.predict_win(:'p4') AS p4;
-- one more lost Hot deal: Hot 30.1 + 20.1 = 50.2 >= 50, used
INSERT INTO crm.opportunity (name, owner_id, source, country, stage_id)
VALUES ('lost 20', :'dan', 'cold_call', 'DE', :'s_new') RETURNING id AS lost20 \gset
INSERT INTO crm.opportunity_tag (opportunity_id, tag_id) VALUES (:'lost20', :'hot');
SELECT count(crm.opportunity_mark_lost(:'lost20', 'Gone')) AS marked;
-- prior New 30.1 / 20.1; tags: won_total Hot 30.1 + Cold 0.1 = 30.2, lost_total 20.1 + 2.1 = 22.2
--   P(won) ~ 30.1 x 30.1/30.2 = 30.000331;  P(lost) ~ 20.1 x 20.1/22.2 = 18.198649
--   P = 30.000331 / 48.198980 = 0.622427 -> 62.24
SELECT * FROM crm.explain_win(:'p4');
SELECT crm.predict_win(:'p4') AS p4;
-- the clamp: p5 is everything the won deals were, p6 everything the lost ones were
--   source totals: won partner 30.1 + cold_call 0.1 = 30.2, lost 0.1 + 20.1 = 20.2; country alike
--   p5: P(won) ~ 30.1 x (30.1/30.2)^3 = 29.80198; P(lost) ~ 20.1 x 20.1/22.2 x (0.1/20.2)^2 = 0.000446
--       P = 0.999985 -> 100.00, clamped to 99.99
--   p6: P(won) ~ 30.1 x 30.1/30.2 x (0.1/30.2)^2 = 0.000329; P(lost) ~ 20.1 x 20.1/22.2 x (20.1/20.2)^2 = 18.01891
--       P = 0.000018 -> 0.00, clamped to 0.01
INSERT INTO crm.opportunity (name, owner_id, source, country, stage_id)
VALUES ('p5 like the won', :'dan', 'partner', 'US', :'s_new'), ('p6 like the lost', :'dan', 'cold_call', 'DE', :'s_new');
INSERT INTO crm.opportunity_tag (opportunity_id, tag_id)
SELECT id, :'hot'::uuid FROM crm.opportunity WHERE name LIKE 'p5%' OR name LIKE 'p6%';
-- (p2 and p3, on the sum over all teams, now learn from Bulk too:
--   prior 33.1 / 24.1; Qualified 33.1 / 2.1; referral won 1.1 of 2.1 + 1.1 + 30.1 + 0.1 = 33.4,
--   lost 2.1 of 2.1 + 2.1 + 0.1 + 20.1 = 24.4: P(won) ~ 33.1 x 1.1/33.4 = 1.090120,
--   P(lost) ~ 24.1 x 2.1/24.1 x 2.1/24.4 = 0.180738, P = 0.857785 -> 85.78)
SELECT name, crm.predict_win(id) FROM crm.opportunity WHERE name LIKE 'p_ %' ORDER BY name;
-- North and South kept their own tables: p1 unchanged
SELECT crm.predict_win(:'p1') AS p1;

-- Live, exact, and equal to a rebuild --------------------------------------------
-- reopening a won deal, changing the source of a lost one, untagging: each is
-- applied to the table in its own statement
UPDATE crm.opportunity SET stage_id = :'s_proposal' WHERE name = 'won 1';
UPDATE crm.opportunity SET source = 'referral' WHERE name = 'lost 3';
DELETE FROM crm.opportunity_tag WHERE tag_id = :'cold';
DELETE FROM crm.opportunity WHERE name = 'won 2';
SELECT count(*) AS drift FROM crm.pls_check();
CREATE TEMP TABLE live AS SELECT * FROM crm.pls_frequency;
SELECT crm.pls_rebuild() AS rows_rebuilt;
SELECT count(*) AS differ FROM (
    (SELECT record_kind, team_key, variable, value, won_count, lost_count FROM live
     EXCEPT SELECT record_kind, team_key, variable, value, won_count, lost_count FROM crm.pls_frequency)
    UNION ALL
    (SELECT record_kind, team_key, variable, value, won_count, lost_count FROM crm.pls_frequency
     EXCEPT SELECT record_kind, team_key, variable, value, won_count, lost_count FROM live)) d;

-- Leads: converted counts as won; a person who opted out of profiling is not learned from
INSERT INTO crm.lead (name, email, owner_id, source) VALUES
    ('Converted', 'yes@lead.example', :'ann', 'website'),
    ('Lost', 'no@lead.example', :'ann', 'website'),
    ('Private', 'private@lead.example', :'ann', 'website');
SELECT count(*) AS converted FROM crm.lead l, crm.lead_convert(l.id) WHERE l.name = 'Converted';
SELECT count(crm.lead_mark_lost(id, 'No')) FROM crm.lead WHERE name IN ('Lost', 'Private');
-- source website of North's leads: 1 won (converted), 2 lost
SELECT * FROM pg_temp.freq WHERE record_kind = 'lead' AND variable = 'source';
INSERT INTO crm.contact (first_name, email, profiling_opt_out) VALUES ('Pat', 'private@lead.example', true);
-- now 1 won, 1 lost
SELECT * FROM pg_temp.freq WHERE record_kind = 'lead' AND variable = 'source';
SELECT count(*) AS drift FROM crm.pls_check();

-- Probability mode -------------------------------------------------------------
-- stage (the default): the stage's probability; predicted: the model's, kept
-- up to date; manual: set by hand and kept across moves
UPDATE crm.pipeline SET probability_mode = 'predicted' WHERE id = :'sales';
INSERT INTO crm.opportunity (name, owner_id, source, stage_id)
VALUES ('m1 predicted', :'ann', 'website', :'s_proposal') RETURNING id AS m1 \gset
INSERT INTO crm.opportunity (name, owner_id, source, stage_id, probability_mode, probability)
VALUES ('m2 manual', :'ann', 'website', :'s_new', 'manual', 33) RETURNING id AS m2 \gset
INSERT INTO crm.opportunity (name, owner_id, source, stage_id, probability_mode)
VALUES ('m3 stage', :'ann', 'website', :'s_new', 'stage') RETURNING id AS m3 \gset
-- m1 is p1's twin: 78.47; a client cannot overwrite a predicted probability
SELECT name, probability_mode, probability FROM crm.opportunity WHERE name LIKE 'm_ %' ORDER BY name;
UPDATE crm.opportunity SET probability = 5 WHERE id = :'m1';
UPDATE crm.opportunity SET stage_id = :'s_qualified' WHERE id IN (:'m2', :'m3');
SELECT name, probability_mode, probability FROM crm.opportunity WHERE name LIKE 'm_ %' ORDER BY name;
-- a North deal lost at New moves every North prediction in the same statement:
--   New 2.1/3.1, Proposal 2.1/1.1 (so 2.1/2.1 and 1.1/3.1), website won 2.1/2.2, lost 2.1/3.2
--   P(won) ~ 2.1 x 1 x 2.1/2.2 = 2.004545; P(lost) ~ 3.1 x 1.1/3.1 x 2.1/3.2 = 0.721875
--   P = 2.004545 / 2.726420 = 0.735231 -> 73.52
INSERT INTO crm.opportunity (name, owner_id, source, stage_id, probability_mode)
VALUES ('n5', :'ann', 'website', :'s_lost', 'stage');
SELECT name, probability FROM crm.opportunity WHERE id = :'m1';
SELECT crm.predict_win(:'p1') AS p1;

RESET ROLE;
RESET crm.tenant_id;
