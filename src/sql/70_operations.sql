-- src/sql/70_operations.sql: the operations of a sales pipeline (shared/seeds/004:
-- move stage, mark won/lost, convert a lead) and making a tenant.
--
-- Each is a thin function over an UPDATE or INSERT: the rules live in the
-- triggers, so a client that issues the UPDATE itself gets the same result.
-- The functions add what an UPDATE cannot say well: a clear error for a
-- wrong id or a stage of another pipeline, and the choice of the won or lost
-- stage.  They run with the caller's rights, so row-level security applies.

CREATE FUNCTION crm.create_tenant(name text) RETURNS uuid
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    new_tenant uuid;
    sales uuid;
    enterprise uuid;
BEGIN
    IF name IS NULL THEN
        RAISE EXCEPTION 'tenant name must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF btrim(name) = '' THEN
        RAISE EXCEPTION 'tenant name must not be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    INSERT INTO crm.tenant (name) VALUES (btrim(create_tenant.name)) RETURNING tenant_id INTO new_tenant;

    INSERT INTO crm.pipeline (tenant_id, name, is_default, sequence)
        VALUES (new_tenant, 'Sales Pipeline', true, 1) RETURNING id INTO sales;
    INSERT INTO crm.pipeline (tenant_id, name, is_default, sequence)
        VALUES (new_tenant, 'Enterprise Deals', false, 2) RETURNING id INTO enterprise;

    -- shared/seeds/004 (stages) and seeds/002 (probabilities 10/25/50/75/100/0)
    INSERT INTO crm.stage (tenant_id, pipeline_id, name, sequence, probability, kind, forecast_category, color)
    VALUES (new_tenant, sales, 'New',         1,  10, 'open', 'pipeline',  '#9E9E9E'),
           (new_tenant, sales, 'Qualified',   2,  25, 'open', 'pipeline',  '#2196F3'),
           (new_tenant, sales, 'Proposal',    3,  50, 'open', 'best_case', '#FFC107'),
           (new_tenant, sales, 'Negotiation', 4,  75, 'open', 'commit',    '#FF9800'),
           (new_tenant, sales, 'Won',         5, 100, 'won',  'closed',    '#4CAF50'),
           (new_tenant, sales, 'Lost',        6,   0, 'lost', 'omitted',   '#F44336'),
           (new_tenant, enterprise, 'Discovery',       1,  10, 'open', 'pipeline',  '#9E9E9E'),
           (new_tenant, enterprise, 'Solution Design', 2,  30, 'open', 'pipeline',  '#2196F3'),
           (new_tenant, enterprise, 'Proposal',        3,  50, 'open', 'best_case', '#FFC107'),
           (new_tenant, enterprise, 'Legal Review',    4,  80, 'open', 'commit',    '#FF9800'),
           (new_tenant, enterprise, 'Won',             5, 100, 'won',  'closed',    '#4CAF50'),
           (new_tenant, enterprise, 'Lost',            6,   0, 'lost', 'omitted',   '#F44336');

    -- the default workflow rules of seeds/000 and seeds/002 (91_workflow.sql)
    PERFORM crm.create_default_rules(new_tenant);

    RETURN new_tenant;
END
$$;
COMMENT ON FUNCTION crm.create_tenant(text) IS
    'Makes a tenant with its defaults: the "Sales Pipeline" (default) and "Enterprise Deals" pipelines and their stages; returns the tenant id';

-- The operations name no helper of their own: each is whole, so that a
-- caller needs EXECUTE on the operation only, and every check that a plain
-- UPDATE must pass too (the stage exists and belongs to the record's
-- pipeline, a converted lead is final, an archived record does not move) is
-- left to the trigger, so both paths give the same error.

CREATE FUNCTION crm.lead_move_stage(lead uuid, stage uuid) RETURNS crm.lead
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    acting_tenant uuid;
    r crm.lead;
BEGIN
    IF $1 IS NULL OR $2 IS NULL THEN
        RAISE EXCEPTION '% must not be null', CASE WHEN $1 IS NULL THEN 'lead' ELSE 'stage' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- by tenant_id too, so that Citus routes the row lock to one shard;
    -- a superuser acting for no tenant finds the row by id alone
    acting_tenant := crm.current_tenant();
    IF acting_tenant IS NULL THEN
        SELECT * INTO r FROM crm.lead l WHERE l.id = $1 FOR UPDATE;
    ELSE
        SELECT * INTO r FROM crm.lead l WHERE l.tenant_id = acting_tenant AND l.id = $1 FOR UPDATE;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lead % does not exist', $1 USING ERRCODE = 'no_data_found';
    END IF;
    UPDATE crm.lead l SET stage_id = $2
     WHERE l.tenant_id = r.tenant_id AND l.id = r.id RETURNING * INTO r;
    RETURN r;
