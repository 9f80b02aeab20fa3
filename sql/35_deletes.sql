-- What a delete keeps.  Records are archived in normal use; when one is
-- deleted all the same, the rows that pointed at it stay and lose only the
-- link (ON DELETE SET NULL done by crm.clear_links(), as Citus allows no
-- SET NULL action), an activity is deleted only when the deleted record
-- was its last link, and the stage history stays whole.

SELECT crm.create_tenant('Deletes Co') AS t \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';

INSERT INTO crm.app_user (name) VALUES ('Una Boss') RETURNING id AS una \gset
INSERT INTO crm.app_user (name, manager_id) VALUES ('Rex Rep', :'una') RETURNING id AS rex \gset
INSERT INTO crm.team (name, manager_id) VALUES ('East', :'una') RETURNING id AS east \gset
INSERT INTO crm.team_member (team_id, user_id) VALUES (:'east', :'rex');
INSERT INTO crm.account (name, owner_id) VALUES ('Acme', :'una') RETURNING id AS acme \gset
INSERT INTO crm.account (name, parent_account_id, owner_id) VALUES ('Acme EU', :'acme', :'rex') RETURNING id AS acme_eu \gset
INSERT INTO crm.contact (first_name, last_name, email, account_id, owner_id)
VALUES ('Carla', 'Buyer', 'carla@acme.example', :'acme', :'una') RETURNING id AS carla \gset
INSERT INTO crm.opportunity (name, account_id, contact_id, owner_id, amount)
VALUES ('Big deal', :'acme', :'carla', :'una', 1000) RETURNING id AS big \gset
SELECT id AS proposal FROM crm.stage s
 WHERE s.name = 'Proposal' AND s.pipeline_id = (SELECT id FROM crm.pipeline WHERE is_default) \gset
SELECT status FROM crm.opportunity_move_stage(:'big', :'proposal');
INSERT INTO crm.lead (name, contact_name, email, owner_id) VALUES ('Leo inquiry', 'Leo Lead', 'leo@acme.example', :'una')
RETURNING id AS leo \gset
SELECT opportunity_id AS leo_deal FROM crm.lead_convert(:'leo', account => :'acme', contact => :'carla') \gset
INSERT INTO crm.activity (activity_type, subject, account_id) VALUES
    ('call', 'a1 account only', :'acme');
INSERT INTO crm.activity (activity_type, subject, account_id, contact_id, owner_id) VALUES
    ('meeting', 'a2 account and contact', :'acme', :'carla', :'rex');
INSERT INTO crm.activity (activity_type, subject, opportunity_id, contact_id) VALUES
    ('email', 'a3 deal and contact', :'big', :'carla');
INSERT INTO crm.activity (activity_type, subject, contact_id) VALUES
    ('note', 'a4 contact only', :'carla');
INSERT INTO crm.activity (activity_type, subject, lead_id) VALUES
    ('task', 'a5 lead only', :'leo');

-- what is where: every activity with its links, the records' links, and
-- the row counts of the tenant
CREATE VIEW pg_temp.activities AS
SELECT a.subject, a.account_id IS NOT NULL AS account, a.contact_id IS NOT NULL AS contact,
       a.lead_id IS NOT NULL AS lead, a.opportunity_id IS NOT NULL AS deal, a.owner_id IS NOT NULL AS owner
  FROM crm.activity a ORDER BY a.subject;
CREATE VIEW pg_temp.links AS
SELECT 'account ' || name AS record, parent_account_id IS NOT NULL AS parent, NULL::boolean AS account,
       NULL::boolean AS contact, NULL::boolean AS lead, owner_id IS NOT NULL AS owner, NULL AS status
  FROM crm.account
UNION ALL
SELECT 'contact ' || first_name, NULL, account_id IS NOT NULL, NULL, NULL, owner_id IS NOT NULL, NULL FROM crm.contact
UNION ALL
SELECT 'deal ' || name, NULL, account_id IS NOT NULL, contact_id IS NOT NULL, lead_id IS NOT NULL,
       owner_id IS NOT NULL, status FROM crm.opportunity
UNION ALL
SELECT 'lead ' || name, NULL, converted_account_id IS NOT NULL, converted_contact_id IS NOT NULL, NULL,
       owner_id IS NOT NULL, status FROM crm.lead
ORDER BY 1;
CREATE VIEW pg_temp.counts AS
SELECT (SELECT count(*) FROM crm.account) AS accounts, (SELECT count(*) FROM crm.contact) AS contacts,
       (SELECT count(*) FROM crm.lead) AS leads, (SELECT count(*) FROM crm.opportunity) AS deals,
       (SELECT count(*) FROM crm.activity) AS activities, (SELECT count(*) FROM crm.stage_history) AS history,
       (SELECT count(*) FROM crm.app_user) AS users;

