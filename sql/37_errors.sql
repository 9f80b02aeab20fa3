-- One mistake, one SQLSTATE, whichever path made it (function or plain
-- INSERT/UPDATE).  The README's table of errors lists these.  After the
-- errors, a check that nothing stored changed.

SELECT try($$SELECT crm.create_tenant(NULL)$$);
SELECT try($$SELECT crm.create_tenant(' ')$$);
SELECT crm.create_tenant('Errors Co') AS t \gset
SELECT crm.create_tenant('Other Co') AS other \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';
SELECT id AS sales FROM crm.pipeline WHERE is_default \gset
SELECT id AS enterprise FROM crm.pipeline WHERE NOT is_default \gset
SELECT id AS s_new FROM crm.stage WHERE pipeline_id = :'sales' AND name = 'New' \gset
SELECT id AS s_won FROM crm.stage WHERE pipeline_id = :'sales' AND name = 'Won' \gset
SELECT id AS e_discovery FROM crm.stage WHERE pipeline_id = :'enterprise' AND name = 'Discovery' \gset
INSERT INTO crm.opportunity (name, amount) VALUES ('Deal', 100) RETURNING id AS deal \gset
INSERT INTO crm.lead (name, email) VALUES ('Lead', 'lead@errors.example') RETURNING id AS lead \gset
INSERT INTO crm.account (name) VALUES ('Account') RETURNING id AS account \gset
INSERT INTO crm.opportunity (name, stage_id) VALUES ('Won deal', :'s_won') RETURNING id AS wondeal \gset
INSERT INTO crm.lead (name) VALUES ('Nameless') RETURNING id AS nameless \gset
INSERT INTO crm.pipeline (name) VALUES ('No ends') RETURNING id AS noends \gset
INSERT INTO crm.stage (pipeline_id, name, sequence, probability) VALUES (:'noends', 'Only', 1, 20);
INSERT INTO crm.opportunity (name, pipeline_id) VALUES ('Endless', :'noends') RETURNING id AS endless \gset
SET crm.tenant_id = :'other';
SELECT id AS other_stage FROM crm.stage WHERE name = 'New' AND pipeline_id = (SELECT id FROM crm.pipeline WHERE is_default) \gset
SET crm.tenant_id = :'t';

CREATE VIEW pg_temp.stored AS
SELECT md5(string_agg(x, '|' ORDER BY x)) AS digest, count(*) AS rows
  FROM (SELECT to_jsonb(o)::text AS x FROM crm.opportunity o
        UNION ALL SELECT to_jsonb(l)::text FROM crm.lead l
        UNION ALL SELECT to_jsonb(a)::text FROM crm.account a
        UNION ALL SELECT to_jsonb(h)::text FROM crm.stage_history h
        UNION ALL SELECT to_jsonb(s)::text FROM crm.stage s) r;
SELECT rows FROM pg_temp.stored;
SELECT digest AS before FROM pg_temp.stored \gset

-- 22004: a NULL id or stage given to an operation
SELECT try($$SELECT crm.opportunity_move_stage(NULL, NULL)$$);
SELECT try(format($$SELECT crm.opportunity_move_stage(%L, NULL)$$, :'deal'));
SELECT try($$SELECT crm.opportunity_mark_won(NULL)$$);
SELECT try($$SELECT crm.opportunity_mark_lost(NULL, 'x')$$);
SELECT try(format($$SELECT crm.opportunity_reopen(NULL, %L)$$, :'s_new'));
SELECT try($$SELECT crm.lead_move_stage(NULL, NULL)$$);
SELECT try($$SELECT crm.lead_mark_lost(NULL)$$);
SELECT try(format($$SELECT crm.lead_reopen(%L, NULL)$$, :'lead'));
SELECT try($$SELECT crm.lead_convert(NULL)$$);
SELECT try(format($$SELECT crm.lead_convert(%L, create_opportunity => NULL)$$, :'lead'));

