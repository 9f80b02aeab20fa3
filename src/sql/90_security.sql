-- src/sql/90_security.sql: tenant fences, owner visibility, roles and grants.
--
-- Every table with a tenant_id has row-level security enabled and forced
-- (the owner is fenced too; superusers and BYPASSRLS roles are not, which
-- is how an operator provisions tenants and how pg_dump sees every row).
--
-- Every policy is a plain predicate on the row and on node-local state
-- (src/tenant.c): no sub-select and no function that reads a table, so the
-- policies run unchanged on Citus shards.  Owner visibility is derived
-- data kept on the row by the triggers below (visible_to), so checking it
-- costs an array lookup per row, not a query.

CREATE FUNCTION crm.is_admin() RETURNS boolean
    AS 'MODULE_PATHNAME', 'crm_tenant_is_admin'
    LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION crm.is_admin() IS
    'True when the current role (outside SECURITY DEFINER functions) has the rights of crm_admin, or is a superuser; read from the catalog';

CREATE FUNCTION crm.tenant_require() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_tenant_require'
    LANGUAGE C;
COMMENT ON FUNCTION crm.tenant_require() IS
    'Internal: trigger that refuses, with the reason (42501), a row written by a session that acts for no tenant';

-- Owner visibility, kept on the rows ---------------------------------------
--
-- app_user.owner_chain: the user and everyone above them, through
-- manager_id and the teams they are a member of (the team's manager), at
-- any depth.  A record's visible_to: NULL when every user of the tenant sees
-- it (public tenant, or no owner), else its owner's chain.  A row that hangs
-- off records (tags, stage history, activities) carries the intersection of
-- its records' visible_to (and, for an activity, its own owner's chain).
-- Triggers keep them when an owner, a manager, a team, a membership or the
-- tenant's visibility changes; they run as the extension's owner because
-- the rows to update include rows the writer cannot see, and they act only
-- on the tenant of the row that fired them.

ALTER TABLE crm.app_user ADD COLUMN owner_chain uuid[] NOT NULL DEFAULT '{}';
COMMENT ON COLUMN crm.app_user.owner_chain IS
    'The user and everyone above them (manager_id, leaders of their teams), who see what this user owns in a private tenant (set by the server; a client value is ignored)';
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['account', 'contact', 'lead', 'opportunity', 'activity',
                             'account_tag', 'contact_tag', 'lead_tag', 'opportunity_tag', 'stage_history']
    LOOP
        EXECUTE format('ALTER TABLE crm.%I ADD COLUMN visible_to uuid[]', t);
        EXECUTE format('COMMENT ON COLUMN crm.%I.visible_to IS %L', t,
                       'CRM users who see the row in a private tenant besides crm_admin; NULL: every user of the tenant '
                       || CASE WHEN t IN ('account', 'contact', 'lead', 'opportunity')
                               THEN '(the owner''s chain, NULL when unowned or the tenant is public)'
                               ELSE '(follows the records it hangs off)' END
                       || ' (set by the server; a client value is ignored)');
    END LOOP;
END
$$;

-- visible_to of records and of what hangs off them, and the refusal to link
-- a record the writer cannot see (foreign keys are checked without
-- row-level security): src/visibility.c.  The triggers pass the table's
-- name, as on a Citus shard the relation is named account_102031.
CREATE FUNCTION crm.visibility_row() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_visibility_row'
    LANGUAGE C;
COMMENT ON FUNCTION crm.visibility_row() IS
    'Internal: trigger that derives visible_to (record: the owner''s chain; dependent: what all its records and its owner allow) and refuses (42501) a link to a record the writer cannot see';

-- AFTER UPDATE on account, contact, lead, opportunity, when visible_to
-- changed: every row that hangs off the record follows it (any crm table
-- with visible_to and <record>_id, found in the catalog).
CREATE FUNCTION crm.visibility_propagate() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_visibility_propagate'
    LANGUAGE C;
COMMENT ON FUNCTION crm.visibility_propagate() IS
    'Internal: trigger that makes every row hanging off a record (tags, stage history, activities, any crm table with visible_to and <record>_id) follow the record''s visibility';

-- BEFORE DELETE on account, contact, lead, opportunity: a delete would set
-- NULL or cascade into the rows that refer to the record; refuse it when
-- the deleter cannot see one of them.
CREATE FUNCTION crm.visibility_delete_guard() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    hidden text;
    me uuid := crm.current_user_id();
