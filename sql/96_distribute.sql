-- crm.distribute() without Citus: a clear refusal (55000), nothing changed.
-- (With Citus, make test-citus distributes and compares with one node.)
SELECT try($$SELECT * FROM crm.distribute()$$);
\set VERBOSITY default
SELECT * FROM crm.distribute();
\set VERBOSITY terse
-- not granted to the application roles: only the operator distributes
SELECT r.rolname, has_function_privilege(r.rolname, 'crm.distribute()', 'EXECUTE') AS can_distribute
  FROM pg_roles r WHERE r.rolname IN ('crm_reader', 'crm_writer', 'crm_admin', 'crm_app') ORDER BY 1;
-- every table is still local
SELECT count(*) AS crm_tables FROM pg_class WHERE relnamespace = 'crm'::regnamespace AND relkind = 'r';
