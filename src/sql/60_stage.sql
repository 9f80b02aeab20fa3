-- src/sql/60_stage.sql: stage rules and stage history of leads and
-- opportunities (C triggers in src/stage.c), consent stamps of contacts and
-- updated_at of every table (src/touch.c).

CREATE TABLE crm.stage_history (
    tenant_id       uuid NOT NULL DEFAULT crm.current_tenant(),
    id              uuid NOT NULL DEFAULT crm.uuid_generate_v7(),
    lead_id         uuid,
    opportunity_id  uuid,
    pipeline_id     uuid NOT NULL,
    from_stage_id   uuid,
    to_stage_id     uuid NOT NULL,
    amount          numeric(18,2),
    currency        text NOT NULL,
    probability     numeric(5,2) NOT NULL,
    changed_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    changed_by      uuid,
    changed_by_role name NOT NULL DEFAULT CURRENT_USER,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    -- no foreign key to the record: history outlives it (a deleted deal's
    -- history stays), and 100k history rows cost no 100k key checks
    CHECK (num_nonnulls(lead_id, opportunity_id) = 1)
);
CREATE INDEX stage_history_lead_idx ON crm.stage_history (tenant_id, lead_id, changed_at) WHERE lead_id IS NOT NULL;
CREATE INDEX stage_history_opportunity_idx ON crm.stage_history (tenant_id, opportunity_id, changed_at) WHERE opportunity_id IS NOT NULL;
COMMENT ON TABLE crm.stage_history IS 'One row per stage change of a lead or opportunity (and one for the first stage, on creation), written by a trigger whichever client made the change; kept when the record is deleted';
COMMENT ON COLUMN crm.stage_history.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.stage_history.id IS 'Row id (UUIDv7)';
COMMENT ON COLUMN crm.stage_history.lead_id IS 'The lead that moved (or NULL); not a foreign key, as the history outlives a deleted lead';
COMMENT ON COLUMN crm.stage_history.opportunity_id IS 'The opportunity that moved (or NULL); not a foreign key, as the history outlives a deleted opportunity';
COMMENT ON COLUMN crm.stage_history.pipeline_id IS 'Pipeline after the change';
COMMENT ON COLUMN crm.stage_history.from_stage_id IS 'Stage before the change; NULL for the row written when the record was created';
COMMENT ON COLUMN crm.stage_history.to_stage_id IS 'Stage after the change';
COMMENT ON COLUMN crm.stage_history.amount IS 'Amount (expected revenue of a lead) at that moment';
COMMENT ON COLUMN crm.stage_history.currency IS 'Currency of amount';
COMMENT ON COLUMN crm.stage_history.probability IS 'Probability after the change';
COMMENT ON COLUMN crm.stage_history.changed_at IS 'When the change was made (clock time, so concurrent changes order as they happened)';
COMMENT ON COLUMN crm.stage_history.changed_by IS 'CRM user who made the change (crm.current_user_id())';
COMMENT ON COLUMN crm.stage_history.changed_by_role IS 'Database role that made the change';
COMMENT ON COLUMN crm.stage_history.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.stage_history.updated_at IS 'When the row last changed';

CREATE FUNCTION crm.stage_sync() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_stage_sync'
    LANGUAGE C;
COMMENT ON FUNCTION crm.stage_sync() IS
    'Trigger: default pipeline and stage; the lifecycle of a lead or opportunity (status, probability, closed_at, lost_reason, converted_at follow the stage and the conversion; id and tenant_id fixed; a converted lead final; an archived record does not move)';

CREATE FUNCTION crm.stage_history_record() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_stage_history_record'
    LANGUAGE C;
COMMENT ON FUNCTION crm.stage_history_record() IS
    'Statement trigger: one crm.stage_history row per record the statement created or whose stage it changed, read from the transition tables in C and inserted from arrays';

CREATE FUNCTION crm.stage_follow() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_stage_follow'
    LANGUAGE C;
COMMENT ON FUNCTION crm.stage_follow() IS
    'Trigger on crm.stage: refuses a kind change while records are in the stage (55000); records whose probability is the stage''s follow a new probability';

CREATE FUNCTION crm.stage_keep_records() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_stage_keep_records'
    LANGUAGE C;
