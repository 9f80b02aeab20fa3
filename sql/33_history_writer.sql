-- The stage history of a move is written straight into crm.stage_history
-- (src/rowwriter.c) while the table is as the extension made it, and by an
-- INSERT that fires every trigger when a DBA has added a trigger or a
-- column of their own: both give the same rows, and the DBA's trigger fires
-- and their column gets its default.  Everything here is rolled back.
SELECT crm.create_tenant('History Writer Co') AS t \gset
BEGIN;
SET LOCAL ROLE regress_crm_app;
SET LOCAL crm.tenant_id = :'t';
INSERT INTO crm.opportunity (name, amount, currency)
SELECT 'Deal ' || n, n * 100, 'USD' FROM generate_series(1, 3) n;
INSERT INTO crm.lead (name, contact_name, email) VALUES ('Lead 1', 'Lee One', 'lee@example.com');
CREATE TEMP TABLE stage_of AS
SELECT s.name, s.id FROM crm.stage s JOIN crm.pipeline p ON p.tenant_id = s.tenant_id AND p.id = s.pipeline_id
 WHERE p.is_default;

-- 1. as made: the rows go straight in
UPDATE crm.opportunity SET stage_id = (SELECT id FROM stage_of WHERE name = 'Qualified');
UPDATE crm.lead SET stage_id = (SELECT id FROM crm.stage WHERE tenant_id = :'t' AND name = 'Qualified'
                                   AND pipeline_id = (SELECT pipeline_id FROM crm.lead WHERE name = 'Lead 1'));

-- 2. a DBA's audit trigger on the history: it fires for every row
RESET ROLE;
CREATE TABLE public.history_audit (record_id uuid, to_stage text);
CREATE FUNCTION public.audit_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.history_audit
    SELECT coalesce(NEW.opportunity_id, NEW.lead_id), s.name FROM crm.stage s
     WHERE s.tenant_id = NEW.tenant_id AND s.id = NEW.to_stage_id;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit AFTER INSERT ON crm.stage_history FOR EACH ROW EXECUTE FUNCTION public.audit_history();
SET LOCAL ROLE regress_crm_app;
UPDATE crm.opportunity SET stage_id = (SELECT id FROM stage_of WHERE name = 'Proposal');
RESET ROLE;
SELECT to_stage, count(*) AS audited FROM public.history_audit GROUP BY to_stage;
DROP TRIGGER audit ON crm.stage_history;

-- 3. a DBA's column with a default: the rows get it (an INSERT again)
ALTER TABLE crm.stage_history ADD COLUMN note text DEFAULT 'noted by the DBA';
SET LOCAL ROLE regress_crm_app;
UPDATE crm.opportunity SET stage_id = (SELECT id FROM stage_of WHERE name = 'Negotiation');
RESET ROLE;
SELECT t.name AS to_stage, h.note, count(*) FROM crm.stage_history h JOIN stage_of t ON t.id = h.to_stage_id
 WHERE h.tenant_id = :'t' AND h.opportunity_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1;

-- 4. the column dropped again: straight in once more
ALTER TABLE crm.stage_history DROP COLUMN note;
SET LOCAL ROLE regress_crm_app;
UPDATE crm.opportunity SET stage_id = (SELECT id FROM stage_of WHERE name = 'Won');

-- Whichever way they were written, the rows are alike: each deal's history
-- is a chain from its creation, with the probability of the stage entered,
-- the deal's amount and currency, who made the change, the transaction's
-- time as created_at and updated_at, no visible_to in a public tenant, and
-- ids in the order they were made.
SELECT o.name AS deal, coalesce(f.name, '(created)') AS from_stage, t.name AS to_stage, h.probability,
       h.amount, h.currency, h.changed_by_role, h.created_at = h.updated_at AS created_is_updated,
       h.created_at = now() AS this_transaction, h.visible_to IS NULL AS everyones,
       h.changed_at >= h.created_at AS changed_after_start,
       h.from_stage_id IS NOT DISTINCT FROM lag(h.to_stage_id) OVER w AS chained,
       h.id > coalesce(lag(h.id) OVER w, '00000000-0000-0000-0000-000000000000') AS ids_in_order
  FROM crm.stage_history h
  JOIN crm.opportunity o ON o.tenant_id = h.tenant_id AND o.id = h.opportunity_id
  LEFT JOIN crm.stage f ON f.tenant_id = h.tenant_id AND f.id = h.from_stage_id
  JOIN crm.stage t ON t.tenant_id = h.tenant_id AND t.id = h.to_stage_id
WINDOW w AS (PARTITION BY h.opportunity_id ORDER BY h.changed_at, h.id)
 ORDER BY o.name, h.changed_at, h.id;
SELECT l.name AS lead, coalesce(f.name, '(created)') AS from_stage, t.name AS to_stage, h.probability,
       h.changed_by_role, h.visible_to IS NULL AS everyones
  FROM crm.stage_history h
  JOIN crm.lead l ON l.tenant_id = h.tenant_id AND l.id = h.lead_id
  LEFT JOIN crm.stage f ON f.tenant_id = h.tenant_id AND f.id = h.from_stage_id
  JOIN crm.stage t ON t.tenant_id = h.tenant_id AND t.id = h.to_stage_id
 ORDER BY h.changed_at, h.id;
-- the deals' state agrees with the last row
SELECT o.name, o.status, o.probability, s.name AS stage FROM crm.opportunity o
  JOIN crm.stage s ON s.tenant_id = o.tenant_id AND s.id = o.stage_id ORDER BY o.name;
ROLLBACK;

-- The history's CHECK constraints hold on the direct path as on an INSERT:
-- a row that would break one is refused and nothing is written (a record's
-- own constraints keep such values out, so a DBA's stricter constraint on
-- the history stands in for one here).
BEGIN;
ALTER TABLE crm.stage_history ADD CONSTRAINT history_amount_small CHECK (amount < 1000) NOT VALID;
SET LOCAL ROLE regress_crm_app;
SET LOCAL crm.tenant_id = :'t';
SELECT try($$INSERT INTO crm.opportunity (name, amount, currency) VALUES ('Small', 10, 'USD'), ('Large', 5000, 'USD')$$);
SELECT count(*) AS deals, (SELECT count(*) FROM crm.stage_history WHERE tenant_id = :'t') AS history
  FROM crm.opportunity;
ROLLBACK;
