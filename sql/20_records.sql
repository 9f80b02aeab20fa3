-- Core records: a tenant with its defaults, records with their defaults, and
-- the errors bad input gets.  As superuser, the tenant is chosen with the
-- crm.tenant_id setting (an application role does the same with SET LOCAL).

SELECT crm.create_tenant('Records Co') AS t \gset
SET ROLE regress_crm_app;
SELECT set_config('crm.tenant_id', :'t', false) IS NOT NULL AS acting;
SELECT crm.current_tenant() = :'t' AS current_tenant_is_set;

-- the defaults of a new tenant: two pipelines, six stages each
SELECT p.name AS pipeline, p.is_default, s.sequence, s.name AS stage, s.probability, s.kind,
       s.forecast_category
  FROM crm.pipeline p JOIN crm.stage s ON s.tenant_id = p.tenant_id AND s.pipeline_id = p.id
 WHERE p.tenant_id = :'t'
 ORDER BY p.sequence, s.sequence;

-- records take the tenant from the context, ids from uuid_generate_v7
INSERT INTO crm.app_user (name, email) VALUES ('Rita Rep', 'rita@records.example') RETURNING id AS rita \gset
INSERT INTO crm.account (name, industry, employees, owner_id)
VALUES ('Initech', 'technology', 250, :'rita') RETURNING id AS initech \gset
INSERT INTO crm.contact (first_name, last_name, email, account_id)
VALUES ('Peter', 'Gibbons', 'Peter.Gibbons@initech.example', :'initech') RETURNING id AS peter \gset
SELECT tenant_id = :'t' AS own_tenant, currency, account_type, created_at = updated_at AS fresh
  FROM crm.account WHERE id = :'initech';

-- an opportunity without pipeline or stage: the default pipeline, first stage
INSERT INTO crm.opportunity (name, account_id, amount) VALUES ('Initech renewal', :'initech', 12000)
RETURNING id AS opp \gset
SELECT p.name AS pipeline, s.name AS stage, o.status, o.probability, o.closed_at, o.currency
  FROM crm.opportunity o
  JOIN crm.pipeline p ON p.tenant_id = o.tenant_id AND p.id = o.pipeline_id
  JOIN crm.stage s ON s.tenant_id = o.tenant_id AND s.id = o.stage_id
 WHERE o.id = :'opp';

-- only the pipeline given: its first stage
SELECT id AS enterprise FROM crm.pipeline WHERE tenant_id = :'t' AND name = 'Enterprise Deals' \gset
INSERT INTO crm.lead (name, pipeline_id, email) VALUES ('Big lead', :'enterprise', 'big@lead.example')
RETURNING id AS biglead \gset
SELECT s.name AS stage, l.status, l.probability, l.priority
  FROM crm.lead l JOIN crm.stage s ON s.tenant_id = l.tenant_id AND s.id = l.stage_id
 WHERE l.id = :'biglead';

-- only the stage given: its pipeline; probability set by hand is kept
SELECT id AS proposal FROM crm.stage s
 WHERE tenant_id = :'t' AND name = 'Proposal'
   AND pipeline_id = (SELECT id FROM crm.pipeline WHERE tenant_id = :'t' AND is_default) \gset
INSERT INTO crm.opportunity (name, stage_id, probability, amount)
VALUES ('Hand-set odds', :'proposal', 35, 1000) RETURNING id AS handset \gset
SELECT p.name AS pipeline, o.probability FROM crm.opportunity o
  JOIN crm.pipeline p ON p.tenant_id = o.tenant_id AND p.id = o.pipeline_id WHERE o.id = :'handset';

-- the updated_at of a changed row moves on; created_at stays
SELECT updated_at AS before FROM crm.account WHERE id = :'initech' \gset
BEGIN;
SELECT pg_sleep(0.01);
UPDATE crm.account SET rating = 'hot' WHERE id = :'initech';
SELECT updated_at > :'before'::timestamptz AS touched, created_at = :'before'::timestamptz AS created_kept
  FROM crm.account WHERE id = :'initech';
COMMIT;

-- consent flags say since when they hold
UPDATE crm.contact SET do_not_call = true WHERE id = :'peter';
SELECT do_not_call, do_not_call_at IS NOT NULL AS since_set, email_opt_out, email_opt_out_at
  FROM crm.contact WHERE id = :'peter';
UPDATE crm.contact SET do_not_call = false WHERE id = :'peter';
SELECT do_not_call, do_not_call_at FROM crm.contact WHERE id = :'peter';

