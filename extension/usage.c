/*
 * The usage ledger: the requests, rows, bytes and tokens of every remote call of ours,
 * per UTC day, service and endpoint (or model), in shared memory for the whole server.
 *
 * It is not transactional on purpose: a call that was made was made (and billed),
 * whatever becomes of the transaction that made it. pg.py feeds it through ctypes;
 * ml_pipeline.usage reads it. A background worker of its own saves it to
 * pg_stat/azure_ai_sim_usage.stat every second that it changed, and the postmaster at
 * shutdown; it is read back when shared memory is made: it survives a restart, and a
 * crash loses at most its last second. Backends never write the file (a rename per
 * call cost azure_ml.score a tenth of its speed).
 *
 * Budget caps (ml_pipeline.budgets) are checked, and the request counted, under one
 * lock: two backends cannot both take a budget's last request.
 *
 * It needs shared_preload_libraries: a library loaded later has no shared memory, and
 * the ledger is off. Nothing called through ctypes may throw: an ereport would unwind
 * through Python's frames.
 */
#include "postgres.h"

#include <stdio.h>
#include <unistd.h>

#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#define USAGE_FILE "pg_stat/azure_ai_sim_usage.stat"
#define USAGE_MAGIC 0x41415531	/* "AAU1" */
#define USAGE_ENTRIES 4096
#define USAGE_TRANCHE "azure_ai_sim usage"
#define SERVICE_LEN 32
#define ENDPOINT_LEN 256
#define SAVE_EVERY_MS 1000

/* usage_begin's answer besides 1 to 6, the cap that refused the request */
#define USAGE_COUNTED 0
#define USAGE_OFF (-1)

typedef struct UsageKey
{
	DateADT		day;			/* UTC */
	char		service[SERVICE_LEN];
	char		endpoint[ENDPOINT_LEN]; /* "": the whole service */
} UsageKey;

typedef enum UsageCount
{
	REQUESTS, FAILED, ROWS, BYTES_SENT, BYTES_RECEIVED, INPUT_TOKENS, OUTPUT_TOKENS,
	USAGE_COUNTS
} UsageCount;

typedef struct UsageEntry
{
	UsageKey	key;
	int64		counts[USAGE_COUNTS];
} UsageEntry;

typedef struct UsageShared
{
	LWLock	   *lock;
	int			entries;
	bool		changed;		/* since the last save */
} UsageShared;

extern PGDLLEXPORT int azure_ai_sim_usage_begin(const char *service, const char *endpoint,
												int64 rows, int64 bytes_sent,
												const int64 *caps);
extern PGDLLEXPORT void azure_ai_sim_usage_end(const char *service, const char *endpoint,
											   bool failed, int64 bytes_received,
											   int64 input_tokens, int64 output_tokens);
extern PGDLLEXPORT void azure_ai_sim_usage_saver(Datum arg);
extern void azure_ai_sim_usage_init(void);

static UsageShared *usage = NULL;
static HTAB *usage_entries = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
usage_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(UsageShared)) +
						   hash_estimate_size(USAGE_ENTRIES, sizeof(UsageEntry)));
	RequestNamedLWLockTranche(USAGE_TRANCHE, 1);
}

/*
 * Writes the ledger to a new file and renames it over the old one; the lock is held, or
 * every other process has exited.
 */
static void
usage_save(void)
{
	const char *temporary = USAGE_FILE ".tmp";
	FILE	   *file = fopen(temporary, PG_BINARY_W);
	HASH_SEQ_STATUS scan;
	UsageEntry *entry;
	int32		header[2] = {USAGE_MAGIC, usage->entries};
	bool		written;

	if (file == NULL)
		return;
	written = fwrite(header, sizeof(header), 1, file) == 1;
	hash_seq_init(&scan, usage_entries);
	while ((entry = hash_seq_search(&scan)) != NULL)
		written &= fwrite(entry, sizeof(UsageEntry), 1, file) == 1;
	written &= fflush(file) == 0 && fsync(fileno(file)) == 0;	/* before the rename */
	written &= fclose(file) == 0;
	if (written && rename(temporary, USAGE_FILE) == 0)
		usage->changed = false;
	else
		unlink(temporary);
}

