-- Rescoring in batches: crm.rescore_leads(), a model change and a consent
-- change read, score and write the leads 10,000 at a time (one UPDATE from
-- arrays per batch).  10,007 leads make a full batch and a partial one;
-- every count below is worked out by hand.
--
-- Leads g = 1 .. 10007: 250 employees (20) + technology (15) = fit 35, and
-- a decision maker (25) when g is even: fit 60.  The ten leads g = 1000,
-- 2000, .., 10000 (all even) have a meeting (10 engagement points; it
-- happened a second before their scoring, so decay leaves round(9.99..) = 10).
-- Default model, score = round((80 fit + 20 engagement) / 100):
--   odd:  (80 x 35 + 50) / 100 = 28      (5,004 leads, one opted out below)
--   even: (80 x 60 + 50) / 100 = 48      (5,003 - 10 = 4,993 leads)
--   with the meeting: (4800 + 200 + 50) / 100 = 50   (10 leads)

SELECT crm.create_tenant('Batch Scoring Co') AS t \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';

INSERT INTO crm.lead (name, email, company_size, industry, is_decision_maker)
SELECT 'Batch ' || g, 'lead' || g || '@batch.example', 250, 'technology', g % 2 = 0
  FROM generate_series(1, 10007) g;
INSERT INTO crm.activity (activity_type, subject, lead_id, status, occurred_at)
SELECT 'meeting', 'Kick-off', l.id, 'completed', now() - interval '1 second'
  FROM crm.lead l WHERE l.name ~ '^Batch [0-9]+000$';

-- Lead 5's person opts out of profiling (the contact's e-mail matches
-- case-insensitively): the contact's INSERT rescores that lead, to NULL.
INSERT INTO crm.contact (first_name, email, profiling_opt_out) VALUES ('Five', 'LEAD5@Batch.example', true);

SELECT score, count(*) FROM crm.lead GROUP BY score ORDER BY score NULLS FIRST;

-- (statistics, so that the 10,007 calls of crm.score_lead() below find
-- their lead by its key rather than by a scan of a table thought empty)
RESET ROLE;
ANALYZE crm.lead, crm.activity;
SET ROLE regress_crm_app;

-- crm.rescore_leads(): every lead, in two batches; the scores do not move
-- (no history row), and each equals crm.score_lead() for its scored_at
SELECT count(*) AS history_before FROM crm.lead_score_history \gset
SELECT crm.rescore_leads() AS rescored;
SELECT count(*) - :history_before AS new_history_rows FROM crm.lead_score_history;
SELECT count(*) FILTER (WHERE score IS NOT DISTINCT FROM crm.score_lead(id, NULL, scored_at)) AS exact,
       count(DISTINCT scored_at) AS one_scoring_time
  FROM crm.lead;

-- A model change rescores the model's leads at once, in batches:
-- combined 60/40 the scores become
--   odd:  (60 x 35 + 50) / 100 = 21
--   even: (60 x 60 + 50) / 100 = 36
--   with the meeting: (3600 + 400 + 50) / 100 = 40
-- every one of the 10,006 scored leads changes: one 'model change' row each
SELECT count(*) AS history_before FROM crm.lead_score_history \gset
UPDATE crm.scoring_model SET weights = jsonb_set(weights, '{combine}', '{"fit": 60, "engagement": 40}')
 WHERE is_default;
SELECT score, count(*) FROM crm.lead GROUP BY score ORDER BY score NULLS FIRST;
SELECT reason, count(*) FROM crm.lead_score_history GROUP BY reason HAVING count(*) > 10 ORDER BY reason;
SELECT count(*) - :history_before AS new_history_rows FROM crm.lead_score_history;

-- rescore_leads(model) gives every lead that model: fit only (100/0), the
-- score is the fit: 35 (odd) and 60 (even, with or without the meeting)
INSERT INTO crm.scoring_model (name, weights)
SELECT 'Fit only', jsonb_set(weights, '{combine}', '{"fit": 100, "engagement": 0}')
  FROM crm.scoring_model WHERE is_default
RETURNING id AS fit_only \gset
SELECT crm.rescore_leads(:'fit_only') AS rescored;
SELECT score, count(*), count(*) FILTER (WHERE scoring_model_id = :'fit_only') AS with_the_model
  FROM crm.lead GROUP BY score ORDER BY score NULLS FIRST;
SELECT count(*) FILTER (WHERE score IS NOT DISTINCT FROM crm.score_lead(id, NULL, scored_at)
                          AND fit_score IS NOT DISTINCT FROM score) AS exact
  FROM crm.lead;

-- An activity statement over many leads rescores them in batches: a call
-- (5 points) for every lead changes no score (engagement weighs 0 in this
-- model) but the engagement part: 0 -> 5, and 10 -> 15 with the meeting;
-- the opted-out lead stays NULL
INSERT INTO crm.activity (activity_type, subject, lead_id, status, occurred_at)
SELECT 'call', 'Check-in', l.id, 'completed', now() - interval '1 second' FROM crm.lead l;
SELECT engagement_score, count(*) FROM crm.lead GROUP BY engagement_score ORDER BY engagement_score NULLS FIRST;
RESET ROLE;
ANALYZE crm.activity;
SET ROLE regress_crm_app;
SELECT count(*) FILTER (WHERE score IS NOT DISTINCT FROM crm.score_lead(id, NULL, scored_at)) AS exact FROM crm.lead;

RESET ROLE;
RESET crm.tenant_id;
