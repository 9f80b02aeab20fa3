-- src/sql/93_private_1_engagement.sql: private visibility of derived tables (issue 8 item 3,
-- second pass; the recipe of src/sql/90_security.sql: visible_to kept by
-- crm.visibility_row, found by crm.visibility_propagate, one policy).
--
-- crm.contact_engagement, crm.lead_engagement, crm.account_summary follow their contact, lead, account
-- ('history': written by the server's triggers only).  A roll-up of a record one
-- sees counts everything of that record, hidden activities included (it is
-- the record's own data, as its stage or amount are).

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['contact_engagement', 'lead_engagement', 'account_summary'] LOOP
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

-- Triggers ----------------------------------------------------------------

CREATE TRIGGER visibility BEFORE INSERT OR UPDATE OF visible_to, contact_id ON crm.contact_engagement
    FOR EACH ROW EXECUTE FUNCTION crm.visibility_row('contact_engagement', 'history', 'contact_id=contact');
CREATE TRIGGER visibility BEFORE INSERT OR UPDATE OF visible_to, lead_id ON crm.lead_engagement
    FOR EACH ROW EXECUTE FUNCTION crm.visibility_row('lead_engagement', 'history', 'lead_id=lead');
CREATE TRIGGER visibility BEFORE INSERT OR UPDATE OF visible_to, account_id ON crm.account_summary
    FOR EACH ROW EXECUTE FUNCTION crm.visibility_row('account_summary', 'history', 'account_id=account');
COMMENT ON TRIGGER visibility ON crm.contact_engagement IS 'visible_to from the contact';
COMMENT ON TRIGGER visibility ON crm.lead_engagement IS 'visible_to from the lead';
COMMENT ON TRIGGER visibility ON crm.account_summary IS 'visible_to from the account';

DO $$
DECLARE
    t text;
    predicate text;
BEGIN
    FOREACH t IN ARRAY ARRAY['contact_engagement', 'lead_engagement', 'account_summary'] LOOP
        predicate := 'tenant_id = crm.current_tenant() AND (visible_to IS NULL OR crm.current_user_id() = ANY (visible_to)'
                     || ' OR crm.is_admin())';
        EXECUTE format('DROP POLICY tenant_isolation ON crm.%I', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON crm.%I USING (%s) WITH CHECK (%s)', t, predicate, predicate);
        EXECUTE format('COMMENT ON POLICY tenant_isolation ON crm.%I IS %L', t,
                       'Rows of the tenant the statement acts for (crm.current_tenant()) only; in a private tenant, those the user sees (visible_to), all for crm_admin');
    END LOOP;
END
$$;
