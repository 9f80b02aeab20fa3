/*-------------------------------------------------------------------------
 *
 * outbox.c
 *	  The event outbox: positions, crm.emit_event(), and the statement
 *	  trigger that writes the business events of leads, opportunities and
 *	  activities in the same transaction as the change.
 *
 * Position of an event = (the writing transaction's FullTransactionId << 24)
 * + its number within the transaction (1, 2, ...).  A reader is handed only
 * the events below crm.event_head() = (its snapshot's xmin << 24): every
 * transaction older than xmin has ended, and every transaction that can
 * still write an event has an id of at least xmin, so an event committed
 * later always lands after every event already handed out.  This is the
 * transaction-id and snapshot technique of PgQ and of logical-decoding
 * outboxes, without a ticker.  A long transaction holds the head back (its
 * events are not yet known to be in order); readers then wait, they never
 * skip.
 *
 * Events are inserted as the extension's owner: no role holds INSERT on
 * crm.event, so what it says is the server's.  One NOTIFY crm_events per
 * transaction (PostgreSQL folds identical notifications of a transaction
 * into one; none is sent when no event was written).
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include "access/table.h"
#include "access/transam.h"
#include "catalog/namespace.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(crm_outbox_emit_event);
PG_FUNCTION_INFO_V1(crm_outbox_event_head);
PG_FUNCTION_INFO_V1(crm_outbox_event_limit);
PG_FUNCTION_INFO_V1(crm_outbox_record_events);

#define POSITION_SHIFT 24
#define POSITION_MAX_PER_XACT ((1 << POSITION_SHIFT) - 1)

/* The events a statement writes, before they are inserted. */
typedef struct PendingEvent
{
	pg_uuid_t	tenant;
	int64		position;
	const char *event_type;
	bool		has_entity_id;
	pg_uuid_t	entity_id;
	Jsonb	   *payload;		/* a JSON object */
} PendingEvent;

typedef struct EventBatch
{
	const char *entity;
	int			n;
	int			cap;
	PendingEvent *events;
} EventBatch;

static FullTransactionId position_xid;
static uint32 position_next = 0;

static SPIPlanPtr inbound_plan = NULL;
static SPIPlanPtr insert_plan = NULL;
static SPIPlanPtr insert_one_plan = NULL;
static SPIPlanPtr converted_opportunity_plan = NULL;

/*
 * The next position of the current transaction.  Taking the transaction id
 * first (assigning one if need be) is what makes the order safe: the
 * position can only be below the head of a reader whose snapshot already
 * counts this transaction as ended.
 */
static int64
next_position(void)
{
	FullTransactionId fxid = GetTopFullTransactionId();

	if (!FullTransactionIdEquals(fxid, position_xid))
	{
		position_xid = fxid;
		position_next = 0;
	}
	if (position_next >= POSITION_MAX_PER_XACT)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many events in one transaction"),
				 errdetail("A transaction can write at most %d events.", POSITION_MAX_PER_XACT),
				 errhint("Split the change into several transactions.")));
	position_next++;
	return (int64) ((U64FromFullTransactionId(fxid) << POSITION_SHIFT) | position_next);
}

/* A FullTransactionId for a 32-bit xid that is not in the future. */
static FullTransactionId
full_xid_not_after_next(TransactionId xid)
{
	FullTransactionId next = ReadNextFullTransactionId();
	uint32		epoch = EpochFromFullTransactionId(next);

	if (xid > XidFromFullTransactionId(next))
		epoch--;
	return FullTransactionIdFromEpochAndXid(epoch, xid);
}

/*
 * crm.event_head(): the position below which every event is final (see the
 * file header).  Computed from the xmin of the snapshot the calling query
 * reads with, so the events a query returns below it are exactly those it
 * can see.
 */
Datum
crm_outbox_event_head(PG_FUNCTION_ARGS)
{
	Snapshot	snap = ActiveSnapshotSet() ? GetActiveSnapshot() : GetTransactionSnapshot();
	FullTransactionId xmin = full_xid_not_after_next(snap->xmin);

	PG_RETURN_INT64((int64) (U64FromFullTransactionId(xmin) << POSITION_SHIFT));
}

/*
 * crm.event_limit(): above every position written so far (from the next
 * transaction id); a cursor at or beyond it cannot come from this database.
 */
Datum
crm_outbox_event_limit(PG_FUNCTION_ARGS)
{
	FullTransactionId next = ReadNextFullTransactionId();

	PG_RETURN_INT64((int64) (U64FromFullTransactionId(next) << POSITION_SHIFT));
}

static void
batch_init(EventBatch *batch, const char *entity)
{
	batch->entity = entity;
	batch->n = 0;
	batch->cap = 16;
	batch->events = palloc(sizeof(PendingEvent) * batch->cap);
}

static PendingEvent *
batch_add(EventBatch *batch, const pg_uuid_t *tenant, const char *event_type,
		  const pg_uuid_t *entity_id, Jsonb *payload)
{
	PendingEvent *ev;

	if (batch->n == batch->cap)
	{
		batch->cap *= 2;
		batch->events = repalloc_huge(batch->events, sizeof(PendingEvent) * batch->cap);
	}
	ev = &batch->events[batch->n++];
	ev->tenant = *tenant;
	ev->position = next_position();
	ev->event_type = event_type;
	ev->has_entity_id = entity_id != NULL;
	if (entity_id)
		ev->entity_id = *entity_id;
	ev->payload = payload;
	return ev;
}

/*
 * crm.event as 63_outbox.sql and 93_private_3_outbox.sql make it: the
 * columns the direct path writes (all of them), and the triggers whose
 * work it does itself: tenant_require (tenant_id is the record's),
 * outbox_assign_position (fired only for position 0, which these rows
 * never have), touch_updated_at (created_at and updated_at are the
 * transaction's start, as occurred_at's default), visibility_row 'history'
 * (visible_to is NULL in a public tenant) and workflow_match (called with
 * the rows written, when it would have fired), and the foreign key to
 * crm.tenant (each tenant locked once, FOR KEY SHARE, as its check does
 * for every row).
 */
enum
{
	EV_TENANT, EV_POSITION, EV_ID, EV_TYPE, EV_ENTITY, EV_ENTITY_ID, EV_PAYLOAD,
	EV_OCCURRED_AT, EV_CREATED_AT, EV_UPDATED_AT, EV_VISIBLE_TO,
	NUM_EV_COLUMNS
};
static const char *const event_table_columns[NUM_EV_COLUMNS] = {
	"tenant_id", "position", "id", "event_type", "entity", "entity_id", "payload",
	"occurred_at", "created_at", "updated_at", "visible_to"
};
static const Oid event_table_types[NUM_EV_COLUMNS] = {
	UUIDOID, INT8OID, UUIDOID, TEXTOID, TEXTOID, UUIDOID, JSONBOID,
	TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID, UUIDARRAYOID
};
static const char *const event_table_triggers[] = {
	"tenant_require", "outbox_assign_position", "touch_updated_at", "visibility_row",
	"workflow_match"
};

static SPIPlanPtr tenant_lock_plan = NULL;

