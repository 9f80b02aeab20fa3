-- src/sql/91_workflow.sql: workflow rules matched against the event outbox
-- (src/workflow.c), the in-database actions that crm.run_jobs() carries
-- out, inbound events, time conditions and scheduled maintenance.

-- The events a rule may name besides the activity types: the outbox's own
-- (src/sql/63_outbox.sql), the inbound ones crm.consume_event() takes from
-- other systems (seeds/002: offers and orders), and the time conditions
-- that crm.run_time_rules() evaluates.
CREATE TABLE crm.workflow_event (
    code         text PRIMARY KEY CHECK (code ~ '^[A-Z][A-Za-z0-9]{0,62}$'),
    kind         text NOT NULL CHECK (kind IN ('outbox', 'inbound', 'time')),
    description  text NOT NULL,
    is_builtin   boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE crm.workflow_event IS 'Event names a workflow rule may use besides activity type codes (global lookup)';
COMMENT ON COLUMN crm.workflow_event.code IS 'Event name, e.g. LeadQualified';
COMMENT ON COLUMN crm.workflow_event.kind IS 'outbox: written by the CRM; inbound: taken from other systems by crm.consume_event(); time: evaluated by crm.run_time_rules()';
COMMENT ON COLUMN crm.workflow_event.description IS 'When the event happens and what its payload holds';
COMMENT ON COLUMN crm.workflow_event.is_builtin IS 'Shipped by the extension (left out of pg_dump; added rows are dumped)';
COMMENT ON COLUMN crm.workflow_event.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.workflow_event.updated_at IS 'When the row last changed';

INSERT INTO crm.workflow_event (code, kind, description, is_builtin) VALUES
    ('LeadCreated',             'outbox',  'A lead was created {leadId, source, ownerId, createdAt}', true),
    ('LeadConverted',           'outbox',  'A lead was converted {leadId, opportunityId, customerId, contactId, convertedAt}', true),
    ('LeadQualified',           'outbox',  'A lead''s score crossed its model''s threshold upward (once per crossing)', true),
    ('OpportunityCreated',      'outbox',  'An opportunity was created {opportunityId, customerId, leadId, expectedValue, currency, ownerId}', true),
    ('OpportunityStageChanged', 'outbox',  'An opportunity moved {opportunityId, fromStage, toStage}; a rule with a stage fires on entering it', true),
    ('OpportunityClosed',       'outbox',  'An opportunity was won or lost {opportunityId, stage, actualValue, currency, closedAt}', true),
    ('ActivityCreated',         'outbox',  'An activity was recorded {activityId, type, relatedTo, ownerId, dueDate}; an activity type code names those of one type', true),
    ('TaskCompleted',           'outbox',  'A task was completed {taskId, completedBy, completedAt}', true),
    ('ForecastCreated',         'outbox',  'A forecast snapshot was stored', true),
    ('OfferApproved',           'inbound', 'The customer approved an offer {opportunityId, offerId}', true),
    ('OfferRejected',           'inbound', 'The customer rejected an offer {opportunityId, offerId, reason}', true),
    ('OrderCreated',            'inbound', 'An order was placed {opportunityId, orderId, amount}', true),
    ('NoActivityFor',           'time',    'An open opportunity has had no activity for the rule''s days', true),
    ('BeforeExpectedClose',     'time',    'An open opportunity is the rule''s days before its expected close date', true);

CREATE TABLE crm.workflow_rule (
    tenant_id     uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    id            uuid NOT NULL DEFAULT crm.uuid_generate_v7(),
    name          text NOT NULL CHECK (NOT crm.is_blank(name)),
    event         text NOT NULL CHECK (event ~ '^([A-Z][A-Za-z0-9]*|[a-z][a-z0-9_]*)$'),
    stage_id      uuid,
    condition     jsonb NOT NULL DEFAULT '{}',
    action        text NOT NULL REFERENCES crm.job_action (code),
    params        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(params) = 'object'),
    -- at most a century: a job's due time is the event's plus the delay,
    -- and one past the last timestamp would make every matching change fail
    delay         interval NOT NULL DEFAULT '0' CHECK (delay >= interval '0' AND delay <= interval '100 years'),
    debounce      interval CHECK (debounce > interval '0' AND debounce <= interval '100 years'),
    days          integer CHECK (days BETWEEN 1 AND 3650),  -- with a time condition only
    max_attempts  integer NOT NULL DEFAULT 5 CHECK (max_attempts BETWEEN 1 AND 100),
    active        boolean NOT NULL DEFAULT true,
    builtin_key   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, stage_id) REFERENCES crm.stage (tenant_id, id) ON DELETE CASCADE,
    UNIQUE (tenant_id, builtin_key),
    CONSTRAINT workflow_rule_stage_event_check CHECK (stage_id IS NULL OR event = 'OpportunityStageChanged'),
    CONSTRAINT workflow_rule_days_event_check
        CHECK ((days IS NOT NULL) = (event IN ('NoActivityFor', 'BeforeExpectedClose')))
);
CREATE INDEX workflow_rule_active_idx ON crm.workflow_rule (tenant_id, event) WHERE active;
CREATE INDEX workflow_rule_stage_idx ON crm.workflow_rule (tenant_id, stage_id);
COMMENT ON TABLE crm.workflow_rule IS 'A tenant''s automation: when an event matches (and its condition holds), enqueue a job in the same transaction';
COMMENT ON COLUMN crm.workflow_rule.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.workflow_rule.id IS 'Row id (UUIDv7)';
COMMENT ON COLUMN crm.workflow_rule.name IS 'What the rule is for';
COMMENT ON COLUMN crm.workflow_rule.event IS 'An event of crm.workflow_event (e.g. LeadQualified, OrderCreated, NoActivityFor) or an activity type code (e.g. quote_created: its ActivityCreated events)';
COMMENT ON COLUMN crm.workflow_rule.stage_id IS 'With OpportunityStageChanged: fire only on entering this stage';
COMMENT ON COLUMN crm.workflow_rule.condition IS 'Condition over the event payload: {} (always), {"all"|"any": [...]}, {"not": c}, {"field": "a.b", "op": "=", "value": v}; checked by crm.validate_rule()';
COMMENT ON COLUMN crm.workflow_rule.action IS 'The job''s action (crm.job_action)';
COMMENT ON COLUMN crm.workflow_rule.params IS 'The job''s parameters; the job also gets event_type, event_id and the event payload';
COMMENT ON COLUMN crm.workflow_rule.delay IS 'The job is due this long after the event (0 to 100 years)';
COMMENT ON COLUMN crm.workflow_rule.debounce IS 'At most one job of this rule per record within this window (NULL: no window; at most 100 years)';
COMMENT ON COLUMN crm.workflow_rule.days IS 'Days of a time condition (NoActivityFor, BeforeExpectedClose)';
COMMENT ON COLUMN crm.workflow_rule.max_attempts IS 'Attempts of each job before it is dead';
COMMENT ON COLUMN crm.workflow_rule.active IS 'Inactive rules never fire (the defaults that need an external service start inactive)';
COMMENT ON COLUMN crm.workflow_rule.builtin_key IS 'Which default rule of crm.create_tenant() this is; NULL for rules a user made';
COMMENT ON COLUMN crm.workflow_rule.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.workflow_rule.updated_at IS 'When the row last changed';