END
$$;
COMMENT ON FUNCTION crm.lead_move_stage(uuid, uuid) IS
    'Moves a lead to another stage of its pipeline, as UPDATE crm.lead SET stage_id does: a won or lost stage closes it, an open stage reopens a closed one. Returns the lead';

CREATE FUNCTION crm.opportunity_move_stage(opportunity uuid, stage uuid) RETURNS crm.opportunity
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    acting_tenant uuid;
    r crm.opportunity;
BEGIN
    IF $1 IS NULL OR $2 IS NULL THEN
        RAISE EXCEPTION '% must not be null', CASE WHEN $1 IS NULL THEN 'opportunity' ELSE 'stage' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- by tenant_id too, so that Citus routes the row lock to one shard;
    -- a superuser acting for no tenant finds the row by id alone
    acting_tenant := crm.current_tenant();
    IF acting_tenant IS NULL THEN
        SELECT * INTO r FROM crm.opportunity o WHERE o.id = $1 FOR UPDATE;
    ELSE
        SELECT * INTO r FROM crm.opportunity o WHERE o.tenant_id = acting_tenant AND o.id = $1 FOR UPDATE;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'opportunity % does not exist', $1 USING ERRCODE = 'no_data_found';
    END IF;
    UPDATE crm.opportunity o SET stage_id = $2
     WHERE o.tenant_id = r.tenant_id AND o.id = r.id RETURNING * INTO r;
    RETURN r;
END
$$;
COMMENT ON FUNCTION crm.opportunity_move_stage(uuid, uuid) IS
    'Moves an opportunity to another stage of its pipeline, as UPDATE crm.opportunity SET stage_id does: a won or lost stage closes it, an open stage reopens a closed one. Returns the opportunity';

CREATE FUNCTION crm.opportunity_reopen(opportunity uuid, stage uuid) RETURNS crm.opportunity
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    acting_tenant uuid;
    r crm.opportunity;
    stage_kind text;
BEGIN
    IF $1 IS NULL OR $2 IS NULL THEN
        RAISE EXCEPTION '% must not be null', CASE WHEN $1 IS NULL THEN 'opportunity' ELSE 'stage' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- by tenant_id too, so that Citus routes the row lock to one shard;
    -- a superuser acting for no tenant finds the row by id alone
    acting_tenant := crm.current_tenant();
    IF acting_tenant IS NULL THEN
        SELECT * INTO r FROM crm.opportunity o WHERE o.id = $1 FOR UPDATE;
    ELSE
        SELECT * INTO r FROM crm.opportunity o WHERE o.tenant_id = acting_tenant AND o.id = $1 FOR UPDATE;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'opportunity % does not exist', $1 USING ERRCODE = 'no_data_found';
    END IF;
    IF r.status = 'open' THEN
        RAISE EXCEPTION 'opportunity % is open and cannot be reopened', r.id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Move an open opportunity with crm.opportunity_move_stage().';
    END IF;
    SELECT s.kind INTO stage_kind FROM crm.stage s WHERE s.tenant_id = r.tenant_id AND s.id = $2;
    IF stage_kind <> 'open' THEN
        RAISE EXCEPTION 'stage % is a % stage', $2, stage_kind
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A record is reopened into an open stage of its pipeline.';
    END IF;
    UPDATE crm.opportunity o SET stage_id = $2
     WHERE o.tenant_id = r.tenant_id AND o.id = r.id RETURNING * INTO r;
    RETURN r;
END
$$;
COMMENT ON FUNCTION crm.opportunity_reopen(uuid, uuid) IS
    'Reopens a won or lost opportunity into an open stage of its pipeline: closed_at and lost_reason are cleared, probability is the stage''s. Returns the opportunity';

CREATE FUNCTION crm.lead_reopen(lead uuid, stage uuid) RETURNS crm.lead
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    acting_tenant uuid;
    r crm.lead;
    stage_kind text;