/* Would a trigger so enabled fire now (ENABLE / DISABLE, session_replication_role)? */
static bool
trigger_fires(char tgenabled)
{
	if (tgenabled == TRIGGER_DISABLED)
		return false;
	if (SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA)
		return tgenabled == TRIGGER_FIRES_ON_REPLICA || tgenabled == TRIGGER_FIRES_ALWAYS;
	return tgenabled == TRIGGER_FIRES_ON_ORIGIN || tgenabled == TRIGGER_FIRES_ALWAYS;
}

/*
 * Are crm.event's own triggers where the extension put them (the row
 * triggers BEFORE INSERT FOR EACH ROW, workflow_match once, AFTER INSERT
 * FOR EACH STATEMENT with its transition table)?  *match_enabled: the
 * workflow_match trigger's tgenabled (TRIGGER_DISABLED when there is none),
 * whether it fires being decided per statement (session_replication_role).
 */
static bool
event_triggers_as_made(Relation rel, char *match_enabled)
{
	TriggerDesc *trigdesc = rel->trigdesc;
	int			nmatch = 0;

	*match_enabled = TRIGGER_DISABLED;
	for (int i = 0; trigdesc != NULL && i < trigdesc->numtriggers; i++)
	{
		Trigger    *trigger = &trigdesc->triggers[i];
		char	   *name;

		if (!TRIGGER_FOR_INSERT(trigger->tgtype) || trigger->tgisinternal)
			continue;
		name = get_func_name(trigger->tgfoid);
		if (name != NULL && strcmp(name, "workflow_match") == 0)
		{
			if (!TRIGGER_FOR_AFTER(trigger->tgtype) || TRIGGER_FOR_ROW(trigger->tgtype) ||
				trigger->tgnargs != 0 || trigger->tgnewtable == NULL || ++nmatch > 1)
				return false;
			*match_enabled = trigger->tgenabled;
		}
		else if (!TRIGGER_FOR_BEFORE(trigger->tgtype) || !TRIGGER_FOR_ROW(trigger->tgtype))
			return false;
	}
	return true;
}

/*
 * What events_write_direct() learns of crm.event: looked at once, not for
 * every statement (a single-row insert writes one event), and forgotten on
 * the table's relcache invalidation, which any change it depends on makes
 * (a column, a trigger added, dropped, enabled or disabled, a foreign key,
 * its owner, ATTACH PARTITION, the table dropped).
 */
typedef struct EventTableShape
{
	Oid			relid;			/* InvalidOid: not looked at yet */
	Oid			owner;
	bool		as_made;
	char		match_enabled;	/* workflow_match's tgenabled */
	int			att[NUM_EV_COLUMNS];	/* 0-based column of each */
} EventTableShape;

static EventTableShape event_shape;

static void
event_shape_invalidate(Oid relid)
{
	if (relid == InvalidOid || relid == event_shape.relid)
		event_shape.relid = InvalidOid;
}

/* crm.event's shape, or NULL when there is no crm.event. */
static const EventTableShape *
event_table_shape(void)
{
	static bool callback = false;
	Oid			relid;
	Relation	rel;
	EventTableShape fresh;

	if (!callback)
	{
		crm_register_relcache_callback(event_shape_invalidate);
		callback = true;
	}
	if (OidIsValid(event_shape.relid))
		return &event_shape;
	relid = get_relname_relid("event", get_namespace_oid("crm", false));
	if (!OidIsValid(relid))
		return NULL;
	memset(&fresh, 0, sizeof(fresh));
	rel = table_open(relid, AccessShareLock);
	fresh.owner = rel->rd_rel->relowner;
	fresh.as_made = rel->rd_rel->relkind == RELKIND_RELATION && !rel->rd_rel->relispartition &&
		crm_row_writer_columns_known(rel, event_table_columns, event_table_types, NUM_EV_COLUMNS) &&
		crm_row_writer_only_triggers(rel, event_table_triggers, lengthof(event_table_triggers), true) &&
		event_triggers_as_made(rel, &fresh.match_enabled);
	for (int c = 0; fresh.as_made && c < NUM_EV_COLUMNS; c++)
	{
		fresh.att[c] = crm_optional_attnum(rel, event_table_columns[c]) - 1;
		fresh.as_made = fresh.att[c] >= 0;
	}
	table_close(rel, NoLock);
	fresh.relid = relid;
	/* an invalidation while the table was opened leaves it unknown */
	event_shape = fresh;
	return &event_shape;
}

/*
 * Locks the tenant row FOR KEY SHARE, as the foreign key's check of an
 * inserted event does (as the owner of crm.tenant, its policies not
 * forced): a tenant deleted meanwhile is a foreign key violation, and one
 * being deleted waits for this transaction.
 */
static void
tenant_lock(const pg_uuid_t *tenant)
{
	Oid			save_userid;
	int			save_sec_context;
	Datum		args[1] = {UUIDPGetDatum(tenant)};
	uint64		found;

	if (tenant_lock_plan == NULL)
	{
		Oid			types[1] = {UUIDOID};

		tenant_lock_plan = crm_prepare_kept_generic(
													"SELECT 1 FROM ONLY crm.tenant x WHERE x.tenant_id OPERATOR(pg_catalog.=) $1"
													" FOR KEY SHARE OF x", 1, types);
	}
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(crm_table_owner("tenant"),
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS);
	PG_TRY();
	{
		if (SPI_execute_plan(tenant_lock_plan, args, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not lock the tenant");
		found = SPI_processed;
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
	if (found == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg("insert or update on table \"event\" violates its foreign key to table \"tenant\""),
				 errdetail("Key (tenant_id)=(%s) is not present in table \"tenant\".",
						   DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(tenant))))));
}

/*
 * Writes the batch straight into crm.event (rowwriter.c) when it may, and
 * says whether it did; otherwise batch_flush inserts it through SPI, which
 * fires whatever triggers the table has.  An event row through the INSERT
 * cost a statement that imports activities more than the activity row
 * itself (the executor, four BEFORE ROW triggers and the foreign key's
 * check, per row).  It may when every tenant of the batch is public (in a
 * private tenant an event takes the visible_to of its record, which
 * visibility_row reads), crm.event is as the extension made it (its
 * columns, its triggers, not a partition), and Citus is not in the
 * database (there the rows go to the tenant's shard).
 */