static void
usage_load(void)
{
	FILE	   *file = fopen(USAGE_FILE, PG_BINARY_R);
	int32		header[2];
	UsageEntry	entry;

	if (file == NULL)
		return;
	if (fread(header, sizeof(header), 1, file) == 1 && header[0] == USAGE_MAGIC)
	{
		for (int i = 0; i < Min(header[1], USAGE_ENTRIES); i++)
		{
			UsageEntry *loaded;

			if (fread(&entry, sizeof(entry), 1, file) != 1)
				break;
			loaded = hash_search(usage_entries, &entry.key, HASH_ENTER_NULL, NULL);
			if (loaded == NULL)
				break;
			memcpy(loaded->counts, entry.counts, sizeof(entry.counts));
			usage->entries++;
		}
	}
	else
		ereport(LOG,
				(errmsg("azure_ai_sim: ignoring %s, which is not a usage ledger", USAGE_FILE)));
	fclose(file);
}

/*
 * At the postmaster's exit, unless it crashed: shared memory may be damaged then. No
 * lock: every other process has exited (and the postmaster has no PGPROC to wait with).
 */
static void
usage_save_at_exit(int code, Datum arg)
{
	if (code == 0 && usage != NULL)
		usage_save();
}

static void
usage_shmem_startup(void)
{
	HASHCTL		info;
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	usage = ShmemInitStruct("azure_ai_sim usage", sizeof(UsageShared), &found);
	if (!found)
	{
		usage->lock = &(GetNamedLWLockTranche(USAGE_TRANCHE))->lock;
		usage->entries = 0;
		usage->changed = false;
	}
	info.keysize = sizeof(UsageKey);
	info.entrysize = sizeof(UsageEntry);
	usage_entries = ShmemInitHash("azure_ai_sim usage entries", USAGE_ENTRIES, USAGE_ENTRIES,
								  &info, HASH_ELEM | HASH_BLOBS);
	if (!found)
		usage_load();
	LWLockRelease(AddinShmemInitLock);
	if (!IsUnderPostmaster)
		on_shmem_exit(usage_save_at_exit, (Datum) 0);
}

/* The background worker "azure_ai_sim usage saver": saves the ledger each second it changed */
void
azure_ai_sim_usage_saver(Datum arg)
{
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	while (!ShutdownRequestPending)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 SAVE_EVERY_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		if (usage->changed)
		{
			LWLockAcquire(usage->lock, LW_EXCLUSIVE);
			usage_save();
			LWLockRelease(usage->lock);
		}
	}
	proc_exit(1);				/* restarted, if the server goes on (pg_terminate_backend) */
}