BEGIN
    IF $1 IS NULL OR $2 IS NULL THEN
        RAISE EXCEPTION '% must not be null', CASE WHEN $1 IS NULL THEN 'lead' ELSE 'stage' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- by tenant_id too, so that Citus routes the row lock to one shard;
    -- a superuser acting for no tenant finds the row by id alone
    acting_tenant := crm.current_tenant();
    IF acting_tenant IS NULL THEN
        SELECT * INTO r FROM crm.lead l WHERE l.id = $1 FOR UPDATE;
    ELSE
        SELECT * INTO r FROM crm.lead l WHERE l.tenant_id = acting_tenant AND l.id = $1 FOR UPDATE;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lead % does not exist', $1 USING ERRCODE = 'no_data_found';
    END IF;
    IF r.status = 'open' THEN
        RAISE EXCEPTION 'lead % is open and cannot be reopened', r.id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Move an open lead with crm.lead_move_stage().';
    END IF;
    SELECT s.kind INTO stage_kind FROM crm.stage s WHERE s.tenant_id = r.tenant_id AND s.id = $2;
    IF stage_kind <> 'open' THEN
        RAISE EXCEPTION 'stage % is a % stage', $2, stage_kind
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A record is reopened into an open stage of its pipeline.';
    END IF;
    -- a converted lead is refused by the trigger, with the same error as an UPDATE
    UPDATE crm.lead l SET stage_id = $2
     WHERE l.tenant_id = r.tenant_id AND l.id = r.id RETURNING * INTO r;
    RETURN r;
END
$$;
COMMENT ON FUNCTION crm.lead_reopen(uuid, uuid) IS
    'Reopens a won or lost lead (not a converted one) into an open stage of its pipeline: closed_at and lost_reason are cleared, probability is the stage''s. Returns the lead';

CREATE FUNCTION crm.opportunity_mark_won(opportunity uuid) RETURNS crm.opportunity
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    acting_tenant uuid;
    r crm.opportunity;
    target uuid;
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'opportunity must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- by tenant_id too, so that Citus routes the row lock to one shard;
    -- a superuser acting for no tenant finds the row by id alone
    acting_tenant := crm.current_tenant();
    IF acting_tenant IS NULL THEN
        SELECT * INTO r FROM crm.opportunity o WHERE o.id = $1 FOR UPDATE;
    ELSE
        SELECT * INTO r FROM crm.opportunity o WHERE o.tenant_id = acting_tenant AND o.id = $1 FOR UPDATE;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'opportunity % does not exist', $1 USING ERRCODE = 'no_data_found';
    END IF;
    SELECT s.id INTO target FROM crm.stage s
     WHERE s.tenant_id = r.tenant_id AND s.pipeline_id = r.pipeline_id AND s.kind = 'won'
     ORDER BY s.sequence, s.id LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pipeline % has no won stage', r.pipeline_id
            USING ERRCODE = 'no_data_found', HINT = 'Add a stage of kind ''won'' to the pipeline.';
    END IF;
    UPDATE crm.opportunity o SET stage_id = target
     WHERE o.tenant_id = r.tenant_id AND o.id = r.id RETURNING * INTO r;
    RETURN r;
END
$$;
COMMENT ON FUNCTION crm.opportunity_mark_won(uuid) IS
    'Moves an opportunity to the (first) won stage of its pipeline. Returns the opportunity';

CREATE FUNCTION crm.opportunity_mark_lost(opportunity uuid, reason text DEFAULT NULL) RETURNS crm.opportunity
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    acting_tenant uuid;
    r crm.opportunity;
    target uuid;
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'opportunity must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- by tenant_id too, so that Citus routes the row lock to one shard;
    -- a superuser acting for no tenant finds the row by id alone
    acting_tenant := crm.current_tenant();
    IF acting_tenant IS NULL THEN
        SELECT * INTO r FROM crm.opportunity o WHERE o.id = $1 FOR UPDATE;
    ELSE
        SELECT * INTO r FROM crm.opportunity o WHERE o.tenant_id = acting_tenant AND o.id = $1 FOR UPDATE;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'opportunity % does not exist', $1 USING ERRCODE = 'no_data_found';
    END IF;
    SELECT s.id INTO target FROM crm.stage s
     WHERE s.tenant_id = r.tenant_id AND s.pipeline_id = r.pipeline_id AND s.kind = 'lost'
     ORDER BY s.sequence, s.id LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pipeline % has no lost stage', r.pipeline_id
            USING ERRCODE = 'no_data_found', HINT = 'Add a stage of kind ''lost'' to the pipeline.';
    END IF;
    UPDATE crm.opportunity o SET stage_id = target, lost_reason = nullif(btrim($2), '')
     WHERE o.tenant_id = r.tenant_id AND o.id = r.id RETURNING * INTO r;
    RETURN r;
