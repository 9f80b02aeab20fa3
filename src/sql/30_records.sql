-- src/sql/30_records.sql: accounts, contacts, leads and opportunities.
--
-- Value sets follow the CRM module reference in shared/seeds/004; the lead's
-- fit fields are those the lead-scoring model of shared/seeds/002 scores on
-- (company size, industry, budget, purchase timeline, decision maker).

-- The currency of a new amount: the tenant's default when the row names
-- none.  A trigger, not a column default: a default that reads crm.tenant
-- cannot run inside a Citus shard query (src/currency.c).
CREATE FUNCTION crm.currency_default() RETURNS trigger
    AS 'MODULE_PATHNAME', 'crm_currency_default'
    LANGUAGE C;
COMMENT ON FUNCTION crm.currency_default() IS
    'Internal: BEFORE INSERT trigger: a NULL currency becomes the default currency of the row''s tenant (USD when there is none)';

CREATE TABLE crm.account (
    tenant_id         uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    id                uuid NOT NULL DEFAULT crm.uuid_generate_v7(),
    name              text NOT NULL CHECK (btrim(name) <> ''),
    website           text,
    phone             text,
    email             crm.email_address,
    account_type      text NOT NULL DEFAULT 'prospect'
                      CHECK (account_type IN ('prospect', 'customer', 'partner', 'vendor', 'competitor', 'other')),
    industry          text CHECK (industry IN ('technology', 'finance', 'healthcare', 'education', 'manufacturing',
                                               'retail', 'real_estate', 'consulting', 'media', 'energy',
                                               'government', 'nonprofit', 'other')),
    rating            text CHECK (rating IN ('cold', 'warm', 'hot')),
    employees         integer CHECK (employees >= 0),
    annual_revenue    numeric(18,2) CHECK (annual_revenue >= 0),
    currency          text NOT NULL REFERENCES crm.currency (code),
    billing_street    text,
    billing_city      text,
    billing_state     text,
    billing_zip       text,
    billing_country   text,
    description       text,
    parent_account_id uuid,
    owner_id          uuid,
    custom            jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(custom) = 'object'),
    archived_at       timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT account_tenant_id_parent_account_id_fkey FOREIGN KEY (tenant_id, parent_account_id) REFERENCES crm.account (tenant_id, id)
        DEFERRABLE,
    CONSTRAINT account_tenant_id_owner_id_fkey FOREIGN KEY (tenant_id, owner_id) REFERENCES crm.app_user (tenant_id, id)
        DEFERRABLE,
    CHECK (parent_account_id <> id)
);
CREATE INDEX account_name_idx ON crm.account (tenant_id, crm.casefold(name));
CREATE INDEX account_owner_idx ON crm.account (tenant_id, owner_id);
CREATE INDEX account_parent_idx ON crm.account (tenant_id, parent_account_id);
COMMENT ON TABLE crm.account IS 'A company or organisation: customer, prospect, partner, ...';
COMMENT ON COLUMN crm.account.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.account.id IS 'Row id (UUIDv7)';
COMMENT ON COLUMN crm.account.name IS 'Company name';
COMMENT ON COLUMN crm.account.website IS 'Company website';
COMMENT ON COLUMN crm.account.phone IS 'Main phone';
COMMENT ON COLUMN crm.account.email IS 'Main e-mail address';
COMMENT ON COLUMN crm.account.account_type IS 'prospect, customer, partner, vendor, competitor, other';
COMMENT ON COLUMN crm.account.industry IS 'Industry';
COMMENT ON COLUMN crm.account.rating IS 'cold, warm, hot';
COMMENT ON COLUMN crm.account.employees IS 'Number of employees';
COMMENT ON COLUMN crm.account.annual_revenue IS 'Annual revenue, in currency';
COMMENT ON COLUMN crm.account.currency IS 'Currency of annual_revenue (ISO 4217); NULL or omitted: the tenant''s default currency (set by crm.currency_default())';
CREATE TRIGGER currency_default BEFORE INSERT ON crm.account
    FOR EACH ROW EXECUTE FUNCTION crm.currency_default();