SELECT * FROM pg_temp.counts;
SELECT * FROM pg_temp.activities;
SELECT * FROM pg_temp.links;

-- 1. the account: its sub-account, contact, deals and the lead converted
-- into it lose the link; a1 (about the account only) goes, a2 stays with
-- its contact
DELETE FROM crm.account WHERE id = :'acme';
SELECT * FROM pg_temp.counts;
SELECT * FROM pg_temp.activities;
SELECT * FROM pg_temp.links;

-- 2. the contact: a2 and a4 had no other link left and go; a3 stays with
-- its deal; the lead stays converted though its contact is gone
DELETE FROM crm.contact WHERE id = :'carla';
SELECT * FROM pg_temp.counts;
SELECT * FROM pg_temp.activities;
SELECT * FROM pg_temp.links;

-- 3. the lead: a5 goes; the deal made from it stays, without the link
DELETE FROM crm.lead WHERE id = :'leo';
SELECT * FROM pg_temp.counts;
SELECT * FROM pg_temp.activities;
SELECT * FROM pg_temp.links WHERE record LIKE 'deal %';

-- 4. the deal: a3 goes; its stage history (created, moved) stays
SELECT count(*) AS big_deal_history FROM crm.stage_history WHERE opportunity_id = :'big';
DELETE FROM crm.opportunity WHERE id = :'big';
SELECT count(*) AS big_deal_history FROM crm.stage_history WHERE opportunity_id = :'big';
SELECT * FROM pg_temp.counts;
SELECT * FROM pg_temp.activities;

-- 5. a user: what they owned or managed stays, unowned
INSERT INTO crm.activity (activity_type, subject, account_id, owner_id) VALUES ('call', 'a6 by Una', :'acme_eu', :'una');
DELETE FROM crm.app_user WHERE id = :'una';
SELECT * FROM pg_temp.counts;
SELECT * FROM pg_temp.activities;
SELECT * FROM pg_temp.links;
SELECT name, manager_id IS NOT NULL AS has_manager FROM crm.app_user;
SELECT name, manager_id IS NOT NULL AS has_manager FROM crm.team;

-- a multi-row delete clears every link in one statement
INSERT INTO crm.account (name) SELECT 'Bulk ' || n FROM generate_series(1, 20) n;
INSERT INTO crm.contact (first_name, account_id) SELECT 'Bulk', id FROM crm.account WHERE name LIKE 'Bulk %';
INSERT INTO crm.activity (activity_type, subject, account_id, contact_id)
SELECT 'call', 'bulk', c.account_id, c.id FROM crm.contact c WHERE c.first_name = 'Bulk';
DELETE FROM crm.account WHERE name LIKE 'Bulk %';
SELECT count(*) AS bulk_contacts, count(account_id) AS still_linked FROM crm.contact WHERE first_name = 'Bulk';
SELECT count(*) AS bulk_activities, count(account_id) AS still_linked, count(contact_id) AS with_contact
  FROM crm.activity WHERE subject = 'bulk';

-- a reference to a record that does not exist is still refused at once
SELECT try($$INSERT INTO crm.activity (activity_type, subject, account_id)
             VALUES ('call', 'nowhere', '00000000-0000-7000-8000-000000000001')$$);
-- a stage that records are in cannot be deleted (the deal made from Leo's
-- lead is in New); one that none is in can, and its history stays
SELECT try(format($$DELETE FROM crm.stage WHERE id = %L$$, (SELECT stage_id FROM crm.opportunity WHERE id = :'leo_deal')));
SELECT try(format($$DELETE FROM crm.stage WHERE id = %L$$, :'proposal'));
SELECT count(*) AS history_into_proposal FROM crm.stage_history WHERE to_stage_id = :'proposal';
SELECT * FROM pg_temp.counts;
-- records have no foreign key to their stage (stage_sync checks their side);
-- crm.stage_keep_records() keeps the stage's: a pipeline whose stages hold
-- records cannot be deleted, nor a stage in use moved to another pipeline,
-- and nothing changes; an empty stage can move
INSERT INTO crm.pipeline (name) VALUES ('Second line');
SELECT try($$DELETE FROM crm.pipeline WHERE is_default$$);
SELECT try(format($$UPDATE crm.stage SET pipeline_id = (SELECT id FROM crm.pipeline WHERE name = 'Second line')
                    WHERE id = %L$$, (SELECT stage_id FROM crm.opportunity WHERE id = :'leo_deal')));
SELECT count(*) AS stages_of_default FROM crm.stage s JOIN crm.pipeline p
    ON p.tenant_id = s.tenant_id AND p.id = s.pipeline_id WHERE p.is_default;
