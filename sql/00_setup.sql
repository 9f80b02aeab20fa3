-- The extension and its roles, for the files that follow (one database).
CREATE EXTENSION crm;
SELECT crm.setup_roles();
-- setup_roles() is idempotent: a second run changes nothing and says nothing
SELECT crm.setup_roles();
-- the four group roles (by name: a cluster may have other crm_* roles, e.g. the demo's crm_demo)
SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname IN ('crm_reader', 'crm_writer', 'crm_admin', 'crm_app') ORDER BY rolname;
\dx crm

-- Errors are shown as SQLSTATE and message, with ids masked, by this helper.
CREATE FUNCTION public.try(statement text) RETURNS text
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE statement;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM,
        '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g');
END
$$;

-- The files that follow act as an application would: a role that is a
-- member of crm_app (so it chooses its tenant with crm.tenant_id) and of
-- crm_admin, under row-level security.  Superusers bypass RLS, so they only
-- make tenants (crm.create_tenant) here.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'regress_crm_app') THEN
        CREATE ROLE regress_crm_app NOLOGIN;
    END IF;
END
$$;
-- quietly: on a cluster that ran the suite before, the role is a member already
SET client_min_messages = warning;
GRANT crm_app, crm_admin TO regress_crm_app;
RESET client_min_messages;
