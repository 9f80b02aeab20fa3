-- An attacker with crm_writer forges the columns the server owns, by every
-- path a client has: INSERT, UPDATE, INSERT ... ON CONFLICT, COPY.
--   created_at, updated_at (every table), activity.completed_at and
--   activity.module, the contact's consent times: the client's value is
--   ignored and the server's is stored;
--   id and tenant_id: an UPDATE that changes them is refused (42501).
-- Each forgery is followed by a check that nothing else changed.

SELECT crm.create_tenant('Forgers Inc') AS t \gset
SELECT crm.create_tenant('Victim Ltd') AS victim \gset
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'regress_forger') THEN
        CREATE ROLE regress_forger NOLOGIN;
    END IF;
END
$$;
SET client_min_messages = warning;  -- a cluster that ran the suite before has the membership
GRANT crm_app, crm_writer TO regress_forger;
RESET client_min_messages;
SET ROLE regress_forger;
SET crm.tenant_id = :'t';

-- INSERT: created_at 1970 and updated_at 2999 become the transaction's time
BEGIN;
INSERT INTO crm.account (name, created_at, updated_at)
VALUES ('Backdated Ltd', '1970-01-01', '2999-01-01') RETURNING id AS acc \gset
SELECT created_at = now() AS created_now, updated_at = now() AS updated_now FROM crm.account WHERE id = :'acc';
COMMIT;
SELECT created_at AS acc_created, to_jsonb(a) - 'updated_at' AS acc_row FROM crm.account a WHERE id = :'acc' \gset

-- UPDATE: created_at cannot be rewritten, updated_at is the server's
BEGIN;
UPDATE crm.account SET created_at = '1970-01-01', updated_at = '2999-01-01', rating = 'hot' WHERE id = :'acc';
SELECT created_at = :'acc_created' AS created_kept, updated_at = now() AS updated_now, rating
  FROM crm.account WHERE id = :'acc';
COMMIT;
UPDATE crm.account SET updated_at = '1970-01-01' WHERE id = :'acc';
SELECT updated_at > '2000-01-01' AS updated_not_1970 FROM crm.account WHERE id = :'acc';
UPDATE crm.account SET rating = NULL WHERE id = :'acc';
SELECT (to_jsonb(a) - 'updated_at') = :'acc_row'::jsonb AS nothing_else_changed FROM crm.account a WHERE id = :'acc';