-- When a debounced rule last fired for a record: the upsert of
-- src/workflow.c takes the row only once the window has passed.
CREATE TABLE crm.job_debounce (
    tenant_id   uuid NOT NULL DEFAULT crm.current_tenant(),
    rule_id     uuid NOT NULL,
    subject_id  uuid NOT NULL,
    last_at     timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, rule_id, subject_id),
    FOREIGN KEY (tenant_id, rule_id) REFERENCES crm.workflow_rule (tenant_id, id) ON DELETE CASCADE
);
COMMENT ON TABLE crm.job_debounce IS 'When each debounced rule last made a job for a record (its contact, else the event''s record); written by the rule trigger only';
COMMENT ON COLUMN crm.job_debounce.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.job_debounce.rule_id IS 'The rule';
COMMENT ON COLUMN crm.job_debounce.subject_id IS 'The record: the job''s contact, else the event''s record';
COMMENT ON COLUMN crm.job_debounce.last_at IS 'When the rule last made a job for it (set by the server)';
COMMENT ON COLUMN crm.job_debounce.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.job_debounce.updated_at IS 'When the row last changed';

CREATE FUNCTION crm.validate_rule(condition jsonb) RETURNS TABLE (path text, problem text)
    AS 'MODULE_PATHNAME', 'crm_workflow_validate_rule'
    LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION crm.validate_rule(jsonb) IS
    'Every problem of a rule condition at once, as (JSON path, problem); no rows means it is valid';

CREATE FUNCTION crm.workflow_rule_check() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_workflow_rule_check'
    LANGUAGE C;
