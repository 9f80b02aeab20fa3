-- Lead scoring (issue 10): the default model is seeds/002's fit table plus
-- seeds/003's engagement, combined 80/20; every number below is worked out
-- by hand in the comments.
--
-- Default model (crm.default_scoring_weights()):
--   company_size (employees): 1+ 5, 11+ 10, 51+ 15, 201+ 20, 1001+ 25
--   industry: technology 15, finance 15, healthcare 12, manufacturing 10, consulting 10,
--             energy 10, retail 8, media 8, real_estate 6, education 6, government 5,
--             nonprofit 3, other 3
--   budget: 5000+ 5, 25000+ 10, 100000+ 15, 500000+ 20
--   purchase_timeline: immediate 15, within_month 12, within_quarter 8, within_year 4, no_timeline 0
--   decision_maker: yes 25, no 0 (unknown 0)
--   engagement (points per completed activity, halved every 30 days, capped):
--             email_opened 2 (cap 15), email_clicked 3 (15), document_downloaded 5 (20),
--             call 5 (15), meeting 10 (25)
--   score = round((80 x fit + 20 x engagement) / 100), qualified from 70

SELECT crm.create_tenant('Scoring Co') AS t \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';

-- crm.create_tenant made the default model (an AFTER INSERT trigger on crm.tenant)
SELECT name, threshold, is_default, active, weights = crm.default_scoring_weights() AS seeds_weights
  FROM crm.scoring_model;
SELECT id AS default_model FROM crm.scoring_model WHERE is_default \gset

