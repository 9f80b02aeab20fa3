#!/usr/bin/env bash
# test/engagement_random.sh: 10,000 random operations on activities (and the
# contacts and opportunities that feed the account roll-ups) — single and
# bulk inserts out of time order, updates of every kind (type, time,
# contact, lead, account, status, direction), contacts set to NULL, deletes
# — then the stored aggregates must equal a recomputation
# (crm.check_aggregates() empty, checked along the way too) and every
# contact's and lead's engagement score must equal the sum over its rows to
# 1e-9 relative.  Needs the cluster of scripts/cluster.sh (PGHOST etc.).
# RANDOM_OPS (default 10000) and RANDOM_SEED (default 0.42) change the run.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"
if [[ -z ${PGHOST:-} ]]; then eval "$(scripts/cluster.sh env)"; fi
OPS=${RANDOM_OPS:-10000}
SEED=${RANDOM_SEED:-0.42}
DB=crm_random
psql -X -q -v ON_ERROR_STOP=1 -d postgres -c 'SET client_min_messages = warning' \
	-c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
trap 'psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true' EXIT
start=$(date +%s)
out=$(psql -X -q -At -F '|' -v ON_ERROR_STOP=1 -d "$DB" -v ops="$OPS" -v seed="$SEED" <<'SQL'
\set QUIET on
\o /dev/null
CREATE EXTENSION crm;
SET crm_random.ops = :'ops';
SELECT setseed(:seed);
SELECT crm.create_tenant('Random Co') AS t \gset
INSERT INTO crm.engagement_setting (tenant_id, half_life) VALUES (:'t', '20 days');
INSERT INTO crm.activity_weight (tenant_id, activity_type, weight) VALUES (:'t', 'email', 3.5);
INSERT INTO crm.account (tenant_id, name) SELECT :'t', 'Account ' || i FROM generate_series(1, 5) i;
INSERT INTO crm.contact (tenant_id, first_name, account_id)
SELECT :'t', 'Contact ' || i, (SELECT id FROM crm.account ORDER BY id OFFSET (i % 5) LIMIT 1)
  FROM generate_series(1, 20) i;
INSERT INTO crm.lead (tenant_id, name) SELECT :'t', 'Lead ' || i FROM generate_series(1, 5) i;
CREATE TEMP TABLE checks (at_op int, mismatches bigint);

DO $$
DECLARE
    t uuid := (SELECT tenant_id FROM crm.tenant WHERE name = 'Random Co');
    contacts uuid[] := ARRAY(SELECT id FROM crm.contact WHERE tenant_id = t ORDER BY id);
    accounts uuid[] := ARRAY(SELECT id FROM crm.account WHERE tenant_id = t ORDER BY id);
    leads uuid[] := ARRAY(SELECT id FROM crm.lead WHERE tenant_id = t ORDER BY id);
    types text[] := ARRAY['call', 'meeting', 'email', 'note', 'task', 'quote_created', 'payment_received'];
    statuses text[] := ARRAY['completed', 'completed', 'completed', 'scheduled', 'cancelled', 'in_progress'];
    dirs text[] := ARRAY['inbound', 'outbound', 'internal', NULL];
    currencies text[] := ARRAY['USD', 'EUR', 'GBP'];
    ops int := current_setting('crm_random.ops')::int;
    op int;
    r float8;
    victim uuid;
BEGIN
    FOR op IN 1 .. ops LOOP
        r := random();
        SELECT id INTO victim FROM crm.activity WHERE tenant_id = t
         ORDER BY id OFFSET floor(random() * greatest((SELECT count(*) FROM crm.activity WHERE tenant_id = t), 1)) LIMIT 1;
        IF r < 0.30 OR victim IS NULL THEN
            -- a single insert, at a random time in a year (out of order)
            INSERT INTO crm.activity (tenant_id, activity_type, subject, contact_id, lead_id, account_id, status,
                                      direction, occurred_at)
            VALUES (t, types[1 + floor(random() * 7)::int], 'op ' || op,
                    CASE WHEN random() < 0.85 THEN contacts[1 + floor(random() * 20)::int] END,
                    CASE WHEN random() < 0.3 THEN leads[1 + floor(random() * 5)::int] END,
                    CASE WHEN random() < 0.6 THEN accounts[1 + floor(random() * 5)::int] END,
                    statuses[1 + floor(random() * 6)::int], dirs[1 + floor(random() * 4)::int],
                    '2026-01-01'::timestamptz + random() * interval '365 days');
        ELSIF r < 0.34 THEN
            -- a bulk insert
            INSERT INTO crm.activity (tenant_id, activity_type, subject, contact_id, lead_id, account_id, status,
                                      direction, occurred_at)
            SELECT t, types[1 + floor(random() * 7)::int], 'bulk ' || op || '.' || i,
                   contacts[1 + floor(random() * 20)::int],
                   CASE WHEN random() < 0.3 THEN leads[1 + floor(random() * 5)::int] END,
                   accounts[1 + floor(random() * 5)::int],
                   statuses[1 + floor(random() * 6)::int], dirs[1 + floor(random() * 4)::int],
                   '2026-01-01'::timestamptz + random() * interval '365 days'
              FROM generate_series(1, 1 + floor(random() * 40)::int) i;
        ELSIF r < 0.42 THEN
            UPDATE crm.activity SET activity_type = types[1 + floor(random() * 7)::int] WHERE tenant_id = t AND id = victim;
        ELSIF r < 0.50 THEN
            UPDATE crm.activity SET occurred_at = '2026-01-01'::timestamptz + random() * interval '365 days'
             WHERE tenant_id = t AND id = victim;
        ELSIF r < 0.56 THEN
            UPDATE crm.activity SET contact_id = contacts[1 + floor(random() * 20)::int] WHERE tenant_id = t AND id = victim;
        ELSIF r < 0.60 THEN
            -- as a delete that keeps history does
            UPDATE crm.activity SET contact_id = NULL WHERE tenant_id = t AND id = victim;
        ELSIF r < 0.64 THEN
            UPDATE crm.activity SET lead_id = CASE WHEN random() < 0.5 THEN leads[1 + floor(random() * 5)::int] END,
                                    account_id = CASE WHEN random() < 0.5 THEN accounts[1 + floor(random() * 5)::int] END
             WHERE tenant_id = t AND id = victim;
        ELSIF r < 0.72 THEN
            UPDATE crm.activity SET status = statuses[1 + floor(random() * 6)::int],
                                    direction = dirs[1 + floor(random() * 4)::int]
             WHERE tenant_id = t AND id = victim;
        ELSIF r < 0.74 THEN
            -- a bulk update of one contact's activities
            UPDATE crm.activity SET occurred_at = occurred_at - interval '3 days', activity_type = 'email'
             WHERE tenant_id = t AND contact_id = contacts[1 + floor(random() * 20)::int];
        ELSIF r < 0.84 THEN
            DELETE FROM crm.activity WHERE tenant_id = t AND id = victim;
        ELSIF r < 0.85 THEN
            -- a bulk delete
            DELETE FROM crm.activity WHERE tenant_id = t AND contact_id = contacts[1 + floor(random() * 20)::int]
               AND occurred_at < '2026-01-01'::timestamptz + random() * interval '365 days';
        ELSIF r < 0.89 THEN
            INSERT INTO crm.opportunity (tenant_id, name, account_id, amount, currency)
            VALUES (t, 'opp ' || op, accounts[1 + floor(random() * 5)::int], round((random() * 10000)::numeric, 2),
                    currencies[1 + floor(random() * 3)::int]);
        ELSIF r < 0.93 THEN
            UPDATE crm.opportunity SET amount = round((random() * 10000)::numeric, 2),
                                       currency = currencies[1 + floor(random() * 3)::int],
                                       account_id = accounts[1 + floor(random() * 5)::int]
             WHERE tenant_id = t AND id = (SELECT id FROM crm.opportunity WHERE tenant_id = t ORDER BY random() LIMIT 1);
        ELSIF r < 0.96 THEN
            SELECT id INTO victim FROM crm.opportunity WHERE tenant_id = t AND status = 'open' ORDER BY random() LIMIT 1;
            IF victim IS NOT NULL AND random() < 0.5 THEN
                PERFORM crm.opportunity_mark_won(victim);
            ELSIF victim IS NOT NULL THEN
                PERFORM crm.opportunity_mark_lost(victim, 'random');
            END IF;
        ELSIF r < 0.98 THEN
            UPDATE crm.contact SET account_id = CASE WHEN random() < 0.8 THEN accounts[1 + floor(random() * 5)::int] END
             WHERE tenant_id = t AND id = contacts[1 + floor(random() * 20)::int];
        ELSE
            DELETE FROM crm.opportunity WHERE tenant_id = t
               AND id = (SELECT id FROM crm.opportunity WHERE tenant_id = t ORDER BY random() LIMIT 1);
        END IF;
        IF op % 2500 = 0 THEN
            INSERT INTO checks SELECT op, count(*) FROM crm.check_aggregates();
        END IF;
        -- commit now and then, as applications do: row versions of the
        -- aggregates made by one open transaction cannot be pruned
        IF op % 50 = 0 THEN
            COMMIT;
        END IF;
    END LOOP;
END
$$;
\o
SELECT 'activities' AS what, count(*)::text AS value FROM crm.activity
UNION ALL SELECT 'counted', count(*)::text FROM crm.activity WHERE status = 'completed'
UNION ALL SELECT 'checks_with_mismatches', count(*)::text FROM checks WHERE mismatches > 0
UNION ALL SELECT 'mismatches_at_end', count(*)::text FROM crm.check_aggregates()
UNION ALL SELECT 'score_differences', count(*)::text FROM (
    SELECT k.kind, k.id,
           crm.engagement_decayed(k.tenant_id, k.kind, k.id, '2027-02-01') AS stored,
           (SELECT coalesce(sum(coalesce(w.weight, ty.default_weight)::float8
                        * pow(2::float8, -extract(epoch FROM '2027-02-01'::timestamptz - a.occurred_at)::float8
                                         / extract(epoch FROM interval '20 days')::float8)), 0)
              FROM crm.activity a JOIN crm.activity_type ty ON ty.code = a.activity_type
              LEFT JOIN crm.activity_weight w ON w.tenant_id = a.tenant_id AND w.activity_type = a.activity_type
             WHERE a.tenant_id = k.tenant_id AND a.status = 'completed'
               AND CASE WHEN k.kind = 'contact' THEN a.contact_id = k.id ELSE a.lead_id = k.id END) AS summed
      FROM (SELECT tenant_id, 'contact' AS kind, id FROM crm.contact
            UNION ALL SELECT tenant_id, 'lead', id FROM crm.lead) k) x
   WHERE abs(stored - summed) > 1e-9 * greatest(abs(summed), 1e-300)
UNION ALL SELECT 'contacts_scored', count(*)::text FROM crm.contact_engagement WHERE score_value > 0;
SQL
)
echo "$out"
echo "$OPS operations in $(($(date +%s) - start)) s"
value() { awk -F'|' -v k="$1" '$1 == k { print $2 }' <<<"$out"; }
status=0
for k in checks_with_mismatches mismatches_at_end score_differences; do
	if [[ $(value "$k") != 0 ]]; then
		echo "engagement_random: $k is $(value "$k"), expected 0"
		status=1
	fi
done
if (($(value counted) < 100 || $(value contacts_scored) < 10)); then
	echo "engagement_random: too little was counted to test anything"
	status=1
fi
((status == 0)) && echo "engagement_random: aggregates and scores exact"
exit $status
