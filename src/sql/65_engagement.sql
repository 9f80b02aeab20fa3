-- src/sql/65_engagement.sql: activity aggregates and engagement with time
-- decay (C statement triggers in src/engagement.c).
--
-- An activity counts as engagement when it happened: status completed, at
-- its occurred_at, with its type's weight (crm.activity_weight overrides it
-- per tenant).  The engagement score of a contact, lead or account is
--     sum of weight * 2^(-(as_of - occurred_at) / half_life)
-- over its counted activities.  It is stored as (score_value, score_ref):
-- the sum decayed to the reference time score_ref, which is never earlier
-- than a counted activity; the value at a later time t is
-- score_value * 2^(-(t - score_ref) / half_life).  Each activity written
-- adds or takes away its own term, whatever its time: O(1) per activity.

CREATE TABLE crm.engagement_setting (
    tenant_id  uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    half_life  interval NOT NULL DEFAULT '30 days' CHECK (half_life > interval '0'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id)
);
COMMENT ON TABLE crm.engagement_setting IS 'Engagement scoring settings of a tenant (no row: the defaults); a change recomputes the tenant''s aggregates';
COMMENT ON COLUMN crm.engagement_setting.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.engagement_setting.half_life IS 'Time after which an activity counts half as much (default 30 days; must be positive)';
COMMENT ON COLUMN crm.engagement_setting.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.engagement_setting.updated_at IS 'When the row last changed';

CREATE TABLE crm.activity_weight (
    tenant_id     uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    activity_type text NOT NULL REFERENCES crm.activity_type (code) ON DELETE CASCADE,
    weight        numeric(8,2) NOT NULL CHECK (weight >= 0 AND weight <> 'NaN'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, activity_type)
);
COMMENT ON TABLE crm.activity_weight IS 'A tenant''s engagement weight for an activity type, instead of the type''s default_weight; a change recomputes the tenant''s aggregates';
COMMENT ON COLUMN crm.activity_weight.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.activity_weight.activity_type IS 'Activity type code';
COMMENT ON COLUMN crm.activity_weight.weight IS 'Weight of one such completed activity (0 or more, not NaN)';
COMMENT ON COLUMN crm.activity_weight.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.activity_weight.updated_at IS 'When the row last changed';

