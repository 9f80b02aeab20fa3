/*-------------------------------------------------------------------------
 *
 * workflow.c
 *	  Workflow rules: validated conditions, and the trigger that matches
 *	  every event of the outbox against the tenant's rules and enqueues
 *	  their jobs in the same transaction.
 *
 * A rule names an event (an outbox event type such as LeadQualified or
 * OpportunityStageChanged, an activity type such as quote_created, which
 * matches the ActivityCreated events of that type, or a time condition run
 * by crm.run_time_rules()), optionally a stage it must reach, and a
 * condition over the event's payload:
 *
 *	{}											always
 *	{"all": [c, ...]}, {"any": [c, ...]}, {"not": c}
 *	{"field": "expectedValue", "op": ">=", "value": 10000}
 *
 * A field is a dotted path into the payload ("relatedTo.contactId"); the
 * payloads carry the old and new values of what changed (fromStage and
 * toStage, for instance).  Operators: = != > >= < <= in not_in contains
 * exists not_exists.  Numbers compare as numbers, strings as strings; a
 * missing field satisfies only != not_in and not_exists.
 *
 * Matching is an AFTER INSERT statement trigger on crm.event: the new
 * events are read from the transition table in C (Citus cannot replan a
 * statement over it), each tenant's active rules are read once per
 * statement (those that name one of its events), and the matches of a
 * statement become jobs through one call of crm_queue_enqueue_jobs() per
 * tenant (one statement of arrays, however many deals a bulk UPDATE
 * moved), each with an idempotency key that is a name-based UUID (v5) of
 * the rule and the event, so a replayed event never makes a second job.
 * A debounce window makes at most one job per rule and record within it.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include <uuid/uuid.h>

#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/array.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(crm_workflow_validate_rule);
PG_FUNCTION_INFO_V1(crm_workflow_rule_check);
PG_FUNCTION_INFO_V1(crm_workflow_match);
PG_FUNCTION_INFO_V1(crm_workflow_idempotency_key);
PG_FUNCTION_INFO_V1(crm_workflow_rule_condition_holds);

/* The namespace of the rules' idempotency keys (a fixed, random v4 uuid). */
static const unsigned char rule_key_namespace[16] = {
	0x3c, 0x6f, 0x1e, 0x52, 0x8b, 0x0d, 0x4a, 0x93,
	0xb1, 0x27, 0x5e, 0xc4, 0x90, 0x6a, 0xd2, 0x18
};

static const char *const condition_ops[] = {
	"=", "!=", ">", ">=", "<", "<=", "in", "not_in", "contains", "exists", "not_exists"
};

/* One problem found in a condition. */
typedef struct ConditionProblem
{
	char	   *path;
	char	   *problem;
} ConditionProblem;

typedef struct ProblemList
{
	List	   *problems;
} ProblemList;

static void
add_problem(ProblemList *list, const char *path, const char *fmt,...)
	pg_attribute_printf(3, 4);

static void
add_problem(ProblemList *list, const char *path, const char *fmt,...)
{
	ConditionProblem *p = palloc(sizeof(ConditionProblem));
	StringInfoData buf;
	va_list		args;

	initStringInfo(&buf);
	for (;;)
	{
		int			needed;

		va_start(args, fmt);
		needed = appendStringInfoVA(&buf, fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(&buf, needed);
	}
	p->path = pstrdup(path);
	p->problem = buf.data;
	list->problems = lappend(list->problems, p);
}


static bool
is_container(JsonbValue *v, bool object)
{
	if (v == NULL || v->type != jbvBinary)
		return false;
	return object ? JsonContainerIsObject(v->val.binary.data)
		: JsonContainerIsArray(v->val.binary.data);
}

static char *
string_value(JsonbValue *v)
{
	return pnstrdup(v->val.string.val, v->val.string.len);
}

static bool
known_op(const char *op)
{
	for (int i = 0; i < lengthof(condition_ops); i++)
		if (strcmp(op, condition_ops[i]) == 0)
			return true;
	return false;
}

/*
 * Collects every problem of one condition (and those nested in it) at the
 * given path, so that crm.validate_rule() can list them all at once.
 */
static void
validate_condition(JsonbContainer *cond, const char *path, bool top, ProblemList *list)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			nkeys = 0;
	bool		has_combinator = false;
	bool		has_leaf = false;

	if (!JsonContainerIsObject(cond))
	{
		add_problem(list, path, "a condition must be a JSON object");
		return;
	}

	it = JsonbIteratorInit(cond);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *key;

		if (tok != WJB_KEY)
			continue;
		key = string_value(&v);
		nkeys++;
		if (strcmp(key, "all") == 0 || strcmp(key, "any") == 0 || strcmp(key, "not") == 0)
			has_combinator = true;
		else if (strcmp(key, "field") == 0 || strcmp(key, "op") == 0 || strcmp(key, "value") == 0)
			has_leaf = true;
		else
			add_problem(list, psprintf("%s.%s", path, key),
						"unknown key \"%s\" (a condition has all, any or not, or field, op and value)", key);
	}
	if (nkeys == 0)
	{
		if (!top)
			add_problem(list, path, "an empty condition is only allowed as the whole condition (always true)");
		return;
	}
	if (has_combinator && (has_leaf || nkeys > 1))
		add_problem(list, path, "a condition with all, any or not must have no other key");

	if (has_combinator)
	{
		const char *const combinators[] = {"all", "any"};
		JsonbValue *not_value = crm_jsonb_field(cond, "not");

		for (int c = 0; c < lengthof(combinators); c++)
		{
			JsonbValue *arr = crm_jsonb_field(cond, combinators[c]);
			int			n;

			if (arr == NULL)
				continue;
			if (!is_container(arr, false))
			{
				add_problem(list, psprintf("%s.%s", path, combinators[c]),
							"%s must be an array of conditions", combinators[c]);
				continue;
			}
			n = JsonContainerSize(arr->val.binary.data);
			if (n == 0)
				add_problem(list, psprintf("%s.%s", path, combinators[c]),
							"%s must list at least one condition", combinators[c]);
			for (int i = 0; i < n; i++)
			{
				JsonbValue *elem = getIthJsonbValueFromContainer(arr->val.binary.data, i);
				char	   *elem_path = psprintf("%s.%s[%d]", path, combinators[c], i);

				if (!is_container(elem, true))
					add_problem(list, elem_path, "a condition must be a JSON object");
				else
					validate_condition(elem->val.binary.data, elem_path, false, list);
			}
		}
		if (not_value != NULL)
		{
			if (!is_container(not_value, true))
				add_problem(list, psprintf("%s.not", path), "not must be a condition object");
			else
				validate_condition(not_value->val.binary.data, psprintf("%s.not", path), false, list);
		}
		return;
	}

	/* a leaf: field, op and (but for exists/not_exists) value */
	{
		JsonbValue *field = crm_jsonb_field(cond, "field");
		JsonbValue *op = crm_jsonb_field(cond, "op");
		JsonbValue *value = crm_jsonb_field(cond, "value");
		char	   *opname = NULL;

		if (field == NULL)
			add_problem(list, psprintf("%s.field", path), "field is missing");
		else if (field->type != jbvString || field->val.string.len == 0)
			add_problem(list, psprintf("%s.field", path), "field must be a non-empty string (a dotted path into the event payload)");

		if (op == NULL)
			add_problem(list, psprintf("%s.op", path), "op is missing");
		else if (op->type != jbvString || !known_op(opname = string_value(op)))
			add_problem(list, psprintf("%s.op", path),
						"op must be one of = != > >= < <= in not_in contains exists not_exists");

		if (opname == NULL || !known_op(opname))
			return;
		if (strcmp(opname, "exists") == 0 || strcmp(opname, "not_exists") == 0)
		{
			if (value != NULL)
				add_problem(list, psprintf("%s.value", path), "%s takes no value", opname);
		}
		else if (value == NULL)
			add_problem(list, psprintf("%s.value", path), "value is missing");
		else if (strcmp(opname, "in") == 0 || strcmp(opname, "not_in") == 0)
		{
			if (!is_container(value, false))
				add_problem(list, psprintf("%s.value", path), "%s needs an array value", opname);
		}
		else if (opname[0] == '<' || opname[0] == '>')
		{
			if (value->type != jbvNumeric && value->type != jbvString)
				add_problem(list, psprintf("%s.value", path), "%s needs a number or a string", opname);
		}
		else if (value->type == jbvBinary && strcmp(opname, "contains") != 0)
			add_problem(list, psprintf("%s.value", path), "%s needs a scalar value", opname);
	}
}