COMMENT ON TRIGGER currency_default ON crm.account IS 'Fills a NULL currency with the tenant''s default currency';
COMMENT ON COLUMN crm.account.billing_street IS 'Billing address: street';
COMMENT ON COLUMN crm.account.billing_city IS 'Billing address: city';
COMMENT ON COLUMN crm.account.billing_state IS 'Billing address: state or province';
COMMENT ON COLUMN crm.account.billing_zip IS 'Billing address: ZIP or postal code';
COMMENT ON COLUMN crm.account.billing_country IS 'Billing address: country';
COMMENT ON COLUMN crm.account.description IS 'Free text';
COMMENT ON COLUMN crm.account.parent_account_id IS 'Parent company';
COMMENT ON COLUMN crm.account.owner_id IS 'Responsible user';
COMMENT ON COLUMN crm.account.custom IS 'User-defined fields';
COMMENT ON COLUMN crm.account.archived_at IS 'When the record was archived (kept instead of deleted; reports and kanban leave it out); NULL while active';
COMMENT ON COLUMN crm.account.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.account.updated_at IS 'When the row last changed';

CREATE TABLE crm.contact (
    tenant_id            uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    id                   uuid NOT NULL DEFAULT crm.uuid_generate_v7(),
    first_name           text NOT NULL CHECK (btrim(first_name) <> ''),
    last_name            text,
    email                crm.email_address,
    phone                text,
    mobile               text,
    job_title            text,
    department           text,
    account_id           uuid,
    is_primary           boolean NOT NULL DEFAULT false,
    lead_source          text,
    do_not_call          boolean NOT NULL DEFAULT false,
    do_not_call_at       timestamptz,
    email_opt_out        boolean NOT NULL DEFAULT false,
    email_opt_out_at     timestamptz,
    profiling_opt_out    boolean NOT NULL DEFAULT false,
    profiling_opt_out_at timestamptz,
    owner_id             uuid,
    custom               jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(custom) = 'object'),
    archived_at          timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT contact_tenant_id_account_id_fkey FOREIGN KEY (tenant_id, account_id) REFERENCES crm.account (tenant_id, id)
        DEFERRABLE,
    CONSTRAINT contact_tenant_id_owner_id_fkey FOREIGN KEY (tenant_id, owner_id) REFERENCES crm.app_user (tenant_id, id)
        DEFERRABLE
);
CREATE UNIQUE INDEX contact_email_key ON crm.contact (tenant_id, crm.casefold(email));
CREATE INDEX contact_account_idx ON crm.contact (tenant_id, account_id);
CREATE INDEX contact_owner_idx ON crm.contact (tenant_id, owner_id);
COMMENT ON TABLE crm.contact IS 'A person the company deals with, usually at an account';
COMMENT ON COLUMN crm.contact.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.contact.id IS 'Row id (UUIDv7)';
COMMENT ON COLUMN crm.contact.first_name IS 'First name';
COMMENT ON COLUMN crm.contact.last_name IS 'Last name';
COMMENT ON COLUMN crm.contact.email IS 'E-mail address, unique within the tenant (case-insensitive)';
COMMENT ON COLUMN crm.contact.phone IS 'Phone';
COMMENT ON COLUMN crm.contact.mobile IS 'Mobile phone';
COMMENT ON COLUMN crm.contact.job_title IS 'Job title';
COMMENT ON COLUMN crm.contact.department IS 'Department';
COMMENT ON COLUMN crm.contact.account_id IS 'The account the contact works at';
COMMENT ON COLUMN crm.contact.is_primary IS 'Primary contact of the account';
COMMENT ON COLUMN crm.contact.lead_source IS 'Where the contact came from';
COMMENT ON COLUMN crm.contact.do_not_call IS 'Consent: do not phone';
COMMENT ON COLUMN crm.contact.do_not_call_at IS 'Since when do_not_call holds; NULL while it does not (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.contact.email_opt_out IS 'Consent: no marketing e-mail';
COMMENT ON COLUMN crm.contact.email_opt_out_at IS 'Since when email_opt_out holds; NULL while it does not (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.contact.profiling_opt_out IS 'Consent: no scoring or profiling';
COMMENT ON COLUMN crm.contact.profiling_opt_out_at IS 'Since when profiling_opt_out holds; NULL while it does not (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.contact.owner_id IS 'Responsible user';
COMMENT ON COLUMN crm.contact.custom IS 'User-defined fields';
COMMENT ON COLUMN crm.contact.archived_at IS 'When the record was archived (kept instead of deleted; reports and kanban leave it out); NULL while active';
COMMENT ON COLUMN crm.contact.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.contact.updated_at IS 'When the row last changed';

