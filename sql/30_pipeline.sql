-- Pipeline operations: move stage, mark won or lost, convert a lead, and
-- the stage history and consistency the triggers keep for every client.

SELECT crm.create_tenant('Pipeline Co') AS t \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';
INSERT INTO crm.app_user (name) VALUES ('Pam Seller') RETURNING id AS pam \gset
SET crm.user_id = :'pam';

-- stage ids by name, for readability
SELECT id AS sales FROM crm.pipeline WHERE is_default \gset
SELECT id AS enterprise FROM crm.pipeline WHERE NOT is_default \gset
SELECT max(id::text) FILTER (WHERE name = 'New') AS s_new,
       max(id::text) FILTER (WHERE name = 'Qualified') AS s_qualified,
       max(id::text) FILTER (WHERE name = 'Proposal') AS s_proposal,
       max(id::text) FILTER (WHERE name = 'Negotiation') AS s_negotiation,
       max(id::text) FILTER (WHERE name = 'Won') AS s_won,
       max(id::text) FILTER (WHERE name = 'Lost') AS s_lost
  FROM crm.stage WHERE pipeline_id = :'sales' \gset
SELECT id AS e_discovery FROM crm.stage WHERE pipeline_id = :'enterprise' AND name = 'Discovery' \gset

CREATE VIEW pg_temp.history AS
SELECT coalesce(o.name, l.name) AS record, f.name AS from_stage, s.name AS to_stage, h.amount,
       h.probability, h.changed_by = current_setting('crm.user_id')::uuid AS by_pam,
       h.changed_by_role = current_user AS by_me
  FROM crm.stage_history h
  LEFT JOIN crm.stage f ON f.tenant_id = h.tenant_id AND f.id = h.from_stage_id
  JOIN crm.stage s ON s.tenant_id = h.tenant_id AND s.id = h.to_stage_id
  LEFT JOIN crm.opportunity o ON o.tenant_id = h.tenant_id AND o.id = h.opportunity_id
  LEFT JOIN crm.lead l ON l.tenant_id = h.tenant_id AND l.id = h.lead_id
 ORDER BY h.changed_at, h.id;

INSERT INTO crm.opportunity (name, amount, expected_close_date) VALUES ('Dunder deal', 50000, '2026-12-31')
RETURNING id AS dunder \gset
-- a new record has one history row: from no stage to its first
SELECT count(*) AS history_rows, count(from_stage_id) AS with_from_stage FROM crm.stage_history;

-- move by the function: probability follows the stage
SELECT s.name AS stage, o.status, o.probability, o.closed_at
  FROM crm.opportunity_move_stage(:'dunder', :'s_qualified') o
  JOIN crm.stage s ON s.id = o.stage_id;
-- move by a plain UPDATE: the same rules, the same history
UPDATE crm.opportunity SET stage_id = :'s_proposal' WHERE id = :'dunder';
SELECT status, probability FROM crm.opportunity WHERE id = :'dunder';
-- a probability set by hand is kept while the stage stays; the next move resets it
UPDATE crm.opportunity SET probability = 60 WHERE id = :'dunder';
SELECT probability FROM crm.opportunity WHERE id = :'dunder';
UPDATE crm.opportunity SET stage_id = :'s_negotiation', probability = 80 WHERE id = :'dunder';
SELECT probability FROM crm.opportunity WHERE id = :'dunder';
-- an update that does not touch the stage writes no history
UPDATE crm.opportunity SET next_step = 'Send contract' WHERE id = :'dunder';
SELECT * FROM pg_temp.history;

-- moving into a won stage closes the record
SELECT o.status, o.probability, o.closed_at = now() AS closed_now
  FROM crm.opportunity_move_stage(:'dunder', :'s_won') o;
-- a won record keeps probability 100: a client's value is ignored
SELECT try(format($$UPDATE crm.opportunity SET probability = 90 WHERE id = %L$$, :'dunder'));
SELECT probability FROM crm.opportunity WHERE id = :'dunder';
-- reopening clears closed_at and takes the stage's probability
UPDATE crm.opportunity SET stage_id = :'s_negotiation' WHERE id = :'dunder';
SELECT status, probability, closed_at FROM crm.opportunity WHERE id = :'dunder';

