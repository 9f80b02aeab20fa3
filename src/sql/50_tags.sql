-- src/sql/50_tags.sql: tags and the tagging of accounts, contacts, leads and
-- opportunities (one table per tagged entity, so each has a real foreign key).

CREATE TABLE crm.tag (
    tenant_id   uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    id          uuid NOT NULL DEFAULT crm.uuid_generate_v7(),
    name        text NOT NULL CHECK (btrim(name) <> ''),
    color       text CHECK (color ~ '^#[0-9A-Fa-f]{6}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX tag_name_key ON crm.tag (tenant_id, crm.casefold(name));
COMMENT ON TABLE crm.tag IS 'A label for quick categorisation (High Value, Enterprise, ...)';
COMMENT ON COLUMN crm.tag.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.tag.id IS 'Row id (UUIDv7)';
COMMENT ON COLUMN crm.tag.name IS 'Tag name, unique within the tenant (case-insensitive)';
COMMENT ON COLUMN crm.tag.color IS 'Colour, #RRGGBB';
COMMENT ON COLUMN crm.tag.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.tag.updated_at IS 'When the row last changed';

CREATE TABLE crm.account_tag (
    tenant_id   uuid NOT NULL DEFAULT crm.current_tenant(),
    account_id  uuid NOT NULL,
    tag_id      uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, account_id, tag_id),
    FOREIGN KEY (tenant_id, account_id) REFERENCES crm.account (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, tag_id) REFERENCES crm.tag (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX account_tag_tag_idx ON crm.account_tag (tenant_id, tag_id);
COMMENT ON TABLE crm.account_tag IS 'Tags of accounts';

CREATE TABLE crm.contact_tag (
    tenant_id   uuid NOT NULL DEFAULT crm.current_tenant(),
    contact_id  uuid NOT NULL,
    tag_id      uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, contact_id, tag_id),
    FOREIGN KEY (tenant_id, contact_id) REFERENCES crm.contact (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, tag_id) REFERENCES crm.tag (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX contact_tag_tag_idx ON crm.contact_tag (tenant_id, tag_id);
COMMENT ON TABLE crm.contact_tag IS 'Tags of contacts';

CREATE TABLE crm.lead_tag (
    tenant_id   uuid NOT NULL DEFAULT crm.current_tenant(),
    lead_id     uuid NOT NULL,
    tag_id      uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, lead_id, tag_id),
    FOREIGN KEY (tenant_id, lead_id) REFERENCES crm.lead (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, tag_id) REFERENCES crm.tag (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX lead_tag_tag_idx ON crm.lead_tag (tenant_id, tag_id);
COMMENT ON TABLE crm.lead_tag IS 'Tags of leads';

CREATE TABLE crm.opportunity_tag (
    tenant_id      uuid NOT NULL DEFAULT crm.current_tenant(),
    opportunity_id uuid NOT NULL,
    tag_id         uuid NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, opportunity_id, tag_id),
    FOREIGN KEY (tenant_id, opportunity_id) REFERENCES crm.opportunity (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, tag_id) REFERENCES crm.tag (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX opportunity_tag_tag_idx ON crm.opportunity_tag (tenant_id, tag_id);
COMMENT ON TABLE crm.opportunity_tag IS 'Tags of opportunities';

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['account', 'contact', 'lead', 'opportunity'] LOOP
        EXECUTE format('COMMENT ON COLUMN crm.%I.tenant_id IS %L', t || '_tag', 'Owning tenant');
        EXECUTE format('COMMENT ON COLUMN crm.%I.%I IS %L', t || '_tag', t || '_id', 'The tagged ' || t);
        EXECUTE format('COMMENT ON COLUMN crm.%I.tag_id IS %L', t || '_tag', 'The tag');
        EXECUTE format('COMMENT ON COLUMN crm.%I.created_at IS %L', t || '_tag', 'When the tag was put on');
        EXECUTE format('COMMENT ON COLUMN crm.%I.updated_at IS %L', t || '_tag', 'When the row last changed');
    END LOOP;
END
$$;
