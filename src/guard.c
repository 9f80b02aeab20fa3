/*-------------------------------------------------------------------------
 *
 * guard.c
 *	  The fences around the extension itself: its schema, and the table
 *	  locks a role other than the tables' owner may take.
 *
 * - Install: the install script's first statements call
 *	 crm_guard_check_install(), which refuses a schema crm that someone
 *	 else made or may write into.  CREATE EXTENSION runs the script with
 *	 search_path = crm, so an exact-match format() or an operator >=
 *	 (numeric, integer) planted there beforehand would otherwise run as the
 *	 installing superuser and be bound into constraints (CVE-2022-2625 and
 *	 CVE-2023-39417 are of the same family).
 * - Use: the C code names crm.<object> in every statement it runs, so if
 *	 the extension's schema were renamed and another schema took the name
 *	 crm, that schema's objects would be used.  crm_guard_require_schema()
 *	 refuses to go on unless the schema named crm is the extension's own;
 *	 every trigger (through crm_require_trigger) and the tenant lookup call
 *	 it.
 * - LOCK: any role with UPDATE or DELETE on a table may LOCK it in ACCESS
 *	 EXCLUSIVE MODE and so stop every tenant.  A ProcessUtility hook refuses
 *	 LOCK TABLE on the extension's relations (and on views over them) to
 *	 roles that do not own them.  It is active once the library is loaded,
 *	 which is why it should be preloaded (shared_preload_libraries or
 *	 session_preload_libraries): a session that has not yet called a crm
 *	 function has not loaded it.  VACUUM FULL and REINDEX, which PostgreSQL
 *	 15 lets a database's owner run on every table, are refused alike.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/dependency.h"
#include "catalog/index.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_depend.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_namespace.h"
#include "commands/defrem.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "rewrite/rewriteHandler.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#define CRM_NAME	"crm"

PG_FUNCTION_INFO_V1(crm_guard_check_install);

void		_PG_init(void);

static ProcessUtility_hook_type prev_process_utility = NULL;

/* What the catalog says about extension crm of the current database. */
typedef struct CrmExtension
{
	Oid			oid;
	Oid			namespace;
	Oid			owner;
} CrmExtension;

/*
 * The last successful schema check, valid for the statement it was made in
 * and until any schema changes (a rename or a drop sends an invalidation,
 * seen by this backend before its next catalog lookup).
 */
static bool schema_checked = false;
static bool schema_callback_registered = false;
static LocalTransactionId checked_lxid;
static TimestampTz checked_statement_start;

/*
 * Extension crm of this database, from pg_extension; false when it is not
 * installed here.
 */
static bool
crm_extension_lookup(CrmExtension *ext)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;
	bool		found = false;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum(CRM_NAME));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		Form_pg_extension form = (Form_pg_extension) GETSTRUCT(tup);

		ext->oid = form->oid;
		ext->namespace = form->extnamespace;
		ext->owner = form->extowner;
		found = true;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

/* The owner of a schema, by oid. */
static Oid
namespace_owner(Oid nspid)
{
	HeapTuple	tup;
	Oid			owner;

	tup = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(nspid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for namespace %u", nspid);
	owner = ((Form_pg_namespace) GETSTRUCT(tup))->nspowner;
	ReleaseSysCache(tup);
	return owner;
}

/* Any change to any schema may be a rename of ours: check again. */
static void
schema_changed(Datum arg, int cacheid, uint32 hashvalue)
{
	schema_checked = false;
}

/*
 * Error out unless the schema named crm is extension crm's schema and is
 * owned by the extension's owner or a superuser.  The C code's statements
 * name crm.<object>; after ALTER SCHEMA crm RENAME and a CREATE SCHEMA crm
 * by someone else they would use that someone's tables and functions, so
 * the extension stops instead.  Cheap: checked once per statement, and
 * again only after a schema changed.
 */
void
crm_guard_require_schema(void)
{
	CrmExtension ext;
	Oid			nspid;
	Oid			owner;

	if (schema_checked && checked_lxid == MyProc->lxid &&
		checked_statement_start == GetCurrentStatementStartTimestamp())
		return;
	if (!schema_callback_registered)
	{
		CacheRegisterSyscacheCallback(NAMESPACEOID, schema_changed, (Datum) 0);
		schema_callback_registered = true;
	}
	schema_checked = false;

	if (!crm_extension_lookup(&ext))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("extension \"crm\" is not installed in this database"),
				 errdetail("A function of the crm library was called without the extension that defines it.")));

	nspid = get_namespace_oid(CRM_NAME, true);
	if (nspid != ext.namespace)
	{
		char	   *actual = get_namespace_name(ext.namespace);

		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("schema \"crm\" is not the schema of extension \"crm\""),
				 errdetail("The extension's objects are in schema \"%s\"; its C code names schema crm in every statement it runs, so it would use %s.",
						   actual ? actual : "?",
						   OidIsValid(nspid) ? "the objects of another schema" : "objects that do not exist"),
				 errhint("A superuser must rename the extension's schema back to crm (after dropping or renaming any other schema of that name).")));
	}

	owner = namespace_owner(nspid);
	if (owner != ext.owner && !superuser_arg(owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("schema \"crm\" is owned by role \"%s\", not by the extension's owner or a superuser",
						GetUserNameFromId(owner, false)),
				 errdetail("The owner of a schema may drop and replace the objects in it."),
				 errhint("A superuser must give the schema back: ALTER SCHEMA crm OWNER TO %s.",
						 quote_identifier(GetUserNameFromId(ext.owner, false)))));

	schema_checked = true;
	checked_lxid = MyProc->lxid;
	checked_statement_start = GetCurrentStatementStartTimestamp();
}