CREATE TABLE crm.lead (
    tenant_id            uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    id                   uuid NOT NULL DEFAULT crm.uuid_generate_v7(),
    name                 text NOT NULL CHECK (btrim(name) <> ''),
    contact_name         text,
    email                crm.email_address,
    phone                text,
    company_name         text,
    job_title            text,
    website              text,
    pipeline_id          uuid NOT NULL,
    stage_id             uuid NOT NULL,
    status               text NOT NULL CHECK (status IN ('open', 'won', 'lost', 'converted')),
    priority             text NOT NULL DEFAULT 'medium' CHECK (priority IN ('low', 'medium', 'high', 'urgent')),
    rating               text CHECK (rating IN ('cold', 'warm', 'hot')),
    source               text CHECK (source IN ('website', 'referral', 'cold_call', 'email_campaign', 'social_media',
                                                'trade_show', 'partner', 'advertisement', 'event', 'other')),
    expected_revenue     numeric(18,2) CHECK (expected_revenue >= 0),
    currency             text NOT NULL REFERENCES crm.currency (code),
    probability          numeric(5,2) NOT NULL CHECK (probability BETWEEN 0 AND 100),
    company_size         integer CHECK (company_size >= 0),
    industry             text CHECK (industry IN ('technology', 'finance', 'healthcare', 'education', 'manufacturing',
                                                  'retail', 'real_estate', 'consulting', 'media', 'energy',
                                                  'government', 'nonprofit', 'other')),
    budget               numeric(18,2) CHECK (budget >= 0),
    purchase_timeline    text CHECK (purchase_timeline IN ('immediate', 'within_month', 'within_quarter',
                                                           'within_year', 'no_timeline')),
    is_decision_maker    boolean,
    description          text,
    lost_reason          text,
    closed_at            timestamptz,
    converted_at         timestamptz,
    converted_account_id uuid,
    converted_contact_id uuid,
    owner_id             uuid,
    custom               jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(custom) = 'object'),
    archived_at          timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    -- no foreign key to the stage: stage_sync (src/stage.c) looks the stage
    -- up, locks it and refuses one of another tenant or pipeline, and
    -- crm.stage_keep_records() refuses to delete a stage records are in
    CONSTRAINT lead_tenant_id_converted_account_id_fkey FOREIGN KEY (tenant_id, converted_account_id) REFERENCES crm.account (tenant_id, id)
        DEFERRABLE,
    CONSTRAINT lead_tenant_id_converted_contact_id_fkey FOREIGN KEY (tenant_id, converted_contact_id) REFERENCES crm.contact (tenant_id, id)
        DEFERRABLE,
    CONSTRAINT lead_tenant_id_owner_id_fkey FOREIGN KEY (tenant_id, owner_id) REFERENCES crm.app_user (tenant_id, id)
        DEFERRABLE
);
CREATE INDEX lead_stage_idx ON crm.lead (tenant_id, pipeline_id, stage_id);
CREATE INDEX lead_owner_idx ON crm.lead (tenant_id, owner_id);
CREATE INDEX lead_email_idx ON crm.lead (tenant_id, crm.casefold(email));
CREATE INDEX lead_converted_account_idx ON crm.lead (tenant_id, converted_account_id);
CREATE INDEX lead_converted_contact_idx ON crm.lead (tenant_id, converted_contact_id);
COMMENT ON TABLE crm.lead IS 'A potential customer not yet qualified; converted into an account, contact and opportunity';
COMMENT ON COLUMN crm.lead.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.lead.id IS 'Row id (UUIDv7)';
COMMENT ON COLUMN crm.lead.name IS 'Lead title';
COMMENT ON COLUMN crm.lead.contact_name IS 'Name of the person';
COMMENT ON COLUMN crm.lead.email IS 'E-mail of the person';
COMMENT ON COLUMN crm.lead.phone IS 'Phone of the person';
COMMENT ON COLUMN crm.lead.company_name IS 'Company of the person';
COMMENT ON COLUMN crm.lead.job_title IS 'Job title of the person';
COMMENT ON COLUMN crm.lead.website IS 'Company website';
COMMENT ON COLUMN crm.lead.pipeline_id IS 'Pipeline (the tenant''s default when omitted)';
COMMENT ON COLUMN crm.lead.stage_id IS 'Stage (the pipeline''s first when omitted)';
COMMENT ON COLUMN crm.lead.status IS 'open, won or lost (the kind of the stage), or converted once crm.lead_convert() converted the lead, which is final (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.lead.priority IS 'low, medium, high, urgent';
COMMENT ON COLUMN crm.lead.rating IS 'cold, warm, hot';
COMMENT ON COLUMN crm.lead.source IS 'Where the lead came from';
COMMENT ON COLUMN crm.lead.expected_revenue IS 'Expected deal value, in currency';
COMMENT ON COLUMN crm.lead.currency IS 'Currency of expected_revenue and budget (ISO 4217); NULL or omitted: the tenant''s default currency (set by crm.currency_default())';
CREATE TRIGGER currency_default BEFORE INSERT ON crm.lead
    FOR EACH ROW EXECUTE FUNCTION crm.currency_default();
