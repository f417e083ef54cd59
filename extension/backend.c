/*
 * Backend state that the Python package reads through ctypes (python/azure_ai_sim/pg.py).
 *
 * What depends on PostgreSQL's headers (enum values, struct layouts) is compiled here,
 * against the running major's headers, rather than copied into Python, where a new
 * major would silently change its meaning.
 */
#include "postgres.h"

#include "utils/timeout.h"
#include "utils/timestamp.h"

/*
 * Plain C, no fmgr: ctypes calls it directly. PGDLLEXPORT because from PostgreSQL 16
 * on, PGXS builds modules with -fvisibility=hidden.
 */
extern PGDLLEXPORT int64 azure_ai_sim_statement_timeout_left(void);

/*
 * Microseconds until the statement_timeout timer of this statement fires (0 once it is
 * due), or -1 when none is armed (statement_timeout = 0, or outside a statement).
 * TimeoutId is an enum that majors extend (17 inserted TRANSACTION_TIMEOUT in it).
 */
int64
azure_ai_sim_statement_timeout_left(void)
{
	TimestampTz now;

	if (!get_timeout_active(STATEMENT_TIMEOUT))
		return -1;
	now = GetCurrentTimestamp();
	return Max(get_timeout_finish_time(STATEMENT_TIMEOUT) - now, 0);
}