static bool
events_write_direct(EventBatch *batch)
{
	const EventTableShape *shape;
	Oid			event_relid;
	Oid			event_owner;
	const int  *att;
	Datum		now = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	Datum		entity = (Datum) 0;
	CrmEventRow *rows = NULL;
	CrmRowWriter *writer;
	Oid			save_userid;
	int			save_sec_context;

	if (crm_citus_in_database())
		return false;
	for (int i = 0; i < batch->n; i++)
		if ((i == 0 || memcmp(&batch->events[i].tenant, &batch->events[i - 1].tenant,
							  sizeof(pg_uuid_t)) != 0) &&
			!crm_tenant_public(UUIDPGetDatum(&batch->events[i].tenant)))
			return false;
	/*
	 * Locked before its shape is trusted: taking the lock reads the
	 * invalidations of a change committed meanwhile, which the second look
	 * then sees.
	 */
	shape = event_table_shape();
	if (shape == NULL || !shape->as_made)
		return false;
	LockRelationOid(shape->relid, RowExclusiveLock);
	shape = event_table_shape();
	if (shape == NULL || !shape->as_made)
		return false;
	event_relid = shape->relid;
	event_owner = shape->owner;
	att = shape->att;

	for (int i = 0; i < batch->n; i++)
		if (i == 0 || memcmp(&batch->events[i].tenant, &batch->events[i - 1].tenant,
							 sizeof(pg_uuid_t)) != 0)
			tenant_lock(&batch->events[i].tenant);

	if (batch->entity)
		entity = CStringGetTextDatum(batch->entity);
	if (trigger_fires(shape->match_enabled))
		rows = palloc(sizeof(CrmEventRow) * batch->n);
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(event_owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		const char *last_type = NULL;
		Datum		type = (Datum) 0;

		writer = crm_row_writer_open(event_relid);
		for (int i = 0; i < batch->n; i++)
		{
			PendingEvent *ev = &batch->events[i];
			TupleTableSlot *slot = crm_row_writer_next(writer);
			Datum	   *v = slot->tts_values;
			bool	   *null = slot->tts_isnull;
			pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));

			/* the built-in events' types are constants: one text each */
			if (ev->event_type != last_type)
			{
				type = CStringGetTextDatum(ev->event_type);
				last_type = ev->event_type;
			}
			crm_uuid_v7(id);
#define SET(col, value) (v[att[col]] = (value), null[att[col]] = false)
			SET(EV_TENANT, UUIDPGetDatum(&ev->tenant));
			SET(EV_POSITION, Int64GetDatum(ev->position));
			SET(EV_ID, UUIDPGetDatum(id));
			SET(EV_TYPE, type);
			if (batch->entity)
				SET(EV_ENTITY, entity);
			if (ev->has_entity_id)
				SET(EV_ENTITY_ID, UUIDPGetDatum(&ev->entity_id));
			SET(EV_PAYLOAD, JsonbPGetDatum(ev->payload));
			SET(EV_OCCURRED_AT, now);
			SET(EV_CREATED_AT, now);
			SET(EV_UPDATED_AT, now);
#undef SET
			crm_row_writer_add(writer);
			if (rows)
			{
				rows[i].tenant = ev->tenant;
				rows[i].id = *id;
				rows[i].event_type = (char *) ev->event_type;
				rows[i].entity = (char *) batch->entity;
				rows[i].has_entity_id = ev->has_entity_id;
				rows[i].entity_id = ev->entity_id;
				rows[i].payload = ev->payload;
			}
		}
		crm_row_writer_close(writer);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();

	if (rows)
		crm_workflow_match_rows(event_owner, rows, batch->n);
	return true;
}

/*
 * Insert the batch: straight into the table when it may (above), else one
 * INSERT ... SELECT FROM unnest(...) per tenant, with tenant_id a
 * parameter, run as the owner of crm.event.  The caller is connected to
 * SPI.
 */
