-- src/sql/88_pls.sql: predictive win probability (issue 10), Odoo 17/18's
-- "predictive lead scoring" made exact.
--
-- Per tenant, record kind (lead, opportunity) and team, a frequency table
-- of (variable, value) -> won count, lost count over the closed records.
-- Odoo rebuilds it nightly and lets its live increments drift in between;
-- here each closed record's own observations are stored
-- (crm.pls_observation), and every change that can alter them (close,
-- reopen, a variable of a closed record, its tags, its contact or account,
-- a stage of its pipeline, the consent of its person, the tenant's variable
-- list) replaces them and applies the difference to crm.pls_frequency in
-- the same statement.  So the table always equals crm.pls_rebuild().
--
-- The triggers are statement-level C (src/pls.c): they read the statement's
-- rows in C, gather their ids into arrays and work from the tables, never
-- from the transition tables, and write only the tenants of those rows.

-- Columns -----------------------------------------------------------------

ALTER TABLE crm.pipeline
    ADD COLUMN probability_mode text NOT NULL DEFAULT 'stage'
        CHECK (probability_mode IN ('stage', 'predicted', 'manual'));
COMMENT ON COLUMN crm.pipeline.probability_mode IS
    'How the probability of new records of the pipeline is set: stage (the stage''s), predicted (crm.predict_win), manual (by hand, kept across moves)';

ALTER TABLE crm.lead
    ADD COLUMN team_id uuid,
    ADD COLUMN country text CHECK (country ~ '^[A-Z]{2}$'),
    ADD COLUMN probability_mode text CHECK (probability_mode IN ('stage', 'predicted', 'manual'));
COMMENT ON COLUMN crm.lead.team_id IS 'Sales team (the owner''s first team when omitted); the predictive model learns per team (no foreign key: a deleted team''s records keep its history)';
COMMENT ON COLUMN crm.lead.country IS 'Country of the company (ISO 3166-1 alpha-2)';
COMMENT ON COLUMN crm.lead.probability_mode IS 'stage, predicted or manual: where probability comes from (the pipeline''s default when omitted)';
CREATE INDEX lead_team_idx ON crm.lead (tenant_id, team_id);

ALTER TABLE crm.opportunity
    ADD COLUMN team_id uuid,
    ADD COLUMN country text CHECK (country ~ '^[A-Z]{2}$'),
    ADD COLUMN probability_mode text CHECK (probability_mode IN ('stage', 'predicted', 'manual'));
COMMENT ON COLUMN crm.opportunity.team_id IS 'Sales team (the owner''s first team when omitted); the predictive model learns per team (no foreign key: a deleted team''s records keep its history)';
COMMENT ON COLUMN crm.opportunity.country IS 'Country of the customer (ISO 3166-1 alpha-2)';
COMMENT ON COLUMN crm.opportunity.probability_mode IS 'stage, predicted or manual: where probability comes from (the pipeline''s default when omitted)';
CREATE INDEX opportunity_team_idx ON crm.opportunity (tenant_id, team_id);

-- Tables ------------------------------------------------------------------

CREATE TABLE crm.pls_config (
    tenant_id  uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    variables  text[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id)
);
COMMENT ON TABLE crm.pls_config IS 'The variables the predictive model of a tenant learns from besides the stage (set with crm.pls_configure; no row: the default list)';
COMMENT ON COLUMN crm.pls_config.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.pls_config.variables IS 'Chosen from source, industry, country, company_size, rating, priority, email_state, phone_state, tags';
COMMENT ON COLUMN crm.pls_config.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.pls_config.updated_at IS 'When the row last changed';

CREATE TABLE crm.pls_observation (
    tenant_id   uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    record_kind text NOT NULL CHECK (record_kind IN ('lead', 'opportunity')),
    record_id   uuid NOT NULL,
    variable    text NOT NULL,
    value       text NOT NULL,
    team_key    uuid NOT NULL,
    won         integer NOT NULL CHECK (won IN (0, 1)),
    lost        integer NOT NULL CHECK (lost IN (0, 1)),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, record_kind, record_id, variable, value)
);
COMMENT ON TABLE crm.pls_observation IS 'What each closed lead or opportunity contributes to the predictive model (kept by triggers; the frequency table is their sum)';
COMMENT ON COLUMN crm.pls_observation.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.pls_observation.record_kind IS 'lead or opportunity';
COMMENT ON COLUMN crm.pls_observation.record_id IS 'The closed record (no foreign key: one table holds both kinds; deleting the record removes its rows)';
COMMENT ON COLUMN crm.pls_observation.variable IS 'stage, or a variable of crm.pls_config';
COMMENT ON COLUMN crm.pls_observation.value IS 'The value (a stage or tag id for stage and tags)';
COMMENT ON COLUMN crm.pls_observation.team_key IS 'The record''s team, or the nil uuid for none';
COMMENT ON COLUMN crm.pls_observation.won IS '1 when the record was won (a converted lead counts as won)';
COMMENT ON COLUMN crm.pls_observation.lost IS '1 when the record was lost';
COMMENT ON COLUMN crm.pls_observation.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.pls_observation.updated_at IS 'When the row last changed';