COMMENT ON TRIGGER currency_default ON crm.lead IS 'Fills a NULL currency with the tenant''s default currency';
COMMENT ON COLUMN crm.lead.probability IS 'Win probability 0-100: while open, the stage''s unless set by hand (a stage move resets it, NULL asks for the stage''s); 100 when won and 0 when lost (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.lead.company_size IS 'Fit: number of employees of the company';
COMMENT ON COLUMN crm.lead.industry IS 'Fit: industry of the company';
COMMENT ON COLUMN crm.lead.budget IS 'Fit: budget the lead has for the purchase, in currency';
COMMENT ON COLUMN crm.lead.purchase_timeline IS 'Fit: when they mean to buy: immediate, within_month, within_quarter, within_year, no_timeline';
COMMENT ON COLUMN crm.lead.is_decision_maker IS 'Fit: the person decides the purchase';
COMMENT ON COLUMN crm.lead.description IS 'Free text';
COMMENT ON COLUMN crm.lead.lost_reason IS 'Why the lead was lost; only a lost lead has one (cleared when it leaves the lost stage)';
COMMENT ON COLUMN crm.lead.closed_at IS 'When the lead entered a won or lost stage; NULL while open (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.lead.converted_at IS 'When the lead was converted (crm.lead_convert(), or converted_contact_id first set) (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.lead.converted_account_id IS 'Account the lead was converted into; set by the conversion only, and cleared only when that account is deleted (a client value is ignored before the conversion and refused after it)';
COMMENT ON COLUMN crm.lead.converted_contact_id IS 'Contact the lead was converted into: setting it converts the lead (as crm.lead_convert() does); afterwards it is cleared only when that contact is deleted, any other change is refused';
COMMENT ON COLUMN crm.lead.owner_id IS 'Responsible user';
COMMENT ON COLUMN crm.lead.custom IS 'User-defined fields';
COMMENT ON COLUMN crm.lead.archived_at IS 'When the record was archived (kept instead of deleted; reports and kanban leave it out); NULL while active';
COMMENT ON COLUMN crm.lead.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.lead.updated_at IS 'When the row last changed';

CREATE TABLE crm.opportunity (
    tenant_id           uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    id                  uuid NOT NULL DEFAULT crm.uuid_generate_v7(),
    name                text NOT NULL CHECK (btrim(name) <> ''),
    account_id          uuid,
    contact_id          uuid,
    lead_id             uuid,
    pipeline_id         uuid NOT NULL,
    stage_id            uuid NOT NULL,
    status              text NOT NULL CHECK (status IN ('open', 'won', 'lost')),
    amount              numeric(18,2) NOT NULL DEFAULT 0 CHECK (amount >= 0),
    currency            text NOT NULL REFERENCES crm.currency (code),
    probability         numeric(5,2) NOT NULL CHECK (probability BETWEEN 0 AND 100),
    expected_close_date date,
    opportunity_type    text NOT NULL DEFAULT 'new_business'
                        CHECK (opportunity_type IN ('new_business', 'renewal', 'upsell', 'cross_sell', 'other')),
    priority            text NOT NULL DEFAULT 'medium' CHECK (priority IN ('low', 'medium', 'high', 'urgent')),
    source              text CHECK (source IN ('website', 'referral', 'cold_call', 'email_campaign', 'social_media',
                                               'trade_show', 'partner', 'advertisement', 'event', 'other')),
    forecast_category   text CHECK (forecast_category IN ('pipeline', 'best_case', 'commit', 'closed', 'omitted')),
    next_step           text,
    description         text,
    lost_reason         text,
    closed_at           timestamptz,
    owner_id            uuid,
    custom              jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(custom) = 'object'),
    archived_at         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    -- no foreign key to the stage: stage_sync (src/stage.c) looks the stage
    -- up, locks it and refuses one of another tenant or pipeline, and
    -- crm.stage_keep_records() refuses to delete a stage records are in
    CONSTRAINT opportunity_tenant_id_account_id_fkey FOREIGN KEY (tenant_id, account_id) REFERENCES crm.account (tenant_id, id)
        DEFERRABLE,
    CONSTRAINT opportunity_tenant_id_contact_id_fkey FOREIGN KEY (tenant_id, contact_id) REFERENCES crm.contact (tenant_id, id)
        DEFERRABLE,
    CONSTRAINT opportunity_tenant_id_lead_id_fkey FOREIGN KEY (tenant_id, lead_id) REFERENCES crm.lead (tenant_id, id)
        DEFERRABLE,
    CONSTRAINT opportunity_tenant_id_owner_id_fkey FOREIGN KEY (tenant_id, owner_id) REFERENCES crm.app_user (tenant_id, id)
        DEFERRABLE
);
CREATE INDEX opportunity_stage_idx ON crm.opportunity (tenant_id, pipeline_id, stage_id);
CREATE INDEX opportunity_account_idx ON crm.opportunity (tenant_id, account_id);
CREATE INDEX opportunity_contact_idx ON crm.opportunity (tenant_id, contact_id);
CREATE INDEX opportunity_lead_idx ON crm.opportunity (tenant_id, lead_id);
CREATE INDEX opportunity_owner_idx ON crm.opportunity (tenant_id, owner_id);
CREATE INDEX opportunity_close_date_idx ON crm.opportunity (tenant_id, expected_close_date);
COMMENT ON TABLE crm.opportunity IS 'A deal in progress: an amount that may be won, moving through a pipeline''s stages';
COMMENT ON COLUMN crm.opportunity.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.opportunity.id IS 'Row id (UUIDv7)';
COMMENT ON COLUMN crm.opportunity.name IS 'Deal name';
COMMENT ON COLUMN crm.opportunity.account_id IS 'Customer account';
COMMENT ON COLUMN crm.opportunity.contact_id IS 'Primary contact';
COMMENT ON COLUMN crm.opportunity.lead_id IS 'The lead it was converted from';
COMMENT ON COLUMN crm.opportunity.pipeline_id IS 'Pipeline (the tenant''s default when omitted)';
COMMENT ON COLUMN crm.opportunity.stage_id IS 'Stage (the pipeline''s first when omitted)';
COMMENT ON COLUMN crm.opportunity.status IS 'open, won or lost: the kind of the stage (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.opportunity.amount IS 'Deal value, in currency';
COMMENT ON COLUMN crm.opportunity.currency IS 'Currency of amount (ISO 4217); NULL or omitted: the tenant''s default currency (set by crm.currency_default())';
CREATE TRIGGER currency_default BEFORE INSERT ON crm.opportunity
    FOR EACH ROW EXECUTE FUNCTION crm.currency_default();
