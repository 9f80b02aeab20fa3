-- Activity aggregation and engagement with time decay (issue 7).
-- Weights: call 5, meeting 10, note 1, task 2; half-life 30 days unless set.
SELECT crm.create_tenant('Engage Co') AS t \gset
SELECT crm.create_tenant('Other Co') AS other \gset
SET ROLE regress_crm_app;
SET crm.tenant_id = :'other';
INSERT INTO crm.contact (first_name) VALUES ('Stranger') RETURNING id AS stranger \gset
SET crm.tenant_id = :'t';
INSERT INTO crm.account (name) VALUES ('Acme') RETURNING id AS acme \gset
INSERT INTO crm.contact (first_name, account_id) VALUES ('Ann', :'acme') RETURNING id AS ann \gset
INSERT INTO crm.contact (first_name) VALUES ('Bob') RETURNING id AS bob \gset

-- a call, then a meeting 30 days later: as of the meeting 10 + 5 * 2^-1 = 12.5
SELECT crm.track_activity(:'ann', 'call', '{"duration": 300}', '2026-01-01 00:00+00', 'outbound') AS call \gset
SELECT crm.track_activity(:'ann', 'meeting', '{}', '2026-01-31 00:00+00', 'inbound') AS meeting \gset
SELECT activity_type, module, status, subject, account_id = :'acme' AS account_linked
  FROM crm.activity ORDER BY occurred_at;
SELECT crm.engagement_score(:'ann', '2026-01-31 00:00+00') AS at_meeting,
       crm.engagement_score(:'ann', '2026-03-02 00:00+00') AS month_later,          -- 12.5 / 2
       round(crm.engagement_score(:'ann', '2026-01-16 00:00+00')::numeric, 6) AS before_meeting, -- 5 * 2^-0.5, from the rows
       crm.engagement_score(:'ann', '2025-12-01 00:00+00') AS before_all;

-- an import of an older note (30 days before the call): + 1 * 2^-2 as of the meeting
INSERT INTO crm.activity (activity_type, subject, contact_id, account_id, status, occurred_at)
VALUES ('note', 'Imported note', :'ann', :'acme', 'completed', '2025-12-02 00:00+00');
-- a scheduled task counts only once completed
INSERT INTO crm.activity (activity_type, subject, contact_id, account_id, occurred_at)
VALUES ('task', 'Send the proposal', :'ann', :'acme', '2026-01-31 00:00+00') RETURNING id AS task \gset
SELECT activity_count, counts_by_type, counts_by_module, first_activity_at, last_activity_at,
       last_inbound_at, last_outbound_at, last_meeting_at
  FROM crm.contact_engagement WHERE contact_id = :'ann';
SELECT crm.engagement_score(:'ann', '2026-01-31 00:00+00') AS with_note;            -- 12.75
UPDATE crm.activity SET status = 'completed' WHERE id = :'task';
SELECT activity_count, crm.engagement_score(:'ann', '2026-01-31 00:00+00') AS with_task  -- 4, 14.75
  FROM crm.contact_engagement WHERE contact_id = :'ann';

-- deleting the meeting: the latest times are recomputed, 14.75 - 10 = 4.75
DELETE FROM crm.activity WHERE id = :'meeting';
SELECT activity_count, counts_by_type, last_activity_at, last_inbound_at, last_meeting_at,
       crm.engagement_score(:'ann', '2026-01-31 00:00+00') AS score
  FROM crm.contact_engagement WHERE contact_id = :'ann';
-- moving the call to the end of January: 2 + 5 + 0.25 = 7.25
UPDATE crm.activity SET occurred_at = '2026-01-31 00:00+00' WHERE id = :'call';
SELECT last_outbound_at, crm.engagement_score(:'ann', '2026-01-31 00:00+00') AS score
  FROM crm.contact_engagement WHERE contact_id = :'ann';
