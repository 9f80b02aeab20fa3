-- src/sql/63_outbox.sql: the event outbox (C in src/outbox.c).
--
-- Business events (LeadCreated, OpportunityClosed, ...) are written by C
-- triggers in the same transaction as the change, and by applications with
-- crm.emit_event().  Readers take them in position order with
-- crm.read_events() or through named consumers (crm.subscribe, crm.poll,
-- crm.ack), woken by LISTEN crm_events.
--
-- Position: (the writing transaction's 64-bit id << 24) + the event's
-- number within that transaction.  A reader is handed only events of
-- transactions older than the oldest one still running (the xmin of its
-- snapshot): every transaction that can still write has a larger id, so an
-- event that commits later always gets a larger position than any event
-- already handed out, and a cursor never skips one.  Positions are per
-- node, which on Citus is per tenant (a tenant's rows live on one node).

CREATE TABLE crm.event (
    tenant_id   uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    position    bigint NOT NULL CHECK (position > 0),
    id          uuid NOT NULL DEFAULT crm.uuid_generate_v7(),
    -- a name of at most 63 characters; the length is checked apart from the
    -- pattern, which PostgreSQL runs ten times faster without a bounded
    -- repetition ({0,62}): every row a trigger writes pays these checks
    event_type  text NOT NULL CHECK (event_type ~ '^[A-Z][A-Za-z0-9]*$' AND length(event_type) <= 63),
    entity      text CHECK (entity ~ '^[a-z][a-z0-9_]*$' AND length(entity) <= 63),
    entity_id   uuid,
    payload     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(payload) = 'object'),
    occurred_at timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, position),
    UNIQUE (tenant_id, id)
);
CREATE INDEX event_time_idx ON crm.event (tenant_id, occurred_at);
COMMENT ON TABLE crm.event IS 'The outbox: business events in the order readers get them, written in the same transaction as the change (read with crm.read_events or crm.poll)';
COMMENT ON COLUMN crm.event.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.event.position IS 'Total order of the events: (writing transaction id << 24) + number within the transaction (set by the server)';
COMMENT ON COLUMN crm.event.id IS 'Event id (UUIDv7), stable for deduplication by consumers';
COMMENT ON COLUMN crm.event.event_type IS 'Event name, e.g. LeadCreated, OpportunityClosed, or an application''s own (CamelCase)';
COMMENT ON COLUMN crm.event.entity IS 'Kind of record the event is about: lead, opportunity, activity, ... (NULL for an application event about none)';
COMMENT ON COLUMN crm.event.entity_id IS 'Id of the record the event is about';
COMMENT ON COLUMN crm.event.payload IS 'Event fields as a JSON object (those of shared/seeds/002 for the built-in events)';
COMMENT ON COLUMN crm.event.occurred_at IS 'When the change happened (transaction time)';
COMMENT ON COLUMN crm.event.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.event.updated_at IS 'When the row last changed';

CREATE TABLE crm.event_consumer (
    tenant_id   uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    name        text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$'),
    position    bigint NOT NULL DEFAULT 0 CHECK (position >= 0),
    acked_at    timestamptz,
    role_oid    oid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);
COMMENT ON TABLE crm.event_consumer IS 'Named readers of the outbox with the position they acknowledged (crm.subscribe, crm.poll, crm.ack); written by those functions as the owner only, roles may read it';
COMMENT ON COLUMN crm.event_consumer.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.event_consumer.name IS 'Consumer name, unique within the tenant';
COMMENT ON COLUMN crm.event_consumer.position IS 'Last acknowledged event position: crm.poll returns the events after it; moved on by crm.ack';
COMMENT ON COLUMN crm.event_consumer.acked_at IS 'When crm.ack last moved the position';
COMMENT ON COLUMN crm.event_consumer.role_oid IS 'The role that subscribed (its OID, so the consumer is nobody''s once the role is dropped): only it or an admin of the tenant may poll, ack or unsubscribe (set by the server)';
COMMENT ON COLUMN crm.event_consumer.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.event_consumer.updated_at IS 'When the row last changed';

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['event', 'event_consumer'] LOOP
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

CREATE FUNCTION crm.emit_event(event_type text, payload jsonb, entity text DEFAULT NULL, entity_id uuid DEFAULT NULL)
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'crm_outbox_emit_event'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.emit_event(text, jsonb, text, uuid) IS
    'Writes an application event to the outbox of the current tenant, in the current transaction; returns its position';

