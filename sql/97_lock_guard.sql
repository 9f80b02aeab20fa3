-- One tenant cannot block the others with LOCK TABLE (issue 8, item 5).
--
-- PostgreSQL lets any role with UPDATE, DELETE or TRUNCATE on a table take
-- any lock on it, and one ACCESS EXCLUSIVE lock on crm.account, held in an
-- idle transaction, stops every tenant's statements on that table (and one
-- on crm.tenant_access every policy check).  The crm library's
-- ProcessUtility hook refuses LOCK TABLE on the extension's relations, and
-- on views that reach them, to roles that do not own them.  The server
-- preloads the library (shared_preload_libraries = 'crm'), so the hook is
-- active from a session's first statement.
SELECT current_database() AS regress_db, current_user AS regress_su \gset
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS regress_lock_ws CASCADE;
DROP ROLE IF EXISTS regress_lock_writer, regress_lock_admin, regress_lock_reader;
RESET client_min_messages;
CREATE ROLE regress_lock_writer LOGIN IN ROLE crm_writer;
CREATE ROLE regress_lock_admin LOGIN IN ROLE crm_admin;
CREATE ROLE regress_lock_reader LOGIN IN ROLE crm_reader;
CREATE SCHEMA regress_lock_ws AUTHORIZATION regress_lock_writer;
SELECT 'crm' = ANY (string_to_array(replace(current_setting('shared_preload_libraries'), ' ', ''), ','))
    AS crm_preloaded;
\set SHOW_CONTEXT never

-- A writer, in a new session whose first statement is the LOCK --------------------
\c :regress_db regress_lock_writer
BEGIN;
LOCK TABLE crm.account IN ACCESS EXCLUSIVE MODE;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- PostgreSQL itself would allow it: the writer may update the table
SELECT has_table_privilege('crm.account', 'UPDATE') AS may_update;
-- every mode, NOWAIT, several tables, ONLY, the name found on search_path
BEGIN;
LOCK TABLE crm.opportunity IN SHARE MODE NOWAIT;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
LOCK TABLE crm.contact IN ROW EXCLUSIVE MODE;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
LOCK TABLE crm.lead IN ACCESS SHARE MODE;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
LOCK TABLE regress_lock_ws.nothing_here, crm.tag;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
LOCK TABLE crm.tag, crm.activity;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
LOCK TABLE ONLY crm.stage_history IN EXCLUSIVE MODE;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SET LOCAL search_path = crm;
LOCK account;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- through the extension's views (LOCK on a view locks what it reads)
BEGIN;
LOCK TABLE crm.opportunity_kanban;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- through a view of the writer's own over crm.account, and a view of that view
CREATE VIEW regress_lock_ws.my_accounts AS SELECT id, name FROM crm.account;
CREATE VIEW regress_lock_ws.my_accounts_too AS
    SELECT * FROM regress_lock_ws.my_accounts WHERE id IN (SELECT id FROM crm.contact);
BEGIN;
LOCK TABLE regress_lock_ws.my_accounts IN ACCESS EXCLUSIVE MODE;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
LOCK TABLE regress_lock_ws.my_accounts_too IN ACCESS EXCLUSIVE MODE;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- from inside a function (the statement reaches the hook through SPI)
DO $$ BEGIN LOCK TABLE crm.account IN ACCESS EXCLUSIVE MODE; END $$;
\echo :LAST_ERROR_SQLSTATE
-- the writer's own tables are the writer's business
CREATE TABLE regress_lock_ws.scratch (x int);
BEGIN;
LOCK TABLE regress_lock_ws.scratch IN ACCESS EXCLUSIVE MODE;
SELECT mode FROM pg_locks
 WHERE relation = 'regress_lock_ws.scratch'::regclass AND pid = pg_backend_pid();
COMMIT;
-- and the rows it changes are still locked the ordinary way
BEGIN;
SELECT count(*) AS locked_rows FROM (SELECT id FROM crm.account FOR UPDATE) AS a;
COMMIT;

-- An admin cannot stop every policy check with a lock on crm.tenant_access ----------
\c :regress_db regress_lock_admin
BEGIN;
LOCK TABLE crm.tenant_access IN ACCESS EXCLUSIVE MODE;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
LOCK TABLE crm.tenant IN SHARE ROW EXCLUSIVE MODE;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- A reader may not lock either (PostgreSQL would grant it ACCESS SHARE) -------------
\c :regress_db regress_lock_reader
BEGIN;
LOCK TABLE crm.account IN ACCESS SHARE MODE;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- The owner of the tables (the superuser who installed crm) may ------------------
\c :regress_db :regress_su
SELECT relname, relowner::regrole AS owner FROM pg_class
 WHERE oid IN ('crm.account'::regclass, 'crm.tenant_access'::regclass) ORDER BY relname;
BEGIN;
LOCK TABLE crm.account, crm.tenant_access IN ACCESS EXCLUSIVE MODE;
SELECT relation::regclass AS relation, mode FROM pg_locks
 WHERE relation IN ('crm.account'::regclass, 'crm.tenant_access'::regclass)
   AND pid = pg_backend_pid() AND mode = 'AccessExclusiveLock'
 ORDER BY relation::regclass::text;
COMMIT;
BEGIN;
LOCK TABLE regress_lock_ws.my_accounts IN ACCESS EXCLUSIVE MODE;
COMMIT;

-- The owner of a database may VACUUM FULL and REINDEX every table in it ------------
-- (PostgreSQL 15), and that role is often the application's: refused on crm
-- tables too, plain VACUUM and ANALYZE (which block no reader or writer) left alone.
SET client_min_messages = warning;
DROP DATABASE IF EXISTS regress_lock_db;
DROP ROLE IF EXISTS regress_lock_dbo;
RESET client_min_messages;
CREATE ROLE regress_lock_dbo LOGIN IN ROLE crm_writer;
CREATE DATABASE regress_lock_db OWNER regress_lock_dbo TEMPLATE template0;
\c regress_lock_db :regress_su
CREATE EXTENSION crm;
\c regress_lock_db regress_lock_dbo
VACUUM FULL crm.account;
\echo :LAST_ERROR_SQLSTATE
VACUUM (FULL, ANALYZE) crm.tenant_access;
\echo :LAST_ERROR_SQLSTATE
VACUUM FULL;
\echo :LAST_ERROR_SQLSTATE
REINDEX TABLE crm.account;
\echo :LAST_ERROR_SQLSTATE
REINDEX INDEX crm.account_pkey;
\echo :LAST_ERROR_SQLSTATE
REINDEX SCHEMA crm;
\echo :LAST_ERROR_SQLSTATE
REINDEX DATABASE regress_lock_db;
\echo :LAST_ERROR_SQLSTATE
-- allowed: plain VACUUM and ANALYZE, and VACUUM FULL or REINDEX of its own tables
VACUUM crm.account;
ANALYZE crm.account;
CREATE TABLE public.own (x int PRIMARY KEY);
VACUUM FULL public.own;
REINDEX TABLE public.own;
\c regress_lock_db :regress_su
VACUUM FULL crm.account;
REINDEX TABLE crm.account;
\c :regress_db :regress_su
DROP DATABASE regress_lock_db;
DROP ROLE regress_lock_dbo;

DROP SCHEMA regress_lock_ws CASCADE;
DROP ROLE regress_lock_writer, regress_lock_admin, regress_lock_reader;
