-- src/sql/87_scoring.sql: lead scoring (issue 10, DESIGN capability 3).
--
-- A lead's score (0-100) combines a fit sub-score (shared/seeds/002: company
-- size 0-25, industry 0-15, budget 0-20, purchase timeline 0-15, decision
-- maker 0-25) and an engagement sub-score (shared/seeds/003: website visits,
-- e-mail opens, content downloads, social engagement, meetings; points per
-- activity with a cap, from time-decayed activity counts; the registry has
-- no website-visit or social types yet, so the default model scores opens,
-- clicks, downloads, calls and meetings), weighted by the
-- lead's scoring model.  C triggers (src/scoring.c) keep lead.score and its
-- parts, the score history and the qualification exact in the same
-- statement as the change to the lead, its activities or the contact that
-- holds its profiling consent.

CREATE TABLE crm.scoring_model (
    tenant_id   uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    id          uuid NOT NULL DEFAULT crm.uuid_generate_v7(),
    name        text NOT NULL CHECK (btrim(name) <> ''),
    description text,
    weights     jsonb NOT NULL,
    threshold   integer NOT NULL DEFAULT 70 CHECK (threshold BETWEEN 0 AND 100),
    is_default  boolean NOT NULL DEFAULT false,
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CHECK (active OR NOT is_default)
);
CREATE UNIQUE INDEX scoring_model_name_key ON crm.scoring_model (tenant_id, crm.casefold(name));
CREATE UNIQUE INDEX scoring_model_one_default_key ON crm.scoring_model (tenant_id) WHERE is_default;
COMMENT ON TABLE crm.scoring_model IS 'A lead scoring model of a tenant: fit and engagement points as JSON weights, and the qualification threshold; one per tenant is the default';
COMMENT ON COLUMN crm.scoring_model.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.scoring_model.id IS 'Row id (UUIDv7)';
COMMENT ON COLUMN crm.scoring_model.name IS 'Model name, unique within the tenant (case-insensitive)';
COMMENT ON COLUMN crm.scoring_model.description IS 'Free text';
COMMENT ON COLUMN crm.scoring_model.weights IS 'Points: {"combine": {"fit": %, "engagement": %}, "fit": {factor: bands or points}, "engagement": {"half_life_days": n, "types": {type: {"points": p, "cap": c}}}}; checked by crm.validate_scoring_model()';
COMMENT ON COLUMN crm.scoring_model.threshold IS 'Score (0-100) from which a lead is qualified';
COMMENT ON COLUMN crm.scoring_model.is_default IS 'The model of leads that name none (one per tenant)';
COMMENT ON COLUMN crm.scoring_model.active IS 'False retires the model: its leads are scored by the default model';
COMMENT ON COLUMN crm.scoring_model.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.scoring_model.updated_at IS 'When the row last changed';

-- The columns of lead that scoring keeps.
ALTER TABLE crm.lead
    ADD COLUMN score smallint CHECK (score BETWEEN 0 AND 100),
    ADD COLUMN fit_score smallint CHECK (fit_score BETWEEN 0 AND 100),
    ADD COLUMN engagement_score smallint CHECK (engagement_score BETWEEN 0 AND 100),
    ADD COLUMN qualification text CHECK (qualification IN ('qualified', 'unqualified')),
    ADD COLUMN scoring_model_id uuid,
    ADD COLUMN scored_at timestamptz,
    ADD FOREIGN KEY (tenant_id, scoring_model_id) REFERENCES crm.scoring_model (tenant_id, id);