static List *
condition_problems(Jsonb *condition)
{
	ProblemList list = {NIL};

	if (!JB_ROOT_IS_OBJECT(condition) || JB_ROOT_IS_SCALAR(condition))
		add_problem(&list, "$", "a condition must be a JSON object");
	else
		validate_condition(&condition->root, "$", true, &list);
	return list.problems;
}

/*
 * crm.validate_rule(condition jsonb) returns table (path text, problem text)
 */
Datum
crm_workflow_validate_rule(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	List	   *problems;
	ListCell   *lc;

	InitMaterializedSRF(fcinfo, 0);
	if (PG_ARGISNULL(0))
	{
		Datum		values[2] = {CStringGetTextDatum("$"), CStringGetTextDatum("the condition must not be null")};
		bool		nulls[2] = {false, false};

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		return (Datum) 0;
	}
	problems = condition_problems(PG_GETARG_JSONB_P(0));
	foreach(lc, problems)
	{
		ConditionProblem *p = lfirst(lc);
		Datum		values[2] = {CStringGetTextDatum(p->path), CStringGetTextDatum(p->problem)};
		bool		nulls[2] = {false, false};

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * crm.workflow_rule_check() trigger, BEFORE INSERT OR UPDATE on
 * crm.workflow_rule: a rule whose condition does not validate is refused
 * with its first problem; crm.validate_rule() lists them all.
 */
Datum
crm_workflow_rule_check(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	newtuple;
	TupleDesc	tupdesc;
	int			cond_att;
	bool		isnull;
	Datum		cond;
	List	   *problems;

	crm_require_trigger(fcinfo, "workflow_rule_check", true, true);
	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		newtuple = trigdata->tg_trigtuple;
	else if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		newtuple = trigdata->tg_newtuple;
	else
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"workflow_rule_check\" must be fired for INSERT or UPDATE")));
	if (crm_replica_skips_work())
		return PointerGetDatum(newtuple);

	tupdesc = RelationGetDescr(trigdata->tg_relation);
	cond_att = crm_attnum(trigdata->tg_relation, "condition", JSONBOID);
	cond = heap_getattr(newtuple, cond_att, tupdesc, &isnull);
	if (isnull)
		return PointerGetDatum(newtuple);	/* NOT NULL says so */
	problems = condition_problems(DatumGetJsonbP(cond));
	if (problems != NIL)
	{
		ConditionProblem *first = linitial(problems);

		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid rule condition at %s: %s", first->path, first->problem),
				 list_length(problems) > 1 ?
				 errdetail("The condition has %d problems.", list_length(problems)) : 0,
				 errhint("SELECT * FROM crm.validate_rule(condition) lists every problem.")));
	}
	return PointerGetDatum(newtuple);
}

/* ---- evaluation ---- */

/* The value at a dotted path of the payload, or NULL when there is none. */
static JsonbValue *
payload_path(Jsonb *payload, const char *path)
{
	JsonbContainer *container = &payload->root;
	char	   *copy = pstrdup(path);
	char	   *part;
	char	   *saveptr = NULL;
	JsonbValue *v = NULL;

	for (part = strtok_r(copy, ".", &saveptr); part; part = strtok_r(NULL, ".", &saveptr))
	{
		if (container == NULL)
			return NULL;
		v = crm_jsonb_field(container, part);
		if (v == NULL)
			return NULL;
		container = v->type == jbvBinary ? v->val.binary.data : NULL;
	}
	return v;
}

