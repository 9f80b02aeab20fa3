-- src/sql/99_finish.sql: what applies to every table and function above.

-- updated_at of every table is kept by a trigger, whichever client writes.
DO $$
DECLARE
    t regclass;
BEGIN
    FOR t IN SELECT c.oid FROM pg_catalog.pg_class c
              WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind = 'r'
              ORDER BY c.relname
    LOOP
        EXECUTE format('CREATE TRIGGER touch_updated_at BEFORE UPDATE ON %s'
                       ' FOR EACH ROW EXECUTE FUNCTION crm.touch_updated_at()', t);
        EXECUTE format('COMMENT ON TRIGGER touch_updated_at ON %s IS %L', t,
                       'updated_at = now() on every UPDATE');
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
