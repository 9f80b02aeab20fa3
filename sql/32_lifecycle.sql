-- The lifecycle of leads and deals, kept by the stage trigger on every
-- path (operations and plain UPDATE/INSERT):
--   deal: open <-> won / lost (reopen: crm.opportunity_reopen or a move to
--         an open stage; it clears closed_at and lost_reason)
--   lead: the same, plus converted, which is final
-- status, closed_at, converted_at and the probability of a closed record
-- are the server's: a client's value is ignored.  A stage's kind cannot
-- change while records are in it; a new stage probability is followed by
-- the records that had the stage's probability.

SELECT crm.create_tenant('Lifecycle Co') AS t \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';
SELECT id AS sales FROM crm.pipeline WHERE is_default \gset
SELECT max(id::text) FILTER (WHERE name = 'New') AS s_new,
       max(id::text) FILTER (WHERE name = 'Qualified') AS s_qualified,
       max(id::text) FILTER (WHERE name = 'Proposal') AS s_proposal,
       max(id::text) FILTER (WHERE name = 'Negotiation') AS s_negotiation,
       max(id::text) FILTER (WHERE name = 'Won') AS s_won,
       max(id::text) FILTER (WHERE name = 'Lost') AS s_lost
  FROM crm.stage WHERE pipeline_id = :'sales' \gset

CREATE VIEW pg_temp.deal AS
SELECT o.name, s.name AS stage, o.status, o.probability, o.closed_at IS NOT NULL AS closed,
       o.closed_at BETWEEN now() - interval '1 hour' AND now() AS closed_recently, o.lost_reason
  FROM crm.opportunity o JOIN crm.stage s ON s.tenant_id = o.tenant_id AND s.id = o.stage_id
 ORDER BY o.name;
CREATE VIEW pg_temp.lead AS
SELECT l.name, s.name AS stage, l.status, l.probability, l.closed_at IS NOT NULL AS closed,
       l.converted_at IS NOT NULL AS converted, l.converted_at BETWEEN now() - interval '1 hour' AND now() AS converted_recently, l.lost_reason
  FROM crm.lead l JOIN crm.stage s ON s.tenant_id = l.tenant_id AND s.id = l.stage_id
 ORDER BY l.name;

-- Creation writes the first history row, from no stage
INSERT INTO crm.opportunity (name, amount) VALUES ('Globex', 5000) RETURNING id AS globex \gset
SELECT from_stage_id IS NULL AS from_nothing, to_stage_id = :'s_new' AS into_new, probability, amount
  FROM crm.stage_history WHERE opportunity_id = :'globex';

-- Derived columns sent by a client are ignored, on INSERT and UPDATE
INSERT INTO crm.opportunity (name, stage_id, status, closed_at, lost_reason)
VALUES ('Forged', :'s_won', 'open', '1970-01-01', 'made up') RETURNING id AS forged \gset
SELECT * FROM pg_temp.deal WHERE name = 'Forged';
UPDATE crm.opportunity SET closed_at = '2999-01-01', probability = 5, status = 'lost' WHERE id = :'forged';
SELECT * FROM pg_temp.deal WHERE name = 'Forged';

-- Lost with a reason, then reopened: closed_at and lost_reason are cleared
SELECT status FROM crm.opportunity_mark_lost(:'globex', 'Too expensive');
SELECT * FROM pg_temp.deal WHERE name = 'Globex';
SELECT status, probability, closed_at, lost_reason FROM crm.opportunity_reopen(:'globex', :'s_proposal');
SELECT * FROM pg_temp.deal WHERE name = 'Globex';
-- a reason on an open deal is dropped
UPDATE crm.opportunity SET lost_reason = 'not lost at all' WHERE id = :'globex';
SELECT lost_reason FROM crm.opportunity WHERE id = :'globex';
-- reopening by a plain UPDATE follows the same rules
SELECT status FROM crm.opportunity_mark_lost(:'globex', 'Again');
UPDATE crm.opportunity SET stage_id = :'s_qualified' WHERE id = :'globex';
SELECT * FROM pg_temp.deal WHERE name = 'Globex';
-- reopen asks for a closed record and an open stage
SELECT try(format($$SELECT crm.opportunity_reopen(%L, %L)$$, :'globex', :'s_new'));
SELECT status FROM crm.opportunity_mark_won(:'globex');
SELECT try(format($$SELECT crm.opportunity_reopen(%L, %L)$$, :'globex', :'s_lost'));
SELECT * FROM pg_temp.deal WHERE name = 'Globex';

