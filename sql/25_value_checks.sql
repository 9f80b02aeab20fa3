-- Values that would poison reports, refused as classes on every crm table
-- (src/sql/97_value_checks.sql): numbers that are not finite, names that
-- are only whitespace, indexed text too long for its index.

SELECT crm.create_tenant('Values Co') AS t \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';
INSERT INTO crm.account (name, annual_revenue) VALUES ('Initech', 1000) RETURNING id AS initech \gset
INSERT INTO crm.opportunity (name, amount) VALUES ('Initech renewal', 12000) RETURNING id AS deal \gset
INSERT INTO crm.lead (name, expected_revenue, budget) VALUES ('Initech upsell', 500, 100) RETURNING id AS lead \gset

-- 1. NaN and infinities: "amount >= 0" is true for NaN, so each column
-- refuses them with its own constraint (23514), by INSERT and by UPDATE
SELECT v, try(format('INSERT INTO crm.opportunity (name, amount) VALUES (%L, %L)', 'x', v)) AS opportunity_amount
  FROM unnest(ARRAY['NaN', 'Infinity', '-Infinity']) v;
SELECT v, try(format('UPDATE crm.opportunity SET amount = %L WHERE id = %L', v, :'deal')) AS opportunity_amount,
       try(format('UPDATE crm.lead SET expected_revenue = %L WHERE id = %L', v, :'lead')) AS lead_expected_revenue
  FROM unnest(ARRAY['NaN', 'Infinity', '-Infinity']) v;
SELECT try(format('UPDATE crm.lead SET budget = %L WHERE id = %L', 'NaN', :'lead')) AS lead_budget,
       try(format('UPDATE crm.account SET annual_revenue = %L WHERE id = %L', 'NaN', :'initech')) AS account_revenue,
       try('INSERT INTO crm.currency_rate (from_currency, to_currency, rate) VALUES (''EUR'', ''USD'', ''NaN'')') AS rate_nan,
       try('INSERT INTO crm.currency_rate (from_currency, to_currency, rate) VALUES (''EUR'', ''USD'', ''Infinity'')') AS rate_inf;
-- a stage's probability too (it is copied into every record in the stage)
SELECT try(format('UPDATE crm.stage SET probability = %L WHERE tenant_id = %L AND name = %L', 'NaN', :'t', 'New')) AS stage_probability;

-- 2. blank names: whitespace of any kind alone is not a name
SELECT crm.is_blank(v) AS blank, to_json(v) AS value
  FROM unnest(ARRAY['', ' ', E' \t ', E'\n', E'\r\n', E'\u00a0', E'\u2003', E'\u3000', E'\u200b',
                    E' \u2028\u00a0\t', E'\ufeff', 'x', E' x\t', E'\u00a0Jörg', 'a b']) v;
SELECT crm.is_blank(NULL) IS NULL AS null_is_unknown;
SELECT to_json(v) AS name, try(format('INSERT INTO crm.account (name) VALUES (%L)', v)) AS account
  FROM unnest(ARRAY[E' \t ', E'\n', E'\u00a0', E'\u2003\u2003', E'\u200b']) v;
SELECT try(format('UPDATE crm.opportunity SET name = %L WHERE id = %L', E'\t\n', :'deal')) AS opportunity,
       try(format('UPDATE crm.lead SET name = %L WHERE id = %L', E'\u00a0', :'lead')) AS lead,
       try(format('INSERT INTO crm.contact (first_name) VALUES (%L)', E'\u2003')) AS contact,
       try(format('INSERT INTO crm.tag (name) VALUES (%L)', E'\u3000')) AS tag,
       try(format('INSERT INTO crm.pipeline (name) VALUES (%L)', E'\n\n')) AS pipeline,
       try(format('INSERT INTO crm.activity (activity_type, subject) VALUES (%L, %L)', 'note', E'\r\n')) AS activity;
-- a name with text in it is kept as written
INSERT INTO crm.tag (name) VALUES (E'\u00a0VIP ') RETURNING to_json(name) AS tag;

-- 3. indexed text has a limit with an error naming table and column,
-- instead of the btree's "index row size" (54000)
SELECT try(format('INSERT INTO crm.account (name) VALUES (%L)', repeat('n', 1000000))) AS one_megabyte_name;
SELECT try(format('INSERT INTO crm.account (name) VALUES (%L)', repeat('n', 501))) AS name_501;
INSERT INTO crm.account (name) VALUES (repeat('ü', 500)) RETURNING length(name) AS name_500_kept;
SELECT try(format('INSERT INTO crm.contact (first_name, email) VALUES (%L, %L)',
                  'Long', repeat('a', 64) || '@' || repeat('b', 252) || '.com')) AS email_321;
