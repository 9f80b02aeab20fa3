-- src/sql/93_private_2_forecast.sql: private visibility of derived tables (issue 8 item 3,
-- second pass; the recipe of src/sql/90_security.sql: visible_to kept by
-- crm.visibility_row, found by crm.visibility_propagate, one policy).
--
-- crm.forecast_deal follows its opportunity and its owner at the time;
-- crm.revenue_forecast: a snapshot's totals are what its taker saw, so they
-- follow the taker (crm.visibility_snapshot below).

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['forecast_deal', 'revenue_forecast'] LOOP
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

CREATE INDEX forecast_deal_opportunity_idx ON crm.forecast_deal (tenant_id, opportunity_id);
-- writers may write forecast_deal rows directly: links checked (42501)
CREATE TRIGGER visibility BEFORE INSERT OR UPDATE OF visible_to, opportunity_id, owner_id ON crm.forecast_deal
    FOR EACH ROW EXECUTE FUNCTION crm.visibility_row('forecast_deal', 'dependent', 'opportunity_id=opportunity');
COMMENT ON TRIGGER visibility ON crm.forecast_deal IS 'visible_to from the opportunity and its owner; links only to opportunities the writer sees';
-- A snapshot's totals add up what its taker saw.  Everyone the taker
-- reports to sees at least that much, so the totals follow the taker's
-- chain; an admin's totals (everything) only admins; a snapshot taken as no
-- CRM user counted only what all see.  Kept as taken (a snapshot is a
-- record of a moment): a later change of managers does not move it.
CREATE FUNCTION crm.visibility_snapshot() RETURNS trigger
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        NEW.visible_to := OLD.visible_to;
        RETURN NEW;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM crm.tenant t WHERE t.tenant_id = NEW.tenant_id AND t.visibility = 'private') THEN
        NEW.visible_to := NULL;
    ELSIF crm.is_admin() THEN
        NEW.visible_to := '{}';
    ELSIF NEW.user_id IS NULL THEN
        NEW.visible_to := NULL;
    ELSE
        NEW.visible_to := coalesce((SELECT NULLIF(u.owner_chain, '{}') FROM crm.app_user u
                                     WHERE u.tenant_id = NEW.tenant_id AND u.id = NEW.user_id),
                                   ARRAY[NEW.user_id]);
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION crm.visibility_snapshot() IS
    'Internal: trigger that sets a forecast snapshot''s visible_to from who took it (their chain; admins only for an admin''s; everyone for one taken as no CRM user) and keeps it on update';
CREATE TRIGGER visibility BEFORE INSERT OR UPDATE ON crm.revenue_forecast
    FOR EACH ROW EXECUTE FUNCTION crm.visibility_snapshot();
COMMENT ON TRIGGER visibility ON crm.revenue_forecast IS 'visible_to from the user who took the snapshot, kept as taken';

DO $$
DECLARE
    t text;
    predicate text;
BEGIN
    FOREACH t IN ARRAY ARRAY['forecast_deal', 'revenue_forecast'] LOOP
        predicate := 'tenant_id = crm.current_tenant() AND (visible_to IS NULL OR crm.current_user_id() = ANY (visible_to)'
                     || ' OR crm.is_admin())';
        EXECUTE format('DROP POLICY tenant_isolation ON crm.%I', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON crm.%I USING (%s) WITH CHECK (%s)', t, predicate, predicate);
        EXECUTE format('COMMENT ON POLICY tenant_isolation ON crm.%I IS %L', t,
                       'Rows of the tenant the statement acts for (crm.current_tenant()) only; in a private tenant, those the user sees (visible_to), all for crm_admin');
    END LOOP;
END
$$;
