-- src/sql/10_users.sql: the people of a tenant, their teams and managers, and
-- which database login roles act for which tenant.

CREATE TABLE crm.app_user (
    tenant_id   uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    id          uuid NOT NULL DEFAULT crm.uuid_generate_v7(),
    name        text NOT NULL CHECK (btrim(name) <> ''),
    email       crm.email_address,
    job_title   text,
    manager_id  uuid,
    is_active   boolean NOT NULL DEFAULT true,
    custom      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(custom) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT app_user_tenant_id_manager_id_fkey FOREIGN KEY (tenant_id, manager_id) REFERENCES crm.app_user (tenant_id, id)
        DEFERRABLE,
    CHECK (manager_id <> id)
);
CREATE UNIQUE INDEX app_user_email_key ON crm.app_user (tenant_id, crm.casefold(email));
CREATE INDEX app_user_manager_idx ON crm.app_user (tenant_id, manager_id);
COMMENT ON TABLE crm.app_user IS 'A person who works in the CRM (sales rep, manager); owns records';
COMMENT ON COLUMN crm.app_user.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.app_user.id IS 'Row id (UUIDv7)';
COMMENT ON COLUMN crm.app_user.name IS 'Full name';
COMMENT ON COLUMN crm.app_user.email IS 'E-mail address, unique within the tenant';
COMMENT ON COLUMN crm.app_user.job_title IS 'Job title';
COMMENT ON COLUMN crm.app_user.manager_id IS 'The user this one reports to';
COMMENT ON COLUMN crm.app_user.is_active IS 'False for people who left; their records stay';
COMMENT ON COLUMN crm.app_user.custom IS 'User-defined fields';
COMMENT ON COLUMN crm.app_user.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.app_user.updated_at IS 'When the row last changed';

CREATE TABLE crm.team (
    tenant_id   uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    id          uuid NOT NULL DEFAULT crm.uuid_generate_v7(),
    name        text NOT NULL CHECK (btrim(name) <> ''),
    manager_id  uuid,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT team_tenant_id_manager_id_fkey FOREIGN KEY (tenant_id, manager_id) REFERENCES crm.app_user (tenant_id, id)
        DEFERRABLE
);
CREATE UNIQUE INDEX team_name_key ON crm.team (tenant_id, crm.casefold(name));
CREATE INDEX team_manager_idx ON crm.team (tenant_id, manager_id);
COMMENT ON TABLE crm.team IS 'A sales team; its members report to its manager';
COMMENT ON COLUMN crm.team.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.team.id IS 'Row id (UUIDv7)';
COMMENT ON COLUMN crm.team.name IS 'Team name, unique within the tenant';
COMMENT ON COLUMN crm.team.manager_id IS 'Team leader; the members report to this user';
COMMENT ON COLUMN crm.team.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.team.updated_at IS 'When the row last changed';

-- Membership is its own table rather than app_user.team_id: that column and
-- team.manager_id would make a foreign-key cycle, which pg_dump cannot load
-- back into the extension's tables (their constraints exist before the data).
CREATE TABLE crm.team_member (
    tenant_id   uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    team_id     uuid NOT NULL,
    user_id     uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, team_id, user_id),
    FOREIGN KEY (tenant_id, team_id) REFERENCES crm.team (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, user_id) REFERENCES crm.app_user (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX team_member_user_idx ON crm.team_member (tenant_id, user_id);
COMMENT ON TABLE crm.team_member IS 'Which users belong to which teams';
COMMENT ON COLUMN crm.team_member.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.team_member.team_id IS 'The team';
COMMENT ON COLUMN crm.team_member.user_id IS 'The member';
COMMENT ON COLUMN crm.team_member.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.team_member.updated_at IS 'When the row last changed';

-- Who may be mapped is checked in C on every path (src/tenant.c), and the
-- statement's tenant is read from this table by a direct index scan on
-- role_oid, not through SPI: the lookup must work inside a shard query on
-- Citus, where a policy may not query a distributed table.
CREATE FUNCTION crm.tenant_access_check() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_tenant_access_check'
    LANGUAGE C;
COMMENT ON FUNCTION crm.tenant_access_check() IS
    'Internal: trigger of crm.tenant_access (''mapping'') and crm.app_access (''app''): only an existing role, by OID; never a superuser, BYPASSRLS role or crm_app member; a second tenant only by the operator; the server sets role_oid, the role name, granted_by and created_at';

-- No foreign keys: crm.distribute() makes the mappings a reference table
-- (every Citus node reads them locally to know the tenant), which may not
-- reference a distributed table.  Triggers do what the keys did: a mapping
-- names a user of its tenant (tenant_access_user_check), a deleted tenant
-- takes its mappings along (tenant_access_cascade on crm.tenant), and a
-- deleted user is cleared from them by crm.clear_links() (65_unlink.sql).
CREATE TABLE crm.tenant_access (
    tenant_id   uuid NOT NULL,
    role_oid    oid NOT NULL,
    login_role  name NOT NULL,
    user_id     uuid,
    granted_by  name NOT NULL DEFAULT CURRENT_USER,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, role_oid)
);
CREATE INDEX tenant_access_role_idx ON crm.tenant_access (role_oid);
CREATE INDEX tenant_access_user_idx ON crm.tenant_access (tenant_id, user_id);
CREATE TRIGGER access_check BEFORE INSERT OR UPDATE ON crm.tenant_access
    FOR EACH ROW EXECUTE FUNCTION crm.tenant_access_check('mapping');
