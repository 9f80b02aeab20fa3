/*-------------------------------------------------------------------------
 *
 * tenant.c
 *	  Which tenant, and which CRM user, the current statement acts for; who
 *	  may be mapped to a tenant; the clear error for a session that acts for
 *	  none.
 *
 * Every row-level security policy of the extension is a plain predicate on
 * the row and on what this file answers (no sub-select, no table read in a
 * policy), because Citus copies policies onto shards and refuses both; and
 * each table has one permissive policy, never a restrictive one, because
 * Citus copies a restrictive policy as a permissive one:
 *
 *	  tenant_isolation	  tenant_id = crm.current_tenant()
 *	  on the records and	  AND (visible_to IS NULL
 *	  what hangs off them		   OR crm.current_user_id() = ANY (visible_to)
 *							   OR crm.is_admin())
 *
 * visible_to is derived data kept on each row by triggers (src/visibility.c
 * and src/sql/90_security.sql): NULL when every user of the tenant may see the
 * row (public tenant, or no owner), else the owner and everyone above the
 * owner through app_user.manager_id and the teams they lead; rows that hang
 * off a record (tags, stage history, activities) carry the intersection of
 * the visibilities of the records they link.  So the tenant's visibility
 * setting and the hierarchy are read when they change, never per statement.
 *
 * The answers come from node-local state only:
 *
 *	- The role is the outer user (the role after SET ROLE, unchanged inside
 *	  SECURITY DEFINER functions), so the extension's own definer triggers
 *	  keep acting for the caller's tenant.
 *	- crm.is_admin(): membership of crm_admin (or superuser), from the
 *	  catalog.
 *	- A superuser or a member of crm_app (an application role) acts for the
 *	  tenant it names in crm.tenant_id, as the CRM user in crm.user_id; set
 *	  with SET LOCAL in each transaction, which a transaction pooler keeps
 *	  correct and Citus propagates (citus.propagate_set_commands = 'local').
 *	  Mappings never apply to such a role.  When crm.app_access lists tenants
 *	  for the role, it may name only those (42501 otherwise).
 *	- Any other role acts through its mappings in crm.tenant_access, keyed by
 *	  the role's OID (and checked against its name, so that an OID reused
 *	  after wraparound gains nothing; a renamed role is mapped again): a
 *	  dropped role's mappings are dead, and a role re-created under the
 *	  same name does not inherit them.  crm.tenant_id
 *	  chooses among several mappings; a setting that names no mapping of the
 *	  role is ignored with a NOTICE (once per value and session).
 *
 * crm.tenant_access and crm.app_access are read here without SPI and
 * without the planner: a direct index scan of every local relation that
 * holds their rows, which is the table itself on a single node and, on a
 * Citus node, each local shard placement of it (found in pg_dist_shard).
 * Distributed by tenant_id and co-located with crm.tenant, the mapping of a
 * tenant lives on every node that holds that tenant's rows, so a shard query
 * verifies the (role, tenant) pair without a distributed read.  The
 * coordinator, which holds no placement and runs no shard query, reads the
 * distributed table through SPI to route the statement (by role name, as
 * role OIDs differ between nodes); the shards check again by OID.  The lock
 * is taken without waiting: a locked table is an error, never a stalled
 * statement.  Tried on Citus 13.0.5 (1 coordinator, 2 workers): application
 * roles, a mapped login role, the allow-list, private visibility with its
 * hierarchy refresh, dependents and link checks behave as on one node.
 *
 * Who may be mapped is checked by the trigger crm_tenant_access_check on
 * every path (crm.grant_tenant_access() or a direct INSERT/UPDATE): only an
 * existing role, never a superuser, a BYPASSRLS role, a member of crm_app
 * or a role with members, and a role already mapped to one tenant is mapped
 * to a second one only by the operator (a superuser).  granted_by,
 * created_at and the role's OID and name are the server's.
 *
 * The answer is cached for one statement, keyed by the role and both
 * settings: a bulk statement pays for the lookup once, and a revoked
 * mapping is seen by the very next statement.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_auth_members.h"
#include "catalog/pg_class.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_index.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/catcache.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(crm_current_tenant);
PG_FUNCTION_INFO_V1(crm_current_user_id);
PG_FUNCTION_INFO_V1(crm_tenant_is_admin);
PG_FUNCTION_INFO_V1(crm_tenant_is_service);
PG_FUNCTION_INFO_V1(crm_tenant_access_check);
PG_FUNCTION_INFO_V1(crm_tenant_require);

#define TENANT_GUC	"crm.tenant_id"
#define USER_GUC	"crm.user_id"
#define APP_ROLE	"crm_app"
#define ADMIN_ROLE	"crm_admin"
#define MAX_MAPPINGS 64

/* How the current role may choose its tenant. */
typedef enum TenantPath
{
	PATH_SETTING,				/* superuser or crm_app: crm.tenant_id */
	PATH_MAPPING,				/* any other role: crm.tenant_access */
} TenantPath;

