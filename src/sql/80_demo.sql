-- src/sql/80_demo.sql: the demo data of shared/seeds/004 (2 pipelines, the 5
-- named accounts, 5 contacts, 5 leads, 4 opportunities, 8 tags) plus sales
-- users and three months of activities, loaded by one statement:
--     SELECT crm.load_demo();

CREATE FUNCTION crm.load_demo(tenant_name text DEFAULT 'Demo Company', as_of timestamptz DEFAULT now())
    RETURNS uuid
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    t uuid := crm.create_tenant(tenant_name);
    sales uuid;
    alice uuid; ben uuid; chloe uuid;
BEGIN
    SELECT p.id INTO sales FROM crm.pipeline p WHERE p.tenant_id = t AND p.is_default;

    INSERT INTO crm.app_user (tenant_id, name, email, job_title)
        VALUES (t, 'Alice Morgan', 'alice@demo.example', 'Sales Manager') RETURNING id INTO alice;
    INSERT INTO crm.app_user (tenant_id, name, email, job_title, manager_id)
        VALUES (t, 'Ben Carter', 'ben@demo.example', 'Account Executive', alice) RETURNING id INTO ben;
    INSERT INTO crm.app_user (tenant_id, name, email, job_title, manager_id)
        VALUES (t, 'Chloe Diaz', 'chloe@demo.example', 'Account Executive', alice) RETURNING id INTO chloe;
    WITH team AS (
        INSERT INTO crm.team (tenant_id, name, manager_id) VALUES (t, 'Enterprise Team', alice) RETURNING id)
    INSERT INTO crm.team_member (tenant_id, team_id, user_id)
    SELECT t, team.id, u FROM team, unnest(ARRAY[ben, chloe]) u;

    INSERT INTO crm.currency_rate (tenant_id, from_currency, to_currency, rate, valid_from)
    VALUES (t, 'EUR', 'USD', 1.08, (as_of - interval '1 year')::date);

    INSERT INTO crm.tag (tenant_id, name, color) VALUES
        (t, 'High Value', '#E91E63'), (t, 'Enterprise', '#3F51B5'), (t, 'SMB', '#009688'),
        (t, 'Hot Lead', '#F44336'), (t, 'Partner', '#795548'), (t, 'Renewal', '#607D8B'),
        (t, 'Strategic', '#9C27B0'), (t, 'Follow Up', '#FF9800');

    INSERT INTO crm.account (tenant_id, name, website, phone, account_type, industry, rating, employees,
                             annual_revenue, currency, billing_city, billing_country, owner_id)
    VALUES (t, 'Acme Corp', 'https://acme.example', '+1 212 555 0100', 'customer', 'technology', 'hot',
            500, 75000000, 'USD', 'New York', 'US', ben),
           (t, 'Global Industries', 'https://global-industries.example', '+1 312 555 0110', 'prospect',
            'manufacturing', 'warm', 2000, 300000000, 'USD', 'Chicago', 'US', ben),
           (t, 'Tech Innovators', 'https://techinnovators.example', '+1 415 555 0120', 'prospect',
            'technology', 'warm', 120, 12000000, 'USD', 'San Francisco', 'US', chloe),
           (t, 'MedHealth', 'https://medhealth.example', '+49 30 5550130', 'customer', 'healthcare', 'hot',
            800, 90000000, 'EUR', 'Berlin', 'DE', chloe),
           (t, 'EduLearn', 'https://edulearn.example', '+1 617 555 0140', 'partner', 'education', 'cold',
            200, 8000000, 'USD', 'Boston', 'US', alice);

    INSERT INTO crm.contact (tenant_id, first_name, last_name, email, phone, job_title, account_id,
                             is_primary, owner_id, email_opt_out)
    SELECT t, c.first_name, c.last_name, c.email, c.phone, c.job_title, a.id, true, a.owner_id, c.opt_out
      FROM (VALUES ('John', 'Smith', 'john.smith@acme.example', '+1 212 555 0101', 'CTO', 'Acme Corp', false),
                   ('Sarah', 'Johnson', 'sarah.johnson@global-industries.example', '+1 312 555 0111',
                    'VP Operations', 'Global Industries', false),
                   ('Michael', 'Chen', 'michael.chen@techinnovators.example', '+1 415 555 0121', 'CEO',
                    'Tech Innovators', false),
                   ('Emily', 'Davis', 'emily.davis@medhealth.example', '+49 30 5550131', 'IT Director',
                    'MedHealth', true),
                   ('Robert', 'Wilson', 'robert.wilson@edulearn.example', '+1 617 555 0141',
                    'Head of Technology', 'EduLearn', false))
           AS c(first_name, last_name, email, phone, job_title, account_name, opt_out)
      JOIN crm.account a ON a.tenant_id = t AND a.name = c.account_name;

    INSERT INTO crm.lead (tenant_id, name, contact_name, email, phone, company_name, job_title, pipeline_id,
                          stage_id, priority, rating, source, expected_revenue, currency, company_size,
                          industry, budget, purchase_timeline, is_decision_maker, owner_id)
    SELECT t, l.name, l.contact_name, l.email, l.phone, l.company, l.job_title, sales, s.id, l.priority,
           l.rating, l.source, l.revenue, 'USD', l.size, l.industry, l.budget, l.timeline, l.dm, l.owner
      FROM (VALUES
            ('CloudNine - website inquiry', 'Grace Lee', 'grace.lee@cloudnine.example', '+1 206 555 0150',
             'CloudNine', 'Head of IT', 'New', 'high', 'hot', 'website', 40000, 350, 'technology', 50000,
             'within_quarter', true, ben),
            ('Northwind Traders - referral', 'Tom Becker', 'tom.becker@northwind.example', '+1 503 555 0160',
             'Northwind Traders', 'Operations Manager', 'Qualified', 'medium', 'warm', 'referral', 25000, 90,
             'retail', 20000, 'within_year', false, chloe),
            ('Blue Ocean Labs - trade show', 'Priya Nair', 'priya.nair@blueocean.example', '+1 858 555 0170',
             'Blue Ocean Labs', 'CTO', 'New', 'medium', 'warm', 'trade_show', 30000, 60, 'healthcare', 35000,
             'within_quarter', true, chloe),
            ('Summit Retail - cold call', 'Daniel Ortiz', 'daniel.ortiz@summit.example', '+1 303 555 0180',
             'Summit Retail', 'Store Director', 'Proposal', 'low', 'cold', 'cold_call', 12000, 40, 'retail',
             10000, 'no_timeline', false, ben),
            ('Tech Innovators - webinar', 'Michael Chen', 'michael.chen@techinnovators.example',
             '+1 415 555 0121', 'Tech Innovators', 'CEO', 'Qualified', 'urgent', 'hot', 'event', 60000, 120,
             'technology', 80000, 'immediate', true, chloe))
           AS l(name, contact_name, email, phone, company, job_title, stage_name, priority, rating, source,
                revenue, size, industry, budget, timeline, dm, owner)
      JOIN crm.stage s ON s.tenant_id = t AND s.pipeline_id = sales AND s.name = l.stage_name;

    INSERT INTO crm.opportunity (tenant_id, name, account_id, contact_id, pipeline_id, stage_id, amount,
                                 currency, expected_close_date, opportunity_type, priority, source, owner_id)
    SELECT t, o.name, a.id, c.id, sales, s.id, o.amount, o.currency, (as_of + o.closes)::date, o.kind,
           o.priority, o.source, a.owner_id
      FROM (VALUES ('Acme Corp - Enterprise License', 'Acme Corp', 'Negotiation', 120000, 'USD',
                    interval '20 days', 'new_business', 'high', 'referral'),
                   ('Global Industries - ERP Integration', 'Global Industries', 'Proposal', 85000, 'USD',
                    interval '45 days', 'new_business', 'medium', 'trade_show'),
                   ('MedHealth - Compliance Suite', 'MedHealth', 'Qualified', 60000, 'EUR',
                    interval '60 days', 'upsell', 'medium', 'partner'),
                   ('EduLearn - Renewal 2027', 'EduLearn', 'New', 18000, 'USD',
                    interval '90 days', 'renewal', 'low', 'other'))
           AS o(name, account_name, stage_name, amount, currency, closes, kind, priority, source)
      JOIN crm.account a ON a.tenant_id = t AND a.name = o.account_name
      JOIN crm.contact c ON c.tenant_id = t AND c.account_id = a.id
      JOIN crm.stage s ON s.tenant_id = t AND s.pipeline_id = sales AND s.name = o.stage_name;

    INSERT INTO crm.account_tag (tenant_id, account_id, tag_id)
    SELECT t, a.id, g.id FROM crm.account a JOIN crm.tag g ON g.tenant_id = t
     WHERE a.tenant_id = t AND (a.name, g.name) IN (('Acme Corp', 'Enterprise'), ('Acme Corp', 'Strategic'),
                                                    ('Global Industries', 'Enterprise'), ('EduLearn', 'Partner'),
                                                    ('Tech Innovators', 'SMB'), ('MedHealth', 'High Value'));
    INSERT INTO crm.lead_tag (tenant_id, lead_id, tag_id)
    SELECT t, l.id, g.id FROM crm.lead l JOIN crm.tag g ON g.tenant_id = t
     WHERE l.tenant_id = t AND (l.company_name, g.name) IN (('CloudNine', 'Hot Lead'), ('Tech Innovators', 'Hot Lead'),
                                                            ('Summit Retail', 'Follow Up'), ('Northwind Traders', 'SMB'));
    INSERT INTO crm.opportunity_tag (tenant_id, opportunity_id, tag_id)
    SELECT t, o.id, g.id FROM crm.opportunity o JOIN crm.tag g ON g.tenant_id = t
     WHERE o.tenant_id = t AND (o.name, g.name) IN (('Acme Corp - Enterprise License', 'High Value'),
                                                    ('EduLearn - Renewal 2027', 'Renewal'),
                                                    ('Global Industries - ERP Integration', 'Strategic'));

    -- Three months of history with every contact: one touch every 4 to 9
    -- days, cycling through the kinds of activity a sales team logs, and a
    -- follow-up task and a meeting still to come.
    INSERT INTO crm.activity (tenant_id, activity_type, direction, subject, status, occurred_at,
                              completed_at, contact_id, account_id, owner_id, details)
    SELECT t, k.code, k.direction, k.subject || ' - ' || a.name, 'completed', happened, happened,
           c.id, a.id, a.owner_id,
           CASE WHEN k.code LIKE 'quote%' THEN jsonb_build_object('amount', 1000 * (n + 5)) ELSE '{}' END
      FROM crm.contact c
      JOIN crm.account a ON a.tenant_id = c.tenant_id AND a.id = c.account_id
      CROSS JOIN LATERAL generate_series(0, 12 + length(a.name) % 5) n
      CROSS JOIN LATERAL (SELECT as_of - interval '90 days'
                                 + (n * (4 + length(c.last_name) % 6)) * interval '1 day'
                                 + interval '10 hours' AS happened) h
      JOIN (VALUES (0, 'email', 'outbound', 'Intro e-mail'),
                   (1, 'email_opened', 'inbound', 'Opened intro e-mail'),
                   (2, 'call', 'outbound', 'Discovery call'),
                   (3, 'meeting', 'outbound', 'Product demo'),
                   (4, 'note', 'internal', 'Notes from demo'),
                   (5, 'email_clicked', 'inbound', 'Clicked pricing link'),
                   (6, 'quote_created', 'outbound', 'Quote'),
                   (7, 'call', 'inbound', 'Question on the quote'),
                   (8, 'document_downloaded', 'inbound', 'Downloaded security whitepaper'))
           AS k(step, code, direction, subject) ON k.step = n % 9
     WHERE c.tenant_id = t AND h.happened <= as_of;

    INSERT INTO crm.activity (tenant_id, activity_type, direction, subject, status, due_at, start_at, end_at,
                              contact_id, account_id, owner_id)
    SELECT t, x.code, 'outbound', x.subject || ' - ' || a.name, 'scheduled',
           as_of + x.due, CASE WHEN x.code = 'meeting' THEN as_of + x.due END,
           CASE WHEN x.code = 'meeting' THEN as_of + x.due + interval '1 hour' END,
           c.id, a.id, a.owner_id
      FROM crm.contact c
      JOIN crm.account a ON a.tenant_id = c.tenant_id AND a.id = c.account_id
      CROSS JOIN (VALUES ('task', 'Follow up on proposal', interval '2 days'),
                         ('meeting', 'Quarterly review', interval '9 days')) AS x(code, subject, due)
     WHERE c.tenant_id = t;

    RETURN t;
END
$$;
COMMENT ON FUNCTION crm.load_demo(text, timestamptz) IS
    'Makes a demo tenant with the sample data of the CRM module reference (accounts, contacts, leads, opportunities, tags) and three months of activities up to as_of; returns the tenant id';