/* -1, 0, 1, or 2 when the two cannot be ordered (different kinds). */
static int
compare_scalars(JsonbValue *a, JsonbValue *b)
{
	if (a->type == jbvNumeric && b->type == jbvNumeric)
		return DatumGetInt32(DirectFunctionCall2(numeric_cmp,
												 NumericGetDatum(a->val.numeric),
												 NumericGetDatum(b->val.numeric)));
	if (a->type == jbvString && b->type == jbvString)
	{
		int			len = Min(a->val.string.len, b->val.string.len);
		int			c = memcmp(a->val.string.val, b->val.string.val, len);

		if (c != 0)
			return c < 0 ? -1 : 1;
		return a->val.string.len == b->val.string.len ? 0
			: (a->val.string.len < b->val.string.len ? -1 : 1);
	}
	if (a->type == jbvBool && b->type == jbvBool)
		return a->val.boolean == b->val.boolean ? 0 : (a->val.boolean ? 1 : -1);
	if (a->type == jbvNull && b->type == jbvNull)
		return 0;
	return 2;
}

static bool
array_has(JsonbValue *array, JsonbValue *needle)
{
	int			n = JsonContainerSize(array->val.binary.data);

	for (int i = 0; i < n; i++)
		if (compare_scalars(getIthJsonbValueFromContainer(array->val.binary.data, i), needle) == 0)
			return true;
	return false;
}

static bool
evaluate(JsonbContainer *cond, Jsonb *payload)
{
	JsonbValue *sub;

	if (JsonContainerSize(cond) == 0)
		return true;
	if ((sub = crm_jsonb_field(cond, "all")) != NULL)
	{
		int			n = JsonContainerSize(sub->val.binary.data);

		for (int i = 0; i < n; i++)
			if (!evaluate(getIthJsonbValueFromContainer(sub->val.binary.data, i)->val.binary.data, payload))
				return false;
		return true;
	}
	if ((sub = crm_jsonb_field(cond, "any")) != NULL)
	{
		int			n = JsonContainerSize(sub->val.binary.data);

		for (int i = 0; i < n; i++)
			if (evaluate(getIthJsonbValueFromContainer(sub->val.binary.data, i)->val.binary.data, payload))
				return true;
		return false;
	}
	if ((sub = crm_jsonb_field(cond, "not")) != NULL)
		return !evaluate(sub->val.binary.data, payload);

	{
		char	   *field = string_value(crm_jsonb_field(cond, "field"));
		char	   *op = string_value(crm_jsonb_field(cond, "op"));
		JsonbValue *value = crm_jsonb_field(cond, "value");
		JsonbValue *actual = payload_path(payload, field);
		bool		present = actual != NULL && actual->type != jbvNull;
		int			cmp;

		if (strcmp(op, "exists") == 0)
			return present;
		if (strcmp(op, "not_exists") == 0)
			return !present;
		if (strcmp(op, "in") == 0)
			return actual != NULL && actual->type != jbvBinary && array_has(value, actual);
		if (strcmp(op, "not_in") == 0)
			return actual == NULL || actual->type == jbvBinary || !array_has(value, actual);
		if (strcmp(op, "contains") == 0)
		{
			if (actual == NULL)
				return false;
			if (actual->type == jbvString && value->type == jbvString)
			{
				char	   *hay = string_value(actual);
				char	   *needle = string_value(value);

				return strstr(hay, needle) != NULL;
			}
			if (is_container(actual, false) && value->type != jbvBinary)
				return array_has(actual, value);
			return false;
		}
		if (strcmp(op, "!=") == 0)
			return actual == NULL || actual->type == jbvBinary ||
				value->type == jbvBinary || compare_scalars(actual, value) != 0;
		if (actual == NULL || actual->type == jbvBinary || value->type == jbvBinary)
			return false;
		cmp = compare_scalars(actual, value);
		if (cmp == 2)
			return false;
		if (strcmp(op, "=") == 0)
			return cmp == 0;
		if (strcmp(op, ">") == 0)
			return cmp > 0;
		if (strcmp(op, ">=") == 0)
			return cmp >= 0;
		if (strcmp(op, "<") == 0)
			return cmp < 0;
		return cmp <= 0;
	}
}

/* ---- matching ---- */

typedef struct RuleInfo
{
	pg_uuid_t	id;
	char	   *event;
	bool		has_stage;
	pg_uuid_t	stage;
	char	   *stage_text;		/* its text form, for the payload's toStage */
	Jsonb	   *condition;
	char	   *action;
	Jsonb	   *params;
	Interval   *delay;
	bool		has_debounce;
	Interval   *debounce;
	int			max_attempts;
} RuleInfo;

/* an event as the matcher reads it (crm.h: outbox.c hands its own over) */
typedef CrmEventRow EventRow;

/* The jobs one statement's events made for one tenant, before enqueueing. */
typedef struct JobBatch
{
	int			n;
	int			cap;
	CrmJobRequest *jobs;
} JobBatch;

static SPIPlanPtr rules_plan = NULL;

static SPIPlanPtr
kept_plan(SPIPlanPtr *slot, const char *sql, int nargs, Oid *types)
{
	if (*slot == NULL)
	{
		*slot = crm_prepare_kept_generic(sql, nargs, types);
	}
	return *slot;
}

/*
 * The names a statement's events can be matched by, per tenant: their
 * event types and, for ActivityCreated, their activity types.
 */
typedef struct TenantNames
{
	pg_uuid_t	tenant;
	List	   *names;			/* of char *, distinct */
	List	   *rules;			/* of RuleInfo *, read once */
} TenantNames;

static void
add_name(TenantNames *tn, const char *name, int len)
{
	ListCell   *lc;

	foreach(lc, tn->names)
	{
		const char *have = lfirst(lc);

		if ((int) strlen(have) == len && strncmp(have, name, len) == 0)
			return;
	}
	tn->names = lappend(tn->names, pnstrdup(name, len));
}

