-- src/sql/90_security.sql: tenant fences, owner visibility, roles and grants.
--
-- Every table with a tenant_id has row-level security enabled and forced
-- (the owner is fenced too; superusers and BYPASSRLS roles are not, which
-- is how an operator provisions tenants and how pg_dump sees every row).
-- The policies compare with (SELECT crm.current_tenant()): the sub-select
-- is an InitPlan, evaluated once per query rather than once per row, and
-- still usable as an index condition.

CREATE FUNCTION crm.is_admin() RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
                        WHERE r.rolname = 'crm_admin' AND pg_catalog.pg_has_role(r.oid, 'USAGE'))
            OR (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER)
    $$;
COMMENT ON FUNCTION crm.is_admin() IS 'True when the current role has the rights of crm_admin (or is a superuser)';

CREATE FUNCTION crm.sees_all_records() RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT crm.is_admin()
            OR coalesce((SELECT t.visibility = 'public' FROM crm.tenant t
                          WHERE t.tenant_id = crm.current_tenant()), true)
    $$;
COMMENT ON FUNCTION crm.sees_all_records() IS
    'True when owner visibility does not narrow what the current user sees: the tenant is public, or the role is crm_admin';

CREATE FUNCTION crm.visible_owner_ids() RETURNS uuid[]
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$
        WITH RECURSIVE reports(id) AS (
            SELECT crm.current_user_id() WHERE crm.current_user_id() IS NOT NULL
            UNION
            SELECT sub.id
              FROM reports m
              CROSS JOIN LATERAL (
                  SELECT u.id FROM crm.app_user u WHERE u.manager_id = m.id
                  UNION
                  SELECT tm.user_id FROM crm.team t
                    JOIN crm.team_member tm ON tm.tenant_id = t.tenant_id AND tm.team_id = t.id
                   WHERE t.manager_id = m.id) sub
        )
        SELECT coalesce(array_agg(id), '{}') FROM reports
    $$;
COMMENT ON FUNCTION crm.visible_owner_ids() IS
    'The current CRM user and everyone who reports to them, directly or not, through app_user.manager_id or a team they lead';

CREATE FUNCTION crm.grant_tenant_access(login_role name, tenant uuid, as_user uuid DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF $1 IS NULL OR $2 IS NULL THEN
        RAISE EXCEPTION 'login_role and tenant must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = $1) THEN
        RAISE EXCEPTION 'role "%" does not exist', $1 USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM crm.tenant t WHERE t.tenant_id = $2) THEN
        RAISE EXCEPTION 'tenant % does not exist', $2 USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO crm.tenant_access AS a (tenant_id, login_role, user_id)
    VALUES ($2, $1, $3)
    ON CONFLICT ON CONSTRAINT tenant_access_pkey DO UPDATE SET user_id = excluded.user_id;
END
$$;
COMMENT ON FUNCTION crm.grant_tenant_access(name, uuid, uuid) IS
    'Lets a login role act for a tenant, as the given CRM user; its crm.tenant_id setting then only chooses among its own tenants. A crm_admin may grant its own tenant only';

CREATE FUNCTION crm.revoke_tenant_access(login_role name, tenant uuid) RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    DELETE FROM crm.tenant_access a WHERE a.tenant_id = $2 AND a.login_role = $1;
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION crm.revoke_tenant_access(name, uuid) IS
    'Takes back crm.grant_tenant_access(); true when there was such an access';