typedef struct TenantContext
{
	bool		valid;
	CrmCommandKey key;
	Oid			userid;
	char	   *tenant_guc;		/* GUC values the answer was made from */
	char	   *user_guc;
	TenantPath	path;
	int			nmappings;		/* PATH_MAPPING: how many the role has */
	bool		guc_ignored;	/* crm.tenant_id set but not used */
	bool		is_admin;
	bool		has_tenant;
	pg_uuid_t	tenant;
	bool		has_user;
	pg_uuid_t	user;
	bool		user_checked;	/* crm.user_id verified for this statement */
} TenantContext;

typedef struct Mapping
{
	pg_uuid_t	tenant;
	bool		has_user;
	pg_uuid_t	user;
} Mapping;

/* The local relations that hold the rows of one table, cached. */
typedef struct LocalRelations
{
	const char *relname;
	bool		valid;
	bool		distributed;	/* Citus lists it in pg_dist_shard */
	int			n;				/* relids[0] is the table, then placements */
	Oid			relids[64];
	SPIPlanPtr	coordinator_plan;
} LocalRelations;

static TenantContext context;
static LocalRelations access_rels = {"tenant_access"};
static LocalRelations app_rels = {"app_access"};
static LocalRelations user_rels = {"app_user"};
static bool callback_registered = false;
static char *noticed_guc = NULL;
static SPIPlanPtr user_plan = NULL;

/*
 * Any relation cache invalidation (a table distributed, a shard moved, the
 * extension dropped) may change which local relations hold the rows.
 */
static void
local_relations_invalidate(Oid relid)
{
	access_rels.valid = false;
	app_rels.valid = false;
	user_rels.valid = false;
}

/*
 * Find the local relations holding the rows of crm.<relname>: the table
 * itself, and on a Citus node every local shard placement of it, named
 * <relname>_<shardid> (read from pg_dist_shard, a node-local catalog
 * table, with a plain heap scan: no planner, so no distributed query).
 */
static void
local_relations_find(LocalRelations *lr)
{
	Oid			nsp = get_namespace_oid("crm", false);
	Oid			relid = get_relname_relid(lr->relname, nsp);
	Oid			dist_shard;

	if (!callback_registered)
	{
		crm_register_relcache_callback(local_relations_invalidate);
		callback_registered = true;
	}
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"crm.%s\" does not exist", lr->relname)));
	lr->n = 0;
	lr->distributed = false;
	lr->relids[lr->n++] = relid;

	dist_shard = get_relname_relid("pg_dist_shard", PG_CATALOG_NAMESPACE);
	if (OidIsValid(dist_shard))
	{
		Relation	rel = table_open(dist_shard, AccessShareLock);
		TableScanDesc scan = table_beginscan_catalog(rel, 0, NULL);
		HeapTuple	tuple;

		while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
		{
			bool		isnull;
			Datum		logical = heap_getattr(tuple, 1, RelationGetDescr(rel), &isnull);
			Datum		shardid;
			char		name[NAMEDATALEN];
			Oid			placement;

			if (isnull || DatumGetObjectId(logical) != relid)
				continue;
			lr->distributed = true;
			shardid = heap_getattr(tuple, 2, RelationGetDescr(rel), &isnull);
			if (isnull)
				continue;
			snprintf(name, sizeof(name), "%s_" INT64_FORMAT, lr->relname,
					 DatumGetInt64(shardid));
			placement = get_relname_relid(name, nsp);
			if (!OidIsValid(placement))
				continue;
			if (lr->n >= lengthof(lr->relids))
				ereport(ERROR,
						(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						 errmsg("crm.%s has more than %d shard placements on this node",
								lr->relname, (int) lengthof(lr->relids) - 1)));
			lr->relids[lr->n++] = placement;
		}
		table_endscan(scan);
		table_close(rel, AccessShareLock);
	}
	lr->valid = true;
}

