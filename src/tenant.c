/*-------------------------------------------------------------------------
 *
 * tenant.c
 *	  Which tenant, and which CRM user, the current statement acts for.
 *
 * Every row-level security policy of the extension compares a row's
 * tenant_id with crm.current_tenant(), so the answer must be both right and
 * cheap.  There are two ways in:
 *
 *	- A login role mapped by crm.grant_tenant_access() acts for the tenant
 *	  (and CRM user) of its mapping.  The GUC crm.tenant_id only chooses
 *	  among several mappings of the same role: setting it to a tenant the
 *	  role is not mapped to gains nothing (a role with one mapping keeps
 *	  acting for it; one with several acts for none), because any psql user
 *	  can set a GUC and a GUC is no security boundary.
 *	- An application role, a member of crm_app that holds no mapping, acts
 *	  for whatever it sets with SET LOCAL crm.tenant_id / crm.user_id in each
 *	  transaction, which stays correct behind a transaction pooler.  The
 *	  application is trusted with that choice; superusers are treated alike.
 *
 * Anyone else acts for no tenant: current_tenant() is NULL, so the policies
 * show no rows and accept none.
 *
 * The answer is cached for one statement, keyed by the role and both GUC
 * values: a bulk statement pays for the mapping lookup once, and a revoked
 * mapping is seen by the very next statement.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(crm_current_tenant);
PG_FUNCTION_INFO_V1(crm_current_user_id);

#define TENANT_GUC	"crm.tenant_id"
#define USER_GUC	"crm.user_id"
#define APP_ROLE	"crm_app"

typedef struct TenantContext
{
	bool		valid;
	CrmCommandKey key;
	Oid			userid;
	char	   *tenant_guc;		/* GUC values the answer was made from */
	char	   *user_guc;
	bool		has_tenant;
	pg_uuid_t	tenant;
	bool		has_user;
	pg_uuid_t	user;
} TenantContext;

static TenantContext context;
static SPIPlanPtr mapping_plan = NULL;

/*
 * Parse a GUC holding a uuid.  Empty or unset means "not set"; anything else
 * must be a uuid, and a typo is an error rather than a silent "no tenant".
 */
static bool
parse_uuid_setting(const char *name, const char *value, pg_uuid_t *out)
{
	int			ndigits = 0;

	if (value == NULL || value[0] == '\0')
		return false;

	for (const char *p = value; *p; p++)
	{
		int			nibble;

		if (*p == '-' && ndigits > 0 && ndigits < 32 && ndigits % 2 == 0)
			continue;
		if (*p >= '0' && *p <= '9')
			nibble = *p - '0';
		else if (*p >= 'a' && *p <= 'f')
			nibble = *p - 'a' + 10;
		else if (*p >= 'A' && *p <= 'F')
			nibble = *p - 'A' + 10;
		else
		{
			ndigits = -1;
			break;
		}
		if (ndigits >= 32)
		{
			ndigits = -1;
			break;
		}
		if (ndigits % 2 == 0)
			out->data[ndigits / 2] = (unsigned char) (nibble << 4);
		else
			out->data[ndigits / 2] |= (unsigned char) nibble;
		ndigits++;
	}

	if (ndigits != 32)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for parameter \"%s\": \"%s\"", name, value),
				 errdetail("The value must be a uuid, such as the one crm.create_tenant() returned.")));
	return true;
}