-- Row-level security ------------------------------------------------------

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'tenant', 'currency_rate', 'app_user', 'team', 'team_member', 'pipeline', 'stage',
        'account', 'contact', 'lead', 'opportunity', 'activity', 'tag',
        'account_tag', 'contact_tag', 'lead_tag', 'opportunity_tag', 'stage_history']
    LOOP
        EXECUTE format('ALTER TABLE crm.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE crm.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON crm.%I'
                       ' USING (tenant_id = (SELECT crm.current_tenant()))'
                       ' WITH CHECK (tenant_id = (SELECT crm.current_tenant()))', t);
        EXECUTE format('COMMENT ON POLICY tenant_isolation ON crm.%I IS %L', t,
                       'Rows of the tenant the statement acts for (crm.current_tenant()) only');
    END LOOP;

    -- In a private tenant a user sees what they, or people reporting to
    -- them, own; unowned records stay visible to all (as Odoo's "own
    -- documents" rule keeps unassigned leads visible).  Restrictive, so it
    -- narrows tenant_isolation instead of widening it.
    FOREACH t IN ARRAY ARRAY['account', 'contact', 'lead', 'opportunity', 'activity'] LOOP
        EXECUTE format('CREATE POLICY owner_visibility ON crm.%I AS RESTRICTIVE'
                       ' USING (owner_id IS NULL OR (SELECT crm.sees_all_records())'
                       '        OR owner_id = ANY ((SELECT crm.visible_owner_ids())::uuid[]))'
                       ' WITH CHECK (owner_id IS NULL OR (SELECT crm.sees_all_records())'
                       '        OR owner_id = ANY ((SELECT crm.visible_owner_ids())::uuid[]))', t);
        EXECUTE format('COMMENT ON POLICY owner_visibility ON crm.%I IS %L', t,
                       'In a private tenant: records owned by the user or their reports, or by nobody; crm_admin sees all');
    END LOOP;
END
$$;

ALTER TABLE crm.tenant_access ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.tenant_access FORCE ROW LEVEL SECURITY;
CREATE POLICY own_access ON crm.tenant_access FOR SELECT
    USING (login_role = CURRENT_USER);
COMMENT ON POLICY own_access ON crm.tenant_access IS 'A role sees its own mappings';
CREATE POLICY tenant_admin ON crm.tenant_access
    USING (tenant_id = (SELECT crm.current_tenant()) AND (SELECT crm.is_admin()))
    WITH CHECK (tenant_id = (SELECT crm.current_tenant()) AND (SELECT crm.is_admin()));
COMMENT ON POLICY tenant_admin ON crm.tenant_access IS 'crm_admin manages the mappings of its own tenant';

-- Roles and grants --------------------------------------------------------

CREATE FUNCTION crm.setup_roles() RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['crm_reader', 'crm_writer', 'crm_admin', 'crm_app'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
    IF NOT pg_catalog.pg_has_role('crm_writer', 'crm_reader', 'MEMBER') THEN
        GRANT crm_reader TO crm_writer;
    END IF;
    IF NOT pg_catalog.pg_has_role('crm_admin', 'crm_writer', 'MEMBER') THEN
        GRANT crm_writer TO crm_admin;
    END IF;

    GRANT USAGE ON SCHEMA crm TO crm_reader;
    GRANT USAGE ON DOMAIN crm.email_address TO crm_reader;
    GRANT SELECT ON ALL TABLES IN SCHEMA crm TO crm_reader;
    GRANT EXECUTE ON FUNCTION
        crm.current_tenant(), crm.current_user_id(), crm.is_admin(), crm.sees_all_records(),
        crm.visible_owner_ids(), crm.tenant_default_currency(), crm.exchange_rate(text, text, date, uuid),
        crm.uuid_v7_time(uuid), crm.casefold(text)
        TO crm_reader;

    GRANT INSERT, UPDATE, DELETE ON
        crm.account, crm.contact, crm.lead, crm.opportunity, crm.activity, crm.tag,
        crm.account_tag, crm.contact_tag, crm.lead_tag, crm.opportunity_tag
        TO crm_writer;
    GRANT EXECUTE ON FUNCTION
        crm.uuid_generate_v7(), crm.stage_for_move(text, uuid, uuid, uuid, uuid),
        crm.pipeline_closing_stage(uuid, uuid, text),
        crm.lead_move_stage(uuid, uuid), crm.opportunity_move_stage(uuid, uuid),
        crm.opportunity_close(uuid, text, text), crm.opportunity_mark_won(uuid), crm.opportunity_mark_lost(uuid, text),
        crm.lead_mark_lost(uuid, text), crm.lead_convert(uuid, uuid, uuid, boolean)
        TO crm_writer;

    GRANT INSERT, UPDATE, DELETE ON
        crm.pipeline, crm.stage, crm.app_user, crm.team, crm.team_member, crm.currency_rate,
        crm.tenant_access
        TO crm_admin;
    GRANT UPDATE (name, visibility, default_currency, settings) ON crm.tenant TO crm_admin;
    GRANT EXECUTE ON FUNCTION
        crm.grant_tenant_access(name, uuid, uuid), crm.revoke_tenant_access(name, uuid)
        TO crm_admin;

    -- Activity aggregation, engagement and the event outbox (issue 7)
    GRANT EXECUTE ON FUNCTION
        crm.engagement_half_life(uuid), crm.engagement_decayed(uuid, text, uuid, timestamptz),
        crm.engagement_score(uuid, timestamptz), crm.lead_engagement_score(uuid, timestamptz),
        crm.check_aggregates(), crm.event_head(), crm.event_limit(), crm.read_events(bigint, integer)
        TO crm_reader;
    GRANT INSERT, UPDATE, DELETE ON crm.event_consumer TO crm_writer;
    GRANT EXECUTE ON FUNCTION
        crm.track_activity(uuid, text, jsonb, timestamptz, text, text),
        crm.emit_event(text, jsonb, text, uuid), crm.subscribe(text, bigint), crm.unsubscribe(text),
        crm.poll(text, integer), crm.ack(text, bigint)
        TO crm_writer;
    GRANT INSERT, UPDATE, DELETE ON crm.engagement_setting, crm.activity_weight TO crm_admin;
    GRANT EXECUTE ON FUNCTION crm.refresh_aggregates(uuid), crm.purge_events(interval) TO crm_admin;

    -- Forecasting (capability 4, src/sql/86_forecast.sql): readers forecast
    -- and compare snapshots, writers take snapshots, admins set quotas.
    GRANT USAGE ON TYPE crm.revenue_range TO crm_reader;
    GRANT EXECUTE ON FUNCTION
        crm.revenue_distribution(numeric, numeric), crm.convert_amount(numeric, text, text, date, uuid),
        crm.forecast_deals(date, date, uuid, uuid, uuid, text, timestamptz, jsonb),
        crm.forecast(text, date, date, uuid, uuid, uuid, text, timestamptz, text),
        crm.forecast_what_if(jsonb, text, date, date, uuid, uuid, uuid, text, timestamptz, text),
        crm.forecast_changes(uuid, uuid), crm.forecast_accuracy(uuid, timestamptz)
        TO crm_reader;
    GRANT INSERT, UPDATE, DELETE ON crm.revenue_forecast, crm.forecast_deal TO crm_writer;
    GRANT EXECUTE ON FUNCTION crm.snapshot_forecast(text, text, date, date, uuid, uuid, timestamptz) TO crm_writer;
    GRANT INSERT, UPDATE, DELETE ON crm.quota TO crm_admin;
END
$$;
COMMENT ON FUNCTION crm.setup_roles() IS
    'Creates the group roles crm_reader, crm_writer (reader + records and operations), crm_admin (writer + configuration) and crm_app (may choose its tenant with crm.tenant_id) where missing, and grants them; idempotent; run by a superuser';