SELECT * FROM pg_temp.counts;
UPDATE crm.stage SET pipeline_id = (SELECT id FROM crm.pipeline WHERE name = 'Second line')
 WHERE name = 'Negotiation' AND pipeline_id = (SELECT id FROM crm.pipeline WHERE is_default);
SELECT p.name AS pipeline, count(*) AS stages FROM crm.stage s JOIN crm.pipeline p
    ON p.tenant_id = s.tenant_id AND p.id = s.pipeline_id GROUP BY p.name ORDER BY p.name;
-- a record cannot take the moved stage with its old pipeline
SELECT try(format($$UPDATE crm.opportunity SET stage_id = (SELECT id FROM crm.stage WHERE name = 'Negotiation')
                    WHERE id = %L$$, :'leo_deal'));
-- the empty pipeline goes, with its stage
DELETE FROM crm.pipeline WHERE name = 'Second line';
SELECT count(*) AS negotiation_stages FROM crm.stage WHERE name = 'Negotiation';

-- In a private tenant a rep deletes a contact they see, whose activity is
-- their manager's and hidden from them: the link cannot be cleared behind
-- their back, so the delete is refused (42501, by the visibility guard;
-- the deferred foreign key would refuse it at commit otherwise), and the
-- contact and the activity both stay
RESET ROLE;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'regress_delete_rep') THEN
        CREATE ROLE regress_delete_rep NOLOGIN;
    END IF;
END
$$;
GRANT crm_app, crm_writer TO regress_delete_rep;
SET ROLE regress_crm_app;
UPDATE crm.tenant SET visibility = 'private' WHERE tenant_id = :'t';
INSERT INTO crm.app_user (name) VALUES ('Max Manager') RETURNING id AS max \gset
INSERT INTO crm.app_user (name, manager_id) VALUES ('Ron Rep', :'max') RETURNING id AS ron \gset
INSERT INTO crm.contact (first_name, owner_id) VALUES ('Ronda', :'ron') RETURNING id AS ronda \gset
INSERT INTO crm.activity (activity_type, subject, contact_id, owner_id)
VALUES ('note', 'manager''s note', :'ronda', :'max');
SET ROLE regress_delete_rep;
SET crm.user_id = :'ron';
SELECT count(*) AS ronda_seen, (SELECT count(*) FROM crm.activity WHERE contact_id = :'ronda') AS activities_seen
  FROM crm.contact WHERE id = :'ronda';
SELECT try(format('DELETE FROM crm.contact WHERE id = %L', :'ronda')) AS delete_with_a_hidden_activity;
SET ROLE regress_crm_app;
RESET crm.user_id;
SELECT count(*) AS ronda_kept, (SELECT count(*) FROM crm.activity WHERE contact_id = :'ronda') AS activities_kept
  FROM crm.contact WHERE id = :'ronda';

RESET crm.tenant_id;
RESET ROLE;
DROP ROLE regress_delete_rep;