/* True when some object other than the extension itself lives in nspid. */
static bool
schema_holds_objects(Oid nspid, Oid extoid)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData keys[2];
	HeapTuple	tup;
	bool		found = false;

	/* Every object in a schema (and a default ACL for it) depends on it. */
	rel = table_open(DependRelationId, AccessShareLock);
	ScanKeyInit(&keys[0], Anum_pg_depend_refclassid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(NamespaceRelationId));
	ScanKeyInit(&keys[1], Anum_pg_depend_refobjid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(nspid));
	scan = systable_beginscan(rel, DependReferenceIndexId, true, NULL, 2, keys);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_depend dep = (Form_pg_depend) GETSTRUCT(tup);

		if (dep->classid == ExtensionRelationId && dep->objid == extoid)
			continue;
		/* the install's own objects so far (the guard function itself) */
		if (OidIsValid(extoid) && getExtensionOfObject(dep->classid, dep->objid) == extoid)
			continue;
		found = true;
		break;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

/*
 * crm_guard_check_install() returns void: called by the install script
 * before anything else, through a function it makes in schema crm and drops
 * at once (nothing else is looked up in schema crm before this has passed;
 * the function itself is a member of the extension being created, which
 * schema_holds_objects() leaves out).
 *
 * CREATE EXTENSION uses a schema crm that already exists.  That is safe
 * only if nothing is in it, no role but its owner can add anything to it
 * while the script runs, and its owner is the installing role or a
 * superuser (a schema's owner may drop and replace the objects in it, and
 * rename it).  A schema CREATE EXTENSION made itself passes; so does the
 * empty schema a superuser's DROP EXTENSION leaves, or that pg_restore
 * makes before CREATE EXTENSION.
 */
Datum
crm_guard_check_install(PG_FUNCTION_ARGS)
{
	Oid			nspid;
	HeapTuple	tup;
	Form_pg_namespace nsp;
	Oid			owner;
	Datum		aclDatum;
	bool		isnull;

	if (!creating_extension ||
		get_extension_oid(CRM_NAME, true) != CurrentExtensionObject)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("crm_guard_check_install() may only be called by CREATE EXTENSION crm")));

	nspid = get_namespace_oid(CRM_NAME, false);
	tup = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(nspid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for namespace %u", nspid);
	nsp = (Form_pg_namespace) GETSTRUCT(tup);
	owner = nsp->nspowner;

	if (owner != GetUserId() && !superuser_arg(owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("schema \"crm\" already exists and is owned by role \"%s\"",
						GetUserNameFromId(owner, false)),
				 errdetail("The extension installs only into a schema crm that it creates, or that is empty and owned by the installing role or a superuser: the owner of a schema may put objects in it that the install would call, and may later rename it or replace what is in it."),
				 errhint("Check what schema crm holds, drop or rename it, then run CREATE EXTENSION crm again.")));

	aclDatum = SysCacheGetAttr(NAMESPACEOID, tup, Anum_pg_namespace_nspacl, &isnull);
	if (!isnull)
	{
		Acl		   *acl = DatumGetAclP(aclDatum);
		AclItem    *items = ACL_DAT(acl);

		for (int i = 0; i < ACL_NUM(acl); i++)
		{
			Oid			grantee = items[i].ai_grantee;

			if ((ACLITEM_GET_PRIVS(items[i]) & ACL_CREATE) == 0 || grantee == owner)
				continue;
			if (grantee != ACL_ID_PUBLIC && superuser_arg(grantee))
				continue;
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("schema \"crm\" already exists and %s may create objects in it",
							grantee == ACL_ID_PUBLIC ? "every role" :
							psprintf("role \"%s\"", GetUserNameFromId(grantee, false))),
					 errdetail("Objects created in schema crm while the install runs could be called by it."),
					 errhint("REVOKE CREATE ON SCHEMA crm FROM %s, or drop the schema, then run CREATE EXTENSION crm again.",
							 grantee == ACL_ID_PUBLIC ? "PUBLIC" :
							 quote_identifier(GetUserNameFromId(grantee, false)))));
		}
	}
	ReleaseSysCache(tup);

	if (schema_holds_objects(nspid, CurrentExtensionObject))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("schema \"crm\" already exists and is not empty"),
				 errdetail("CREATE EXTENSION crm runs its script with search_path = crm: a function or operator already in that schema could be called by the install, as the installing role."),
				 errhint("Check what schema crm holds, drop or rename it, then run CREATE EXTENSION crm again.")));

	PG_RETURN_VOID();
}

