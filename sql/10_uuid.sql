-- UUIDv7 ids: time-ordered, strictly increasing within a backend.

-- version 7, RFC 9562 variant
SELECT substr(crm.uuid_generate_v7()::text, 15, 1) AS version,
       substr(crm.uuid_generate_v7()::text, 20, 1) IN ('8', '9', 'a', 'b') AS rfc_variant;

-- 100,000 ids made as fast as possible (many per millisecond): all
-- distinct and each greater than the one before
WITH ids AS (
    SELECT n, crm.uuid_generate_v7() AS id FROM generate_series(1, 100000) n
)
SELECT count(DISTINCT id) AS distinct_ids,
       bool_and(id > prev) AS strictly_increasing
  FROM (SELECT n, id, lag(id) OVER (ORDER BY n) AS prev FROM ids) s
 WHERE prev IS NOT NULL OR n = 1;

-- the time inside is the time it was made, to the millisecond
SELECT abs(extract(epoch FROM crm.uuid_v7_time(crm.uuid_generate_v7()) - clock_timestamp())) < 1
       AS time_is_now;
SELECT crm.uuid_v7_time('01890a5d-ac96-774b-bcce-b302099a8057');

-- other versions carry no time
SELECT try($$SELECT crm.uuid_v7_time('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')$$);
SELECT crm.uuid_v7_time(NULL) IS NULL AS null_in_null_out;

-- rows get such ids by default
SELECT crm.create_tenant('Uuid Test') IS NOT NULL AS made;
SELECT substr(tenant_id::text, 15, 1) AS version,
       crm.uuid_v7_time(tenant_id) <= now() + interval '1 second' AS time_ok
  FROM crm.tenant WHERE name = 'Uuid Test';
DELETE FROM crm.tenant WHERE name = 'Uuid Test';