COMMENT ON FUNCTION crm.workflow_rule_check() IS
    'Trigger: a rule whose condition does not validate is refused (22023) with its first problem';
CREATE TRIGGER workflow_rule_check BEFORE INSERT OR UPDATE ON crm.workflow_rule
    FOR EACH ROW EXECUTE FUNCTION crm.workflow_rule_check();
COMMENT ON TRIGGER workflow_rule_check ON crm.workflow_rule IS 'Refuses a rule whose condition does not validate';

-- An event name must exist: the foreign key cannot say "this table or
-- crm.activity_type", so a constraint trigger says it with the same 23503.
CREATE FUNCTION crm.workflow_rule_event_exists() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM crm.workflow_event e WHERE e.code = NEW.event)
       AND NOT EXISTS (SELECT 1 FROM crm.activity_type t WHERE t.code = NEW.event) THEN
        RAISE EXCEPTION 'workflow event "%" does not exist', NEW.event
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'A rule names an event of crm.workflow_event or an activity type of crm.activity_type.';
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm.workflow_rule_event_exists() IS
    'Trigger: a rule''s event is a known workflow event or activity type (23503 otherwise)';
CREATE CONSTRAINT TRIGGER workflow_rule_event_exists AFTER INSERT OR UPDATE OF event ON crm.workflow_rule
    FOR EACH ROW EXECUTE FUNCTION crm.workflow_rule_event_exists();
COMMENT ON TRIGGER workflow_rule_event_exists ON crm.workflow_rule IS 'A rule names a known event or activity type';

CREATE FUNCTION crm.workflow_match() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_workflow_match'
    LANGUAGE C;
COMMENT ON FUNCTION crm.workflow_match() IS
    'Statement trigger on crm.event: matches the new events against the tenant''s active rules and enqueues their jobs (idempotency key: UUID v5 of rule and event)';
CREATE TRIGGER workflow_match AFTER INSERT ON crm.event
    REFERENCING NEW TABLE AS crm_new_events
    FOR EACH STATEMENT EXECUTE FUNCTION crm.workflow_match();
COMMENT ON TRIGGER workflow_match ON crm.event IS 'Workflow rules fire on the events of the statement, in its transaction';

-- Inbound events --------------------------------------------------------

CREATE TABLE crm.inbound_event (
    tenant_id    uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    external_id  text NOT NULL CHECK (length(external_id) BETWEEN 1 AND 500),
    event_type   text NOT NULL,
    position     bigint NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, external_id)
);
COMMENT ON TABLE crm.inbound_event IS 'Events taken from other systems by crm.consume_event(), by their external id: one delivered twice is taken once (written by the server only: roles may read it)';
COMMENT ON COLUMN crm.inbound_event.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.inbound_event.external_id IS 'The sending system''s id of the event';
COMMENT ON COLUMN crm.inbound_event.event_type IS 'The event''s type';
COMMENT ON COLUMN crm.inbound_event.position IS 'Its position in crm.event';
COMMENT ON COLUMN crm.inbound_event.created_at IS 'When it was taken';
COMMENT ON COLUMN crm.inbound_event.updated_at IS 'When the row last changed';

-- C (src/workflow.c): the checks run with the caller's rights, the ledger
-- is read and written as its owner (no role writes it: issue 8 item 4, a
-- writer could pre-claim an external id so that the real event is ignored).
CREATE FUNCTION crm.consume_event(type text, payload jsonb, external_id text) RETURNS bigint
    AS 'MODULE_PATHNAME', 'crm_workflow_consume_event'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.consume_event(text, jsonb, text) IS
    'Takes an event from another system (OfferApproved, OfferRejected, OrderCreated) into the outbox, where rules match it; returns its position, or NULL when an event with the same external_id was already taken. '
    'The only way in for inbound event types (crm.emit_event refuses them); the ledger crm.inbound_event is written by the server only';

-- Idempotency keys ---------------------------------------------------------

CREATE FUNCTION crm.idempotency_key(VARIADIC parts text[]) RETURNS uuid
    AS 'MODULE_PATHNAME', 'crm_workflow_idempotency_key'
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION crm.idempotency_key(text[]) IS
    'A name-based UUID (version 5, SHA-1) of the given parts: the same parts always give the same key, for crm.enqueue_job(idempotency_key => ...)';

-- In-database actions ----------------------------------------------------

