-- crm.distribute() without Citus: a clear refusal (55000), nothing changed.
-- (With Citus, make test-citus distributes and compares with one node.)
SELECT try($$SELECT * FROM crm.distribute()$$);
\set VERBOSITY default
SELECT * FROM crm.distribute();
\set VERBOSITY terse
-- not granted to the application roles: only the operator distributes
SELECT r.rolname, has_function_privilege(r.rolname, 'crm.distribute()', 'EXECUTE') AS can_distribute
  FROM pg_roles r WHERE r.rolname IN ('crm_reader', 'crm_writer', 'crm_admin', 'crm_app') ORDER BY 1;
-- runs with the caller's rights and a pinned search_path
SELECT prosecdef, proconfig FROM pg_proc WHERE oid = 'crm.distribute()'::regprocedure;
