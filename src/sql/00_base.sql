-- src/sql/00_base.sql: the identifiers, the tenant context, currencies and tenants.
--
-- The install script crm--<version>.sql is these src/sql/*.sql files joined
-- in name order.  CREATE EXTENSION runs it with search_path = crm (pg_catalog
-- is searched first, implicitly), so every name below resolves to the
-- extension's own objects or the system's, never to a session's schemas.

\echo Use "CREATE EXTENSION crm" to load this file. \quit

-- First, before any name is looked up in schema crm: refuse a schema crm
-- that CREATE EXTENSION did not make and that another role owns, may write
-- into, or has already put objects in (a format() or an operator with an
-- exact-match signature there would beat pg_catalog's below and run as the
-- installing superuser).  The check is a C function made in crm, called and
-- dropped: if a hostile schema already holds a function of that name, the
-- CREATE fails, and one that takes defaults makes the call ambiguous, so
-- either way nothing of theirs runs.  (A function in pg_temp would do too,
-- but Citus commits CREATE EXTENSION on its workers with two-phase commit,
-- which PostgreSQL refuses after a transaction touched temporary objects.)
CREATE FUNCTION crm.crm_guard_check_install() RETURNS pg_catalog.void
    AS 'MODULE_PATHNAME', 'crm_guard_check_install'
    LANGUAGE C VOLATILE STRICT;
SELECT crm.crm_guard_check_install();
DROP FUNCTION crm.crm_guard_check_install();

COMMENT ON SCHEMA crm IS 'Sales CRM: accounts, contacts, leads, opportunities, pipelines, activities; see README.md';

-- Identifiers ------------------------------------------------------------

CREATE FUNCTION crm.uuid_generate_v7() RETURNS uuid
    AS 'MODULE_PATHNAME', 'crm_uuid_generate_v7'
    LANGUAGE C VOLATILE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION crm.uuid_generate_v7() IS
    'A new time-ordered UUID (version 7, RFC 9562); ids made in one backend strictly increase';

CREATE FUNCTION crm.uuid_v7_time(id uuid) RETURNS timestamptz
    AS 'MODULE_PATHNAME', 'crm_uuid_v7_time'
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION crm.uuid_v7_time(uuid) IS
    'The millisecond at which a version 7 uuid was made; an error for other versions';

-- Tenant context (see src/tenant.c) ---------------------------------------

CREATE FUNCTION crm.current_tenant() RETURNS uuid
    AS 'MODULE_PATHNAME', 'crm_current_tenant'
    LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION crm.current_tenant() IS
    'The tenant this statement acts for: the login role''s mapping (crm.grant_tenant_access), else crm.tenant_id for members of crm_app; NULL means none';

CREATE FUNCTION crm.current_user_id() RETURNS uuid
    AS 'MODULE_PATHNAME', 'crm_current_user_id'
    LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION crm.current_user_id() IS
    'The CRM user (crm.app_user id) this statement acts for: the mapping''s user, else crm.user_id for members of crm_app';

-- Value types -------------------------------------------------------------

-- Case-insensitive matching (unique e-mails, company names) must fold
-- non-ASCII letters too, whatever the cluster's locale: lower() under the C
-- locale leaves 'Ö' alone, so fold under the ICU root collation.
CREATE FUNCTION crm.casefold(value text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN pg_catalog.lower(value COLLATE "und-x-icu");
COMMENT ON FUNCTION crm.casefold(text) IS
    'The text in lower case under ICU''s root collation, whatever the cluster locale: how e-mails and names are compared case-insensitively';

-- "Non-empty" means more than whitespace of any kind: ASCII blanks, the
-- Unicode White_Space characters (no-break, em, ideographic spaces, line
-- separators) and the invisible format characters that render as nothing
-- (zero-width space and joiners, word joiner, BOM).  Every CHECK that
-- refuses an empty name uses this one definition (src/sql/97_value_checks.sql
-- turns each btrim(x) <> '' check into it).
CREATE FUNCTION crm.is_blank(value text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'crm_values_is_blank'
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION crm.is_blank(text) IS
    'True when the text is empty or only whitespace of any kind (tab, newline, Unicode spaces such as U+00A0 and U+2003, zero-width characters); NULL for NULL. The test of every non-empty CHECK';

CREATE DOMAIN crm.email_address AS text
    CHECK (VALUE ~ '^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:].]+$');
COMMENT ON DOMAIN crm.email_address IS 'An e-mail address: local part, @, and a domain with a dot';

-- Currencies: a global lookup (ISO 4217) ---------------------------------

CREATE TABLE crm.currency (
    code        text PRIMARY KEY CHECK (code ~ '^[A-Z]{3}$'),
    name        text NOT NULL CHECK (btrim(name) <> ''),
    minor_unit  smallint CHECK (minor_unit BETWEEN 0 AND 4),
    is_builtin  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE crm.currency IS 'ISO 4217 currencies that amounts may be in (global lookup; the built-in rows are the active ISO 4217 list)';
COMMENT ON COLUMN crm.currency.code IS 'ISO 4217 alphabetic code, e.g. EUR';
COMMENT ON COLUMN crm.currency.name IS 'Currency name';
COMMENT ON COLUMN crm.currency.minor_unit IS 'Digits after the decimal point, per ISO 4217';
COMMENT ON COLUMN crm.currency.is_builtin IS 'Shipped by the extension (left out of pg_dump; added rows are dumped)';
COMMENT ON COLUMN crm.currency.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.currency.updated_at IS 'When the row last changed';

-- Tenants -----------------------------------------------------------------

CREATE TABLE crm.tenant (
    tenant_id        uuid NOT NULL DEFAULT crm.uuid_generate_v7(),
    name             text NOT NULL CHECK (btrim(name) <> ''),
    visibility       text NOT NULL DEFAULT 'public' CHECK (visibility IN ('public', 'private')),
    default_currency text NOT NULL DEFAULT 'USD' REFERENCES crm.currency (code),
    settings         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id)
);
COMMENT ON TABLE crm.tenant IS 'A company using the CRM; every other row belongs to one tenant';
COMMENT ON COLUMN crm.tenant.tenant_id IS 'The tenant''s id, the leading key column of every tenant table';
COMMENT ON COLUMN crm.tenant.name IS 'Company name';
COMMENT ON COLUMN crm.tenant.visibility IS 'public: every user sees every record; private: users see what they and the people reporting to them own (crm_admin sees all)';
COMMENT ON COLUMN crm.tenant.default_currency IS 'Currency of new amounts and of the reports';
COMMENT ON COLUMN crm.tenant.settings IS 'Tenant settings as a JSON object';
COMMENT ON COLUMN crm.tenant.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.tenant.updated_at IS 'When the row last changed';

CREATE FUNCTION crm.tenant_default_currency() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT coalesce((SELECT t.default_currency FROM crm.tenant t
                          WHERE t.tenant_id = crm.current_tenant()), 'USD')
    $$;
COMMENT ON FUNCTION crm.tenant_default_currency() IS
    'The current tenant''s default currency (USD when there is no tenant); the default of every currency column';

CREATE TABLE crm.currency_rate (
    tenant_id     uuid NOT NULL DEFAULT crm.current_tenant() REFERENCES crm.tenant ON DELETE CASCADE,
    id            uuid NOT NULL DEFAULT crm.uuid_generate_v7(),
    from_currency text NOT NULL REFERENCES crm.currency (code),
    to_currency   text NOT NULL REFERENCES crm.currency (code),
    rate          numeric NOT NULL CHECK (rate > 0),
    valid_from    date NOT NULL DEFAULT current_date,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, from_currency, to_currency, valid_from),
    CHECK (from_currency <> to_currency)
);
COMMENT ON TABLE crm.currency_rate IS 'Exchange rates of a tenant: 1 from_currency = rate to_currency, from valid_from on';
COMMENT ON COLUMN crm.currency_rate.tenant_id IS 'Owning tenant';
COMMENT ON COLUMN crm.currency_rate.id IS 'Row id (UUIDv7)';
COMMENT ON COLUMN crm.currency_rate.from_currency IS 'Currency converted from';
COMMENT ON COLUMN crm.currency_rate.to_currency IS 'Currency converted to';
COMMENT ON COLUMN crm.currency_rate.rate IS 'Units of to_currency for one unit of from_currency';
COMMENT ON COLUMN crm.currency_rate.valid_from IS 'First day the rate applies';
COMMENT ON COLUMN crm.currency_rate.created_at IS 'When the row was made';
COMMENT ON COLUMN crm.currency_rate.updated_at IS 'When the row last changed';

CREATE FUNCTION crm.exchange_rate(from_currency text, to_currency text, as_of date DEFAULT current_date,
                                  tenant uuid DEFAULT crm.current_tenant())
    RETURNS numeric
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
    RETURN CASE WHEN $1 = $2 THEN 1::numeric ELSE coalesce(
            (SELECT r.rate FROM crm.currency_rate r
              WHERE r.tenant_id = $4 AND r.from_currency = $1 AND r.to_currency = $2
                AND r.valid_from <= $3
              ORDER BY r.valid_from DESC LIMIT 1),
            (SELECT 1 / r.rate FROM crm.currency_rate r
              WHERE r.tenant_id = $4 AND r.from_currency = $2 AND r.to_currency = $1
                AND r.valid_from <= $3
              ORDER BY r.valid_from DESC LIMIT 1)) END;
END
$$;
COMMENT ON FUNCTION crm.exchange_rate(text, text, date, uuid) IS
    'Units of to_currency for one from_currency on as_of, from the tenant''s latest rate (direct or inverse); NULL when the tenant has none. '
    'tenant must be the caller''s own (42501 otherwise; superusers excepted)';

-- The active ISO 4217 currencies, as Debian's iso-codes package lists them
-- (/usr/share/iso-codes/json/iso_4217.json), less precious metals, fund and
-- testing codes.
INSERT INTO crm.currency (code, name, is_builtin) VALUES
    ('AED', 'UAE Dirham', true),
    ('AFN', 'Afghani', true),
    ('ALL', 'Lek', true),
    ('AMD', 'Armenian Dram', true),
    ('ANG', 'Netherlands Antillean Guilder', true),
    ('AOA', 'Kwanza', true),
    ('ARS', 'Argentine Peso', true),
    ('AUD', 'Australian Dollar', true),
    ('AWG', 'Aruban Florin', true),
    ('AZN', 'Azerbaijan Manat', true),
    ('BAM', 'Convertible Mark', true),
    ('BBD', 'Barbados Dollar', true),
    ('BDT', 'Taka', true),
    ('BGN', 'Bulgarian Lev', true),
    ('BHD', 'Bahraini Dinar', true),
    ('BIF', 'Burundi Franc', true),
    ('BMD', 'Bermudian Dollar', true),
    ('BND', 'Brunei Dollar', true),
    ('BOB', 'Boliviano', true),
    ('BRL', 'Brazilian Real', true),
    ('BSD', 'Bahamian Dollar', true),
    ('BTN', 'Ngultrum', true),
    ('BWP', 'Pula', true),
    ('BYN', 'Belarusian Ruble', true),
    ('BZD', 'Belize Dollar', true),
    ('CAD', 'Canadian Dollar', true),
    ('CDF', 'Congolese Franc', true),
    ('CHF', 'Swiss Franc', true),
    ('CLP', 'Chilean Peso', true),
    ('CNY', 'Yuan Renminbi', true),
    ('COP', 'Colombian Peso', true),
    ('CRC', 'Costa Rican Colon', true),
    ('CUC', 'Peso Convertible', true),
    ('CUP', 'Cuban Peso', true),
    ('CVE', 'Cabo Verde Escudo', true),
    ('CZK', 'Czech Koruna', true),
    ('DJF', 'Djibouti Franc', true),
    ('DKK', 'Danish Krone', true),
    ('DOP', 'Dominican Peso', true),
    ('DZD', 'Algerian Dinar', true),
    ('EGP', 'Egyptian Pound', true),
    ('ERN', 'Nakfa', true),
    ('ETB', 'Ethiopian Birr', true),
    ('EUR', 'Euro', true),
    ('FJD', 'Fiji Dollar', true),
    ('FKP', 'Falkland Islands Pound', true),
    ('GBP', 'Pound Sterling', true),
    ('GEL', 'Lari', true),
    ('GHS', 'Ghana Cedi', true),
    ('GIP', 'Gibraltar Pound', true),
    ('GMD', 'Dalasi', true),
    ('GNF', 'Guinean Franc', true),
    ('GTQ', 'Quetzal', true),
    ('GYD', 'Guyana Dollar', true),
    ('HKD', 'Hong Kong Dollar', true),
    ('HNL', 'Lempira', true),
    ('HRK', 'Kuna', true),
    ('HTG', 'Gourde', true),
    ('HUF', 'Forint', true),
    ('IDR', 'Rupiah', true),
    ('ILS', 'New Israeli Sheqel', true),
    ('INR', 'Indian Rupee', true),
    ('IQD', 'Iraqi Dinar', true),
    ('IRR', 'Iranian Rial', true),
    ('ISK', 'Iceland Krona', true),
    ('JMD', 'Jamaican Dollar', true),
    ('JOD', 'Jordanian Dinar', true),
    ('JPY', 'Yen', true),
    ('KES', 'Kenyan Shilling', true),
    ('KGS', 'Som', true),
    ('KHR', 'Riel', true),
    ('KMF', 'Comorian Franc', true),
    ('KPW', 'North Korean Won', true),
    ('KRW', 'Won', true),
    ('KWD', 'Kuwaiti Dinar', true),
    ('KYD', 'Cayman Islands Dollar', true),
    ('KZT', 'Tenge', true),
    ('LAK', 'Lao Kip', true),
    ('LBP', 'Lebanese Pound', true),
    ('LKR', 'Sri Lanka Rupee', true),
    ('LRD', 'Liberian Dollar', true),
    ('LSL', 'Loti', true),
    ('LYD', 'Libyan Dinar', true),
    ('MAD', 'Moroccan Dirham', true),
    ('MDL', 'Moldovan Leu', true),
    ('MGA', 'Malagasy Ariary', true),
    ('MKD', 'Denar', true),
    ('MMK', 'Kyat', true),
    ('MNT', 'Tugrik', true),
    ('MOP', 'Pataca', true),
    ('MRU', 'Ouguiya', true),
    ('MUR', 'Mauritius Rupee', true),
    ('MVR', 'Rufiyaa', true),
    ('MWK', 'Malawi Kwacha', true),
    ('MXN', 'Mexican Peso', true),
    ('MYR', 'Malaysian Ringgit', true),
    ('MZN', 'Mozambique Metical', true),
    ('NAD', 'Namibia Dollar', true),
    ('NGN', 'Naira', true),
    ('NIO', 'Cordoba Oro', true),
    ('NOK', 'Norwegian Krone', true),
    ('NPR', 'Nepalese Rupee', true),
    ('NZD', 'New Zealand Dollar', true),
    ('OMR', 'Rial Omani', true),
    ('PAB', 'Balboa', true),
    ('PEN', 'Sol', true),
    ('PGK', 'Kina', true),
    ('PHP', 'Philippine Peso', true),
    ('PKR', 'Pakistan Rupee', true),
    ('PLN', 'Zloty', true),
    ('PYG', 'Guarani', true),
    ('QAR', 'Qatari Rial', true),
    ('RON', 'Romanian Leu', true),
    ('RSD', 'Serbian Dinar', true),
    ('RUB', 'Russian Ruble', true),
    ('RWF', 'Rwanda Franc', true),
    ('SAR', 'Saudi Riyal', true),
    ('SBD', 'Solomon Islands Dollar', true),
    ('SCR', 'Seychelles Rupee', true),
    ('SDG', 'Sudanese Pound', true),
    ('SEK', 'Swedish Krona', true),
    ('SGD', 'Singapore Dollar', true),
    ('SHP', 'Saint Helena Pound', true),
    ('SLE', 'Leone', true),
    ('SLL', 'Leone', true),
    ('SOS', 'Somali Shilling', true),
    ('SRD', 'Surinam Dollar', true),
    ('SSP', 'South Sudanese Pound', true),
    ('STN', 'Dobra', true),
    ('SVC', 'El Salvador Colon', true),
    ('SYP', 'Syrian Pound', true),
    ('SZL', 'Lilangeni', true),
    ('THB', 'Baht', true),
    ('TJS', 'Somoni', true),
    ('TMT', 'Turkmenistan New Manat', true),
    ('TND', 'Tunisian Dinar', true),
    ('TOP', 'Pa’anga', true),
    ('TRY', 'Turkish Lira', true),
    ('TTD', 'Trinidad and Tobago Dollar', true),
    ('TWD', 'New Taiwan Dollar', true),
    ('TZS', 'Tanzanian Shilling', true),
    ('UAH', 'Hryvnia', true),
    ('UGX', 'Uganda Shilling', true),
    ('USD', 'US Dollar', true),
    ('UYU', 'Peso Uruguayo', true),
    ('UZS', 'Uzbekistan Sum', true),
    ('VES', 'Bolívar Soberano', true),
    ('VND', 'Dong', true),
    ('VUV', 'Vatu', true),
    ('WST', 'Tala', true),
    ('XAF', 'CFA Franc BEAC', true),
    ('XCD', 'East Caribbean Dollar', true),
    ('XOF', 'CFA Franc BCEAO', true),
    ('XPF', 'CFP Franc', true),
    ('YER', 'Yemeni Rial', true),
    ('ZAR', 'Rand', true),
    ('ZMW', 'Zambian Kwacha', true),
    ('ZWL', 'Zimbabwe Dollar', true);
