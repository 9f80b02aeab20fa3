-- Every C trigger function of crm attached where it does not belong: a
-- table without the column it needs, with the column of another type, the
-- wrong timing, level or event, the wrong number of arguments, or called
-- outside a trigger.  Each gets an error that names what is wrong (42703
-- missing column, 42804 wrong type, 39P01 wrong kind of trigger), never a
-- crash, and the row it fired for is left as it was.
CREATE SCHEMA misuse;
CREATE TABLE misuse.w (id int, updated_at text, flag int, flag_at timestamptz, ok boolean, ok_at int);
INSERT INTO misuse.w VALUES (1, 'x', 0, NULL, true, 0);
CREATE TABLE misuse.bare (id int);
INSERT INTO misuse.bare VALUES (1);

-- crm.touch_updated_at() -------------------------------------------------
-- the example of the issue: updated_at of type text (it crashed the server)
CREATE TRIGGER t BEFORE UPDATE ON misuse.w FOR EACH ROW EXECUTE FUNCTION crm.touch_updated_at();
SELECT try('UPDATE misuse.w SET id = 2');
DROP TRIGGER t ON misuse.w;
-- no updated_at at all
CREATE TRIGGER t BEFORE UPDATE ON misuse.bare FOR EACH ROW EXECUTE FUNCTION crm.touch_updated_at();
SELECT try('UPDATE misuse.bare SET id = 2');
DROP TRIGGER t ON misuse.bare;
-- wrong timing, level, event, arguments
CREATE TRIGGER t AFTER UPDATE ON misuse.w FOR EACH ROW EXECUTE FUNCTION crm.touch_updated_at();
SELECT try('UPDATE misuse.w SET id = 2');
DROP TRIGGER t ON misuse.w;
CREATE TRIGGER t BEFORE UPDATE ON misuse.w FOR EACH STATEMENT EXECUTE FUNCTION crm.touch_updated_at();
SELECT try('UPDATE misuse.w SET id = 2');
DROP TRIGGER t ON misuse.w;
CREATE TRIGGER t BEFORE DELETE ON misuse.w FOR EACH ROW EXECUTE FUNCTION crm.touch_updated_at();
SELECT try('DELETE FROM misuse.w');
DROP TRIGGER t ON misuse.w;
CREATE TRIGGER t BEFORE UPDATE ON misuse.w FOR EACH ROW EXECUTE FUNCTION crm.touch_updated_at('updated_at');
SELECT try('UPDATE misuse.w SET id = 2');
DROP TRIGGER t ON misuse.w;
-- not called as a trigger
SELECT try('SELECT crm.touch_updated_at()');

-- crm.stamp_flag_times(flag, flag_at, ...) ----------------------------------
-- the example of the issue: a timestamp into an int column
CREATE TRIGGER t BEFORE UPDATE ON misuse.w FOR EACH ROW EXECUTE FUNCTION crm.stamp_flag_times('ok', 'ok_at');
SELECT try('UPDATE misuse.w SET id = 2');
DROP TRIGGER t ON misuse.w;
-- the flag of another type than boolean
CREATE TRIGGER t BEFORE INSERT ON misuse.w FOR EACH ROW EXECUTE FUNCTION crm.stamp_flag_times('flag', 'flag_at');
SELECT try('INSERT INTO misuse.w VALUES (9, ''y'', 1, NULL, true, 0)');
DROP TRIGGER t ON misuse.w;
-- a column that does not exist
CREATE TRIGGER t BEFORE UPDATE ON misuse.w FOR EACH ROW EXECUTE FUNCTION crm.stamp_flag_times('ok', 'no_such_column');
SELECT try('UPDATE misuse.w SET id = 2');
DROP TRIGGER t ON misuse.w;
-- no arguments, an odd number of them
CREATE TRIGGER t BEFORE UPDATE ON misuse.w FOR EACH ROW EXECUTE FUNCTION crm.stamp_flag_times();
SELECT try('UPDATE misuse.w SET id = 2');
DROP TRIGGER t ON misuse.w;
CREATE TRIGGER t BEFORE UPDATE ON misuse.w FOR EACH ROW EXECUTE FUNCTION crm.stamp_flag_times('ok', 'flag_at', 'ok');
SELECT try('UPDATE misuse.w SET id = 2');
DROP TRIGGER t ON misuse.w;
-- wrong timing, level, event
CREATE TRIGGER t AFTER UPDATE ON misuse.w FOR EACH ROW EXECUTE FUNCTION crm.stamp_flag_times('ok', 'flag_at');
SELECT try('UPDATE misuse.w SET id = 2');
DROP TRIGGER t ON misuse.w;
CREATE TRIGGER t BEFORE UPDATE ON misuse.w FOR EACH STATEMENT EXECUTE FUNCTION crm.stamp_flag_times('ok', 'flag_at');
SELECT try('UPDATE misuse.w SET id = 2');
DROP TRIGGER t ON misuse.w;
CREATE TRIGGER t BEFORE DELETE ON misuse.w FOR EACH ROW EXECUTE FUNCTION crm.stamp_flag_times('ok', 'flag_at');
SELECT try('DELETE FROM misuse.w');
DROP TRIGGER t ON misuse.w;
-- on the right column types it works on any table
CREATE TRIGGER t BEFORE UPDATE ON misuse.w FOR EACH ROW EXECUTE FUNCTION crm.stamp_flag_times('ok', 'flag_at');
BEGIN;
UPDATE misuse.w SET id = id;
SELECT ok, flag_at = now() AS stamped FROM misuse.w;
COMMIT;
UPDATE misuse.w SET ok = false;
SELECT ok, flag_at FROM misuse.w;
DROP TRIGGER t ON misuse.w;
UPDATE misuse.w SET ok = true;
SELECT try('SELECT crm.stamp_flag_times()');