CREATE FUNCTION crm.run_jobs(max integer DEFAULT 100) RETURNS integer
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    tenants uuid[];
    t uuid;
    j crm.job;
    p jsonb;
    opp uuid;
    ld uuid;
    ct uuid;
    acc uuid;
    target uuid;
    tag uuid;
    rows bigint;
    kind text;
    rec uuid;
    done integer := 0;
    caller_tenant text := current_setting('crm.tenant_id', true);
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'max must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF $1 <= 0 THEN
        RAISE EXCEPTION 'max must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The operator's scheduled run acts for every tenant with due jobs; an
    -- application runs its own tenant's.
    IF crm.current_tenant() IS NOT NULL THEN
        tenants := ARRAY[crm.current_tenant()];
    ELSIF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER) THEN
        SELECT array_agg(DISTINCT q.tenant_id) INTO tenants FROM crm.job q
         WHERE q.queue = 'crm' AND q.locked_by IS NULL AND q.run_at <= now();
    ELSE
        RAISE EXCEPTION 'running jobs needs a tenant, and this session acts for none'
            USING ERRCODE = 'insufficient_privilege';
    END IF;

    FOREACH t IN ARRAY coalesce(tenants, '{}') LOOP
        PERFORM set_config('crm.tenant_id', t::text, true);
        FOR j IN SELECT * FROM crm.claim_jobs('crm', 'crm.run_jobs', $1 - done, '5 minutes') LOOP
            p := j.params;
            BEGIN
                opp := coalesce(CASE WHEN j.source_entity = 'opportunity' THEN j.source_id END,
                                (p->'payload'->>'opportunityId')::uuid,
                                (p->'payload'->'relatedTo'->>'opportunityId')::uuid);
                ld := coalesce(CASE WHEN j.source_entity = 'lead' THEN j.source_id END,
                               (p->'payload'->>'leadId')::uuid,
                               (p->'payload'->'relatedTo'->>'leadId')::uuid);
                ct := coalesce(j.contact_id, (p->'payload'->'relatedTo'->>'contactId')::uuid);
                acc := coalesce(CASE WHEN j.source_entity = 'account' THEN j.source_id END,
                                (p->'payload'->'relatedTo'->>'accountId')::uuid);
                -- the record move_stage, set_probability and set_field act on
                kind := CASE WHEN opp IS NOT NULL THEN 'opportunity' WHEN ld IS NOT NULL THEN 'lead' END;
                rec := coalesce(opp, ld);
                CASE j.action
                WHEN 'create_task' THEN
                    INSERT INTO crm.activity (tenant_id, activity_type, subject, status, due_at, contact_id,
                                              account_id, lead_id, opportunity_id, owner_id, details)
                    VALUES (t, coalesce(p->>'activity_type', 'task'), coalesce(p->>'subject', 'Follow up'),
                            'scheduled', now() + coalesce((p->>'due_in')::interval, interval '0'),
                            ct, acc, ld, opp,
                            coalesce((p->>'owner_id')::uuid,
                                     (SELECT o.owner_id FROM crm.opportunity o WHERE o.tenant_id = t AND o.id = opp),
                                     (SELECT l.owner_id FROM crm.lead l WHERE l.tenant_id = t AND l.id = ld)),
                            jsonb_build_object('job_id', j.id, 'rule_id', j.rule_id));
                WHEN 'move_stage' THEN
                    -- the source opportunity, else the source lead; an action
                    -- that changes nothing fails (and is retried, then dead)
                    -- rather than report itself done
                    IF kind IS NULL THEN
                        RAISE EXCEPTION 'move_stage needs an opportunity or a lead' USING ERRCODE = 'no_data_found';
                    END IF;
                    EXECUTE format('SELECT s.id FROM crm.stage s JOIN crm.%I r'
                                   ' ON r.tenant_id = s.tenant_id AND r.pipeline_id = s.pipeline_id'
                                   ' WHERE r.tenant_id = $1 AND r.id = $2'
                                   ' AND (s.id::text = $3 OR crm.casefold(s.name) = crm.casefold($3))', kind)
                      INTO target USING t, rec, p->>'stage';
                    IF target IS NULL THEN
                        RAISE EXCEPTION 'no stage "%" in the pipeline of % %', p->>'stage', kind, rec
                            USING ERRCODE = 'no_data_found';
                    END IF;
                    EXECUTE format('SELECT crm.%I($1, $2)', kind || '_move_stage') USING rec, target;
                WHEN 'mark_won' THEN
                    IF opp IS NULL THEN
                        RAISE EXCEPTION 'mark_won needs an opportunity' USING ERRCODE = 'no_data_found';
                    END IF;
                    PERFORM crm.opportunity_mark_won(opp);
                WHEN 'set_probability' THEN
                    IF kind IS NULL THEN
                        RAISE EXCEPTION 'set_probability needs an opportunity or a lead' USING ERRCODE = 'no_data_found';
                    END IF;
                    IF p->'probability' IS NULL AND p->'delta' IS NULL THEN
                        RAISE EXCEPTION 'set_probability needs "probability" or "delta"' USING ERRCODE = 'invalid_parameter_value';
                    END IF;
                    -- set by hand: manual, so that a stage move keeps it; only
                    -- on a record still open
                    EXECUTE format('UPDATE crm.%I r SET probability = least(100, greatest(0,'
                                   ' coalesce($3::numeric, r.probability + $4::numeric))), probability_mode = ''manual'''
                                   ' WHERE r.tenant_id = $1 AND r.id = $2 AND %s', kind,
                                   CASE kind WHEN 'opportunity' THEN 'r.status = ''open'''
                                             ELSE 'r.converted_at IS NULL AND r.closed_at IS NULL' END)
                      USING t, rec, p->>'probability', p->>'delta';
                    GET DIAGNOSTICS rows = ROW_COUNT;
                    IF rows = 0 THEN
                        RAISE EXCEPTION '% % is not open', kind, rec USING ERRCODE = 'object_not_in_prerequisite_state';
                    END IF;
                WHEN 'add_tag' THEN
                    -- no conflict target: the only key a new tag can meet is
                    -- its name's (its id is new), and Citus cannot match an
                    -- expression index's target on the shard
                    INSERT INTO crm.tag (tenant_id, name) VALUES (t, p->>'tag')
                    ON CONFLICT DO NOTHING;
                    SELECT g.id INTO tag FROM crm.tag g WHERE g.tenant_id = t AND crm.casefold(g.name) = crm.casefold(p->>'tag');
                    IF opp IS NOT NULL THEN
                        INSERT INTO crm.opportunity_tag (tenant_id, opportunity_id, tag_id) VALUES (t, opp, tag)
                        ON CONFLICT DO NOTHING;
                    ELSIF ld IS NOT NULL THEN
                        INSERT INTO crm.lead_tag (tenant_id, lead_id, tag_id) VALUES (t, ld, tag) ON CONFLICT DO NOTHING;
                    ELSIF ct IS NOT NULL THEN
                        INSERT INTO crm.contact_tag (tenant_id, contact_id, tag_id) VALUES (t, ct, tag) ON CONFLICT DO NOTHING;
                    ELSE
                        RAISE EXCEPTION 'add_tag needs an opportunity, lead or contact' USING ERRCODE = 'no_data_found';
                    END IF;
                WHEN 'set_field' THEN
                    IF kind IS NULL THEN
                        RAISE EXCEPTION 'set_field needs an opportunity or a lead' USING ERRCODE = 'no_data_found';
                    END IF;
                    IF p->>'field' IS NULL THEN
                        RAISE EXCEPTION 'set_field needs "field"' USING ERRCODE = 'invalid_parameter_value';
                    END IF;
                    -- a column the user may set, else a user field in custom
                    IF p->>'field' = ANY (CASE kind
                            WHEN 'opportunity' THEN ARRAY['priority', 'next_step', 'description', 'expected_close_date', 'forecast_category']
                            ELSE ARRAY['priority', 'description', 'rating', 'source'] END) THEN
                        EXECUTE format('UPDATE crm.%I r SET %I = $1 WHERE r.tenant_id = $2 AND r.id = $3', kind, p->>'field')
                          USING p->>'value', t, rec;
                    ELSE
                        EXECUTE format('UPDATE crm.%I r SET custom = r.custom || jsonb_build_object($1, $2)'
                                       ' WHERE r.tenant_id = $3 AND r.id = $4', kind)
                          USING p->>'field', p->'value', t, rec;
                    END IF;
                    GET DIAGNOSTICS rows = ROW_COUNT;
                    IF rows = 0 THEN
                        RAISE EXCEPTION 'the record of job % no longer exists', j.id USING ERRCODE = 'no_data_found';
                    END IF;
                WHEN 'create_opportunity' THEN
                    INSERT INTO crm.opportunity (tenant_id, name, account_id, contact_id, amount, currency)
                    VALUES (t, coalesce(p->>'name', 'New opportunity'),
                            coalesce(acc, (SELECT c.account_id FROM crm.contact c WHERE c.tenant_id = t AND c.id = ct)),
                            ct, coalesce((p->>'amount')::numeric, 0),
                            coalesce(p->>'currency', (SELECT d.default_currency FROM crm.tenant d WHERE d.tenant_id = t)));
                ELSE
                    RAISE EXCEPTION 'action "%" does not run in the database', j.action
                        USING ERRCODE = 'invalid_parameter_value';
                END CASE;
                PERFORM crm.complete_job(j.id, jsonb_build_object('done', j.action), 'crm.run_jobs');
                done := done + 1;
            EXCEPTION WHEN OTHERS THEN
                -- the action's work is rolled back; the job retries later
                PERFORM crm.fail_job(j.id, SQLSTATE || ': ' || SQLERRM, 'crm.run_jobs');
            END;
        END LOOP;
        EXIT WHEN done >= $1;
    END LOOP;
    -- the session acts for the tenant it acted for before (none, for the
    -- operator's run), not for the last one served
    PERFORM set_config('crm.tenant_id', coalesce(caller_tenant, ''), true);
    RETURN done;
END
$$;
COMMENT ON FUNCTION crm.run_jobs(integer) IS
    'Runs up to max due jobs of the queue crm (create_task, move_stage, mark_won, set_probability, add_tag, set_field, create_opportunity), each in its own subtransaction: done jobs complete, failing ones are retried with backoff; returns how many completed. Without a tenant (a superuser''s scheduled run) it serves every tenant';

-- Time conditions ----------------------------------------------------------

CREATE FUNCTION crm.rule_condition_holds(rule uuid, payload jsonb) RETURNS boolean
    AS 'MODULE_PATHNAME', 'crm_workflow_rule_condition_holds'
    LANGUAGE C STABLE;
COMMENT ON FUNCTION crm.rule_condition_holds(uuid, jsonb) IS
    'Does the condition of the current tenant''s rule hold for the payload (as the rule triggers evaluate it)? crm.run_time_rules() asks it for each record a time rule would fire for';

CREATE FUNCTION crm.run_time_rules(as_of timestamptz DEFAULT now()) RETURNS integer
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    tenants uuid[];
    t uuid;
    r crm.workflow_rule;
    o record;
    n integer := 0;
    caller_tenant text := current_setting('crm.tenant_id', true);
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'as_of must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF crm.current_tenant() IS NOT NULL THEN
        tenants := ARRAY[crm.current_tenant()];
    ELSIF (SELECT x.rolsuper FROM pg_catalog.pg_roles x WHERE x.rolname = CURRENT_USER) THEN
        SELECT array_agg(DISTINCT w.tenant_id) INTO tenants FROM crm.workflow_rule w
         WHERE w.active AND w.event IN ('NoActivityFor', 'BeforeExpectedClose');
    ELSE
        RAISE EXCEPTION 'running time rules needs a tenant, and this session acts for none'
            USING ERRCODE = 'insufficient_privilege';
    END IF;

    FOREACH t IN ARRAY coalesce(tenants, '{}') LOOP
        PERFORM set_config('crm.tenant_id', t::text, true);
        FOR r IN SELECT * FROM crm.workflow_rule w
                  WHERE w.tenant_id = t AND w.active AND w.event IN ('NoActivityFor', 'BeforeExpectedClose')
                  ORDER BY w.id
        LOOP
            -- Each firing is keyed by what makes it new (the last activity,
            -- the close date), so a rule fires once per quiet spell and once
            -- per close date however often this runs.
            FOR o IN
                SELECT d.id, d.contact_id, d.owner_id,
                       CASE r.event WHEN 'NoActivityFor' THEN coalesce(last.at, d.created_at)::text
                                    ELSE d.expected_close_date::text END AS moment,
                       -- what the rule's condition and the job see of the deal
                       jsonb_build_object('opportunityId', d.id, 'pipelineId', d.pipeline_id, 'stageId', d.stage_id,
                                          'amount', d.amount, 'currency', d.currency, 'probability', d.probability,
                                          'priority', d.priority, 'ownerId', d.owner_id,
                                          'expectedCloseDate', d.expected_close_date,
                                          'lastActivityAt', last.at) AS payload
                  FROM crm.opportunity d
                  LEFT JOIN LATERAL (SELECT max(a.occurred_at) AS at FROM crm.activity a
                                      WHERE a.tenant_id = d.tenant_id AND a.opportunity_id = d.id) last ON true
                 WHERE d.tenant_id = t AND d.status = 'open' AND d.archived_at IS NULL
                   AND CASE r.event
                       WHEN 'NoActivityFor' THEN coalesce(last.at, d.created_at) <= $1 - make_interval(days => r.days)
                       ELSE d.expected_close_date - r.days <= $1::date AND d.expected_close_date >= $1::date END
                 ORDER BY d.id
            LOOP
                -- the rule's condition, as for every rule
                CONTINUE WHEN NOT crm.rule_condition_holds(r.id, o.payload);
                -- and its debounce: at most one job per deal and rule within the window
                CONTINUE WHEN r.debounce IS NOT NULL AND (
                    EXISTS (SELECT 1 FROM crm.job j WHERE j.tenant_id = t AND j.source_id = o.id
                               AND j.rule_id = r.id AND j.created_at > now() - r.debounce)
                    OR EXISTS (SELECT 1 FROM crm.job_archive x WHERE x.tenant_id = t AND x.source_id = o.id
                                  AND x.rule_id = r.id AND x.enqueued_at > now() - r.debounce));
                PERFORM crm.enqueue_job(r.action,
                                        r.params || jsonb_build_object('event_type', r.event, 'payload', o.payload),
                                        o.contact_id, $1 + r.delay,
                                        crm.idempotency_key(r.id::text, o.id::text, o.moment),
                                        'opportunity', o.id, r.id, r.max_attempts);
                n := n + 1;
            END LOOP;
        END LOOP;
    END LOOP;
    -- as crm.run_jobs: the caller's own tenant setting again
    PERFORM set_config('crm.tenant_id', coalesce(caller_tenant, ''), true);
    RETURN n;
END
$$;
COMMENT ON FUNCTION crm.run_time_rules(timestamptz) IS
    'Fires the time-condition rules (NoActivityFor: an open opportunity quiet for days; BeforeExpectedClose: days before its close date) as of a time, once per quiet spell or close date; returns how many matches it saw. Without a tenant (a superuser''s scheduled run) it serves every tenant';

-- Default rules -------------------------------------------------------------

-- The automated triggers of seeds/000 and the workflows of seeds/002 as a
-- new tenant's rules.  Rules whose action needs an external service (an
-- e-mail provider, billing) start inactive: an operator turns them on once
-- a worker serves their queue.
CREATE FUNCTION crm.create_default_rules(tenant uuid) RETURNS integer
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    n integer;
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'tenant must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    INSERT INTO crm.workflow_rule AS w (tenant_id, builtin_key, name, event, action, params, delay, active)
    VALUES
        ($1, 'quote_confirmation', 'Quote created: send the confirmation e-mail', 'quote_created',
         'send_email', '{"template": "quote_confirmation"}', interval '0', false),
        ($1, 'quote_follow_up', 'Quote created: follow up in 2 days', 'quote_created',
         'create_task', '{"subject": "Follow up on the quote", "due_in": "2 days"}', interval '0', true),
        ($1, 'project_feedback', 'Project completed: request feedback', 'project_completed',
         'feedback_request', '{"template": "project_feedback"}', interval '0', false),
        ($1, 'project_invoice', 'Project completed: generate the invoice', 'project_completed',
         'invoice', '{}', interval '0', false),
        ($1, 'payment_won', 'Payment received: mark the deal won', 'payment_received',
         'mark_won', '{}', interval '0', true),
        ($1, 'payment_receipt', 'Payment received: send the receipt', 'payment_received',
         'receipt', '{"template": "payment_receipt"}', interval '0', false),
        ($1, 'lead_qualified_task', 'Lead qualified: qualification call within a day', 'LeadQualified',
         'create_task', '{"subject": "Qualification call", "due_in": "1 day"}', interval '0', true),
        ($1, 'stage_changed_notify', 'Stage changed: notify the owner', 'OpportunityStageChanged',
         'notify', '{"message": "Your opportunity moved to a new stage"}', interval '0', false),
        ($1, 'offer_approved', 'Offer approved: move the deal to Negotiation', 'OfferApproved',
         'move_stage', '{"stage": "Negotiation"}', interval '0', true),
        ($1, 'offer_rejected', 'Offer rejected: lower the deal''s probability by 20', 'OfferRejected',
         'set_probability', '{"delta": -20}', interval '0', true),
        ($1, 'order_won', 'Order created: mark the deal won', 'OrderCreated',
         'mark_won', '{}', interval '0', true),
        ($1, 'order_follow_up', 'Order created: follow up in 2 days', 'OrderCreated',
         'create_task', '{"subject": "Order follow-up", "due_in": "2 days"}', interval '0', true)
    ON CONFLICT (tenant_id, builtin_key) DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;

    -- seeds/002: a stage change creates the stage's tasks: entering Proposal
    -- or Negotiation of the default pipeline asks for the next step.
    INSERT INTO crm.workflow_rule AS w (tenant_id, builtin_key, name, event, stage_id, action, params)
    SELECT $1, 'stage_task_' || lower(s.name), 'Entered ' || s.name || ': ' || x.subject, 'OpportunityStageChanged',
           s.id, 'create_task', jsonb_build_object('subject', x.subject, 'due_in', '1 day')
      FROM crm.pipeline p
      JOIN crm.stage s ON s.tenant_id = p.tenant_id AND s.pipeline_id = p.id
      JOIN (VALUES ('Proposal', 'Send the proposal'), ('Negotiation', 'Agree the terms')) x(stage, subject)
        ON s.name = x.stage
     WHERE p.tenant_id = $1 AND p.is_default
    ON CONFLICT (tenant_id, builtin_key) DO NOTHING;
    RETURN n;