BEGIN
    IF crm.is_admin() THEN
        RETURN OLD;
    END IF;
    -- me IS NULL sees only rows whose visible_to is NULL
    me := coalesce(me, '00000000-0000-0000-0000-000000000000');
    CASE TG_ARGV[0]
        WHEN 'account' THEN
            SELECT x.what INTO hidden FROM (
                SELECT 'contact' FROM crm.contact r WHERE r.tenant_id = OLD.tenant_id AND r.account_id = OLD.id AND r.visible_to IS NOT NULL AND NOT me = ANY (r.visible_to)
                UNION ALL SELECT 'opportunity' FROM crm.opportunity r WHERE r.tenant_id = OLD.tenant_id AND r.account_id = OLD.id AND r.visible_to IS NOT NULL AND NOT me = ANY (r.visible_to)
                UNION ALL SELECT 'lead' FROM crm.lead r WHERE r.tenant_id = OLD.tenant_id AND r.converted_account_id = OLD.id AND r.visible_to IS NOT NULL AND NOT me = ANY (r.visible_to)
                UNION ALL SELECT 'account' FROM crm.account r WHERE r.tenant_id = OLD.tenant_id AND r.parent_account_id = OLD.id AND r.visible_to IS NOT NULL AND NOT me = ANY (r.visible_to)
                UNION ALL SELECT 'activity' FROM crm.activity r WHERE r.tenant_id = OLD.tenant_id AND r.account_id = OLD.id AND r.visible_to IS NOT NULL AND NOT me = ANY (r.visible_to)
            ) x(what) LIMIT 1;
        WHEN 'contact' THEN
            SELECT x.what INTO hidden FROM (
                SELECT 'opportunity' FROM crm.opportunity r WHERE r.tenant_id = OLD.tenant_id AND r.contact_id = OLD.id AND r.visible_to IS NOT NULL AND NOT me = ANY (r.visible_to)
                UNION ALL SELECT 'lead' FROM crm.lead r WHERE r.tenant_id = OLD.tenant_id AND r.converted_contact_id = OLD.id AND r.visible_to IS NOT NULL AND NOT me = ANY (r.visible_to)
                UNION ALL SELECT 'activity' FROM crm.activity r WHERE r.tenant_id = OLD.tenant_id AND r.contact_id = OLD.id AND r.visible_to IS NOT NULL AND NOT me = ANY (r.visible_to)
            ) x(what) LIMIT 1;
        WHEN 'lead' THEN
            SELECT x.what INTO hidden FROM (
                SELECT 'opportunity' FROM crm.opportunity r WHERE r.tenant_id = OLD.tenant_id AND r.lead_id = OLD.id AND r.visible_to IS NOT NULL AND NOT me = ANY (r.visible_to)
                UNION ALL SELECT 'activity' FROM crm.activity r WHERE r.tenant_id = OLD.tenant_id AND r.lead_id = OLD.id AND r.visible_to IS NOT NULL AND NOT me = ANY (r.visible_to)
            ) x(what) LIMIT 1;
        WHEN 'opportunity' THEN
            SELECT 'activity' INTO hidden FROM crm.activity r
             WHERE r.tenant_id = OLD.tenant_id AND r.opportunity_id = OLD.id AND r.visible_to IS NOT NULL AND NOT me = ANY (r.visible_to) LIMIT 1;
    END CASE;
    IF hidden IS NOT NULL THEN
        RAISE EXCEPTION 'permission denied to delete % %', TG_ARGV[0], OLD.id
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = format('A %s that the current user cannot see refers to it; deleting would change or delete that row.', hidden),
                  HINT = 'Archive the record (archived_at), or ask crm_admin to delete it.';
    END IF;
    RETURN OLD;
END
$$;
COMMENT ON FUNCTION crm.visibility_delete_guard() IS
    'Internal: trigger that refuses (42501) to delete a record when rows the deleter cannot see refer to it';

-- Recompute the owner chains of one tenant; records whose owner's chain
-- changed get their new visible_to (and their dependents follow).
CREATE FUNCTION crm.visibility_refresh(tenant uuid) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    changed uuid[];
    private boolean;
BEGIN
    WITH RECURSIVE edge AS (
        SELECT u.id AS member, u.manager_id AS boss FROM crm.app_user u
         WHERE u.tenant_id = tenant AND u.manager_id IS NOT NULL
        UNION
        SELECT m.user_id AS member, t.manager_id AS boss FROM crm.team_member m
          JOIN crm.team t ON t.tenant_id = m.tenant_id AND t.id = m.team_id
         WHERE m.tenant_id = tenant AND t.tenant_id = tenant AND t.manager_id IS NOT NULL
    ), up AS (
        SELECT u.tenant_id, u.id AS member, u.id AS above FROM crm.app_user u WHERE u.tenant_id = tenant
        UNION
        SELECT up.tenant_id, up.member, e.boss AS above FROM up JOIN edge e ON e.member = up.above
         WHERE up.tenant_id = tenant
    ), chain AS (
        SELECT up.member, array_agg(up.above ORDER BY up.above) AS owner_chain FROM up GROUP BY up.member
    ), upd AS (
        UPDATE crm.app_user u SET owner_chain = c.owner_chain
          FROM chain c
         WHERE u.tenant_id = tenant AND u.id = c.member AND u.owner_chain IS DISTINCT FROM c.owner_chain
        RETURNING u.id
    )
    SELECT array_agg(upd.id) INTO changed FROM upd;

    SELECT t.visibility = 'private' INTO private FROM crm.tenant t WHERE t.tenant_id = tenant;
    IF changed IS NOT NULL AND private THEN
        PERFORM crm.visibility_refresh_records(tenant, changed);
    END IF;
END
$$;
COMMENT ON FUNCTION crm.visibility_refresh(uuid) IS
    'Internal: recomputes app_user.owner_chain of a tenant and the visible_to of the records whose owner''s chain changed';

