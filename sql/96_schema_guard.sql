-- The extension's schema is its own (issue 8, item 2).
--
-- CREATE EXTENSION crm runs its script with search_path = crm, and uses a
-- schema crm that already exists.  A role that may create schemas (here the
-- database's owner) could make crm beforehand and put in it a format() and
-- operators >= / <= on (numeric, integer) whose exact-match signatures beat
-- pg_catalog's: the install, run by a superuser, would call them and bind
-- them into check constraints, and the schema's owner could later rename
-- the schema and plant objects that the C code's crm.* statements use.
-- Install must refuse such a schema before anything in it is called, and
-- the extension must refuse to run once its schema is renamed or replaced.
SELECT current_database() AS regress_db \gset
SET client_min_messages = warning;
DROP DATABASE IF EXISTS regress_guard;
DROP ROLE IF EXISTS regress_guard_dbo;
RESET client_min_messages;
CREATE ROLE regress_guard_dbo LOGIN CREATEDB;
CREATE DATABASE regress_guard OWNER regress_guard_dbo TEMPLATE template0;

-- The attacker: the database's owner, no superuser --------------------------------
\c regress_guard regress_guard_dbo
-- every trojan records its call here (public belongs to the database owner)
CREATE TABLE public.trojan_calls (fn text NOT NULL, called_by name NOT NULL);
GRANT INSERT ON public.trojan_calls TO PUBLIC;
CREATE SCHEMA crm;
CREATE FUNCTION crm.format(text, text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.trojan_calls VALUES ('format(text, text)', current_user);
    RETURN pg_catalog.format($1, $2);
END
$$;
CREATE FUNCTION crm.format(text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.trojan_calls VALUES ('format(text)', current_user);
    RETURN pg_catalog.format($1);
END
$$;
CREATE FUNCTION crm.num_ge_int(numeric, integer) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.trojan_calls VALUES ('numeric >= integer', current_user);
    RETURN $1 OPERATOR(pg_catalog.>=) $2::numeric;
END
$$;
CREATE FUNCTION crm.num_le_int(numeric, integer) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.trojan_calls VALUES ('numeric <= integer', current_user);
    RETURN $1 OPERATOR(pg_catalog.<=) $2::numeric;
END
$$;
CREATE OPERATOR crm.>= (LEFTARG = numeric, RIGHTARG = integer, FUNCTION = crm.num_ge_int);
CREATE OPERATOR crm.<= (LEFTARG = numeric, RIGHTARG = integer, FUNCTION = crm.num_le_int);
CREATE FUNCTION crm.btrim(text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.trojan_calls VALUES ('btrim(text)', current_user);
    RETURN pg_catalog.btrim($1);
END
$$;
CREATE FUNCTION crm.uuid_generate_v7() RETURNS uuid LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.trojan_calls VALUES ('uuid_generate_v7()', current_user);
    RETURN '00000000-0000-7000-8000-000000000000';
END
$$;
-- control: under search_path = crm (as CREATE EXTENSION sets it) the
-- trojans do win over pg_catalog, so the refusals below are what saves us
SET search_path = crm;
SELECT format('%s', 'x') AS formatted, 2.5 >= 2 AS ge, 1.5 <= 2 AS le;
SELECT fn FROM public.trojan_calls ORDER BY fn;
TRUNCATE public.trojan_calls;
RESET search_path;

-- The superuser installs: refused, before anything is called ----------------------
\c regress_guard postgres
CREATE EXTENSION crm;
SELECT count(*) AS trojan_calls FROM public.trojan_calls;
SELECT count(*) AS crm_installed FROM pg_extension WHERE extname = 'crm';
-- the schema and its trojans are as the attacker left them
SELECT count(*) AS objects_in_crm FROM pg_depend
 WHERE refclassid = 'pg_namespace'::regclass AND refobjid = 'crm'::regnamespace;

-- Variants -----------------------------------------------------------------------
-- a schema crm the attacker makes in the installing transaction itself
DROP SCHEMA crm CASCADE;
BEGIN;
SET LOCAL ROLE regress_guard_dbo;
CREATE SCHEMA crm;
RESET ROLE;
CREATE EXTENSION crm;
ROLLBACK;
-- an empty schema the superuser made, but the attacker may create objects in
CREATE SCHEMA crm;
GRANT CREATE ON SCHEMA crm TO regress_guard_dbo;
CREATE EXTENSION crm;
GRANT CREATE ON SCHEMA crm TO PUBLIC;
REVOKE CREATE ON SCHEMA crm FROM regress_guard_dbo;
CREATE EXTENSION crm;
-- ... who used that to plant a trojan before the grant was taken back
SET ROLE regress_guard_dbo;
CREATE FUNCTION crm.format(text, text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.trojan_calls VALUES ('format(text, text)', current_user);
    RETURN pg_catalog.format($1, $2);
END
$$;
RESET ROLE;
REVOKE CREATE ON SCHEMA crm FROM PUBLIC;
CREATE EXTENSION crm;
-- a superuser's own schema holding anything at all (here a table) is refused too
DROP SCHEMA crm CASCADE;
CREATE SCHEMA crm;
CREATE TABLE crm.leftover (x int);
CREATE EXTENSION crm;
SELECT count(*) AS trojan_calls FROM public.trojan_calls;
SELECT count(*) AS crm_installed FROM pg_extension WHERE extname = 'crm';

-- What is accepted ----------------------------------------------------------------
-- no schema crm: CREATE EXTENSION makes it
DROP SCHEMA crm CASCADE;
CREATE EXTENSION crm;
SELECT nspowner::regrole AS schema_owner FROM pg_namespace WHERE nspname = 'crm';
-- DROP EXTENSION leaves the empty schema it made; installing again (as
-- pg_restore does after CREATE SCHEMA crm) uses it
DROP EXTENSION crm;
SELECT count(*) AS schema_left FROM pg_namespace WHERE nspname = 'crm';
CREATE EXTENSION crm;
-- the guard left nothing behind (its function was dropped at once)
SELECT count(*) AS guard_functions FROM pg_proc WHERE proname LIKE 'crm\_guard%';
SELECT crm.setup_roles();
SELECT crm.create_tenant('Guarded') AS tenant \gset
SELECT count(*) AS trojan_calls FROM public.trojan_calls;

-- Nothing resolves through schema crm unless it is the extension's own --------------
-- every function and operator in schema crm is a member of the extension
SELECT p.oid::regprocedure AS foreign_function
  FROM pg_proc p
 WHERE p.pronamespace = 'crm'::regnamespace
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e');
SELECT o.oid::regoperator AS foreign_operator
  FROM pg_operator o
 WHERE o.oprnamespace = 'crm'::regnamespace
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_operator'::regclass AND d.objid = o.oid AND d.deptype = 'e');
-- and every function and operator that the extension's constraints,
-- defaults, views, policies, triggers, domains and SQL-standard function
-- bodies are bound to is pg_catalog's or the extension's
CREATE TEMP VIEW crm_bindings AS
SELECT d.refclassid, d.refobjid
  FROM pg_depend d
  LEFT JOIN pg_constraint c ON d.classid = 'pg_constraint'::regclass AND c.oid = d.objid
  LEFT JOIN pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND ad.oid = d.objid
  LEFT JOIN pg_rewrite rw ON d.classid = 'pg_rewrite'::regclass AND rw.oid = d.objid
  LEFT JOIN pg_policy po ON d.classid = 'pg_policy'::regclass AND po.oid = d.objid
  LEFT JOIN pg_trigger tg ON d.classid = 'pg_trigger'::regclass AND tg.oid = d.objid
  LEFT JOIN pg_proc pr ON d.classid = 'pg_proc'::regclass AND pr.oid = d.objid
  LEFT JOIN pg_class rel ON rel.oid = coalesce(c.conrelid, ad.adrelid, rw.ev_class, po.polrelid, tg.tgrelid)
  LEFT JOIN pg_type ty ON ty.oid = c.contypid
 WHERE d.refclassid IN ('pg_proc'::regclass, 'pg_operator'::regclass)
   AND 'crm'::regnamespace IN (rel.relnamespace, ty.typnamespace, pr.pronamespace);
-- (built-ins are pinned: PostgreSQL records no dependency on them, so what
-- is listed here is every binding to a function or operator that is not
-- built in; the extension's own are many)
SELECT count(*) > 100 AS many_bindings FROM crm_bindings;
CREATE TEMP VIEW crm_foreign_bindings AS
SELECT b.refclassid::regclass AS kind,
       CASE WHEN b.refclassid = 'pg_proc'::regclass THEN b.refobjid::regprocedure::text
            ELSE b.refobjid::regoperator::text END AS bound_to
  FROM crm_bindings b
  LEFT JOIN pg_proc p ON b.refclassid = 'pg_proc'::regclass AND p.oid = b.refobjid
  LEFT JOIN pg_operator o ON b.refclassid = 'pg_operator'::regclass AND o.oid = b.refobjid
 WHERE coalesce(p.pronamespace, o.oprnamespace) <> 'pg_catalog'::regnamespace
   AND NOT EXISTS (SELECT 1 FROM pg_depend e
                    WHERE e.classid = b.refclassid AND e.objid = b.refobjid AND e.deptype = 'e'
                      AND e.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'crm'));
SELECT * FROM crm_foreign_bindings ORDER BY 1, 2;
-- control: a check constraint bound to an operator outside pg_catalog is found
BEGIN;
CREATE FUNCTION pg_temp.num_ge_int(numeric, integer) RETURNS boolean
    LANGUAGE sql RETURN $1 OPERATOR(pg_catalog.>=) $2::numeric;
CREATE OPERATOR public.>= (LEFTARG = numeric, RIGHTARG = integer, FUNCTION = pg_temp.num_ge_int);
SET LOCAL search_path = public, pg_catalog;
ALTER TABLE crm.opportunity ADD CONSTRAINT bound_to_public CHECK (amount >= 0);
SELECT * FROM crm_foreign_bindings ORDER BY 1, 2;
ROLLBACK;

-- After install the schema is the installer's: the database owner can neither
-- add to it nor rename it
\c regress_guard regress_guard_dbo
CREATE FUNCTION crm.format(text, text) RETURNS text LANGUAGE sql RETURN 'x';
ALTER SCHEMA crm RENAME TO crm_old;

-- Renamed or replaced, the extension stops ----------------------------------------
\c regress_guard postgres
BEGIN;
ALTER SCHEMA crm RENAME TO crm_moved;
-- the C code would name crm.tenant_access, crm.stage... that no longer exist
SELECT crm_moved.current_tenant();
ROLLBACK;
BEGIN;
SET LOCAL crm.tenant_id = :'tenant';
INSERT INTO crm.account (tenant_id, name) VALUES (:'tenant', 'Moved Ltd');
ALTER SCHEMA crm RENAME TO crm_moved;
CREATE SCHEMA crm AUTHORIZATION regress_guard_dbo;
CREATE TABLE crm.tenant_access (tenant_id uuid, user_id uuid, login_role name);
-- the triggers (C: derived columns, stage history, updated_at) refuse as well
UPDATE crm_moved.account SET name = 'Moved Ltd 2';
ROLLBACK;
-- a schema crm that the extension's owner no longer owns is refused as well
BEGIN;
ALTER SCHEMA crm OWNER TO regress_guard_dbo;
SELECT crm.current_tenant();
ROLLBACK;
-- back in place, it works again
BEGIN;
SET LOCAL crm.tenant_id = :'tenant';
INSERT INTO crm.account (tenant_id, name) VALUES (:'tenant', 'Home Ltd') RETURNING name;
SELECT crm.current_tenant() = :'tenant' AS acts_for_tenant;
ROLLBACK;
SELECT count(*) AS trojan_calls FROM public.trojan_calls;

\c :regress_db
DROP DATABASE regress_guard;
DROP ROLE regress_guard_dbo;
