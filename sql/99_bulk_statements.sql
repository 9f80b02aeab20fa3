-- Statements big enough that their transition tables spill to disk, with
-- every crm trigger of the table reading them in turn (stage history,
-- outbox, aggregates, visibility, workflow rules).  work_mem is lowered so
-- that a few thousand rows spill; each trigger must still see every row
-- once, in step, and nothing may be freed under another's feet.
SET client_min_messages = warning;
SELECT crm.create_tenant('Bulk Co') AS tenant \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'tenant';
SET work_mem = '64kB';
SELECT s.id AS proposal FROM crm.stage s JOIN crm.pipeline p ON p.tenant_id = s.tenant_id AND p.id = s.pipeline_id
 WHERE p.is_default AND s.name = 'Proposal' \gset

INSERT INTO crm.opportunity (name, amount) SELECT 'Bulk deal ' || i, i FROM generate_series(1, 3000) i;
INSERT INTO crm.lead (name, email) SELECT 'Bulk lead ' || i, 'bulk' || i || '@bulk.example' FROM generate_series(1, 3000) i;
INSERT INTO crm.contact (first_name, email) SELECT 'Bulk', 'c' || i || '@bulk.example' FROM generate_series(1, 300) i;
INSERT INTO crm.activity (activity_type, subject, status, contact_id)
SELECT 'call', 'Bulk call', 'completed', c.id FROM crm.contact c CROSS JOIN generate_series(1, 10);
-- an UPDATE of every row that changes no stage, then one that moves them all
UPDATE crm.opportunity SET name = name || ' (renamed)';
UPDATE crm.lead SET name = name || ' (renamed)';
UPDATE crm.opportunity SET stage_id = :'proposal';
UPDATE crm.lead SET stage_id = :'proposal';
UPDATE crm.activity SET status = 'scheduled' WHERE subject = 'Bulk call';
UPDATE crm.activity SET status = 'completed' WHERE subject = 'Bulk call';
RESET work_mem;

-- one creation row and one move row per record, one event per change
SELECT count(*) FILTER (WHERE from_stage_id IS NULL) AS created, count(*) FILTER (WHERE to_stage_id = :'proposal') AS moved
  FROM crm.stage_history;
SELECT event_type, count(*) FROM crm.event GROUP BY 1 ORDER BY 1;
SELECT count(*) AS aggregate_mismatches FROM crm.check_aggregates();
SELECT count(*) AS contacts_with_ten_calls FROM crm.contact_engagement WHERE activity_count = 10;
RESET crm.tenant_id;
RESET ROLE;
