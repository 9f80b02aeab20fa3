-- src/sql/98_shard_calls.sql: the twins of the functions that write as the
-- tables' owner (src/shard.c).
--
-- With Citus in the database, each of these functions, called for a tenant
-- by a role that is not the tables' owner, hands its call over, as the
-- caller, to crm.<name>_in_shard(shard_tenant, the same arguments);
-- crm.distribute() makes the twins Citus distributed functions co-located
-- with crm.tenant by shard_tenant and force-delegated, so Citus runs the
-- call on the node that holds the tenant's shards, in the transaction and
-- over the connection the application's own statements already use there:
-- the owner's writes are then local to that node, and a transaction may mix
-- them with the application's writes (Citus refuses two users' connections
-- to the same shards in one transaction).  Without Citus nothing calls the
-- twins; called directly, a twin runs its function for the session's tenant
-- only (42501 for another one).

CREATE FUNCTION crm.shard_notifications(shard_tenant uuid)
    RETURNS TABLE (channel text, payload text)
    AS 'MODULE_PATHNAME', 'crm_shard_notifications'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.shard_notifications(uuid) IS
    'With Citus: the notifications (crm_events, crm_jobs) that twins recorded on this node in this transaction, handed over once; the coordinator sends them after a call handed to a twin (a worker''s NOTIFY would reach no listener). shard_tenant must be the session''s tenant (42501)';

CREATE FUNCTION crm.shard_call_wanted() RETURNS boolean
    AS 'MODULE_PATHNAME', 'crm_shard_call_wanted'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.shard_call_wanted() IS
    'Whether a call made now for the session''s tenant goes to its twin crm.<name>_in_shard: Citus in the database, a tenant in the session, a caller other than the tables'' owner, and not already inside a twin (src/shard.c); crm.poll asks it';

DO $$
DECLARE
    f regprocedure;
    twin text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        -- the outbox (src/outbox.c)
        'crm.emit_event(text,jsonb,text,uuid)', 'crm.subscribe(text,bigint)',
        'crm.unsubscribe(text)', 'crm.ack(text,bigint)', 'crm.purge_events(interval)',
        'crm.poll(text,integer)',
        -- aggregates, scoring, the predictive model, forecasting
        'crm.scoring_rescore(uuid,uuid,boolean)',
        'crm.pls_rebuild(uuid)',
        'crm.snapshot_forecast(text,text,date,date,uuid,uuid,timestamp with time zone)',
        -- the job queue (src/queue.c) and inbound events (src/workflow.c)
        'crm.enqueue_job(text,jsonb,uuid,timestamp with time zone,uuid,text,uuid,uuid,integer)',
        'crm.enqueue_jobs(text,jsonb[],uuid[],timestamp with time zone,uuid[],text,uuid[],uuid,integer)',
        'crm.claim_jobs(text,text,integer,interval)', 'crm.complete_job(uuid,jsonb,text)',
        'crm.complete_jobs(uuid[],text,jsonb)', 'crm.fail_job(uuid,text,text)',
        'crm.fail_jobs(uuid[],text,text)', 'crm.extend_lease(uuid,interval,text)',
        'crm.reap_expired_leases()', 'crm.retry_job(uuid)', 'crm.purge_jobs(interval)',
        'crm.consume_event(text,jsonb,text)'
    ]::regprocedure[]
    LOOP
        SELECT p.proname OPERATOR(pg_catalog.||) '_in_shard' INTO twin
          FROM pg_catalog.pg_proc p WHERE p.oid OPERATOR(pg_catalog.=) f;
        EXECUTE pg_catalog.format(
            'CREATE FUNCTION crm.%I(shard_tenant uuid%s) RETURNS %s'
            ' AS %L, %L LANGUAGE C VOLATILE',
            twin,
            CASE WHEN pg_catalog.pg_get_function_identity_arguments(f) OPERATOR(pg_catalog.=) '' THEN ''
                 ELSE ', ' OPERATOR(pg_catalog.||) pg_catalog.pg_get_function_identity_arguments(f) END,
            pg_catalog.pg_get_function_result(f), 'MODULE_PATHNAME', 'crm_in_shard');
        EXECUTE pg_catalog.format('COMMENT ON FUNCTION crm.%I IS %L', twin,
            'With Citus, ' OPERATOR(pg_catalog.||) f::text OPERATOR(pg_catalog.||)
            ' runs through this twin on the node of the tenant''s shards (src/shard.c): it calls '
            OPERATOR(pg_catalog.||) f::text OPERATOR(pg_catalog.||)
            ' with the arguments after shard_tenant, which must be the session''s tenant (42501); granted as that function is');
    END LOOP;
END
$$;