/* The index of rel whose first column is attnum, if any. */
static Oid
index_on_column(Relation rel, AttrNumber attnum)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	Oid			result = InvalidOid;

	foreach(lc, indexes)
	{
		Oid			indexoid = lfirst_oid(lc);
		HeapTuple	tuple = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(indexoid));

		if (!HeapTupleIsValid(tuple))
			continue;
		if (((Form_pg_index) GETSTRUCT(tuple))->indkey.values[0] == attnum)
			result = indexoid;
		ReleaseSysCache(tuple);
		if (OidIsValid(result))
			break;
	}
	list_free(indexes);
	return result;
}

/*
 * On a Citus node that holds no placement of the table (the coordinator),
 * read the distributed table through SPI instead, as the table's owner (its
 * policies call crm.current_tenant(), so reading it with the caller's rights
 * would recurse).  A coordinator runs no shard query, so this distributed
 * read is allowed there; a worker always has its tenants' placements
 * beside their rows and never comes here unless it holds none at all, and
 * then Citus refuses the read rather than answering wrongly.
 *
 * Role OIDs differ between nodes (each node makes its own pg_authid row),
 * and role_oid holds the OID of the node that stored the row, so the
 * coordinator matches by the role's name.  Its answer only routes the
 * statement: the shards apply the same policies again with their own
 * lookup, by OID, so a role dropped and re-created under the same name
 * still reads and writes nothing.
 */
static int
coordinator_role_rows(LocalRelations *lr, Oid roleid, Mapping *out, int max,
					  const pg_uuid_t *except_tenant)
{
	Oid			argtypes[1] = {NAMEOID};
	Datum		args[1];
	NameData	rolename;
	Oid			save_userid;
	int			save_sec_context;
	Oid			owner;
	int			rc;
	int			found = 0;

	owner = crm_relation_owner(lr->relids[0]);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (lr->coordinator_plan == NULL)
	{
		char		sql[256];
		SPIPlanPtr	plan;

		snprintf(sql, sizeof(sql),
				 "SELECT tenant_id, %s FROM crm.%s WHERE %s OPERATOR(pg_catalog.=) $1",
				 strcmp(lr->relname, "tenant_access") == 0 ? "user_id" : "NULL::pg_catalog.uuid",
				 lr->relname,
				 strcmp(lr->relname, "tenant_access") == 0 ? "login_role" : "app_role");
		plan = SPI_prepare(sql, 1, argtypes);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		lr->coordinator_plan = plan;
	}
	namestrcpy(&rolename, GetUserNameFromId(roleid, false));
	args[0] = NameGetDatum(&rolename);
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		rc = SPI_execute_plan(lr->coordinator_plan, args, NULL, true, 0);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.%s", lr->relname);

	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);

		if (isnull)
			continue;
		if (except_tenant && memcmp(DatumGetUUIDP(d), except_tenant, sizeof(pg_uuid_t)) == 0)
			continue;
		if (found < max)
		{
			memcpy(&out[found].tenant, DatumGetUUIDP(d), sizeof(pg_uuid_t));
			d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull);
			out[found].has_user = !isnull;
			if (!isnull)
				memcpy(&out[found].user, DatumGetUUIDP(d), sizeof(pg_uuid_t));
		}
		found++;
	}
	SPI_finish();
	return found;
}

/*
 * Read the rows of crm.<relname> (tenant_access or app_access) for one
 * role OID.  The lock is only tried: whoever holds a conflicting lock on
 * the table makes this an error instead of a wait.  Rows are read under
 * the statement's snapshot, without row-level security (this is the
 * extension reading its own table, as a catalog).  Returns how many rows
 * were found (at most max are copied); except_tenant, when given, skips
 * that tenant's rows.
 */
