-- Lead scoring and the predictive model (issue 10): bad input gets a clear
-- error with its SQLSTATE, and nothing stored changes.

SELECT crm.create_tenant('Scoring Errors Co') AS t \gset
SELECT crm.create_tenant('Other Errors Co') AS other \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'other';
INSERT INTO crm.lead (name) VALUES ('Not yours') RETURNING id AS foreign_lead \gset
SELECT id AS foreign_model FROM crm.scoring_model \gset
SET crm.tenant_id = :'t';
SELECT id AS model FROM crm.scoring_model WHERE is_default \gset
INSERT INTO crm.lead (name, company_size) VALUES ('Mine', 20) RETURNING id AS lead \gset
CREATE TEMP TABLE models_before AS SELECT id, name, weights, threshold, is_default, active FROM crm.scoring_model;

-- The validator returns every problem at once, with its path -----------------
SELECT * FROM crm.validate_scoring_model('{
  "combine": {"fit": 70, "engagement": 20, "bonus": 10},
  "fit": {
    "company_size": {"bands": [{"min": 10, "points": 5}, {"min": 5, "points": 30.5}, {"points": -1}]},
    "budget": {"bands": []},
    "industry": {"points": {"technology": "lots", "space": 5}},
    "purchase_timeline": [1, 2],
    "decision_maker": {"yes": 25, "maybe": 10},
    "zodiac": {}
  },
  "engagement": {"half_life_days": 0, "types": {"telepathy": {"points": 1, "cap": 5},
                                                 "call": {"points": "NaN", "cap": 101}}},
  "extra": true
}');
-- shapes and types
SELECT * FROM crm.validate_scoring_model('[]');
SELECT * FROM crm.validate_scoring_model('{}');
SELECT * FROM crm.validate_scoring_model(NULL);
SELECT * FROM crm.validate_scoring_model('{"combine": {"fit": 100, "engagement": 0},
  "fit": {"company_size": {"bands": [{"min": 1, "points": 60}]}, "budget": {"bands": [{"min": 1, "points": 60}]}}}');
SELECT * FROM crm.validate_scoring_model('{"combine": {"fit": 50, "engagement": 50}, "fit": {},
  "engagement": {"half_life_days": 30, "types": {"meeting": {"points": 10, "cap": 60}, "call": {"points": 5, "cap": 60}}}}');
-- the default weights are valid
SELECT count(*) AS problems FROM crm.validate_scoring_model(crm.default_scoring_weights());

-- Saving an invalid model is refused with the first problem -----------------
\set VERBOSITY default
INSERT INTO crm.scoring_model (name, weights) VALUES ('Broken', '{"combine": {"fit": 100, "engagement": 0}, "fit": {"budget": {"bands": [{"min": 0, "points": -5}]}}}');
UPDATE crm.scoring_model SET weights = weights - 'combine' WHERE id = :'model';
UPDATE crm.scoring_model SET weights = jsonb_set(weights, '{fit,industry,points,technology}', '"many"') WHERE id = :'model';
SELECT try(format($$UPDATE crm.scoring_model SET weights = '[]' WHERE id = %L$$, :'model'));
SELECT try($$INSERT INTO crm.scoring_model (name, weights) VALUES ('No weights', NULL)$$);
-- a threshold outside 0-100
SELECT try(format($$UPDATE crm.scoring_model SET threshold = 101 WHERE id = %L$$, :'model'));
SELECT try(format($$UPDATE crm.scoring_model SET threshold = -1 WHERE id = %L$$, :'model'));
-- one default per tenant, and it must be active
SELECT try($$INSERT INTO crm.scoring_model (name, weights, is_default) VALUES ('Second default', crm.default_scoring_weights(), true)$$);
SELECT try(format($$UPDATE crm.scoring_model SET active = false WHERE id = %L$$, :'model'));
-- the name is unique in the tenant, whatever the letter case
SELECT try($$INSERT INTO crm.scoring_model (name, weights) VALUES ('DEFAULT', crm.default_scoring_weights())$$);
-- the model of another tenant cannot be given to a lead
SELECT try(format($$UPDATE crm.lead SET scoring_model_id = %L WHERE id = %L$$, :'foreign_model', :'lead'));
-- nothing changed
SELECT count(*) AS models, bool_and(m.weights = b.weights AND m.threshold = b.threshold AND m.active = b.active) AS unchanged
  FROM crm.scoring_model m JOIN models_before b USING (id);