-- The bounds of the outbox come from the node that holds the tenant's
-- events: on Citus (issue 9) a position is (transaction id << 24 | n) of
-- the worker holding the tenant's shard, so crm.event_head() and
-- crm.event_limit() route a query to that shard and compute it there
-- (Citus evaluates a routed SELECT's functions on the worker).  A
-- transaction of the coordinator writing through two-phase commit keeps
-- its worker transaction id running until COMMIT PREPARED, so the head of
-- that worker stays below its events until they are readable.
CREATE FUNCTION crm.node_event_head() RETURNS bigint
    AS 'MODULE_PATHNAME', 'crm_outbox_event_head'
    LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION crm.node_event_head() IS
    'The position below which every event of this node is already committed and readable (from the xmin of the snapshot of the calling query, on the node that runs it); crm.read_events filters by it in its query, routed to the tenant''s node on Citus';

CREATE FUNCTION crm.node_event_limit() RETURNS bigint
    AS 'MODULE_PATHNAME', 'crm_outbox_event_limit'
    LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION crm.node_event_limit() IS
    'The position above every event written so far on this node (from its next transaction id)';

-- The tenant's node: on Citus a SELECT of the tenant's row of crm.tenant,
-- routed to its shard; on one node (or for no tenant) this node.
CREATE FUNCTION crm.event_head() RETURNS bigint
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    t uuid;
    h bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension x WHERE x.extname = 'citus') THEN
        t := crm.current_tenant();
        IF t IS NOT NULL THEN
            SELECT crm.node_event_head() INTO h FROM crm.tenant x WHERE x.tenant_id = t;
            IF FOUND THEN
                RETURN h;
            END IF;
        END IF;
    END IF;
    RETURN crm.node_event_head();
END
$$;
COMMENT ON FUNCTION crm.event_head() IS
    'The position below which every event of the current tenant that will ever exist is already committed and readable (from the snapshot''s xmin on the node holding the tenant''s events); crm.read_events hands out only events below it';

CREATE FUNCTION crm.event_limit() RETURNS bigint
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    t uuid;
    h bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension x WHERE x.extname = 'citus') THEN
        t := crm.current_tenant();
        IF t IS NOT NULL THEN
            SELECT crm.node_event_limit() INTO h FROM crm.tenant x WHERE x.tenant_id = t;
            IF FOUND THEN
                RETURN h;
            END IF;
        END IF;
    END IF;
    RETURN crm.node_event_limit();
END
$$;
COMMENT ON FUNCTION crm.event_limit() IS
    'The position above every event of the current tenant written so far (from the next transaction id of the node holding its events); a cursor at or beyond it is from the future';

CREATE FUNCTION crm.read_events(after bigint, max integer DEFAULT 1000)
    RETURNS TABLE ("position" bigint, event_id uuid, event_type text, entity text, entity_id uuid,
                   payload jsonb, occurred_at timestamptz)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    t uuid;
BEGIN
    IF $1 IS NULL OR $2 IS NULL THEN
        RAISE EXCEPTION 'after and max must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF $2 < 1 OR $2 > 100000 THEN
        RAISE EXCEPTION 'max must be between 1 and 100000, not %', $2 USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF $1 < 0 OR $1 >= crm.event_limit() THEN
        RAISE EXCEPTION 'event position % is not a cursor of this database', $1
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A cursor is 0 or the position of an event handed out before; this one is beyond every event written so far.';
    END IF;
    -- the tenant in a variable: Citus routes the query to the tenant's
    -- shard, where crm.node_event_head() reads the snapshot of the scan
    t := crm.current_tenant();
    RETURN QUERY
        SELECT e.position, e.id, e.event_type, e.entity, e.entity_id, e.payload, e.occurred_at
          FROM crm.event e
         WHERE e.tenant_id = t
           AND e.position > $1
           AND e.position < crm.node_event_head()
         ORDER BY e.position
         LIMIT $2;
END
$$;
COMMENT ON FUNCTION crm.read_events(bigint, integer) IS
    'Up to max events of the current tenant after position after, in position order; an event of a transaction that commits later always comes after those already handed out, so a cursor never skips one';

-- Event consumers belong to the role that subscribed (issue 8 item 4): a
-- writer could move another consumer's position (it then skips events) or
-- drop it (crm.purge_events then deletes events it never acknowledged).
-- No role writes crm.event_consumer: subscribe, unsubscribe and ack are C
-- (src/outbox.c) writing it as its owner with the caller's tenant as a
-- parameter; they and poll let only the subscribing role or an admin of the
-- tenant use a consumer (42501 otherwise).

CREATE FUNCTION crm.subscribe(name text, after bigint DEFAULT NULL) RETURNS bigint
    AS 'MODULE_PATHNAME', 'crm_outbox_subscribe'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.subscribe(text, bigint) IS
    'Makes a named consumer of the current tenant''s events starting after position after (default: only events from now on), owned by the acting role; returns its position; an existing consumer is kept as it is (42501 when another role owns it and the caller is no admin)';