COMMENT ON TRIGGER currency_default ON crm.opportunity IS 'Fills a NULL currency with the tenant''s default currency';
COMMENT ON COLUMN crm.opportunity.probability IS 'Win probability 0-100: while open, the stage''s unless set by hand (a stage move resets it, NULL asks for the stage''s); 100 when won and 0 when lost (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.opportunity.expected_close_date IS 'When the deal is expected to close';
COMMENT ON COLUMN crm.opportunity.opportunity_type IS 'new_business, renewal, upsell, cross_sell, other';
COMMENT ON COLUMN crm.opportunity.priority IS 'low, medium, high, urgent';
COMMENT ON COLUMN crm.opportunity.source IS 'Where the deal came from';
COMMENT ON COLUMN crm.opportunity.forecast_category IS 'Forecast category set by hand; NULL means the stage''s';
COMMENT ON COLUMN crm.opportunity.next_step IS 'What happens next';
COMMENT ON COLUMN crm.opportunity.description IS 'Free text';
COMMENT ON COLUMN crm.opportunity.lost_reason IS 'Why the deal was lost; only a lost deal has one (cleared when it leaves the lost stage)';
COMMENT ON COLUMN crm.opportunity.closed_at IS 'When the deal entered a won or lost stage; NULL while open (set by the server; a client value is ignored)';
COMMENT ON COLUMN crm.opportunity.owner_id IS 'Responsible user';
COMMENT ON COLUMN crm.opportunity.custom IS 'User-defined fields';
COMMENT ON COLUMN crm.opportunity.archived_at IS 'When the record was archived (kept instead of deleted; reports and kanban leave it out); NULL while active';
COMMENT ON COLUMN crm.opportunity.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.opportunity.updated_at IS 'When the row last changed';
