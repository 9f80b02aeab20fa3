-- Activities: the type registry, module from type, completion times.

SELECT module, count(*) AS builtin_types FROM crm.activity_type GROUP BY module ORDER BY module;

SELECT crm.create_tenant('Activity Co') AS t \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';
INSERT INTO crm.contact (first_name, email) VALUES ('Kelly', 'kelly@activity.example') RETURNING id AS kelly \gset

-- the module follows the type
INSERT INTO crm.activity (activity_type, subject, contact_id, status)
VALUES ('quote_created', 'Quote Q-1', :'kelly', 'completed'),
       ('call', 'Intro call', :'kelly', 'scheduled'),
       ('project_milestone_reached', 'Go-live', :'kelly', 'completed');
SELECT activity_type, module, status, completed_at IS NOT NULL AS has_completed_at
  FROM crm.activity ORDER BY subject;
-- changing the type changes the module; a module given by hand is corrected
UPDATE crm.activity SET activity_type = 'meeting', module = 'sales' WHERE subject = 'Intro call';
SELECT activity_type, module FROM crm.activity WHERE subject = 'Intro call';
-- completing sets completed_at; reopening clears it
UPDATE crm.activity SET status = 'completed' WHERE subject = 'Intro call';
SELECT status, completed_at IS NOT NULL AS has_completed_at FROM crm.activity WHERE subject = 'Intro call';
UPDATE crm.activity SET status = 'in_progress' WHERE subject = 'Intro call';
SELECT status, completed_at FROM crm.activity WHERE subject = 'Intro call';
-- a completion time given by the client is ignored: completed_at is the
-- server's (when it was logged as completed; occurred_at says when it happened)
INSERT INTO crm.activity (activity_type, subject, status, completed_at, occurred_at)
VALUES ('note', 'Backdated note', 'completed', '2026-01-02 03:04:05+00', '2026-01-02 03:04:05+00');
SELECT completed_at > '2026-01-02 03:04:05+00' AS server_time, occurred_at FROM crm.activity WHERE subject = 'Backdated note';

-- errors
SELECT try($$INSERT INTO crm.activity (activity_type, subject) VALUES ('telepathy', 'Hmm')$$);
SELECT try($$INSERT INTO crm.activity (activity_type, subject) VALUES ('call', '')$$);
SELECT try($$INSERT INTO crm.activity (activity_type, subject, status) VALUES ('call', 'x', 'done')$$);
SELECT try($$INSERT INTO crm.activity (activity_type, subject, start_at, end_at)
             VALUES ('meeting', 'Backwards', '2026-01-02', '2026-01-01')$$);
SELECT try($$INSERT INTO crm.activity (activity_type, subject, direction) VALUES ('call', 'x', 'sideways')$$);
SELECT try($$INSERT INTO crm.activity (activity_type, subject, details) VALUES ('call', 'x', '[1]')$$);
SELECT count(*) AS activities FROM crm.activity;

-- deleting a contact deletes its activities
DELETE FROM crm.contact WHERE id = :'kelly';
SELECT count(*) AS activities FROM crm.activity;

RESET crm.tenant_id;
RESET ROLE;