COMMENT ON FUNCTION crm.stage_keep_records() IS
    'Trigger on crm.stage: refuses (23503) to delete a stage, or move it to another pipeline, while leads or opportunities are in it, and to truncate the stages while any exists (what a foreign key to the stage would do; stage_sync checks the records'' side)';

CREATE FUNCTION crm.touch_updated_at() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_touch_updated_at'
    LANGUAGE C;
COMMENT ON FUNCTION crm.touch_updated_at() IS 'Trigger: updated_at = now() on every UPDATE';

CREATE FUNCTION crm.stamp_flag_times() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_stamp_flag_times'
    LANGUAGE C;
COMMENT ON FUNCTION crm.stamp_flag_times() IS
    'Trigger: for each (flag, flag_at) column pair given, records since when the flag is set';

CREATE TRIGGER stage_sync BEFORE INSERT OR UPDATE ON crm.lead
    FOR EACH ROW EXECUTE FUNCTION crm.stage_sync();
CREATE TRIGGER stage_sync BEFORE INSERT OR UPDATE ON crm.opportunity
    FOR EACH ROW EXECUTE FUNCTION crm.stage_sync();

CREATE TRIGGER stage_history AFTER UPDATE ON crm.lead
    REFERENCING OLD TABLE AS crm_old_rows NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.stage_history_record('lead_id', 'expected_revenue');
CREATE TRIGGER stage_history AFTER UPDATE ON crm.opportunity
    REFERENCING OLD TABLE AS crm_old_rows NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.stage_history_record('opportunity_id', 'amount');
CREATE TRIGGER stage_history_created AFTER INSERT ON crm.lead
    REFERENCING NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.stage_history_record('lead_id', 'expected_revenue');
CREATE TRIGGER stage_history_created AFTER INSERT ON crm.opportunity
    REFERENCING NEW TABLE AS crm_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm.stage_history_record('opportunity_id', 'amount');
CREATE TRIGGER stage_follow AFTER UPDATE OF kind, probability ON crm.stage
    FOR EACH ROW EXECUTE FUNCTION crm.stage_follow();
CREATE TRIGGER stage_keep_records AFTER DELETE OR UPDATE OF pipeline_id ON crm.stage
    FOR EACH ROW EXECUTE FUNCTION crm.stage_keep_records();
CREATE TRIGGER stage_keep_records_truncate AFTER TRUNCATE ON crm.stage
    FOR EACH STATEMENT EXECUTE FUNCTION crm.stage_keep_records();

CREATE TRIGGER consent_times BEFORE INSERT OR UPDATE ON crm.contact
    FOR EACH ROW EXECUTE FUNCTION crm.stamp_flag_times(
        'do_not_call', 'do_not_call_at',
        'email_opt_out', 'email_opt_out_at',
        'profiling_opt_out', 'profiling_opt_out_at');
COMMENT ON TRIGGER stage_sync ON crm.lead IS 'Default pipeline and stage; the lead lifecycle (status, probability, closed_at, lost_reason, conversion)';
COMMENT ON TRIGGER stage_sync ON crm.opportunity IS 'Default pipeline and stage; the deal lifecycle (status, probability, closed_at, lost_reason)';
COMMENT ON TRIGGER stage_history ON crm.lead IS 'One crm.stage_history row per lead whose stage the statement changed';
COMMENT ON TRIGGER stage_history ON crm.opportunity IS 'One crm.stage_history row per opportunity whose stage the statement changed';
COMMENT ON TRIGGER stage_history_created ON crm.lead IS 'One crm.stage_history row (from no stage to the first) per lead the statement created';
COMMENT ON TRIGGER stage_history_created ON crm.opportunity IS 'One crm.stage_history row (from no stage to the first) per opportunity the statement created';
COMMENT ON TRIGGER stage_follow ON crm.stage IS 'The kind of a stage in use cannot change; records whose probability is the stage''s follow a new probability';
COMMENT ON TRIGGER stage_keep_records ON crm.stage IS 'A stage that leads or opportunities are in cannot be deleted or moved to another pipeline (23503)';
COMMENT ON TRIGGER stage_keep_records_truncate ON crm.stage IS 'The stages cannot be truncated while any lead or opportunity exists (23503)';
COMMENT ON TRIGGER consent_times ON crm.contact IS 'Since when do_not_call, email_opt_out and profiling_opt_out hold';
