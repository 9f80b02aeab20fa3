-- src/sql/93_private_3_outbox.sql: private visibility of derived tables (issue 8 item 3,
-- second pass; the recipe of src/sql/90_security.sql: visible_to kept by
-- crm.visibility_row, found by crm.visibility_propagate, one policy).
--
-- crm.event: an event about a lead, opportunity, contact, account, activity
-- or forecast snapshot follows that row; an event about none (or about an
-- application's own entity) stays visible to the whole tenant.

-- Events and jobs are also read by an application role acting for the
-- tenant as no CRM user (crm.is_service()): the relay of the outbox and the
-- workers of the queue serve the whole tenant.  Such a role names its
-- tenant and its CRM user itself, so this gives it nothing it could not
-- take by naming a manager.
CREATE FUNCTION crm.is_service() RETURNS boolean
    AS 'MODULE_PATHNAME', 'crm_tenant_is_service'
    LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION crm.is_service() IS
    'True when the current role (outside SECURITY DEFINER functions) is an application role (crm_app member) acting for its tenant as no CRM user: a worker or relay serving the whole tenant; events and jobs of a private tenant are all visible to it';

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['event'] LOOP
        EXECUTE format('ALTER TABLE crm.%I ADD COLUMN visible_to uuid[]', t);
        EXECUTE format('COMMENT ON COLUMN crm.%I.visible_to IS %L', t,
                       'CRM users who see the row in a private tenant besides crm_admin; NULL: every user of the tenant '
                       || CASE t WHEN 'revenue_forecast' THEN '(the chain of the user who took the snapshot; empty: admins only, when an admin took it)'
                                 WHEN 'event' THEN '(follows the record the event is about)'
                                 WHEN 'job' THEN '(follows the record and the contact the job is about)'
                                 WHEN 'job_archive' THEN '(follows the record and the contact the job is about)'
                                 ELSE '(follows the record it hangs off)' END
                       || ' (set by the server; a client value is ignored)');
    END LOOP;
END
$$;

-- What propagation looks up when a record's visibility changes.
CREATE INDEX event_entity_idx ON crm.event (tenant_id, entity_id) WHERE entity_id IS NOT NULL;
CREATE TRIGGER visibility BEFORE INSERT OR UPDATE OF visible_to, entity, entity_id ON crm.event
    FOR EACH ROW EXECUTE FUNCTION crm.visibility_row('event', 'history', 'entity_id=@entity');
COMMENT ON TRIGGER visibility ON crm.event IS 'visible_to from the record the event is about (entity, entity_id)';

-- Events about an activity follow the activity, whose visibility changes
-- with its records' and its owner's.
CREATE TRIGGER visibility_propagate AFTER UPDATE ON crm.activity FOR EACH ROW
    WHEN (OLD.visible_to IS DISTINCT FROM NEW.visible_to)
    EXECUTE FUNCTION crm.visibility_propagate('activity');
COMMENT ON TRIGGER visibility_propagate ON crm.activity IS 'Events and jobs about the activity follow its visibility';

DO $$
DECLARE
    t text;
    predicate text;
BEGIN
    FOREACH t IN ARRAY ARRAY['event'] LOOP
        predicate := 'tenant_id = crm.current_tenant() AND (visible_to IS NULL OR crm.current_user_id() = ANY (visible_to)'
                     || ' OR crm.is_admin() OR crm.is_service())';
        EXECUTE format('DROP POLICY tenant_isolation ON crm.%I', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON crm.%I USING (%s) WITH CHECK (%s)', t, predicate, predicate);
        EXECUTE format('COMMENT ON POLICY tenant_isolation ON crm.%I IS %L', t,
                       'Rows of the tenant the statement acts for (crm.current_tenant()) only; in a private tenant, those the user sees (visible_to), all for crm_admin and for an application role acting as no CRM user (crm.is_service())');
    END LOOP;
END
$$;