END
$$;
COMMENT ON FUNCTION crm.opportunity_mark_lost(uuid, text) IS
    'Moves an opportunity to the (first) lost stage of its pipeline and records why. Returns the opportunity';

CREATE FUNCTION crm.lead_mark_lost(lead uuid, reason text DEFAULT NULL) RETURNS crm.lead
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    acting_tenant uuid;
    r crm.lead;
    target uuid;
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'lead must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- by tenant_id too, so that Citus routes the row lock to one shard;
    -- a superuser acting for no tenant finds the row by id alone
    acting_tenant := crm.current_tenant();
    IF acting_tenant IS NULL THEN
        SELECT * INTO r FROM crm.lead l WHERE l.id = $1 FOR UPDATE;
    ELSE
        SELECT * INTO r FROM crm.lead l WHERE l.tenant_id = acting_tenant AND l.id = $1 FOR UPDATE;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lead % does not exist', $1 USING ERRCODE = 'no_data_found';
    END IF;
    SELECT s.id INTO target FROM crm.stage s
     WHERE s.tenant_id = r.tenant_id AND s.pipeline_id = r.pipeline_id AND s.kind = 'lost'
     ORDER BY s.sequence, s.id LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pipeline % has no lost stage', r.pipeline_id
            USING ERRCODE = 'no_data_found', HINT = 'Add a stage of kind ''lost'' to the pipeline.';
    END IF;
    -- a converted lead is refused by the trigger, with the same error as an UPDATE
    UPDATE crm.lead l SET stage_id = target, lost_reason = nullif(btrim($2), '')
     WHERE l.tenant_id = r.tenant_id AND l.id = r.id RETURNING * INTO r;
    RETURN r;
END
$$;
COMMENT ON FUNCTION crm.lead_mark_lost(uuid, text) IS
    'Moves a lead to the (first) lost stage of its pipeline and records why; a converted lead is final. Returns the lead';

CREATE FUNCTION crm.lead_convert(lead uuid, account uuid DEFAULT NULL, contact uuid DEFAULT NULL,
                                 create_opportunity boolean DEFAULT true)
    RETURNS TABLE (account_id uuid, contact_id uuid, opportunity_id uuid)
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    acting_tenant uuid;
    r crm.lead;
    new_account uuid := $2;
    new_contact uuid := $3;
    new_opportunity uuid;
    first_word text;
    rest text;
    opp_stage uuid;
