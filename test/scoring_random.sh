#!/usr/bin/env bash
# test/scoring_random.sh: lead scoring and the predictive model stay exact
# under random mixed work (issue 10).
#
# Runs SCORING_RANDOM_OPS random operations (default 2000, to stay near 25 s in
# make test; the issue asks for 10000: SCORING_RANDOM_OPS=10000) on leads,
# opportunities, activities, contacts (profiling consent), tags and the
# scoring model, in batches of one transaction each, as an application role
# under row-level security; single-row and bulk statements, activities out
# of time order, conversions, closes and reopenings.  Then checks:
#   1. every lead's stored score equals crm.score_lead() as of its scored_at
#      (and its qualification the model's threshold says);
#   2. every lead's last score history row ends at its current score;
#   3. the live frequency table equals one built from scratch
#      (crm.pls_check() is empty, and crm.pls_rebuild() changes nothing);
#   4. every open opportunity in predicted mode shows crm.predict_win().
# Prints one line per check; exits non-zero if one fails.  Needs psql and
# PGHOST/PGPORT/PGUSER naming a superuser of a running server with crm installed.
set -euo pipefail

DB=regress_scoring_random
OPS=${SCORING_RANDOM_OPS:-2000}
BATCH=500
SEED=${SCORING_RANDOM_SEED:-0.42}
failed=0

psql_q() { psql -X -q -v ON_ERROR_STOP=1 -d "$DB" "$@"; }
cleanup() {
	psql -X -q -d postgres -c 'SET client_min_messages = warning' \
		-c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}
[[ -n ${SCORING_RANDOM_KEEP:-} ]] || trap cleanup EXIT
cleanup

psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "CREATE DATABASE $DB"
psql_q >/dev/null <<'SQL'
CREATE EXTENSION crm;
SELECT crm.setup_roles();
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'regress_random_app') THEN
        CREATE ROLE regress_random_app NOLOGIN;
    END IF;
END $$;
GRANT crm_app, crm_admin TO regress_random_app;
SELECT crm.create_tenant('Random Co') AS t \gset
SET ROLE regress_random_app;
SET crm.tenant_id = :'t';
SELECT crm.pls_configure(ARRAY['source', 'country', 'priority', 'email_state', 'phone_state', 'tags']);
INSERT INTO crm.app_user (name) SELECT 'User ' || g FROM generate_series(1, 6) g;
INSERT INTO crm.team (name) VALUES ('Red'), ('Blue');
INSERT INTO crm.team_member (team_id, user_id)
SELECT t.id, u.id FROM crm.team t JOIN crm.app_user u
    ON (t.name = 'Red' AND u.name IN ('User 1', 'User 2')) OR (t.name = 'Blue' AND u.name IN ('User 3', 'User 4'));
INSERT INTO crm.tag (name) VALUES ('A'), ('B'), ('C');
-- a quarter of the deals go to a pipeline whose probabilities follow the prediction
UPDATE crm.pipeline SET probability_mode = 'predicted' WHERE NOT is_default;
RESET ROLE;

-- one random operation; p picks it
CREATE FUNCTION public.random_op(forced float8 DEFAULT NULL) RETURNS void LANGUAGE plpgsql AS $f$
DECLARE
    p float8 := coalesce(forced, random());
    l uuid;
    o uuid;
    a uuid;
    s uuid;
    emails text[] := ARRAY['a@x.example', 'b@x.example', 'c@x.example', 'd@x.example', 'e@x.example',
                           'f@x.example', 'g@x.example', 'h@x.example'];
    industries text[] := ARRAY['technology', 'finance', 'healthcare', 'education', 'retail', 'other'];
    timelines text[] := ARRAY['immediate', 'within_month', 'within_quarter', 'within_year', 'no_timeline'];
    types text[] := ARRAY['email_opened', 'email_clicked', 'document_downloaded', 'call', 'meeting', 'note'];
    sources text[] := ARRAY['website', 'referral', 'partner', 'event'];
    users uuid[] := ARRAY(SELECT id FROM crm.app_user ORDER BY name);
    pick float8 := random();