-- A CRM user a login role is mapped as is not deleted while the mapping
-- names them (23503, as a foreign key would: crm.tenant_access is a Citus
-- reference table, which a delete's trigger on a shard cannot clear);
-- once the mapping acts as nobody, the user goes and the mapping stays
CREATE ROLE regress_delete_login;
SELECT crm.create_tenant('Unmapped Co') AS ut \gset
INSERT INTO crm.app_user (tenant_id, name) VALUES (:'ut', 'Leaving Lou') RETURNING id AS lou \gset
SELECT crm.grant_tenant_access('regress_delete_login', :'ut', :'lou');
\set VERBOSITY terse
DELETE FROM crm.app_user WHERE id = :'lou';
\set VERBOSITY default
SELECT login_role, user_id = :'lou' AS as_lou FROM crm.tenant_access WHERE tenant_id = :'ut';
UPDATE crm.tenant_access SET user_id = NULL WHERE tenant_id = :'ut';
DELETE FROM crm.app_user WHERE id = :'lou';
SELECT login_role, user_id FROM crm.tenant_access WHERE tenant_id = :'ut';
DELETE FROM crm.tenant WHERE tenant_id = :'ut';
DROP ROLE regress_delete_login;

-- The schema: no foreign key sets NULL or a default on delete (Citus allows
-- neither), the history has no foreign key to the records, and every
-- cleared link is deferrable
SELECT conrelid::regclass AS "table", conname, confdeltype FROM pg_constraint
 WHERE contype = 'f' AND connamespace = 'crm'::regnamespace AND confdeltype IN ('n', 'd')
 ORDER BY 1, 2;
SELECT conname FROM pg_constraint WHERE contype = 'f' AND conrelid = 'crm.stage_history'::regclass;
SELECT count(*) AS deferrable_links, count(*) FILTER (WHERE condeferred) AS initially_deferred
  FROM pg_constraint WHERE contype = 'f' AND connamespace = 'crm'::regnamespace AND condeferrable;

-- crm.clear_links() and crm.stage_follow() attached where they do not belong
CREATE TABLE public.misuse_del (tenant_id text, id uuid);
CREATE TRIGGER t AFTER DELETE ON public.misuse_del REFERENCING OLD TABLE AS o
    FOR EACH STATEMENT EXECUTE FUNCTION crm.clear_links('contact', 'account_id', '');
INSERT INTO public.misuse_del VALUES ('x', gen_random_uuid());
SELECT try('DELETE FROM public.misuse_del');
DROP TRIGGER t ON public.misuse_del;
CREATE TRIGGER t AFTER DELETE ON public.misuse_del
    FOR EACH STATEMENT EXECUTE FUNCTION crm.clear_links('contact', 'account_id', '');
SELECT try('DELETE FROM public.misuse_del');
DROP TRIGGER t ON public.misuse_del;
CREATE TRIGGER t BEFORE DELETE ON public.misuse_del
    FOR EACH STATEMENT EXECUTE FUNCTION crm.clear_links('contact', 'account_id');
SELECT try('DELETE FROM public.misuse_del');
DROP TRIGGER t ON public.misuse_del;
CREATE TRIGGER t BEFORE DELETE ON public.misuse_del
    FOR EACH ROW EXECUTE FUNCTION crm.clear_links('contact', 'account_id', '');
SELECT try('DELETE FROM public.misuse_del');
DROP TRIGGER t ON public.misuse_del;
CREATE TRIGGER t AFTER UPDATE ON public.misuse_del
    FOR EACH ROW EXECUTE FUNCTION crm.stage_follow();
SELECT try('UPDATE public.misuse_del SET id = id');
DROP TRIGGER t ON public.misuse_del;
CREATE TRIGGER t AFTER UPDATE ON public.misuse_del
    FOR EACH ROW EXECUTE FUNCTION crm.stage_follow('x');
SELECT try('UPDATE public.misuse_del SET id = id');
DROP TRIGGER t ON public.misuse_del;
CREATE TRIGGER t AFTER DELETE ON public.misuse_del
    FOR EACH ROW EXECUTE FUNCTION crm.stage_keep_records();
SELECT try('DELETE FROM public.misuse_del');
DROP TRIGGER t ON public.misuse_del;
CREATE TRIGGER t AFTER DELETE ON public.misuse_del
    FOR EACH ROW EXECUTE FUNCTION crm.stage_keep_records('x');
SELECT try('DELETE FROM public.misuse_del');
DROP TRIGGER t ON public.misuse_del;
CREATE TRIGGER t BEFORE DELETE ON public.misuse_del
    FOR EACH ROW EXECUTE FUNCTION crm.stage_keep_records();
SELECT try('DELETE FROM public.misuse_del');
DROP TRIGGER t ON public.misuse_del;
CREATE TRIGGER t AFTER INSERT ON public.misuse_del
    FOR EACH ROW EXECUTE FUNCTION crm.stage_keep_records();
SELECT try($$INSERT INTO public.misuse_del VALUES ('y', gen_random_uuid())$$);
DROP TRIGGER t ON public.misuse_del;
SELECT try('SELECT crm.stage_keep_records()');
CREATE TRIGGER t BEFORE TRUNCATE ON public.misuse_del
    FOR EACH STATEMENT EXECUTE FUNCTION crm.stage_keep_records();
SELECT try('TRUNCATE public.misuse_del');
DROP TRIGGER t ON public.misuse_del;
-- TRUNCATE of the stages (CASCADE, as the workflow rules that name a stage
-- require) while records exist: refused, nothing goes
SELECT try('TRUNCATE crm.stage CASCADE');
SELECT count(*) > 0 AS stages_kept, (SELECT count(*) > 0 FROM crm.workflow_rule) AS rules_kept FROM crm.stage;
-- ... but a TRUNCATE that empties the records with the stages goes through
-- (the check runs after it): rolled back here
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT try('TRUNCATE crm.stage, crm.lead, crm.opportunity CASCADE');
SELECT count(*) AS stages_left FROM crm.stage;
ROLLBACK;
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT try('TRUNCATE crm.tenant CASCADE');
SELECT count(*) AS tenants_left FROM crm.tenant;
ROLLBACK;
SELECT count(*) > 0 AS stages_back FROM crm.stage;
SELECT try('SELECT crm.clear_links()');
DROP TABLE public.misuse_del;