static int
scan_role_rows(LocalRelations *lr, Oid roleid, Mapping *out, int max,
			   const pg_uuid_t *except_tenant)
{
	Snapshot	snapshot = ActiveSnapshotSet() ? GetActiveSnapshot() : GetTransactionSnapshot();
	int			found = 0;
	const char *rolename = GetUserNameFromId(roleid, false);

	if (!lr->valid)
		local_relations_find(lr);
	if (lr->distributed && lr->n == 1)
		return coordinator_role_rows(lr, roleid, out, max, except_tenant);

	for (int r = 0; r < lr->n; r++)
	{
		Relation	rel;
		AttrNumber	role_att;
		AttrNumber	tenant_att;
		AttrNumber	user_att = InvalidAttrNumber;
		AttrNumber	name_att;
		ScanKeyData key;
		SysScanDesc scan;
		HeapTuple	tuple;
		Oid			indexoid;

		if (!ConditionalLockRelationOid(lr->relids[r], AccessShareLock))
			ereport(ERROR,
					(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
					 errmsg("could not read crm.%s: the table is locked", lr->relname),
					 errdetail("The tenant a statement acts for is looked up without waiting for locks."),
					 errhint("Release the lock taken on crm.%s.", lr->relname)));
		rel = table_open(lr->relids[r], NoLock);
		role_att = crm_attnum(rel, "role_oid", OIDOID);
		tenant_att = crm_attnum(rel, "tenant_id", UUIDOID);
		name_att = crm_attnum(rel, strcmp(lr->relname, "tenant_access") == 0 ? "login_role" : "app_role",
							  NAMEOID);
		if (strcmp(lr->relname, "tenant_access") == 0)
			user_att = crm_attnum(rel, "user_id", UUIDOID);
		indexoid = index_on_column(rel, role_att);

		ScanKeyInit(&key, role_att, BTEqualStrategyNumber, F_OIDEQ,
					ObjectIdGetDatum(roleid));
		scan = systable_beginscan(rel, indexoid, OidIsValid(indexoid), snapshot, 1, &key);
		while ((tuple = systable_getnext(scan)) != NULL)
		{
			bool		isnull;
			Datum		d = heap_getattr(tuple, tenant_att, RelationGetDescr(rel), &isnull);

			if (isnull)
				continue;
			if (except_tenant &&
				memcmp(DatumGetUUIDP(d), except_tenant, sizeof(pg_uuid_t)) == 0)
				continue;
			/* an OID reused by a new role after wraparound: not its mapping */
			d = heap_getattr(tuple, name_att, RelationGetDescr(rel), &isnull);
			if (isnull || strcmp(NameStr(*DatumGetName(d)), rolename) != 0)
				continue;
			d = heap_getattr(tuple, tenant_att, RelationGetDescr(rel), &isnull);
			if (found < max)
			{
				memcpy(&out[found].tenant, DatumGetUUIDP(d), sizeof(pg_uuid_t));
				out[found].has_user = false;
				if (user_att != InvalidAttrNumber)
				{
					d = heap_getattr(tuple, user_att, RelationGetDescr(rel), &isnull);
					if (!isnull)
					{
						memcpy(&out[found].user, DatumGetUUIDP(d), sizeof(pg_uuid_t));
						out[found].has_user = true;
					}
				}
			}
			found++;
		}
		systable_endscan(scan);
		table_close(rel, NoLock);
	}
	return found;
}

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

/* Does the role have the rights of the named group role? */
static bool
has_group(Oid userid, const char *group)
{
	Oid			groupid = get_role_oid(group, true);

	return OidIsValid(groupid) && has_privs_of_role(userid, groupid);
}

/* Superusers and members of crm_app choose their tenant with crm.tenant_id. */
static bool
role_uses_setting(Oid userid)
{
	return superuser_arg(userid) || has_group(userid, APP_ROLE);
}

