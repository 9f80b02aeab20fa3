-- test/citus/setup.sql: the distributed database of make test-citus, on the
-- coordinator.  CREATE EXTENSION crm is propagated by Citus to both workers
-- (the install script runs on every node); the roles are made before
-- crm.distribute(), which gives the workers the same grants.  Citus makes
-- roles on every node when they are created from a Citus database.
SET client_min_messages = warning;
CREATE EXTENSION crm;
SELECT crm.setup_roles();
DROP ROLE IF EXISTS crm_citus_app, crm_citus_alice, crm_citus_nobody;
-- an application server: chooses its tenant per transaction
CREATE ROLE crm_citus_app LOGIN;
GRANT crm_app, crm_writer TO crm_citus_app;
-- a person's login role: mapped to one tenant (test/citus/compare.sql)
CREATE ROLE crm_citus_alice LOGIN;
GRANT crm_writer TO crm_citus_alice;
-- a role of no tenant
CREATE ROLE crm_citus_nobody LOGIN;
GRANT crm_reader TO crm_citus_nobody;
-- deletes of users, teams, pipelines and stages need crm_admin
-- (test/citus/compare.sql, the delete blocks): an administrating
-- application, and an administrator's login role mapped to one tenant
DROP ROLE IF EXISTS crm_citus_admin, crm_citus_boss;
CREATE ROLE crm_citus_admin LOGIN;
GRANT crm_app, crm_admin TO crm_citus_admin;
CREATE ROLE crm_citus_boss LOGIN;
GRANT crm_admin TO crm_citus_boss;