static void
batch_flush(EventBatch *batch)
{
	Oid			save_userid;
	int			save_sec_context;
	int			done = 0;
	bool	   *taken;

	if (batch->n == 0)
		return;
	if (events_write_direct(batch))
	{
		crm_notify("crm_events", NULL);
		return;
	}

	if (insert_plan == NULL)
	{
		Oid			types[6] = {UUIDOID, INT8ARRAYOID, TEXTARRAYOID, TEXTOID,
		UUIDARRAYOID, JSONBARRAYOID};

		insert_plan = crm_prepare_kept_generic(
								   "INSERT INTO crm.event (tenant_id, position, event_type, entity, entity_id, payload)"
								   " SELECT $1, x.p, x.t, $4, x.i, x.j"
								   " FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($5), pg_catalog.unnest($6)) AS x(p, t, i, j)",
								   6, types);
	}

	if (insert_one_plan == NULL)
	{
		Oid			types[6] = {UUIDOID, INT8OID, TEXTOID, TEXTOID, UUIDOID, JSONBOID};

		/* the event of a single-row statement: one VALUES row, no unnest */
		insert_one_plan = crm_prepare_kept_generic(
												   "INSERT INTO crm.event (tenant_id, position, event_type, entity, entity_id, payload)"
												   " VALUES ($1, $2, $3, $4, $5, $6)",
												   6, types);
	}

	taken = palloc0(sizeof(bool) * batch->n);
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(crm_table_owner("event"), save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		while (done < batch->n)
		{
			pg_uuid_t	tenant;
			int			first = -1;
			int			k = 0;
			Datum	   *pos = palloc(sizeof(Datum) * batch->n);
			Datum	   *types = palloc(sizeof(Datum) * batch->n);
			Datum	   *ids = palloc(sizeof(Datum) * batch->n);
			bool	   *idnulls = palloc(sizeof(bool) * batch->n);
			Datum	   *payloads = palloc(sizeof(Datum) * batch->n);
			int			dims[1];
			int			lbs[1] = {1};
			Datum		args[6];
			char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};

			for (int i = 0; i < batch->n; i++)
			{
				PendingEvent *ev = &batch->events[i];

				if (taken[i])
					continue;
				if (first < 0)
				{
					first = i;
					tenant = ev->tenant;
				}
				else if (memcmp(&ev->tenant, &tenant, sizeof(pg_uuid_t)) != 0)
					continue;
				taken[i] = true;
				pos[k] = Int64GetDatum(ev->position);
				types[k] = CStringGetTextDatum(ev->event_type);
				ids[k] = UUIDPGetDatum(&ev->entity_id);
				idnulls[k] = !ev->has_entity_id;
				payloads[k] = JsonbPGetDatum(ev->payload);
				k++;
			}
			done += k;
			if (k == 1)
			{
				args[0] = UUIDPGetDatum(&tenant);
				args[1] = pos[0];
				args[2] = types[0];
				if (batch->entity)
					args[3] = CStringGetTextDatum(batch->entity);
				else
					nulls[3] = 'n';
				args[4] = ids[0];
				if (idnulls[0])
					nulls[4] = 'n';
				args[5] = payloads[0];
				if (SPI_execute_plan(insert_one_plan, args, nulls, false, 0) != SPI_OK_INSERT)
					elog(ERROR, "could not write the events");
				continue;
			}
			dims[0] = k;
			args[0] = UUIDPGetDatum(&tenant);
			args[1] = PointerGetDatum(construct_array(pos, k, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
			args[2] = PointerGetDatum(construct_array(types, k, TEXTOID, -1, false, TYPALIGN_INT));
			if (batch->entity)
				args[3] = CStringGetTextDatum(batch->entity);
			else
				nulls[3] = 'n';
			args[4] = PointerGetDatum(construct_md_array(ids, idnulls, 1, dims, lbs, UUIDOID, 16, false, TYPALIGN_CHAR));
			args[5] = PointerGetDatum(construct_array(payloads, k, JSONBOID, -1, false, TYPALIGN_INT));
			if (SPI_execute_plan(insert_plan, args, nulls, false, 0) != SPI_OK_INSERT)
				elog(ERROR, "could not write the events");
		}
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();

	crm_notify("crm_events", NULL);
}

static SPIPlanPtr shard_insert_plan = NULL;

/*
 * crm_outbox_emit with Citus in the database: the event is inserted with
 * position 0, which the row trigger crm.outbox_assign_position() replaces
 * on the shard (in the transaction of the node that holds the tenant's
 * rows) by a position of that node; RETURNING brings it back.
 */
static int64
emit_on_shard(const pg_uuid_t *tenant, const char *event_type, const char *entity,
			  const pg_uuid_t *entity_id, Jsonb *payload)
{
	Datum		args[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	Oid			save_userid;
	int			save_sec_context;
	int64		position;
	bool		isnull;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (shard_insert_plan == NULL)
	{
		Oid			types[5] = {UUIDOID, TEXTOID, TEXTOID, UUIDOID, JSONBOID};

		shard_insert_plan = crm_prepare_kept(
										 "INSERT INTO crm.event (tenant_id, position, event_type, entity, entity_id, payload)"
										 " VALUES ($1, 0, $2, $3, $4, $5) RETURNING \"position\"",
										 5, types);
	}
	args[0] = UUIDPGetDatum(tenant);
	args[1] = CStringGetTextDatum(event_type);
	if (entity)
		args[2] = CStringGetTextDatum(entity);
	else
		nulls[2] = 'n';
	if (entity_id)
		args[3] = UUIDPGetDatum(entity_id);
	else
		nulls[3] = 'n';
	args[4] = JsonbPGetDatum(payload);
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(crm_table_owner("event"), save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	/* an error aborts the (sub)transaction, which restores the user id */
	if (SPI_execute_plan(shard_insert_plan, args, nulls, false, 0) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "could not write the event");
	SetUserIdAndSecContext(save_userid, save_sec_context);
	position = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	crm_notify("crm_events", NULL);
	SPI_finish();
	return position;
}

/*
 * Write one event of the given tenant in the current transaction; returns
 * its position.  For other C files (lead scoring, forecasting): connects to
 * SPI itself, so it may be called with or without an SPI connection.
 */
int64
crm_outbox_emit(const pg_uuid_t *tenant, const char *event_type, const char *entity,
				const pg_uuid_t *entity_id, Jsonb *payload)
{
	EventBatch	batch;
	int64		position;

	/*
	 * With Citus in the database events get their positions on the node
	 * that holds the tenant's shard: a position is (transaction id << 24 |
	 * n) of the node that computes it, and crm.event_head() is computed on
	 * the tenant's node, so the coordinator's transaction id must not be
	 * used.
	 */
	if (crm_citus_in_database())
		return emit_on_shard(tenant, event_type, entity, entity_id, payload);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	batch_init(&batch, entity);
	position = batch_add(&batch, tenant, event_type, entity_id, payload)->position;
	batch_flush(&batch);
	SPI_finish();
	return position;
}

static bool
valid_name(const char *s, bool upper_first)
{
	size_t		len = strlen(s);

	if (len == 0 || len > 63)
		return false;
	if (upper_first ? !(s[0] >= 'A' && s[0] <= 'Z') : !(s[0] >= 'a' && s[0] <= 'z'))
		return false;
	for (size_t i = 1; i < len; i++)
	{
		char		c = s[i];

		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			  (upper_first ? (c >= 'A' && c <= 'Z') : c == '_')))
			return false;
	}
	return true;
}

/*
 * crm.emit_event(event_type, payload, entity, entity_id): an application's
 * own event, for the tenant the session acts for.  Every check is made
 * before anything is written, so a refused event leaves nothing behind.
 */
CRM_SHARD_ENTRY(crm_outbox_emit_event)
{
	char	   *event_type;
	Jsonb	   *payload;
	char	   *entity = NULL;
	pg_uuid_t	entity_id;
	pg_uuid_t	tenant;
	Datum		d;
	int64		position;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("event_type and payload must not be null")));
	event_type = text_to_cstring(PG_GETARG_TEXT_PP(0));
	payload = PG_GETARG_JSONB_P(1);
	if (!valid_name(event_type, true))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid event type \"%s\"", event_type),
				 errhint("An event type is a CamelCase name of letters and digits, like OrderShipped.")));
	if (!JB_ROOT_IS_OBJECT(payload) || JB_ROOT_IS_SCALAR(payload))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event payload must be a JSON object")));
	if (!PG_ARGISNULL(2))
	{
		entity = text_to_cstring(PG_GETARG_TEXT_PP(2));
		if (!valid_name(entity, false))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid entity name \"%s\"", entity),
					 errhint("An entity is a lower-case name like opportunity.")));
	}
	if (!PG_ARGISNULL(3))
	{
		entity_id = *PG_GETARG_UUID_P(3);
		if (entity == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("entity must not be null when entity_id is given")));
	}
	else if (entity != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("entity_id must not be null when entity is given")));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (!crm_current_tenant_id(&tenant))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("no tenant to emit the event for"),
				 errhint("Act for a tenant (crm.tenant_id or a mapping made with crm.grant_tenant_access).")));

	/*
	 * Inbound event types come only through crm.consume_event, which
	 * records their external id; emitted here they would run the rules of
	 * an event no other system sent.  The outbox's own types (LeadQualified,
	 * ActivityCreated, ...) are the server's account of what happened: an
	 * app that emitted one would run the rules (a qualification task, a
	 * stage's tasks) of a change that never was, and readers could not tell
	 * it from the real one.  Only the extension's own code, running as the
	 * owner of crm.event (the forecast snapshot's ForecastCreated), emits
	 * them here.
	 */
	if (inbound_plan == NULL)
	{
		Oid			types[1] = {TEXTOID};

		inbound_plan = crm_prepare_kept("SELECT e.kind FROM crm.workflow_event e"
									" WHERE e.code OPERATOR(pg_catalog.=) $1", 1, types);
	}
	d = PG_GETARG_DATUM(0);
	if (SPI_execute_plan(inbound_plan, &d, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the event types");
	if (SPI_processed > 0)
	{
		char	   *kind = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (kind != NULL && strcmp(kind, "inbound") == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("event type \"%s\" is an inbound event", event_type),
					 errhint("Inbound events come from other systems through crm.consume_event().")));
		if (kind != NULL && strcmp(kind, "outbox") == 0 && GetUserId() != crm_table_owner("event"))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("event type \"%s\" is written by the server", event_type),
					 errdetail("The outbox's own events are written by the change they describe, in its transaction."),
					 errhint("Emit an event type of the application's own (CamelCase, not one of crm.workflow_event's outbox events).")));
	}
	SPI_finish();

	/* rules copy the event's ids into jobs: only records the caller sees */
	crm_queue_require_visible(&tenant, NULL, entity, PG_ARGISNULL(3) ? NULL : &entity_id, payload);

	position = crm_outbox_emit(&tenant, event_type, entity,
							   PG_ARGISNULL(3) ? NULL : &entity_id, payload);
	PG_RETURN_INT64(position);
}

/*
 * A jsonb object, built field by field in C.  Building the value directly
 * spares the jsonb parser, which cost more per event than writing the
 * event row (a COPY of activities writes one per row); the result is the
 * value the parser would have made of the same JSON text (keys sorted and
 * unique alike, strings and numbers equal).
 */
typedef struct JsonBuild
{
	JsonbParseState *state;
} JsonBuild;

static void
json_key(JsonBuild *b, const char *key)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	(void) pushJsonbValue(&b->state, WJB_KEY, &k);
}

static void
json_null(JsonBuild *b)
{
	JsonbValue	v;

	v.type = jbvNull;
	(void) pushJsonbValue(&b->state, WJB_VALUE, &v);
}