BEGIN
    SELECT id INTO l FROM crm.lead ORDER BY random() LIMIT 1;
    SELECT id INTO o FROM crm.opportunity ORDER BY random() LIMIT 1;
    IF p < 0.14 OR l IS NULL THEN
        INSERT INTO crm.lead (name, email, phone, company_size, industry, budget, purchase_timeline,
                              is_decision_maker, owner_id, source, country)
        VALUES ('Lead', emails[1 + floor(random() * 8)::int],
                CASE WHEN random() < 0.5 THEN '+1 555 0100' END,
                CASE WHEN random() < 0.8 THEN floor(random() * 3000)::int END,
                CASE WHEN random() < 0.8 THEN industries[1 + floor(random() * 6)::int] END,
                CASE WHEN random() < 0.8 THEN round((random() * 800000)::numeric, 2) END,
                CASE WHEN random() < 0.8 THEN timelines[1 + floor(random() * 5)::int] END,
                CASE WHEN random() < 0.7 THEN random() < 0.5 END,
                CASE WHEN random() < 0.8 THEN users[1 + floor(random() * 6)::int] END,
                sources[1 + floor(random() * 4)::int], CASE WHEN random() < 0.5 THEN 'US' ELSE 'DE' END);
    ELSIF p < 0.24 THEN
        UPDATE crm.lead SET company_size = floor(random() * 3000)::int,
               industry = industries[1 + floor(random() * 6)::int],
               is_decision_maker = CASE WHEN random() < 0.5 THEN NULL ELSE random() < 0.5 END
         WHERE id = l;
    ELSIF p < 0.28 THEN
        -- bulk: a few leads at once
        UPDATE crm.lead SET budget = round((random() * 800000)::numeric, 2), purchase_timeline = timelines[1 + floor(random() * 5)::int]
         WHERE id IN (SELECT id FROM crm.lead ORDER BY random() LIMIT 5);
    ELSIF p < 0.44 THEN
        -- activities out of time order, on the lead, or on a contact a lead was converted into
        INSERT INTO crm.activity (activity_type, subject, lead_id, contact_id, status, occurred_at)
        SELECT types[1 + floor(random() * 6)::int], 'Act',
               CASE WHEN random() < 0.8 OR x.converted_contact_id IS NULL THEN x.id END,
               CASE WHEN random() < 0.5 THEN x.converted_contact_id END,
               CASE WHEN random() < 0.75 THEN 'completed' ELSE 'scheduled' END,
               now() - random() * interval '120 days'
          FROM crm.lead x WHERE x.id = l;
    ELSIF p < 0.47 THEN
        -- bulk activities
        INSERT INTO crm.activity (activity_type, subject, lead_id, status, occurred_at)
        SELECT types[1 + floor(random() * 6)::int], 'Bulk', x.id, 'completed', now() - random() * interval '60 days'
          FROM crm.lead x ORDER BY random() LIMIT 10;
    ELSIF p < 0.53 THEN
        SELECT id INTO a FROM crm.activity ORDER BY random() LIMIT 1;
        IF pick < 0.3 THEN
            UPDATE crm.activity SET status = CASE WHEN status = 'completed' THEN 'cancelled' ELSE 'completed' END WHERE id = a;
        ELSIF pick < 0.5 THEN
            UPDATE crm.activity SET activity_type = types[1 + floor(random() * 6)::int] WHERE id = a;
        ELSIF pick < 0.7 THEN
            UPDATE crm.activity SET occurred_at = now() - random() * interval '90 days' WHERE id = a;
        ELSIF pick < 0.8 THEN
            UPDATE crm.activity SET lead_id = l WHERE id = a;
        ELSE
            DELETE FROM crm.activity WHERE id = a;
        END IF;
    ELSIF p < 0.58 THEN
        -- profiling consent of the people behind the leads' e-mails
        IF pick < 0.5 THEN
            INSERT INTO crm.contact (first_name, email, phone, profiling_opt_out)
            VALUES ('C', emails[1 + floor(random() * 8)::int], CASE WHEN random() < 0.5 THEN 'bad' END, random() < 0.5)
            ON CONFLICT DO NOTHING;
        ELSE
            UPDATE crm.contact SET profiling_opt_out = NOT profiling_opt_out
             WHERE id = (SELECT id FROM crm.contact ORDER BY random() LIMIT 1);
        END IF;
    ELSIF p < 0.60 THEN
        IF (SELECT converted_at IS NULL AND status = 'open' FROM crm.lead WHERE id = l) THEN
            PERFORM crm.lead_convert(l);
        END IF;
    ELSIF p < 0.63 THEN
        IF (SELECT status = 'open' FROM crm.lead WHERE id = l) THEN
            PERFORM crm.lead_mark_lost(l, 'random');
        ELSE
            UPDATE crm.lead x SET stage_id = (SELECT s2.id FROM crm.stage s2 WHERE s2.pipeline_id = x.pipeline_id
                                                 AND s2.kind = 'open' ORDER BY random() LIMIT 1)
             WHERE x.id = l AND x.converted_at IS NULL;
        END IF;
    ELSIF p < 0.72 OR o IS NULL THEN
        INSERT INTO crm.opportunity (name, pipeline_id, owner_id, source, country, priority, amount, contact_id)
        VALUES ('Opp', (SELECT id FROM crm.pipeline WHERE is_default = (pick < 0.75)), CASE WHEN random() < 0.85 THEN users[1 + floor(random() * 6)::int] END,
                sources[1 + floor(random() * 4)::int], CASE WHEN random() < 0.5 THEN 'US' ELSE 'DE' END,
                (ARRAY['low', 'medium', 'high'])[1 + floor(random() * 3)::int], 1000,
                (SELECT id FROM crm.contact ORDER BY random() LIMIT 1));
    ELSIF p < 0.84 THEN
        -- move, win, lose, reopen
        SELECT s2.id INTO s FROM crm.opportunity x JOIN crm.stage s2 ON s2.pipeline_id = x.pipeline_id
         WHERE x.id = o ORDER BY random() LIMIT 1;
        IF pick < 0.25 AND (SELECT status = 'open' FROM crm.opportunity WHERE id = o) THEN
            PERFORM crm.opportunity_mark_won(o);
        ELSIF pick < 0.5 AND (SELECT status = 'open' FROM crm.opportunity WHERE id = o) THEN
            PERFORM crm.opportunity_mark_lost(o, 'random');
        ELSE
            UPDATE crm.opportunity SET stage_id = s WHERE id = o;
        END IF;
    ELSIF p < 0.88 THEN
        UPDATE crm.opportunity SET source = sources[1 + floor(random() * 4)::int],
               country = CASE WHEN random() < 0.5 THEN 'US' ELSE 'DE' END,
               owner_id = CASE WHEN random() < 0.3 THEN users[1 + floor(random() * 6)::int] ELSE owner_id END,
               team_id = CASE WHEN random() < 0.2 THEN NULL ELSE team_id END
         WHERE id = o;
    ELSIF p < 0.93 THEN
        IF pick < 0.6 THEN
            INSERT INTO crm.opportunity_tag (opportunity_id, tag_id)
            SELECT o, id FROM crm.tag ORDER BY random() LIMIT 1 ON CONFLICT DO NOTHING;
        ELSIF pick < 0.8 THEN
            DELETE FROM crm.opportunity_tag WHERE opportunity_id = o;
        ELSE
            INSERT INTO crm.lead_tag (lead_id, tag_id)
            SELECT l, id FROM crm.tag ORDER BY random() LIMIT 1 ON CONFLICT DO NOTHING;
        END IF;
    ELSIF p < 0.95 THEN
        -- bulk close
        UPDATE crm.opportunity x SET stage_id = (SELECT s2.id FROM crm.stage s2 WHERE s2.pipeline_id = x.pipeline_id
                                                    AND s2.kind = CASE WHEN random() < 0.5 THEN 'won' ELSE 'lost' END LIMIT 1)
         WHERE x.id IN (SELECT id FROM crm.opportunity WHERE status = 'open' ORDER BY random() LIMIT 4);
    ELSIF p < 0.96 THEN
        DELETE FROM crm.opportunity WHERE id = o;
    ELSIF p < 0.97 THEN
        UPDATE crm.account SET industry = industries[1 + floor(random() * 6)::int]
         WHERE id = (SELECT id FROM crm.account ORDER BY random() LIMIT 1);
    ELSIF p < 0.985 THEN
        UPDATE crm.scoring_model
           SET weights = jsonb_set(weights, '{combine}',
                                   jsonb_build_object('fit', f, 'engagement', 100 - f)),
               threshold = 40 + floor(random() * 40)::int
          FROM (SELECT 50 + floor(random() * 50)::int AS f) r
         WHERE is_default;
    ELSE
        PERFORM crm.rescore_leads();
    END IF;