-- Recompute visible_to of the tenant's records owned by the given users
-- (NULL: every record).
CREATE FUNCTION crm.visibility_refresh_records(tenant uuid, owners uuid[]) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    -- the owner's scope (NULL in a public tenant; else the owner's chain,
    -- or the owner alone) as a join: Citus routes a join on tenant_id, it
    -- refuses a per-row function that reads tables
    UPDATE crm.account r SET visible_to = s.scope
      FROM (SELECT u.tenant_id, u.id,
                   CASE WHEN t.visibility = 'private' THEN coalesce(NULLIF(u.owner_chain, '{}'), ARRAY[u.id]) END AS scope
              FROM crm.app_user u JOIN crm.tenant t ON t.tenant_id = u.tenant_id
             WHERE u.tenant_id = tenant AND t.tenant_id = tenant) s
     WHERE r.tenant_id = tenant AND s.tenant_id = r.tenant_id AND s.id = r.owner_id
       AND (owners IS NULL OR r.owner_id = ANY (owners)) AND r.visible_to IS DISTINCT FROM s.scope;
    UPDATE crm.contact r SET visible_to = s.scope
      FROM (SELECT u.tenant_id, u.id,
                   CASE WHEN t.visibility = 'private' THEN coalesce(NULLIF(u.owner_chain, '{}'), ARRAY[u.id]) END AS scope
              FROM crm.app_user u JOIN crm.tenant t ON t.tenant_id = u.tenant_id
             WHERE u.tenant_id = tenant AND t.tenant_id = tenant) s
     WHERE r.tenant_id = tenant AND s.tenant_id = r.tenant_id AND s.id = r.owner_id
       AND (owners IS NULL OR r.owner_id = ANY (owners)) AND r.visible_to IS DISTINCT FROM s.scope;
    UPDATE crm.lead r SET visible_to = s.scope
      FROM (SELECT u.tenant_id, u.id,
                   CASE WHEN t.visibility = 'private' THEN coalesce(NULLIF(u.owner_chain, '{}'), ARRAY[u.id]) END AS scope
              FROM crm.app_user u JOIN crm.tenant t ON t.tenant_id = u.tenant_id
             WHERE u.tenant_id = tenant AND t.tenant_id = tenant) s
     WHERE r.tenant_id = tenant AND s.tenant_id = r.tenant_id AND s.id = r.owner_id
       AND (owners IS NULL OR r.owner_id = ANY (owners)) AND r.visible_to IS DISTINCT FROM s.scope;
    UPDATE crm.opportunity r SET visible_to = s.scope
      FROM (SELECT u.tenant_id, u.id,
                   CASE WHEN t.visibility = 'private' THEN coalesce(NULLIF(u.owner_chain, '{}'), ARRAY[u.id]) END AS scope
              FROM crm.app_user u JOIN crm.tenant t ON t.tenant_id = u.tenant_id
             WHERE u.tenant_id = tenant AND t.tenant_id = tenant) s
     WHERE r.tenant_id = tenant AND s.tenant_id = r.tenant_id AND s.id = r.owner_id
       AND (owners IS NULL OR r.owner_id = ANY (owners)) AND r.visible_to IS DISTINCT FROM s.scope;
    IF owners IS NULL THEN
        -- no owner: everyone's
        UPDATE crm.account r SET visible_to = NULL
         WHERE r.tenant_id = tenant AND r.owner_id IS NULL AND r.visible_to IS NOT NULL;
        UPDATE crm.contact r SET visible_to = NULL
         WHERE r.tenant_id = tenant AND r.owner_id IS NULL AND r.visible_to IS NOT NULL;
        UPDATE crm.lead r SET visible_to = NULL
         WHERE r.tenant_id = tenant AND r.owner_id IS NULL AND r.visible_to IS NOT NULL;
        UPDATE crm.opportunity r SET visible_to = NULL
         WHERE r.tenant_id = tenant AND r.owner_id IS NULL AND r.visible_to IS NOT NULL;
    END IF;
    -- activities owned by them whose records did not change
    UPDATE crm.activity r SET visible_to = r.visible_to
     WHERE r.tenant_id = tenant AND (owners IS NULL OR r.owner_id = ANY (owners));
    -- the history of deleted records outlives them, with no record to take
    -- its visibility from: in a public tenant it is everyone's
    IF owners IS NULL AND (SELECT t.visibility FROM crm.tenant t WHERE t.tenant_id = tenant) = 'public' THEN
        UPDATE crm.stage_history h SET visible_to = NULL
         WHERE h.tenant_id = tenant AND h.visible_to IS NOT NULL;
    END IF;
END
$$;
COMMENT ON FUNCTION crm.visibility_refresh_records(uuid, uuid[]) IS
    'Internal: recomputes visible_to of a tenant''s records owned by the given users (NULL: all)';

CREATE FUNCTION crm.visibility_hierarchy() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF TG_ARGV[0] = 'tenant' THEN
        PERFORM crm.visibility_refresh_records(NEW.tenant_id, NULL);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM crm.visibility_refresh(OLD.tenant_id);
    ELSE
        PERFORM crm.visibility_refresh(NEW.tenant_id);
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm.visibility_hierarchy() IS
    'Internal: trigger that recomputes owner chains and visible_to when users, teams, memberships or the tenant''s visibility change';

