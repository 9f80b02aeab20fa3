/*-------------------------------------------------------------------------
 *
 * crm.h
 *	  Declarations shared by the C files of the crm extension.
 *
 * Each .c file holds one capability; only what two or more of them need
 * lives here.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CRM_H
#define CRM_H

#include "postgres.h"

#include "access/xact.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "storage/proc.h"
#include "utils/uuid.h"

/*
 * Identifies one SQL command of one transaction in this backend.  Caches
 * that may only be trusted while nothing could have changed underneath
 * them (stage lookups, the tenant a session acts for) are tagged with the
 * key of the command that filled them and dropped when it differs.
 */
typedef struct CrmCommandKey
{
	LocalTransactionId lxid;
	CommandId	cid;
} CrmCommandKey;

static inline CrmCommandKey
crm_command_key_current(void)
{
	CrmCommandKey key;

	key.lxid = MyProc->lxid;
	key.cid = GetCurrentCommandId(false);
	return key;
}

static inline bool
crm_command_key_equal(CrmCommandKey a, CrmCommandKey b)
{
	return a.lxid == b.lxid && a.cid == b.cid;
}

/* common.c */
extern void crm_require_trigger(FunctionCallInfo fcinfo, const char *funcname,
								bool row_level, bool before);
extern bool crm_replica_skips_work(void);
extern int	crm_attnum(Relation rel, const char *colname);

/* tenant.c */
extern bool crm_current_tenant_id(pg_uuid_t *tenant);
extern bool crm_current_app_user_id(pg_uuid_t *user);

#endif							/* CRM_H */