/* The entry of a tenant in the statement's list, made when it is new. */
static TenantNames *
tenant_names(List **tenants, TenantNames *last, const pg_uuid_t *tenant)
{
	ListCell   *lc;
	TenantNames *tn;

	if (last != NULL && memcmp(&last->tenant, tenant, sizeof(pg_uuid_t)) == 0)
		return last;
	foreach(lc, *tenants)
		if (memcmp(&((TenantNames *) lfirst(lc))->tenant, tenant, sizeof(pg_uuid_t)) == 0)
			return lfirst(lc);
	tn = palloc0(sizeof(TenantNames));
	tn->tenant = *tenant;
	*tenants = lappend(*tenants, tn);
	return tn;
}

/* The names an ActivityCreated event goes by besides its type: the activity type. */
static void
add_activity_type_name(TenantNames *tn, Jsonb *payload)
{
	JsonbValue *atype = payload_path(payload, "type");

	if (atype != NULL && atype->type == jbvString)
		add_name(tn, atype->val.string.val, atype->val.string.len);
}

static List *tenant_rules(TenantNames *tn);

/* Reads each tenant's rules; does any tenant have one for these events? */
static bool
read_rules(List *tenants)
{
	bool		any_rules = false;
	ListCell   *lc;

	foreach(lc, tenants)
	{
		TenantNames *tn = lfirst(lc);

		tn->rules = tenant_rules(tn);
		if (tn->rules != NIL)
			any_rules = true;
	}
	return any_rules;
}

/*
 * The active rules of a tenant that name one of the statement's events,
 * read once per statement through the index on (tenant_id, event) of the
 * active rules: a statement whose events no rule names (an import of
 * calls and e-mails) reads nothing more.
 */
static List *
tenant_rules(TenantNames *tn)
{
	Oid			types[2] = {UUIDOID, TEXTARRAYOID};
	Datum		args[2];
	List	   *rules = NIL;
	Datum	   *names = palloc(sizeof(Datum) * list_length(tn->names));
	int			n = 0;
	ListCell   *lc;

	foreach(lc, tn->names)
		names[n++] = CStringGetTextDatum((char *) lfirst(lc));
	args[0] = UUIDPGetDatum(&tn->tenant);
	args[1] = PointerGetDatum(construct_array(names, n, TEXTOID, -1, false, TYPALIGN_INT));
	kept_plan(&rules_plan,
			  "SELECT id, event, stage_id, condition, action, params, delay, debounce, max_attempts"
			  " FROM crm.workflow_rule"
			  " WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND active"
			  " AND event OPERATOR(pg_catalog.=) ANY ($2)"
			  " AND event OPERATOR(pg_catalog.!~) '^(NoActivityFor|BeforeExpectedClose)$'"
			  " ORDER BY id",
			  2, types);
	if (SPI_execute_plan(rules_plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.workflow_rule");

	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	tupdesc = SPI_tuptable->tupdesc;
		RuleInfo   *r = palloc0(sizeof(RuleInfo));
		bool		isnull;
		Datum		d;

		r->id = *DatumGetUUIDP(SPI_getbinval(tuple, tupdesc, 1, &isnull));
		r->event = SPI_getvalue(tuple, tupdesc, 2);
		d = SPI_getbinval(tuple, tupdesc, 3, &isnull);
		if (!isnull)
		{
			r->has_stage = true;
			r->stage = *DatumGetUUIDP(d);
			r->stage_text = crm_uuid_text(&r->stage);
		}
		r->condition = DatumGetJsonbPCopy(SPI_getbinval(tuple, tupdesc, 4, &isnull));
		r->action = SPI_getvalue(tuple, tupdesc, 5);
		r->params = DatumGetJsonbPCopy(SPI_getbinval(tuple, tupdesc, 6, &isnull));
		r->delay = DatumGetIntervalP(datumCopy(SPI_getbinval(tuple, tupdesc, 7, &isnull), false, sizeof(Interval)));
		d = SPI_getbinval(tuple, tupdesc, 8, &isnull);
		if (!isnull)
		{
			r->has_debounce = true;
			r->debounce = DatumGetIntervalP(datumCopy(d, false, sizeof(Interval)));
		}
		r->max_attempts = DatumGetInt32(SPI_getbinval(tuple, tupdesc, 9, &isnull));
		rules = lappend(rules, r);
	}
	return rules;
}

/* Does a rule's event name this event? */
static bool
rule_names_event(RuleInfo *rule, EventRow *ev)
{
	if (strcmp(rule->event, ev->event_type) == 0)
		return true;
	/* an activity type names the ActivityCreated events of that type */
	if (strcmp(ev->event_type, "ActivityCreated") == 0)
	{
		JsonbValue *type = payload_path(ev->payload, "type");

		return type != NULL && type->type == jbvString &&
			strlen(rule->event) == type->val.string.len &&
			strncmp(rule->event, type->val.string.val, type->val.string.len) == 0;
	}
	return false;
}

/* A stage rule fires on the transition into its stage only. */
static bool
rule_stage_reached(RuleInfo *rule, EventRow *ev)
{
	JsonbValue *to;
	char	   *stage;

	if (!rule->has_stage)
		return true;
	to = payload_path(ev->payload, "toStage");
	if (to == NULL || to->type != jbvString)
		return false;
	stage = rule->stage_text;
	return strlen(stage) == to->val.string.len &&
		strncmp(stage, to->val.string.val, to->val.string.len) == 0;
}

static bool
uuid_from_payload(Jsonb *payload, const char *path, pg_uuid_t *out)
{
	JsonbValue *v = payload_path(payload, path);

	if (v == NULL || v->type != jbvString)
		return false;
	return crm_uuid_parse(v->val.string.val, v->val.string.len, out);
}

/*
 * The rule's params with the event that fired it, for the job:
 * {"event_type", "event_id", "payload"} || params (params win), built in
 * one pass, as jsonb_concat would build it (a later key replaces an
 * earlier one): a bulk move makes one job per deal.
 */
static Jsonb *
job_params(RuleInfo *rule, EventRow *ev)
{
	JsonbParseState *state = NULL;
	JsonbValue	k;
	JsonbValue	v;
	JsonbIterator *it;
	JsonbIteratorToken tok;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	k.type = jbvString;
	k.val.string.val = "event_type";
	k.val.string.len = strlen("event_type");
	pushJsonbValue(&state, WJB_KEY, &k);
	v.type = jbvString;
	v.val.string.val = ev->event_type;
	v.val.string.len = strlen(ev->event_type);
	pushJsonbValue(&state, WJB_VALUE, &v);
	k.val.string.val = "event_id";
	k.val.string.len = strlen("event_id");
	pushJsonbValue(&state, WJB_KEY, &k);
	v.val.string.val = DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&ev->id)));
	v.val.string.len = strlen(v.val.string.val);
	pushJsonbValue(&state, WJB_VALUE, &v);
	k.val.string.val = "payload";
	k.val.string.len = strlen("payload");
	pushJsonbValue(&state, WJB_KEY, &k);
	v.type = jbvBinary;
	v.val.binary.data = &ev->payload->root;
	v.val.binary.len = VARSIZE(ev->payload) - VARHDRSZ;
	pushJsonbValue(&state, WJB_VALUE, &v);

	/* the rule's params, key by key (their values whole) */
	if (JB_ROOT_IS_OBJECT(rule->params) && !JB_ROOT_IS_SCALAR(rule->params))
	{
		it = JsonbIteratorInit(&rule->params->root);
		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			if (tok == WJB_KEY || tok == WJB_VALUE)
				pushJsonbValue(&state, tok, &v);
		}
	}
	return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL));
}