-- owner_chain is the server's: a client value is ignored (the refresh runs
-- inside a trigger, one level deeper).  A new user is below its manager and
-- above nobody yet; a superuser's value stands on INSERT, so that
-- pg_restore brings the rows back unchanged.
CREATE FUNCTION crm.owner_chain_keep() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.owner_chain IS NOT NULL AND NEW.owner_chain <> '{}'
           AND (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid = CURRENT_USER::text::regrole) THEN
            RETURN NEW;
        END IF;
        NEW.owner_chain := ARRAY(
            SELECT x FROM pg_catalog.unnest(ARRAY[NEW.id] || coalesce(
                       (SELECT m.owner_chain FROM crm.app_user m
                         WHERE m.tenant_id = NEW.tenant_id AND m.id = NEW.manager_id), '{}')) x
             GROUP BY x ORDER BY x);
    ELSIF pg_catalog.pg_trigger_depth() OPERATOR(pg_catalog.<=) 1 THEN
        NEW.owner_chain := OLD.owner_chain;
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION crm.owner_chain_keep() IS
    'Internal: trigger that derives a new user''s owner_chain and ignores a client''s value of it';

CREATE TRIGGER owner_chain_keep BEFORE INSERT OR UPDATE OF owner_chain ON crm.app_user
    FOR EACH ROW EXECUTE FUNCTION crm.owner_chain_keep();
CREATE TRIGGER visibility_hierarchy AFTER DELETE OR UPDATE OF manager_id ON crm.app_user
    FOR EACH ROW EXECUTE FUNCTION crm.visibility_hierarchy('app_user');
CREATE TRIGGER visibility_hierarchy AFTER INSERT OR DELETE OR UPDATE OF manager_id ON crm.team
    FOR EACH ROW EXECUTE FUNCTION crm.visibility_hierarchy('team');
CREATE TRIGGER visibility_hierarchy AFTER INSERT OR DELETE OR UPDATE ON crm.team_member
    FOR EACH ROW EXECUTE FUNCTION crm.visibility_hierarchy('team_member');
CREATE TRIGGER visibility_hierarchy AFTER UPDATE OF visibility ON crm.tenant
    FOR EACH ROW WHEN (OLD.visibility IS DISTINCT FROM NEW.visibility)
    EXECUTE FUNCTION crm.visibility_hierarchy('tenant');
COMMENT ON TRIGGER owner_chain_keep ON crm.app_user IS 'owner_chain is the server''s';
COMMENT ON TRIGGER visibility_hierarchy ON crm.app_user IS 'Owner chains and visible_to follow the managers';
COMMENT ON TRIGGER visibility_hierarchy ON crm.team IS 'Owner chains and visible_to follow the team leaders';
COMMENT ON TRIGGER visibility_hierarchy ON crm.team_member IS 'Owner chains and visible_to follow team membership';
COMMENT ON TRIGGER visibility_hierarchy ON crm.tenant IS 'visible_to of every record follows the tenant''s visibility';

DO $$
DECLARE
    t text;
    links text[];
BEGIN
    FOREACH t IN ARRAY ARRAY['account', 'contact', 'lead', 'opportunity'] LOOP
        links := CASE t WHEN 'account' THEN ARRAY['parent_account_id=account']
                        WHEN 'contact' THEN ARRAY['account_id=account']
                        WHEN 'lead' THEN ARRAY['converted_account_id=account', 'converted_contact_id=contact']
                        ELSE ARRAY['account_id=account', 'contact_id=contact', 'lead_id=lead'] END;
        EXECUTE format('CREATE TRIGGER visibility BEFORE INSERT OR UPDATE OF owner_id, visible_to, %s ON crm.%I'
                       ' FOR EACH ROW EXECUTE FUNCTION crm.visibility_row(%L, %L, %s)',
                       (SELECT string_agg(split_part(l, '=', 1), ', ') FROM unnest(links) l), t, t, 'record',
                       (SELECT string_agg(quote_literal(l), ', ') FROM unnest(links) l));
        EXECUTE format('COMMENT ON TRIGGER visibility ON crm.%I IS %L', t,
                       'visible_to from the owner; links only to records the writer sees');
        EXECUTE format('CREATE TRIGGER visibility_propagate AFTER UPDATE ON crm.%I FOR EACH ROW'
                       ' WHEN (OLD.visible_to IS DISTINCT FROM NEW.visible_to)'
                       ' EXECUTE FUNCTION crm.visibility_propagate(%L)', t, t);
        EXECUTE format('COMMENT ON TRIGGER visibility_propagate ON crm.%I IS %L', t,
                       'Tags, stage history and activities follow the record''s visibility');
        EXECUTE format('CREATE TRIGGER visibility_delete_guard BEFORE DELETE ON crm.%I'
                       ' FOR EACH ROW EXECUTE FUNCTION crm.visibility_delete_guard(%L)', t, t);
        EXECUTE format('COMMENT ON TRIGGER visibility_delete_guard ON crm.%I IS %L', t,
                       'No delete that would change or delete rows the deleter cannot see');
    END LOOP;
    FOREACH t IN ARRAY ARRAY['account_tag', 'contact_tag', 'lead_tag', 'opportunity_tag', 'stage_history', 'activity'] LOOP
        links := CASE t WHEN 'activity' THEN ARRAY['account_id=account', 'contact_id=contact', 'lead_id=lead',
                                                   'opportunity_id=opportunity']
                        WHEN 'stage_history' THEN ARRAY['lead_id=lead', 'opportunity_id=opportunity']
                        ELSE ARRAY[replace(t, '_tag', '_id') || '=' || replace(t, '_tag', '')] END;
        EXECUTE format('CREATE TRIGGER visibility BEFORE INSERT OR UPDATE OF visible_to, %s%s ON crm.%I'
                       ' FOR EACH ROW EXECUTE FUNCTION crm.visibility_row(%L, %L, %s)',
                       CASE WHEN t = 'activity' THEN 'owner_id, ' ELSE '' END,
                       (SELECT string_agg(split_part(l, '=', 1), ', ') FROM unnest(links) l), t, t,
                       CASE WHEN t = 'stage_history' THEN 'history' ELSE 'dependent' END,
                       (SELECT string_agg(quote_literal(l), ', ') FROM unnest(links) l));
        EXECUTE format('COMMENT ON TRIGGER visibility ON crm.%I IS %L', t,
                       'visible_to from the records the row hangs off; links only to records the writer sees');
    END LOOP;
