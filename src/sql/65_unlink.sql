-- src/sql/65_unlink.sql: what a delete keeps (C trigger in src/unlink.c).
--
-- Records are archived (archived_at), not deleted, in normal use.  When one
-- is deleted all the same, what pointed at it stays: its stage history (no
-- foreign key to the record), its activities (the link is cleared; an
-- activity whose only link was the deleted record goes with it), the deals
-- of a deleted account or contact, the records a deleted user owned.  Citus
-- allows no ON DELETE SET NULL, so the links are plain deferrable foreign
-- keys and crm.clear_links() clears them, once per statement.  A login
-- role mapped as a deleted user (crm.tenant_access, a Citus reference table
-- that a shard's trigger cannot write) refuses the delete instead (23503):
-- revoke or remap it first.

CREATE FUNCTION crm.clear_links() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_unlink_clear'
    LANGUAGE C;
COMMENT ON FUNCTION crm.clear_links() IS
    'Trigger, for each (table, column, links) argument triple: BEFORE DELETE defers the foreign key <table>_tenant_id_<column>_fkey; AFTER DELETE (REFERENCING OLD TABLE) sets <column> NULL in the same tenant''s rows of crm.<table> that named a deleted row, and deletes those whose only link (of the comma-separated links) it was; with links ''!'' it refuses the delete (23503) while such a row exists instead of clearing it (crm.tenant_access.user_id: a Citus reference table, which a trigger on a shard cannot write)';

DO $$
DECLARE
    -- the deleted table, then (table, column, links) for each link to it
    spec text[];
    specs text[][] := ARRAY[
        ['account', 'account,parent_account_id,,contact,account_id,,lead,converted_account_id,,opportunity,account_id,,activity,account_id,contact_id;account_id;lead_id;opportunity_id'],
        ['contact', 'lead,converted_contact_id,,opportunity,contact_id,,activity,contact_id,contact_id;account_id;lead_id;opportunity_id'],
        ['lead', 'opportunity,lead_id,,activity,lead_id,contact_id;account_id;lead_id;opportunity_id'],
        ['opportunity', 'activity,opportunity_id,contact_id;account_id;lead_id;opportunity_id'],
        ['app_user', 'account,owner_id,,contact,owner_id,,lead,owner_id,,opportunity,owner_id,,activity,owner_id,,app_user,manager_id,,team,manager_id,,tenant_access,user_id,!']];
    args text;
BEGIN
    FOREACH spec SLICE 1 IN ARRAY specs LOOP
        SELECT string_agg(pg_catalog.quote_literal(pg_catalog.replace(a, ';', ',')), ', ' ORDER BY n)
          INTO args
          FROM pg_catalog.unnest(pg_catalog.string_to_array(spec[2], ',')) WITH ORDINALITY AS x(a, n);
        EXECUTE format('CREATE TRIGGER clear_links_before BEFORE DELETE ON crm.%I'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION crm.clear_links(%s)', spec[1], args);
        EXECUTE format('CREATE TRIGGER clear_links AFTER DELETE ON crm.%I'
                       ' REFERENCING OLD TABLE AS crm_deleted_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION crm.clear_links(%s)', spec[1], args);
        EXECUTE format('COMMENT ON TRIGGER clear_links_before ON crm.%I IS %L', spec[1],
                       'Defers the foreign keys to the deleted rows until crm.clear_links() has cleared them');
        EXECUTE format('COMMENT ON TRIGGER clear_links ON crm.%I IS %L', spec[1],
                       'Clears the links to the deleted rows (an activity left without any link is deleted); history stays');
    END LOOP;
END
$$;
