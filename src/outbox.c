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

#include "access/transam.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
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
	char	   *payload;		/* JSON object text */
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

static SPIPlanPtr insert_plan = NULL;
static SPIPlanPtr tenant_plan = NULL;
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

static SPIPlanPtr
prepare_kept(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
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
		  const pg_uuid_t *entity_id, char *payload)
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
 * Insert the batch: one INSERT ... SELECT FROM unnest(...) per tenant, with
 * tenant_id a parameter, run as the owner of crm.event.  The caller is
 * connected to SPI.
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

	if (insert_plan == NULL)
	{
		Oid			types[6] = {UUIDOID, INT8ARRAYOID, TEXTARRAYOID, TEXTOID,
		UUIDARRAYOID, TEXTARRAYOID};

		insert_plan = prepare_kept(
								   "INSERT INTO crm.event (tenant_id, position, event_type, entity, entity_id, payload)"
								   " SELECT $1, x.p, x.t, $4, x.i, x.j::pg_catalog.jsonb"
								   " FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($5), pg_catalog.unnest($6)) AS x(p, t, i, j)",
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
				payloads[k] = CStringGetTextDatum(ev->payload);
				k++;
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
			args[5] = PointerGetDatum(construct_array(payloads, k, TEXTOID, -1, false, TYPALIGN_INT));
			if (SPI_execute_plan(insert_plan, args, nulls, false, 0) != SPI_OK_INSERT)
				elog(ERROR, "could not write the events");
			done += k;
		}
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();

	crm_notify("crm_events", NULL);
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
	char	   *text = JsonbToCString(NULL, &payload->root, VARSIZE(payload));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	batch_init(&batch, entity);
	position = batch_add(&batch, tenant, event_type, entity_id, text)->position;
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
Datum
crm_outbox_emit_event(PG_FUNCTION_ARGS)
{
	char	   *event_type;
	Jsonb	   *payload;
	char	   *entity = NULL;
	pg_uuid_t	entity_id;
	pg_uuid_t	tenant;
	bool		isnull;
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
		entity_id = *PG_GETARG_UUID_P(3);
	else if (entity != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("entity_id must not be null when entity is given")));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (tenant_plan == NULL)
		tenant_plan = prepare_kept("SELECT crm.current_tenant()", 0, NULL);
	if (SPI_execute_plan(tenant_plan, NULL, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read the current tenant");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("no tenant to emit the event for"),
				 errhint("Act for a tenant (crm.tenant_id or a mapping made with crm.grant_tenant_access).")));
	tenant = *DatumGetUUIDP(d);
	SPI_finish();

	/* rules copy the event's ids into jobs: only records the caller sees */
	crm_queue_require_visible(&tenant, NULL, entity, PG_ARGISNULL(3) ? NULL : &entity_id, payload);

	position = crm_outbox_emit(&tenant, event_type, entity,
							   PG_ARGISNULL(3) ? NULL : &entity_id, payload);
	PG_RETURN_INT64(position);
}

/* JSON object text, built field by field. */
static void
json_key(StringInfo buf, const char *key)
{
	appendStringInfoChar(buf, buf->len == 1 ? ' ' : ',');
	escape_json(buf, key);
	appendStringInfoChar(buf, ':');
}

static void
json_text(StringInfo buf, const char *key, Datum value, bool isnull)
{
	json_key(buf, key);
	if (isnull)
		appendStringInfoString(buf, "null");
	else
		escape_json(buf, TextDatumGetCString(value));
}

static void
json_uuid(StringInfo buf, const char *key, Datum value, bool isnull)
{
	json_key(buf, key);
	if (isnull)
		appendStringInfoString(buf, "null");
	else
	{
		appendStringInfoChar(buf, '"');
		appendStringInfoString(buf, DatumGetCString(DirectFunctionCall1(uuid_out, value)));
		appendStringInfoChar(buf, '"');
	}
}