-- mark won / mark lost with a reason
SELECT o.status, o.probability, s.name AS stage, o.lost_reason
  FROM crm.opportunity_mark_won(:'dunder') o JOIN crm.stage s ON s.id = o.stage_id;
SELECT o.status, o.probability, s.name AS stage, o.lost_reason, o.closed_at IS NOT NULL AS closed
  FROM crm.opportunity_mark_lost(:'dunder', 'Chose a competitor') o JOIN crm.stage s ON s.id = o.stage_id;
SELECT * FROM pg_temp.history WHERE record = 'Dunder deal';

-- errors of the operations
SELECT try($$SELECT crm.opportunity_move_stage('00000000-0000-7000-8000-000000000001', NULL)$$);
SELECT try(format($$SELECT crm.opportunity_move_stage(%L, %L)$$, :'dunder', :'e_discovery'));
SELECT try(format($$SELECT crm.opportunity_move_stage(%L, '00000000-0000-7000-8000-000000000002')$$, :'dunder'));
SELECT try(format($$SELECT crm.opportunity_move_stage(%L, NULL)$$, :'dunder'));
SELECT try($$SELECT crm.opportunity_mark_won('00000000-0000-7000-8000-000000000001')$$);
SELECT try($$SELECT crm.lead_mark_lost('00000000-0000-7000-8000-000000000001', 'x')$$);
-- a pipeline without a won stage
INSERT INTO crm.pipeline (name) VALUES ('Open-ended') RETURNING id AS openended \gset
INSERT INTO crm.stage (pipeline_id, name, sequence, probability) VALUES (:'openended', 'Talking', 1, 20);
INSERT INTO crm.opportunity (name, pipeline_id) VALUES ('Endless', :'openended') RETURNING id AS endless \gset
SELECT try(format($$SELECT crm.opportunity_mark_won(%L)$$, :'endless'));
-- nothing changed by the failed calls
SELECT status, lost_reason FROM crm.opportunity WHERE id = :'dunder';

-- bulk UPDATE: one history row per record and change
INSERT INTO crm.opportunity (name, amount)
SELECT 'Bulk ' || n, n * 100 FROM generate_series(1, 50) n;
UPDATE crm.opportunity SET stage_id = :'s_qualified' WHERE name LIKE 'Bulk %';
UPDATE crm.opportunity SET stage_id = :'s_won' WHERE name LIKE 'Bulk %' AND amount <= 1000;
SELECT s.name AS stage, o.status, count(*), min(o.probability), max(o.probability),
       count(o.closed_at) AS closed
  FROM crm.opportunity o JOIN crm.stage s ON s.id = o.stage_id
 WHERE o.name LIKE 'Bulk %' GROUP BY s.name, o.status ORDER BY s.name;
SELECT to_stage, count(*) FROM pg_temp.history WHERE record LIKE 'Bulk %' GROUP BY to_stage ORDER BY to_stage;
-- the history always ends where the record is
SELECT count(*) AS records_whose_last_history_differs
  FROM crm.opportunity o
  JOIN LATERAL (SELECT h.to_stage_id FROM crm.stage_history h
                 WHERE h.tenant_id = o.tenant_id AND h.opportunity_id = o.id
                 ORDER BY h.changed_at DESC, h.id DESC LIMIT 1) last ON true
 WHERE last.to_stage_id <> o.stage_id;

-- Leads: move, lose, convert
INSERT INTO crm.lead (name, contact_name, email, phone, company_name, job_title, expected_revenue,
                      company_size, industry, source, owner_id, custom)
VALUES ('Vance Refrigeration - website', 'Bob Vance', 'bob@vance.example', '+1 570 555 0199',
        'Vance Refrigeration', 'Owner', 20000, 40, 'retail', 'website', :'pam', '{"region": "PA"}')