-- id and tenant_id cannot change, alone or hidden in a larger UPDATE
SELECT try(format('UPDATE crm.account SET id = crm.uuid_generate_v7() WHERE id = %L', :'acc')) AS account_id;
SELECT try(format('UPDATE crm.account SET tenant_id = %L WHERE id = %L', :'victim', :'acc')) AS account_tenant;
INSERT INTO crm.opportunity (name, amount) VALUES ('Deal', 100) RETURNING id AS deal \gset
SELECT to_jsonb(o) AS deal_row FROM crm.opportunity o WHERE id = :'deal' \gset
SELECT try(format('UPDATE crm.opportunity SET id = crm.uuid_generate_v7(), stage_id = s.id FROM crm.stage s
                    WHERE s.tenant_id = %L AND s.name = %L AND s.pipeline_id = crm.opportunity.pipeline_id
                      AND crm.opportunity.id = %L', :'t', 'Qualified', :'deal')) AS id_with_stage_change;
INSERT INTO crm.contact (first_name) VALUES ('Moved') RETURNING id AS moved \gset
SELECT try(format('UPDATE crm.contact SET tenant_id = %L WHERE id = %L', :'victim', :'moved')) AS contact_tenant,
       try(format('UPDATE crm.contact SET tenant_id = %L, id = crm.uuid_generate_v7() WHERE id = %L', :'victim', :'moved')) AS contact_both;
INSERT INTO crm.tag (name) VALUES ('Forged') RETURNING id AS tag \gset
SELECT try(format('UPDATE crm.tag SET id = crm.uuid_generate_v7() WHERE id = %L', :'tag')) AS tag_id;
INSERT INTO crm.account_tag (account_id, tag_id) VALUES (:'acc', :'tag');
SELECT try(format('UPDATE crm.account_tag SET tenant_id = %L WHERE tag_id = %L', :'victim', :'tag')) AS account_tag_tenant;
SELECT (to_jsonb(a) - 'updated_at') = :'acc_row'::jsonb AS account_unchanged FROM crm.account a WHERE id = :'acc';
SELECT to_jsonb(o) = :'deal_row'::jsonb AS deal_unchanged FROM crm.opportunity o WHERE id = :'deal';
SELECT count(*) AS stage_history_rows FROM crm.stage_history WHERE opportunity_id = :'deal';

-- INSERT ... ON CONFLICT DO UPDATE: the update path ignores the forged
-- times and refuses a new tenant
BEGIN;
INSERT INTO crm.account (id, name, created_at, updated_at) VALUES (:'acc', 'Backdated Ltd', '1970-01-01', '2999-01-01')
    ON CONFLICT (tenant_id, id) DO UPDATE
       SET created_at = excluded.created_at, updated_at = excluded.updated_at, phone = '555-0100';
SELECT created_at = :'acc_created' AS created_kept, updated_at = now() AS updated_now, phone
  FROM crm.account WHERE id = :'acc';
COMMIT;
SELECT try(format('INSERT INTO crm.account (id, name) VALUES (%L, %L)
                   ON CONFLICT (tenant_id, id) DO UPDATE SET tenant_id = %L', :'acc', 'x', :'victim')) AS upsert_tenant;
SELECT try(format('INSERT INTO crm.account (id, name) VALUES (%L, %L)
                   ON CONFLICT (tenant_id, id) DO UPDATE SET id = crm.uuid_generate_v7()', :'acc', 'x')) AS upsert_id;
-- a new row by the same path gets the server's times too
BEGIN;
INSERT INTO crm.account (name, created_at, updated_at) VALUES ('Upserted', '1970-01-01', '2999-01-01')
    ON CONFLICT (tenant_id, id) DO NOTHING;
SELECT created_at = now() AS created_now, updated_at = now() AS updated_now FROM crm.account WHERE name = 'Upserted';
COMMIT;

-- COPY: PostgreSQL refuses COPY FROM under row-level security, so a writer
-- cannot use it at all (the operator's COPY is below)
COPY crm.account (name, created_at, updated_at) FROM stdin;
Copied One	1970-01-01 00:00:00+00	2999-01-01 00:00:00+00
\.

-- activity: module follows the type, completed_at follows the status
BEGIN;
INSERT INTO crm.activity (activity_type, subject, status, module, completed_at)
VALUES ('call', 'Forged call', 'completed', 'marketing', '1970-01-01') RETURNING id AS call \gset
SELECT module, completed_at = now() AS completed_now FROM crm.activity WHERE id = :'call';
COMMIT;
SELECT completed_at AS call_completed, to_jsonb(a) - 'updated_at' AS call_row FROM crm.activity a WHERE id = :'call' \gset
UPDATE crm.activity SET module = 'sales' WHERE id = :'call';
UPDATE crm.activity SET completed_at = '1970-01-01' WHERE id = :'call';
UPDATE crm.activity SET completed_at = NULL WHERE id = :'call';
SELECT module, completed_at = :'call_completed' AS completed_kept,
       (to_jsonb(a) - 'updated_at') = :'call_row'::jsonb AS nothing_else_changed
  FROM crm.activity a WHERE id = :'call';
-- not completed: no completion time, whatever is sent
UPDATE crm.activity SET status = 'scheduled', completed_at = '2026-01-01' WHERE id = :'call';
SELECT status, completed_at FROM crm.activity WHERE id = :'call';
INSERT INTO crm.activity (activity_type, subject, status, completed_at)
VALUES ('task', 'Forged task', 'scheduled', '2026-01-01') RETURNING completed_at;
-- completed again: a new server time
BEGIN;
UPDATE crm.activity SET status = 'completed', completed_at = '1970-01-01' WHERE id = :'call';
SELECT completed_at = now() AS completed_now FROM crm.activity WHERE id = :'call';
COMMIT;
-- a change of type derives the module again
UPDATE crm.activity SET activity_type = 'quote_sent', module = 'support' WHERE id = :'call';
SELECT activity_type, module FROM crm.activity WHERE id = :'call';

-- consent times: since when a flag holds is the server's evidence
BEGIN;
INSERT INTO crm.contact (first_name, do_not_call, do_not_call_at, email_opt_out, email_opt_out_at,
                         profiling_opt_out_at)
VALUES ('Connie', true, '1970-01-01', false, '2999-01-01', '2000-01-01') RETURNING id AS connie \gset
SELECT do_not_call_at = now() AS dnc_now, email_opt_out_at, profiling_opt_out_at FROM crm.contact WHERE id = :'connie';
COMMIT;
SELECT do_not_call_at AS dnc_at, to_jsonb(c) - 'updated_at' AS connie_row FROM crm.contact c WHERE id = :'connie' \gset
UPDATE crm.contact SET do_not_call_at = '1970-01-01', email_opt_out_at = '1970-01-01' WHERE id = :'connie';
UPDATE crm.contact SET do_not_call_at = NULL WHERE id = :'connie';
SELECT do_not_call_at = :'dnc_at' AS dnc_kept, email_opt_out_at,
       (to_jsonb(c) - 'updated_at') = :'connie_row'::jsonb AS nothing_else_changed
  FROM crm.contact c WHERE id = :'connie';
UPDATE crm.contact SET do_not_call = false, do_not_call_at = '2020-01-01' WHERE id = :'connie';
SELECT do_not_call, do_not_call_at FROM crm.contact WHERE id = :'connie';
BEGIN;
INSERT INTO crm.contact (id, first_name, email_opt_out, email_opt_out_at) VALUES (:'connie', 'Connie', true, '1970-01-01')
    ON CONFLICT (tenant_id, id) DO UPDATE SET email_opt_out = true, email_opt_out_at = excluded.email_opt_out_at;
SELECT email_opt_out, email_opt_out_at = now() AS opt_out_now FROM crm.contact WHERE id = :'connie';
COMMIT;

RESET crm.tenant_id;
RESET ROLE;
-- COPY by the operator (a superuser bypasses row-level security, not the
-- triggers): every row loaded gets the server's values
SET crm.tenant_id = :'t';
BEGIN;
COPY crm.account (name, created_at, updated_at) FROM stdin;
Copied One	1970-01-01 00:00:00+00	2999-01-01 00:00:00+00
Copied Two	1999-12-31 23:59:59+00	1999-12-31 23:59:59+00
\.
SELECT name, created_at = now() AS created_now, updated_at = now() AS updated_now
  FROM crm.account WHERE name LIKE 'Copied%' ORDER BY name;
COPY crm.activity (activity_type, subject, status, module, completed_at) FROM stdin;
email_opened	Copied open	completed	sales	1970-01-01 00:00:00+00
note	Copied note	scheduled	project	2999-01-01 00:00:00+00
\.
SELECT subject, module, completed_at = now() AS completed_now, completed_at IS NULL AS no_completed_at
  FROM crm.activity WHERE subject LIKE 'Copied%' ORDER BY subject;
COPY crm.contact (first_name, profiling_opt_out, profiling_opt_out_at) FROM stdin;
Copied Carla	true	1970-01-01 00:00:00+00
Copied Cole	false	1970-01-01 00:00:00+00
\.
SELECT first_name, profiling_opt_out, profiling_opt_out_at = now() AS since_now, profiling_opt_out_at IS NULL AS none
  FROM crm.contact WHERE first_name LIKE 'Copied%' ORDER BY first_name;
COMMIT;
RESET crm.tenant_id;
-- nothing landed in the victim tenant
SELECT (SELECT count(*) FROM crm.account WHERE tenant_id = :'victim') AS victim_accounts,
       (SELECT count(*) FROM crm.opportunity WHERE tenant_id = :'victim') AS victim_deals,
       (SELECT count(*) FROM crm.contact WHERE tenant_id = :'victim') AS victim_contacts,
       (SELECT count(*) FROM crm.account_tag WHERE tenant_id = :'victim') AS victim_tags;
-- the superuser is held to the same rule (the operator fixes data with
-- session_replication_role = replica, as a restore does)
SELECT try(format('UPDATE crm.account SET tenant_id = %L WHERE id = %L', :'victim', :'acc')) AS superuser_tenant;
SET session_replication_role = replica;
UPDATE crm.account SET created_at = '2001-01-01' WHERE id = :'acc';
RESET session_replication_role;
SELECT created_at = '2001-01-01' AS replica_keeps_value FROM crm.account WHERE id = :'acc';
-- every COMMENT says who owns the column
SELECT c.relname, a.attname AS server_column_without_note
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
 WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind = 'r' AND NOT a.attisdropped
   AND (a.attname IN ('created_at', 'updated_at')
        OR (c.relname, a.attname) IN (('activity', 'completed_at'), ('activity', 'module'), ('contact', 'do_not_call_at'),
                                      ('contact', 'email_opt_out_at'), ('contact', 'profiling_opt_out_at')))
   AND col_description(c.oid, a.attnum) NOT LIKE '%(set by the server; a client value is ignored)';
-- and every table has the trigger, on INSERT and UPDATE
SELECT c.relname AS table_without_touch_trigger
  FROM pg_class c
 WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind = 'r'
   AND NOT EXISTS (SELECT 1 FROM pg_trigger g
                    WHERE g.tgrelid = c.oid AND g.tgfoid = 'crm.touch_updated_at()'::regprocedure
                      AND g.tgtype & (2 | 4 | 16) = (2 | 4 | 16));
