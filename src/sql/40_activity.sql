-- src/sql/40_activity.sql: the activity registry and the activity log.

CREATE TABLE crm.activity_type (
    code           text PRIMARY KEY CHECK (code ~ '^[a-z][a-z0-9_]*$'),
    name           text NOT NULL CHECK (btrim(name) <> ''),
    module         text NOT NULL CHECK (module IN ('crm', 'communication', 'sales', 'project',
                                                   'document', 'marketing', 'support')),
    default_weight numeric(6,2) NOT NULL DEFAULT 1 CHECK (default_weight >= 0),
    is_builtin     boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE crm.activity_type IS 'The kinds of activity, with the module they come from and their default engagement weight (global lookup)';
COMMENT ON COLUMN crm.activity_type.code IS 'Type code, e.g. call, quote_created';
COMMENT ON COLUMN crm.activity_type.name IS 'Display name';
COMMENT ON COLUMN crm.activity_type.module IS 'Module the activity comes from: crm, communication, sales, project, document, marketing, support';
COMMENT ON COLUMN crm.activity_type.default_weight IS 'Default weight of one such activity in engagement scoring';
COMMENT ON COLUMN crm.activity_type.is_builtin IS 'Shipped by the extension (left out of pg_dump; added rows are dumped)';
COMMENT ON COLUMN crm.activity_type.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.activity_type.updated_at IS 'When the row last changed';

-- The CRM activities of shared/seeds/004 and the cross-module activity types
-- of shared/seeds/000.  The weights are our own starting values (a signed
-- contract or a payment says more about engagement than an opened e-mail);
-- scoring models may override them.
INSERT INTO crm.activity_type (code, name, module, default_weight, is_builtin) VALUES
    ('call',                      'Call',                      'communication',  5, true),
    ('meeting',                   'Meeting',                   'communication', 10, true),
    ('email',                     'E-mail',                    'communication',  3, true),
    ('task',                      'Task',                      'crm',            2, true),
    ('note',                      'Note',                      'crm',            1, true),
    ('quote_created',             'Quote created',             'sales',          8, true),
    ('quote_sent',                'Quote sent',                'sales',          6, true),
    ('quote_accepted',            'Quote accepted',            'sales',         15, true),
    ('order_created',             'Order created',             'sales',         20, true),
    ('order_completed',           'Order completed',           'sales',         15, true),
    ('payment_received',          'Payment received',          'sales',         20, true),
    ('project_created',           'Project created',           'project',        8, true),
    ('project_started',           'Project started',           'project',        6, true),
    ('project_completed',         'Project completed',         'project',       10, true),
    ('task_assigned',             'Task assigned',             'project',        2, true),
    ('task_completed',            'Task completed',            'project',        3, true),
    ('project_milestone_reached', 'Project milestone reached', 'project',        5, true),
    ('email_sent',                'E-mail sent',               'communication',  2, true),
    ('email_opened',              'E-mail opened',             'marketing',      2, true),
    ('email_clicked',             'E-mail link clicked',       'marketing',      4, true),
    ('call_made',                 'Call made',                 'communication',  5, true),
    ('meeting_scheduled',         'Meeting scheduled',         'communication',  6, true),
    ('document_uploaded',         'Document uploaded',         'document',       2, true),
    ('document_downloaded',       'Document downloaded',       'document',       3, true),
    ('contract_signed',           'Contract signed',           'document',      25, true);

CREATE TABLE crm.activity (
    tenant_id      uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    id             uuid NOT NULL DEFAULT crm.uuid_generate_v7(),
    activity_type  text NOT NULL REFERENCES crm.activity_type (code),
    module         text NOT NULL,
    direction      text CHECK (direction IN ('inbound', 'outbound', 'internal')),
    subject        text NOT NULL CHECK (btrim(subject) <> ''),
    description    text,
    status         text NOT NULL DEFAULT 'scheduled'
                   CHECK (status IN ('scheduled', 'in_progress', 'completed', 'cancelled')),
    priority       text NOT NULL DEFAULT 'medium' CHECK (priority IN ('low', 'medium', 'high', 'urgent')),
    -- finite: the engagement score decays from it (an infinite time has no age)
    occurred_at    timestamptz NOT NULL DEFAULT now()
                   CONSTRAINT activity_occurred_at_finite CHECK (occurred_at > '-infinity' AND occurred_at < 'infinity'),
    due_at         timestamptz,
    completed_at   timestamptz,
    start_at       timestamptz,
    end_at         timestamptz,
    contact_id     uuid,
    account_id     uuid,
    lead_id        uuid,
    opportunity_id uuid,
    owner_id       uuid,
    details        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(details) = 'object'),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT activity_tenant_id_contact_id_fkey FOREIGN KEY (tenant_id, contact_id) REFERENCES crm.contact (tenant_id, id)
        DEFERRABLE,
    CONSTRAINT activity_tenant_id_account_id_fkey FOREIGN KEY (tenant_id, account_id) REFERENCES crm.account (tenant_id, id)
        DEFERRABLE,
    CONSTRAINT activity_tenant_id_lead_id_fkey FOREIGN KEY (tenant_id, lead_id) REFERENCES crm.lead (tenant_id, id)
        DEFERRABLE,
    CONSTRAINT activity_tenant_id_opportunity_id_fkey FOREIGN KEY (tenant_id, opportunity_id) REFERENCES crm.opportunity (tenant_id, id)
        DEFERRABLE,
    CONSTRAINT activity_tenant_id_owner_id_fkey FOREIGN KEY (tenant_id, owner_id) REFERENCES crm.app_user (tenant_id, id)
        DEFERRABLE,
    CHECK (end_at >= start_at)
);
CREATE INDEX activity_contact_time_idx ON crm.activity (tenant_id, contact_id, occurred_at DESC);
CREATE INDEX activity_account_time_idx ON crm.activity (tenant_id, account_id, occurred_at DESC);
CREATE INDEX activity_lead_idx ON crm.activity (tenant_id, lead_id);
CREATE INDEX activity_opportunity_idx ON crm.activity (tenant_id, opportunity_id);
CREATE INDEX activity_owner_due_idx ON crm.activity (tenant_id, owner_id, due_at);
COMMENT ON TABLE crm.activity IS 'Something that happened or is planned with a customer: call, meeting, task, e-mail, note, quote, order, ...';
COMMENT ON COLUMN crm.activity.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.activity.id IS 'Row id (UUIDv7)';
COMMENT ON COLUMN crm.activity.activity_type IS 'Type code from crm.activity_type';
COMMENT ON COLUMN crm.activity.module IS 'Module of the activity type (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.activity.direction IS 'inbound, outbound or internal';
COMMENT ON COLUMN crm.activity.subject IS 'Subject';
COMMENT ON COLUMN crm.activity.description IS 'Details';
COMMENT ON COLUMN crm.activity.status IS 'scheduled, in_progress, completed, cancelled';
COMMENT ON COLUMN crm.activity.priority IS 'low, medium, high, urgent';
COMMENT ON COLUMN crm.activity.occurred_at IS 'When it happened (or was logged); a finite time';
COMMENT ON COLUMN crm.activity.due_at IS 'When a task or call is due';
COMMENT ON COLUMN crm.activity.completed_at IS 'When the status became completed; NULL while not completed (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.activity.start_at IS 'Meeting start';
COMMENT ON COLUMN crm.activity.end_at IS 'Meeting end';
COMMENT ON COLUMN crm.activity.contact_id IS 'Related contact';
COMMENT ON COLUMN crm.activity.account_id IS 'Related account';
COMMENT ON COLUMN crm.activity.lead_id IS 'Related lead';
COMMENT ON COLUMN crm.activity.opportunity_id IS 'Related opportunity';
COMMENT ON COLUMN crm.activity.owner_id IS 'Responsible user';
COMMENT ON COLUMN crm.activity.details IS 'Type-specific data, e.g. {"quote_id": 456, "amount": 5000}';
COMMENT ON COLUMN crm.activity.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.activity.updated_at IS 'When the row last changed';

CREATE FUNCTION crm.activity_sync() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_activity_sync'
    LANGUAGE C;
COMMENT ON FUNCTION crm.activity_sync() IS
    'Trigger: an activity''s module follows its type, an unknown type is refused, completed_at follows status';

CREATE TRIGGER activity_sync BEFORE INSERT OR UPDATE ON crm.activity
    FOR EACH ROW EXECUTE FUNCTION crm.activity_sync();
COMMENT ON TRIGGER activity_sync ON crm.activity IS 'Module from the activity type; completed_at from status';