static void
json_string(JsonBuild *b, const char *key, const char *str)
{
	JsonbValue	v;

	json_key(b, key);
	v.type = jbvString;
	v.val.string.val = (char *) str;
	v.val.string.len = strlen(str);
	(void) pushJsonbValue(&b->state, WJB_VALUE, &v);
}

static void
json_text(JsonBuild *b, const char *key, Datum value, bool isnull)
{
	if (isnull)
	{
		json_key(b, key);
		json_null(b);
	}
	else
		json_string(b, key, TextDatumGetCString(value));
}

static void
json_uuid(JsonBuild *b, const char *key, Datum value, bool isnull)
{
	if (isnull)
	{
		json_key(b, key);
		json_null(b);
	}
	else
		json_string(b, key, DatumGetCString(DirectFunctionCall1(uuid_out, value)));
}

static void
json_time(JsonBuild *b, const char *key, Datum value, bool isnull)
{
	char		tbuf[MAXDATELEN + 1];

	if (isnull)
	{
		json_key(b, key);
		json_null(b);
	}
	else
		json_string(b, key, pstrdup(JsonEncodeDateTime(tbuf, value, TIMESTAMPTZOID, NULL)));
}

static void
json_numeric(JsonBuild *b, const char *key, Datum value, bool isnull)
{
	JsonbValue	v;
	Numeric		num;

	json_key(b, key);
	if (isnull)
	{
		json_null(b);
		return;
	}
	num = DatumGetNumeric(value);
	/* JSON has no NaN: the error the jsonb parser gives for it */
	if (numeric_is_nan(num) || numeric_is_inf(num))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("invalid input syntax for type %s", "json"),
				 errdetail("Token \"%s\" is invalid.",
						   DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(num))))));
	v.type = jbvNumeric;
	v.val.numeric = num;
	(void) pushJsonbValue(&b->state, WJB_VALUE, &v);
}

static void
json_begin(JsonBuild *b)
{
	b->state = NULL;
	(void) pushJsonbValue(&b->state, WJB_BEGIN_OBJECT, NULL);
}

static Jsonb *
json_end(JsonBuild *b)
{
	return JsonbValueToJsonb(pushJsonbValue(&b->state, WJB_END_OBJECT, NULL));
}

/* An object as the value of the key just pushed, and its end. */
static void
json_open_object(JsonBuild *b)
{
	(void) pushJsonbValue(&b->state, WJB_BEGIN_OBJECT, NULL);
}

static void
json_close_object(JsonBuild *b)
{
	(void) pushJsonbValue(&b->state, WJB_END_OBJECT, NULL);
}

/* Column access for one transition row. */
typedef struct RowCols
{
	TupleDesc	tupdesc;
	TupleTableSlot *slot;
} RowCols;

static Datum
col(TupleTableSlot *slot, int attnum, bool *isnull)
{
	return slot_getattr(slot, attnum, isnull);
}

static bool
text_equals(Datum d, bool isnull, const char *s)
{
	return !isnull && strcmp(TextDatumGetCString(d), s) == 0;
}

static bool
uuid_differs(Datum a, bool anull, Datum b, bool bnull)
{
	if (anull || bnull)
		return anull != bnull;
	return memcmp(DatumGetUUIDP(a), DatumGetUUIDP(b), sizeof(pg_uuid_t)) != 0;
}