static void
resolve_context(void)
{
	CrmCommandKey key = crm_command_key_current();
	Oid			userid = GetOuterUserId();
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
	context.has_tenant = false;
	context.has_user = false;
	context.user_checked = false;
	context.guc_ignored = false;
	context.nmappings = 0;
	context.is_admin = superuser_arg(userid) || has_group(userid, ADMIN_ROLE);

	if (role_uses_setting(userid))
	{
		context.path = PATH_SETTING;
		if (has_guc_tenant && !superuser_arg(userid))
		{
			Mapping		allowed[MAX_MAPPINGS];
			int			n = scan_role_rows(&app_rels, userid, allowed, MAX_MAPPINGS, NULL);
			bool		ok = (n == 0);

			for (int i = 0; i < n && i < MAX_MAPPINGS && !ok; i++)
				ok = memcmp(&allowed[i].tenant, &guc_tenant, sizeof(pg_uuid_t)) == 0;
			if (!ok)
				ereport(ERROR,
						(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						 errmsg("role \"%s\" may not act for tenant %s",
								GetUserNameFromId(userid, false), crm_uuid_text(&guc_tenant)),
						 errdetail("crm.app_access lists the tenants this application role may serve, and this one is not among them.")));
		}
		context.has_tenant = has_guc_tenant;
		context.tenant = guc_tenant;
		context.has_user = has_guc_tenant && has_guc_user;
		context.user = guc_user;
	}
	else
	{
		Mapping		mappings[MAX_MAPPINGS];
		int			n = scan_role_rows(&access_rels, userid, mappings, MAX_MAPPINGS, NULL);
		int			chosen = -1;

		context.path = PATH_MAPPING;
		context.nmappings = n;
		for (int i = 0; i < n && i < MAX_MAPPINGS && has_guc_tenant; i++)
			if (memcmp(&mappings[i].tenant, &guc_tenant, sizeof(pg_uuid_t)) == 0)
				chosen = i;
		/* one mapping: that tenant, whatever the setting names */
		if (chosen < 0 && n == 1)
			chosen = 0;
		if (chosen >= 0)
		{
			context.has_tenant = true;
			context.tenant = mappings[chosen].tenant;
			context.has_user = mappings[chosen].has_user;
			context.user = mappings[chosen].user;
			/* the mapping's user is checked by its foreign key */
			context.user_checked = true;
		}
		context.guc_ignored = has_guc_tenant &&
			(!context.has_tenant ||
			 memcmp(&context.tenant, &guc_tenant, sizeof(pg_uuid_t)) != 0);
	}

	context.key = key;
	context.userid = userid;
	context.tenant_guc = remember_setting(context.tenant_guc, tenant_guc);
	context.user_guc = remember_setting(context.user_guc, user_guc);
	context.valid = true;

	/*
	 * Say once why a setting has no effect: a silent "no rows" is how the
	 * role would otherwise learn it.
	 */
	if (context.guc_ignored && !same_setting(noticed_guc, tenant_guc))
	{
		noticed_guc = remember_setting(noticed_guc, tenant_guc);
		ereport(NOTICE,
				(errmsg("crm.tenant_id is ignored for role \"%s\"",
						GetUserNameFromId(userid, false)),
				 context.has_tenant ?
				 errdetail("Only members of crm_app and superusers choose their tenant with crm.tenant_id; this role acts for the tenant of its mapping in crm.tenant_access.") :
				 errdetail("Only members of crm_app and superusers choose their tenant with crm.tenant_id, and this role has no mapping to that tenant in crm.tenant_access.")));
	}
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

/*
 * For the other C files, which record who made a change: the CRM user, if
 * any.  A user named by crm.user_id must be a user of the tenant (22023
 * otherwise), checked once per statement where the id is used; the
 * policies compare with crm.current_user_id() without a check, since an id
 * that is no user of the tenant is in no row's visible_to and shows
 * nothing more than no id would.
 */
bool
crm_current_app_user_id(pg_uuid_t *user)
{
	resolve_context();
	if (!context.has_user)
		return false;
	/*
	 * On a Citus worker (a node holding placements of crm.app_user) the
	 * check is the coordinator's: the statement that reaches a shard was
	 * checked there, and a query of crm.app_user from a shard query (a
	 * multi-shard UPDATE) is refused.
	 */
	if (!context.user_checked)
	{
		if (!user_rels.valid)
			local_relations_find(&user_rels);
		if (user_rels.distributed && user_rels.n > 1)
			context.user_checked = true;
	}
	if (!context.user_checked)
	{
		Datum		args[2];
		int			rc;
		bool		found;
		Oid			save_userid;
		int			save_sec_context;

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (user_plan == NULL)
		{
			Oid			argtypes[2] = {UUIDOID, UUIDOID};
			SPIPlanPtr	plan;

			plan = SPI_prepare("SELECT 1 FROM crm.app_user u"
							   " WHERE u.tenant_id OPERATOR(pg_catalog.=) $1"
							   " AND u.id OPERATOR(pg_catalog.=) $2",
							   2, argtypes);
			if (plan == NULL)
				elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
			SPI_keepplan(plan);
			user_plan = plan;
		}
		args[0] = UUIDPGetDatum(&context.tenant);
		args[1] = UUIDPGetDatum(&context.user);
		/* as the table's owner: the caller may hold no SELECT on app_user */
		GetUserIdAndSecContext(&save_userid, &save_sec_context);
		SetUserIdAndSecContext(crm_relation_owner(get_relname_relid("app_user",
																	   get_namespace_oid("crm", false))),
							   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
		PG_TRY();
		{
			rc = SPI_execute_plan(user_plan, args, NULL, true, 1);
		}
		PG_FINALLY();
		{
			SetUserIdAndSecContext(save_userid, save_sec_context);
		}
		PG_END_TRY();
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "could not read crm.app_user");
		found = SPI_processed > 0;
		SPI_finish();
		if (!found)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("crm.user_id %s is not a user of tenant %s",
							crm_uuid_text(&context.user), crm_uuid_text(&context.tenant)),
					 errhint("Set crm.user_id to the id of a row of crm.app_user of the tenant, or leave it empty.")));
		context.user_checked = true;
	}
	*user = context.user;
	return true;
}