BEGIN
    IF $1 IS NULL OR $4 IS NULL THEN
        RAISE EXCEPTION '% must not be null', CASE WHEN $1 IS NULL THEN 'lead' ELSE 'create_opportunity' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- by tenant_id too, so that Citus routes the row lock to one shard;
    -- a superuser acting for no tenant finds the row by id alone
    acting_tenant := crm.current_tenant();
    IF acting_tenant IS NULL THEN
        SELECT * INTO r FROM crm.lead l WHERE l.id = $1 FOR UPDATE;
    ELSE
        SELECT * INTO r FROM crm.lead l WHERE l.tenant_id = acting_tenant AND l.id = $1 FOR UPDATE;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lead % does not exist', $1 USING ERRCODE = 'no_data_found';
    END IF;
    IF r.converted_at IS NOT NULL THEN
        RAISE EXCEPTION 'lead % is already converted', r.id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('It was converted at %s.', r.converted_at);
    END IF;
    IF r.status = 'lost' THEN
        RAISE EXCEPTION 'lead % is lost and cannot be converted', r.id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Reopen the lead first with crm.lead_reopen().';
    END IF;
    IF r.archived_at IS NOT NULL THEN
        RAISE EXCEPTION 'lead % is archived and cannot be converted', r.id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Unarchive it first: UPDATE crm.lead SET archived_at = NULL.';
    END IF;

    -- Account: the one given, else one with the same company name, else a new one.
    IF new_account IS NOT NULL THEN
        PERFORM 1 FROM crm.account a WHERE a.tenant_id = r.tenant_id AND a.id = new_account;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'account % does not exist', new_account USING ERRCODE = 'no_data_found';
        END IF;
    ELSIF nullif(btrim(r.company_name), '') IS NOT NULL THEN
        SELECT a.id INTO new_account FROM crm.account a
         WHERE a.tenant_id = r.tenant_id AND crm.casefold(a.name) = crm.casefold(btrim(r.company_name))
         ORDER BY a.id LIMIT 1;
        IF new_account IS NULL THEN
            INSERT INTO crm.account (tenant_id, name, website, phone, industry, employees, currency,
                                     account_type, owner_id)
            VALUES (r.tenant_id, btrim(r.company_name), r.website, r.phone, r.industry, r.company_size,
                    r.currency, 'prospect', r.owner_id)
            RETURNING id INTO new_account;
        END IF;
    END IF;

    -- Contact: the one given, else one with the same e-mail, else a new one.
    IF new_contact IS NOT NULL THEN
        PERFORM 1 FROM crm.contact c WHERE c.tenant_id = r.tenant_id AND c.id = new_contact;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'contact % does not exist', new_contact USING ERRCODE = 'no_data_found';
        END IF;
    ELSIF r.email IS NOT NULL THEN
        SELECT c.id INTO new_contact FROM crm.contact c
         WHERE c.tenant_id = r.tenant_id AND crm.casefold(c.email) = crm.casefold(r.email);
    END IF;
    IF new_contact IS NULL THEN
        -- the person's name, else the local part of their e-mail; never the
        -- lead's title, which names a deal, not a person
        IF nullif(btrim(r.contact_name), '') IS NOT NULL THEN
            first_word := split_part(btrim(r.contact_name), ' ', 1);
            rest := nullif(btrim(substr(btrim(r.contact_name), length(first_word) + 1)), '');
        ELSIF r.email IS NOT NULL THEN
            first_word := split_part(r.email, '@', 1);
            rest := NULL;
        ELSE
            RAISE EXCEPTION 'lead % names no person to make a contact of', r.id
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'The lead has neither a contact_name nor an email.',
                      HINT = 'Set the lead''s contact_name or email, or pass an existing contact.';
        END IF;
        INSERT INTO crm.contact (tenant_id, first_name, last_name, email, phone, job_title, account_id,
                                 lead_source, owner_id)
        VALUES (r.tenant_id, first_word, rest, r.email, r.phone, r.job_title, new_account,
                r.source, r.owner_id)
        RETURNING id INTO new_contact;
    ELSIF new_account IS NOT NULL THEN
        -- link a contact that had no company yet
        UPDATE crm.contact c SET account_id = new_account
         WHERE c.tenant_id = r.tenant_id AND c.id = new_contact AND c.account_id IS NULL;
    END IF;

    IF create_opportunity THEN
        -- the lead's stage carries over: an open lead makes an open deal in
        -- the same stage, a won lead a won deal
        opp_stage := r.stage_id;
        INSERT INTO crm.opportunity (tenant_id, name, account_id, contact_id, lead_id, pipeline_id, stage_id,
                                     amount, currency, priority, source, description, owner_id, custom)
        VALUES (r.tenant_id, r.name, new_account, new_contact, r.id, r.pipeline_id, opp_stage,
                coalesce(r.expected_revenue, 0), r.currency, r.priority, r.source, r.description,
                r.owner_id, r.custom)
        RETURNING id INTO new_opportunity;
        INSERT INTO crm.opportunity_tag (tenant_id, opportunity_id, tag_id)
        SELECT lt.tenant_id, new_opportunity, lt.tag_id
          FROM crm.lead_tag lt WHERE lt.tenant_id = r.tenant_id AND lt.lead_id = r.id;
    END IF;

    -- setting converted_contact_id converts the lead: the trigger stamps
    -- converted_at and status, and keeps them final
    UPDATE crm.lead l
       SET converted_account_id = new_account, converted_contact_id = new_contact
     WHERE l.tenant_id = r.tenant_id AND l.id = r.id;

    RETURN QUERY SELECT new_account, new_contact, new_opportunity;
END
$$;
COMMENT ON FUNCTION crm.lead_convert(uuid, uuid, uuid, boolean) IS
    'Converts an open or won lead: uses the given account and contact or finds them (same company name, same e-mail) or creates them (the contact named by contact_name, else by the e-mail''s local part), optionally creates an opportunity in the lead''s stage carrying its fields and tags (a won lead makes a won deal), and marks the lead converted, which is final';