END
$$;

CREATE FUNCTION crm.sees_all_records() RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT crm.is_admin()
            OR coalesce((SELECT t.visibility = 'public' FROM crm.tenant t
                          WHERE t.tenant_id = crm.current_tenant()), true)
    $$;
COMMENT ON FUNCTION crm.sees_all_records() IS
    'True when owner visibility does not narrow what the current user sees: the tenant is public, or the role is crm_admin (for display; the policies read visible_to)';

CREATE FUNCTION crm.visible_owner_ids() RETURNS uuid[]
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT coalesce(array_agg(u.id ORDER BY u.id), '{}') FROM crm.app_user u
         WHERE u.tenant_id = crm.current_tenant() AND crm.current_user_id() = ANY (u.owner_chain)
    $$;
COMMENT ON FUNCTION crm.visible_owner_ids() IS
    'The current CRM user and everyone who reports to them, directly or not, through app_user.manager_id or a team they lead (for display; the policies read visible_to)';

CREATE FUNCTION crm.grant_tenant_access(login_role name, tenant uuid, as_user uuid DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    live name[];
BEGIN
    IF $1 IS NULL OR $2 IS NULL THEN
        RAISE EXCEPTION 'login_role and tenant must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM crm.tenant t WHERE t.tenant_id = $2) THEN
        -- Row-level security hides every tenant but the caller's: another
        -- tenant's id is refused as a plain INSERT of the mapping refuses
        -- it (42501), whether or not that tenant exists.  Only the operator,
        -- who sees every tenant, learns that an id names no tenant.
        IF $2 IS DISTINCT FROM crm.current_tenant()
           AND NOT (SELECT r.rolsuper OR r.rolbypassrls FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER) THEN
            RAISE EXCEPTION 'role "%" may not map roles into tenant %', CURRENT_USER, $2
                USING ERRCODE = 'insufficient_privilege',
                      DETAIL = 'A tenant''s admin maps roles into the tenant it acts for only.';
        END IF;
        RAISE EXCEPTION 'tenant % does not exist', $2 USING ERRCODE = 'no_data_found';
    END IF;
    -- what the trigger checks on one node, here for Citus too (where the
    -- mappings are a reference table and the trigger cannot read app_user)
    IF $3 IS NOT NULL AND NOT EXISTS (SELECT 1 FROM crm.app_user u WHERE u.tenant_id = $2 AND u.id = $3) THEN
        RAISE EXCEPTION 'insert or update on table "tenant_access" violates foreign key constraint "tenant_access_tenant_id_user_id_fkey"'
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = format('Key (tenant_id, user_id)=(%s, %s) is not present in table "app_user".', $2, $3);
    END IF;
    -- mappings of dropped roles are dead; clear them away
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension e WHERE e.extname = 'citus') THEN
        -- On Citus the mappings are a reference table, this statement runs
        -- on every node, and role_oid holds each node's own OID of the role:
        -- matched against the coordinator's pg_roles it deleted the other
        -- roles' mappings on the workers (measured: mapping a second role
        -- into a tenant unmapped the first).  By the role's name there.
        -- (the names read first: a DELETE of a reference table may not
        -- read pg_catalog's tables: relation pg_authid is not distributed)
        live := ARRAY(SELECT r.rolname FROM pg_catalog.pg_roles r);
        DELETE FROM crm.tenant_access a WHERE a.tenant_id = $2 AND NOT (a.login_role = ANY (live));
    ELSE
        DELETE FROM crm.tenant_access a
         WHERE a.tenant_id = $2 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid = a.role_oid);
    END IF;
    -- the trigger checks the role and sets role_oid from the name
    INSERT INTO crm.tenant_access AS a (tenant_id, login_role, user_id)
    VALUES ($2, $1, $3)
    ON CONFLICT ON CONSTRAINT tenant_access_pkey DO UPDATE SET user_id = excluded.user_id;