-- Scoring functions ------------------------------------------------------------
SELECT try(format($$SELECT crm.score_lead(%L)$$, crm.uuid_generate_v7()));
SELECT try(format($$SELECT crm.score_lead(%L)$$, :'foreign_lead'));
SELECT try($$SELECT crm.score_lead(NULL)$$);
SELECT try(format($$SELECT crm.score_lead(%L, NULL, NULL)$$, :'lead'));
SELECT try(format($$SELECT crm.score_lead(%L, %L)$$, :'lead', crm.uuid_generate_v7()));
SELECT try(format($$SELECT crm.score_lead(%L, %L)$$, :'lead', :'foreign_model'));
SELECT try(format($$SELECT * FROM crm.explain_score(%L)$$, :'foreign_lead'));
SELECT try(format($$SELECT crm.rescore_leads(%L)$$, crm.uuid_generate_v7()));
SELECT try(format($$SELECT crm.rescore_leads(%L)$$, :'foreign_model'));
INSERT INTO crm.scoring_model (name, weights, active) VALUES ('Retired', crm.default_scoring_weights(), false)
RETURNING id AS retired \gset
SELECT try(format($$SELECT crm.rescore_leads(%L)$$, :'retired'));
RESET crm.tenant_id;
SELECT try($$SELECT crm.rescore_leads()$$);
SET crm.tenant_id = :'t';
-- the derived tables are the server's
SELECT try(format($$INSERT INTO crm.lead_score_history (lead_id, reason, new_score) VALUES (%L, 'decay', 5)$$, :'lead'));
SELECT try($$DELETE FROM crm.lead_score_history$$);
SELECT try($$INSERT INTO crm.pls_frequency (record_kind, team_key, variable, value, won_count, lost_count)
             VALUES ('lead', crm.uuid_generate_v7(), 'source', 'web', 1, 1)$$);
SELECT try($$UPDATE crm.pls_frequency SET won_count = 0$$);
SELECT score, fit_score FROM crm.lead WHERE id = :'lead';

-- Predictive model ----------------------------------------------------------
SELECT try($$SELECT crm.pls_configure(ARRAY['source', 'horoscope'])$$);
SELECT try($$SELECT crm.pls_configure(ARRAY['stage'])$$);
SELECT try($$SELECT crm.pls_configure(ARRAY['source', NULL])$$);
SELECT try($$SELECT crm.pls_configure(NULL)$$);
SELECT count(*) AS configured FROM crm.pls_config;
SELECT try(format($$SELECT crm.pls_rebuild(%L)$$, :'other'));
SELECT try($$SELECT crm.pls_rebuild(NULL)$$);
SELECT try(format($$SELECT crm.predict_win(%L)$$, crm.uuid_generate_v7()));
SELECT try(format($$SELECT * FROM crm.explain_win(%L)$$, crm.uuid_generate_v7()));
SELECT try(format($$SELECT crm.predict_lead_win(%L)$$, :'foreign_lead'));
SELECT try(format($$UPDATE crm.lead SET probability_mode = 'guessed' WHERE id = %L$$, :'lead'));
SELECT try(format($$UPDATE crm.lead SET country = 'Germany' WHERE id = %L$$, :'lead'));
SELECT try($$UPDATE crm.pipeline SET probability_mode = NULL$$);

RESET ROLE;
RESET crm.tenant_id;