-- moving the note to Bob: Ann 7, Bob 0.25
UPDATE crm.activity SET contact_id = :'bob' WHERE subject = 'Imported note';
SELECT crm.engagement_score(:'ann', '2026-01-31 00:00+00') AS ann,
       crm.engagement_score(:'bob', '2026-01-31 00:00+00') AS bob;
SELECT contact_id = :'bob' AS is_bob, activity_count, first_activity_at, last_activity_at
  FROM crm.contact_engagement ORDER BY 1;
-- a contact set to NULL (as a delete that keeps history does) leaves Bob at zero
UPDATE crm.activity SET contact_id = NULL WHERE subject = 'Imported note';
SELECT activity_count, counts_by_type, first_activity_at, score_value, score_ref
  FROM crm.contact_engagement WHERE contact_id = :'bob';
UPDATE crm.activity SET contact_id = :'bob' WHERE subject = 'Imported note';

-- per-tenant weight and half-life: every score of the tenant follows
INSERT INTO crm.activity_weight (activity_type, weight) VALUES ('call', 7);
SELECT crm.engagement_score(:'ann', '2026-01-31 00:00+00') AS ann_call_7;          -- 2 + 7
INSERT INTO crm.engagement_setting (half_life) VALUES ('60 days');
SELECT crm.engagement_score(:'bob', '2026-01-31 00:00+00') AS bob_half_life_60;    -- 1 * 2^-1
SELECT count(*) AS mismatches FROM crm.check_aggregates();

-- the account: contacts, completed activities, open and won amounts per currency
INSERT INTO crm.opportunity (name, account_id, amount, currency) VALUES
    ('Deal USD', :'acme', 1000, 'USD'), ('Deal EUR', :'acme', 500, 'EUR'), ('Big USD', :'acme', 2000, 'USD');
SELECT count(*) AS won FROM crm.opportunity o, crm.opportunity_mark_won(o.id) WHERE o.name = 'Big USD';
SELECT contact_count, activity_count, last_activity_at, open_opportunity_count, open_amounts, won_amounts
  FROM crm.account_summary WHERE account_id = :'acme';
UPDATE crm.contact SET account_id = :'acme' WHERE id = :'bob';
UPDATE crm.opportunity SET amount = 1500 WHERE name = 'Deal USD';
SELECT count(*) AS lost FROM crm.opportunity o, crm.opportunity_mark_lost(o.id, 'Budget') WHERE o.name = 'Deal EUR';
SELECT contact_count, open_opportunity_count, open_amounts, won_amounts
  FROM crm.account_summary WHERE account_id = :'acme';
SELECT count(*) AS mismatches FROM crm.check_aggregates();

-- a lead's engagement, continued by its contact once converted
INSERT INTO crm.lead (name, contact_name, email, company_name) VALUES ('Lead L', 'Lee', 'lee@l.example', 'L Corp')
RETURNING id AS lead \gset
INSERT INTO crm.activity (activity_type, subject, lead_id, status, occurred_at)
VALUES ('email', 'Hello', :'lead', 'completed', '2026-01-31 00:00+00');
SELECT round(crm.lead_engagement_score(:'lead', '2026-03-01 00:00+00')::numeric, 9) AS lead_score;   -- 3 * 2^-(29/60)
SELECT contact_id IS NOT NULL AS has_contact FROM crm.lead_convert(:'lead');
SELECT round(crm.engagement_score(l.converted_contact_id, '2026-03-01 00:00+00')::numeric, 9) =
       round(crm.lead_engagement_score(l.id, '2026-03-01 00:00+00')::numeric, 9) AS contact_continues_lead
  FROM crm.lead l WHERE l.id = :'lead';

-- deleting a contact deletes its aggregates; refresh recomputes the same
DELETE FROM crm.contact WHERE id = :'bob';
SELECT count(*) AS bob_rows FROM crm.contact_engagement WHERE contact_id = :'bob';
CREATE TEMP TABLE before_refresh AS SELECT * FROM crm.contact_engagement;
SELECT crm.refresh_aggregates();
SELECT count(*) AS changed_by_refresh FROM (
    SELECT contact_id, activity_count, counts_by_type, last_activity_at FROM crm.contact_engagement
    EXCEPT SELECT contact_id, activity_count, counts_by_type, last_activity_at FROM before_refresh) x;