CREATE FUNCTION crm.unsubscribe(name text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'crm_outbox_unsubscribe'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.unsubscribe(text) IS
    'Drops a named consumer (its unacknowledged events no longer hold back crm.purge_events); true when it existed. Only the role that subscribed it or an admin of the tenant (42501 otherwise)';

CREATE FUNCTION crm.poll(name text, max integer DEFAULT 1000)
    RETURNS TABLE ("position" bigint, event_id uuid, event_type text, entity text, entity_id uuid,
                   payload jsonb, occurred_at timestamptz)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    pos bigint;
    owner_role oid;
    -- the tenant in a variable: Citus routes the lookup to its shard
    t uuid := crm.current_tenant();
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'consumer name must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- On Citus the consumer is kept and checked on the tenant's node, with
    -- that node's role OIDs (crm.subscribe and crm.ack run there): so is
    -- this (src/shard.c; the twin calls this function there).
    IF crm.shard_call_wanted() THEN
        RETURN QUERY EXECUTE 'SELECT * FROM crm.poll_in_shard($1, $2, $3)' USING t, $1, $2;
        RETURN;
    END IF;
    SELECT c.position, c.role_oid INTO pos, owner_role FROM crm.event_consumer c
     WHERE c.tenant_id = t AND c.name = $1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event consumer "%" does not exist', $1 USING ERRCODE = 'no_data_found',
            HINT = 'Make it with crm.subscribe().';
    END IF;
    -- current_user is the acting role here (the function is not SECURITY DEFINER)
    IF owner_role IS DISTINCT FROM (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)
       AND NOT crm.is_admin() THEN
        RAISE EXCEPTION 'event consumer "%" belongs to another role', $1 USING ERRCODE = 'insufficient_privilege',
            DETAIL = 'Only the role that subscribed it and the tenant''s admins may poll, acknowledge or drop a consumer.';
    END IF;
    RETURN QUERY SELECT * FROM crm.read_events(pos, $2);
END
$$;
COMMENT ON FUNCTION crm.poll(text, integer) IS
    'Up to max events after the consumer''s acknowledged position (the same again until crm.ack moves it on). Only the role that subscribed it or an admin of the tenant (42501 otherwise)';

CREATE FUNCTION crm.ack(name text, "position" bigint) RETURNS bigint
    AS 'MODULE_PATHNAME', 'crm_outbox_ack'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.ack(text, bigint) IS
    'Acknowledges every event of the consumer up to position (never moves back); returns the stored position. Only the role that subscribed it or an admin of the tenant (42501 otherwise)';

CREATE FUNCTION crm.purge_events(older_than interval) RETURNS bigint
    AS 'MODULE_PATHNAME', 'crm_outbox_purge_events'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.purge_events(interval) IS
    'Deletes the current tenant''s events older than older_than that every consumer has acknowledged; returns how many';

-- Events of the records: one C statement trigger per table and event.

CREATE FUNCTION crm.outbox_record_events() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_outbox_record_events'
    LANGUAGE C;
COMMENT ON FUNCTION crm.outbox_record_events() IS
    'Statement trigger: the business events (LeadCreated, LeadConverted, OpportunityCreated, OpportunityStageChanged, OpportunityClosed, ActivityCreated, TaskCompleted) of the rows the statement wrote';

CREATE TRIGGER outbox_insert AFTER INSERT ON crm.lead
    REFERENCING NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.outbox_record_events();
CREATE TRIGGER outbox_update AFTER UPDATE ON crm.lead
    REFERENCING OLD TABLE AS crm_old_rows NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.outbox_record_events();
CREATE TRIGGER outbox_insert AFTER INSERT ON crm.opportunity
    REFERENCING NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.outbox_record_events();
CREATE TRIGGER outbox_update AFTER UPDATE ON crm.opportunity
    REFERENCING OLD TABLE AS crm_old_rows NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.outbox_record_events();
CREATE TRIGGER outbox_insert AFTER INSERT ON crm.activity
    REFERENCING NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.outbox_record_events();
CREATE TRIGGER outbox_update AFTER UPDATE ON crm.activity
    REFERENCING OLD TABLE AS crm_old_rows NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.outbox_record_events();
COMMENT ON TRIGGER outbox_insert ON crm.lead IS 'LeadCreated per new lead';
COMMENT ON TRIGGER outbox_update ON crm.lead IS 'LeadConverted per lead the statement converted';
COMMENT ON TRIGGER outbox_insert ON crm.opportunity IS 'OpportunityCreated per new opportunity (and OpportunityClosed when created closed)';
COMMENT ON TRIGGER outbox_update ON crm.opportunity IS 'OpportunityStageChanged per stage change, OpportunityClosed per opportunity that became won or lost';
COMMENT ON TRIGGER outbox_insert ON crm.activity IS 'ActivityCreated per new activity (and TaskCompleted for a task created completed)';
COMMENT ON TRIGGER outbox_update ON crm.activity IS 'TaskCompleted per task the statement completed';

-- Positions given on the tenant's node (issue 9): crm_outbox_emit (behind
-- crm.emit_event, crm.consume_event, the forecast snapshot's event) writes
-- position 0 when Citus is in the database, and this trigger, fired on the
-- shard, gives the row a position of that node's transaction.  The C
-- statement triggers set positions themselves: the WHEN clause skips them.
CREATE FUNCTION crm.outbox_assign_position() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_outbox_assign_position'
    LANGUAGE C;
COMMENT ON FUNCTION crm.outbox_assign_position() IS
    'Internal: row trigger on crm.event giving a row written with position 0 the next position of the transaction of the node that stores it';
CREATE TRIGGER outbox_assign_position BEFORE INSERT ON crm.event
    FOR EACH ROW WHEN (NEW.position = 0) EXECUTE FUNCTION crm.outbox_assign_position();
COMMENT ON TRIGGER outbox_assign_position ON crm.event IS
    'A position left 0 (an event written from the coordinator on Citus) is given on the node that stores the row';
