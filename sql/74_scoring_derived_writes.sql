-- Writes to a lead's derived columns (score, fit_score, engagement_score,
-- qualification, scored_at) without a change of its inputs: the values
-- written are ignored and the lead is scored again as of now.  On Citus the
-- batch UPDATE of crm.rescore_leads(), sent to a worker, gets its values
-- the same way (test/citus/compare.sql); here, on one node, a client's write.
--
-- Lead Dee: 250 employees (20) + technology (15) + decision maker (25) =
-- fit 60; default model, score = round((80 fit + 20 engagement) / 100):
--   no engagement:               4800 / 100 = 48
--   a meeting (10 points, it took place about a second before the
--   scoring: decay leaves round(9.99..) = 10): (4800 + 200) / 100 = 50
--   not a decision maker (fit 35): (2800 + 200) / 100 = 30

SELECT crm.create_tenant('Derived Writes Co') AS t \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';

INSERT INTO crm.lead (name, company_size, industry, is_decision_maker)
VALUES ('Dee', 250, 'technology', true) RETURNING id AS dee \gset
-- a meeting a second from now: not counted yet
INSERT INTO crm.activity (activity_type, subject, lead_id, status, occurred_at)
VALUES ('meeting', 'Soon', :'dee', 'completed', now() + interval '1 second');
SELECT score, fit_score, engagement_score FROM crm.lead WHERE id = :'dee';
SELECT scored_at AS scored_before FROM crm.lead WHERE id = :'dee' \gset
SELECT pg_sleep(1.5) IS NOT NULL AS waited;

-- A client writes every derived column: the lead is scored as of now (the
-- meeting counts: 50), not given 99 nor kept at 48.
UPDATE crm.lead SET score = 99, fit_score = 99, engagement_score = 99, qualification = 'unqualified',
       scored_at = '2000-01-01' WHERE id = :'dee';
SELECT score, fit_score, engagement_score, scored_at > :'scored_before' AS scored_now,
       score = crm.score_lead(id) AS exact FROM crm.lead WHERE id = :'dee';
-- one history row for the change, as crm.rescore_leads() would record it
SELECT old_score, new_score, reason FROM crm.lead_score_history WHERE lead_id = :'dee' ORDER BY changed_at;

-- Another write that changes no score: no history row (still 2).
UPDATE crm.lead SET score = 0 WHERE id = :'dee';
SELECT score FROM crm.lead WHERE id = :'dee';
SELECT count(*) AS history_rows FROM crm.lead_score_history WHERE lead_id = :'dee';

-- An input changed together with a derived column: the input counts, the
-- value written does not (fit 35, score 30), and the reason is the fit.
UPDATE crm.lead SET is_decision_maker = false, score = 77 WHERE id = :'dee';
SELECT score, fit_score, engagement_score FROM crm.lead WHERE id = :'dee';
SELECT old_score, new_score, reason FROM crm.lead_score_history WHERE lead_id = :'dee' ORDER BY changed_at;

-- A write of scored_at alone (as the batch scorer's retry does) rescores too.
UPDATE crm.lead SET scored_at = '-infinity' WHERE id = :'dee';
SELECT score, scored_at > :'scored_before' AS scored_now FROM crm.lead WHERE id = :'dee';

RESET crm.tenant_id;
RESET ROLE;