-- P0002: an id that names no row (or a row of another tenant)
SELECT try(format($$SELECT crm.opportunity_move_stage('00000000-0000-7000-8000-000000000001', %L)$$, :'s_new'));
SELECT try($$SELECT crm.opportunity_mark_won('00000000-0000-7000-8000-000000000001')$$);
SELECT try($$SELECT crm.opportunity_mark_lost('00000000-0000-7000-8000-000000000001')$$);
SELECT try(format($$SELECT crm.opportunity_reopen('00000000-0000-7000-8000-000000000001', %L)$$, :'s_new'));
SELECT try(format($$SELECT crm.lead_move_stage('00000000-0000-7000-8000-000000000001', %L)$$, :'s_new'));
SELECT try($$SELECT crm.lead_mark_lost('00000000-0000-7000-8000-000000000001')$$);
SELECT try(format($$SELECT crm.lead_reopen('00000000-0000-7000-8000-000000000001', %L)$$, :'s_new'));
SELECT try($$SELECT crm.lead_convert('00000000-0000-7000-8000-000000000001')$$);
SELECT try(format($$SELECT crm.lead_convert(%L, account => '00000000-0000-7000-8000-000000000001')$$, :'lead'));

-- 23503: a stage of another pipeline, by UPDATE, INSERT or operation
SELECT try(format($$UPDATE crm.opportunity SET stage_id = %L WHERE id = %L$$, :'e_discovery', :'deal'));
SELECT try(format($$INSERT INTO crm.opportunity (name, pipeline_id, stage_id) VALUES ('x', %L, %L)$$, :'sales', :'e_discovery'));
SELECT try(format($$SELECT crm.opportunity_move_stage(%L, %L)$$, :'deal', :'e_discovery'));
SELECT try(format($$UPDATE crm.lead SET stage_id = %L WHERE id = %L$$, :'e_discovery', :'lead'));
SELECT try(format($$SELECT crm.lead_move_stage(%L, %L)$$, :'lead', :'e_discovery'));
-- 23503: a stage that does not exist (or is another tenant's), by any path
SELECT try(format($$UPDATE crm.opportunity SET stage_id = %L WHERE id = %L$$, :'other_stage', :'deal'));
SELECT try(format($$SELECT crm.opportunity_move_stage(%L, %L)$$, :'deal', :'other_stage'));
SELECT try(format($$SELECT crm.lead_move_stage(%L, '00000000-0000-7000-8000-000000000001')$$, :'lead'));
SELECT try($$INSERT INTO crm.lead (name, stage_id) VALUES ('x', '00000000-0000-7000-8000-000000000001')$$);

-- 42501: a row for another tenant, as for every tenant table
SELECT try(format($$INSERT INTO crm.account (tenant_id, name) VALUES (%L, 'x')$$, :'other'));
SELECT try(format($$INSERT INTO crm.opportunity (tenant_id, name) VALUES (%L, 'x')$$, :'other'));
SELECT try(format($$INSERT INTO crm.lead (tenant_id, name) VALUES (%L, 'x')$$, :'other'));
SELECT try(format($$INSERT INTO crm.lead (tenant_id, name, stage_id) VALUES (%L, 'x', %L)$$, :'other', :'other_stage'));
-- 42501: tenant_id and id cannot be changed
SELECT try(format($$UPDATE crm.opportunity SET tenant_id = %L WHERE id = %L$$, :'other', :'deal'));
SELECT try(format($$UPDATE crm.lead SET tenant_id = %L WHERE id = %L$$, :'other', :'lead'));
SELECT try(format($$UPDATE crm.opportunity SET id = crm.uuid_generate_v7(), stage_id = %L WHERE id = %L$$, :'s_won', :'deal'));
SELECT try(format($$UPDATE crm.lead SET id = crm.uuid_generate_v7() WHERE id = %L$$, :'lead'));

-- 55000: a record in the wrong state for the operation
SELECT try(format($$SELECT crm.opportunity_reopen(%L, %L)$$, :'deal', :'s_new'));
SELECT try(format($$SELECT crm.lead_reopen(%L, %L)$$, :'lead', :'s_new'));
SELECT try(format($$UPDATE crm.stage SET kind = 'lost', probability = 0 WHERE id = %L$$, :'s_new'));
SELECT try(format($$SELECT crm.lead_convert(%L)$$, :'nameless'));

-- 22023: a parameter that cannot be right
SELECT try(format($$SELECT crm.opportunity_reopen(%L, %L)$$, :'wondeal', :'s_won'));

-- P0002: a pipeline without the stage an operation needs
SELECT try(format($$SELECT crm.opportunity_mark_won(%L)$$, :'endless'));
SELECT try(format($$SELECT crm.opportunity_mark_lost(%L)$$, :'endless'));

-- nothing stored changed
SELECT digest = :'before' AS unchanged, rows FROM pg_temp.stored;

RESET crm.tenant_id;
RESET ROLE;
