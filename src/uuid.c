/*-------------------------------------------------------------------------
 *
 * uuid.c
 *	  Time-ordered identifiers: UUID version 7 (RFC 9562, section 5.7).
 *
 * Every row of the extension is keyed by one of these.  The leading 48 bits
 * are the Unix time in milliseconds, so new rows land at the right-hand edge
 * of the primary key index, as with a sequence, while the ids stay globally
 * unique and can be made by any node of a distributed cluster.
 *
 * The 12 bits after the version ("rand_a") hold the sub-millisecond part of
 * the clock, and serve as a counter when the clock has not moved since the
 * last id (RFC 9562 section 6.2, methods 1 and 3 combined): ids made in one
 * backend therefore strictly increase, even many within one millisecond or
 * across a step back of the system clock.  The remaining 62 bits come from
 * pg_strong_random(), PostgreSQL's own cryptographic generator (the one
 * behind gen_random_uuid()), drawn 512 bytes (64 ids) at a time: one call
 * costs about a microsecond whatever its length, as libuuid's
 * uuid_generate_random() did with its getrandom() system call per id, and
 * a bulk stage change or activity import makes an id for every row.  The
 * buffer belongs to the process that filled it, so that no two backends
 * (forked from one postmaster) can hand out the same bytes.  libuuid still
 * makes the name-based (v5) ids.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include <time.h>

#include "datatype/timestamp.h"
#include "miscadmin.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(crm_uuid_generate_v7);
PG_FUNCTION_INFO_V1(crm_uuid_v7_time);

#define UUID_V7_SUBMS_STEPS		4096	/* values of the 12-bit rand_a field */

/* Random bytes drawn ahead, for the process random_pid. */
#define RANDOM_BUFFER_SIZE 512
static uint8 random_buffer[RANDOM_BUFFER_SIZE];
static int	random_used = RANDOM_BUFFER_SIZE;
static int	random_pid = 0;

/* Eight random bytes into *out. */
static void
random_bytes_8(uint8 *out)
{
	if (random_pid != MyProcPid || random_used + 8 > RANDOM_BUFFER_SIZE)
	{
		if (!pg_strong_random(random_buffer, sizeof(random_buffer)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate random values")));
		random_pid = MyProcPid;
		random_used = 0;
	}
	memcpy(out, &random_buffer[random_used], 8);
	/* used bytes are not left behind in memory */
	memset(&random_buffer[random_used], 0, 8);
	random_used += 8;
}

/* The (millisecond, rand_a) pair of the last id this backend made. */
static int64 last_unix_ms = 0;
static int	last_subms = -1;

/*
 * A new version 7 uuid into *result; for the other C files, and behind
 * crm.uuid_generate_v7().
 */
void
crm_uuid_v7(pg_uuid_t *result)
{
	uint8		random_bytes[8];
	struct timespec ts;
	int64		unix_ms;
	int			subms;

	if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not read the system clock: %m")));

	unix_ms = (int64) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	subms = (int) ((ts.tv_nsec % 1000000) * UUID_V7_SUBMS_STEPS / 1000000);

	if (unix_ms < last_unix_ms ||
		(unix_ms == last_unix_ms && subms <= last_subms))
	{
		/* Clock did not advance: count on from the last id. */
		unix_ms = last_unix_ms;
		subms = last_subms + 1;
		if (subms >= UUID_V7_SUBMS_STEPS)
		{
			/* Counter exhausted: borrow the next millisecond. */
			unix_ms++;
			subms = 0;
		}
	}
	last_unix_ms = unix_ms;
	last_subms = subms;

	random_bytes_8(random_bytes);

	for (int i = 0; i < 6; i++)
		result->data[i] = (unsigned char) (unix_ms >> (8 * (5 - i)));
	result->data[6] = (unsigned char) (0x70 | (subms >> 8));
	result->data[7] = (unsigned char) (subms & 0xFF);
	result->data[8] = (unsigned char) (0x80 | (random_bytes[0] & 0x3F));
	memcpy(&result->data[9], &random_bytes[1], 7);
}

/*
 * crm.uuid_generate_v7() returns uuid
 */
Datum
crm_uuid_generate_v7(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *result = palloc(sizeof(pg_uuid_t));

	crm_uuid_v7(result);
	PG_RETURN_UUID_P(result);
}

/*
 * crm.uuid_v7_time(uuid) returns timestamptz
 *
 * The millisecond at which a version 7 id was made.  Any other version
 * carries no time we could read, so it is an error rather than a guess.
 */
Datum
crm_uuid_v7_time(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *id = PG_GETARG_UUID_P(0);
	int64		unix_ms = 0;
	int			version = id->data[6] >> 4;

	if (version != 7)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("uuid is version %d, not version 7", version),
				 errdetail("Only version 7 uuids carry their creation time.")));

	for (int i = 0; i < 6; i++)
		unix_ms = (unix_ms << 8) | id->data[i];

	PG_RETURN_TIMESTAMPTZ((TimestampTz) (unix_ms * 1000 -
										 (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) *
										 SECS_PER_DAY * USECS_PER_SEC));
}