/* The opportunity crm.lead_convert() made from a lead, if any. */
static Datum
converted_opportunity(Datum tenant, Datum lead, bool *isnull)
{
	Datum		args[2] = {tenant, lead};

	if (converted_opportunity_plan == NULL)
	{
		Oid			types[2] = {UUIDOID, UUIDOID};

		converted_opportunity_plan = crm_prepare_kept(
												  "SELECT o.id FROM crm.opportunity o"
												  " WHERE o.tenant_id OPERATOR(pg_catalog.=) $1"
												  " AND o.lead_id OPERATOR(pg_catalog.=) $2"
												  " ORDER BY o.id LIMIT 1", 2, types);
	}
	if (SPI_execute_plan(converted_opportunity_plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up the converted opportunity");
	if (SPI_processed == 0)
	{
		*isnull = true;
		return (Datum) 0;
	}
	return SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, isnull);
}

typedef enum OutboxTable
{
	OUTBOX_LEAD,
	OUTBOX_OPPORTUNITY,
	OUTBOX_ACTIVITY
} OutboxTable;

/*
 * The attribute numbers row_events() asks for, checked by crm_attnum() on
 * the first row of a statement and remembered for the others.  Column
 * names are the string constants of row_events(), so a name is found by
 * its address.
 */
#define ROW_ATTS_MAX 32

typedef struct RowAtts
{
	Relation	rel;
	int			n;
	const char *names[ROW_ATTS_MAX];
	int			atts[ROW_ATTS_MAX];
} RowAtts;

static int
row_att(RowAtts *cols, const char *name, Oid typid)
{
	int			att;

	for (int i = 0; i < cols->n; i++)
		if (cols->names[i] == name)
			return cols->atts[i];
	att = crm_attnum(cols->rel, name, typid);
	if (cols->n < ROW_ATTS_MAX)
	{
		cols->names[cols->n] = name;
		cols->atts[cols->n] = att;
		cols->n++;
	}
	return att;
}

/*
 * The events of one row (and its old version for an UPDATE).  Every field
 * is read by attribute number checked by crm_attnum (once per statement).
 */
static void
row_events(EventBatch *batch, OutboxTable table, RowAtts *cols,
		   TupleTableSlot *newslot, TupleTableSlot *oldslot)
{
	bool		n1,
				n2;
	Datum		tenant = col(newslot, row_att(cols, "tenant_id", UUIDOID), &n1);
	Datum		id = col(newslot, row_att(cols, "id", UUIDOID), &n2);
	pg_uuid_t	t = *DatumGetUUIDP(tenant);
	pg_uuid_t	rid = *DatumGetUUIDP(id);
	JsonBuild	buf;
	bool		isnull;

	if (table == OUTBOX_LEAD)
	{
		if (oldslot == NULL)
		{
			json_begin(&buf);
			json_uuid(&buf, "leadId", id, false);
			{
				Datum		d = col(newslot, row_att(cols, "source", TEXTOID), &isnull);

				json_text(&buf, "source", d, isnull);
			}
			{
				Datum		d = col(newslot, row_att(cols, "owner_id", UUIDOID), &isnull);

				json_uuid(&buf, "ownerId", d, isnull);
			}
			{
				Datum		d = col(newslot, row_att(cols, "created_at", TIMESTAMPTZOID), &isnull);

				json_time(&buf, "createdAt", d, isnull);
			}
			batch_add(batch, &t, "LeadCreated", &rid, json_end(&buf));
		}
		else
		{
			int			conv_att = row_att(cols, "converted_at", TIMESTAMPTZOID);
			bool		oldnull;
			Datum		conv = col(newslot, conv_att, &isnull);

			(void) col(oldslot, conv_att, &oldnull);
			if (oldnull && !isnull)
			{
				bool		onull;
				Datum		opp;

				json_begin(&buf);
				json_uuid(&buf, "leadId", id, false);
				opp = converted_opportunity(tenant, id, &onull);
				json_uuid(&buf, "opportunityId", opp, onull);
				{
					Datum		d = col(newslot, row_att(cols, "converted_account_id", UUIDOID), &onull);

					json_uuid(&buf, "customerId", d, onull);
				}
				{
					Datum		d = col(newslot, row_att(cols, "converted_contact_id", UUIDOID), &onull);

					json_uuid(&buf, "contactId", d, onull);
				}
				json_time(&buf, "convertedAt", conv, false);
				batch_add(batch, &t, "LeadConverted", &rid, json_end(&buf));
			}
		}
	}
	else if (table == OUTBOX_OPPORTUNITY)
	{
		int			status_att = row_att(cols, "status", TEXTOID);
		int			stage_att = row_att(cols, "stage_id", UUIDOID);
		bool		snull;
		Datum		status = col(newslot, status_att, &snull);
		bool		closed_now;

		if (oldslot == NULL)
		{
			json_begin(&buf);
			json_uuid(&buf, "opportunityId", id, false);
			{
				Datum		d = col(newslot, row_att(cols, "account_id", UUIDOID), &isnull);

				json_uuid(&buf, "customerId", d, isnull);
			}
			{
				Datum		d = col(newslot, row_att(cols, "lead_id", UUIDOID), &isnull);

				json_uuid(&buf, "leadId", d, isnull);
			}
			{
				Datum		d = col(newslot, row_att(cols, "amount", NUMERICOID), &isnull);

				json_numeric(&buf, "expectedValue", d, isnull);
			}
			{
				Datum		d = col(newslot, row_att(cols, "currency", TEXTOID), &isnull);

				json_text(&buf, "currency", d, isnull);
			}
			{
				Datum		d = col(newslot, row_att(cols, "owner_id", UUIDOID), &isnull);

				json_uuid(&buf, "ownerId", d, isnull);
			}
			batch_add(batch, &t, "OpportunityCreated", &rid, json_end(&buf));
			closed_now = !text_equals(status, snull, "open");
		}
		else
		{
			bool		onull;
			Datum		old_stage = col(oldslot, stage_att, &onull);
			Datum		new_stage = col(newslot, stage_att, &isnull);
			bool		osnull;
			Datum		old_status = col(oldslot, status_att, &osnull);

			if (uuid_differs(old_stage, onull, new_stage, isnull))
			{
				json_begin(&buf);
				json_uuid(&buf, "opportunityId", id, false);
				json_uuid(&buf, "fromStage", old_stage, onull);
				json_uuid(&buf, "toStage", new_stage, isnull);
				batch_add(batch, &t, "OpportunityStageChanged", &rid, json_end(&buf));
			}
			closed_now = text_equals(old_status, osnull, "open") &&
				!text_equals(status, snull, "open");
		}
		if (closed_now && !snull)
		{
			json_begin(&buf);
			json_uuid(&buf, "opportunityId", id, false);
			json_string(&buf, "stage", text_equals(status, snull, "won") ? "closed_won" : "closed_lost");
			{
				Datum		d = col(newslot, row_att(cols, "amount", NUMERICOID), &isnull);

				json_numeric(&buf, "actualValue", d, isnull);
			}
			{
				Datum		d = col(newslot, row_att(cols, "currency", TEXTOID), &isnull);

				json_text(&buf, "currency", d, isnull);
			}
			{
				Datum		d = col(newslot, row_att(cols, "closed_at", TIMESTAMPTZOID), &isnull);

				json_time(&buf, "closedAt", d, isnull);
			}
			batch_add(batch, &t, "OpportunityClosed", &rid, json_end(&buf));
		}
	}
	else
	{
		int			status_att = row_att(cols, "status", TEXTOID);
		int			type_att = row_att(cols, "activity_type", TEXTOID);
		bool		snull,
					tnull;
		Datum		status = col(newslot, status_att, &snull);
		Datum		type = col(newslot, type_att, &tnull);
		bool		completed_now;

		if (oldslot == NULL)
		{
			json_begin(&buf);
			json_uuid(&buf, "activityId", id, false);
			json_text(&buf, "type", type, tnull);
			json_key(&buf, "relatedTo");
			{
				static const char *const keys[4] = {"contactId", "accountId", "leadId", "opportunityId"};
				static const char *const link_cols[4] = {"contact_id", "account_id", "lead_id", "opportunity_id"};

				json_open_object(&buf);
				for (int i = 0; i < 4; i++)
				{
					Datum		d = col(newslot, row_att(cols, link_cols[i], UUIDOID), &isnull);

					json_uuid(&buf, keys[i], d, isnull);
				}
				json_close_object(&buf);
			}
			{
				Datum		d = col(newslot, row_att(cols, "owner_id", UUIDOID), &isnull);

				json_uuid(&buf, "ownerId", d, isnull);
			}
			{
				Datum		d = col(newslot, row_att(cols, "due_at", TIMESTAMPTZOID), &isnull);

				json_time(&buf, "dueDate", d, isnull);
			}
			batch_add(batch, &t, "ActivityCreated", &rid, json_end(&buf));
			completed_now = text_equals(status, snull, "completed");
		}
		else
		{
			bool		osnull;
			Datum		old_status = col(oldslot, status_att, &osnull);

			completed_now = !text_equals(old_status, osnull, "completed") &&
				text_equals(status, snull, "completed");
		}
		if (completed_now && text_equals(type, tnull, "task"))
		{
			pg_uuid_t	user;

			json_begin(&buf);
			json_uuid(&buf, "taskId", id, false);
			if (crm_current_app_user_id(&user))
				json_uuid(&buf, "completedBy", UUIDPGetDatum(&user), false);
			else
			{
				Datum		d = col(newslot, row_att(cols, "owner_id", UUIDOID), &isnull);

				json_uuid(&buf, "completedBy", d, isnull);
			}
			{
				Datum		d = col(newslot, row_att(cols, "completed_at", TIMESTAMPTZOID), &isnull);

				json_time(&buf, "completedAt", d, isnull);
			}
			batch_add(batch, &t, "TaskCompleted", &rid, json_end(&buf));
		}
	}
}

/*
 * crm.outbox_record_events(): AFTER INSERT or AFTER UPDATE, FOR EACH
 * STATEMENT, with transition tables, on crm.lead, crm.opportunity and
 * crm.activity.  The transition rows are read here in C (a plan that Citus
 * rebuilds could not see them) and the events inserted from arrays.  Old
 * and new rows of an UPDATE come in the same order, so they are read in
 * step.
 */
Datum
crm_outbox_record_events(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	const char *relname;
	OutboxTable table;
	EventBatch	batch;
	TupleTableSlot *newslot;
	TupleTableSlot *oldslot = NULL;
	Tuplestorestate *newrows;
	Tuplestorestate *oldrows = NULL;
	bool		is_update;
	RowAtts		cols;

	crm_require_trigger(fcinfo, "outbox_record_events", false, false);
	is_update = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event);
	if (!(TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) || is_update) ||
		trigdata->tg_newtable == NULL || (is_update && trigdata->tg_oldtable == NULL))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"outbox_record_events\" must be fired AFTER INSERT or UPDATE with transition tables")));

	if (crm_loading_dump())
		return PointerGetDatum(NULL);

	rel = trigdata->tg_relation;
	relname = crm_table_name(rel);
	if (strcmp(relname, "lead") == 0)
		table = OUTBOX_LEAD;
	else if (strcmp(relname, "opportunity") == 0)
		table = OUTBOX_OPPORTUNITY;
	else if (strcmp(relname, "activity") == 0)
		table = OUTBOX_ACTIVITY;
	else
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"outbox_record_events\" works on crm.lead, crm.opportunity and crm.activity only")));

	newrows = trigdata->tg_newtable;
	newslot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsMinimalTuple);
	crm_transition_rewind(newrows);
	if (is_update)
	{
		oldrows = trigdata->tg_oldtable;
		oldslot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsMinimalTuple);
		crm_transition_rewind(oldrows);
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	cols.rel = rel;
	cols.n = 0;
	batch_init(&batch, table == OUTBOX_LEAD ? "lead" :
			   table == OUTBOX_OPPORTUNITY ? "opportunity" : "activity");

	while (tuplestore_gettupleslot(newrows, true, false, newslot))
	{
		if (oldrows && !tuplestore_gettupleslot(oldrows, true, false, oldslot))
			elog(ERROR, "transition tables of different lengths");
		row_events(&batch, table, &cols, newslot, oldslot);
	}

	batch_flush(&batch);

	/*
	 * The slots own the last tuples read from a spilled transition table,
	 * which were allocated in SPI's memory: let them go before SPI_finish()
	 * frees it.
	 */
	ExecDropSingleTupleTableSlot(newslot);
	if (oldslot)
		ExecDropSingleTupleTableSlot(oldslot);
	SPI_finish();
	return PointerGetDatum(NULL);
}