COMMENT ON TRIGGER access_check ON crm.tenant_access IS
    'Refuses mappings that would capture a role the tenant does not own; sets the server''s columns';
CREATE FUNCTION crm.tenant_access_user_check() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    -- On a Citus node the trigger fires on a placement (tenant_access_<shard>),
    -- where crm.app_user, distributed, cannot be read: crm.grant_tenant_access()
    -- checks on the coordinator instead.
    IF TG_TABLE_NAME = 'tenant_access' AND NEW.user_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM crm.app_user u WHERE u.tenant_id = NEW.tenant_id AND u.id = NEW.user_id) THEN
        RAISE EXCEPTION 'insert or update on table "tenant_access" violates foreign key constraint "tenant_access_tenant_id_user_id_fkey"'
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = format('Key (tenant_id, user_id)=(%s, %s) is not present in table "app_user".', NEW.tenant_id, NEW.user_id);
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION crm.tenant_access_user_check() IS
    'Internal: trigger of crm.tenant_access: the user a mapping acts as is a user of its tenant (what a foreign key would check; the table is a Citus reference table)';
CREATE TRIGGER user_check BEFORE INSERT OR UPDATE OF tenant_id, user_id ON crm.tenant_access
    FOR EACH ROW EXECUTE FUNCTION crm.tenant_access_user_check();
COMMENT ON TRIGGER user_check ON crm.tenant_access IS
    'Refuses a mapping to a user of another tenant or to no user (23503)';

CREATE FUNCTION crm.tenant_access_cascade() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    -- not on a Citus placement (tenant_<shard>): a shard query may not write
    -- a reference table; a mapping to a tenant that is gone acts for nothing
    IF TG_TABLE_NAME = 'tenant' THEN
        DELETE FROM crm.tenant_access a WHERE a.tenant_id = OLD.tenant_id;
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm.tenant_access_cascade() IS
    'Internal: trigger of crm.tenant: a deleted tenant''s login-role mappings go with it (what ON DELETE CASCADE did)';
CREATE TRIGGER tenant_access_cascade AFTER DELETE ON crm.tenant
    FOR EACH ROW EXECUTE FUNCTION crm.tenant_access_cascade();
COMMENT ON TRIGGER tenant_access_cascade ON crm.tenant IS
    'Deletes the login-role mappings of the deleted tenants';

COMMENT ON TABLE crm.tenant_access IS 'Login roles (people, BI tools) that act for a tenant, and as which CRM user; kept by crm.grant_tenant_access()';
COMMENT ON COLUMN crm.tenant_access.tenant_id IS 'The tenant the role acts for';
COMMENT ON COLUMN crm.tenant_access.role_oid IS 'OID of the mapped role: the mapping ends with the role, and a role re-created under the same name does not inherit it (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.tenant_access.login_role IS 'Name of the role when it was mapped (set by the server from the name given)';
COMMENT ON COLUMN crm.tenant_access.user_id IS 'The CRM user the role acts as (crm.current_user_id())';
COMMENT ON COLUMN crm.tenant_access.granted_by IS 'Role that granted the access (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.tenant_access.created_at IS 'When the access was granted (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.tenant_access.updated_at IS 'When the row last changed';

-- No foreign key to crm.tenant: the allow-list must be readable on every
-- Citus node (crm.distribute() makes it a reference table, which may not
-- reference a distributed table); an entry for a tenant that no longer
-- exists allows nothing.
CREATE TABLE crm.app_access (
    tenant_id   uuid NOT NULL,
    role_oid    oid NOT NULL,
    app_role    name NOT NULL,
    granted_by  name NOT NULL DEFAULT CURRENT_USER,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, role_oid)
);
CREATE INDEX app_access_role_idx ON crm.app_access (role_oid);
CREATE TRIGGER access_check BEFORE INSERT OR UPDATE ON crm.app_access
    FOR EACH ROW EXECUTE FUNCTION crm.tenant_access_check('app');
COMMENT ON TRIGGER access_check ON crm.app_access IS
    'Only members of crm_app are listed; sets the server''s columns';
COMMENT ON TABLE crm.app_access IS
    'Optional allow-list kept by the operator: an application role (crm_app) listed here may act only for the tenants listed; a role not listed may act for any tenant';
COMMENT ON COLUMN crm.app_access.tenant_id IS 'A tenant the application role may serve';
COMMENT ON COLUMN crm.app_access.role_oid IS 'OID of the application role (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.app_access.app_role IS 'Name of the application role when it was listed (set by the server from the name given)';
COMMENT ON COLUMN crm.app_access.granted_by IS 'Role that listed it (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.app_access.created_at IS 'When it was listed (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.app_access.updated_at IS 'When the row last changed';