SELECT count(*) AS mismatches FROM crm.check_aggregates();

-- a statement large enough for its transition table to spill to disk
SET work_mem = '64kB';
INSERT INTO crm.activity (activity_type, subject, contact_id, account_id, status, occurred_at)
SELECT (ARRAY['call', 'email', 'meeting'])[1 + i % 3], 'Bulk ' || i, :'ann', :'acme', 'completed',
       '2025-06-01 00:00+00'::timestamptz + i * interval '1 hour'
  FROM generate_series(1, 3000) i;
UPDATE crm.activity SET occurred_at = occurred_at + interval '1 day' WHERE subject LIKE 'Bulk %';
SELECT activity_count, counts_by_type FROM crm.contact_engagement WHERE contact_id = :'ann';
DELETE FROM crm.activity WHERE subject LIKE 'Bulk %' AND activity_type = 'email';
RESET work_mem;
SELECT activity_count, counts_by_type FROM crm.contact_engagement WHERE contact_id = :'ann';
SELECT count(*) AS mismatches FROM crm.check_aggregates();

-- errors: nothing stored changes
SELECT count(*) AS activities_before FROM crm.activity \gset
SELECT try($$SELECT crm.track_activity('00000000-0000-0000-0000-000000000000', 'call')$$);
SELECT try(format($$SELECT crm.track_activity(%L, 'telepathy')$$, :'ann'));
SELECT try(format($$SELECT crm.track_activity(%L, 'call')$$, :'stranger'));
SELECT try(format($$INSERT INTO crm.activity (activity_type, subject, contact_id) VALUES ('call', 'x', %L)$$, :'stranger'));
SELECT try(format($$SELECT crm.track_activity(%L, NULL)$$, :'ann'));
SELECT try(format($$SELECT crm.track_activity(%L, 'call', '[1]')$$, :'ann'));
SELECT try($$INSERT INTO crm.activity_weight (activity_type, weight) VALUES ('meeting', -1)$$);
SELECT try($$INSERT INTO crm.activity_weight (activity_type, weight) VALUES ('meeting', 'NaN')$$);
SELECT try($$UPDATE crm.engagement_setting SET half_life = '0 days'$$);
SELECT try($$UPDATE crm.engagement_setting SET half_life = '-1 day'$$);
SELECT try($$SELECT crm.engagement_score('00000000-0000-0000-0000-000000000000')$$);
SELECT try(format($$SELECT crm.engagement_score(%L)$$, :'stranger'));
SELECT try(format($$SELECT crm.refresh_aggregates(%L)$$, :'other'));
SELECT try($$UPDATE crm.contact_engagement SET activity_count = 99$$);
-- an infinite time has no age to decay by: refused on every path (23514)
SELECT try(format($$SELECT crm.track_activity(%L, 'call', '{}', 'infinity')$$, :'ann'));
SELECT try(format($$SELECT crm.track_activity(%L, 'call', '{}', '-infinity')$$, :'ann'));
SELECT try(format($$INSERT INTO crm.activity (activity_type, subject, contact_id, status, occurred_at)
                    VALUES ('call', 'x', %L, 'completed', '-infinity')$$, :'ann'));
SELECT try($$UPDATE crm.activity SET occurred_at = 'infinity'$$);
SELECT count(*) = :activities_before AS nothing_stored FROM crm.activity;
SELECT count(*) AS mismatches FROM crm.check_aggregates();
RESET crm.tenant_id;
RESET ROLE;

-- An activity a century older than the contact's latest: its term of the
-- score is below the smallest double, and counts as nothing; the checks,
-- a past score and a short half-life all still work.
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';
INSERT INTO crm.contact (first_name) VALUES ('Old Timer') RETURNING id AS old_timer \gset
SELECT crm.track_activity(:'old_timer', 'call', '{}', '1900-01-01') IS NOT NULL AS placeholder_date,
       crm.track_activity(:'old_timer', 'call', '{}', '2026-01-01') IS NOT NULL AS recent;