END
$$;
COMMENT ON FUNCTION crm.grant_tenant_access(name, uuid, uuid) IS
    'Lets an existing login role act for a tenant, as the given CRM user; its crm.tenant_id setting then only chooses among its own tenants. Never a superuser, BYPASSRLS role or crm_app member; a crm_admin may grant its own tenant only, and only a role mapped to no other tenant';

CREATE FUNCTION crm.revoke_tenant_access(login_role name, tenant uuid) RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF $1 IS NULL OR $2 IS NULL THEN
        RAISE EXCEPTION 'login_role and tenant must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension e WHERE e.extname = 'citus') THEN
        -- On Citus crm.tenant_access is a reference table, this statement
        -- runs on every node, and role_oid holds each node's own OID of the
        -- role (OIDs differ between nodes): the mapping goes by the role's
        -- name, as the coordinator matches it (src/tenant.c).  (A sub-select
        -- of pg_roles here is refused: relation pg_authid is not distributed.)
        DELETE FROM crm.tenant_access a WHERE a.tenant_id = $2 AND a.login_role = $1;
        RETURN FOUND;
    END IF;
    DELETE FROM crm.tenant_access a
     WHERE a.tenant_id = $2
       AND (a.role_oid = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = $1)
            OR (a.login_role = $1 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid = a.role_oid)));
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION crm.revoke_tenant_access(name, uuid) IS
    'Takes back crm.grant_tenant_access(); true when there was such an access';

-- Row-level security ------------------------------------------------------

-- One permissive policy per table, never a restrictive one: Citus 13 copies
-- policies onto the shards without AS RESTRICTIVE, which would turn a
-- narrowing policy into a widening one.  On the records and the rows that
-- hang off them, tenant_isolation therefore carries owner visibility too:
-- in a private tenant a user sees what they, or people reporting to them,
-- own; unowned records stay visible to all (as Odoo's "own documents" rule
-- keeps unassigned leads visible); the rows that hang off records follow
-- them (visible_to, above).
DO $$
DECLARE
    t text;
    visibility CONSTANT text[] := ARRAY['account', 'contact', 'lead', 'opportunity', 'activity',
                                        'account_tag', 'contact_tag', 'lead_tag', 'opportunity_tag',
                                        'stage_history'];
    predicate text;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'tenant', 'currency_rate', 'app_user', 'team', 'team_member', 'pipeline', 'stage',
        'account', 'contact', 'lead', 'opportunity', 'activity', 'tag',
        'account_tag', 'contact_tag', 'lead_tag', 'opportunity_tag', 'stage_history', 'app_access']
    LOOP
        predicate := 'tenant_id = crm.current_tenant()';
        IF t = ANY (visibility) THEN
            predicate := predicate || ' AND (visible_to IS NULL OR crm.current_user_id() = ANY (visible_to)'
                                   || ' OR crm.is_admin())';
        END IF;
        EXECUTE format('ALTER TABLE crm.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE crm.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON crm.%I USING (%s) WITH CHECK (%s)', t, predicate, predicate);
        EXECUTE format('COMMENT ON POLICY tenant_isolation ON crm.%I IS %L', t,
                       CASE WHEN t = ANY (visibility)
                            THEN 'Rows of the tenant the statement acts for (crm.current_tenant()) only; in a private tenant, those the user sees (visible_to), all for crm_admin'
                            ELSE 'Rows of the tenant the statement acts for (crm.current_tenant()) only' END);
    END LOOP;
END
$$;

ALTER TABLE crm.tenant_access ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.tenant_access FORCE ROW LEVEL SECURITY;
CREATE POLICY own_access ON crm.tenant_access FOR SELECT
    USING (role_oid = CURRENT_USER::text::regrole::oid);
COMMENT ON POLICY own_access ON crm.tenant_access IS 'A role sees its own mappings';
CREATE POLICY tenant_admin ON crm.tenant_access
    USING (tenant_id = crm.current_tenant() AND crm.is_admin())
    WITH CHECK (tenant_id = crm.current_tenant() AND crm.is_admin());
COMMENT ON POLICY tenant_admin ON crm.tenant_access IS 'crm_admin manages the mappings of its own tenant';

-- Roles and grants --------------------------------------------------------

