-- src/sql/99_finish.sql: what applies to every table and function above.

-- The generic server-owned columns of every table (src/touch.c): created_at
-- and updated_at are the server's whatever a client sends, and an UPDATE
-- may not change id or tenant_id.  Their COMMENTs say so.
DO $$
DECLARE
    t regclass;
    col record;
BEGIN
    FOR t IN SELECT c.oid FROM pg_catalog.pg_class c
              WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind = 'r'
              ORDER BY c.relname
    LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER touch_updated_at BEFORE INSERT OR UPDATE ON %s'
                       ' FOR EACH ROW EXECUTE FUNCTION crm.touch_updated_at()', t);
        EXECUTE pg_catalog.format('COMMENT ON TRIGGER touch_updated_at ON %s IS %L', t,
                       'created_at and updated_at are the server''s; id and tenant_id cannot change');
        FOR col IN SELECT a.attname, pg_catalog.col_description(t, a.attnum) AS comment
                   FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid = t AND NOT a.attisdropped
                    AND a.attname IN ('created_at', 'updated_at', 'id', 'tenant_id')
        LOOP
            EXECUTE pg_catalog.format('COMMENT ON COLUMN %s.%I IS %L', t, col.attname,
                           coalesce(col.comment, col.attname::text) OPERATOR(pg_catalog.||)
                           CASE WHEN col.attname IN ('created_at', 'updated_at')
                                THEN ' (set by the server; a client value is ignored)'
                                ELSE ' (cannot be changed by UPDATE)' END);
        END LOOP;
    END LOOP;
END
$$;

COMMENT ON FUNCTION crm.touch_updated_at() IS
    'Trigger on every table: created_at and updated_at are the server''s (created_at set on INSERT and kept, updated_at set on INSERT and every UPDATE); an UPDATE that changes id or tenant_id is refused (42501)';

-- A row written by a session that acts for no tenant is refused with the
-- reason (src/tenant.c), before any other trigger looks at its tenant_id.
DO $$
DECLARE
    t regclass;
BEGIN
    FOR t IN SELECT c.oid FROM pg_catalog.pg_class c
              WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind = 'r'
                AND c.relname NOT IN ('tenant', 'tenant_access', 'app_access')
                AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                             WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
              ORDER BY c.relname
    LOOP
        EXECUTE format('CREATE TRIGGER _tenant_required BEFORE INSERT ON %s'
                       ' FOR EACH ROW EXECUTE FUNCTION crm.tenant_require()', t);
        EXECUTE format('COMMENT ON TRIGGER _tenant_required ON %s IS %L', t,
                       'A session that acts for no tenant gets the reason, not a bare policy or NOT NULL error');
    END LOOP;
END
$$;

-- pg_dump keeps the data of every table; shipped lookup rows stay out, as
-- CREATE EXTENSION makes them again on restore.
-- The global lookups mark their shipped rows with is_builtin.
DO $$
DECLARE
    t regclass;
    builtin boolean;
BEGIN
    FOR t, builtin IN
        SELECT c.oid, EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                               WHERE a.attrelid = c.oid AND a.attname = 'is_builtin' AND NOT a.attisdropped)
          FROM pg_catalog.pg_class c
         WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind = 'r'
    LOOP
        PERFORM pg_catalog.pg_extension_config_dump(t, CASE WHEN builtin THEN 'WHERE NOT is_builtin' ELSE '' END);
    END LOOP;
END
$$;

-- Nothing is granted to PUBLIC; the crm_* roles get their rights from
-- crm.setup_roles(), at once when the roles already exist.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA crm FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA crm FROM PUBLIC;
REVOKE ALL ON SCHEMA crm FROM PUBLIC;
REVOKE ALL ON DOMAIN crm.email_address FROM PUBLIC;

DO $$
BEGIN
    IF (SELECT count(*) FROM pg_catalog.pg_roles
         WHERE rolname IN ('crm_reader', 'crm_writer', 'crm_admin', 'crm_app')) = 4 THEN
        PERFORM crm.setup_roles();
    END IF;
END
$$;
