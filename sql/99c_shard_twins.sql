-- The twins of the owner-writing calls (issue 9, src/shard.c): on Citus a
-- call such as crm.emit_event is handed to crm.emit_event_in_shard(tenant,
-- ...) on the tenant's node (make test-citus shows it); here, on one node,
-- nothing hands calls over, and a twin called directly is a fence: it runs
-- its function for the session's tenant only, with the function's own
-- checks and errors, for the roles the function is granted to.

SET client_min_messages = warning;
SELECT crm.create_tenant('Twin Co') AS tw \gset
SELECT crm.create_tenant('Twin Other') AS tw_other \gset
DROP ROLE IF EXISTS regress_twin_reader;
CREATE ROLE regress_twin_reader NOLOGIN;
GRANT crm_app, crm_reader TO regress_twin_reader;
SET ROLE regress_crm_app;
SET crm.tenant_id = :'tw';

-- 1. On one node no call is handed over, and nothing is left to relay.
SELECT crm.shard_call_wanted() AS wanted, count(*) AS notifications
  FROM crm.shard_notifications(:'tw');

-- 2. A twin runs its function for the session's tenant: the event is the
-- tenant's, as crm.emit_event's would be.
SELECT crm.emit_event_in_shard(:'tw', 'TwinThing', '{"n": 1}', NULL, NULL) > 0 AS emitted;
SELECT e.event_type, e.payload, e.tenant_id = :'tw' AS own_tenant FROM crm.event e WHERE e.event_type = 'TwinThing';

-- 3. Another tenant, or none: refused, and nothing written there.
SELECT try(format($$SELECT crm.emit_event_in_shard(%L, 'TwinForged', '{}', NULL, NULL)$$, :'tw_other')) AS other_tenant,
       try($$SELECT crm.emit_event_in_shard(NULL, 'TwinForged', '{}', NULL, NULL)$$) AS no_tenant,
       try(format($$SELECT count(*) FROM crm.claim_jobs_in_shard(%L, 'webhook', 'w', 1, '1 minute')$$, :'tw_other')) AS other_claims,
       try(format($$SELECT crm.purge_jobs_in_shard(%L, '1 day')$$, :'tw_other')) AS other_purge,
       try(format($$SELECT count(*) FROM crm.shard_notifications(%L)$$, :'tw_other')) AS other_notifications;
RESET ROLE;
SELECT count(*) AS forged_events FROM crm.event WHERE event_type = 'TwinForged';
SET ROLE regress_crm_app;
SET crm.tenant_id = :'tw';
-- a session of no tenant has no twin to call
RESET crm.tenant_id;
SELECT try(format($$SELECT crm.emit_event_in_shard(%L, 'TwinForged', '{}', NULL, NULL)$$, :'tw')) AS sessionless;
SET crm.tenant_id = :'tw';

-- 4. The function's own checks and SQLSTATEs, whichever way it is called.
SELECT try($$SELECT count(*) FROM crm.claim_jobs('webhook', 'w', 0)$$) AS claim_zero,
       try(format($$SELECT count(*) FROM crm.claim_jobs_in_shard(%L, 'webhook', 'w', 0, '1 minute')$$, :'tw')) AS twin_claim_zero;
SELECT try($$SELECT crm.emit_event('bad type', '{}')$$) AS emit_bad,
       try(format($$SELECT crm.emit_event_in_shard(%L, 'bad type', '{}', NULL, NULL)$$, :'tw')) AS twin_emit_bad;
SELECT try($$SELECT crm.complete_job('00000000-0000-7000-8000-000000000001', NULL, 'w')$$) AS complete_unknown,
       try(format($$SELECT crm.complete_job_in_shard(%L, '00000000-0000-7000-8000-000000000001', NULL, 'w')$$, :'tw'))
           AS twin_complete_unknown;
-- a set-returning twin gives its function's rows
SELECT crm.enqueue_job_in_shard(:'tw', 'webhook', '{"n": 1}', NULL, now(), NULL, NULL, NULL, NULL, 3) IS NOT NULL AS enqueued;
SELECT c.action, c.params, c.attempts FROM crm.claim_jobs_in_shard(:'tw', 'webhook', 'twin-worker', 5, '1 minute') c;
SELECT f.next_run > now() AS retried_later FROM crm.fail_jobs_in_shard(:'tw',
       (SELECT array_agg(j.id) FROM crm.job j WHERE j.locked_by = 'twin-worker'), 'twin-worker', 'HTTP 500') f;
RESET ROLE;

-- 5. Granted as the function: a reader may not emit, through the twin either.
SET ROLE regress_twin_reader;
SET crm.tenant_id = :'tw';
SELECT try($$SELECT crm.emit_event('TwinRead', '{}')$$) AS reader_emit,
       try(format($$SELECT crm.emit_event_in_shard(%L, 'TwinRead', '{}', NULL, NULL)$$, :'tw')) AS reader_twin_emit,
       crm.shard_call_wanted() AS reader_may_ask;
RESET ROLE;
RESET crm.tenant_id;
SELECT p.oid::regprocedure AS twin_of_nothing
  FROM pg_proc p
 WHERE p.pronamespace = 'crm'::regnamespace AND p.proname LIKE '%\_in\_shard'
   AND NOT EXISTS (SELECT 1 FROM pg_proc f
                    WHERE f.pronamespace = p.pronamespace AND f.proname || '_in_shard' = p.proname
                      AND f.proretset = p.proretset AND f.prorettype = p.prorettype
                      AND oidvectortypes(p.proargtypes) = concat_ws(', ', 'uuid', NULLIF(oidvectortypes(f.proargtypes), '')))
 ORDER BY 1;
-- every twin is granted to exactly the roles of its function
SELECT p.oid::regprocedure AS twin, r.rolname
  FROM pg_proc p JOIN pg_proc f ON f.pronamespace = p.pronamespace AND f.proname || '_in_shard' = p.proname
 CROSS JOIN pg_roles r
 WHERE p.pronamespace = 'crm'::regnamespace AND r.rolname IN ('crm_reader', 'crm_writer', 'crm_admin', 'crm_app')
   AND has_function_privilege(r.oid, p.oid, 'EXECUTE') <> has_function_privilege(r.oid, f.oid, 'EXECUTE')
 ORDER BY 1, 2;

-- 6. The C function of the twins serves twins only: named <function>_in_shard
-- with the tenant first (42P13 otherwise).
CREATE FUNCTION public.not_a_twin(uuid) RETURNS void AS '$libdir/crm', 'crm_in_shard' LANGUAGE C;
SELECT try(format('SELECT public.not_a_twin(%L)', :'tw')) AS not_a_twin;
DROP FUNCTION public.not_a_twin(uuid);
DROP ROLE regress_twin_reader;