-- crm.activity_sync() --------------------------------------------------------
CREATE TRIGGER t BEFORE INSERT OR UPDATE ON misuse.bare FOR EACH ROW EXECUTE FUNCTION crm.activity_sync();
SELECT try('UPDATE misuse.bare SET id = 2');
DROP TRIGGER t ON misuse.bare;
CREATE TABLE misuse.act (activity_type int, module text, status text, completed_at timestamptz);
INSERT INTO misuse.act VALUES (1, 'crm', 'completed', NULL);
CREATE TRIGGER t BEFORE INSERT OR UPDATE ON misuse.act FOR EACH ROW EXECUTE FUNCTION crm.activity_sync();
SELECT try('UPDATE misuse.act SET status = ''completed''');
SELECT try('INSERT INTO misuse.act VALUES (2, ''crm'', ''completed'', NULL)');
DROP TRIGGER t ON misuse.act;
ALTER TABLE misuse.act ALTER activity_type TYPE text, ALTER completed_at TYPE date;
CREATE TRIGGER t BEFORE INSERT OR UPDATE ON misuse.act FOR EACH ROW EXECUTE FUNCTION crm.activity_sync();
SELECT try('UPDATE misuse.act SET status = ''completed''');
DROP TRIGGER t ON misuse.act;
ALTER TABLE misuse.act ALTER completed_at TYPE timestamptz, DROP module;
CREATE TRIGGER t BEFORE INSERT OR UPDATE ON misuse.act FOR EACH ROW EXECUTE FUNCTION crm.activity_sync();
SELECT try('UPDATE misuse.act SET status = ''completed''');
DROP TRIGGER t ON misuse.act;
ALTER TABLE misuse.act ADD module varchar(20);
CREATE TRIGGER t BEFORE INSERT OR UPDATE ON misuse.act FOR EACH ROW EXECUTE FUNCTION crm.activity_sync();
SELECT try('UPDATE misuse.act SET status = ''completed''');
DROP TRIGGER t ON misuse.act;
CREATE TRIGGER t BEFORE INSERT OR UPDATE ON misuse.act FOR EACH ROW EXECUTE FUNCTION crm.activity_sync('x');
SELECT try('UPDATE misuse.act SET status = ''completed''');
DROP TRIGGER t ON misuse.act;
CREATE TRIGGER t AFTER UPDATE ON misuse.act FOR EACH ROW EXECUTE FUNCTION crm.activity_sync();
SELECT try('UPDATE misuse.act SET status = ''completed''');
DROP TRIGGER t ON misuse.act;
CREATE TRIGGER t BEFORE UPDATE ON misuse.act FOR EACH STATEMENT EXECUTE FUNCTION crm.activity_sync();
SELECT try('UPDATE misuse.act SET status = ''completed''');
DROP TRIGGER t ON misuse.act;
CREATE TRIGGER t BEFORE DELETE ON misuse.act FOR EACH ROW EXECUTE FUNCTION crm.activity_sync();
SELECT try('DELETE FROM misuse.act');
DROP TRIGGER t ON misuse.act;
SELECT try('SELECT crm.activity_sync()');