END
$f$;
SQL

TENANT=$(psql -X -At -v ON_ERROR_STOP=1 -d "$DB" -c "SELECT tenant_id FROM crm.tenant")
start=$(date +%s)
batches=$(((OPS + BATCH - 1) / BATCH))
for ((b = 0; b < batches; b++)); do
	n=$BATCH
	((b == batches - 1)) && n=$((OPS - b * BATCH))
	psql_q <<SQL
SET ROLE regress_random_app;
SET crm.tenant_id = '$TENANT';
SELECT setseed($SEED - $b / 10000.0) \\g /dev/null
SELECT count(public.random_op()) FROM generate_series(1, $n) \\g /dev/null
SQL
done
echo "# $OPS operations in $batches transactions, $(($(date +%s) - start)) s:" \
	"$(psql -X -At -d "$DB" -c "SELECT count(*) || ' leads, ' || (SELECT count(*) FROM crm.opportunity) || ' opportunities, '
	       || (SELECT count(*) FROM crm.activity) || ' activities, ' || (SELECT count(*) FROM crm.lead_score_history)
	       || ' score changes, ' || (SELECT count(*) FROM crm.pls_frequency) || ' frequency rows'
	  FROM crm.lead")"

check() { # DESCRIPTION SQL (must print 0)
	local got
	got=$({ psql -X -At -q -v ON_ERROR_STOP=1 -d "$DB" 2>&1 <<SQL || true; } | tail -n 1
SET ROLE regress_random_app;
SET crm.tenant_id = '$TENANT';
$2;
SQL
	)
	if [[ $got == 0 ]]; then
		echo "ok - $1"
	else
		echo "FAIL - $1: $got"
		failed=$((failed + 1))
	fi
}
check "every stored score equals crm.score_lead() as of its scored_at" \
	"SELECT count(*) FROM crm.lead WHERE score IS DISTINCT FROM crm.score_lead(id, NULL, scored_at)"