SELECT round(crm.engagement_score(:'old_timer', '2026-01-01')::numeric, 9) AS score_now,
       crm.engagement_score(:'old_timer', '2025-12-31') > 0 AS score_before_last,
       round(crm.engagement_score(:'old_timer', '1900-01-01')::numeric, 9) AS score_in_1900;
SELECT count(*) AS mismatches FROM crm.check_aggregates();
INSERT INTO crm.engagement_setting (half_life) VALUES ('1 day')
    ON CONFLICT (tenant_id) DO UPDATE SET half_life = excluded.half_life;
SELECT round(crm.engagement_score(:'old_timer', '2026-01-02')::numeric, 9) AS one_day_later;
SELECT count(*) AS mismatches FROM crm.check_aggregates();
DELETE FROM crm.engagement_setting;
RESET crm.tenant_id;
RESET ROLE;

-- An operator (a superuser acting for one tenant) who sets another
-- tenant's weight recomputes that tenant's scores, not their own.
SET crm.tenant_id = :'other';
INSERT INTO crm.contact (first_name) VALUES ('Far Away') RETURNING id AS far \gset
SELECT crm.track_activity(:'far', 'call', '{}', now()) IS NOT NULL AS tracked;
SET crm.tenant_id = :'t';
INSERT INTO crm.activity_weight (tenant_id, activity_type, weight) VALUES (:'other', 'call', 50);
SELECT round(score_value::numeric, 6) AS far_score FROM crm.contact_engagement WHERE contact_id = :'far';
SELECT count(*) AS mismatches_anywhere FROM crm.check_aggregates();
DELETE FROM crm.activity_weight WHERE tenant_id = :'other';
SELECT round(score_value::numeric, 6) AS far_score FROM crm.contact_engagement WHERE contact_id = :'far';
SELECT count(*) AS mismatches_anywhere FROM crm.check_aggregates();
RESET crm.tenant_id;

-- TRUNCATE fires no row trigger: after it every tenant's aggregates are
-- recomputed from the rows left (rolled back here).
BEGIN;
TRUNCATE crm.activity;
SELECT (SELECT count(*) FROM crm.contact_engagement) AS contact_rows,
       (SELECT count(*) FROM crm.account_summary WHERE activity_count > 0) AS accounts_with_activities,
       (SELECT count(*) FROM crm.account_summary WHERE contact_count > 0) > 0 AS contacts_still_counted,
       (SELECT count(*) FROM crm.check_aggregates()) AS mismatches;
ROLLBACK;

-- The latest activities deleted: the score is made afresh relative to the
-- latest one left, so the old terms keep their precision (taking the large
-- newest terms out of the sum left their last bits, or nothing).
SET ROLE regress_crm_app;
SET crm.tenant_id = :'t';
INSERT INTO crm.contact (first_name) VALUES ('Precise') RETURNING id AS precise \gset
SELECT crm.track_activity(:'precise', 'call', '{}', '2019-01-01') IS NOT NULL AS old_call;
INSERT INTO crm.activity (activity_type, subject, contact_id, status, occurred_at)
SELECT 'meeting', 'Recent ' || d, :'precise', 'completed', timestamptz '2026-01-01' + d * interval '1 day'
  FROM generate_series(0, 2) d;
DELETE FROM crm.activity WHERE contact_id = :'precise' AND subject LIKE 'Recent %';
SELECT score_ref = '2019-01-01'::timestamptz AS rebased,
       abs(crm.engagement_score(:'precise', '2026-02-01')
           / (7 * pow(2::float8, -extract(epoch FROM timestamptz '2026-02-01' - '2019-01-01')::float8 / 2592000)) - 1)
       < 1e-12 AS exact
  FROM crm.contact_engagement WHERE contact_id = :'precise';
SELECT count(*) AS mismatches FROM crm.check_aggregates();
RESET crm.tenant_id;
RESET ROLE;