RETURNING id AS vance \gset
INSERT INTO crm.tag (name) VALUES ('Hot Lead') RETURNING id AS hot \gset
INSERT INTO crm.lead_tag (lead_id, tag_id) VALUES (:'vance', :'hot');
SELECT l.status, l.probability, s.name FROM crm.lead_move_stage(:'vance', :'s_qualified') l
  JOIN crm.stage s ON s.id = l.stage_id;

SELECT * FROM crm.lead_convert(:'vance') \gset conv_
SELECT a.name, a.industry, a.employees, a.account_type FROM crm.account a WHERE a.id = :'conv_account_id';
SELECT c.first_name, c.last_name, c.email, c.job_title, c.account_id = :'conv_account_id' AS linked
  FROM crm.contact c WHERE c.id = :'conv_contact_id';
SELECT o.name, o.amount, o.lead_id = :'vance' AS from_lead, o.account_id = :'conv_account_id' AS account,
       o.contact_id = :'conv_contact_id' AS contact, s.name AS stage, o.source, o.custom,
       (SELECT array_agg(g.name) FROM crm.opportunity_tag ot JOIN crm.tag g ON g.id = ot.tag_id
         WHERE ot.opportunity_id = o.id) AS tags
  FROM crm.opportunity o JOIN crm.stage s ON s.id = o.stage_id WHERE o.id = :'conv_opportunity_id';
SELECT converted_at IS NOT NULL AS converted, converted_account_id = :'conv_account_id' AS account_kept
  FROM crm.lead WHERE id = :'vance';
-- converting twice is an error
SELECT try(format($$SELECT crm.lead_convert(%L)$$, :'vance'));

-- a second lead of the same company and person finds the account and contact
INSERT INTO crm.lead (name, email, company_name) VALUES ('Vance again', 'BOB@vance.example', 'vance refrigeration')
RETURNING id AS again \gset
SELECT account_id = :'conv_account_id' AS same_account, contact_id = :'conv_contact_id' AS same_contact,
       opportunity_id IS NULL AS no_opportunity
  FROM crm.lead_convert(:'again', create_opportunity => false);
SELECT count(*) AS vance_accounts FROM crm.account WHERE lower(name) = 'vance refrigeration';

-- given account and contact are used as they are; wrong ones are errors
INSERT INTO crm.lead (name) VALUES ('Walk-in') RETURNING id AS walkin \gset
SELECT try(format($$SELECT crm.lead_convert(%L, account => '00000000-0000-7000-8000-000000000001')$$, :'walkin'));
SELECT try(format($$SELECT crm.lead_convert(%L, contact => '00000000-0000-7000-8000-000000000001')$$, :'walkin'));
-- no person's name and no e-mail: no contact can be made of the lead's title
SELECT try(format($$SELECT crm.lead_convert(%L, account => %L)$$, :'walkin', :'conv_account_id'));
UPDATE crm.lead SET email = 'walk.in@vance.example' WHERE id = :'walkin';
SELECT account_id = :'conv_account_id' AS given_account, contact_id IS NOT NULL AS new_contact
  FROM crm.lead_convert(:'walkin', account => :'conv_account_id');
-- the contact is named by the e-mail's local part
SELECT first_name, last_name FROM crm.contact WHERE email = 'walk.in@vance.example';

-- a lost lead cannot be converted
INSERT INTO crm.lead (name) VALUES ('Gone cold') RETURNING id AS cold \gset
SELECT status, lost_reason, probability FROM crm.lead_mark_lost(:'cold', '  No budget  ');
SELECT try(format($$SELECT crm.lead_convert(%L)$$, :'cold'));
SELECT try($$SELECT crm.lead_convert('00000000-0000-7000-8000-000000000001')$$);
SELECT * FROM pg_temp.history WHERE record NOT LIKE 'Bulk %' AND record <> 'Dunder deal';

RESET crm.tenant_id;
RESET crm.user_id;
RESET ROLE;