/*
 * crm.purge_events(older_than): retention.  Deletes the current tenant's
 * events older than older_than that every consumer of the tenant has
 * acknowledged and that every reader could already have been handed.  No
 * role may delete from crm.event (the outbox is the server's record), so
 * the DELETE runs as its owner, for the session's own tenant only.
 */
PG_FUNCTION_INFO_V1(crm_outbox_purge_events);

CRM_SHARD_ENTRY(crm_outbox_purge_events)
{
	static SPIPlanPtr purge_plan = NULL;
	Interval   *older_than;
	Interval	zero;
	pg_uuid_t	tenant;
	Datum		args[2];
	Oid			save_userid;
	int			save_sec_context;
	uint64		n;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("older_than must not be null")));
	older_than = PG_GETARG_INTERVAL_P(0);
	memset(&zero, 0, sizeof(zero));
	if (DatumGetBool(DirectFunctionCall2(interval_lt, IntervalPGetDatum(older_than),
										 IntervalPGetDatum(&zero))))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("older_than must not be negative")));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (!crm_current_tenant_id(&tenant))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("no tenant to purge the events of"),
				 errhint("Act for a tenant (crm.tenant_id or a mapping made with crm.grant_tenant_access).")));

	if (purge_plan == NULL)
	{
		Oid			types[2] = {UUIDOID, INTERVALOID};

		purge_plan = crm_prepare_kept(
								  "DELETE FROM crm.event e"
								  " WHERE e.tenant_id OPERATOR(pg_catalog.=) $1"
								  " AND e.occurred_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) $2)"
								  " AND e.position OPERATOR(pg_catalog.<) crm.event_head()"
								  " AND NOT EXISTS (SELECT 1 FROM crm.event_consumer c"
								  "  WHERE c.tenant_id OPERATOR(pg_catalog.=) $1"
								  "  AND c.position OPERATOR(pg_catalog.<) e.position)",
								  2, types);
	}
	args[0] = UUIDPGetDatum(&tenant);
	args[1] = IntervalPGetDatum(older_than);
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(crm_table_owner("event"), save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		if (SPI_execute_plan(purge_plan, args, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not purge the events");
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
	n = SPI_processed;
	SPI_finish();
	PG_RETURN_INT64((int64) n);
}

/*
 * Event consumers (crm.subscribe, crm.unsubscribe, crm.ack).
 *
 * crm.event_consumer is the server's (issue 8 item 4): a writer who could
 * write it would move another consumer's position (it then skips events) or
 * drop it (crm.purge_events then deletes events it never acknowledged).  So
 * these functions write it as its owner with the caller's tenant as a
 * parameter, and a consumer belongs to the role that subscribed it (by OID,
 * the role the session acts as): only that role or an admin of the tenant
 * may use it, 42501 otherwise.
 */
PG_FUNCTION_INFO_V1(crm_outbox_subscribe);
PG_FUNCTION_INFO_V1(crm_outbox_unsubscribe);
PG_FUNCTION_INFO_V1(crm_outbox_ack);

static SPIPlanPtr consumer_who_plan = NULL;
static SPIPlanPtr consumer_find_plan = NULL;
static SPIPlanPtr consumer_insert_plan = NULL;
static SPIPlanPtr consumer_delete_plan = NULL;
static SPIPlanPtr consumer_ack_plan = NULL;

typedef struct ConsumerCall
{
	pg_uuid_t	tenant;
	bool		has_tenant;
	bool		is_admin;
	int64		head;
	int64		limit;
	Oid			save_userid;
	int			save_sec_context;
} ConsumerCall;

/* Connects to SPI and reads, as the caller, who and where the caller is. */
static void
consumer_begin(ConsumerCall *call)
{
	bool		isnull;
	Datum		d;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (consumer_who_plan == NULL)
		consumer_who_plan = crm_prepare_kept("SELECT crm.current_tenant(), crm.is_admin(), crm.event_head(), crm.event_limit()",
										 0, NULL);
	if (SPI_execute_plan(consumer_who_plan, NULL, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read the current tenant");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	call->has_tenant = !isnull;
	if (!isnull)
		call->tenant = *DatumGetUUIDP(d);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	call->is_admin = !isnull && DatumGetBool(d);
	call->head = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	call->limit = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull));
	GetUserIdAndSecContext(&call->save_userid, &call->save_sec_context);
}

/*
 * As the owner of crm.event_consumer: the consumer's position and role,
 * locked; false when the tenant has no such consumer.
 */
static bool
consumer_find(ConsumerCall *call, Datum name, int64 *position, Oid *role)
{
	Datum		args[2];
	bool		isnull;

	if (consumer_find_plan == NULL)
	{
		Oid			types[2] = {UUIDOID, TEXTOID};

		consumer_find_plan = crm_prepare_kept("SELECT c.position, c.role_oid FROM crm.event_consumer c"
										  " WHERE c.tenant_id OPERATOR(pg_catalog.=) $1"
										  " AND c.name OPERATOR(pg_catalog.=) $2 FOR UPDATE", 2, types);
	}
	if (!call->has_tenant)
		return false;
	args[0] = UUIDPGetDatum(&call->tenant);
	args[1] = name;
	SetUserIdAndSecContext(crm_table_owner("event_consumer"),
						   call->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	/* an error aborts the (sub)transaction, which restores the user id */
	if (SPI_execute_plan(consumer_find_plan, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the event consumers");
	SetUserIdAndSecContext(call->save_userid, call->save_sec_context);
	if (SPI_processed == 0)
		return false;
	*position = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	*role = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	return true;
}

/* 42501 unless the acting role subscribed the consumer or is an admin. */
static void
consumer_require_owner(ConsumerCall *call, Datum name, Oid role)
{
	if (role == GetOuterUserId() || call->is_admin)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("event consumer \"%s\" belongs to another role", TextDatumGetCString(name)),
			 errdetail("Only the role that subscribed it and the tenant's admins may poll, acknowledge or drop a consumer.")));
}

/* Runs a writing statement as the owner of crm.event_consumer. */
static void
consumer_write(ConsumerCall *call, SPIPlanPtr plan, Datum *args, int expected)
{
	SetUserIdAndSecContext(crm_table_owner("event_consumer"),
						   call->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	if (SPI_execute_plan(plan, args, NULL, false, 0) != expected)
		elog(ERROR, "could not write the event consumers");
	SetUserIdAndSecContext(call->save_userid, call->save_sec_context);
}

/*
 * crm.subscribe(name, after): makes a consumer of the caller's tenant,
 * owned by the acting role, starting after position after (default: the
 * events from now on); an existing one is kept and its position returned.
 */
CRM_SHARD_ENTRY(crm_outbox_subscribe)
{
	ConsumerCall call;
	int64		position;
	Oid			role;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("consumer name must not be null")));
	consumer_begin(&call);
	if (!call.has_tenant)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("no tenant to subscribe for"),
				 errhint("Act for a tenant (crm.tenant_id or a mapping made with crm.grant_tenant_access).")));
	if (!PG_ARGISNULL(1) && (PG_GETARG_INT64(1) < 0 || PG_GETARG_INT64(1) >= call.limit))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event position " INT64_FORMAT " is not a cursor of this database", PG_GETARG_INT64(1))));
	if (!consumer_find(&call, PG_GETARG_DATUM(0), &position, &role))
	{
		Datum		args[4];

		if (consumer_insert_plan == NULL)
		{
			Oid			types[4] = {UUIDOID, TEXTOID, INT8OID, OIDOID};

			consumer_insert_plan = crm_prepare_kept("INSERT INTO crm.event_consumer (tenant_id, name, position, role_oid)"
												" VALUES ($1, $2, $3, $4)"
												" ON CONFLICT ON CONSTRAINT event_consumer_pkey DO NOTHING", 4, types);
		}
		args[0] = UUIDPGetDatum(&call.tenant);
		args[1] = PG_GETARG_DATUM(0);
		args[2] = Int64GetDatum(PG_ARGISNULL(1) ? call.head - 1 : PG_GETARG_INT64(1));
		args[3] = ObjectIdGetDatum(GetOuterUserId());
		consumer_write(&call, consumer_insert_plan, args, SPI_OK_INSERT);
		if (!consumer_find(&call, PG_GETARG_DATUM(0), &position, &role))
			elog(ERROR, "event consumer vanished");
	}
	consumer_require_owner(&call, PG_GETARG_DATUM(0), role);
	SPI_finish();
	PG_RETURN_INT64(position);
}