END
$$;
COMMENT ON FUNCTION crm.create_default_rules(uuid) IS
    'Internal: gives a tenant the default rules of seeds/000 and seeds/002 (called by crm.create_tenant); idempotent; those needing an external service start inactive';

-- Scheduled maintenance ---------------------------------------------------

CREATE FUNCTION crm.schedule_maintenance() RETURNS SETOF text
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    job record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension e WHERE e.extname = 'pg_cron') THEN
        RAISE EXCEPTION 'pg_cron is not installed in this database'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Install pg_cron (Debian: postgresql-15-cron), add it to shared_preload_libraries, set cron.database_name to this database and CREATE EXTENSION pg_cron.';
    END IF;
    FOR job IN
        SELECT * FROM (VALUES
            ('crm-run-jobs',      '* * * * *',  'SELECT crm.run_jobs(1000)'),
            ('crm-reap-leases',   '* * * * *',  'SELECT crm.reap_expired_leases()'),
            ('crm-time-rules',    '7 * * * *',  'SELECT crm.run_time_rules()'),
            ('crm-purge-jobs',    '17 3 * * *', 'SELECT crm.purge_jobs(''30 days'')'),
            ('crm-purge-events',  '27 3 * * *', 'SELECT crm.purge_events(''30 days'')')) j(name, schedule, command)
        UNION ALL
        -- the weekly forecast snapshot, once forecasting is installed
        SELECT 'crm-forecast-snapshot', '0 5 * * 1',
               'SELECT crm.snapshot_forecast_all()'
         WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_proc f
                        WHERE f.pronamespace = 'crm'::regnamespace AND f.proname = 'snapshot_forecast_all')
    LOOP
        -- cron.schedule() with a name replaces that job: running this
        -- again leaves one job of each name.
        EXECUTE 'SELECT cron.schedule($1, $2, $3)' USING job.name, job.schedule, job.command;
        RETURN NEXT job.name;
    END LOOP;