/*
 * The job a rule makes of an event, added to the statement's batch.  The
 * debounce window (at most one job per rule and record within it: the
 * job's contact when it has one, so that an activity rule debounces per
 * person, else the event's record) is applied by the queue when the batch
 * is enqueued, in the order the jobs were matched.
 */
static void
fire(JobBatch *batch, RuleInfo *rule, EventRow *ev)
{
	CrmJobRequest *request;
	unsigned char name[32];
	uuid_t		key;

	if (batch->n == batch->cap)
	{
		batch->cap = batch->cap == 0 ? 16 : batch->cap * 2;
		batch->jobs = batch->jobs == NULL ? palloc(sizeof(CrmJobRequest) * batch->cap) :
			repalloc_huge(batch->jobs, sizeof(CrmJobRequest) * batch->cap);
	}
	request = &batch->jobs[batch->n++];
	memset(request, 0, sizeof(CrmJobRequest));
	request->action = rule->action;
	request->params = job_params(rule, ev);
	request->run_at = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
															  TimestampTzGetDatum(GetCurrentTransactionStartTimestamp()),
															  IntervalPGetDatum(rule->delay)));
	request->max_attempts = rule->max_attempts;

	/* key = uuid v5 (rule id || event id): a replayed event finds its job */
	memcpy(name, rule->id.data, 16);
	memcpy(name + 16, ev->id.data, 16);
	uuid_generate_sha1(key, (unsigned char *) rule_key_namespace, (const char *) name, sizeof(name));
	request->has_key = true;
	memcpy(request->key.data, key, 16);

	request->has_rule = true;
	request->rule = rule->id;
	request->entity = ev->entity;
	if (ev->has_entity_id)
	{
		request->has_entity_id = true;
		request->entity_id = ev->entity_id;
	}
	if (ev->entity && strcmp(ev->entity, "contact") == 0 && ev->has_entity_id)
	{
		request->has_contact = true;
		request->contact = ev->entity_id;
	}
	else
		request->has_contact = uuid_from_payload(ev->payload, "contactId", &request->contact) ||
			uuid_from_payload(ev->payload, "relatedTo.contactId", &request->contact);
	request->debounce = rule->has_debounce ? rule->debounce : NULL;
}

/* Enqueue the jobs matched for one tenant, in one call, and empty the batch. */
static void
flush_jobs(const pg_uuid_t *tenant, JobBatch *batch)
{
	if (batch->n > 0)
		(void) crm_queue_enqueue_jobs(tenant, batch->jobs, batch->n, NULL);
	batch->n = 0;
}

/*
 * A column the matcher needs is NULL: crm.event's are NOT NULL, so the
 * trigger was attached to another table.  Say which column, instead of
 * reading a null pointer.
 */
static void match_null_column(Relation rel, const char *col) pg_attribute_noreturn();

static void
match_null_column(Relation rel, const char *col)
{
	ereport(ERROR,
			(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
			 errmsg("column \"%s\" of relation \"%s\" must not be null for function \"workflow_match\"",
					col, RelationGetRelationName(rel))));
}

/*
 * Matches the statement's events (a List of EventRow *, in the order they
 * were written) against the rules read for their tenants, and enqueues the
 * jobs they make, one batch per run of events of a tenant.
 */
static void
match_events(List *events, List *tenants)
{
	ListCell   *lc;
	bool		have_tenant = false;
	pg_uuid_t	rules_tenant;
	List	   *rules = NIL;
	JobBatch	jobs = {0};

	foreach(lc, events)
	{
		EventRow   *ev = lfirst(lc);
		ListCell   *rc;

		if (!have_tenant || memcmp(&rules_tenant, &ev->tenant, sizeof(pg_uuid_t)) != 0)
		{
			ListCell   *tc;

			if (have_tenant)
				flush_jobs(&rules_tenant, &jobs);
			rules = NIL;
			foreach(tc, tenants)
				if (memcmp(&((TenantNames *) lfirst(tc))->tenant, &ev->tenant, sizeof(pg_uuid_t)) == 0)
					rules = ((TenantNames *) lfirst(tc))->rules;
			rules_tenant = ev->tenant;
			have_tenant = true;
		}
		foreach(rc, rules)
		{
			RuleInfo   *rule = lfirst(rc);

			if (rule_names_event(rule, ev) && rule_stage_reached(rule, ev) &&
				evaluate(&rule->condition->root, ev->payload))
				fire(&jobs, rule, ev);
		}
	}
	if (have_tenant)
		flush_jobs(&rules_tenant, &jobs);
}

