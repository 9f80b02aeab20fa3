-- src/sql/93_private_4_queue.sql: private visibility of derived tables (issue 8 item 3,
-- second pass; the recipe of src/sql/90_security.sql: visible_to kept by
-- crm.visibility_row, found by crm.visibility_propagate, one policy).
--
-- crm.job, crm.job_archive follow source_entity/source_id and contact_id.

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['job', 'job_archive'] LOOP
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

CREATE INDEX job_source_idx ON crm.job (tenant_id, source_id) WHERE source_id IS NOT NULL;
CREATE INDEX job_contact_idx ON crm.job (tenant_id, contact_id) WHERE contact_id IS NOT NULL;
CREATE INDEX job_archive_source_idx ON crm.job_archive (tenant_id, source_id) WHERE source_id IS NOT NULL;
CREATE INDEX job_archive_contact_idx ON crm.job_archive (tenant_id, contact_id) WHERE contact_id IS NOT NULL;
CREATE TRIGGER visibility BEFORE INSERT OR UPDATE OF visible_to, source_entity, source_id, contact_id ON crm.job
    FOR EACH ROW EXECUTE FUNCTION crm.visibility_row('job', 'history', 'source_id=@source_entity', 'contact_id=contact');
CREATE TRIGGER visibility BEFORE INSERT OR UPDATE OF visible_to, source_entity, source_id, contact_id ON crm.job_archive
    FOR EACH ROW EXECUTE FUNCTION crm.visibility_row('job_archive', 'history', 'source_id=@source_entity', 'contact_id=contact');
COMMENT ON TRIGGER visibility ON crm.job IS 'visible_to from the record (source_entity, source_id) and the contact the job is about';
COMMENT ON TRIGGER visibility ON crm.job_archive IS 'visible_to from the record (source_entity, source_id) and the contact the job is about';

DO $$
DECLARE
    t text;
    predicate text;
BEGIN
    FOREACH t IN ARRAY ARRAY['job', 'job_archive'] LOOP
        predicate := 'tenant_id = crm.current_tenant() AND (visible_to IS NULL OR crm.current_user_id() = ANY (visible_to)'
                     || ' OR crm.is_admin() OR crm.is_service())';
        EXECUTE format('DROP POLICY tenant_isolation ON crm.%I', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON crm.%I USING (%s) WITH CHECK (%s)', t, predicate, predicate);
        EXECUTE format('COMMENT ON POLICY tenant_isolation ON crm.%I IS %L', t,
                       'Rows of the tenant the statement acts for (crm.current_tenant()) only; in a private tenant, those the user sees (visible_to), all for crm_admin and for an application role acting as no CRM user (crm.is_service())');
    END LOOP;
END
$$;