-- Bad input: a clear error with the right SQLSTATE, and nothing stored changes.
SELECT count(*) AS opportunities_before FROM crm.opportunity WHERE tenant_id = :'t';
-- negative amount
SELECT try($$INSERT INTO crm.opportunity (name, amount) VALUES ('Minus', -5)$$);
SELECT try(format($$UPDATE crm.opportunity SET amount = -1 WHERE id = %L$$, :'opp'));
-- probability outside 0-100
SELECT try($$INSERT INTO crm.opportunity (name, probability) VALUES ('Sure thing', 120)$$);
SELECT try($$INSERT INTO crm.lead (name, probability) VALUES ('Doubtful', -1)$$);
SELECT try($$INSERT INTO crm.stage (pipeline_id, name, sequence, probability)
             SELECT id, 'Too likely', 9, 101 FROM crm.pipeline WHERE is_default$$);
-- a won stage must have probability 100
SELECT try($$INSERT INTO crm.stage (pipeline_id, name, sequence, probability, kind)
             SELECT id, 'Half won', 9, 50, 'won' FROM crm.pipeline WHERE is_default$$);
-- invalid e-mail addresses
SELECT try($$INSERT INTO crm.contact (first_name, email) VALUES ('No', 'not-an-email')$$);
SELECT try($$INSERT INTO crm.lead (name, email) VALUES ('No', 'two@@example.com')$$);
SELECT try($$INSERT INTO crm.contact (first_name, email) VALUES ('No', 'no@domain')$$);
-- invalid or unknown currency codes
SELECT try($$INSERT INTO crm.opportunity (name, currency) VALUES ('Bad money', 'usd')$$);
SELECT try($$INSERT INTO crm.opportunity (name, currency) VALUES ('Bad money', 'ABC')$$);
SELECT try($$INSERT INTO crm.currency_rate (from_currency, to_currency, rate) VALUES ('EUR', 'USD', 0)$$);
-- empty names
SELECT try($$INSERT INTO crm.account (name) VALUES ('   ')$$);
SELECT try($$INSERT INTO crm.contact (first_name) VALUES ('')$$);
SELECT try($$INSERT INTO crm.opportunity (name) VALUES (NULL)$$);
SELECT try($$SELECT crm.create_tenant(' ')$$);
SELECT try($$SELECT crm.create_tenant(NULL)$$);
-- values outside the fixed sets
SELECT try($$INSERT INTO crm.lead (name, priority) VALUES ('Odd', 'critical')$$);
SELECT try($$INSERT INTO crm.account (name, rating) VALUES ('Odd', 'lukewarm')$$);
SELECT try($$INSERT INTO crm.lead (name, purchase_timeline) VALUES ('Odd', 'someday')$$);
-- a wrong id in a reference
SELECT try($$INSERT INTO crm.contact (first_name, account_id) VALUES ('Lost', '00000000-0000-7000-8000-000000000001')$$);
SELECT try($$INSERT INTO crm.opportunity (name, stage_id) VALUES ('Nowhere', '00000000-0000-7000-8000-000000000001')$$);
-- a stage of another pipeline
SELECT id AS enterprise_first FROM crm.stage WHERE tenant_id = :'t' AND pipeline_id = :'enterprise'
 ORDER BY sequence LIMIT 1 \gset
SELECT try(format($$UPDATE crm.opportunity SET stage_id = %L WHERE id = %L$$, :'enterprise_first', :'opp'));
SELECT try(format($$INSERT INTO crm.opportunity (name, pipeline_id, stage_id)
                    SELECT 'Mixed', id, %L FROM crm.pipeline WHERE is_default$$, :'enterprise_first'));
-- status and closed_at follow the stage; a client's value is ignored (the
-- UPDATE succeeds, the record stays open: see the last query of this file)
SELECT try(format($$UPDATE crm.opportunity SET status = 'won' WHERE id = %L$$, :'opp'));
SELECT try(format($$UPDATE crm.opportunity SET closed_at = now() WHERE id = %L$$, :'opp'));
SELECT status, closed_at FROM crm.opportunity WHERE id = :'opp';
-- duplicate e-mail within a tenant (case-insensitive)
SELECT try($$INSERT INTO crm.contact (first_name, email) VALUES ('Pete', 'peter.gibbons@INITECH.example')$$);
-- one default pipeline per tenant
SELECT try($$UPDATE crm.pipeline SET is_default = true WHERE name = 'Enterprise Deals'$$);
SELECT count(*) AS opportunities_after FROM crm.opportunity WHERE tenant_id = :'t';
SELECT name, amount, status, probability FROM crm.opportunity WHERE id = :'opp';

RESET crm.tenant_id;
RESET ROLE;