-- History is written for every stage change, whatever else the UPDATE changes
UPDATE crm.opportunity SET stage_id = :'s_negotiation', amount = 7000, name = 'Globex renewal',
       probability = 70, next_step = 'Call' WHERE id = :'globex';
SELECT f.name AS from_stage, s.name AS to_stage, h.amount, h.probability
  FROM crm.stage_history h
  LEFT JOIN crm.stage f ON f.tenant_id = h.tenant_id AND f.id = h.from_stage_id
  JOIN crm.stage s ON s.tenant_id = h.tenant_id AND s.id = h.to_stage_id
 WHERE h.opportunity_id = :'globex' ORDER BY h.changed_at, h.id;

-- A stage's probability: records that follow it follow the new value; a
-- probability set by hand to another value stays
INSERT INTO crm.opportunity (name, stage_id) VALUES ('Auto', :'s_proposal'), ('Manual', :'s_proposal');
UPDATE crm.opportunity SET probability = 33 WHERE name = 'Manual';
INSERT INTO crm.lead (name, stage_id, email) VALUES ('Lead in proposal', :'s_proposal', 'p@lifecycle.example');
UPDATE crm.stage SET probability = 55 WHERE id = :'s_proposal';
SELECT name, probability FROM crm.opportunity WHERE stage_id = :'s_proposal' ORDER BY name;
SELECT name, probability FROM crm.lead WHERE stage_id = :'s_proposal';

-- A stage's kind cannot change while records are in it; nothing changes
SELECT try(format($$UPDATE crm.stage SET kind = 'won', probability = 100 WHERE id = %L$$, :'s_proposal'));
SELECT kind, probability FROM crm.stage WHERE id = :'s_proposal';
SELECT name, status, probability FROM crm.opportunity WHERE stage_id = :'s_proposal' ORDER BY name;
-- an empty stage can change its kind
INSERT INTO crm.stage (pipeline_id, name, sequence, probability) VALUES (:'sales', 'Verbal yes', 7, 90)
RETURNING id AS s_verbal \gset
UPDATE crm.stage SET kind = 'won', probability = 100 WHERE id = :'s_verbal';
SELECT name, kind, probability FROM crm.stage WHERE id = :'s_verbal';

-- Leads: a lead in a won stage converts into a won deal
INSERT INTO crm.lead (name, contact_name, email, stage_id) VALUES ('Won lead', 'Wanda Winner', 'wanda@lifecycle.example', :'s_won')
RETURNING id AS wonlead \gset
SELECT * FROM pg_temp.lead WHERE name = 'Won lead';
SELECT opportunity_id AS wondeal FROM crm.lead_convert(:'wonlead') \gset
SELECT * FROM pg_temp.deal WHERE name = 'Won lead';
SELECT * FROM pg_temp.lead WHERE name = 'Won lead';

-- A converted lead is final: nothing moves it, loses it, reopens or
-- un-converts it, whichever path; its server columns keep their values
CREATE TEMP TABLE before AS SELECT * FROM crm.lead WHERE id = :'wonlead';
SELECT try(format($$UPDATE crm.lead SET stage_id = %L WHERE id = %L$$, :'s_new', :'wonlead'));
SELECT try(format($$SELECT crm.lead_move_stage(%L, %L)$$, :'wonlead', :'s_new'));
SELECT try(format($$SELECT crm.lead_mark_lost(%L, 'x')$$, :'wonlead'));
SELECT try(format($$UPDATE crm.lead SET lost_reason = 'x' WHERE id = %L$$, :'wonlead'));
SELECT try(format($$SELECT crm.lead_reopen(%L, %L)$$, :'wonlead', :'s_new'));
SELECT try(format($$SELECT crm.lead_convert(%L)$$, :'wonlead'));
SELECT try(format($$UPDATE crm.lead SET converted_contact_id = NULL WHERE id = %L$$, :'wonlead'));
-- these are ignored: the UPDATE succeeds, the row keeps its values
SELECT try(format($$UPDATE crm.lead SET converted_at = NULL, status = 'open', probability = 1, closed_at = NULL WHERE id = %L$$, :'wonlead'));
SELECT try(format($$UPDATE crm.lead SET description = 'Signed' WHERE id = %L$$, :'wonlead'));
SELECT l.description,
       (to_jsonb(l) - 'description' - 'updated_at') = (to_jsonb(b) - 'description' - 'updated_at') AS rest_unchanged
  FROM crm.lead l, before b WHERE l.id = :'wonlead';