static void
json_time(StringInfo buf, const char *key, Datum value, bool isnull)
{
	char		tbuf[MAXDATELEN + 1];

	json_key(buf, key);
	if (isnull)
		appendStringInfoString(buf, "null");
	else
	{
		appendStringInfoChar(buf, '"');
		appendStringInfoString(buf, JsonEncodeDateTime(tbuf, value, TIMESTAMPTZOID, NULL));
		appendStringInfoChar(buf, '"');
	}
}

static void
json_numeric(StringInfo buf, const char *key, Datum value, bool isnull)
{
	json_key(buf, key);
	if (isnull)
		appendStringInfoString(buf, "null");
	else
		appendStringInfoString(buf, DatumGetCString(DirectFunctionCall1(numeric_out, value)));
}

static void
json_begin(StringInfo buf)
{
	initStringInfo(buf);
	appendStringInfoChar(buf, '{');
}

static char *
json_end(StringInfo buf)
{
	appendStringInfoChar(buf, '}');
	return buf->data;
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

		converted_opportunity_plan = prepare_kept(
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
 * The events of one row (and its old version for an UPDATE).  Every field
 * is read by attribute number checked by crm_attnum.
 */
static void
row_events(EventBatch *batch, OutboxTable table, Relation rel,
		   TupleTableSlot *newslot, TupleTableSlot *oldslot)
{
	bool		n1,
				n2;
	Datum		tenant = col(newslot, crm_attnum(rel, "tenant_id", UUIDOID), &n1);
	Datum		id = col(newslot, crm_attnum(rel, "id", UUIDOID), &n2);
	pg_uuid_t	t = *DatumGetUUIDP(tenant);
	pg_uuid_t	rid = *DatumGetUUIDP(id);
	StringInfoData buf;
	bool		isnull;

	if (table == OUTBOX_LEAD)
	{
		if (oldslot == NULL)
		{
			json_begin(&buf);
			json_uuid(&buf, "leadId", id, false);
			{
				Datum		d = col(newslot, crm_attnum(rel, "source", TEXTOID), &isnull);

				json_text(&buf, "source", d, isnull);
			}
			{
				Datum		d = col(newslot, crm_attnum(rel, "owner_id", UUIDOID), &isnull);

				json_uuid(&buf, "ownerId", d, isnull);
			}
			{
				Datum		d = col(newslot, crm_attnum(rel, "created_at", TIMESTAMPTZOID), &isnull);

				json_time(&buf, "createdAt", d, isnull);
			}
			batch_add(batch, &t, "LeadCreated", &rid, json_end(&buf));
		}
		else
		{
			int			conv_att = crm_attnum(rel, "converted_at", TIMESTAMPTZOID);
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
					Datum		d = col(newslot, crm_attnum(rel, "converted_account_id", UUIDOID), &onull);

					json_uuid(&buf, "customerId", d, onull);
				}
				{
					Datum		d = col(newslot, crm_attnum(rel, "converted_contact_id", UUIDOID), &onull);

					json_uuid(&buf, "contactId", d, onull);
				}
				json_time(&buf, "convertedAt", conv, false);
				batch_add(batch, &t, "LeadConverted", &rid, json_end(&buf));
			}
		}
	}
	else if (table == OUTBOX_OPPORTUNITY)
	{
		int			status_att = crm_attnum(rel, "status", TEXTOID);
		int			stage_att = crm_attnum(rel, "stage_id", UUIDOID);
		bool		snull;
		Datum		status = col(newslot, status_att, &snull);
		bool		closed_now;

		if (oldslot == NULL)
		{
			json_begin(&buf);
			json_uuid(&buf, "opportunityId", id, false);
			{
				Datum		d = col(newslot, crm_attnum(rel, "account_id", UUIDOID), &isnull);

				json_uuid(&buf, "customerId", d, isnull);
			}
			{
				Datum		d = col(newslot, crm_attnum(rel, "lead_id", UUIDOID), &isnull);

				json_uuid(&buf, "leadId", d, isnull);
			}
			{
				Datum		d = col(newslot, crm_attnum(rel, "amount", NUMERICOID), &isnull);

				json_numeric(&buf, "expectedValue", d, isnull);
			}
			{
				Datum		d = col(newslot, crm_attnum(rel, "currency", TEXTOID), &isnull);

				json_text(&buf, "currency", d, isnull);
			}
			{
				Datum		d = col(newslot, crm_attnum(rel, "owner_id", UUIDOID), &isnull);

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
			appendStringInfoString(&buf, text_equals(status, snull, "won") ?
								   ",\"stage\":\"closed_won\"" : ",\"stage\":\"closed_lost\"");
			{
				Datum		d = col(newslot, crm_attnum(rel, "amount", NUMERICOID), &isnull);

				json_numeric(&buf, "actualValue", d, isnull);
			}
			{
				Datum		d = col(newslot, crm_attnum(rel, "currency", TEXTOID), &isnull);

				json_text(&buf, "currency", d, isnull);
			}
			{
				Datum		d = col(newslot, crm_attnum(rel, "closed_at", TIMESTAMPTZOID), &isnull);

				json_time(&buf, "closedAt", d, isnull);
			}
			batch_add(batch, &t, "OpportunityClosed", &rid, json_end(&buf));
		}
	}
	else
	{
		int			status_att = crm_attnum(rel, "status", TEXTOID);
		int			type_att = crm_attnum(rel, "activity_type", TEXTOID);
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
				StringInfoData rel_buf;
				static const char *const keys[4] = {"contactId", "accountId", "leadId", "opportunityId"};
				static const char *const cols[4] = {"contact_id", "account_id", "lead_id", "opportunity_id"};

				json_begin(&rel_buf);
				for (int i = 0; i < 4; i++)
				{
					Datum		d = col(newslot, crm_attnum(rel, cols[i], UUIDOID), &isnull);

					json_uuid(&rel_buf, keys[i], d, isnull);
				}
				appendStringInfoString(&buf, json_end(&rel_buf));
			}
			{
				Datum		d = col(newslot, crm_attnum(rel, "owner_id", UUIDOID), &isnull);

				json_uuid(&buf, "ownerId", d, isnull);
			}
			{
				Datum		d = col(newslot, crm_attnum(rel, "due_at", TIMESTAMPTZOID), &isnull);

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
				Datum		d = col(newslot, crm_attnum(rel, "owner_id", UUIDOID), &isnull);

				json_uuid(&buf, "completedBy", d, isnull);
			}
			{
				Datum		d = col(newslot, crm_attnum(rel, "completed_at", TIMESTAMPTZOID), &isnull);

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
	batch_init(&batch, table == OUTBOX_LEAD ? "lead" :
			   table == OUTBOX_OPPORTUNITY ? "opportunity" : "activity");

	while (tuplestore_gettupleslot(newrows, true, false, newslot))
	{
		if (oldrows && !tuplestore_gettupleslot(oldrows, true, false, oldslot))
			elog(ERROR, "transition tables of different lengths");
		row_events(&batch, table, rel, newslot, oldslot);
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

Datum
crm_outbox_purge_events(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr purge_plan = NULL;
	Interval   *older_than;
	Interval	zero;
	Datum		d;
	bool		isnull;
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
	if (tenant_plan == NULL)
		tenant_plan = prepare_kept("SELECT crm.current_tenant()", 0, NULL);
	if (SPI_execute_plan(tenant_plan, NULL, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read the current tenant");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("no tenant to purge the events of"),
				 errhint("Act for a tenant (crm.tenant_id or a mapping made with crm.grant_tenant_access).")));
	tenant = *DatumGetUUIDP(d);

	if (purge_plan == NULL)
	{
		Oid			types[2] = {UUIDOID, INTERVALOID};

		purge_plan = prepare_kept(
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