CREATE FUNCTION crm.setup_roles() RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    r text;
    twin regprocedure;
    grantee name;
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
        crm.uuid_generate_v7(),
        crm.lead_move_stage(uuid, uuid), crm.opportunity_move_stage(uuid, uuid),
        crm.opportunity_mark_won(uuid), crm.opportunity_mark_lost(uuid, text),
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

    -- Job queue (src/sql/89_queue.sql, src/queue.c): the application
    -- enqueues, workers claim and report; the functions write the queue
    -- tables as their owner, so no role writes them directly.
    GRANT EXECUTE ON FUNCTION
        crm.enqueue_job(text, jsonb, uuid, timestamptz, uuid, text, uuid, uuid, integer),
        crm.claim_jobs(text, text, integer, interval), crm.complete_job(uuid, jsonb, text),
        crm.fail_job(uuid, text, text), crm.extend_lease(uuid, interval, text),
        crm.reap_expired_leases(), crm.retry_job(uuid)
        TO crm_writer;
    -- Workflow rules (src/sql/91_workflow.sql): admins configure rules and
    -- run the maintenance; writers take inbound events and run the
    -- in-database jobs of their tenant.
    GRANT INSERT, UPDATE, DELETE ON crm.workflow_rule TO crm_admin;
    GRANT EXECUTE ON FUNCTION crm.validate_rule(jsonb), crm.idempotency_key(text[]) TO crm_reader;
    GRANT EXECUTE ON FUNCTION
        crm.consume_event(text, jsonb, text), crm.run_jobs(integer)
        TO crm_writer;
    GRANT EXECUTE ON FUNCTION crm.run_time_rules(timestamptz), crm.rule_condition_holds(uuid, jsonb) TO crm_admin;

    -- Value checks (issue 6.3, src/sql/97_value_checks.sql): the non-empty
    -- CHECKs call crm.is_blank with the writer's rights; readers may test
    -- values the same way.
    GRANT EXECUTE ON FUNCTION crm.is_blank(text) TO crm_reader;

    -- Statistics (issue 8 item 6): RLS does not filter pg_stats or the
    -- pg_stat_* counters; in this database only superusers and members of
    -- pg_read_all_stats may read them (src/sql/92_statistics.sql).
    PERFORM crm.revoke_statistics_access();

    -- Record lifecycle (issue 6.4): reopening a won or lost record
    GRANT EXECUTE ON FUNCTION
        crm.opportunity_reopen(uuid, uuid), crm.lead_reopen(uuid, uuid)
        TO crm_writer;

    -- Activity aggregation, engagement and the event outbox (issue 7)
    GRANT EXECUTE ON FUNCTION
        crm.engagement_half_life(uuid), crm.engagement_decayed(uuid, text, uuid, timestamptz),
        crm.engagement_score(uuid, timestamptz), crm.lead_engagement_score(uuid, timestamptz),
        crm.check_aggregates(), crm.engagement_recomputed(), crm.account_summary_recomputed(), crm.event_head(), crm.event_limit(), crm.read_events(bigint, integer),
        crm.analytics_amount(numeric, text, date, uuid),
        crm.pipeline_funnel(uuid, timestamptz, timestamptz),
        crm.win_rate(text, timestamptz, timestamptz, uuid),
        crm.opportunity_stays(timestamptz, uuid),
        crm.time_in_stage(uuid, timestamptz),
        crm.sales_cycle(uuid, timestamptz, timestamptz),
        crm.sales_velocity(uuid, timestamptz, timestamptz),
        crm.lead_source_analytics(timestamptz, timestamptz),
        crm.rotting_deals(timestamptz, uuid),
        crm.owner_dashboard(timestamptz, timestamptz, timestamptz)
        TO crm_reader;
    GRANT EXECUTE ON FUNCTION
        crm.track_activity(uuid, text, jsonb, timestamptz, text, text),
        crm.emit_event(text, jsonb, text, uuid), crm.subscribe(text, bigint), crm.unsubscribe(text),
        crm.poll(text, integer), crm.ack(text, bigint)
        TO crm_writer;
    GRANT INSERT, UPDATE, DELETE ON crm.engagement_setting, crm.activity_weight TO crm_admin;
    GRANT EXECUTE ON FUNCTION crm.refresh_aggregates(uuid), crm.purge_events(interval) TO crm_admin;

    -- Lead scoring and the predictive win probability (issue 10)
    GRANT EXECUTE ON FUNCTION
        crm.validate_scoring_model(jsonb), crm.scoring_points_problem(jsonb, boolean, integer),
        crm.score_lead(uuid, uuid, timestamptz), crm.explain_score(uuid, uuid, timestamptz),
        crm.top_leads(integer, uuid, uuid, integer), crm.lead_score_trend(uuid), crm.default_scoring_weights(),
        crm.predict_win(uuid), crm.predict_lead_win(uuid), crm.explain_win(uuid), crm.pls_check(uuid),
        crm.pls_variables(uuid), crm.pls_all_variables(), crm.pls_size_band(integer),
        crm.pls_email_state(text), crm.pls_phone_state(text), crm.pls_record_values(uuid, text, uuid[]),
        crm.pls_observations(uuid, text, uuid[]), crm.pls_explain(uuid, text, uuid),
        crm.pls_predict(uuid, text, uuid), crm.pls_predict_many(uuid, text, uuid[])
        TO crm_reader;
    GRANT EXECUTE ON FUNCTION crm.rescore_leads(uuid), crm.scoring_rescore(uuid, uuid, boolean) TO crm_writer;
    GRANT INSERT, UPDATE, DELETE ON crm.scoring_model, crm.pls_config TO crm_admin;
    GRANT EXECUTE ON FUNCTION crm.pls_rebuild(uuid), crm.pls_configure(text[]) TO crm_admin;

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
    GRANT EXECUTE ON FUNCTION crm.snapshot_forecast(text, text, date, date, uuid, uuid, timestamptz) TO crm_writer;
    GRANT INSERT, UPDATE, DELETE ON crm.quota TO crm_admin;

    -- Attacker's review (issues 6 and 8, second wave): what a writer could
    -- undo.  The inbound-event ledger is append-only for writers: deleting
    -- or renaming a row let the same external event be consumed (and its
    -- rules run) twice.  Purging the job archive erases the tenant's record
    -- of what was sent and why a job was skipped: an admin's task, as
    -- purging events is.  REVOKE too, for databases set up before.
    REVOKE UPDATE, DELETE ON crm.inbound_event FROM crm_writer;
    REVOKE EXECUTE ON FUNCTION crm.purge_jobs(interval) FROM crm_writer;
    GRANT EXECUTE ON FUNCTION crm.purge_jobs(interval) TO crm_admin;

    -- Forecasting speed (issue 11 goal): the one-pass totals crm.forecast uses
    GRANT EXECUTE ON FUNCTION crm.forecast_totals(text, date, date, uuid, uuid, text, timestamptz, boolean)
        TO crm_reader;

    -- Server-written tables (issue 8 item 4, attacker's review): forecast
    -- snapshots are written by crm.snapshot_forecast as the tables' owner;
    -- roles read them only.  REVOKE for databases set up before.
    REVOKE INSERT, UPDATE, DELETE ON crm.revenue_forecast, crm.forecast_deal FROM crm_writer;
    -- the inbound-event ledger is written by crm.consume_event as its owner
    REVOKE INSERT ON crm.inbound_event FROM crm_writer;
    -- event consumers are written by subscribe/unsubscribe/ack as the owner
    REVOKE INSERT, UPDATE, DELETE ON crm.event_consumer FROM crm_writer;

    -- Private visibility of derived tables (issue 8 item 3, second pass,
    -- src/sql/93_private_derived.sql): the policies of events and jobs call
    -- crm.is_service() with the reader's rights.
    GRANT EXECUTE ON FUNCTION crm.is_service() TO crm_reader;

    -- Job queue batch forms (issue 12 throughput, src/queue.c): a
    -- producer's batch in one call, a worker's batch reported in one call.
    GRANT EXECUTE ON FUNCTION
        crm.enqueue_jobs(text, jsonb[], uuid[], timestamptz, uuid[], text, uuid[], uuid, integer),
        crm.complete_jobs(uuid[], text, jsonb), crm.fail_jobs(uuid[], text, text)
        TO crm_writer;

    -- Forecasting on Citus (issue 9): crm.forecast_deals raises a missing
    -- rate inside its query, with the reader's rights
    GRANT EXECUTE ON FUNCTION crm.forecast_no_rate(text, text, date) TO crm_reader;

    -- The outbox on Citus (issue 9): crm.read_events bounds its query, run
    -- on the tenant's node, by that node's head, with the reader's rights
    GRANT EXECUTE ON FUNCTION crm.node_event_head(), crm.node_event_limit() TO crm_reader;
    -- and the aggregates' recomputation, one tenant a query (routed to its
    -- shard), run with the caller's rights by crm.engagement_recomputed()
    -- and crm.account_summary_recomputed()
    GRANT EXECUTE ON FUNCTION
        crm.engagement_recomputed_one(uuid), crm.engagement_recomputed_for(uuid),
        crm.account_summary_recomputed_one(uuid), crm.account_summary_recomputed_for(uuid)
        TO crm_reader;

    -- Calls handed to the tenant's node on Citus (src/shard.c,
    -- src/sql/98_shard_calls.sql): each twin is granted to the roles its
    -- function is granted to, and no more.
    FOR twin, grantee IN
        SELECT t.oid::regprocedure, g.rolname
          FROM pg_catalog.pg_proc t
          JOIN pg_catalog.pg_proc f
            ON f.pronamespace = t.pronamespace
           AND f.proname OPERATOR(pg_catalog.||) '_in_shard' = t.proname
           AND t.pronargs = f.pronargs + 1
           AND pg_catalog.oidvectortypes(t.proargtypes)
               = pg_catalog.concat_ws(', ', 'uuid', NULLIF(pg_catalog.oidvectortypes(f.proargtypes), ''))
         CROSS JOIN LATERAL pg_catalog.aclexplode(f.proacl) a
          JOIN pg_catalog.pg_roles g ON g.oid = a.grantee
         WHERE t.pronamespace = 'crm'::regnamespace AND a.privilege_type = 'EXECUTE'
           AND g.rolname IN ('crm_reader', 'crm_writer', 'crm_admin', 'crm_app')
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %I', twin, grantee);
    END LOOP;
    GRANT EXECUTE ON FUNCTION crm.shard_notifications(uuid), crm.shard_call_wanted() TO crm_reader;
END
$$;
COMMENT ON FUNCTION crm.setup_roles() IS
    'Creates the group roles crm_reader, crm_writer (reader + records and operations), crm_admin (writer + configuration) and crm_app (may choose its tenant with crm.tenant_id) where missing, and grants them; idempotent; run by a superuser';