-- crm.stage_sync() (src/stage.c) ----------------------------------------------
CREATE TRIGGER t BEFORE INSERT OR UPDATE ON misuse.bare FOR EACH ROW EXECUTE FUNCTION crm.stage_sync();
SELECT try('UPDATE misuse.bare SET id = 2');
SELECT try('INSERT INTO misuse.bare VALUES (3)');
DROP TRIGGER t ON misuse.bare;
CREATE TABLE misuse.deal (tenant_id text, id uuid, pipeline_id uuid, stage_id uuid);
INSERT INTO misuse.deal VALUES ('x', NULL, NULL, NULL);
CREATE TRIGGER t BEFORE INSERT OR UPDATE ON misuse.deal FOR EACH ROW EXECUTE FUNCTION crm.stage_sync();
SELECT try('UPDATE misuse.deal SET stage_id = gen_random_uuid()');
DROP TRIGGER t ON misuse.deal;
CREATE TRIGGER t AFTER UPDATE ON misuse.deal FOR EACH ROW EXECUTE FUNCTION crm.stage_sync();
SELECT try('UPDATE misuse.deal SET stage_id = gen_random_uuid()');
DROP TRIGGER t ON misuse.deal;
CREATE TRIGGER t BEFORE UPDATE ON misuse.deal FOR EACH STATEMENT EXECUTE FUNCTION crm.stage_sync();
SELECT try('UPDATE misuse.deal SET stage_id = gen_random_uuid()');
DROP TRIGGER t ON misuse.deal;
CREATE TRIGGER t BEFORE DELETE ON misuse.deal FOR EACH ROW EXECUTE FUNCTION crm.stage_sync();
SELECT try('DELETE FROM misuse.deal');
DROP TRIGGER t ON misuse.deal;
SELECT try('SELECT crm.stage_sync()');

-- crm.stage_history_record(record column, amount column) (src/stage.c) -------
CREATE TRIGGER t AFTER UPDATE ON misuse.deal REFERENCING OLD TABLE AS crm_old_rows NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.stage_history_record('opportunity_id');
SELECT try('UPDATE misuse.deal SET stage_id = gen_random_uuid()');
DROP TRIGGER t ON misuse.deal;
CREATE TRIGGER t AFTER UPDATE ON misuse.deal FOR EACH STATEMENT
    EXECUTE FUNCTION crm.stage_history_record('opportunity_id', 'amount');
SELECT try('UPDATE misuse.deal SET stage_id = gen_random_uuid()');
DROP TRIGGER t ON misuse.deal;
CREATE TRIGGER t AFTER UPDATE ON misuse.deal REFERENCING OLD TABLE AS crm_old_rows NEW TABLE AS crm_new_rows
    FOR EACH ROW EXECUTE FUNCTION crm.stage_history_record('opportunity_id', 'amount');
SELECT try('UPDATE misuse.deal SET stage_id = gen_random_uuid()');
DROP TRIGGER t ON misuse.deal;
CREATE TRIGGER t BEFORE UPDATE ON misuse.deal FOR EACH STATEMENT
    EXECUTE FUNCTION crm.stage_history_record('opportunity_id', 'amount');
SELECT try('UPDATE misuse.deal SET stage_id = gen_random_uuid()');
DROP TRIGGER t ON misuse.deal;
CREATE TRIGGER t AFTER INSERT ON misuse.deal REFERENCING NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.stage_history_record('opportunity_id', 'amount');
SELECT try('INSERT INTO misuse.deal VALUES (''y'', NULL, NULL, NULL)');
DROP TRIGGER t ON misuse.deal;
-- arguments that name columns the table does not have
CREATE TRIGGER t AFTER UPDATE ON misuse.deal REFERENCING OLD TABLE AS crm_old_rows NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.stage_history_record('opportunity_id', 'amount');
SELECT try('UPDATE misuse.deal SET stage_id = gen_random_uuid()');
DROP TRIGGER t ON misuse.deal;
SELECT try('SELECT crm.stage_history_record()');

-- nothing that fired a failing trigger changed, and no history was written
SELECT * FROM misuse.w;
SELECT * FROM misuse.bare;
SELECT activity_type, status, completed_at, module FROM misuse.act;
SELECT * FROM misuse.deal;
SELECT count(*) AS history_rows FROM crm.stage_history;
-- the server is still the same backend: nothing crashed
SELECT 1 AS alive;
DROP SCHEMA misuse CASCADE;
