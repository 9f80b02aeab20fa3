-- src/sql/20_pipeline.sql: pipelines and their stages.

CREATE TABLE crm.pipeline (
    tenant_id   uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    id          uuid NOT NULL DEFAULT crm.uuid_generate_v7(),
    name        text NOT NULL CHECK (btrim(name) <> ''),
    is_default  boolean NOT NULL DEFAULT false,
    is_active   boolean NOT NULL DEFAULT true,
    sequence    integer NOT NULL DEFAULT 10,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX pipeline_name_key ON crm.pipeline (tenant_id, crm.casefold(name));
CREATE UNIQUE INDEX pipeline_one_default_key ON crm.pipeline (tenant_id) WHERE is_default;
COMMENT ON TABLE crm.pipeline IS 'A sales process: an ordered set of stages that leads and opportunities move through';
COMMENT ON COLUMN crm.pipeline.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.pipeline.id IS 'Row id (UUIDv7)';
COMMENT ON COLUMN crm.pipeline.name IS 'Pipeline name, unique within the tenant';
COMMENT ON COLUMN crm.pipeline.is_default IS 'The pipeline of new records that name none (one per tenant)';
COMMENT ON COLUMN crm.pipeline.is_active IS 'False hides the pipeline from new work';
COMMENT ON COLUMN crm.pipeline.sequence IS 'Display order';
COMMENT ON COLUMN crm.pipeline.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.pipeline.updated_at IS 'When the row last changed';

CREATE TABLE crm.stage (
    tenant_id         uuid NOT NULL DEFAULT crm.current_tenant(),
    id                uuid NOT NULL DEFAULT crm.uuid_generate_v7(),
    pipeline_id       uuid NOT NULL,
    name              text NOT NULL CHECK (btrim(name) <> ''),
    sequence          integer NOT NULL,
    probability       numeric(5,2) NOT NULL CHECK (probability BETWEEN 0 AND 100),
    kind              text NOT NULL DEFAULT 'open' CHECK (kind IN ('open', 'won', 'lost')),
    forecast_category text NOT NULL DEFAULT 'pipeline'
                      CHECK (forecast_category IN ('pipeline', 'best_case', 'commit', 'closed', 'omitted')),
    color             text CHECK (color ~ '^#[0-9A-Fa-f]{6}$'),
    rotting_days      integer CHECK (rotting_days > 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    -- a record's stage is one of its pipeline: stage_sync (src/stage.c)
    -- refuses any other, and stage_keep_records keeps a stage while records
    -- are in it
    FOREIGN KEY (tenant_id, pipeline_id) REFERENCES crm.pipeline (tenant_id, id) ON DELETE CASCADE,
    CHECK (kind <> 'won' OR probability = 100),
    CHECK (kind <> 'lost' OR probability = 0)
);
CREATE UNIQUE INDEX stage_name_key ON crm.stage (tenant_id, pipeline_id, crm.casefold(name));
CREATE INDEX stage_order_idx ON crm.stage (tenant_id, pipeline_id, sequence);
COMMENT ON TABLE crm.stage IS 'A step of a pipeline, with the win probability of the records in it';
COMMENT ON COLUMN crm.stage.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.stage.id IS 'Row id (UUIDv7)';
COMMENT ON COLUMN crm.stage.pipeline_id IS 'The pipeline the stage belongs to';
COMMENT ON COLUMN crm.stage.name IS 'Stage name, unique within the pipeline';
COMMENT ON COLUMN crm.stage.sequence IS 'Order within the pipeline; the lowest is where new records start';
COMMENT ON COLUMN crm.stage.probability IS 'Win probability, 0-100, of a record in this stage (100 for won, 0 for lost); when it changes, the records whose probability was the stage''s follow it';
COMMENT ON COLUMN crm.stage.kind IS 'open, won or lost: entering a won or lost stage closes the record; cannot change while records are in the stage';
COMMENT ON COLUMN crm.stage.forecast_category IS 'Default forecast category of the records in it: pipeline, best_case, commit, closed, omitted';
COMMENT ON COLUMN crm.stage.color IS 'Kanban column colour, #RRGGBB';
COMMENT ON COLUMN crm.stage.rotting_days IS 'Days without change after which a record in this stage counts as stale';
COMMENT ON COLUMN crm.stage.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.stage.updated_at IS 'When the row last changed';