/*
 * crm.workflow_match() trigger: AFTER INSERT FOR EACH STATEMENT on
 * crm.event, REFERENCING NEW TABLE AS crm_new_events.
 */
Datum
crm_workflow_match(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Tuplestorestate *store;
	TupleTableSlot *slot;
	TupleDesc	tupdesc;
	List	   *events = NIL;
	int			att_tenant;
	int			att_id;
	int			att_type;
	int			att_entity;
	int			att_entity_id;
	int			att_payload;
	Oid			save_userid;
	int			save_sec_context;
	List	   *tenants = NIL;

	crm_require_trigger(fcinfo, "workflow_match", false, false);
	crm_require_trigger_nargs(fcinfo, "workflow_match", 0);
	if (!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) || trigdata->tg_newtable == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"workflow_match\" must be fired AFTER INSERT with REFERENCING NEW TABLE")));
	/* a restore brings the jobs with the events */
	if (crm_loading_dump())
		return PointerGetDatum(NULL);

	tupdesc = RelationGetDescr(trigdata->tg_relation);
	att_tenant = crm_attnum(trigdata->tg_relation, "tenant_id", UUIDOID);
	att_id = crm_attnum(trigdata->tg_relation, "id", UUIDOID);
	att_type = crm_attnum(trigdata->tg_relation, "event_type", TEXTOID);
	att_entity = crm_attnum(trigdata->tg_relation, "entity", TEXTOID);
	att_entity_id = crm_attnum(trigdata->tg_relation, "entity_id", UUIDOID);
	att_payload = crm_attnum(trigdata->tg_relation, "payload", JSONBOID);

	store = trigdata->tg_newtable;
	slot = MakeSingleTupleTableSlot(tupdesc, &TTSOpsMinimalTuple);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* jobs are the server's: written as the owner of the event table */
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(trigdata->tg_relation->rd_rel->relowner,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);

	/*
	 * The tenants and the names their events go by first: most statements
	 * write events that no active rule names (an import of activities),
	 * and then no event needs to be read whole.
	 */
	{
		bool		any_rules = false;
		TenantNames *last = NULL;
		char	   *last_type = NULL;

		crm_transition_rewind(store);
		while (tuplestore_gettupleslot(store, true, false, slot))
		{
			bool		isnull;
			Datum		d = slot_getattr(slot, att_tenant, &isnull);
			pg_uuid_t	tenant;
			char	   *type;

			if (isnull)
				match_null_column(trigdata->tg_relation, "tenant_id");
			tenant = *DatumGetUUIDP(d);
			/* crm.event's are NOT NULL: another table is refused whatever its rules */
			(void) slot_getattr(slot, att_id, &isnull);
			if (isnull)
				match_null_column(trigdata->tg_relation, "id");
			(void) slot_getattr(slot, att_type, &isnull);
			if (isnull)
				match_null_column(trigdata->tg_relation, "event_type");
			(void) slot_getattr(slot, att_payload, &isnull);
			if (isnull)
				match_null_column(trigdata->tg_relation, "payload");
			if (last == NULL || memcmp(&last->tenant, &tenant, sizeof(pg_uuid_t)) != 0)
			{
				last = tenant_names(&tenants, last, &tenant);
				last_type = NULL;
			}
			type = TextDatumGetCString(slot_getattr(slot, att_type, &isnull));
			if (last_type == NULL || strcmp(last_type, type) != 0)
			{
				add_name(last, type, strlen(type));
				last_type = type;
			}
			if (strcmp(type, "ActivityCreated") == 0)
				add_activity_type_name(last, DatumGetJsonbP(slot_getattr(slot, att_payload, &isnull)));
		}
		any_rules = read_rules(tenants);
		if (!any_rules)
		{
			ExecDropSingleTupleTableSlot(slot);
			SetUserIdAndSecContext(save_userid, save_sec_context);
			SPI_finish();
			return PointerGetDatum(NULL);
		}
	}

	/* Read the statement's events in C: no plan sees the tuplestore. */
	crm_transition_rewind(store);
	while (tuplestore_gettupleslot(store, true, false, slot))
	{
		EventRow   *ev = palloc0(sizeof(EventRow));
		bool		isnull;
		Datum		d;

		d = slot_getattr(slot, att_tenant, &isnull);
		if (isnull)
			match_null_column(trigdata->tg_relation, "tenant_id");
		ev->tenant = *DatumGetUUIDP(d);
		d = slot_getattr(slot, att_id, &isnull);
		if (isnull)
			match_null_column(trigdata->tg_relation, "id");
		ev->id = *DatumGetUUIDP(d);
		d = slot_getattr(slot, att_type, &isnull);
		if (isnull)
			match_null_column(trigdata->tg_relation, "event_type");
		ev->event_type = TextDatumGetCString(d);
		d = slot_getattr(slot, att_entity, &isnull);
		ev->entity = isnull ? NULL : TextDatumGetCString(d);
		d = slot_getattr(slot, att_entity_id, &isnull);
		if (!isnull)
		{
			ev->has_entity_id = true;
			ev->entity_id = *DatumGetUUIDP(d);
		}
		d = slot_getattr(slot, att_payload, &isnull);
		if (isnull)
			match_null_column(trigdata->tg_relation, "payload");
		ev->payload = DatumGetJsonbPCopy(d);
		events = lappend(events, ev);
	}
	ExecDropSingleTupleTableSlot(slot);

	match_events(events, tenants);

	SetUserIdAndSecContext(save_userid, save_sec_context);
	SPI_finish();
	return PointerGetDatum(NULL);
}

/*
 * crm_workflow_match_rows(): what the trigger does, for events outbox.c
 * wrote straight into crm.event (rowwriter.c), where no trigger fired:
 * the caller has checked that crm.event's workflow_match trigger would
 * have.  Runs as event_owner, the owner of crm.event, as the trigger does.
 */