INSERT INTO crm.contact (first_name, email) VALUES ('Long', repeat('a', 64) || '@' || repeat('b', 251) || '.com')
RETURNING length(email) AS email_320_kept;
SELECT try(format('INSERT INTO crm.lead (name, email) VALUES (%L, %L)', 'x', repeat('a', 400) || '@x.example')) AS lead_email,
       try(format('INSERT INTO crm.tag (name) VALUES (%L)', repeat('t', 100000))) AS tag_name,
       try(format('UPDATE crm.stage SET name = %L WHERE tenant_id = %L AND name = %L', repeat('s', 501), :'t', 'New')) AS stage_name,
       try(format('INSERT INTO crm.app_user (name, email) VALUES (%L, %L)', 'x', repeat('a', 320) || '@x.example')) AS user_email;
SELECT col_description('crm.account'::regclass, 3) AS account_name_comment,
       col_description('crm.contact'::regclass,
                       (SELECT attnum FROM pg_attribute WHERE attrelid = 'crm.contact'::regclass AND attname = 'email'))
           AS contact_email_comment;

-- nothing stored changed
SELECT name, amount FROM crm.opportunity ORDER BY name;
SELECT name, expected_revenue, budget FROM crm.lead ORDER BY name;
SELECT count(*) AS accounts, count(*) FILTER (WHERE annual_revenue = 1000) AS initech_revenue_kept FROM crm.account;
SELECT count(*) AS rates FROM crm.currency_rate;
SELECT name, probability FROM crm.stage WHERE tenant_id = :'t' AND name = 'New' ORDER BY pipeline_id;
SELECT to_json(name) AS tags FROM crm.tag ORDER BY name;
RESET crm.tenant_id;
RESET ROLE;

-- The classes hold for every table, whichever part made it: no numeric,
-- real or double column without its finite check, no text column read by
-- an index without a length limit, no blank test other than crm.is_blank.
SELECT c.relname, a.attname AS number_without_finite_check
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_type y ON y.oid = a.atttypid
 WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
   AND (CASE y.typtype WHEN 'd' THEN y.typbasetype ELSE y.oid END) IN ('numeric'::regtype, 'float4'::regtype, 'float8'::regtype)
   AND NOT EXISTS (SELECT 1 FROM pg_constraint k
                    WHERE k.conrelid = c.oid AND k.contype = 'c' AND k.conkey = ARRAY[a.attnum]
                      AND pg_get_constraintdef(k.oid) LIKE '%''-Infinity''::%''Infinity''::%');
SELECT DISTINCT c.relname, a.attname AS indexed_text_without_limit
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indrelid
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
  JOIN pg_type y ON y.oid = a.atttypid
 WHERE c.relnamespace = 'crm'::regnamespace
   AND (CASE y.typtype WHEN 'd' THEN y.typbasetype ELSE y.oid END) IN ('text'::regtype, 'varchar'::regtype)
   AND (a.attnum = ANY (i.indkey::int2[])
        OR EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
                      AND d.refobjid = c.oid AND d.refobjsubid = a.attnum))
   AND NOT EXISTS (SELECT 1 FROM pg_constraint k
                    WHERE k.conrelid = c.oid AND k.contype = 'c' AND k.conkey = ARRAY[a.attnum]
                      AND pg_get_constraintdef(k.oid) ~ '^CHECK \(\(length\(.*\) <= [0-9]+\)\)$');
SELECT conrelid::regclass, conname AS blank_test_not_by_is_blank
  FROM pg_constraint
 WHERE connamespace = 'crm'::regnamespace AND contype = 'c'
   AND pg_get_constraintdef(oid) ~ '(btrim|trim)\(|<> ''''';
-- and every limit says so in its column's COMMENT
SELECT k.conrelid::regclass, k.conname AS limit_not_in_comment
  FROM pg_constraint k
 WHERE k.connamespace = 'crm'::regnamespace AND k.conname LIKE '%\_max\_length'
   AND col_description(k.conrelid, k.conkey[1]) NOT LIKE '%(at most % characters)';