/*
 * For visibility.c: does the current user see a row with this visible_to
 * (the owner part of the tenant_isolation policy)?  NULL is everyone;
 * crm_admin sees all; otherwise the CRM user must be in the array.
 */
bool
crm_current_user_sees(Datum visible_to, bool isnull)
{
	Datum	   *elems;
	int			n;

	if (isnull)
		return true;
	resolve_context();
	if (context.is_admin)
		return true;
	if (!context.has_user)
		return false;
	deconstruct_array(DatumGetArrayTypeP(visible_to), UUIDOID, UUID_LEN, false, TYPALIGN_CHAR,
					  &elems, NULL, &n);
	for (int i = 0; i < n; i++)
		if (memcmp(DatumGetPointer(elems[i]), &context.user, UUID_LEN) == 0)
			return true;
	return false;
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
	resolve_context();
	if (!context.has_user)
		PG_RETURN_NULL();
	return uuid_datum_copy(&context.user);
}

/*
 * crm.is_admin() returns boolean: the role (outside any SECURITY DEFINER
 * function) has the rights of crm_admin, or is a superuser.
 */
Datum
crm_tenant_is_admin(PG_FUNCTION_ARGS)
{
	resolve_context();
	PG_RETURN_BOOL(context.is_admin);
}

/*
 * crm.is_service() returns boolean: the role (outside any SECURITY DEFINER
 * function) is an application role (crm_app member or superuser) acting for
 * its tenant as no CRM user: a worker serving the whole tenant.  Such a role
 * chooses its tenant and its CRM user by setting, so seeing a private
 * tenant's jobs gives it nothing it could not take by naming a manager.
 */
Datum
crm_tenant_is_service(PG_FUNCTION_ARGS)
{
	resolve_context();
	PG_RETURN_BOOL(context.path == PATH_SETTING && context.has_tenant && !context.has_user);
}

/*
 * Why the current role acts for no tenant, as an errdetail.
 */
static int
no_tenant_detail(void)
{
	const char *guc = GetConfigOption(TENANT_GUC, true, false);
	bool		has_guc = guc != NULL && guc[0] != '\0';

	if (context.path == PATH_SETTING)
		return errdetail("Members of crm_app and superusers act for the tenant named by crm.tenant_id, which is not set.");
	if (context.nmappings > 1)
		return errdetail("The role is mapped to several tenants in crm.tenant_access and crm.tenant_id names none of them.");
	if (has_guc)
		return errdetail("The role is not a member of crm_app, so its crm.tenant_id setting is ignored, and it has no mapping in crm.tenant_access.");
	return errdetail("The role is not a member of crm_app and has no mapping in crm.tenant_access.");
}

/*
 * crm.tenant_require(): BEFORE INSERT FOR EACH ROW on every tenant table.
 *
 * A row whose tenant_id is still NULL after its default was computed comes
 * from a session that acts for no tenant; say why (42501), instead of the
 * bare row-level security error, or the NOT NULL error (23502) a superuser
 * would get.  A row that names its tenant passes untouched: the policies
 * decide about it.
 */