void
crm_workflow_match_rows(Oid event_owner, CrmEventRow *events, int n)
{
	Oid			save_userid;
	int			save_sec_context;
	List	   *tenants = NIL;
	TenantNames *last = NULL;

	/* a restore brings the jobs with the events */
	if (n == 0 || crm_loading_dump())
		return;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(event_owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		for (int i = 0; i < n; i++)
		{
			last = tenant_names(&tenants, last, &events[i].tenant);
			add_name(last, events[i].event_type, strlen(events[i].event_type));
			if (strcmp(events[i].event_type, "ActivityCreated") == 0)
				add_activity_type_name(last, events[i].payload);
		}
		if (read_rules(tenants))
		{
			List	   *rows = NIL;

			for (int i = 0; i < n; i++)
				rows = lappend(rows, &events[i]);
			match_events(rows, tenants);
		}
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
	SPI_finish();
}

/*
 * crm.rule_condition_holds(rule uuid, payload jsonb) returns boolean: does
 * the condition of the current tenant's rule hold for the payload?  The
 * rule triggers evaluate conditions in C as they match events; the time
 * rules (crm.run_time_rules(), which has no event to match) ask here for
 * each record they would fire for.  The rule is read with the caller's
 * rights; an unknown rule is P0002.
 */
static SPIPlanPtr condition_plan = NULL;

Datum
crm_workflow_rule_condition_holds(PG_FUNCTION_ARGS)
{
	pg_uuid_t	tenant;
	Datum		args[2];
	bool		isnull;
	Jsonb	   *condition;
	bool		holds;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("rule and payload must not be null")));
	if (!crm_current_tenant_id(&tenant))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("evaluating a rule needs a tenant, and this session acts for none")));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	kept_plan(&condition_plan,
			  "SELECT condition FROM crm.workflow_rule"
			  " WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND id OPERATOR(pg_catalog.=) $2",
			  2, (Oid[]) {UUIDOID, UUIDOID});
	args[0] = UUIDPGetDatum(&tenant);
	args[1] = PG_GETARG_DATUM(0);
	if (SPI_execute_plan(condition_plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.workflow_rule");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("workflow rule %s does not exist", crm_uuid_text(PG_GETARG_UUID_P(0)))));
	condition = DatumGetJsonbP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	/* a stored condition passed crm.validate_rule() when it was written */
	holds = isnull || evaluate(&condition->root, PG_GETARG_JSONB_P(1));
	SPI_finish();
	PG_RETURN_BOOL(holds);
}

/*
 * crm.idempotency_key(VARIADIC parts text[]) returns uuid
 *
 * A version 5 uuid of the parts joined by a unit separator (which no
 * part may contain), so that ('ab', 'c') and ('a', 'bc') differ.
 */
Datum
crm_workflow_idempotency_key(PG_FUNCTION_ARGS)
{
	ArrayType  *parts = PG_GETARG_ARRAYTYPE_P(0);
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;
	StringInfoData name;
	uuid_t		key;
	pg_uuid_t  *result = palloc(sizeof(pg_uuid_t));

	deconstruct_array(parts, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &nelems);
	if (nelems == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("an idempotency key needs at least one part")));
	initStringInfo(&name);
	for (int i = 0; i < nelems; i++)
	{
		char	   *part;

		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("part %d of an idempotency key is null", i + 1)));
		part = TextDatumGetCString(elems[i]);
		if (strchr(part, '\x1f') != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("part %d of an idempotency key contains the unit separator (U+001F)", i + 1)));
		if (i > 0)
			appendStringInfoChar(&name, '\x1f');
		appendStringInfoString(&name, part);
	}
	uuid_generate_sha1(key, (unsigned char *) rule_key_namespace, name.data, name.len);
	memcpy(result->data, key, 16);
	PG_RETURN_UUID_P(result);
}

/*
 * crm.consume_event(type, payload, external_id): takes an event from
 * another system into the outbox, once per external id.
 *
 * The ledger crm.inbound_event is the server's (issue 8 item 4): a writer
 * who could insert into it would pre-claim an external id so that the real
 * event is ignored.  So the checks and the opportunity lookup run with the
 * caller's rights (row-level security and private visibility apply), and
 * the ledger is read and written as its owner with the caller's tenant as
 * a parameter.  The event itself goes to the outbox through
 * crm_outbox_emit: crm.emit_event refuses inbound event types, which come
 * only through here.
 */
PG_FUNCTION_INFO_V1(crm_workflow_consume_event);

static SPIPlanPtr consume_kind_plan = NULL;
static SPIPlanPtr consume_opp_plan = NULL;
static SPIPlanPtr consume_seen_plan = NULL;
static SPIPlanPtr consume_ledger_plan = NULL;

static SPIPlanPtr
consume_prepare(const char *sql, int nargs, Oid *types)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

	if (plan == NULL || SPI_keepplan(plan) != 0)
		elog(ERROR, "could not prepare an inbound event statement: %s",
			 SPI_result_code_string(SPI_result));
	return plan;
}

/* Text uuid_in accepts: 32 hex digits, a hyphen after any group of four, optional braces. */
static bool
consume_uuid_text(const char *s)
{
	int			digits = 0;
	bool		braces = (*s == '{');
	const char *c = braces ? s + 1 : s;

	for (; *c && !(braces && *c == '}'); c++)
	{
		if (isxdigit((unsigned char) *c))
			digits++;
		else if (*c == '-' && digits > 0 && digits < 32 && digits % 4 == 0 && c[-1] != '-')
			continue;
		else
			return false;
	}
	if (braces && (*c != '}' || c[1] != '\0'))
		return false;
	return digits == 32 && c[-1] != '-';
}