static bool
same_setting(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

static char *
remember_setting(char *old, const char *value)
{
	if (old)
		pfree(old);
	return value ? MemoryContextStrdup(TopMemoryContext, value) : NULL;
}

/*
 * May the current role choose its tenant with the GUCs?  Members of crm_app
 * may; has_privs_of_role() is also true for superusers.
 */
static bool
role_may_set_tenant(Oid userid)
{
	Oid			app_role = get_role_oid(APP_ROLE, true);

	if (superuser_arg(userid))
		return true;
	return OidIsValid(app_role) && has_privs_of_role(userid, app_role);
}

static Oid
tenant_access_owner(void)
{
	Oid			relid = get_relname_relid("tenant_access", get_namespace_oid("crm", false));
	HeapTuple	tuple;
	Oid			owner;

	if (!OidIsValid(relid))
		elog(ERROR, "table crm.tenant_access is missing");
	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	return owner;
}

/*
 * Look the role up in crm.tenant_access.  The lookup runs as the table's
 * owner (the extension's owner), as pg_cron reads its own tables: the
 * table's policies themselves call crm.current_tenant(), so reading it with
 * the caller's rights would recurse, and a role needs no privilege to learn
 * its own mappings.  Only rows naming the calling role are read.
 * Returns true when the role has at least one mapping.
 */
static bool
resolve_mapping(Oid userid, const pg_uuid_t *wanted, bool has_wanted)
{
	NameData	rolename;
	Datum		args[1];
	bool		mapped;
	int			chosen = -1;
	Oid			save_userid;
	int			save_sec_context;
	int			rc;

	namestrcpy(&rolename, GetUserNameFromId(userid, false));
	args[0] = NameGetDatum(&rolename);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	if (mapping_plan == NULL)
	{
		Oid			argtypes[1] = {NAMEOID};
		SPIPlanPtr	plan;

		plan = SPI_prepare("SELECT tenant_id, user_id FROM crm.tenant_access"
						   " WHERE login_role OPERATOR(pg_catalog.=) $1",
						   1, argtypes);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		mapping_plan = plan;
	}

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(tenant_access_owner(),
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		rc = SPI_execute_plan(mapping_plan, args, NULL, true, 0);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.tenant_access");

	mapped = SPI_processed > 0;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);

		if (has_wanted && memcmp(DatumGetUUIDP(d), wanted, sizeof(pg_uuid_t)) == 0)
			chosen = (int) i;
	}
	/* one mapping: that tenant, whatever the setting names */
	if (chosen < 0 && SPI_processed == 1)
		chosen = 0;

	context.has_tenant = false;
	context.has_user = false;
	if (chosen >= 0)
	{
		HeapTuple	tuple = SPI_tuptable->vals[chosen];
		TupleDesc	tupdesc = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		d;

		d = SPI_getbinval(tuple, tupdesc, 1, &isnull);
		memcpy(&context.tenant, DatumGetUUIDP(d), sizeof(pg_uuid_t));
		context.has_tenant = true;

		d = SPI_getbinval(tuple, tupdesc, 2, &isnull);
		if (!isnull)
		{
			memcpy(&context.user, DatumGetUUIDP(d), sizeof(pg_uuid_t));
			context.has_user = true;
		}
	}

	SPI_finish();
	return mapped;
}

static void
resolve_context(void)
{
	CrmCommandKey key = crm_command_key_current();
	Oid			userid = GetUserId();
	const char *tenant_guc = GetConfigOption(TENANT_GUC, true, false);
	const char *user_guc = GetConfigOption(USER_GUC, true, false);
	pg_uuid_t	guc_tenant;
	pg_uuid_t	guc_user;
	bool		has_guc_tenant;
	bool		has_guc_user;

	if (context.valid &&
		crm_command_key_equal(context.key, key) &&
		context.userid == userid &&
		same_setting(context.tenant_guc, tenant_guc) &&
		same_setting(context.user_guc, user_guc))
		return;

	context.valid = false;
	/* the lookup below reads crm.tenant_access: it must be the extension's */
	crm_guard_require_schema();
	has_guc_tenant = parse_uuid_setting(TENANT_GUC, tenant_guc, &guc_tenant);
	has_guc_user = parse_uuid_setting(USER_GUC, user_guc, &guc_user);

	if (!resolve_mapping(userid, &guc_tenant, has_guc_tenant))
	{
		bool		trusted = role_may_set_tenant(userid);

		context.has_tenant = trusted && has_guc_tenant;
		context.tenant = guc_tenant;
		context.has_user = trusted && has_guc_user;
		context.user = guc_user;
	}

	context.key = key;
	context.userid = userid;
	context.tenant_guc = remember_setting(context.tenant_guc, tenant_guc);
	context.user_guc = remember_setting(context.user_guc, user_guc);
	context.valid = true;
}

/* For the other C files: the tenant, if any, this statement acts for. */
bool
crm_current_tenant_id(pg_uuid_t *tenant)
{
	resolve_context();
	if (context.has_tenant)
		*tenant = context.tenant;
	return context.has_tenant;
}

/* For the other C files: the CRM user (app_user id), if any. */
bool
crm_current_app_user_id(pg_uuid_t *user)
{
	resolve_context();
	if (context.has_user)
		*user = context.user;
	return context.has_user;
}

static Datum
uuid_datum_copy(const pg_uuid_t *value)
{
	pg_uuid_t  *result = palloc(sizeof(pg_uuid_t));

	memcpy(result, value, sizeof(pg_uuid_t));
	return UUIDPGetDatum(result);
}

/*
 * crm.current_tenant() returns uuid
 */
Datum
crm_current_tenant(PG_FUNCTION_ARGS)
{
	pg_uuid_t	tenant;

	if (!crm_current_tenant_id(&tenant))
		PG_RETURN_NULL();
	return uuid_datum_copy(&tenant);
}

/*
 * crm.current_user_id() returns uuid
 */
Datum
crm_current_user_id(PG_FUNCTION_ARGS)
{
	pg_uuid_t	user;

	if (!crm_current_app_user_id(&user))
		PG_RETURN_NULL();
	return uuid_datum_copy(&user);
}