-- Converting by setting converted_contact_id is the same conversion: the
-- server stamps converted_at; a client's converted_at alone does nothing
INSERT INTO crm.lead (name, converted_at) VALUES ('Manual conversion', '2001-01-01') RETURNING id AS manual \gset
SELECT * FROM pg_temp.lead WHERE name = 'Manual conversion';
UPDATE crm.lead SET converted_at = '2001-01-01' WHERE id = :'manual';
SELECT * FROM pg_temp.lead WHERE name = 'Manual conversion';
INSERT INTO crm.contact (first_name) VALUES ('Manny') RETURNING id AS manny \gset
UPDATE crm.lead SET converted_contact_id = :'manny' WHERE id = :'manual';
SELECT * FROM pg_temp.lead WHERE name = 'Manual conversion';
-- a lost lead cannot be converted on either path
INSERT INTO crm.lead (name, email) VALUES ('Lost lead', 'lost@lifecycle.example') RETURNING id AS lostlead \gset
SELECT status FROM crm.lead_mark_lost(:'lostlead', 'No budget');
SELECT try(format($$SELECT crm.lead_convert(%L)$$, :'lostlead'));
SELECT try(format($$UPDATE crm.lead SET converted_contact_id = %L WHERE id = %L$$, :'manny', :'lostlead'));
-- reopened, it can
SELECT status, lost_reason, closed_at FROM crm.lead_reopen(:'lostlead', :'s_qualified');
SELECT contact_id IS NOT NULL AS contact FROM crm.lead_convert(:'lostlead', create_opportunity => false);
SELECT c.first_name FROM crm.lead l JOIN crm.contact c ON c.id = l.converted_contact_id WHERE l.id = :'lostlead';

-- Archived records do not move until unarchived (a plain UPDATE of archived_at)
UPDATE crm.opportunity SET archived_at = now() WHERE name = 'Auto' RETURNING id AS auto \gset
SELECT try(format($$UPDATE crm.opportunity SET stage_id = %L WHERE id = %L$$, :'s_new', :'auto'));
SELECT try(format($$SELECT crm.opportunity_mark_won(%L)$$, :'auto'));
INSERT INTO crm.lead (name, email, archived_at) VALUES ('Archived lead', 'arch@lifecycle.example', now())
RETURNING id AS archlead \gset
SELECT try(format($$SELECT crm.lead_convert(%L)$$, :'archlead'));
SELECT try(format($$SELECT crm.lead_mark_lost(%L)$$, :'archlead'));
-- other edits of an archived record are allowed
UPDATE crm.opportunity SET next_step = 'Revisit next year' WHERE id = :'auto';
UPDATE crm.opportunity SET archived_at = NULL WHERE id = :'auto';
SELECT status FROM crm.opportunity_mark_won(:'auto');

-- the history ends where every record is
SELECT count(*) AS records_whose_last_history_differs
  FROM (SELECT o.tenant_id, o.id, o.stage_id FROM crm.opportunity o
        UNION ALL SELECT l.tenant_id, l.id, l.stage_id FROM crm.lead l) r
  JOIN LATERAL (SELECT h.to_stage_id FROM crm.stage_history h
                 WHERE h.tenant_id = r.tenant_id AND r.id IN (h.opportunity_id, h.lead_id)
                 ORDER BY h.changed_at DESC, h.id DESC LIMIT 1) last ON true
 WHERE last.to_stage_id <> r.stage_id;

RESET crm.tenant_id;
RESET ROLE;
