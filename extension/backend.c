/*
 * Backend state that the Python package reads through ctypes (python/azure_ai_sim/pg.py).
 *
 * What depends on PostgreSQL's headers (enum values, struct layouts) is compiled here,
 * against the running major's headers, rather than copied into Python, where a new
 * major would silently change its meaning.
 */
#include "postgres.h"

#include "catalog/pg_authid_d.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

/*
 * Plain C, no fmgr: ctypes calls it directly. PGDLLEXPORT because from PostgreSQL 16
 * on, PGXS builds modules with -fvisibility=hidden.
 */
extern PGDLLEXPORT int64 azure_ai_sim_statement_timeout_left(void);
extern PGDLLEXPORT bool azure_ai_sim_caller_reads_server_files(void);

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

/*
 * Whether the role that called our SECURITY DEFINER function (the outer user: the
 * session's role after SET ROLE, not the function's owner) may read any file of the
 * server, as COPY FROM a file allows: a superuser or a member of pg_read_server_files.
 */
bool
azure_ai_sim_caller_reads_server_files(void)
{
	Oid			caller = GetOuterUserId();

	return superuser_arg(caller) ||
		has_privs_of_role(caller, ROLE_PG_READ_SERVER_FILES);
}