Datum
crm_tenant_require(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	tuple;
	bool		isnull;
	pg_uuid_t	tenant;

	crm_require_trigger(fcinfo, "tenant_require", true, true);
	if (!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"tenant_require\" must be fired BEFORE INSERT")));
	tuple = trigdata->tg_trigtuple;
	if (crm_replica_skips_work())
		return PointerGetDatum(tuple);

	(void) heap_getattr(tuple, crm_attnum(trigdata->tg_relation, "tenant_id", UUIDOID),
						RelationGetDescr(trigdata->tg_relation), &isnull);
	if (isnull && !crm_current_tenant_id(&tenant))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("role \"%s\" acts for no tenant; no row of \"%s\" can be written",
						GetUserNameFromId(GetOuterUserId(), false),
						crm_table_name(trigdata->tg_relation)),
				 no_tenant_detail(),
				 errhint("An application role (a member of crm_app) sets crm.tenant_id with SET LOCAL in each transaction; a person's login role is mapped to its tenant by crm.grant_tenant_access().")));
	return PointerGetDatum(tuple);
}

/* Does any role have the rights of roleid through membership? */
static bool
role_has_members(Oid roleid)
{
	CatCList   *members = SearchSysCacheList1(AUTHMEMROLEMEM, ObjectIdGetDatum(roleid));
	bool		result = members->n_members > 0;

	ReleaseSysCacheList(members);
	return result;
}

static void
refuse_identity_change(Relation rel, HeapTuple oldtup, HeapTuple newtup,
					   const char *colname, Oid typid)
{
	AttrNumber	att = crm_attnum(rel, colname, typid);
	TupleDesc	desc = RelationGetDescr(rel);
	Form_pg_attribute attr = TupleDescAttr(desc, att - 1);
	bool		oldnull;
	bool		newnull;
	Datum		oldval = heap_getattr(oldtup, att, desc, &oldnull);
	Datum		newval = heap_getattr(newtup, att, desc, &newnull);

	if (oldnull != newnull ||
		(!oldnull && !datumIsEqual(oldval, newval, attr->attbyval, attr->attlen)))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("column \"%s\" of relation \"%s\" cannot be changed",
						colname, crm_table_name(rel)),
				 errdetail("A row keeps the tenant and the id it was created with.")));
}

/*
 * crm.tenant_access_check(): BEFORE INSERT OR UPDATE FOR EACH ROW on
 * crm.tenant_access (argument 'mapping') and crm.app_access ('app').
 *
 * Enforces, whatever path wrote the row, who may be mapped (see the file
 * header), and sets the columns that are the server's: the role's OID and
 * canonical name from the name given, granted_by (the role that made the
 * change), created_at.  An UPDATE may change user_id only.  A superuser's
 * values of granted_by and created_at are kept, so that pg_restore brings
 * the rows back as they were.
 */
