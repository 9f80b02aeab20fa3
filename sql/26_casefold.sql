-- Case-insensitive matching folds non-ASCII letters too, on any cluster
-- locale (crm.casefold: lower() under ICU's root collation).  The test
-- cluster runs with --locale=C, where lower('Ö') would stay 'Ö'.

SELECT lower('JÖRG@MÜLLER.EXAMPLE') AS lower_under_c, crm.casefold('JÖRG@MÜLLER.EXAMPLE') AS casefold;

SELECT crm.create_tenant('Casefold Co') AS t \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';

-- one e-mail address, two spellings: the second is a duplicate (23505)
INSERT INTO crm.contact (first_name, email) VALUES ('Jörg', 'jörg@müller.example');
SELECT try('INSERT INTO crm.contact (first_name, email) VALUES (''Jörg'', ''JÖRG@MÜLLER.EXAMPLE'')') AS contact_email;
SELECT try('UPDATE crm.contact SET email = ''Ångström@Ærø.example'' WHERE first_name = ''Jörg''') AS update_ok;
INSERT INTO crm.contact (first_name, email) VALUES ('Other', 'other@example.com');
SELECT try('UPDATE crm.contact SET email = ''ÅNGSTRÖM@ÆRØ.EXAMPLE'' WHERE first_name = ''Other''') AS contact_email_by_update;
INSERT INTO crm.app_user (name, email) VALUES ('Jörg Müller', 'jörg@müller.example');
SELECT try('INSERT INTO crm.app_user (name, email) VALUES (''Jörg M.'', ''JÖRG@MÜLLER.EXAMPLE'')') AS app_user_email;

-- names unique per tenant: tags, pipelines, stages within a pipeline, teams
INSERT INTO crm.tag (name) VALUES ('Größte Kunden');
SELECT try('INSERT INTO crm.tag (name) VALUES (''GRÖSSTE KUNDEN'')') AS tag_ss_is_not_sharp_s,
       try('INSERT INTO crm.tag (name) VALUES (''GRÖßTE KUNDEN'')') AS tag_name;
INSERT INTO crm.pipeline (name) VALUES ('Éducation') RETURNING id AS edu \gset
SELECT try('INSERT INTO crm.pipeline (name) VALUES (''ÉDUCATION'')') AS pipeline_name;
INSERT INTO crm.stage (pipeline_id, name, sequence, probability) VALUES (:'edu', 'Première', 1, 10);
SELECT try(format('INSERT INTO crm.stage (pipeline_id, name, sequence, probability) VALUES (%L, %L, 2, 20)',
                  :'edu', 'PREMIÈRE')) AS stage_name;
INSERT INTO crm.team (name) VALUES ('Équipe Ωmega');
SELECT try('INSERT INTO crm.team (name) VALUES (''ÉQUIPE ωMEGA'')') AS team_name;

-- converting a lead finds the account by company name and the contact by
-- e-mail whatever their case
INSERT INTO crm.account (name) VALUES ('Müller Öl GmbH') RETURNING id AS mueller \gset
SELECT id AS joerg FROM crm.contact WHERE first_name = 'Jörg' \gset
INSERT INTO crm.lead (name, company_name, email) VALUES ('Öl order', 'MÜLLER ÖL GMBH', 'ÅNGSTRÖM@ÆRØ.EXAMPLE')
RETURNING id AS lead \gset
SELECT account_id = :'mueller' AS same_account, contact_id = :'joerg' AS same_contact
  FROM crm.lead_convert(:'lead');

-- nothing was doubled
SELECT (SELECT count(*) FROM crm.contact) AS contacts, (SELECT count(*) FROM crm.app_user) AS users,
       (SELECT count(*) FROM crm.tag) AS tags, (SELECT count(*) FROM crm.pipeline WHERE name ILIKE '%ducation') AS pipelines,
       (SELECT count(*) FROM crm.stage WHERE pipeline_id = :'edu') AS stages, (SELECT count(*) FROM crm.team) AS teams,
       (SELECT count(*) FROM crm.account) AS accounts;
SELECT first_name, email FROM crm.contact ORDER BY first_name;
RESET crm.tenant_id;
RESET ROLE;