CRM_SHARD_ENTRY(crm_workflow_consume_event)
{
	pg_uuid_t	tenant;
	char	   *type;
	Jsonb	   *payload;
	pg_uuid_t	opp;
	bool		has_opp = false;
	bool		isnull;
	Datum		args[4];
	int64		position;
	Oid			save_userid;
	int			save_sec_context;
	bool		seen;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (!crm_current_tenant_id(&tenant))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("consuming an event needs a tenant, and this session acts for none")));
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("type, payload and external_id must not be null")));
	type = text_to_cstring(PG_GETARG_TEXT_PP(0));
	payload = PG_GETARG_JSONB_P(1);
	{
		/* the ledger's key, checked before anything is emitted */
		int			len = pg_mbstrlen_with_len(VARDATA_ANY(PG_GETARG_TEXT_PP(2)),
											   VARSIZE_ANY_EXHDR(PG_GETARG_TEXT_PP(2)));

		if (len < 1 || len > 500)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("external_id must be 1 to 500 characters long")));
	}

	if (consume_kind_plan == NULL)
	{
		Oid			types[1] = {TEXTOID};

		consume_kind_plan = consume_prepare(
											"SELECT e.kind OPERATOR(pg_catalog.=) 'inbound' FROM crm.workflow_event e"
											" WHERE e.code OPERATOR(pg_catalog.=) $1", 1, types);
	}
	args[0] = PG_GETARG_DATUM(0);
	if (SPI_execute_plan(consume_kind_plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the event types");
	if (SPI_processed != 1 ||
		!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event type \"%s\" is not an inbound event", type),
				 errhint("The inbound events are the rows of crm.workflow_event of kind inbound.")));
	if (!JB_ROOT_IS_OBJECT(payload) || JB_ROOT_IS_SCALAR(payload))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event payload must be a JSON object")));

	{
		JsonbValue	key;
		JsonbValue *v;

		key.type = jbvString;
		key.val.string.val = "opportunityId";
		key.val.string.len = strlen("opportunityId");
		v = findJsonbValueFromContainer(&payload->root, JB_FOBJECT, &key);
		if (v != NULL)
		{
			char	   *s = NULL;

			if (v->type == jbvString)
				s = pnstrdup(v->val.string.val, v->val.string.len);
			else if (v->type == jbvNumeric)
				s = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
			else if (v->type == jbvBool)
				s = v->val.boolean ? "true" : "false";
			else if (v->type != jbvNull)
				s = JsonbToCString(NULL, v->val.binary.data, v->val.binary.len);
			if (s == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
						 errmsg("opportunity <NULL> does not exist")));
			if (!consume_uuid_text(s))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("opportunityId must be a uuid, not \"%s\"", s)));
			opp = *DatumGetUUIDP(DirectFunctionCall1(uuid_in, CStringGetDatum(s)));
			has_opp = true;

			/* as the caller: a hidden deal is no deal */
			if (consume_opp_plan == NULL)
			{
				Oid			types[2] = {UUIDOID, UUIDOID};

				consume_opp_plan = consume_prepare(
												   "SELECT 1 FROM crm.opportunity o"
												   " WHERE o.tenant_id OPERATOR(pg_catalog.=) $1 AND o.id OPERATOR(pg_catalog.=) $2",
												   2, types);
			}
			args[0] = UUIDPGetDatum(&tenant);
			args[1] = UUIDPGetDatum(&opp);
			if (SPI_execute_plan(consume_opp_plan, args, NULL, true, 1) != SPI_OK_SELECT)
				elog(ERROR, "could not read the opportunity");
			if (SPI_processed != 1)
				ereport(ERROR,
						(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
						 errmsg("opportunity %s does not exist",
								DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&opp))))));
		}
	}

	/* the built-in inbound events are about a deal: without one no rule can act */
	if (!has_opp && (strcmp(type, "OfferApproved") == 0 || strcmp(type, "OfferRejected") == 0 ||
					 strcmp(type, "OrderCreated") == 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s needs an opportunityId", type),
				 errhint("The payload of %s names the opportunity it is about: {\"opportunityId\": ...}.", type)));

	/*
	 * Taken before?  No row lock: a concurrent delivery is caught by the
	 * INSERT below.
	 */
	if (consume_seen_plan == NULL)
	{
		Oid			types[2] = {UUIDOID, TEXTOID};

		consume_seen_plan = consume_prepare(
											"SELECT 1 FROM crm.inbound_event i"
											" WHERE i.tenant_id OPERATOR(pg_catalog.=) $1"
											" AND i.external_id OPERATOR(pg_catalog.=) $2", 2, types);
	}
	args[0] = UUIDPGetDatum(&tenant);
	args[1] = PG_GETARG_DATUM(2);
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(crm_table_owner("inbound_event"),
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	if (SPI_execute_plan(consume_seen_plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the inbound event ledger");
	seen = (SPI_processed > 0);
	SetUserIdAndSecContext(save_userid, save_sec_context);
	if (seen)
	{
		SPI_finish();
		PG_RETURN_NULL();
	}

	/* rules copy the event's ids into jobs: only records the caller sees */
	crm_queue_require_visible(&tenant, NULL, has_opp ? "opportunity" : NULL,
							  has_opp ? &opp : NULL, payload);
	position = crm_outbox_emit(&tenant, type, has_opp ? "opportunity" : NULL,
							   has_opp ? &opp : NULL, payload);

	if (consume_ledger_plan == NULL)
	{
		Oid			types[4] = {UUIDOID, TEXTOID, TEXTOID, INT8OID};

		consume_ledger_plan = consume_prepare(
											  "INSERT INTO crm.inbound_event (tenant_id, external_id, event_type, position)"
											  " VALUES ($1, $2, $3, $4)"
											  " ON CONFLICT ON CONSTRAINT inbound_event_pkey DO NOTHING", 4, types);
	}
	args[0] = UUIDPGetDatum(&tenant);
	args[1] = PG_GETARG_DATUM(2);
	args[2] = PG_GETARG_DATUM(0);
	args[3] = Int64GetDatum(position);
	SetUserIdAndSecContext(crm_table_owner("inbound_event"),
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	/* an error aborts the (sub)transaction, which restores the user id */
	if (SPI_execute_plan(consume_ledger_plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not write the inbound event ledger");
	SetUserIdAndSecContext(save_userid, save_sec_context);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("event %s was consumed concurrently", text_to_cstring(PG_GETARG_TEXT_PP(2))),
				 errhint("Retry: the retry finds it consumed and takes nothing.")));
	SPI_finish();
	PG_RETURN_INT64(position);
}