Datum
crm_tenant_access_check(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	desc;
	bool		is_app;
	const char *rolecol;
	HeapTuple	newtup;
	AttrNumber	role_att;
	AttrNumber	oid_att;
	AttrNumber	by_att;
	AttrNumber	created_att;
	AttrNumber	tenant_att;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};
	int			cols[4];
	bool		isnull;
	Oid			actor = GetOuterUserId();
	NameData	rolename;
	NameData	actorname;

	crm_require_trigger(fcinfo, "tenant_access_check", true, true);
	if (trigdata->tg_trigger->tgnargs != 1 ||
		(strcmp(trigdata->tg_trigger->tgargs[0], "mapping") != 0 &&
		 strcmp(trigdata->tg_trigger->tgargs[0], "app") != 0))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"tenant_access_check\" takes one argument, 'mapping' or 'app'")));
	if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"tenant_access_check\" must be fired BEFORE INSERT OR UPDATE")));

	rel = trigdata->tg_relation;
	desc = RelationGetDescr(rel);
	is_app = strcmp(trigdata->tg_trigger->tgargs[0], "app") == 0;
	rolecol = is_app ? "app_role" : "login_role";
	role_att = crm_attnum(rel, rolecol, NAMEOID);
	oid_att = crm_attnum(rel, "role_oid", OIDOID);
	by_att = crm_attnum(rel, "granted_by", NAMEOID);
	created_att = crm_attnum(rel, "created_at", TIMESTAMPTZOID);
	tenant_att = crm_attnum(rel, "tenant_id", UUIDOID);
	newtup = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ?
		trigdata->tg_newtuple : trigdata->tg_trigtuple;

	if (crm_replica_skips_work())
		return PointerGetDatum(newtup);

	cols[0] = oid_att;
	cols[1] = role_att;
	cols[2] = by_att;
	cols[3] = created_att;

	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		HeapTuple	oldtup = trigdata->tg_trigtuple;

		refuse_identity_change(rel, oldtup, newtup, "tenant_id", UUIDOID);
		refuse_identity_change(rel, oldtup, newtup, rolecol, NAMEOID);
		refuse_identity_change(rel, oldtup, newtup, "role_oid", OIDOID);
		/* the audit columns keep what the server wrote */
		values[0] = heap_getattr(oldtup, oid_att, desc, &nulls[0]);
		values[1] = heap_getattr(oldtup, role_att, desc, &nulls[1]);
		values[2] = heap_getattr(oldtup, by_att, desc, &nulls[2]);
		values[3] = heap_getattr(oldtup, created_att, desc, &nulls[3]);
	}
	else
	{
		Datum		d = heap_getattr(newtup, role_att, desc, &isnull);
		Oid			roleid;
		HeapTuple	authtup;
		Form_pg_authid auth;
		bool		bypass;
		bool		super;

		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not be null", rolecol)));
		roleid = get_role_oid(NameStr(*DatumGetName(d)), true);
		if (!OidIsValid(roleid))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("role \"%s\" does not exist", NameStr(*DatumGetName(d))),
					 errdetail("A tenant's mapping names an existing role; it ends with the role.")));
		authtup = SearchSysCache1(AUTHOID, ObjectIdGetDatum(roleid));
		if (!HeapTupleIsValid(authtup))
			elog(ERROR, "cache lookup failed for role %u", roleid);
		auth = (Form_pg_authid) GETSTRUCT(authtup);
		namestrcpy(&rolename, NameStr(auth->rolname));
		bypass = auth->rolbypassrls;
		super = auth->rolsuper;
		ReleaseSysCache(authtup);

		if (is_app)
		{
			if (!has_group(roleid, APP_ROLE) || super)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("role \"%s\" is not an application role", NameStr(rolename)),
						 errdetail("crm.app_access narrows the tenants a member of crm_app may serve; other roles act through crm.tenant_access.")));
		}
		else
		{
			pg_uuid_t	tenant;
			Mapping		other;

			if (super || bypass || has_group(roleid, APP_ROLE))
				ereport(ERROR,
						(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						 errmsg("role \"%s\" cannot be mapped to a tenant", NameStr(rolename)),
						 errdetail("Superusers, roles with BYPASSRLS and members of crm_app serve a tenant only through crm.tenant_id."),
						 errhint("Map a login role of a person or tool instead.")));
			if (!superuser_arg(actor) && role_has_members(roleid))
				ereport(ERROR,
						(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						 errmsg("role \"%s\" cannot be mapped to a tenant by a tenant's admin", NameStr(rolename)),
						 errdetail("Other roles are members of it and could act for the tenant through SET ROLE."),
						 errhint("Only the operator (a superuser) maps a role that has members.")));
			d = heap_getattr(newtup, tenant_att, desc, &isnull);
			if (!isnull)
			{
				memcpy(&tenant, DatumGetUUIDP(d), sizeof(pg_uuid_t));
				if (!superuser_arg(actor) &&
					scan_role_rows(&access_rels, roleid, &other, 1, &tenant) > 0)
					ereport(ERROR,
							(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
							 errmsg("role \"%s\" is already mapped to another tenant", NameStr(rolename)),
							 errdetail("A role acts for the tenant that mapped it first; a second tenant's mapping needs the operator."),
							 errhint("The operator (a superuser) may map the role to a second tenant with crm.grant_tenant_access().")));
			}
		}
		values[0] = ObjectIdGetDatum(roleid);
		values[1] = NameGetDatum(&rolename);
		namestrcpy(&actorname, GetUserNameFromId(actor, false));
		values[2] = NameGetDatum(&actorname);
		values[3] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());

		/*
		 * The operator's own values stand (pg_restore brings rows back
		 * unchanged); the role's OID is always read again from its name, as
		 * OIDs differ between clusters.
		 */
		if (superuser_arg(actor))
		{
			bool		by_null;
			bool		created_null;
			Datum		by = heap_getattr(newtup, by_att, desc, &by_null);
			Datum		created = heap_getattr(newtup, created_att, desc, &created_null);

			if (!by_null)
				values[2] = by;
			if (!created_null)
				values[3] = created;
		}
	}

	return PointerGetDatum(heap_modify_tuple_by_cols(newtup, desc, 4, cols, values, nulls));
}