/* What lock_target_walker() carries through a view's query. */
typedef struct LockTargetContext
{
	Oid			crm_nsp;		/* the extension's schema */
	Oid			viewoid;		/* the view being looked through */
} LockTargetContext;

static bool lock_target_walker(Node *node, LockTargetContext *context);

/*
 * Refuse an explicit lock on relid, if it is one of the extension's
 * relations, to a role that does not own it; for a view, look through it
 * to the relations LOCK would lock with it (PostgreSQL locks a view's base
 * relations too, checking the view owner's privileges, so a writer's own
 * view over crm.account would otherwise do).
 */
static void
check_lock_target(Oid relid, Oid crm_nsp)
{
	char		relkind;

	check_stack_depth();
	if (get_rel_namespace(relid) == crm_nsp && !pg_class_ownercheck(relid, GetUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to lock relation \"crm.%s\"", get_rel_name(relid)),
				 errdetail("Only the owner of a crm table may lock it explicitly: the lock would stop the statements of every tenant."),
				 errhint("Lock the rows you change instead (SELECT ... FOR UPDATE).")));

	relkind = get_rel_relkind(relid);
	if (relkind == RELKIND_VIEW)
	{
		Relation	view = table_open(relid, AccessShareLock);
		LockTargetContext context;

		context.crm_nsp = crm_nsp;
		context.viewoid = relid;
		lock_target_walker((Node *) get_view_query(view), &context);
		table_close(view, AccessShareLock);
	}
}

/*
 * Check every relation a view's query reads, in subqueries, sublinks and
 * CTEs too, and through views it reads.
 */
static bool
lock_target_walker(Node *node, LockTargetContext *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, Query))
	{
		Query	   *query = (Query *) node;
		ListCell   *lc;

		foreach(lc, query->rtable)
		{
			RangeTblEntry *rte = lfirst_node(RangeTblEntry, lc);

			/* a view's rule names the view itself (as OLD and NEW): skip it */
			if (rte->rtekind == RTE_RELATION && rte->relid != context->viewoid)
				check_lock_target(rte->relid, context->crm_nsp);
		}
		return query_tree_walker(query, lock_target_walker, context, 0);
	}
	return expression_tree_walker(node, lock_target_walker, context);
}

/*
 * True when the current role may act as the owner of the extension's
 * tables (it is, or has the privileges of, the extension's owner, or is a
 * superuser).
 */
static bool
owns_crm_tables(const CrmExtension *ext)
{
	return superuser() || has_privs_of_role(GetUserId(), ext->owner);
}

/*
 * Refuse a maintenance command that would take a lock stopping every
 * tenant (VACUUM FULL, REINDEX) on the extension's tables to a role that
 * does not own them.  PostgreSQL 15 lets the owner of the database run them
 * on every table of it, crm's included, and that role is often the
 * application's.
 */
static void
refuse_maintenance(const char *command, const char *relname)
{
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 relname ?
			 errmsg("permission denied to %s relation \"crm.%s\"", command, relname) :
			 errmsg("permission denied to %s the tables of extension \"crm\"", command),
			 errdetail("Only the owner of the crm tables may run %s on them: it locks them against the statements of every tenant.",
					   command),
			 relname ? 0 :
			 errhint("Name the tables to process, leaving out those of schema crm.")));
}