CREATE TABLE crm.pls_frequency (
    tenant_id   uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    record_kind text NOT NULL CHECK (record_kind IN ('lead', 'opportunity')),
    team_key    uuid NOT NULL,
    variable    text NOT NULL,
    value       text NOT NULL,
    won_count   bigint NOT NULL CHECK (won_count >= 0),
    lost_count  bigint NOT NULL CHECK (lost_count >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, record_kind, team_key, variable, value),
    CHECK (won_count + lost_count > 0)
);
COMMENT ON TABLE crm.pls_frequency IS 'The predictive model: per tenant, record kind and team, won and lost counts of each (variable, value) of the closed records; always equal to crm.pls_rebuild()';
COMMENT ON COLUMN crm.pls_frequency.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.pls_frequency.record_kind IS 'lead or opportunity';
COMMENT ON COLUMN crm.pls_frequency.team_key IS 'The team, or the nil uuid for records without one';
COMMENT ON COLUMN crm.pls_frequency.variable IS 'stage, or a variable of crm.pls_config';
COMMENT ON COLUMN crm.pls_frequency.value IS 'The value (a stage or tag id for stage and tags)';
COMMENT ON COLUMN crm.pls_frequency.won_count IS 'Won records with this value (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.pls_frequency.lost_count IS 'Lost records with this value (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.pls_frequency.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.pls_frequency.updated_at IS 'When the row last changed';

-- Values ------------------------------------------------------------------

CREATE FUNCTION crm.pls_all_variables() RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN ARRAY['source', 'industry', 'country', 'company_size', 'rating', 'priority',
                 'email_state', 'phone_state', 'tags'];
COMMENT ON FUNCTION crm.pls_all_variables() IS
    'The variables the predictive model may learn from besides the stage';

-- PL/pgSQL, not SQL: Citus cannot plan a parameterised SQL function's
-- query on a distributed table (pls_config), a PL/pgSQL one routes it.
CREATE FUNCTION crm.pls_variables(tenant uuid) RETURNS text[]
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    vars text[];
BEGIN
    SELECT c.variables INTO vars FROM crm.pls_config c WHERE c.tenant_id = tenant;
    RETURN coalesce(vars, ARRAY['source', 'country', 'email_state', 'phone_state', 'tags']);
END
$$;
COMMENT ON FUNCTION crm.pls_variables(uuid) IS
    'The variables a tenant''s predictive model learns from besides the stage (default: source, country, email_state, phone_state, tags)';

CREATE FUNCTION crm.pls_size_band(employees integer) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$ SELECT CASE WHEN employees IS NULL THEN NULL
                WHEN employees <= 10 THEN '1-10'
                WHEN employees <= 50 THEN '11-50'
                WHEN employees <= 200 THEN '51-200'
                WHEN employees <= 1000 THEN '201-1000'
                ELSE '1001+' END $$;
COMMENT ON FUNCTION crm.pls_size_band(integer) IS 'Company size band of a number of employees: 1-10, 11-50, 51-200, 201-1000, 1001+';

CREATE FUNCTION crm.pls_email_state(email text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$ SELECT CASE WHEN email IS NULL OR btrim(email) = '' THEN 'none'
                WHEN email ~ '^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:].]+$' THEN 'correct'
                ELSE 'incorrect' END $$;
COMMENT ON FUNCTION crm.pls_email_state(text) IS 'none (empty), correct or incorrect: the e-mail variable of the predictive model';

CREATE FUNCTION crm.pls_phone_state(phone text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$ SELECT CASE WHEN phone IS NULL OR btrim(phone) = '' THEN 'none'
                WHEN phone ~ '^\+?[0-9][0-9 ()./-]{5,}[0-9]$' THEN 'correct'
                ELSE 'incorrect' END $$;
COMMENT ON FUNCTION crm.pls_phone_state(text) IS 'none (empty), correct (digits, spaces, ()./-, an optional leading +, 7 characters or more) or incorrect: the phone variable of the predictive model';

-- The variables (all of them but stage) of some records of a tenant.
CREATE FUNCTION crm.pls_record_values(tenant uuid, kind text, ids uuid[])
    RETURNS TABLE (record_id uuid, variable text, value text)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_variable
BEGIN
    -- plpgsql keeps the plan of this query for the session
    RETURN QUERY
        SELECT l.id, v.variable, v.value
          FROM crm.lead l
         CROSS JOIN LATERAL (VALUES
               ('source', l.source), ('industry', l.industry), ('country', l.country),
               ('company_size', crm.pls_size_band(l.company_size)), ('rating', l.rating),
               ('priority', l.priority), ('email_state', crm.pls_email_state(l.email)),
               ('phone_state', crm.pls_phone_state(l.phone))) v(variable, value)
         WHERE kind = 'lead' AND l.tenant_id = tenant AND l.id = ANY (ids) AND v.value IS NOT NULL
        UNION ALL
        SELECT t.lead_id, 'tags', t.tag_id::text
          FROM crm.lead_tag t
         WHERE kind = 'lead' AND t.tenant_id = tenant AND t.lead_id = ANY (ids)
        UNION ALL
        SELECT o.id, v.variable, v.value
          FROM crm.opportunity o
          LEFT JOIN crm.account a ON a.tenant_id = o.tenant_id AND a.id = o.account_id
          LEFT JOIN crm.contact c ON c.tenant_id = o.tenant_id AND c.id = o.contact_id
         CROSS JOIN LATERAL (VALUES
               ('source', o.source), ('industry', a.industry), ('country', o.country),
               ('company_size', crm.pls_size_band(a.employees)), ('rating', a.rating),
               ('priority', o.priority), ('email_state', crm.pls_email_state(c.email)),
               ('phone_state', crm.pls_phone_state(coalesce(c.phone, c.mobile)))) v(variable, value)
         WHERE kind = 'opportunity' AND o.tenant_id = tenant AND o.id = ANY (ids) AND v.value IS NOT NULL
        UNION ALL
        SELECT t.opportunity_id, 'tags', t.tag_id::text
          FROM crm.opportunity_tag t
         WHERE kind = 'opportunity' AND t.tenant_id = tenant AND t.opportunity_id = ANY (ids);
END
$$;
COMMENT ON FUNCTION crm.pls_record_values(uuid, text, uuid[]) IS
    'Internal: the predictive variables (all but stage) of records: their own fields, an opportunity''s account and contact, one row per tag';

-- What closed records contribute, computed from the records (ids NULL: all
-- of the tenant's).  A won record counts as won in every stage of its
-- pipeline; a lost one as lost in the last open stage it was in before it
-- was lost (stage history; the pipeline's first stage if it never moved)
-- and every stage of its pipeline with a lower or equal sequence; other
-- variables count once per value.  A person who opted out of profiling is
-- left out.
CREATE FUNCTION crm.pls_observations(tenant uuid, kind text, ids uuid[])
    RETURNS TABLE (record_id uuid, team_key uuid, variable text, value text, won integer, lost integer)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_variable
DECLARE
    closed_ids uuid[];
    v_id uuid[];
    v_var text[];
    v_val text[];
BEGIN
    -- The closed records (not opted out of profiling) and their variables
    -- read first (on Citus the query below is routed to the tenant's
    -- shard, where a function reading tables is refused); the query below
    -- takes the records by id through the primary key.
    IF kind = 'lead' THEN
        SELECT array_agg(l.id) INTO closed_ids
          FROM crm.lead l
         WHERE l.tenant_id = tenant AND (ids IS NULL OR l.id = ANY (ids))
           AND (l.converted_at IS NOT NULL OR l.status <> 'open')
           AND NOT EXISTS (SELECT 1 FROM crm.contact c
                            WHERE c.tenant_id = tenant AND c.profiling_opt_out
                              AND (crm.casefold(c.email) = crm.casefold(l.email) OR c.id = l.converted_contact_id));
    ELSE
        SELECT array_agg(o.id) INTO closed_ids
          FROM crm.opportunity o
         WHERE o.tenant_id = tenant AND (ids IS NULL OR o.id = ANY (ids))
           AND o.status <> 'open'
           AND NOT EXISTS (SELECT 1 FROM crm.contact c
                            WHERE c.tenant_id = tenant AND c.id = o.contact_id AND c.profiling_opt_out);
    END IF;
    closed_ids := coalesce(closed_ids, '{}');
    SELECT array_agg(v.record_id), array_agg(v.variable), array_agg(v.value)
      INTO v_id, v_var, v_val
      FROM crm.pls_record_values(tenant, kind, closed_ids) v
     WHERE v.variable = ANY ((SELECT crm.pls_variables(tenant))::text[]);
    -- plpgsql keeps the plan of this query for the session
    RETURN QUERY
        WITH closed AS (
            SELECT l.id, coalesce(l.team_id, '00000000-0000-0000-0000-000000000000') AS team_key,
                   l.pipeline_id, (l.converted_at IS NOT NULL OR l.status = 'won') AS is_won
              FROM crm.lead l
             WHERE kind = 'lead' AND l.tenant_id = tenant AND l.id = ANY (closed_ids)
            UNION ALL
            SELECT o.id, coalesce(o.team_id, '00000000-0000-0000-0000-000000000000'),
                   o.pipeline_id, o.status = 'won'
              FROM crm.opportunity o
             WHERE kind = 'opportunity' AND o.tenant_id = tenant AND o.id = ANY (closed_ids)
        ), lost_at AS (
            -- one sub-query per kind, so that each probes its index of
            -- stage_history (a CASE over the two columns matched every row
            -- of the tenant's history: quadratic in a bulk close)
            SELECT c.id, c.team_key, c.pipeline_id, coalesce(
                       CASE WHEN kind = 'lead' THEN
                       (SELECT h.from_stage_id
                          FROM crm.stage_history h
                          JOIN crm.stage f ON f.tenant_id = h.tenant_id AND f.id = h.from_stage_id AND f.kind = 'open'
                         WHERE h.tenant_id = tenant AND h.lead_id = c.id
                         ORDER BY h.changed_at DESC, h.id DESC LIMIT 1)
                       ELSE
                       (SELECT h.from_stage_id
                          FROM crm.stage_history h
                          JOIN crm.stage f ON f.tenant_id = h.tenant_id AND f.id = h.from_stage_id AND f.kind = 'open'
                         WHERE h.tenant_id = tenant AND h.opportunity_id = c.id
                         ORDER BY h.changed_at DESC, h.id DESC LIMIT 1)
                       END,
                       (SELECT s.id FROM crm.stage s
                         WHERE s.tenant_id = tenant AND s.pipeline_id = c.pipeline_id
                         ORDER BY s.sequence, s.id LIMIT 1)) AS stage_id
              FROM closed c
             WHERE NOT c.is_won
        )
        SELECT c.id, c.team_key, 'stage', s.id::text, 1, 0
          FROM closed c
          JOIN crm.stage s ON s.tenant_id = tenant AND s.pipeline_id = c.pipeline_id
         WHERE c.is_won
        UNION ALL
        SELECT la.id, la.team_key, 'stage', s.id::text, 0, 1
          FROM lost_at la
          JOIN crm.stage ls ON ls.tenant_id = tenant AND ls.id = la.stage_id
          JOIN crm.stage s ON s.tenant_id = tenant AND s.pipeline_id = la.pipeline_id AND s.sequence <= ls.sequence
        UNION ALL
        SELECT c.id, c.team_key, v.variable, v.value, c.is_won::integer, (NOT c.is_won)::integer
          FROM closed c
          JOIN unnest(v_id, v_var, v_val) v(record_id, variable, value) ON v.record_id = c.id;
END
$$;
COMMENT ON FUNCTION crm.pls_observations(uuid, text, uuid[]) IS
    'Internal: what closed records (all of the tenant''s when ids is NULL) contribute to the predictive model, computed from scratch';

-- Keeping the table -------------------------------------------------------

CREATE FUNCTION crm.pls_refresh(tenant uuid, kind text, ids uuid[]) RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    d_team uuid[];
    d_variable text[];
    d_value text[];
    d_won bigint[];
    d_lost bigint[];
BEGIN
    IF ids IS NULL OR cardinality(ids) = 0 THEN
        RETURN false;
    END IF;
    -- the records' contributions as they are now against what is stored:
    -- stored rows that no longer hold go, and the difference is kept
    WITH fresh AS (
        SELECT * FROM crm.pls_observations(tenant, kind, ids)
    ), stored AS (
        SELECT o.record_id, o.team_key, o.variable, o.value, o.won, o.lost
          FROM crm.pls_observation o
         WHERE o.tenant_id = tenant AND o.record_kind = kind AND o.record_id = ANY (ids)
    ), gone AS (
        DELETE FROM crm.pls_observation o
         USING stored s LEFT JOIN fresh f
            ON f.record_id = s.record_id AND f.variable = s.variable AND f.value = s.value
           AND f.team_key = s.team_key AND f.won = s.won AND f.lost = s.lost
         WHERE f.record_id IS NULL
           AND o.tenant_id = tenant AND o.record_kind = kind AND o.record_id = s.record_id
           AND o.variable = s.variable AND o.value = s.value
        RETURNING o.team_key, o.variable, o.value, -o.won AS won, -o.lost AS lost
    ), added AS (
        SELECT f.team_key, f.variable, f.value, f.won, f.lost
          FROM fresh f LEFT JOIN stored s
            ON f.record_id = s.record_id AND f.variable = s.variable AND f.value = s.value
           AND f.team_key = s.team_key AND f.won = s.won AND f.lost = s.lost
         WHERE s.record_id IS NULL
    ), delta AS (
        SELECT x.team_key, x.variable, x.value, sum(x.won)::bigint AS won, sum(x.lost)::bigint AS lost
          FROM (SELECT * FROM gone UNION ALL SELECT * FROM added) x
         GROUP BY 1, 2, 3
        HAVING sum(x.won) <> 0 OR sum(x.lost) <> 0
    )
    SELECT array_agg(d.team_key ORDER BY d.team_key, d.variable, d.value),
           array_agg(d.variable ORDER BY d.team_key, d.variable, d.value),
           array_agg(d.value ORDER BY d.team_key, d.variable, d.value),
           array_agg(d.won ORDER BY d.team_key, d.variable, d.value),
           array_agg(d.lost ORDER BY d.team_key, d.variable, d.value)
      INTO d_team, d_variable, d_value, d_won, d_lost
      FROM delta d;

    -- the deleted rows are gone now; the new ones can go in
    INSERT INTO crm.pls_observation (tenant_id, record_kind, record_id, variable, value, team_key, won, lost)
    SELECT tenant, kind, f.record_id, f.variable, f.value, f.team_key, f.won, f.lost
      FROM crm.pls_observations(tenant, kind, ids) f
     ORDER BY f.record_id, f.variable, f.value
    ON CONFLICT (tenant_id, record_kind, record_id, variable, value) DO NOTHING;

    IF d_team IS NULL THEN
        RETURN false;
    END IF;
    -- increments (a row may be new), the rows decrements empty, then the other decrements
    INSERT INTO crm.pls_frequency AS f (tenant_id, record_kind, team_key, variable, value, won_count, lost_count)
    SELECT tenant, kind, d.team_key, d.variable, d.value, d.won, d.lost
      FROM unnest(d_team, d_variable, d_value, d_won, d_lost) d(team_key, variable, value, won, lost)
     WHERE d.won >= 0 AND d.lost >= 0
    ON CONFLICT (tenant_id, record_kind, team_key, variable, value)
    DO UPDATE SET won_count = f.won_count + excluded.won_count, lost_count = f.lost_count + excluded.lost_count;
    DELETE FROM crm.pls_frequency f
     USING unnest(d_team, d_variable, d_value, d_won, d_lost) d(team_key, variable, value, won, lost)
     WHERE (d.won < 0 OR d.lost < 0)
       AND f.tenant_id = tenant AND f.record_kind = kind AND f.team_key = d.team_key
       AND f.variable = d.variable AND f.value = d.value
       AND f.won_count + d.won + f.lost_count + d.lost = 0;
    UPDATE crm.pls_frequency f
       SET won_count = f.won_count + d.won, lost_count = f.lost_count + d.lost
      FROM unnest(d_team, d_variable, d_value, d_won, d_lost) d(team_key, variable, value, won, lost)
     WHERE (d.won < 0 OR d.lost < 0)
       AND f.tenant_id = tenant AND f.record_kind = kind AND f.team_key = d.team_key
       AND f.variable = d.variable AND f.value = d.value
       AND f.won_count + d.won + f.lost_count + d.lost > 0;
    RETURN true;
END
$$;
COMMENT ON FUNCTION crm.pls_refresh(uuid, text, uuid[]) IS
    'Internal: replaces the stored observations of some records by what they contribute now, and applies the difference to crm.pls_frequency; true when it changed';

-- PL/pgSQL reading both sides into arrays first: on Citus the fresh side
-- (functions reading tables) runs where it is called, the stored side is
-- one query routed to the tenant's shard, and the comparison reads no table.
CREATE FUNCTION crm.pls_check(tenant uuid DEFAULT crm.current_tenant())
    RETURNS TABLE (record_kind text, team_key uuid, variable text, value text,
                   stored_won bigint, stored_lost bigint, fresh_won bigint, fresh_lost bigint)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    n_kind text[];
    n_team uuid[];
    n_var text[];
    n_val text[];
    n_won bigint[];
    n_lost bigint[];
    s_kind text[];
    s_team uuid[];
    s_var text[];
    s_val text[];
    s_won bigint[];
    s_lost bigint[];
BEGIN
    SELECT array_agg(x.kind), array_agg(x.team_key), array_agg(x.variable), array_agg(x.value),
           array_agg(x.won), array_agg(x.lost)
      INTO n_kind, n_team, n_var, n_val, n_won, n_lost
      FROM (SELECT k.kind, o.team_key, o.variable, o.value, sum(o.won)::bigint AS won, sum(o.lost)::bigint AS lost
              FROM unnest(ARRAY['lead', 'opportunity']) k(kind),
                   crm.pls_observations(tenant, k.kind, NULL) o
             GROUP BY 1, 2, 3, 4) x;
    SELECT array_agg(f.record_kind), array_agg(f.team_key), array_agg(f.variable), array_agg(f.value),
           array_agg(f.won_count), array_agg(f.lost_count)
      INTO s_kind, s_team, s_var, s_val, s_won, s_lost
      FROM crm.pls_frequency f WHERE f.tenant_id = tenant;
    RETURN QUERY
        WITH fresh AS (
            SELECT * FROM unnest(n_kind, n_team, n_var, n_val, n_won, n_lost) x(kind, team_key, variable, value, won, lost)
        ), stored AS (
            SELECT * FROM unnest(s_kind, s_team, s_var, s_val, s_won, s_lost) x(kind, team_key, variable, value, won, lost)
        )
        SELECT coalesce(s.kind, n.kind), coalesce(s.team_key, n.team_key), coalesce(s.variable, n.variable),
               coalesce(s.value, n.value), s.won, s.lost, n.won, n.lost
          FROM stored s FULL JOIN fresh n
            ON n.kind = s.kind AND n.team_key = s.team_key AND n.variable = s.variable AND n.value = s.value
         WHERE (s.won, s.lost) IS DISTINCT FROM (n.won, n.lost)
         ORDER BY 1, 2, 3, 4;
END
$$;
COMMENT ON FUNCTION crm.pls_check(uuid) IS
    'The rows where the live frequency table differs from one built from scratch (none, ever)';

CREATE FUNCTION crm.pls_rebuild_tables(tenant uuid) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    n bigint;
BEGIN
    DELETE FROM crm.pls_observation o WHERE o.tenant_id = tenant;
    DELETE FROM crm.pls_frequency f WHERE f.tenant_id = tenant;
    INSERT INTO crm.pls_observation (tenant_id, record_kind, record_id, variable, value, team_key, won, lost)
    SELECT tenant, k.kind, o.record_id, o.variable, o.value, o.team_key, o.won, o.lost
      FROM unnest(ARRAY['lead', 'opportunity']) k(kind), crm.pls_observations(tenant, k.kind, NULL) o;
    INSERT INTO crm.pls_frequency (tenant_id, record_kind, team_key, variable, value, won_count, lost_count)
    SELECT tenant, o.record_kind, o.team_key, o.variable, o.value, sum(o.won), sum(o.lost)
      FROM crm.pls_observation o WHERE o.tenant_id = tenant
     GROUP BY o.record_kind, o.team_key, o.variable, o.value
     ORDER BY o.record_kind, o.team_key, o.variable, o.value;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM crm.pls_apply(tenant, k.kind, NULL) FROM unnest(ARRAY['lead', 'opportunity']) k(kind);
    RETURN n;
END
$$;
COMMENT ON FUNCTION crm.pls_rebuild_tables(uuid) IS
    'Internal: replaces a tenant''s observations and frequency table by a build from scratch (crm.pls_rebuild runs it as the extension owner)';

CREATE FUNCTION crm.pls_rebuild(tenant uuid DEFAULT crm.current_tenant()) RETURNS bigint
    AS 'MODULE_PATHNAME', 'crm_pls_rebuild'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.pls_rebuild(uuid) IS
    'Builds the predictive model of a tenant (default: the current one; another only for an operator) from scratch, as Odoo''s nightly job does; returns the number of frequency rows. The live table always equals it';

CREATE FUNCTION crm.pls_configure(variables text[]) RETURNS text[]
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    t uuid := crm.current_tenant();
    v text;
    chosen text[];
BEGIN
    IF t IS NULL THEN
        RAISE EXCEPTION 'no tenant is set for this session' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF variables IS NULL THEN
        RAISE EXCEPTION 'variables must not be null' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Give an empty array to learn from the stage only.';
    END IF;
    IF array_position(variables, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'variables must not contain null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    FOREACH v IN ARRAY variables LOOP
        IF v <> ALL (crm.pls_all_variables()) THEN
            RAISE EXCEPTION 'unknown predictive variable "%"', v
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'The stage is always used; the others are chosen from: '
                               || array_to_string(crm.pls_all_variables(), ', ') || '.';
        END IF;
    END LOOP;
    SELECT coalesce(array_agg(a ORDER BY array_position(crm.pls_all_variables(), a)), '{}')
      INTO chosen FROM (SELECT DISTINCT a FROM unnest(variables) a) d;
    INSERT INTO crm.pls_config AS c (tenant_id, variables) VALUES (t, chosen)
    ON CONFLICT (tenant_id) DO UPDATE SET variables = excluded.variables;
    PERFORM crm.pls_rebuild(t);
    RETURN chosen;
END
$$;
COMMENT ON FUNCTION crm.pls_configure(text[]) IS
    'Sets the variables the current tenant''s predictive model learns from besides the stage, and rebuilds it; returns them in canonical order';

-- Predicting --------------------------------------------------------------

-- Odoo's naive Bayes: P(won) ~ prior_won x product of won(v,x)/won_total(v),
-- P(lost) alike, each count + 0.1; the prior and the stage's totals are the
-- counts of the pipeline's first stage.  A record uses its team's table when
-- that team has rows, else the sum over all teams.
CREATE FUNCTION crm.pls_explain(tenant uuid, kind text, record uuid)
    RETURNS TABLE (variable text, value text, won_count numeric, lost_count numeric,
                   won_total numeric, lost_total numeric, used boolean, status text)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    r record;
    first_stage uuid;
    use_team boolean;
    prior record;
    v_ord integer[];
    v_var text[];
    v_val text[];
BEGIN
    IF kind = 'lead' THEN
        SELECT l.team_id, l.pipeline_id, l.stage_id,
               CASE WHEN l.converted_at IS NOT NULL THEN 'won' ELSE l.status END AS status
          INTO r FROM crm.lead l WHERE l.tenant_id = tenant AND l.id = record;
    ELSE
        SELECT o.team_id, o.pipeline_id, o.stage_id, o.status
          INTO r FROM crm.opportunity o WHERE o.tenant_id = tenant AND o.id = record;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% % does not exist', kind, record USING ERRCODE = 'no_data_found';
    END IF;
    IF r.status <> 'open' THEN
        RETURN QUERY SELECT 'stage'::text, s.name, NULL::numeric, NULL::numeric, NULL::numeric, NULL::numeric,
                            false, r.status::text
                       FROM crm.stage s WHERE s.tenant_id = tenant AND s.id = r.stage_id;
        RETURN;
    END IF;

    SELECT s.id INTO first_stage FROM crm.stage s
     WHERE s.tenant_id = tenant AND s.pipeline_id = r.pipeline_id ORDER BY s.sequence, s.id LIMIT 1;
    use_team := r.team_id IS NOT NULL AND EXISTS (
        SELECT 1 FROM crm.pls_frequency f
         WHERE f.tenant_id = tenant AND f.record_kind = kind AND f.team_key = r.team_id);
    -- the record's values read first: on Citus the query below is routed
    -- to the tenant's shard, where a function reading tables is refused
    SELECT array_agg(array_position(crm.pls_all_variables(), v.variable)), array_agg(v.variable), array_agg(v.value)
      INTO v_ord, v_var, v_val
      FROM crm.pls_record_values(tenant, kind, ARRAY[record]) v
     WHERE v.variable = ANY ((SELECT crm.pls_variables(tenant))::text[]);

    RETURN QUERY
    WITH freq AS (
        SELECT f.variable, f.value, sum(f.won_count) + 0.1 AS won, sum(f.lost_count) + 0.1 AS lost
          FROM crm.pls_frequency f
         WHERE f.tenant_id = tenant AND f.record_kind = kind AND (NOT use_team OR f.team_key = r.team_id)
         GROUP BY f.variable, f.value
    ), totals AS (
        SELECT f.variable, sum(f.won) AS won, sum(f.lost) AS lost FROM freq f GROUP BY f.variable
    ), pri AS (
        SELECT f.won, f.lost FROM freq f WHERE f.variable = 'stage' AND f.value = first_stage::text
    ), vals AS (
        SELECT 0 AS ord, 'stage'::text AS variable, r.stage_id::text AS value
        UNION ALL
        SELECT v.ord, v.variable, v.value
          FROM unnest(v_ord, v_var, v_val) v(ord, variable, value)
    )
    SELECT q.variable, q.value, q.won, q.lost, q.won_total, q.lost_total, q.used, q.status
      FROM (
        SELECT -1 AS ord, 'prior'::text AS variable,
               (SELECT s.name FROM crm.stage s WHERE s.tenant_id = tenant AND s.id = first_stage) AS value,
               p.won, p.lost, NULL::numeric AS won_total, NULL::numeric AS lost_total,
               p.won IS NOT NULL AS used, 'open'::text AS status
          FROM (SELECT 1) one LEFT JOIN pri p ON true
        UNION ALL
        SELECT x.ord, x.variable,
               CASE x.variable
                   WHEN 'stage' THEN (SELECT s.name FROM crm.stage s WHERE s.tenant_id = tenant AND s.id::text = x.value)
                   WHEN 'tags' THEN (SELECT g.name FROM crm.tag g WHERE g.tenant_id = tenant AND g.id::text = x.value)
                   ELSE x.value END,
               f.won, f.lost,
               CASE WHEN x.variable = 'stage' THEN (SELECT p.won FROM pri p) ELSE t.won END,
               CASE WHEN x.variable = 'stage' THEN (SELECT p.lost FROM pri p) ELSE t.lost END,
               f.won IS NOT NULL AND EXISTS (SELECT 1 FROM pri)
                   AND (x.variable <> 'tags' OR f.won + f.lost >= 50),
               'open'::text
          FROM vals x
          LEFT JOIN freq f ON f.variable = x.variable AND f.value = x.value
          LEFT JOIN totals t ON t.variable = x.variable) q
     ORDER BY q.ord, q.value;
END
$$;
COMMENT ON FUNCTION crm.pls_explain(uuid, text, uuid) IS
    'Internal: the prior and one row per variable value of a record, with the counts (+0.1) and totals the prediction multiplies, and whether each is used';

-- The predictions of many records in one query (ids NULL: every record of
-- the kind), as sums of logarithms added in a fixed order, so that
-- crm.predict_win and the stored probabilities of predicted records are the
-- same number whatever order the rows come in.
CREATE FUNCTION crm.pls_predict_many(tenant uuid, kind text, ids uuid[])
    RETURNS TABLE (record_id uuid, probability numeric)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    SET enable_nestloop = on
    AS $$
#variable_conflict use_variable
DECLARE
    open_ids uuid[];
    v_id uuid[];
    v_var text[];
    v_val text[];
BEGIN
    -- The open records' variables read first (on Citus the query below is
    -- routed to the tenant's shard, where a function reading tables is
    -- refused): the same rows the query's own call made.
    IF kind = 'lead' THEN
        SELECT array_agg(l.id) INTO open_ids FROM crm.lead l
         WHERE l.tenant_id = tenant AND (ids IS NULL OR l.id = ANY (ids))
           AND l.converted_at IS NULL AND l.status = 'open';
    ELSE
        SELECT array_agg(o.id) INTO open_ids FROM crm.opportunity o
         WHERE o.tenant_id = tenant AND (ids IS NULL OR o.id = ANY (ids)) AND o.status = 'open';
    END IF;
    SELECT array_agg(v.record_id), array_agg(v.variable), array_agg(v.value)
      INTO v_id, v_var, v_val
      FROM crm.pls_record_values(tenant, kind, coalesce(open_ids, '{}')) v
     WHERE v.variable = ANY ((SELECT crm.pls_variables(tenant))::text[]);
    -- Many records: the CTEs' row counts are guesses, and nested loops over
    -- them go quadratic; one record: index lookups are what it needs.  The
    -- query is planned each call, under the setting chosen (the function's
    -- SET restores it on return).
    IF ids IS NULL OR cardinality(ids) > 20 THEN
        PERFORM pg_catalog.set_config('enable_nestloop', 'off', true);
    END IF;
    RETURN QUERY EXECUTE '
        WITH recs AS (
            SELECT l.id, l.team_id, l.pipeline_id, l.stage_id,
                   CASE WHEN l.converted_at IS NOT NULL THEN ''won'' ELSE l.status END AS status
              FROM crm.lead l
             WHERE $2 = ''lead'' AND l.tenant_id = $1 AND ($3 IS NULL OR l.id = ANY ($3))
            UNION ALL
            SELECT o.id, o.team_id, o.pipeline_id, o.stage_id, o.status
              FROM crm.opportunity o
             WHERE $2 = ''opportunity'' AND o.tenant_id = $1 AND ($3 IS NULL OR o.id = ANY ($3))
        ), teams AS (
            SELECT DISTINCT f.team_key FROM crm.pls_frequency f
             WHERE f.tenant_id = $1 AND f.record_kind = $2
        ), scoped AS (
            -- the team''s own table when it has one, else the sum over all teams (''ffff...'')
            SELECT r.*, CASE WHEN r.team_id IN (SELECT t.team_key FROM teams t) THEN r.team_id
                             ELSE ''ffffffff-ffff-ffff-ffff-ffffffffffff''::uuid END AS scope
              FROM recs r
        ), freq AS (
            SELECT f.team_key AS scope, f.variable, f.value,
                   f.won_count + 0.1 AS won, f.lost_count + 0.1 AS lost
              FROM crm.pls_frequency f
             WHERE f.tenant_id = $1 AND f.record_kind = $2
               AND f.team_key IN (SELECT s.scope FROM scoped s WHERE s.status = ''open'')
            UNION ALL
            SELECT ''ffffffff-ffff-ffff-ffff-ffffffffffff''::uuid, f.variable, f.value,
                   sum(f.won_count) + 0.1, sum(f.lost_count) + 0.1
              FROM crm.pls_frequency f
             WHERE f.tenant_id = $1 AND f.record_kind = $2
               AND EXISTS (SELECT 1 FROM scoped s
                            WHERE s.status = ''open'' AND s.scope = ''ffffffff-ffff-ffff-ffff-ffffffffffff'')
             GROUP BY f.variable, f.value
        ), totals AS (
            SELECT f.scope, f.variable, sum(f.won) AS won, sum(f.lost) AS lost FROM freq f GROUP BY 1, 2
        ), first_stage AS (
            SELECT DISTINCT ON (s.pipeline_id) s.pipeline_id, s.id
              FROM crm.stage s
             WHERE s.tenant_id = $1 AND s.pipeline_id IN (SELECT r.pipeline_id FROM recs r)
             ORDER BY s.pipeline_id, s.sequence, s.id
        ), prior AS (
            SELECT r.id, p.won, p.lost
              FROM scoped r
              JOIN first_stage fs ON fs.pipeline_id = r.pipeline_id
              JOIN freq p ON p.scope = r.scope AND p.variable = ''stage'' AND p.value = fs.id::text
             WHERE r.status = ''open''
        ), vals AS (
            SELECT r.id, ''stage''::text AS variable, r.stage_id::text AS value FROM scoped r WHERE r.status = ''open''
            UNION ALL
            SELECT v.record_id, v.variable, v.value
              FROM unnest($4::uuid[], $5::text[], $6::text[]) v(record_id, variable, value)
        ), keyed AS (
            SELECT x.id, x.variable, x.value, r.scope, p.won AS prior_won, p.lost AS prior_lost
              FROM vals x
              JOIN scoped r ON r.id = x.id
              JOIN prior p ON p.id = x.id
        ), factors AS (
            SELECT k.id,
                   sum(ln((f.won / CASE WHEN k.variable = ''stage'' THEN k.prior_won ELSE t.won END)::float8)
                       ORDER BY k.variable, k.value) AS lw,
                   sum(ln((f.lost / CASE WHEN k.variable = ''stage'' THEN k.prior_lost ELSE t.lost END)::float8)
                       ORDER BY k.variable, k.value) AS ll
              FROM keyed k
              JOIN freq f ON f.scope = k.scope AND f.variable = k.variable AND f.value = k.value
              JOIN totals t ON t.scope = k.scope AND t.variable = k.variable
             WHERE k.variable <> ''tags'' OR f.won + f.lost >= 50
             GROUP BY k.id
        )
        SELECT r.id,
               CASE WHEN r.status = ''won'' THEN 100::numeric
                    WHEN r.status = ''lost'' THEN 0::numeric
                    WHEN p.won IS NULL THEN NULL
                    -- P = won / (won + lost) = 1 / (1 + exp(ln lost - ln won))
                    ELSE least(greatest(round((100 / (1 + exp(least(ln(p.lost::float8) + coalesce(fa.ll, 0)
                                                                    - ln(p.won::float8) - coalesce(fa.lw, 0), 700))))::numeric, 2),
                                        0.01), 99.99) END
          FROM scoped r
          LEFT JOIN prior p ON p.id = r.id
          LEFT JOIN factors fa ON fa.id = r.id'
    USING tenant, kind, ids, v_id, v_var, v_val;
END
$$;
COMMENT ON FUNCTION crm.pls_predict_many(uuid, text, uuid[]) IS
    'Internal: the predicted win probability of many records at once (0 lost, 100 won, else in [0.01, 99.99]; NULL with no closed records), in one query';

CREATE FUNCTION crm.pls_predict(tenant uuid, kind text, record uuid) RETURNS numeric
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    result numeric;
BEGIN
    SELECT m.probability INTO result FROM crm.pls_predict_many(tenant, kind, ARRAY[record]) m;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% % does not exist', kind, record USING ERRCODE = 'no_data_found';
    END IF;
    RETURN result;
END
$$;
COMMENT ON FUNCTION crm.pls_predict(uuid, text, uuid) IS
    'Internal: the predicted win probability of a record (0 lost, 100 won, else in [0.01, 99.99]; NULL with no closed records)';

CREATE FUNCTION crm.predict_win(opportunity uuid) RETURNS numeric
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    RETURN crm.pls_predict(crm.current_tenant(), 'opportunity', predict_win.opportunity);
COMMENT ON FUNCTION crm.predict_win(uuid) IS
    'Predicted win probability 0-100 of an opportunity from the won and lost history of its team (or of all teams); NULL while nothing has closed';

CREATE FUNCTION crm.predict_lead_win(lead uuid) RETURNS numeric
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    RETURN crm.pls_predict(crm.current_tenant(), 'lead', predict_lead_win.lead);
COMMENT ON FUNCTION crm.predict_lead_win(uuid) IS
    'Predicted win probability 0-100 of a lead (converted counts as won) from the history of its team (or of all teams)';

CREATE FUNCTION crm.explain_win(opportunity uuid)
    RETURNS TABLE (variable text, value text, won_count numeric, lost_count numeric, factor numeric, used boolean)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT e.variable, e.value, e.won_count, e.lost_count,
               CASE WHEN e.won_total IS NOT NULL AND e.won_count IS NOT NULL
                    THEN round(((e.won_count / e.won_total) / (e.lost_count / e.lost_total))::numeric, 4) END,
               e.used
          FROM crm.pls_explain(crm.current_tenant(), 'opportunity', explain_win.opportunity) e
    $$;
COMMENT ON FUNCTION crm.explain_win(uuid) IS
    'Why crm.predict_win says what it says: the prior (first stage counts), then one row per variable value with its won and lost counts (+0.1), its factor (won share / lost share) and whether it is used (a tag needs 50 observations)';

-- Probability mode --------------------------------------------------------

-- Applies the prediction to open records in 'predicted' mode (ids NULL: all
-- of the tenant's), by an UPDATE that the win_probability trigger lets through.
CREATE FUNCTION crm.pls_apply(tenant uuid, kind text, ids uuid[]) RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    targets uuid[];
BEGIN
    -- the open records in predicted mode among ids (NULL: all of the tenant's)
    IF kind = 'opportunity' THEN
        targets := ARRAY(SELECT x.id FROM crm.opportunity x
                          WHERE x.tenant_id = tenant AND (ids IS NULL OR x.id = ANY (ids))
                            AND x.status = 'open' AND x.probability_mode = 'predicted' ORDER BY x.id);
    ELSE
        targets := ARRAY(SELECT x.id FROM crm.lead x
                          WHERE x.tenant_id = tenant AND (ids IS NULL OR x.id = ANY (ids))
                            AND x.status = 'open' AND x.converted_at IS NULL
                            AND x.probability_mode = 'predicted' ORDER BY x.id);
    END IF;
    IF cardinality(targets) = 0 THEN
        RETURN;
    END IF;
    PERFORM pg_catalog.set_config('crm.pls_applying', 'on', true);
    IF kind = 'opportunity' THEN
        UPDATE crm.opportunity o SET probability = p.probability
          FROM crm.pls_predict_many(tenant, kind, targets) p
         WHERE o.tenant_id = tenant AND o.id = p.record_id AND p.probability IS NOT NULL
           AND o.probability IS DISTINCT FROM p.probability;
    ELSE
        UPDATE crm.lead l SET probability = p.probability
          FROM crm.pls_predict_many(tenant, kind, targets) p
         WHERE l.tenant_id = tenant AND l.id = p.record_id AND p.probability IS NOT NULL
           AND l.probability IS DISTINCT FROM p.probability;
    END IF;
    PERFORM pg_catalog.set_config('crm.pls_applying', '', true);
END
$$;
COMMENT ON FUNCTION crm.pls_apply(uuid, text, uuid[]) IS
    'Internal: sets the probability of open records in predicted mode to crm.pls_predict()';

-- BEFORE INSERT OR UPDATE, after stage_sync (trigger names fire in order):
-- the team and the probability mode when omitted, and the probability of
-- manual and predicted records.
-- In C (src/pls.c): it runs for every row of a bulk stage change.
CREATE FUNCTION crm.win_probability() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_pls_win_probability'
    LANGUAGE C;
COMMENT ON FUNCTION crm.win_probability() IS
    'Trigger: team (the owner''s) and probability mode (the pipeline''s) when omitted; keeps a manual probability across stage moves and a predicted one the server''s';

CREATE TRIGGER win_probability BEFORE INSERT OR UPDATE ON crm.lead
    FOR EACH ROW EXECUTE FUNCTION crm.win_probability();
CREATE TRIGGER win_probability BEFORE INSERT OR UPDATE ON crm.opportunity
    FOR EACH ROW EXECUTE FUNCTION crm.win_probability();
COMMENT ON TRIGGER win_probability ON crm.lead IS 'Team and probability mode defaults; manual and predicted probabilities';
COMMENT ON TRIGGER win_probability ON crm.opportunity IS 'Team and probability mode defaults; manual and predicted probabilities';

-- AFTER each statement on the records and everything their variables come
-- from: the C trigger (src/pls.c) reads the statement's rows and calls
-- crm.pls_sync() with their (tenant, key, e-mail), which refreshes the
-- observations of the records they reach, then the predictions of the open
-- ones.  The triggers are named to fire after stage_history, whose rows say
-- where a lost record was lost.
CREATE FUNCTION crm.pls_sync(source text, tenants uuid[], keys uuid[], emails text[]) RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    g record;
    changed boolean;
    tnt uuid;
BEGIN
    -- one tenant at a time, named by a parameter in every join: on Citus each
    -- query then goes to that tenant's shards (no query across shards from
    -- a trigger on a shard)
    FOR tnt IN SELECT DISTINCT x.t FROM unnest(tenants) x(t) WHERE x.t IS NOT NULL ORDER BY 1 LOOP
    FOR g IN
        WITH k AS (
            SELECT DISTINCT u.tenant_id, u.key, u.email FROM unnest(tenants, keys, emails) u(tenant_id, key, email)
             WHERE u.tenant_id = tnt
        ), touched AS (
            SELECT k.tenant_id, pls_sync.source AS kind, k.key AS id FROM k WHERE pls_sync.source IN ('lead', 'opportunity')
            UNION ALL
            SELECT k.tenant_id, replace(pls_sync.source, '_tag', ''), k.key FROM k WHERE pls_sync.source IN ('lead_tag', 'opportunity_tag')
            UNION ALL
            SELECT l.tenant_id, 'lead', l.id FROM k JOIN crm.lead l
                ON l.tenant_id = tnt AND l.tenant_id = k.tenant_id AND l.converted_contact_id = k.key
             WHERE pls_sync.source = 'contact'
            UNION ALL
            SELECT l.tenant_id, 'lead', l.id FROM k JOIN crm.lead l
                ON l.tenant_id = tnt AND l.tenant_id = k.tenant_id AND crm.casefold(l.email) = crm.casefold(k.email)
             WHERE pls_sync.source = 'contact'
            UNION ALL
            SELECT o.tenant_id, 'opportunity', o.id FROM k JOIN crm.opportunity o
                ON o.tenant_id = tnt AND o.tenant_id = k.tenant_id AND o.contact_id = k.key
             WHERE pls_sync.source = 'contact'
            UNION ALL
            SELECT o.tenant_id, 'opportunity', o.id FROM k JOIN crm.opportunity o
                ON o.tenant_id = tnt AND o.tenant_id = k.tenant_id AND o.account_id = k.key
             WHERE pls_sync.source = 'account'
            UNION ALL
            -- a stage added, moved or removed changes what the closed records of its pipeline count
            SELECT l.tenant_id, 'lead', l.id FROM k JOIN crm.lead l
                ON l.tenant_id = tnt AND l.tenant_id = k.tenant_id AND l.pipeline_id = k.key
               AND (l.status <> 'open' OR l.converted_at IS NOT NULL)
             WHERE pls_sync.source = 'stage'
            UNION ALL
            SELECT o.tenant_id, 'opportunity', o.id FROM k JOIN crm.opportunity o
                ON o.tenant_id = tnt AND o.tenant_id = k.tenant_id AND o.pipeline_id = k.key AND o.status <> 'open'
             WHERE pls_sync.source = 'stage'
        )
        SELECT t.tenant_id, t.kind, array_agg(DISTINCT t.id) AS ids
          FROM touched t GROUP BY t.tenant_id, t.kind ORDER BY t.tenant_id, t.kind
    LOOP
        changed := crm.pls_refresh(g.tenant_id, g.kind, g.ids);
        IF coalesce(pg_catalog.current_setting('crm.pls_applying', true), '') <> 'on' THEN
            -- a changed table moves every prediction; otherwise only those of the records touched
            PERFORM crm.pls_apply(g.tenant_id, g.kind, CASE WHEN changed THEN NULL ELSE g.ids END);
        END IF;
    END LOOP;
    END LOOP;
END
$$;
COMMENT ON FUNCTION crm.pls_sync(text, uuid[], uuid[], text[]) IS
    'Internal: refreshes the predictive model and the predictions for the records that rows of a table (lead, opportunity, their tags, contact, account, stage) reach';

CREATE FUNCTION crm.win_model_sync() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_pls_sync'
    LANGUAGE C;
COMMENT ON FUNCTION crm.win_model_sync() IS
    'Statement trigger (arguments: key column, e-mail column): keeps the predictive model and the predicted probabilities exact for the records the statement''s rows reach; runs as the extension owner, for the tenants of those rows only';

DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT * FROM (VALUES ('lead', '''id'''), ('opportunity', '''id'''),
                                   ('lead_tag', '''lead_id'''), ('opportunity_tag', '''opportunity_id'''),
                                   ('contact', '''id'', ''email'''), ('stage', '''pipeline_id''')) v(tbl, args)
    LOOP
        EXECUTE format('CREATE TRIGGER win_model_insert AFTER INSERT ON crm.%I'
                       ' REFERENCING NEW TABLE AS crm_new_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION crm.win_model_sync(%s)', t.tbl, t.args);
        EXECUTE format('CREATE TRIGGER win_model_update AFTER UPDATE ON crm.%I'
                       ' REFERENCING OLD TABLE AS crm_old_rows NEW TABLE AS crm_new_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION crm.win_model_sync(%s)', t.tbl, t.args);
        EXECUTE format('CREATE TRIGGER win_model_delete AFTER DELETE ON crm.%I'
                       ' REFERENCING OLD TABLE AS crm_old_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION crm.win_model_sync(%s)', t.tbl, t.args);
        EXECUTE format('COMMENT ON TRIGGER win_model_insert ON crm.%I IS %L', t.tbl,
                       'Keeps the predictive model and the predicted probabilities exact after an INSERT');
        EXECUTE format('COMMENT ON TRIGGER win_model_update ON crm.%I IS %L', t.tbl,
                       'Keeps the predictive model and the predicted probabilities exact after an UPDATE');
        EXECUTE format('COMMENT ON TRIGGER win_model_delete ON crm.%I IS %L', t.tbl,
                       'Keeps the predictive model and the predicted probabilities exact after a DELETE');
    END LOOP;
END
$$;
CREATE TRIGGER win_model_update AFTER UPDATE ON crm.account
    REFERENCING OLD TABLE AS crm_old_rows NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.win_model_sync('id');
COMMENT ON TRIGGER win_model_update ON crm.account IS
    'Keeps the predictive model exact when an account''s industry, size or rating changes';

ALTER TABLE crm.pls_config ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.pls_config FORCE ROW LEVEL SECURITY;
ALTER TABLE crm.pls_observation ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.pls_observation FORCE ROW LEVEL SECURITY;
ALTER TABLE crm.pls_frequency ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.pls_frequency FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON crm.pls_config
    USING (tenant_id = crm.current_tenant())
    WITH CHECK (tenant_id = crm.current_tenant());
CREATE POLICY tenant_isolation ON crm.pls_observation
    USING (tenant_id = crm.current_tenant())
    WITH CHECK (tenant_id = crm.current_tenant());
CREATE POLICY tenant_isolation ON crm.pls_frequency
    USING (tenant_id = crm.current_tenant())
    WITH CHECK (tenant_id = crm.current_tenant());
COMMENT ON POLICY tenant_isolation ON crm.pls_config IS 'Rows of the tenant the statement acts for (crm.current_tenant()) only';
COMMENT ON POLICY tenant_isolation ON crm.pls_observation IS 'Rows of the tenant the statement acts for (crm.current_tenant()) only';
COMMENT ON POLICY tenant_isolation ON crm.pls_frequency IS 'Rows of the tenant the statement acts for (crm.current_tenant()) only';