CREATE TABLE crm.contact_engagement (
    tenant_id         uuid NOT NULL DEFAULT crm.current_tenant(),
    contact_id        uuid NOT NULL,
    activity_count    bigint NOT NULL DEFAULT 0,
    counts_by_type    jsonb NOT NULL DEFAULT '{}',
    counts_by_module  jsonb NOT NULL DEFAULT '{}',
    first_activity_at timestamptz,
    last_activity_at  timestamptz,
    last_inbound_at   timestamptz,
    last_outbound_at  timestamptz,
    last_meeting_at   timestamptz,
    score_value       float8 NOT NULL DEFAULT 0,
    score_ref         timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, contact_id),
    FOREIGN KEY (tenant_id, contact_id) REFERENCES crm.contact (tenant_id, id) ON DELETE CASCADE
);
COMMENT ON TABLE crm.contact_engagement IS 'Activity aggregates of a contact over its completed activities, kept exact by triggers after every statement (no row: no activity yet)';
COMMENT ON COLUMN crm.contact_engagement.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.contact_engagement.contact_id IS 'The contact';
COMMENT ON COLUMN crm.contact_engagement.activity_count IS 'Completed activities (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.contact_engagement.counts_by_type IS 'Completed activities per type, {"call": 3, ...} (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.contact_engagement.counts_by_module IS 'Completed activities per module, {"sales": 2, ...} (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.contact_engagement.first_activity_at IS 'Earliest occurred_at of a completed activity (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.contact_engagement.last_activity_at IS 'Latest occurred_at of a completed activity: "last contacted" (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.contact_engagement.last_inbound_at IS 'Latest completed inbound activity (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.contact_engagement.last_outbound_at IS 'Latest completed outbound activity (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.contact_engagement.last_meeting_at IS 'Latest completed meeting (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.contact_engagement.score_value IS 'Engagement score decayed to score_ref: sum of weight * 2^(-(score_ref - occurred_at) / half_life); read it with crm.engagement_score() (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.contact_engagement.score_ref IS 'Reference time of score_value, at or after every counted activity (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.contact_engagement.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.contact_engagement.updated_at IS 'When the row last changed';

CREATE TABLE crm.lead_engagement (
    tenant_id         uuid NOT NULL DEFAULT crm.current_tenant(),
    lead_id           uuid NOT NULL,
    activity_count    bigint NOT NULL DEFAULT 0,
    counts_by_type    jsonb NOT NULL DEFAULT '{}',
    counts_by_module  jsonb NOT NULL DEFAULT '{}',
    first_activity_at timestamptz,
    last_activity_at  timestamptz,
    last_inbound_at   timestamptz,
    last_outbound_at  timestamptz,
    last_meeting_at   timestamptz,
    score_value       float8 NOT NULL DEFAULT 0,
    score_ref         timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, lead_id),
    FOREIGN KEY (tenant_id, lead_id) REFERENCES crm.lead (tenant_id, id) ON DELETE CASCADE
);
COMMENT ON TABLE crm.lead_engagement IS 'Activity aggregates of a lead over its completed activities (lead scoring reads them), kept exact by triggers after every statement; once converted, the contact''s engagement continues it';
COMMENT ON COLUMN crm.lead_engagement.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.lead_engagement.lead_id IS 'The lead';
COMMENT ON COLUMN crm.lead_engagement.activity_count IS 'Completed activities (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.lead_engagement.counts_by_type IS 'Completed activities per type (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.lead_engagement.counts_by_module IS 'Completed activities per module (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.lead_engagement.first_activity_at IS 'Earliest completed activity (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.lead_engagement.last_activity_at IS 'Latest completed activity (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.lead_engagement.last_inbound_at IS 'Latest completed inbound activity (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.lead_engagement.last_outbound_at IS 'Latest completed outbound activity (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.lead_engagement.last_meeting_at IS 'Latest completed meeting (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.lead_engagement.score_value IS 'Engagement score decayed to score_ref; read it with crm.lead_engagement_score() (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.lead_engagement.score_ref IS 'Reference time of score_value (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.lead_engagement.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.lead_engagement.updated_at IS 'When the row last changed';

CREATE TABLE crm.account_summary (
    tenant_id              uuid NOT NULL DEFAULT crm.current_tenant(),
    account_id             uuid NOT NULL,
    contact_count          bigint NOT NULL DEFAULT 0,
    activity_count         bigint NOT NULL DEFAULT 0,
    last_activity_at       timestamptz,
    open_opportunity_count bigint NOT NULL DEFAULT 0,
    open_amounts           jsonb NOT NULL DEFAULT '{}',
    won_amounts            jsonb NOT NULL DEFAULT '{}',
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, account_id),
    FOREIGN KEY (tenant_id, account_id) REFERENCES crm.account (tenant_id, id) ON DELETE CASCADE
);
COMMENT ON TABLE crm.account_summary IS 'Roll-up of an account: contacts, completed activities, open and won opportunities, kept exact by triggers after every statement (no row: nothing yet)';
COMMENT ON COLUMN crm.account_summary.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.account_summary.account_id IS 'The account';
COMMENT ON COLUMN crm.account_summary.contact_count IS 'Contacts of the account (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.account_summary.activity_count IS 'Completed activities linked to the account (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.account_summary.last_activity_at IS 'Latest completed activity linked to the account (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.account_summary.open_opportunity_count IS 'Open opportunities (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.account_summary.open_amounts IS 'Amount of the open opportunities per currency, {"USD": 1200.00}: never added across currencies (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.account_summary.won_amounts IS 'Amount of the won opportunities per currency (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.account_summary.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.account_summary.updated_at IS 'When the row last changed';

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['engagement_setting', 'activity_weight', 'contact_engagement',
                             'lead_engagement', 'account_summary'] LOOP
        EXECUTE format('ALTER TABLE crm.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE crm.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON crm.%I'
                       ' USING (tenant_id = crm.current_tenant())'
                       ' WITH CHECK (tenant_id = crm.current_tenant())', t);
        EXECUTE format('COMMENT ON POLICY tenant_isolation ON crm.%I IS %L', t,
                       'Rows of the tenant the statement acts for (crm.current_tenant()) only');
    END LOOP;
END
$$;

-- The latest and earliest activity of a lead, as the contact and account
-- indexes of src/sql/40_activity.sql give them for contacts and accounts:
-- what the triggers read back after a delete.
CREATE INDEX activity_lead_time_idx ON crm.activity (tenant_id, lead_id, occurred_at DESC);

-- Merging deltas --------------------------------------------------------------

CREATE FUNCTION crm.engagement_add_counts(a jsonb, b jsonb) RETURNS jsonb
    AS 'MODULE_PATHNAME', 'crm_engagement_add_counts'
    LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION crm.engagement_add_counts(jsonb, jsonb) IS
    'Internal: two {"name": count} objects added key by key, zero counts left out';

CREATE FUNCTION crm.engagement_add_amounts(a jsonb, b jsonb) RETURNS jsonb
    AS 'MODULE_PATHNAME', 'crm_engagement_add_counts'
    LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION crm.engagement_add_amounts(jsonb, jsonb) IS
    'Internal: two {"currency": amount} objects added currency by currency (never across), zero amounts left out';

CREATE FUNCTION crm.engagement_combine(v1 float8, r1 timestamptz, v2 float8, r2 timestamptz, half_life_seconds float8)
    RETURNS float8
    AS 'MODULE_PATHNAME', 'crm_engagement_combine'
    LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION crm.engagement_combine(float8, timestamptz, float8, timestamptz, float8) IS
    'Internal: two decayed sums, each at its reference time, as one sum at the later reference';

-- Weights and half-life -----------------------------------------------------

CREATE FUNCTION crm.engagement_half_life(tenant uuid) RETURNS interval
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF tenant IS DISTINCT FROM crm.current_tenant()
       AND NOT coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user), false) THEN
        RAISE EXCEPTION 'tenant % is not the tenant this session acts for', tenant
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'A tenant argument may name only the caller''s own tenant (issue 8 item 4).';
    END IF;
    RETURN coalesce((SELECT s.half_life FROM crm.engagement_setting s WHERE s.tenant_id = $1),
                    interval '30 days');
END
$$;
COMMENT ON FUNCTION crm.engagement_half_life(uuid) IS
    'The engagement half-life of a tenant (30 days unless crm.engagement_setting says otherwise); tenant must be the caller''s own (42501 otherwise; superusers excepted)';

-- Recomputation from the rows (repair, tests, check) ---------------------

CREATE FUNCTION crm.engagement_recomputed_one(tenant uuid)
    RETURNS TABLE (tenant_id uuid, kind text, id uuid, activity_count bigint, counts_by_type jsonb,
                   counts_by_module jsonb, first_activity_at timestamptz, last_activity_at timestamptz,
                   last_inbound_at timestamptz, last_outbound_at timestamptz, last_meeting_at timestamptz,
                   score_value float8, score_ref timestamptz)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    h float8 := extract(epoch FROM crm.engagement_half_life(tenant))::float8;
BEGIN
RETURN QUERY
WITH counted AS (
    SELECT a.tenant_id, k.kind, k.id, a.activity_type, a.module, a.direction, a.occurred_at,
           coalesce(w.weight, ty.default_weight)::float8 AS weight
      FROM crm.activity a
      JOIN crm.activity_type ty ON ty.code = a.activity_type
      LEFT JOIN crm.activity_weight w ON w.tenant_id = tenant AND w.activity_type = a.activity_type
     CROSS JOIN LATERAL (VALUES ('contact', a.contact_id), ('lead', a.lead_id)) k(kind, id)
     WHERE a.tenant_id = tenant AND a.status = 'completed' AND k.id IS NOT NULL
), totals AS (
    SELECT c.tenant_id, c.kind, c.id, count(*) AS activity_count,
           min(c.occurred_at) AS first_activity_at, max(c.occurred_at) AS last_activity_at,
           max(c.occurred_at) FILTER (WHERE c.direction = 'inbound') AS last_inbound_at,
           max(c.occurred_at) FILTER (WHERE c.direction = 'outbound') AS last_outbound_at,
           max(c.occurred_at) FILTER (WHERE c.activity_type = 'meeting') AS last_meeting_at,
           sum(c.weight * pow(2::float8, greatest(-extract(epoch FROM c.ref - c.occurred_at)::float8 / c.h, -1074::float8))) AS score_value,
           max(c.ref) AS score_ref
      FROM (SELECT x.*, max(x.occurred_at) OVER (PARTITION BY x.tenant_id, x.kind, x.id) AS ref,
                   h AS h
              FROM counted x) c
     GROUP BY c.tenant_id, c.kind, c.id
), by_type AS (
    SELECT x.tenant_id, x.kind, x.id, jsonb_object_agg(x.activity_type, x.n) AS counts
      FROM (SELECT tenant_id, kind, id, activity_type, count(*) AS n FROM counted
             GROUP BY 1, 2, 3, 4) x
     GROUP BY 1, 2, 3
), by_module AS (
    SELECT x.tenant_id, x.kind, x.id, jsonb_object_agg(x.module, x.n) AS counts
      FROM (SELECT tenant_id, kind, id, module, count(*) AS n FROM counted
             GROUP BY 1, 2, 3, 4) x
     GROUP BY 1, 2, 3
)
SELECT t.tenant_id, t.kind, t.id, t.activity_count, bt.counts AS counts_by_type, bm.counts AS counts_by_module,
       t.first_activity_at, t.last_activity_at, t.last_inbound_at, t.last_outbound_at, t.last_meeting_at,
       t.score_value, t.score_ref
  FROM totals t
  JOIN by_type bt USING (tenant_id, kind, id)
  JOIN by_module bm USING (tenant_id, kind, id)
 -- only the records the caller sees, as the stored rows (private tenants)
 WHERE CASE t.kind WHEN 'contact' THEN EXISTS (SELECT 1 FROM crm.contact c WHERE c.tenant_id = tenant AND c.id = t.id)
                   ELSE EXISTS (SELECT 1 FROM crm.lead l WHERE l.tenant_id = tenant AND l.id = t.id) END;
END
$$;
COMMENT ON FUNCTION crm.engagement_recomputed_one(uuid) IS
    'Internal: crm.engagement_recomputed() of one tenant: one query filtered by the tenant (routed whole to its shard on Citus), the half-life read first';

-- The tenants whose rows the caller sees: its own, or every tenant for a
-- role that row-level security does not apply to (as the plain query over
-- all rows gave); on Citus each tenant's query is routed to its shard.
CREATE FUNCTION crm.engagement_recomputed_for(tenant uuid)
    RETURNS TABLE (tenant_id uuid, kind text, id uuid, activity_count bigint, counts_by_type jsonb,
                   counts_by_module jsonb, first_activity_at timestamptz, last_activity_at timestamptz,
                   last_inbound_at timestamptz, last_outbound_at timestamptz, last_meeting_at timestamptz,
                   score_value float8, score_ref timestamptz)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    t uuid;
BEGIN
    FOR t IN SELECT x.tenant_id FROM crm.tenant x WHERE tenant IS NULL OR x.tenant_id = tenant ORDER BY 1 LOOP
        RETURN QUERY SELECT * FROM crm.engagement_recomputed_one(t);
    END LOOP;
END
$$;
COMMENT ON FUNCTION crm.engagement_recomputed_for(uuid) IS
    'Internal: the contact and lead aggregates computed afresh of one tenant (NULL: of every tenant the caller sees), one tenant a query (each routed to its shard on Citus)';

-- The caller's tenant, or every tenant for a role that row-level security
-- does not apply to (as the plain query over all rows gave).
CREATE FUNCTION crm.engagement_recomputed()
    RETURNS TABLE (tenant_id uuid, kind text, id uuid, activity_count bigint, counts_by_type jsonb,
                   counts_by_module jsonb, first_activity_at timestamptz, last_activity_at timestamptz,
                   last_inbound_at timestamptz, last_outbound_at timestamptz, last_meeting_at timestamptz,
                   score_value float8, score_ref timestamptz)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    RETURN QUERY SELECT * FROM crm.engagement_recomputed_for(
        CASE WHEN pg_catalog.row_security_active('crm.activity'::regclass) THEN crm.current_tenant() END);
END
$$;
COMMENT ON FUNCTION crm.engagement_recomputed() IS
    'The contact and lead aggregates (kind contact or lead) computed afresh from the activity rows the caller sees, as crm.check_aggregates() and crm.refresh_aggregates() compare and rebuild them';

CREATE FUNCTION crm.account_summary_recomputed_one(tenant uuid)
    RETURNS TABLE (tenant_id uuid, account_id uuid, contact_count bigint, activity_count bigint,
                   last_activity_at timestamptz, open_opportunity_count bigint, open_amounts jsonb,
                   won_amounts jsonb)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
BEGIN
RETURN QUERY
WITH keys AS (
    SELECT c.tenant_id, c.account_id FROM crm.contact c WHERE c.tenant_id = tenant AND c.account_id IS NOT NULL
    UNION
    SELECT a.tenant_id, a.account_id FROM crm.activity a WHERE a.tenant_id = tenant AND a.account_id IS NOT NULL AND a.status = 'completed'
    UNION
    SELECT o.tenant_id, o.account_id FROM crm.opportunity o WHERE o.tenant_id = tenant AND o.account_id IS NOT NULL AND o.status IN ('open', 'won')
), keys_seen AS (
    -- only the accounts the caller sees, as the stored rows (private tenants)
    SELECT k.tenant_id, k.account_id FROM keys k
     WHERE EXISTS (SELECT 1 FROM crm.account a WHERE a.tenant_id = tenant AND a.id = k.account_id)
)
SELECT k.tenant_id, k.account_id,
       (SELECT count(*) FROM crm.contact c WHERE c.tenant_id = tenant AND c.account_id = k.account_id)
           AS contact_count,
       a.n AS activity_count, a.last_at AS last_activity_at,
       (SELECT count(*) FROM crm.opportunity o
         WHERE o.tenant_id = tenant AND o.account_id = k.account_id AND o.status = 'open')
           AS open_opportunity_count,
       (SELECT coalesce(jsonb_object_agg(x.currency, x.amount), '{}') FROM (
            SELECT o.currency, sum(o.amount) AS amount FROM crm.opportunity o
             WHERE o.tenant_id = tenant AND o.account_id = k.account_id AND o.status = 'open'
             GROUP BY o.currency HAVING sum(o.amount) <> 0) x) AS open_amounts,
       (SELECT coalesce(jsonb_object_agg(x.currency, x.amount), '{}') FROM (
            SELECT o.currency, sum(o.amount) AS amount FROM crm.opportunity o
             WHERE o.tenant_id = tenant AND o.account_id = k.account_id AND o.status = 'won'
             GROUP BY o.currency HAVING sum(o.amount) <> 0) x) AS won_amounts
  FROM keys_seen k
 CROSS JOIN LATERAL (SELECT count(*) AS n, max(x.occurred_at) AS last_at FROM crm.activity x
                      WHERE x.tenant_id = tenant AND x.account_id = k.account_id
                        AND x.status = 'completed') a;
END
$$;
COMMENT ON FUNCTION crm.account_summary_recomputed_one(uuid) IS
    'Internal: crm.account_summary_recomputed() of one tenant: one query filtered by the tenant (routed whole to its shard on Citus)';

CREATE FUNCTION crm.account_summary_recomputed_for(tenant uuid)
    RETURNS TABLE (tenant_id uuid, account_id uuid, contact_count bigint, activity_count bigint,
                   last_activity_at timestamptz, open_opportunity_count bigint, open_amounts jsonb,
                   won_amounts jsonb)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    t uuid;
BEGIN
    FOR t IN SELECT x.tenant_id FROM crm.tenant x WHERE tenant IS NULL OR x.tenant_id = tenant ORDER BY 1 LOOP
        RETURN QUERY SELECT * FROM crm.account_summary_recomputed_one(t);
    END LOOP;
END
$$;
COMMENT ON FUNCTION crm.account_summary_recomputed_for(uuid) IS
    'Internal: the account roll-ups computed afresh of one tenant (NULL: of every tenant the caller sees), one tenant a query (each routed to its shard on Citus)';

-- The caller's tenant, or every tenant for a role that row-level security
-- does not apply to (as the plain query over all rows gave).
CREATE FUNCTION crm.account_summary_recomputed()
    RETURNS TABLE (tenant_id uuid, account_id uuid, contact_count bigint, activity_count bigint,
                   last_activity_at timestamptz, open_opportunity_count bigint, open_amounts jsonb,
                   won_amounts jsonb)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    RETURN QUERY SELECT * FROM crm.account_summary_recomputed_for(
        CASE WHEN pg_catalog.row_security_active('crm.account'::regclass) THEN crm.current_tenant() END);
END
$$;
COMMENT ON FUNCTION crm.account_summary_recomputed() IS
    'The account roll-ups computed afresh from the rows the caller sees, as crm.check_aggregates() and crm.refresh_aggregates() compare and rebuild them';

CREATE FUNCTION crm.aggregates_rebuild(target uuid) RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    -- Concurrent trigger upserts wait until this transaction ends; they then
    -- apply their own changes on top of the recomputed rows.  A tenant's
    -- rebuild holds its tenant's aggregate lock, which crm.refresh_aggregates
    -- took before this ran and every trigger that writes the tenant's
    -- aggregates takes too (src/engagement.c), so that no other tenant
    -- waits; all tenants at once, and on Citus (whose shards the lock does
    -- not reach), lock the tables.
    IF target IS NULL OR EXISTS (SELECT 1 FROM pg_catalog.pg_extension x WHERE x.extname = 'citus') THEN
        LOCK TABLE crm.contact_engagement, crm.lead_engagement, crm.account_summary IN SHARE ROW EXCLUSIVE MODE;
    END IF;
    -- One tenant's rows by a statement that names it (on Citus it runs on
    -- that tenant's node only: crm.refresh_aggregates hands it there).
    IF target IS NULL THEN
        DELETE FROM crm.contact_engagement e;
        DELETE FROM crm.lead_engagement e;
        DELETE FROM crm.account_summary e;
    ELSE
        DELETE FROM crm.contact_engagement e WHERE e.tenant_id = target;
        DELETE FROM crm.lead_engagement e WHERE e.tenant_id = target;
        DELETE FROM crm.account_summary e WHERE e.tenant_id = target;
    END IF;
    INSERT INTO crm.contact_engagement (tenant_id, contact_id, activity_count, counts_by_type, counts_by_module,
                                        first_activity_at, last_activity_at, last_inbound_at, last_outbound_at,
                                        last_meeting_at, score_value, score_ref)
    SELECT r.tenant_id, r.id, r.activity_count, r.counts_by_type, r.counts_by_module, r.first_activity_at,
           r.last_activity_at, r.last_inbound_at, r.last_outbound_at, r.last_meeting_at, r.score_value, r.score_ref
      FROM crm.engagement_recomputed_for(target) r
     WHERE r.kind = 'contact' AND (target IS NULL OR r.tenant_id = target)
     ORDER BY r.tenant_id, r.id;
    INSERT INTO crm.lead_engagement (tenant_id, lead_id, activity_count, counts_by_type, counts_by_module,
                                     first_activity_at, last_activity_at, last_inbound_at, last_outbound_at,
                                     last_meeting_at, score_value, score_ref)
    SELECT r.tenant_id, r.id, r.activity_count, r.counts_by_type, r.counts_by_module, r.first_activity_at,
           r.last_activity_at, r.last_inbound_at, r.last_outbound_at, r.last_meeting_at, r.score_value, r.score_ref
      FROM crm.engagement_recomputed_for(target) r
     WHERE r.kind = 'lead' AND (target IS NULL OR r.tenant_id = target)
     ORDER BY r.tenant_id, r.id;
    INSERT INTO crm.account_summary (tenant_id, account_id, contact_count, activity_count, last_activity_at,
                                     open_opportunity_count, open_amounts, won_amounts)
    SELECT r.tenant_id, r.account_id, r.contact_count, r.activity_count, r.last_activity_at,
           r.open_opportunity_count, r.open_amounts, r.won_amounts
      FROM crm.account_summary_recomputed_for(target) r
     WHERE target IS NULL OR r.tenant_id = target
     ORDER BY r.tenant_id, r.account_id;
END
$$;
COMMENT ON FUNCTION crm.aggregates_rebuild(uuid) IS
    'Internal: recomputes the aggregates of one tenant (NULL: all) from the rows; run by crm.refresh_aggregates() as the extension''s owner';

CREATE FUNCTION crm.refresh_aggregates(tenant uuid DEFAULT NULL) RETURNS void
    AS 'MODULE_PATHNAME', 'crm_engagement_refresh'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION crm.refresh_aggregates(uuid) IS
    'Recomputes the contact, lead and account aggregates of the current tenant from the rows (repair, tests); a superuser acting for no tenant may name any tenant, or NULL for all';

CREATE FUNCTION crm.check_aggregates()
    RETURNS TABLE (kind text, tenant_id uuid, id uuid, stored jsonb, recomputed jsonb)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    t uuid;
    ce crm.contact_engagement[];
    le crm.lead_engagement[];
    acs crm.account_summary[];
BEGIN
    -- The stored rows read first (on Citus one query each, routed to the
    -- tenant's shard), then compared with the recomputation in a query
    -- that reads no table: the caller's tenant, or every tenant for a role
    -- that row-level security does not apply to.
    IF pg_catalog.row_security_active('crm.contact_engagement'::regclass) THEN
        t := crm.current_tenant();
        SELECT array_agg(e) INTO ce FROM crm.contact_engagement e WHERE e.tenant_id = t;
        SELECT array_agg(e) INTO le FROM crm.lead_engagement e WHERE e.tenant_id = t;
        SELECT array_agg(e) INTO acs FROM crm.account_summary e WHERE e.tenant_id = t;
    ELSE
        SELECT array_agg(e) INTO ce FROM crm.contact_engagement e;
        SELECT array_agg(e) INTO le FROM crm.lead_engagement e;
        SELECT array_agg(e) INTO acs FROM crm.account_summary e;
    END IF;
    RETURN QUERY
    WITH eng AS (
        SELECT 'contact' AS kind, e.tenant_id, e.contact_id AS id, e.activity_count, e.counts_by_type,
               e.counts_by_module, e.first_activity_at, e.last_activity_at, e.last_inbound_at,
               e.last_outbound_at, e.last_meeting_at, e.score_value, e.score_ref
          FROM unnest(ce) e
        UNION ALL
        SELECT 'lead', e.tenant_id, e.lead_id, e.activity_count, e.counts_by_type,
               e.counts_by_module, e.first_activity_at, e.last_activity_at, e.last_inbound_at,
               e.last_outbound_at, e.last_meeting_at, e.score_value, e.score_ref
          FROM unnest(le) e
    ), cmp AS (
        SELECT coalesce(s.kind, r.kind) AS kind, coalesce(s.tenant_id, r.tenant_id) AS tenant_id,
               coalesce(s.id, r.id) AS id,
               s.activity_count AS s_n, r.activity_count AS r_n,
               nullif(s.counts_by_type, '{}') AS s_bt, r.counts_by_type AS r_bt,
               nullif(s.counts_by_module, '{}') AS s_bm, r.counts_by_module AS r_bm,
               s.first_activity_at AS s_first, r.first_activity_at AS r_first,
               s.last_activity_at AS s_last, r.last_activity_at AS r_last,
               s.last_inbound_at AS s_in, r.last_inbound_at AS r_in,
               s.last_outbound_at AS s_out, r.last_outbound_at AS r_out,
               s.last_meeting_at AS s_meet, r.last_meeting_at AS r_meet,
               -- both scores decayed to the same time
               CASE WHEN coalesce(s.activity_count, 0) = 0 THEN coalesce(s.score_value, 0)
                    ELSE s.score_value * pow(2::float8, greatest(-extract(epoch FROM greatest(s.score_ref, r.score_ref) - s.score_ref)::float8
                         / extract(epoch FROM crm.engagement_half_life(coalesce(s.tenant_id, r.tenant_id)))::float8, -1074::float8))
               END AS s_score,
               CASE WHEN r.score_ref IS NULL THEN 0
                    ELSE r.score_value * pow(2::float8, greatest(-extract(epoch FROM greatest(s.score_ref, r.score_ref) - r.score_ref)::float8
                         / extract(epoch FROM crm.engagement_half_life(r.tenant_id))::float8, -1074::float8))
               END AS r_score,
               s.score_ref AS s_ref, r.score_ref AS r_ref
          FROM eng s
          FULL JOIN crm.engagement_recomputed() r
            ON r.kind = s.kind AND r.tenant_id = s.tenant_id AND r.id = s.id
    )
    SELECT c.kind, c.tenant_id, c.id,
           jsonb_build_object('activity_count', c.s_n, 'counts_by_type', c.s_bt, 'counts_by_module', c.s_bm,
                              'first_activity_at', c.s_first, 'last_activity_at', c.s_last,
                              'last_inbound_at', c.s_in, 'last_outbound_at', c.s_out,
                              'last_meeting_at', c.s_meet, 'score', c.s_score, 'score_ref', c.s_ref),
           jsonb_build_object('activity_count', c.r_n, 'counts_by_type', c.r_bt, 'counts_by_module', c.r_bm,
                              'first_activity_at', c.r_first, 'last_activity_at', c.r_last,
                              'last_inbound_at', c.r_in, 'last_outbound_at', c.r_out,
                              'last_meeting_at', c.r_meet, 'score', c.r_score, 'score_ref', c.r_ref)
      FROM cmp c
     WHERE coalesce(c.s_n, 0) <> coalesce(c.r_n, 0)
        OR c.s_bt IS DISTINCT FROM c.r_bt OR c.s_bm IS DISTINCT FROM c.r_bm
        OR c.s_first IS DISTINCT FROM c.r_first OR c.s_last IS DISTINCT FROM c.r_last
        OR c.s_in IS DISTINCT FROM c.r_in OR c.s_out IS DISTINCT FROM c.r_out
        OR c.s_meet IS DISTINCT FROM c.r_meet
        OR (c.r_ref IS NOT NULL AND c.s_ref < c.r_ref)
        OR abs(c.s_score - c.r_score) > 1e-9 * greatest(abs(c.r_score), abs(c.s_score)) + 1e-300
    UNION ALL
    SELECT 'account', coalesce(s.tenant_id, r.tenant_id), coalesce(s.account_id, r.account_id),
           to_jsonb(s) - 'created_at' - 'updated_at', to_jsonb(r)
      FROM unnest(acs) s
      FULL JOIN crm.account_summary_recomputed() r
        ON r.tenant_id = s.tenant_id AND r.account_id = s.account_id
     WHERE coalesce(s.contact_count, 0) <> coalesce(r.contact_count, 0)
        OR coalesce(s.activity_count, 0) <> coalesce(r.activity_count, 0)
        OR s.last_activity_at IS DISTINCT FROM r.last_activity_at
        OR coalesce(s.open_opportunity_count, 0) <> coalesce(r.open_opportunity_count, 0)
        OR coalesce(s.open_amounts, '{}') <> coalesce(r.open_amounts, '{}')
        OR coalesce(s.won_amounts, '{}') <> coalesce(r.won_amounts, '{}')
    ORDER BY 1, 2, 3;
END
$$;
COMMENT ON FUNCTION crm.check_aggregates() IS
    'The aggregates (kind contact, lead or account) whose stored values differ from a recomputation from the rows, with both; scores compared at the same time to 1e-9 relative. Empty when all is exact';

-- Reading scores ------------------------------------------------------------

CREATE FUNCTION crm.engagement_decayed(tenant uuid, kind text, id uuid, as_of timestamptz)
    RETURNS float8
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    h float8 := extract(epoch FROM crm.engagement_half_life($1));
    v float8;
    ref timestamptz;
BEGIN
    IF $2 = 'contact' THEN
        SELECT e.score_value, e.score_ref INTO v, ref FROM crm.contact_engagement e
         WHERE e.tenant_id = $1 AND e.contact_id = $3;
    ELSE
        SELECT e.score_value, e.score_ref INTO v, ref FROM crm.lead_engagement e
         WHERE e.tenant_id = $1 AND e.lead_id = $3;
    END IF;
    IF ref IS NULL THEN
        RETURN 0;
    END IF;
    IF ref <= $4 THEN
        RETURN v * pow(2::float8, greatest(-extract(epoch FROM $4 - ref)::float8 / h, -1074::float8));
    END IF;
    -- as of a time before the reference: only what had happened by then
    RETURN coalesce((
        SELECT sum(coalesce(w.weight, ty.default_weight)::float8
                   * pow(2::float8, greatest(-extract(epoch FROM $4 - a.occurred_at)::float8 / h, -1074::float8)))
          FROM crm.activity a
          JOIN crm.activity_type ty ON ty.code = a.activity_type
          LEFT JOIN crm.activity_weight w ON w.tenant_id = a.tenant_id AND w.activity_type = a.activity_type
         WHERE a.tenant_id = $1 AND a.status = 'completed' AND a.occurred_at <= $4
           AND CASE WHEN $2 = 'contact' THEN a.contact_id = $3 ELSE a.lead_id = $3 END), 0);
END
$$;
COMMENT ON FUNCTION crm.engagement_decayed(uuid, text, uuid, timestamptz) IS
    'The engagement score of a contact or lead (kind) of a tenant as of a time, from the stored state (or from the rows for a time before its reference); 0 when it has none';

CREATE FUNCTION crm.engagement_score(contact uuid, as_of timestamptz DEFAULT now()) RETURNS float8
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    tenant uuid;
BEGIN
    IF $1 IS NULL OR $2 IS NULL THEN
        RAISE EXCEPTION 'contact and as_of must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT c.tenant_id INTO tenant FROM crm.contact c
     WHERE c.tenant_id = crm.current_tenant() AND c.id = $1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'contact % does not exist', $1 USING ERRCODE = 'no_data_found';
    END IF;
    RETURN crm.engagement_decayed(tenant, 'contact', $1, $2);
END
$$;
COMMENT ON FUNCTION crm.engagement_score(uuid, timestamptz) IS
    'Engagement score of a contact as of a time: sum of weight * 2^(-age / half_life) over its completed activities that had happened by then';

CREATE FUNCTION crm.lead_engagement_score(lead uuid, as_of timestamptz DEFAULT now()) RETURNS float8
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    tenant uuid;
BEGIN
    IF $1 IS NULL OR $2 IS NULL THEN
        RAISE EXCEPTION 'lead and as_of must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT l.tenant_id INTO tenant FROM crm.lead l
     WHERE l.tenant_id = crm.current_tenant() AND l.id = $1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lead % does not exist', $1 USING ERRCODE = 'no_data_found';
    END IF;
    RETURN crm.engagement_decayed(tenant, 'lead', $1, $2);
END
$$;
COMMENT ON FUNCTION crm.lead_engagement_score(uuid, timestamptz) IS
    'Engagement score of a lead as of a time, over the completed activities linked to the lead';

-- Tracking --------------------------------------------------------------------

CREATE FUNCTION crm.track_activity(contact uuid, activity_type text, details jsonb DEFAULT '{}',
                                   occurred_at timestamptz DEFAULT now(), direction text DEFAULT NULL,
                                   subject text DEFAULT NULL)
    RETURNS uuid
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    c record;
    type_name text;
    new_id uuid;
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'contact must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- the activity's NOT NULL columns: the SQLSTATE a plain INSERT gets (23502)
    IF $2 IS NULL OR $3 IS NULL OR $4 IS NULL THEN
        RAISE EXCEPTION 'null value in column "%" of relation "activity" violates not-null constraint',
            CASE WHEN $2 IS NULL THEN 'activity_type' WHEN $3 IS NULL THEN 'details' ELSE 'occurred_at' END
            USING ERRCODE = 'not_null_violation';
    END IF;
    SELECT x.tenant_id, x.id, x.account_id INTO c FROM crm.contact x
     WHERE x.tenant_id = crm.current_tenant() AND x.id = $1;
    IF NOT FOUND THEN
        -- the same SQLSTATE as the foreign key gives a plain INSERT
        RAISE EXCEPTION 'contact % does not exist', $1 USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT t.name INTO type_name FROM crm.activity_type t WHERE t.code = $2;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'activity type "%" does not exist', $2 USING ERRCODE = 'foreign_key_violation',
            HINT = 'The known types are listed in crm.activity_type.';
    END IF;
    INSERT INTO crm.activity (tenant_id, activity_type, module, direction, subject, status, occurred_at,
                              contact_id, account_id, details)
    VALUES (c.tenant_id, $2, '', $5, coalesce($6, type_name), 'completed', $4, c.id, c.account_id, $3)
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;
COMMENT ON FUNCTION crm.track_activity(uuid, text, jsonb, timestamptz, text, text) IS
    'Records something that happened with a contact (seeds/000 universal tracking): a completed activity of the type, linked to the contact and its account; returns its id. A plain INSERT of the same row has the same effect';

-- Maintenance triggers ------------------------------------------------------

CREATE FUNCTION crm.engagement_track() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_engagement_track'
    LANGUAGE C;
COMMENT ON FUNCTION crm.engagement_track() IS
    'Statement trigger: applies the rows a statement wrote to crm.contact_engagement, crm.lead_engagement and crm.account_summary, one upsert per table, keys in sorted order';

CREATE TRIGGER engagement_insert AFTER INSERT ON crm.activity
    REFERENCING NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.engagement_track('activity');
CREATE TRIGGER engagement_update AFTER UPDATE ON crm.activity
    REFERENCING OLD TABLE AS crm_old_rows NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.engagement_track('activity');
CREATE TRIGGER engagement_delete AFTER DELETE ON crm.activity
    REFERENCING OLD TABLE AS crm_old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.engagement_track('activity');
CREATE TRIGGER engagement_insert AFTER INSERT ON crm.contact
    REFERENCING NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.engagement_track('contact');
CREATE TRIGGER engagement_update AFTER UPDATE ON crm.contact
    REFERENCING OLD TABLE AS crm_old_rows NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.engagement_track('contact');
CREATE TRIGGER engagement_delete AFTER DELETE ON crm.contact
    REFERENCING OLD TABLE AS crm_old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.engagement_track('contact');
CREATE TRIGGER engagement_insert AFTER INSERT ON crm.opportunity
    REFERENCING NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.engagement_track('opportunity');
CREATE TRIGGER engagement_update AFTER UPDATE ON crm.opportunity
    REFERENCING OLD TABLE AS crm_old_rows NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.engagement_track('opportunity');
CREATE TRIGGER engagement_delete AFTER DELETE ON crm.opportunity
    REFERENCING OLD TABLE AS crm_old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.engagement_track('opportunity');
COMMENT ON TRIGGER engagement_insert ON crm.activity IS 'Contact, lead and account aggregates of the new activities';
COMMENT ON TRIGGER engagement_update ON crm.activity IS 'Contact, lead and account aggregates of the changed activities (old rows out, new rows in)';
COMMENT ON TRIGGER engagement_delete ON crm.activity IS 'Contact, lead and account aggregates of the deleted activities';
COMMENT ON TRIGGER engagement_insert ON crm.contact IS 'Contact count of the accounts of the new contacts';
COMMENT ON TRIGGER engagement_update ON crm.contact IS 'Contact count of the accounts contacts moved between';
COMMENT ON TRIGGER engagement_delete ON crm.contact IS 'Contact count of the accounts of the deleted contacts';
COMMENT ON TRIGGER engagement_insert ON crm.opportunity IS 'Open and won opportunities of the accounts of the new opportunities';
COMMENT ON TRIGGER engagement_update ON crm.opportunity IS 'Open and won opportunities of the accounts of the changed opportunities';
COMMENT ON TRIGGER engagement_delete ON crm.opportunity IS 'Open and won opportunities of the accounts of the deleted opportunities';

-- A lead converted into a contact hands its activities on: those with no
-- contact are linked to it (and to its account), so the contact's
-- engagement continues the lead's.
CREATE FUNCTION crm.engagement_lead_converted() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_engagement_lead_converted'
    LANGUAGE C;
COMMENT ON FUNCTION crm.engagement_lead_converted() IS
    'Statement trigger: links the activities of leads the statement converted to the contact (and account) they were converted into, where they had none';
CREATE TRIGGER engagement_convert AFTER UPDATE ON crm.lead
    REFERENCING OLD TABLE AS crm_old_rows NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.engagement_lead_converted();
COMMENT ON TRIGGER engagement_convert ON crm.lead IS 'Activities of a converted lead follow it to its contact';

-- A changed weight or half-life changes every score of the tenant.
CREATE FUNCTION crm.engagement_settings_changed() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_engagement_settings_changed'
    LANGUAGE C;
COMMENT ON FUNCTION crm.engagement_settings_changed() IS
    'Internal: trigger that recomputes the aggregates of the tenants whose weights or half-life a statement changed, and of every tenant after a default weight changed or a table the aggregates are made from was truncated';
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['engagement_setting', 'activity_weight'] LOOP
        EXECUTE format('CREATE TRIGGER engagement_refresh_insert AFTER INSERT ON crm.%I'
                       ' REFERENCING NEW TABLE AS crm_new_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION crm.engagement_settings_changed()', t);
        EXECUTE format('CREATE TRIGGER engagement_refresh_update AFTER UPDATE ON crm.%I'
                       ' REFERENCING OLD TABLE AS crm_old_rows NEW TABLE AS crm_new_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION crm.engagement_settings_changed()', t);
        EXECUTE format('CREATE TRIGGER engagement_refresh_delete AFTER DELETE ON crm.%I'
                       ' REFERENCING OLD TABLE AS crm_old_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION crm.engagement_settings_changed()', t);
        EXECUTE format('COMMENT ON TRIGGER engagement_refresh_insert ON crm.%I IS %L', t,
                       'New settings recompute the scores of their tenants');
        EXECUTE format('COMMENT ON TRIGGER engagement_refresh_update ON crm.%I IS %L', t,
                       'Changed settings recompute the scores of their tenants');
        EXECUTE format('COMMENT ON TRIGGER engagement_refresh_delete ON crm.%I IS %L', t,
                       'Removed settings recompute the scores of their tenants');
    END LOOP;
    -- TRUNCATE fires no row trigger: the aggregates of every tenant are
    -- recomputed after it, from the rows left (none of the table truncated)
    FOREACH t IN ARRAY ARRAY['engagement_setting', 'activity_weight', 'activity', 'contact', 'lead',
                             'account', 'opportunity'] LOOP
        EXECUTE format('CREATE TRIGGER engagement_refresh_truncate AFTER TRUNCATE ON crm.%I'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION crm.engagement_settings_changed()', t);
        EXECUTE format('COMMENT ON TRIGGER engagement_refresh_truncate ON crm.%I IS %L', t,
                       'After TRUNCATE every tenant''s aggregates are recomputed from the rows left');
    END LOOP;
END
$$;
CREATE TRIGGER engagement_refresh AFTER UPDATE OF default_weight ON crm.activity_type
    FOR EACH STATEMENT EXECUTE FUNCTION crm.engagement_settings_changed();
COMMENT ON TRIGGER engagement_refresh ON crm.activity_type IS 'A new default weight recomputes the scores';