/* crm.unsubscribe(name): drops the consumer; true when it existed. */
CRM_SHARD_ENTRY(crm_outbox_unsubscribe)
{
	ConsumerCall call;
	int64		position;
	Oid			role;
	Datum		args[2];

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("consumer name must not be null")));
	consumer_begin(&call);
	if (!consumer_find(&call, PG_GETARG_DATUM(0), &position, &role))
	{
		SPI_finish();
		PG_RETURN_BOOL(false);
	}
	consumer_require_owner(&call, PG_GETARG_DATUM(0), role);
	if (consumer_delete_plan == NULL)
	{
		Oid			types[2] = {UUIDOID, TEXTOID};

		consumer_delete_plan = crm_prepare_kept("DELETE FROM crm.event_consumer c"
											" WHERE c.tenant_id OPERATOR(pg_catalog.=) $1"
											" AND c.name OPERATOR(pg_catalog.=) $2", 2, types);
	}
	args[0] = UUIDPGetDatum(&call.tenant);
	args[1] = PG_GETARG_DATUM(0);
	consumer_write(&call, consumer_delete_plan, args, SPI_OK_DELETE);
	SPI_finish();
	PG_RETURN_BOOL(true);
}

/*
 * crm.ack(name, position): acknowledges the consumer's events up to
 * position (never moving back); returns the stored position.
 */
CRM_SHARD_ENTRY(crm_outbox_ack)
{
	ConsumerCall call;
	int64		position;
	int64		acked;
	Oid			role;
	Datum		args[3];
	bool		isnull;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("consumer name and position must not be null")));
	acked = PG_GETARG_INT64(1);
	consumer_begin(&call);
	if (acked < 0 || acked >= call.head)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event position " INT64_FORMAT " has not been handed out", acked),
				 errdetail("A consumer acknowledges the position of an event crm.poll returned.")));
	if (!consumer_find(&call, PG_GETARG_DATUM(0), &position, &role))
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("event consumer \"%s\" does not exist", text_to_cstring(PG_GETARG_TEXT_PP(0))),
				 errhint("Make it with crm.subscribe().")));
	consumer_require_owner(&call, PG_GETARG_DATUM(0), role);
	if (consumer_ack_plan == NULL)
	{
		Oid			types[3] = {UUIDOID, TEXTOID, INT8OID};

		consumer_ack_plan = crm_prepare_kept("UPDATE crm.event_consumer c"
										 " SET position = GREATEST(c.position, $3), acked_at = pg_catalog.now()"
										 " WHERE c.tenant_id OPERATOR(pg_catalog.=) $1"
										 " AND c.name OPERATOR(pg_catalog.=) $2 RETURNING c.position", 3, types);
	}
	args[0] = UUIDPGetDatum(&call.tenant);
	args[1] = PG_GETARG_DATUM(0);
	args[2] = Int64GetDatum(acked);
	consumer_write(&call, consumer_ack_plan, args, SPI_OK_UPDATE_RETURNING);
	position = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	PG_RETURN_INT64(position);
}

/*
 * crm.outbox_assign_position(): BEFORE INSERT row trigger on crm.event,
 * fired only for a row whose position is 0 (WHEN clause), which
 * crm_outbox_emit writes when Citus is in the database.  It gives the row
 * the next position of the transaction of the node the row is stored on
 * (on Citus the worker holding the tenant's shard, whose snapshots
 * crm.event_head() reads), from the same counter as the statement
 * triggers' events, so positions stay unique and in commit-safe order.
 * The C statement triggers set positions themselves and never fire it.
 */
PG_FUNCTION_INFO_V1(crm_outbox_assign_position);

Datum
crm_outbox_assign_position(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	HeapTuple	tuple;
	int			attnum;
	Datum		value;
	bool		isnull = false;

	crm_require_trigger(fcinfo, "outbox_assign_position", true, true);
	if (!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"outbox_assign_position\" must be fired for INSERT")));
	rel = trigdata->tg_relation;
	tuple = trigdata->tg_trigtuple;
	attnum = crm_attnum(rel, "position", INT8OID);
	value = heap_getattr(tuple, attnum, RelationGetDescr(rel), &isnull);
	if (!isnull && DatumGetInt64(value) != 0)
		return PointerGetDatum(tuple);
	value = Int64GetDatum(next_position());
	isnull = false;
	return PointerGetDatum(heap_modify_tuple_by_cols(tuple, RelationGetDescr(rel), 1,
													 &attnum, &value, &isnull));
}
