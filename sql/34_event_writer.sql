-- The events a statement's triggers make are written straight into
-- crm.event (src/rowwriter.c, src/outbox.c) while the table is as the
-- extension made it and the tenant is public, and by an INSERT that fires
-- every trigger otherwise (a DBA's trigger or column, a private tenant).
-- Either way the rows are alike, the workflow rules see them (once) when
-- crm.event's workflow_match trigger would fire, and not when it is
-- disabled.  Everything here is rolled back.
SELECT crm.create_tenant('Event Writer Co') AS t \gset
-- Which way a statement's events went: the INSERT fires crm.event's
-- workflow_match trigger (one call counted per statement), the direct
-- path runs the matcher without it (none).
SET track_functions = 'all';
CREATE FUNCTION pg_temp.match_calls() RETURNS bigint LANGUAGE sql AS $$
    SELECT coalesce((SELECT f.calls FROM pg_stat_xact_user_functions f
                      WHERE f.funcid = 'crm.workflow_match()'::regprocedure), 0)
$$;
BEGIN;
SET LOCAL ROLE regress_crm_app;
SET LOCAL crm.tenant_id = :'t';
INSERT INTO crm.contact (first_name, email) VALUES ('Quinn', 'quinn@example.com') RETURNING id AS c \gset

-- 1. as made: a quote's ActivityCreated goes straight in, and the default
--    rule quote_follow_up makes its job
INSERT INTO crm.activity (activity_type, subject, contact_id, status)
VALUES ('quote_created', 'Quote 1', :'c', 'completed'), ('note', 'Note 1', :'c', 'completed');
SELECT count(*) AS jobs_after_1 FROM crm.job WHERE source_entity = 'activity';
RESET ROLE;
SELECT pg_temp.match_calls() AS calls_before \gset
SET LOCAL ROLE regress_crm_app;
INSERT INTO crm.activity (activity_type, subject, contact_id, status)
VALUES ('note', 'Note 2', :'c', 'completed');
RESET ROLE;
SELECT pg_temp.match_calls() - :calls_before AS match_trigger_calls_direct;
SET LOCAL ROLE regress_crm_app;

-- 2. a DBA's audit trigger on the events: it fires for every row, and the
--    rules still make one job per quote
RESET ROLE;
CREATE TABLE public.event_audit (event_type text, entity text);
CREATE FUNCTION public.audit_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.event_audit VALUES (NEW.event_type, NEW.entity);
    RETURN NEW;
END
$$;
CREATE TRIGGER audit AFTER INSERT ON crm.event FOR EACH ROW EXECUTE FUNCTION public.audit_event();
SELECT pg_temp.match_calls() AS calls_before \gset
SET LOCAL ROLE regress_crm_app;
INSERT INTO crm.activity (activity_type, subject, contact_id, status)
VALUES ('quote_created', 'Quote 2', :'c', 'completed'), ('call', 'Call 1', :'c', 'completed');
RESET ROLE;
SELECT pg_temp.match_calls() - :calls_before AS match_trigger_calls_insert;
SELECT event_type, entity, count(*) AS audited FROM public.event_audit GROUP BY 1, 2 ORDER BY 1;
DROP TRIGGER audit ON crm.event;
SELECT count(*) AS jobs_after_2 FROM crm.job WHERE source_entity = 'activity';

-- 3. the rules' trigger disabled: the events go in, no rule runs
ALTER TABLE crm.event DISABLE TRIGGER workflow_match;
SET LOCAL ROLE regress_crm_app;
INSERT INTO crm.activity (activity_type, subject, contact_id, status)
VALUES ('quote_created', 'Quote 3', :'c', 'completed');
RESET ROLE;
SELECT count(*) AS jobs_after_3 FROM crm.job WHERE source_entity = 'activity';
ALTER TABLE crm.event ENABLE TRIGGER workflow_match;

-- 4. a DBA's column with a default: the rows get it (an INSERT again)
ALTER TABLE crm.event ADD COLUMN note text DEFAULT 'noted by the DBA';
SET LOCAL ROLE regress_crm_app;
INSERT INTO crm.activity (activity_type, subject, contact_id, status)
VALUES ('quote_created', 'Quote 4', :'c', 'completed');
RESET ROLE;
SELECT note, count(*) FROM crm.event WHERE tenant_id = :'t' GROUP BY 1 ORDER BY 1;
ALTER TABLE crm.event DROP COLUMN note;
SELECT count(*) AS jobs_after_4 FROM crm.job WHERE source_entity = 'activity';

-- 5. straight in once more
SET LOCAL ROLE regress_crm_app;
INSERT INTO crm.activity (activity_type, subject, contact_id, status)
VALUES ('quote_created', 'Quote 5', :'c', 'completed');
SELECT count(*) AS jobs_after_5 FROM crm.job WHERE source_entity = 'activity';

-- Whichever way they were written, the events are alike: one per activity,
-- positions and ids in the order they were made, the transaction's time as
-- occurred_at, created_at and updated_at, no visible_to in a public tenant,
-- the payload the activity's, and the jobs one per quote, each pointing at
-- its quote.
SELECT e.event_type, e.entity, a.subject, e.payload->>'type' AS type,
       e.payload->>'activityId' = a.id::text AS about_it,
       e.occurred_at = now() AND e.created_at = now() AND e.updated_at = now() AS this_transaction,
       e.visible_to IS NULL AS everyones,
       e.position > coalesce(lag(e.position) OVER w, 0) AS in_order,
       e.id > coalesce(lag(e.id) OVER w, '00000000-0000-0000-0000-000000000000') AS ids_in_order
  FROM crm.event e JOIN crm.activity a ON a.tenant_id = e.tenant_id AND a.id = e.entity_id
 WHERE e.tenant_id = :'t' AND e.event_type = 'ActivityCreated'
WINDOW w AS (ORDER BY e.position)
 ORDER BY e.position;
SELECT a.subject, count(j.*) AS jobs
  FROM crm.activity a LEFT JOIN crm.job j ON j.tenant_id = a.tenant_id AND j.source_id = a.id
 WHERE a.activity_type = 'quote_created' GROUP BY 1 ORDER BY 1;
ROLLBACK;

-- A private tenant: each event takes its record's visible_to (the INSERT's
-- visibility_row does it), as before.
SELECT crm.create_tenant('Event Writer Private') AS tp \gset
BEGIN;
UPDATE crm.tenant SET visibility = 'private' WHERE tenant_id = :'tp';
SET LOCAL crm.tenant_id = :'tp';
INSERT INTO crm.app_user (email, name) VALUES ('owner@example.com', 'Owner') RETURNING id AS u \gset
INSERT INTO crm.contact (first_name, owner_id) VALUES ('Private', :'u') RETURNING id AS pc \gset
INSERT INTO crm.activity (activity_type, subject, contact_id, status, owner_id)
VALUES ('call', 'Private call', :'pc', 'completed', :'u');
SELECT e.event_type, e.visible_to = a.visible_to AS follows_record, :'u' = ANY (e.visible_to) AS owner_sees
  FROM crm.event e JOIN crm.activity a ON a.tenant_id = e.tenant_id AND a.id = e.entity_id
 WHERE e.tenant_id = :'tp';
ROLLBACK;