/* Refuse command on relid (an index counts as its table) to a non-owner. */
static void
check_maintenance_target(const char *command, Oid relid, const CrmExtension *ext)
{
	if (get_rel_relkind(relid) == RELKIND_INDEX ||
		get_rel_relkind(relid) == RELKIND_PARTITIONED_INDEX)
		relid = IndexGetRelation(relid, false);
	if (get_rel_namespace(relid) == ext->namespace && !pg_class_ownercheck(relid, GetUserId()))
		refuse_maintenance(command, get_rel_name(relid));
}

/*
 * VACUUM FULL rewrites each table under an ACCESS EXCLUSIVE lock: refuse
 * it on crm tables, named or (with no table list) implied, to non-owners.
 */
static void
check_vacuum(VacuumStmt *stmt, const CrmExtension *ext)
{
	bool		full = false;
	ListCell   *lc;

	foreach(lc, stmt->options)
	{
		DefElem    *opt = lfirst_node(DefElem, lc);

		if (strcmp(opt->defname, "full") == 0)
			full = defGetBoolean(opt);
	}
	if (!stmt->is_vacuumcmd || !full)
		return;					/* plain VACUUM and ANALYZE block no reader or writer */
	if (stmt->rels == NIL)
	{
		if (!owns_crm_tables(ext))
			refuse_maintenance("VACUUM FULL", NULL);
		return;
	}
	foreach(lc, stmt->rels)
	{
		VacuumRelation *vrel = lfirst_node(VacuumRelation, lc);
		Oid			relid = OidIsValid(vrel->oid) ? vrel->oid :
			RangeVarGetRelid(vrel->relation, NoLock, true);

		if (OidIsValid(relid))
			check_maintenance_target("VACUUM FULL", relid, ext);
	}
}

/*
 * REINDEX locks the table against writes and its indexes against reads:
 * refuse it on crm tables, indexes, schema crm or the whole database to
 * non-owners.  REINDEX SYSTEM touches catalogs only.
 */
static void
check_reindex(ReindexStmt *stmt, const CrmExtension *ext)
{
	Oid			relid;

	switch (stmt->kind)
	{
		case REINDEX_OBJECT_INDEX:
		case REINDEX_OBJECT_TABLE:
			relid = RangeVarGetRelid(stmt->relation, NoLock, true);
			if (OidIsValid(relid))
				check_maintenance_target("REINDEX", relid, ext);
			break;
		case REINDEX_OBJECT_SCHEMA:
			if (get_namespace_oid(stmt->name, true) == ext->namespace &&
				!owns_crm_tables(ext))
				refuse_maintenance("REINDEX", NULL);
			break;
		case REINDEX_OBJECT_DATABASE:
			if (!owns_crm_tables(ext))
				refuse_maintenance("REINDEX", NULL);
			break;
		case REINDEX_OBJECT_SYSTEM:
			break;
	}
}

/*
 * ProcessUtility hook: LOCK TABLE on a crm relation, or on a view that
 * reaches one, is for the relation's owner (and superusers) only.  PostgreSQL
 * lets any role with UPDATE, DELETE or TRUNCATE take any lock mode, and one
 * ACCESS EXCLUSIVE lock on crm.account or crm.tenant_access, held, stops
 * every tenant.  Everything else passes to the previous hook unchanged.
 */
static void
crm_guard_process_utility(PlannedStmt *pstmt, const char *queryString,
						  bool readOnlyTree, ProcessUtilityContext context,
						  ParamListInfo params, QueryEnvironment *queryEnv,
						  DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	CrmExtension ext;

	if ((IsA(parsetree, LockStmt) || IsA(parsetree, VacuumStmt) ||
		 IsA(parsetree, ReindexStmt)) &&
		IsTransactionState() && crm_extension_lookup(&ext))
	{
		if (IsA(parsetree, LockStmt))
		{
			ListCell   *lc;

			foreach(lc, ((LockStmt *) parsetree)->relations)
			{
				RangeVar   *rv = lfirst_node(RangeVar, lc);
				Oid			relid = RangeVarGetRelid(rv, NoLock, true);

				/* a missing relation gets LOCK's own error */
				if (OidIsValid(relid))
					check_lock_target(relid, ext.namespace);
			}
		}
		else if (IsA(parsetree, VacuumStmt))
			check_vacuum((VacuumStmt *) parsetree, &ext);
		else
			check_reindex((ReindexStmt *) parsetree, &ext);
	}

	if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context,
							 params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}

/*
 * Module load: install the LOCK guard, chained after any earlier hook.
 */
void
_PG_init(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = crm_guard_process_utility;
}