-- Fit ---------------------------------------------------------------------
INSERT INTO crm.lead (name, email, company_name, company_size, industry, budget, purchase_timeline, is_decision_maker)
VALUES
  -- 250 employees 20 + technology 15 + 120000 15 + within_month 12 + decision maker 25 = fit 87
  -- score = round(0.8 x 87 + 0.2 x 0) = round(69.6) = 70: qualified
  ('Initech renewal', 'peter@initech.example', 'Initech', 250, 'technology', 120000, 'within_month', true),
  -- 8 employees 5 + education 6 + 3000 0 + no_timeline 0 + not the decision maker 0 = fit 11
  -- score = round(8.8) = 9
  ('Tiny school', 'head@school.example', 'School', 8, 'education', 3000, 'no_timeline', false),
  -- 1500 employees 25 + finance 15 + 600000 20 + immediate 15 + decision maker 25 = fit 100
  -- score = 80
  ('Big bank', 'cfo@bank.example', 'Bank', 1500, 'finance', 600000, 'immediate', true),
  -- nothing known: fit 0, score 0
  ('Unknown', NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  -- 60 employees 15 + healthcare 12 + 30000 10 + within_quarter 8 + unknown 0 = fit 45
  -- score = round(36.0) = 36
  ('Clinic', 'it@clinic.example', 'Clinic', 60, 'healthcare', 30000, 'within_quarter', NULL);
SELECT name, fit_score, engagement_score, score, qualification, scoring_model_id = :'default_model' AS default_model,
       scored_at <= now() AS scored
  FROM crm.lead ORDER BY name;
SELECT id AS initech FROM crm.lead WHERE name = 'Initech renewal' \gset
SELECT id AS school FROM crm.lead WHERE name = 'Tiny school' \gset
SELECT id AS clinic FROM crm.lead WHERE name = 'Clinic' \gset

-- crm.score_lead computes the same without storing
SELECT name, crm.score_lead(id) AS computed, score AS stored FROM crm.lead ORDER BY name;

-- Explanation: integer points that add up to the score.  For Initech the
-- exact shares are 0.8 x (20, 15, 15, 12, 25) = 16, 12, 12, 9.6, 20 (sum 69.6);
-- rounded down they make 69, and the one point left goes to the largest
-- remainder (timeline, .6): 16 + 12 + 12 + 10 + 20 = 70.
SELECT * FROM crm.explain_score(:'initech');
SELECT sum(points) AS explained, sum(model_points) FILTER (WHERE factor_group = 'fit') AS fit
  FROM crm.explain_score(:'initech');

-- Engagement --------------------------------------------------------------
-- One statement: three meetings today (3 x 10 = 30, capped at 25) and two
-- e-mails opened 30 days (720 hours, whatever daylight saving does) ago
-- (2 x 2 x 0.5 = 2): engagement 27.
-- Tiny school: round((80 x 11 + 20 x 27) / 100) = round(14.2) = 14.
INSERT INTO crm.activity (activity_type, subject, lead_id, status, occurred_at)
SELECT t.type, t.type || ' ' || g, :'school', 'completed', now() - t.age
  FROM (VALUES ('meeting', interval '0 hours', 3), ('email_opened', interval '720 hours', 2)) t(type, age, n),
       generate_series(1, t.n) g;
-- activities that do not count: scheduled, or of a type the model does not score
INSERT INTO crm.activity (activity_type, subject, lead_id, status, occurred_at)
VALUES ('meeting', 'Planned', :'school', 'scheduled', now() + interval '2 days'),
       ('note', 'Noted', :'school', 'completed', now());
SELECT fit_score, engagement_score, score, qualification FROM crm.lead WHERE id = :'school';
-- exact shares: size 4.0, industry 4.8, e-mails 0.4, meetings 5.0 (sum 14.2);
-- floors 4 + 4 + 0 + 5 = 13, the point left to industry (.8): 4 + 5 + 0 + 5 = 14
SELECT factor_group, factor, value, model_points, model_max, points
  FROM crm.explain_score(:'school') WHERE model_points > 0 OR factor_group = 'fit';
SELECT sum(points) AS explained FROM crm.explain_score(:'school');
-- as of 45 days (1080 hours) from now the meetings are 45 days old: 3 x 10 x 2^-1.5 = 10.61 -> 11
-- points, and the e-mails 75 days: 2 x 2 x 2^-2.5 = 0.71 -> 1 point; engagement 12:
-- round((80 x 11 + 20 x 12) / 100) = round(11.2) = 11
SELECT crm.score_lead(:'school', NULL, now() + interval '1080 hours') AS in_45_days;
SELECT factor, model_points FROM crm.explain_score(:'school', NULL, now() + interval '1080 hours')
 WHERE factor_group = 'engagement' AND model_points > 0;

-- History: a row only when the score changes ------------------------------
UPDATE crm.lead SET description = 'Called twice' WHERE id = :'school';            -- not a scoring field
UPDATE crm.lead SET company_size = 9, budget = 4000 WHERE id = :'school';        -- same bands: same score
UPDATE crm.lead SET industry = 'consulting' WHERE id = :'school';                -- 6 -> 10: fit 15,
-- round((80 x 15 + 20 x 27) / 100) = round(17.4) = 17
SELECT old_score, new_score, old_fit_score, new_fit_score, old_engagement_score, new_engagement_score, reason
  FROM crm.lead_score_history WHERE lead_id = :'school' ORDER BY changed_at, id;
SELECT old_score, new_score, reason FROM crm.lead_score_trend(:'school');

-- a client cannot write the server's columns
UPDATE crm.lead SET score = 99, fit_score = 99, qualification = 'qualified' WHERE id = :'school';
SELECT score, fit_score, qualification FROM crm.lead WHERE id = :'school';

-- Qualification crossing and LeadQualified --------------------------------
-- Clinic: 36; with a decision maker fit 70 -> 56; with a budget of 600000 fit 80 -> 64;
-- immediate timeline fit 87 -> round(69.6) = 70: qualified, one LeadQualified event
UPDATE crm.lead SET is_decision_maker = true WHERE id = :'clinic';
UPDATE crm.lead SET budget = 600000 WHERE id = :'clinic';
UPDATE crm.lead SET purchase_timeline = 'immediate' WHERE id = :'clinic';
SELECT score, qualification FROM crm.lead WHERE id = :'clinic';
-- down again (not the decision maker: fit 62, score round(49.6) = 50): unqualified, no event
UPDATE crm.lead SET is_decision_maker = false WHERE id = :'clinic';
SELECT score, qualification FROM crm.lead WHERE id = :'clinic';
SELECT l.name, (e.payload ->> 'score')::int AS score, e.entity, e.entity_id = l.id AS about_the_lead
  FROM crm.event e JOIN crm.lead l ON l.id = e.entity_id
 WHERE e.event_type = 'LeadQualified' ORDER BY e.position;

-- A model change rescores its leads in the same statement -----------------
-- threshold 50: Clinic (50) qualifies again (a fourth event); scores unchanged, so no history
SELECT count(*) AS history_before FROM crm.lead_score_history \gset
UPDATE crm.scoring_model SET threshold = 50 WHERE id = :'default_model';
SELECT name, score, qualification FROM crm.lead ORDER BY name;
SELECT count(*) - :history_before AS new_history_rows FROM crm.lead_score_history;
SELECT count(*) AS lead_qualified_events FROM crm.event WHERE event_type = 'LeadQualified';
-- fit only (combine 100/0): every score becomes its fit score, reason "model change"
UPDATE crm.scoring_model SET threshold = 70,
       weights = jsonb_set(weights, '{combine}', '{"fit": 100, "engagement": 0}')
 WHERE id = :'default_model';
SELECT name, fit_score, score, qualification FROM crm.lead ORDER BY name;
SELECT l.name, h.old_score, h.new_score, h.reason
  FROM crm.lead_score_history h JOIN crm.lead l ON l.id = h.lead_id
 WHERE h.reason = 'model change' ORDER BY l.name;
UPDATE crm.scoring_model SET weights = crm.default_scoring_weights() WHERE id = :'default_model';

-- Another model: scored without storing, then given to every lead ---------
INSERT INTO crm.scoring_model (name, weights, threshold)
VALUES ('Engagement heavy', jsonb_set(crm.default_scoring_weights(), '{combine}', '{"fit": 50, "engagement": 50}'), 40)
RETURNING id AS heavy \gset
-- Tiny school: round((50 x 15 + 50 x 27) / 100) = 21; stored stays 17
SELECT crm.score_lead(:'school', :'heavy') AS with_heavy, score AS stored FROM crm.lead WHERE id = :'school';
SELECT crm.rescore_leads(:'heavy') AS rescored;
SELECT name, score, qualification, scoring_model_id = :'heavy' AS heavy_model FROM crm.lead ORDER BY name;
-- a retired model hands its leads back to the default at once
UPDATE crm.scoring_model SET active = false WHERE id = :'heavy';
SELECT count(*) FILTER (WHERE scoring_model_id = :'default_model') AS on_default, count(*) AS leads FROM crm.lead;
-- rescoring with nothing changed changes nothing and writes no history
SELECT count(*) AS history_before FROM crm.lead_score_history \gset
SELECT crm.rescore_leads() AS rescored;
SELECT count(*) - :history_before AS new_history_rows FROM crm.lead_score_history;

-- Profiling opt-out -------------------------------------------------------
-- a contact with Initech's e-mail (in other letter case) opts out: no score, and the reason shows
INSERT INTO crm.contact (first_name, email, profiling_opt_out) VALUES ('Peter', 'Peter@Initech.example', true);
SELECT score, fit_score, engagement_score, qualification FROM crm.lead WHERE id = :'initech';
SELECT crm.score_lead(:'initech') AS computed;
SELECT * FROM crm.explain_score(:'initech');
-- the consent given back scores it again
UPDATE crm.contact SET profiling_opt_out = false WHERE email = 'Peter@Initech.example';
SELECT score, qualification FROM crm.lead WHERE id = :'initech';
SELECT old_score, new_score, reason FROM crm.lead_score_history WHERE lead_id = :'initech' ORDER BY changed_at, id;

-- A converted lead goes on with its contact's activities ------------------
SELECT (crm.lead_convert(:'school')).contact_id AS school_contact \gset
-- a call logged on the contact only: 5 points more engagement (27 -> 32):
-- round((80 x 15 + 20 x 32) / 100) = round(18.4) = 18
INSERT INTO crm.activity (activity_type, subject, contact_id, status) VALUES ('call', 'Follow-up', :'school_contact', 'completed');
SELECT engagement_score, score FROM crm.lead WHERE id = :'school';
SELECT old_score, new_score, reason FROM crm.lead_score_history WHERE lead_id = :'school' ORDER BY changed_at DESC, id DESC LIMIT 1;
-- deleting the call takes it back
DELETE FROM crm.activity WHERE contact_id = :'school_contact' AND activity_type = 'call';
SELECT engagement_score, score FROM crm.lead WHERE id = :'school';

-- Bulk: one statement scores many leads, one history row each (100 for the
-- INSERT, 100 for the UPDATE) ---------------------------------------------------
SELECT count(*) AS history_before FROM crm.lead_score_history \gset
INSERT INTO crm.lead (name, company_size, industry, is_decision_maker)
SELECT 'Bulk ' || g, g * 10, 'retail', g % 2 = 0 FROM generate_series(1, 100) g;
-- g x 10 employees: 10 -> 5 points, 20-50 -> 10, 60-200 -> 15, 210-1000 -> 20; retail 8; even g 25
SELECT count(*) AS bulk, sum(fit_score) AS fit_total, count(*) FILTER (WHERE score = crm.score_lead(id)) AS exact
  FROM crm.lead WHERE name LIKE 'Bulk %';
-- fit_total: sizes 5 + 4 x 10 + 15 x 15 + 80 x 20 = 1870, industry 100 x 8 = 800, 50 x 25 = 1250: 3920
UPDATE crm.lead SET industry = 'technology' WHERE name LIKE 'Bulk %';
SELECT count(*) - :history_before AS history_rows FROM crm.lead_score_history;
SELECT count(*) FILTER (WHERE score = crm.score_lead(id)) AS exact FROM crm.lead WHERE name LIKE 'Bulk %';

-- Top leads, served by an index --------------------------------------------
SELECT name, score, qualification FROM crm.top_leads(5);
SELECT name, score FROM crm.top_leads(3, min_score => 60);
SELECT count(*) AS none_of_nobody FROM crm.top_leads(5, owner => crm.uuid_generate_v7());
-- The query of crm.top_leads walks lead_top_score_idx in score order (on a
-- table this small the planner would rather sort; without that choice the
-- index gives the order itself, no Sort node)
CREATE FUNCTION pg_temp.plan_of(query text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    line text;
    plan text := '';
BEGIN
    FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || query LOOP
        plan := plan || line || E'\n';
    END LOOP;
    RETURN plan;
END
$$;
SET enable_seqscan = off;
SET enable_sort = off;
SELECT position('Index Scan using lead_top_score_idx' IN p) > 0 AS uses_index, position('Sort' IN p) = 0 AS no_sort
  FROM pg_temp.plan_of(format($q$
    SELECT l.id FROM crm.lead l
     WHERE l.tenant_id = %L AND l.status = 'open' AND l.archived_at IS NULL AND l.converted_at IS NULL
       AND l.score IS NOT NULL AND l.score >= 60
     ORDER BY l.score DESC, l.id LIMIT 5$q$, :'t')) p;
RESET enable_seqscan;
RESET enable_sort;

RESET ROLE;
RESET crm.tenant_id;