check "every qualification follows the score and the model's threshold" \
	"SELECT count(*) FROM crm.lead l JOIN crm.scoring_model m ON m.tenant_id = l.tenant_id AND m.id = l.scoring_model_id
	  WHERE l.qualification IS DISTINCT FROM CASE WHEN l.score IS NULL THEN NULL
	        WHEN l.score >= m.threshold THEN 'qualified' ELSE 'unqualified' END"
check "the last score history row of every lead ends at its score" \
	"SELECT count(*) FROM crm.lead l JOIN LATERAL (SELECT h.new_score FROM crm.lead_score_history h
	   WHERE h.tenant_id = l.tenant_id AND h.lead_id = l.id ORDER BY h.changed_at DESC, h.id DESC LIMIT 1) h ON true
	  WHERE h.new_score IS DISTINCT FROM l.score"
check "the live frequency table equals a build from scratch (crm.pls_check)" \
	"SELECT count(*) FROM crm.pls_check()"
check "crm.pls_rebuild() changes nothing" \
	"CREATE TEMP TABLE live AS SELECT record_kind, team_key, variable, value, won_count, lost_count FROM crm.pls_frequency;
	 SELECT crm.pls_rebuild() \\g /dev/null

	 SELECT count(*) FROM ((TABLE live EXCEPT SELECT record_kind, team_key, variable, value, won_count, lost_count FROM crm.pls_frequency)
	   UNION ALL (SELECT record_kind, team_key, variable, value, won_count, lost_count FROM crm.pls_frequency EXCEPT TABLE live)) d"
check "every open opportunity in predicted mode shows crm.predict_win()" \
	"SELECT count(*) FROM crm.opportunity WHERE status = 'open' AND probability_mode = 'predicted'
	    AND crm.predict_win(id) IS NOT NULL AND probability <> crm.predict_win(id)"
# What the random walk reached (a note, not a check: a short walk may
# close no deal or qualify no lead, and the checks above hold either way).
echo "# reached: $(psql -X -At -d "$DB" -c "SELECT (SELECT count(*) FROM crm.opportunity WHERE status = 'won') || ' won, '
	|| (SELECT count(*) FROM crm.opportunity WHERE status = 'lost') || ' lost, '
	|| (SELECT count(*) FROM crm.lead WHERE score IS NULL) || ' unscored (opted out), '
	|| (SELECT count(*) FROM crm.lead WHERE qualification = 'qualified') || ' qualified'")"
echo "$((6 - failed)) of 6 checks passed"
((failed == 0))