void
azure_ai_sim_usage_init(void)
{
	BackgroundWorker worker = {0};

	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = usage_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = usage_shmem_startup;

	worker.bgw_flags = BGWORKER_SHMEM_ACCESS;
	worker.bgw_start_time = BgWorkerStart_PostmasterStart;
	worker.bgw_restart_time = 10;	/* seconds */
	strlcpy(worker.bgw_library_name, "azure_ai_sim", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "azure_ai_sim_usage_saver", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "azure_ai_sim usage saver", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "azure_ai_sim usage saver", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

/* Drops the entries of the oldest day before today; false if there are none. */
static bool
usage_forget_oldest_day(DateADT today)
{
	HASH_SEQ_STATUS scan;
	UsageEntry *entry;
	DateADT		oldest = today;

	hash_seq_init(&scan, usage_entries);
	while ((entry = hash_seq_search(&scan)) != NULL)
		oldest = Min(oldest, entry->key.day);
	if (oldest == today)
		return false;
	hash_seq_init(&scan, usage_entries);
	while ((entry = hash_seq_search(&scan)) != NULL)
	{
		if (entry->key.day == oldest &&
			hash_search(usage_entries, &entry->key, HASH_REMOVE, NULL) != NULL)
			usage->entries--;
	}
	return true;
}

/*
 * Today's entry of the service and endpoint, made if missing; NULL when the ledger is
 * full of today's entries (then the call still counts for the whole service, whose
 * entry is looked up first). The lock is held exclusively.
 */
static UsageEntry *
usage_entry(const char *service, const char *endpoint)
{
	UsageKey	key;
	UsageEntry *entry;
	bool		found;

	memset(&key, 0, sizeof(key));
	key.day = (DateADT) (GetCurrentTimestamp() / USECS_PER_DAY);
	strlcpy(key.service, service, SERVICE_LEN);
	strlcpy(key.endpoint, endpoint, ENDPOINT_LEN);
	entry = hash_search(usage_entries, &key, HASH_FIND, NULL);
	if (entry != NULL)
		return entry;
	if (usage->entries >= USAGE_ENTRIES && !usage_forget_oldest_day(key.day))
		return NULL;
	entry = hash_search(usage_entries, &key, HASH_ENTER_NULL, &found);
	if (entry == NULL)
		return NULL;
	memset(entry->counts, 0, sizeof(entry->counts));
	usage->entries++;
	return entry;
}

static void
usage_add(UsageEntry *entry, UsageCount count, int64 value)
{
	if (entry != NULL)
		entry->counts[count] += value;
}

/* The first of the caps (requests, rows, tokens per day; -1: none) this call would pass */
static int
usage_refusal(const UsageEntry *entry, int64 rows, const int64 *caps)
{
	int64		requests = entry ? entry->counts[REQUESTS] : 0;
	int64		rows_so_far = entry ? entry->counts[ROWS] : 0;
	int64		tokens = entry ? entry->counts[INPUT_TOKENS] + entry->counts[OUTPUT_TOKENS] : 0;

	if (caps[0] >= 0 && requests + 1 > caps[0])
		return 1;
	if (caps[1] >= 0 && rows_so_far + rows > caps[1])
		return 2;
	if (caps[2] >= 0 && tokens >= caps[2])
		return 3;
	return 0;
}

/*
 * Before an attempt of a request to the service's endpoint, carrying rows and
 * bytes_sent: counts it, unless a cap is reached. caps holds six values, the caps of
 * the whole service then of the endpoint: requests, rows and tokens per day, -1 for
 * none. Answers USAGE_COUNTED, the cap (1 to 6) that refuses the request, or USAGE_OFF
 * without shared memory.
 */
int
azure_ai_sim_usage_begin(const char *service, const char *endpoint, int64 rows,
						 int64 bytes_sent, const int64 *caps)
{
	UsageEntry *whole;
	UsageEntry *one;
	int			refusal;

	if (usage == NULL)
		return USAGE_OFF;
	LWLockAcquire(usage->lock, LW_EXCLUSIVE);
	whole = usage_entry(service, "");
	one = usage_entry(service, endpoint);
	refusal = usage_refusal(whole, rows, caps);
	if (refusal == 0 && (refusal = usage_refusal(one, rows, caps + 3)) != 0)
		refusal += 3;
	if (refusal == 0)
	{
		usage_add(whole, REQUESTS, 1);
		usage_add(one, REQUESTS, 1);
		usage_add(whole, ROWS, rows);
		usage_add(one, ROWS, rows);
		usage_add(whole, BYTES_SENT, bytes_sent);
		usage_add(one, BYTES_SENT, bytes_sent);
		usage->changed = true;
	}
	LWLockRelease(usage->lock);
	return refusal == 0 ? USAGE_COUNTED : refusal;
}

/* After an attempt: what came back, and whether it failed (no answer, or not a 2xx). */
void
azure_ai_sim_usage_end(const char *service, const char *endpoint, bool failed,
					   int64 bytes_received, int64 input_tokens, int64 output_tokens)
{
	UsageEntry *entries[2];

	if (usage == NULL)
		return;
	LWLockAcquire(usage->lock, LW_EXCLUSIVE);
	entries[0] = usage_entry(service, "");
	entries[1] = usage_entry(service, endpoint);
	for (int i = 0; i < lengthof(entries); i++)
	{
		usage_add(entries[i], FAILED, failed ? 1 : 0);
		usage_add(entries[i], BYTES_RECEIVED, bytes_received);
		usage_add(entries[i], INPUT_TOKENS, input_tokens);
		usage_add(entries[i], OUTPUT_TOKENS, output_tokens);
	}
	usage->changed = true;
	LWLockRelease(usage->lock);
}

/* ml_pipeline_internal.usage(): the ledger, an endpoint a row (whole services left out) */
PG_FUNCTION_INFO_V1(azure_ai_sim_usage);

Datum
azure_ai_sim_usage(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HASH_SEQ_STATUS scan;
	UsageEntry *entry;

	if (usage == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the usage ledger needs azure_ai_sim in shared_preload_libraries"),
				 errhint("Add azure_ai_sim to shared_preload_libraries and restart the server.")));
	InitMaterializedSRF(fcinfo, 0);
	LWLockAcquire(usage->lock, LW_SHARED);
	hash_seq_init(&scan, usage_entries);
	while ((entry = hash_seq_search(&scan)) != NULL)
	{
		Datum		values[3 + USAGE_COUNTS];
		bool		nulls[3 + USAGE_COUNTS] = {0};

		if (entry->key.endpoint[0] == '\0')
			continue;
		values[0] = DateADTGetDatum(entry->key.day);
		values[1] = CStringGetTextDatum(entry->key.service);
		values[2] = CStringGetTextDatum(entry->key.endpoint);
		for (int i = 0; i < USAGE_COUNTS; i++)
			values[3 + i] = Int64GetDatum(entry->counts[i]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(usage->lock);
	return (Datum) 0;
}