COMMENT ON COLUMN crm.lead.score IS 'Lead score 0-100: the model''s weighted fit and engagement; NULL when the person opted out of profiling (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.lead.fit_score IS 'Fit sub-score 0-100: company size, industry, budget, timeline, decision maker (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.lead.engagement_score IS 'Engagement sub-score 0-100: capped points per decayed activity (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.lead.qualification IS 'qualified when the score reaches the model''s threshold, else unqualified; NULL when not scored (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.lead.scoring_model_id IS 'The scoring model of the lead: the tenant''s default when omitted or retired; crm.rescore_leads(model) sets it';
COMMENT ON COLUMN crm.lead.scored_at IS 'The time the score was computed for (engagement decays from it) (set by the server; a client value is ignored)';
CREATE INDEX lead_scoring_model_idx ON crm.lead (tenant_id, scoring_model_id);
-- crm.top_leads(): the open, active, scored leads of a tenant by score
CREATE INDEX lead_top_score_idx ON crm.lead (tenant_id, score DESC, id)
    WHERE status = 'open' AND archived_at IS NULL AND converted_at IS NULL AND score IS NOT NULL;
-- (a lead's activities are found through activity_lead_time_idx of the
-- aggregation part, a converted lead's contact's through activity_contact_time_idx)

CREATE TABLE crm.lead_score_history (
    tenant_id            uuid NOT NULL DEFAULT crm.current_tenant(),
    id                   uuid NOT NULL DEFAULT crm.uuid_generate_v7(),
    lead_id              uuid NOT NULL,
    model_id             uuid,
    old_score            smallint,
    new_score            smallint,
    old_fit_score        smallint,
    new_fit_score        smallint,
    old_engagement_score smallint,
    new_engagement_score smallint,
    reason               text NOT NULL CHECK (reason IN ('fit change', 'activity', 'model change', 'decay',
                                                          'profiling opt-out')),
    changed_at           timestamptz NOT NULL DEFAULT now(),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, lead_id) REFERENCES crm.lead (tenant_id, id) ON DELETE CASCADE,
    CHECK (old_score IS DISTINCT FROM new_score)
);
CREATE INDEX lead_score_history_lead_idx ON crm.lead_score_history (tenant_id, lead_id, changed_at);
COMMENT ON TABLE crm.lead_score_history IS 'One row per change of a lead''s score (never for a rescoring that changes nothing), written by a trigger';
COMMENT ON COLUMN crm.lead_score_history.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.lead_score_history.id IS 'Row id (UUIDv7)';
COMMENT ON COLUMN crm.lead_score_history.lead_id IS 'The lead';
COMMENT ON COLUMN crm.lead_score_history.model_id IS 'The scoring model of the new score (no foreign key: the history outlives a deleted model)';
COMMENT ON COLUMN crm.lead_score_history.old_score IS 'Score before (NULL: not scored)';
COMMENT ON COLUMN crm.lead_score_history.new_score IS 'Score after (NULL: profiling opt-out)';
COMMENT ON COLUMN crm.lead_score_history.old_fit_score IS 'Fit sub-score before';
COMMENT ON COLUMN crm.lead_score_history.new_fit_score IS 'Fit sub-score after';
COMMENT ON COLUMN crm.lead_score_history.old_engagement_score IS 'Engagement sub-score before';
COMMENT ON COLUMN crm.lead_score_history.new_engagement_score IS 'Engagement sub-score after';
COMMENT ON COLUMN crm.lead_score_history.reason IS 'fit change (the lead''s fields), activity, model change, decay (a rescoring with the same model), profiling opt-out';
COMMENT ON COLUMN crm.lead_score_history.changed_at IS 'When the score changed (transaction time)';
COMMENT ON COLUMN crm.lead_score_history.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.lead_score_history.updated_at IS 'When the row last changed';

-- Validation --------------------------------------------------------------

CREATE FUNCTION crm.validate_scoring_model(weights jsonb)
    RETURNS TABLE (path text, problem text)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    industries constant text[] := ARRAY['technology', 'finance', 'healthcare', 'education', 'manufacturing',
        'retail', 'real_estate', 'consulting', 'media', 'energy', 'government', 'nonprofit', 'other'];
    timelines constant text[] := ARRAY['immediate', 'within_month', 'within_quarter', 'within_year', 'no_timeline'];
    factors constant text[] := ARRAY['company_size', 'industry', 'budget', 'purchase_timeline', 'decision_maker'];
    k text;
    v jsonb;
    e jsonb;
    i integer;
    prev numeric;
    fmax integer;
    fit_total integer := 0;
    cap_total integer := 0;
    p text;
BEGIN
    -- one error row per problem; the checks go on after each
    IF weights IS NULL THEN
        RETURN QUERY VALUES ('$', 'weights must not be null');
        RETURN;
    END IF;
    IF jsonb_typeof(weights) <> 'object' THEN
        RETURN QUERY VALUES ('$', format('must be an object, not %s', jsonb_typeof(weights)));
        RETURN;
    END IF;
    FOR k IN SELECT jsonb_object_keys(weights) LOOP
        IF k NOT IN ('combine', 'fit', 'engagement') THEN
            RETURN QUERY VALUES ('$.' || k, 'unknown key (expected combine, fit, engagement)');
        END IF;
    END LOOP;

    -- combine: integer percentages of fit and engagement adding up to 100
    v := weights -> 'combine';
    IF v IS NULL THEN
        RETURN QUERY VALUES ('$.combine', 'is missing');
    ELSIF jsonb_typeof(v) <> 'object' THEN
        RETURN QUERY VALUES ('$.combine', format('must be an object, not %s', jsonb_typeof(v)));
    ELSE
        FOR k IN SELECT jsonb_object_keys(v) LOOP
            IF k NOT IN ('fit', 'engagement') THEN
                RETURN QUERY VALUES ('$.combine.' || k, 'unknown key (expected fit, engagement)');
            END IF;
        END LOOP;
        FOREACH k IN ARRAY ARRAY['fit', 'engagement'] LOOP
            p := crm.scoring_points_problem(v -> k, true, 100);
            IF v -> k IS NULL THEN
                RETURN QUERY VALUES ('$.combine.' || k, 'is missing');
            ELSIF p IS NOT NULL THEN
                RETURN QUERY VALUES ('$.combine.' || k, p);
            END IF;
        END LOOP;
        IF crm.scoring_points_problem(v -> 'fit', true, 100) IS NULL
           AND crm.scoring_points_problem(v -> 'engagement', true, 100) IS NULL
           AND (v ->> 'fit')::numeric + (v ->> 'engagement')::numeric <> 100 THEN
            RETURN QUERY VALUES ('$.combine', 'fit and engagement must add up to 100');
        END IF;
    END IF;

    -- fit: each factor's points; their maxima add up to at most 100
    v := weights -> 'fit';
    IF v IS NULL THEN
        RETURN QUERY VALUES ('$.fit', 'is missing');
    ELSIF jsonb_typeof(v) <> 'object' THEN
        RETURN QUERY VALUES ('$.fit', format('must be an object, not %s', jsonb_typeof(v)));
    ELSE
        FOR k IN SELECT jsonb_object_keys(v) LOOP
            IF k <> ALL (factors) THEN
                RETURN QUERY VALUES ('$.fit.' || k, 'unknown factor (expected ' || array_to_string(factors, ', ') || ')');
            END IF;
        END LOOP;
        FOREACH k IN ARRAY factors LOOP
            e := v -> k;
            CONTINUE WHEN e IS NULL;
            fmax := 0;
            IF jsonb_typeof(e) <> 'object' THEN
                RETURN QUERY VALUES ('$.fit.' || k, format('must be an object, not %s', jsonb_typeof(e)));
                CONTINUE;
            END IF;
            IF k IN ('company_size', 'budget') THEN
                IF EXISTS (SELECT 1 FROM jsonb_object_keys(e) x WHERE x <> 'bands') THEN
                    RETURN QUERY SELECT '$.fit.' || k || '.' || x, 'unknown key (expected bands)'
                                   FROM jsonb_object_keys(e) x WHERE x <> 'bands';
                END IF;
                IF jsonb_typeof(e -> 'bands') IS DISTINCT FROM 'array' OR jsonb_array_length(e -> 'bands') = 0 THEN
                    RETURN QUERY VALUES ('$.fit.' || k || '.bands', 'must be a non-empty array of {"min": n, "points": p}');
                    CONTINUE;
                END IF;
                prev := NULL;
                FOR i IN 0 .. jsonb_array_length(e -> 'bands') - 1 LOOP
                    p := format('$.fit.%s.bands[%s]', k, i);
                    IF jsonb_typeof(e -> 'bands' -> i) <> 'object'
                       OR EXISTS (SELECT 1 FROM jsonb_object_keys(e -> 'bands' -> i) x WHERE x NOT IN ('min', 'points')) THEN
                        RETURN QUERY VALUES (p, 'must be an object {"min": n, "points": p}');
                        CONTINUE;
                    END IF;
                    IF jsonb_typeof(e -> 'bands' -> i -> 'min') IS DISTINCT FROM 'number'
                       OR (e -> 'bands' -> i ->> 'min')::numeric < 0 THEN
                        RETURN QUERY VALUES (p || '.min', 'must be a number of at least 0');
                    ELSIF prev IS NOT NULL AND (e -> 'bands' -> i ->> 'min')::numeric <= prev THEN
                        RETURN QUERY VALUES (p || '.min', 'bands must be in increasing order of min');
                    ELSE
                        prev := (e -> 'bands' -> i ->> 'min')::numeric;
                    END IF;
                    IF e -> 'bands' -> i -> 'points' IS NULL THEN
                        RETURN QUERY VALUES (p || '.points', 'is missing');
                    ELSIF crm.scoring_points_problem(e -> 'bands' -> i -> 'points', true, 100) IS NOT NULL THEN
                        RETURN QUERY VALUES (p || '.points', crm.scoring_points_problem(e -> 'bands' -> i -> 'points', true, 100));
                    ELSE
                        fmax := greatest(fmax, (e -> 'bands' -> i ->> 'points')::integer);
                    END IF;
                END LOOP;
            ELSE
                FOR p IN SELECT x FROM jsonb_object_keys(e) x
                          WHERE x NOT IN ('yes', 'no') AND k = 'decision_maker'
                             OR x <> 'points' AND k <> 'decision_maker' LOOP
                    RETURN QUERY VALUES ('$.fit.' || k || '.' || p,
                        CASE WHEN k = 'decision_maker' THEN 'unknown key (expected yes, no)'
                             ELSE 'unknown key (expected points)' END);
                END LOOP;
                IF k <> 'decision_maker' AND jsonb_typeof(e -> 'points') IS DISTINCT FROM 'object' THEN
                    RETURN QUERY VALUES ('$.fit.' || k || '.points', 'must be an object of value: points');
                    CONTINUE;
                END IF;
                FOR p, e IN SELECT x.key, x.value FROM jsonb_each(CASE WHEN k = 'decision_maker' THEN e ELSE e -> 'points' END) x LOOP
                    IF k = 'decision_maker' AND p NOT IN ('yes', 'no') THEN
                        CONTINUE;
                    ELSIF k = 'industry' AND p <> ALL (industries) THEN
                        RETURN QUERY VALUES ('$.fit.industry.points.' || p, 'unknown industry');
                    ELSIF k = 'purchase_timeline' AND p <> ALL (timelines) THEN
                        RETURN QUERY VALUES ('$.fit.purchase_timeline.points.' || p, 'unknown purchase timeline');
                    ELSIF crm.scoring_points_problem(e, true, 100) IS NOT NULL THEN
                        RETURN QUERY VALUES ('$.fit.' || k || CASE WHEN k = 'decision_maker' THEN '.' ELSE '.points.' END || p,
                                             crm.scoring_points_problem(e, true, 100));
                    ELSE
                        fmax := greatest(fmax, (e #>> '{}')::integer);
                    END IF;
                END LOOP;
            END IF;
            fit_total := fit_total + fmax;
        END LOOP;
        IF fit_total > 100 THEN
            RETURN QUERY VALUES ('$.fit', format('the factors'' maximum points add up to %s, more than 100', fit_total));
        END IF;
    END IF;

    -- engagement: half-life and points per activity type with caps adding up to at most 100
    v := weights -> 'engagement';
    IF v IS NOT NULL THEN
        IF jsonb_typeof(v) <> 'object' THEN
            RETURN QUERY VALUES ('$.engagement', format('must be an object, not %s', jsonb_typeof(v)));
        ELSE
            FOR k IN SELECT jsonb_object_keys(v) LOOP
                IF k NOT IN ('half_life_days', 'types') THEN
                    RETURN QUERY VALUES ('$.engagement.' || k, 'unknown key (expected half_life_days, types)');
                END IF;
            END LOOP;
            IF jsonb_typeof(v -> 'half_life_days') IS DISTINCT FROM 'number'
               OR (v ->> 'half_life_days')::numeric <= 0 THEN
                RETURN QUERY VALUES ('$.engagement.half_life_days', 'must be a number greater than 0');
            END IF;
            IF jsonb_typeof(v -> 'types') IS DISTINCT FROM 'object' THEN
                RETURN QUERY VALUES ('$.engagement.types', 'must be an object of activity type: {"points": p, "cap": c}');
            ELSE
                FOR k, e IN SELECT x.key, x.value FROM jsonb_each(v -> 'types') x LOOP
                    p := '$.engagement.types.' || k;
                    IF NOT EXISTS (SELECT 1 FROM crm.activity_type t WHERE t.code = k) THEN
                        RETURN QUERY VALUES (p, 'unknown activity type');
                    END IF;
                    IF jsonb_typeof(e) <> 'object'
                       OR EXISTS (SELECT 1 FROM jsonb_object_keys(e) x WHERE x NOT IN ('points', 'cap')) THEN
                        RETURN QUERY VALUES (p, 'must be an object {"points": p, "cap": c}');
                        CONTINUE;
                    END IF;
                    IF e -> 'points' IS NULL THEN
                        RETURN QUERY VALUES (p || '.points', 'is missing');
                    ELSIF crm.scoring_points_problem(e -> 'points', false, 100) IS NOT NULL THEN
                        RETURN QUERY VALUES (p || '.points', crm.scoring_points_problem(e -> 'points', false, 100));
                    END IF;
                    IF e -> 'cap' IS NULL THEN
                        RETURN QUERY VALUES (p || '.cap', 'is missing');
                    ELSIF crm.scoring_points_problem(e -> 'cap', true, 100) IS NOT NULL THEN
                        RETURN QUERY VALUES (p || '.cap', crm.scoring_points_problem(e -> 'cap', true, 100));
                    ELSE
                        cap_total := cap_total + (e ->> 'cap')::integer;
                    END IF;
                END LOOP;
                IF cap_total > 100 THEN
                    RETURN QUERY VALUES ('$.engagement.types', format('the caps add up to %s, more than 100', cap_total));
                END IF;
            END IF;
        END IF;
    END IF;
END
$$;
COMMENT ON FUNCTION crm.validate_scoring_model(jsonb) IS
    'Every problem of a scoring model''s weights at once, as (path, problem) rows; no rows: the weights are valid';

CREATE FUNCTION crm.scoring_points_problem(value jsonb, whole boolean, max_points integer)
    RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT CASE
            WHEN jsonb_typeof(value) IS DISTINCT FROM 'number'
                THEN format('must be a number, not %s', coalesce(jsonb_typeof(value), 'nothing'))
            WHEN (value #>> '{}')::numeric < 0 THEN 'must not be negative'
            WHEN (value #>> '{}')::numeric > max_points THEN format('must be at most %s', max_points)
            WHEN whole AND (value #>> '{}')::numeric <> trunc((value #>> '{}')::numeric)
                THEN 'must be a whole number'
        END
    $$;
COMMENT ON FUNCTION crm.scoring_points_problem(jsonb, boolean, integer) IS
    'Internal: what is wrong with a JSON points value (a number, at least 0, at most max_points, whole if asked), or NULL';

CREATE FUNCTION crm.scoring_model_check() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    bad record;
    n bigint;
BEGIN
    IF NEW.weights IS NULL THEN
        RETURN NEW;   -- the NOT NULL constraint says so
    END IF;
    SELECT v.path, v.problem INTO bad FROM crm.validate_scoring_model(NEW.weights) v LIMIT 1;
    IF FOUND THEN
        SELECT count(*) INTO n FROM crm.validate_scoring_model(NEW.weights);
        RAISE EXCEPTION 'invalid scoring model weights at %: %', bad.path, bad.problem
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The weights have %s problem(s); the model was not saved.', n),
                  HINT = 'Call crm.validate_scoring_model(weights) to see every problem.';
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION crm.scoring_model_check() IS
    'Trigger: refuses a scoring model whose weights crm.validate_scoring_model() finds fault with, naming the first problem';

CREATE TRIGGER scoring_model_check BEFORE INSERT OR UPDATE OF weights ON crm.scoring_model
    FOR EACH ROW EXECUTE FUNCTION crm.scoring_model_check();
COMMENT ON TRIGGER scoring_model_check ON crm.scoring_model IS 'Invalid weights are refused with the first problem and a hint to the validator';

-- The weights flattened into rows for the C scorer: one row per band,
-- value or activity type.
CREATE FUNCTION crm.scoring_model_rows(weights jsonb)
    RETURNS TABLE (factor text, item text, min_value numeric, points numeric, cap integer)
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT 'combine', c.key, NULL::numeric, c.value::text::numeric, NULL::integer
          FROM jsonb_each(weights -> 'combine') c
        UNION ALL
        SELECT f.factor, NULL, (b.value ->> 'min')::numeric, (b.value ->> 'points')::numeric, NULL
          FROM unnest(ARRAY['company_size', 'budget']) f(factor),
               jsonb_array_elements(coalesce(weights -> 'fit' -> f.factor -> 'bands', '[]')) b
        UNION ALL
        SELECT f.factor, p.key, NULL, p.value::text::numeric, NULL
          FROM unnest(ARRAY['industry', 'purchase_timeline']) f(factor),
               jsonb_each(coalesce(weights -> 'fit' -> f.factor -> 'points', '{}')) p
        UNION ALL
        SELECT 'decision_maker', p.key, NULL, p.value::text::numeric, NULL
          FROM jsonb_each(coalesce(weights -> 'fit' -> 'decision_maker', '{}')) p
        UNION ALL
        SELECT 'half_life_days', NULL, NULL, (weights -> 'engagement' ->> 'half_life_days')::numeric, NULL
         WHERE weights -> 'engagement' ? 'half_life_days'
        UNION ALL
        SELECT 'engagement', t.key, NULL, (t.value ->> 'points')::numeric, (t.value ->> 'cap')::integer
          FROM jsonb_each(coalesce(weights -> 'engagement' -> 'types', '{}')) t
    $$;
COMMENT ON FUNCTION crm.scoring_model_rows(jsonb) IS
    'Internal: a valid model''s weights as (factor, item, min_value, points, cap) rows, as the C scorer reads them';

-- The default model: seeds/002's fit table in our bands, engagement per seeds/003.
CREATE FUNCTION crm.default_scoring_weights() RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN '{
      "combine": {"fit": 80, "engagement": 20},
      "fit": {
        "company_size": {"bands": [{"min": 1, "points": 5}, {"min": 11, "points": 10}, {"min": 51, "points": 15},
                                   {"min": 201, "points": 20}, {"min": 1001, "points": 25}]},
        "industry": {"points": {"technology": 15, "finance": 15, "healthcare": 12, "manufacturing": 10,
                                "consulting": 10, "energy": 10, "retail": 8, "media": 8, "real_estate": 6,
                                "education": 6, "government": 5, "nonprofit": 3, "other": 3}},
        "budget": {"bands": [{"min": 5000, "points": 5}, {"min": 25000, "points": 10},
                             {"min": 100000, "points": 15}, {"min": 500000, "points": 20}]},
        "purchase_timeline": {"points": {"immediate": 15, "within_month": 12, "within_quarter": 8,
                                         "within_year": 4, "no_timeline": 0}},
        "decision_maker": {"yes": 25, "no": 0}
      },
      "engagement": {
        "half_life_days": 30,
        "types": {"email_opened": {"points": 2, "cap": 15}, "email_clicked": {"points": 3, "cap": 15},
                  "document_downloaded": {"points": 5, "cap": 20}, "call": {"points": 5, "cap": 15},
                  "meeting": {"points": 10, "cap": 25}}
      }
    }'::jsonb;
COMMENT ON FUNCTION crm.default_scoring_weights() IS
    'The weights of a new tenant''s default model: seeds/002''s fit table (0-100) and seeds/003''s engagement signals, combined 80/20';

-- A new tenant gets its default model (crm.create_tenant makes tenants by
-- inserting into crm.tenant, so this also covers every other path).
CREATE FUNCTION crm.tenant_default_scoring_model() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    -- a dump being loaded (replica mode, or row_security off) brings the tenant's models
    IF pg_catalog.current_setting('session_replication_role') = 'replica'
       OR pg_catalog.current_setting('row_security') = 'off' THEN
        RETURN NULL;
    END IF;
    -- per row, with the tenant as a parameter: on Citus the trigger fires
    -- on a shard of crm.tenant, where a transition table cannot be read
    -- by a statement Citus plans again
    INSERT INTO crm.scoring_model (tenant_id, name, description, weights, threshold, is_default)
    VALUES (NEW.tenant_id, 'Default', 'Fit per seeds/002 plus engagement; qualifies at 70',
            crm.default_scoring_weights(), 70, true);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm.tenant_default_scoring_model() IS
    'Trigger: every new tenant gets the default lead scoring model';

CREATE TRIGGER default_scoring_model AFTER INSERT ON crm.tenant
    FOR EACH ROW EXECUTE FUNCTION crm.tenant_default_scoring_model();
COMMENT ON TRIGGER default_scoring_model ON crm.tenant IS 'Makes the default scoring model of each new tenant';

-- Live scores (src/scoring.c) ----------------------------------------------

CREATE FUNCTION crm.scoring_lead_sync() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_scoring_lead_sync'
    LANGUAGE C;
COMMENT ON FUNCTION crm.scoring_lead_sync() IS
    'Trigger: score, fit_score, engagement_score, qualification and scored_at of a lead whose fit fields, e-mail, contact or model changed, or whose derived columns an UPDATE wrote (the values written are ignored)';

CREATE FUNCTION crm.scoring_lead_history() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_scoring_lead_history'
    LANGUAGE C;
COMMENT ON FUNCTION crm.scoring_lead_history() IS
    'Statement trigger: one crm.lead_score_history row per lead whose score the statement changed, and LeadQualified events';

CREATE FUNCTION crm.scoring_refresh() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_scoring_refresh'
    LANGUAGE C;
COMMENT ON FUNCTION crm.scoring_refresh() IS
    'Statement trigger on activity and contact: rescores, in one UPDATE, the leads whose engagement or profiling consent the statement changed';

CREATE TRIGGER scoring_sync BEFORE INSERT OR UPDATE ON crm.lead
    FOR EACH ROW EXECUTE FUNCTION crm.scoring_lead_sync();
COMMENT ON TRIGGER scoring_sync ON crm.lead IS 'Scores the lead when what its score depends on changed; keeps the server''s score otherwise';
CREATE TRIGGER scoring_history_insert AFTER INSERT ON crm.lead
    REFERENCING NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.scoring_lead_history();
COMMENT ON TRIGGER scoring_history_insert ON crm.lead IS 'Score history and LeadQualified events of new leads';
CREATE TRIGGER scoring_history_update AFTER UPDATE ON crm.lead
    REFERENCING OLD TABLE AS crm_old_rows NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.scoring_lead_history();
COMMENT ON TRIGGER scoring_history_update ON crm.lead IS 'Score history and LeadQualified events of changed leads';

-- On crm.activity the triggers are named to sort (and so fire) before the
-- engagement_* statement triggers: a statement that logs activities then
-- locks the leads before the engagement aggregates, in the order a change
-- of a lead's fit fields does (the lead, then, through its own activity
-- statements, the aggregates), so the two cannot deadlock
-- (specs/scoring_concurrency.spec).
CREATE TRIGGER activity_scoring_insert AFTER INSERT ON crm.activity
    REFERENCING NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.scoring_refresh();
CREATE TRIGGER activity_scoring_update AFTER UPDATE ON crm.activity
    REFERENCING OLD TABLE AS crm_old_rows NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.scoring_refresh();
CREATE TRIGGER activity_scoring_delete AFTER DELETE ON crm.activity
    REFERENCING OLD TABLE AS crm_old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.scoring_refresh();
COMMENT ON TRIGGER activity_scoring_insert ON crm.activity IS 'Rescores the leads (and converted leads of the contacts) of new activities';
COMMENT ON TRIGGER activity_scoring_update ON crm.activity IS 'Rescores the leads (and converted leads of the contacts) of changed activities, before and after';
COMMENT ON TRIGGER activity_scoring_delete ON crm.activity IS 'Rescores the leads (and converted leads of the contacts) of deleted activities';

CREATE TRIGGER scoring_refresh_insert AFTER INSERT ON crm.contact
    REFERENCING NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.scoring_refresh();
CREATE TRIGGER scoring_refresh_update AFTER UPDATE ON crm.contact
    REFERENCING OLD TABLE AS crm_old_rows NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.scoring_refresh();
CREATE TRIGGER scoring_refresh_delete AFTER DELETE ON crm.contact
    REFERENCING OLD TABLE AS crm_old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.scoring_refresh();
COMMENT ON TRIGGER scoring_refresh_insert ON crm.contact IS 'Rescores the leads with the e-mail of a new contact (profiling consent)';
COMMENT ON TRIGGER scoring_refresh_update ON crm.contact IS 'Rescores the leads whose contact''s e-mail or profiling consent changed';
COMMENT ON TRIGGER scoring_refresh_delete ON crm.contact IS 'Rescores the leads with the e-mail of a deleted contact';

-- A change of a model's weights or threshold, or its retirement, rescores
-- its leads at once, so a stored score always comes from the weights in force.
CREATE FUNCTION crm.scoring_model_changed() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    m record;
BEGIN
    FOR m IN SELECT n.tenant_id, n.id FROM crm_new_models n JOIN crm_old_models o
                ON o.tenant_id = n.tenant_id AND o.id = n.id
             WHERE (o.weights, o.threshold, o.active, o.is_default)
                   IS DISTINCT FROM (n.weights, n.threshold, n.active, n.is_default)
             ORDER BY n.tenant_id, n.id
    LOOP
        PERFORM crm.scoring_rescore(m.tenant_id, m.id, false);
    END LOOP;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm.scoring_model_changed() IS
    'Trigger: rescores the leads of models whose weights, threshold, activity or default flag changed';

CREATE TRIGGER scoring_model_changed AFTER UPDATE ON crm.scoring_model
    REFERENCING OLD TABLE AS crm_old_models NEW TABLE AS crm_new_models
    FOR EACH STATEMENT EXECUTE FUNCTION crm.scoring_model_changed();
COMMENT ON TRIGGER scoring_model_changed ON crm.scoring_model IS 'Rescores the leads of a model whose weights or threshold changed';

-- Functions ---------------------------------------------------------------

CREATE FUNCTION crm.scoring_rescore(tenant uuid, model uuid, assign boolean)
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'crm_scoring_rescore'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.scoring_rescore(uuid, uuid, boolean) IS
    'Internal: rescores the tenant''s leads of a model (all leads when model is NULL; assign: give them that model) in one UPDATE';

CREATE FUNCTION crm.rescore_leads(model uuid DEFAULT NULL) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    t uuid := crm.current_tenant();
    m crm.scoring_model;
BEGIN
    IF t IS NULL THEN
        RAISE EXCEPTION 'no tenant is set for this session' USING ERRCODE = 'insufficient_privilege',
            HINT = 'Act for a tenant (crm.tenant_id or crm.grant_tenant_access) to rescore its leads.';
    END IF;
    IF model IS NOT NULL THEN
        SELECT * INTO m FROM crm.scoring_model s WHERE s.tenant_id = t AND s.id = model;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'scoring model % does not exist', model USING ERRCODE = 'no_data_found';
        END IF;
        IF NOT m.active THEN
            RAISE EXCEPTION 'scoring model % is not active', model USING ERRCODE = 'object_not_in_prerequisite_state',
                HINT = 'Set active = true on the model first.';
        END IF;
    END IF;
    RETURN crm.scoring_rescore(t, model, model IS NOT NULL);
END
$$;
COMMENT ON FUNCTION crm.rescore_leads(uuid) IS
    'Rescores every lead of the current tenant now (with the given model, which they then keep; else each with its own); returns the number of leads rescored';

CREATE FUNCTION crm.score_lead(lead uuid, model uuid DEFAULT NULL, as_of timestamptz DEFAULT now())
    RETURNS integer
    AS 'MODULE_PATHNAME', 'crm_scoring_score_lead'
    LANGUAGE C STABLE;
COMMENT ON FUNCTION crm.score_lead(uuid, uuid, timestamptz) IS
    'The score 0-100 of a lead as of a time, with a model (default: the lead''s), computed without storing; NULL when the person opted out of profiling';

CREATE FUNCTION crm.explain_score(lead uuid, model uuid DEFAULT NULL, as_of timestamptz DEFAULT now())
    RETURNS TABLE (factor_group text, factor text, value text, model_points integer, model_max integer,
                   points integer)
    AS 'MODULE_PATHNAME', 'crm_scoring_explain_score'
    LANGUAGE C STABLE ROWS 12;
COMMENT ON FUNCTION crm.explain_score(uuid, uuid, timestamptz) IS
    'One row per scoring factor of a lead: its value, the model''s points and maximum for it, and its points in the score (integers adding up exactly to crm.score_lead); a privacy row when not scored';

CREATE FUNCTION crm.top_leads(n integer, pipeline uuid DEFAULT NULL, owner uuid DEFAULT NULL,
                              min_score integer DEFAULT 0)
    RETURNS TABLE (lead_id uuid, name text, company_name text, score smallint, fit_score smallint,
                   engagement_score smallint, qualification text, owner_id uuid, pipeline_id uuid)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    -- a variable, so that Citus routes the query to the tenant's shard
    -- (PL/pgSQL: Citus refuses a parameterised SQL function's query)
    acting_tenant uuid := crm.current_tenant();
BEGIN
    RETURN QUERY
        SELECT l.id, l.name, l.company_name, l.score, l.fit_score, l.engagement_score, l.qualification,
               l.owner_id, l.pipeline_id
          FROM crm.lead l
         WHERE l.tenant_id = acting_tenant
           AND l.status = 'open' AND l.archived_at IS NULL AND l.converted_at IS NULL
           AND l.score IS NOT NULL AND l.score >= coalesce(top_leads.min_score, 0)
           AND (top_leads.pipeline IS NULL OR l.pipeline_id = top_leads.pipeline)
           AND (top_leads.owner IS NULL OR l.owner_id = top_leads.owner)
         ORDER BY l.score DESC, l.id
         LIMIT greatest(coalesce(top_leads.n, 0), 0);
END
$$;
COMMENT ON FUNCTION crm.top_leads(integer, uuid, uuid, integer) IS
    'The n highest-scoring open, active, unconverted leads of the tenant, optionally of one pipeline or owner and from a minimum score (seeds/003 get_top_leads); served by lead_top_score_idx';

-- PL/pgSQL with the tenant in a variable: Citus cannot plan a
-- parameterised SQL function's query on a distributed table; this one is
-- routed to the tenant's shard.
CREATE FUNCTION crm.lead_score_trend(lead uuid)
    RETURNS TABLE (changed_at timestamptz, old_score smallint, new_score smallint, reason text, model_id uuid)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    t uuid := crm.current_tenant();
BEGIN
    RETURN QUERY
        SELECT h.changed_at, h.old_score, h.new_score, h.reason, h.model_id
          FROM crm.lead_score_history h
         WHERE h.tenant_id = t AND h.lead_id = lead_score_trend.lead
         ORDER BY h.changed_at, h.id;
END
$$;
COMMENT ON FUNCTION crm.lead_score_trend(uuid) IS
    'The score changes of a lead in time order (seeds/003 get_scoring_history)';

ALTER TABLE crm.scoring_model ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.scoring_model FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON crm.scoring_model
    USING (tenant_id = crm.current_tenant())
    WITH CHECK (tenant_id = crm.current_tenant());
COMMENT ON POLICY tenant_isolation ON crm.scoring_model IS 'Rows of the tenant the statement acts for (crm.current_tenant()) only';
ALTER TABLE crm.lead_score_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.lead_score_history FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON crm.lead_score_history
    USING (tenant_id = crm.current_tenant())
    WITH CHECK (tenant_id = crm.current_tenant());
COMMENT ON POLICY tenant_isolation ON crm.lead_score_history IS 'Rows of the tenant the statement acts for (crm.current_tenant()) only';

