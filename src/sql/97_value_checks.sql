-- src/sql/97_value_checks.sql: the values no crm table accepts, whichever
-- part made the table.
--
-- These rules hold for classes of columns, not for columns one by one, so
-- they are applied here, after every table exists, by reading the catalog:
-- a table added in any earlier part gets them without a line of its own.
--   1. numbers are finite: every numeric, real and double precision column
--      refuses NaN, Infinity and -Infinity (23514, constraint
--      <table>_<column>_finite); NaN passes "amount >= 0" and would turn
--      every sum of a report into NaN;
--   2. "non-empty" means not blank: every CHECK (btrim(x) <> ''), and the
--      variants length(btrim(x)) > 0 and x <> '', becomes
--      CHECK (NOT crm.is_blank(x)) under the same name, so that tabs,
--      newlines and Unicode spaces alone are refused as well (the
--      regression test sql/25_value_checks lists any other form);
--   3. indexed text has a length limit: every text column that a plain or
--      expression index (unique or not) reads gets CHECK (length(x) <= n)
--      named <table>_<column>_max_length (23514), before the btree's own
--      error (54000, index row size) could name no column.  n is 320 for
--      e-mail addresses (the longest address SMTP can carry) and 500 for
--      every other indexed text (names, codes); the column's COMMENT says so.

DO $$
DECLARE
    c record;
    con text;
BEGIN
    FOR c IN
        SELECT a.attrelid::regclass AS tab, r.relname, a.attname
          FROM pg_catalog.pg_attribute a
          JOIN pg_catalog.pg_class r ON r.oid = a.attrelid
          JOIN pg_catalog.pg_type y ON y.oid = a.atttypid
         WHERE r.relnamespace = 'crm'::regnamespace AND r.relkind IN ('r', 'p')
           AND a.attnum > 0 AND NOT a.attisdropped
           AND (CASE y.typtype WHEN 'd' THEN y.typbasetype ELSE y.oid END) IN ('numeric'::regtype, 'real'::regtype, 'double precision'::regtype)
         ORDER BY r.relname, a.attnum
    LOOP
        con := pg_catalog.left(c.relname OPERATOR(pg_catalog.||) '_' OPERATOR(pg_catalog.||) c.attname OPERATOR(pg_catalog.||) '_finite', 63);
        EXECUTE pg_catalog.format(
            'ALTER TABLE %s ADD CONSTRAINT %I CHECK (%I OPERATOR(pg_catalog.>) ''-Infinity'' AND %I OPERATOR(pg_catalog.<) ''Infinity'')',
            c.tab, con, c.attname, c.attname);
        EXECUTE pg_catalog.format('COMMENT ON CONSTRAINT %I ON %s IS %L', con, c.tab,
            c.attname OPERATOR(pg_catalog.||) ' is a finite number: NaN, Infinity and -Infinity are refused');
    END LOOP;
END
$$;

DO $$
DECLARE
    c record;
    col text;
BEGIN
    FOR c IN
        SELECT k.conrelid::regclass AS tab, k.conname, pg_catalog.pg_get_constraintdef(k.oid) AS def
          FROM pg_catalog.pg_constraint k
          JOIN pg_catalog.pg_class r ON r.oid = k.conrelid
         WHERE r.relnamespace = 'crm'::regnamespace AND k.contype = 'c'
         ORDER BY r.relname, k.conname
    LOOP
        col := coalesce(
            (pg_catalog.regexp_match(c.def, '^CHECK \(\(btrim\(([^()]+)\) <> ''''::text\)\)$'))[1],
            (pg_catalog.regexp_match(c.def, '^CHECK \(\(length\(btrim\(([^()]+)\)\) > 0\)\)$'))[1],
            (pg_catalog.regexp_match(c.def, '^CHECK \(\(([^()]+) <> ''''::text\)\)$'))[1]);
        CONTINUE WHEN col IS NULL;
        EXECUTE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I', c.tab, c.conname);
        EXECUTE pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (NOT crm.is_blank(%s))',
                                  c.tab, c.conname, col);
        EXECUTE pg_catalog.format('COMMENT ON CONSTRAINT %I ON %s IS %L', c.conname, c.tab,
            col OPERATOR(pg_catalog.||) ' is not blank: whitespace of any kind alone is refused');
    END LOOP;
END
$$;

DO $$
DECLARE
    c record;
    con text;
    max_len integer;
BEGIN
    FOR c IN
        WITH indexed AS (
            -- plain key columns
            SELECT i.indrelid AS relid, k.attnum
              FROM pg_catalog.pg_index i, pg_catalog.unnest(i.indkey::int2[]) AS k(attnum)
             WHERE k.attnum > 0
            UNION
            -- columns read by index expressions
            SELECT d.refobjid, d.refobjsubid
              FROM pg_catalog.pg_depend d
              JOIN pg_catalog.pg_index i ON i.indexrelid = d.objid
             WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
               AND d.refobjid = i.indrelid AND d.refobjsubid > 0)
        SELECT a.attrelid::regclass AS tab, r.relname, a.attname, a.atttypid,
               pg_catalog.col_description(a.attrelid, a.attnum) AS comment
          FROM indexed x
          JOIN pg_catalog.pg_attribute a ON a.attrelid = x.relid AND a.attnum = x.attnum
          JOIN pg_catalog.pg_class r ON r.oid = a.attrelid
          JOIN pg_catalog.pg_type y ON y.oid = a.atttypid
         WHERE r.relnamespace = 'crm'::regnamespace AND r.relkind IN ('r', 'p') AND NOT a.attisdropped
           AND (CASE y.typtype WHEN 'd' THEN y.typbasetype ELSE y.oid END) IN ('text'::regtype, 'character varying'::regtype)
         ORDER BY r.relname, a.attnum
    LOOP
        max_len := CASE WHEN c.atttypid = 'crm.email_address'::regtype OR c.attname OPERATOR(pg_catalog.~) '(^|_)email$'
                        THEN 320 ELSE 500 END;
        con := pg_catalog.left(c.relname OPERATOR(pg_catalog.||) '_' OPERATOR(pg_catalog.||) c.attname OPERATOR(pg_catalog.||) '_max_length', 63);
        EXECUTE pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (pg_catalog.length(%I) OPERATOR(pg_catalog.<=) %s)',
                                  c.tab, con, c.attname, max_len);
        EXECUTE pg_catalog.format('COMMENT ON CONSTRAINT %I ON %s IS %L', con, c.tab,
            pg_catalog.format('%s is at most %s characters (an indexed text column)', c.attname, max_len));
        EXECUTE pg_catalog.format('COMMENT ON COLUMN %s.%I IS %L', c.tab, c.attname,
            pg_catalog.format('%s (at most %s characters)', coalesce(c.comment, c.attname), max_len));
    END LOOP;
END
$$;