END
$$;
COMMENT ON FUNCTION crm.schedule_maintenance() IS
    'With pg_cron in this database: schedules crm.run_jobs and the lease reaper every minute, the time rules hourly, purges of jobs and events daily (and the weekly forecast snapshot when forecasting is installed); idempotent; returns the job names';

CREATE FUNCTION crm.unschedule_maintenance() RETURNS SETOF text
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    name text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension e WHERE e.extname = 'pg_cron') THEN
        RAISE EXCEPTION 'pg_cron is not installed in this database'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    FOR name IN EXECUTE 'SELECT jobname FROM cron.job WHERE jobname LIKE ''crm-%'' ORDER BY jobname' LOOP
        EXECUTE 'SELECT cron.unschedule($1)' USING name;
        RETURN NEXT name;
    END LOOP;
END
$$;
COMMENT ON FUNCTION crm.unschedule_maintenance() IS
    'Removes the pg_cron jobs of crm.schedule_maintenance(); returns their names';

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['workflow_rule', 'inbound_event', 'job_debounce'] LOOP
        EXECUTE format('ALTER TABLE crm.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE crm.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON crm.%I'
                       ' USING (tenant_id = crm.current_tenant())'
                       ' WITH CHECK (tenant_id = crm.current_tenant())', t);
        EXECUTE format('COMMENT ON POLICY tenant_isolation ON crm.%I IS %L', t,
                       'Rows of the tenant the statement acts for (crm.current_tenant()) only');
    END LOOP;
END
$$;
