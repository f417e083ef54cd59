/*
 * Keeps set_setting calls, whose arguments may be keys, out of the server log and
 * out of pg_stat_activity.
 *
 * The functions themselves SET log_min_error_statement = panic, but that only acts once
 * they run. A call that fails before (permission denied, no function with these
 * arguments, a syntax error), and the statement logging of log_statement and
 * log_min_duration_statement, log the statement whatever the function says; and
 * pg_stat_activity shows it while it runs and after it, until the next statement.
 *
 * Statements are recognized by their text: a case-insensitive "set_setting" anywhere in
 * it. That is enough, because a key can only be in the statement's text if the call
 * that takes it is in that text too (through EXECUTE of an SQL-level prepared statement,
 * or a wrapper function, the key is in a statement that names neither). A false match
 * only hides an innocent statement.
 *
 * The hooks act only in sessions that loaded the library before the statement: set
 * shared_preload_libraries (or session_preload_libraries) = 'azure_ai_sim'.
 *
 * post_parse_analyze_hook, emit_log_hook, pgstat_report_activity, debug_query_string
 * and the ErrorData and Query fields used here are the same in PostgreSQL 15, 16 and 17;
 * _PG_init's declaration moved into fmgr.h (16), and a DETAIL we match got a capital.
 */
#include "postgres.h"

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "parser/analyze.h"
#include "tcop/tcopprot.h"
#include "utils/backend_status.h"

#define HIDDEN "[a set_setting call, hidden by azure_ai_sim]"

#if PG_VERSION_NUM < 160000
void		_PG_init(void);		/* fmgr.h declares it from 16 on */
#endif
extern PGDLLEXPORT void azure_ai_sim_error_report_init(void);	/* error_report.c */
extern void azure_ai_sim_batch_init(void);	/* batch.c */
extern void azure_ai_sim_usage_init(void);	/* usage.c */

static emit_log_hook_type prev_emit_log_hook = NULL;
static post_parse_analyze_hook_type prev_post_parse_analyze_hook = NULL;

/*
 * Whether len bytes of text mention set_setting, in any case. Underscores are rarer in
 * SQL than letters, so memchr (vectorized by libc) finds the candidates.
 */
static bool
mentions_set_setting(const char *text, size_t len)
{
	const char *end = text + len;
	const char *p;

	if (len < 11)
		return false;
	p = text + 3;				/* "set" comes before the underscore */
	while (p < end && (p = memchr(p, '_', end - p)) != NULL)
	{
		if (end - p >= 8 && (p[1] | 0x20) == 's' &&
			pg_strncasecmp(p - 3, "set_setting", 11) == 0)
			return true;
		p++;
	}
	return false;
}

static bool
statement_mentions_set_setting(void)
{
	return debug_query_string != NULL &&
		mentions_set_setting(debug_query_string, strlen(debug_query_string));
}

/* What pg_stat_activity shows of this session's statement, until its next one. */
static void
hide_activity(void)
{
	pgstat_report_activity(STATE_RUNNING, HIDDEN);
}

/* text with its first copy of the statement replaced, in the current memory context */
static char *
without_statement(char *text)
{
	char	   *found;

	if (text == NULL || debug_query_string[0] == '\0' ||
		(found = strstr(text, debug_query_string)) == NULL)
		return text;
	return psprintf("%.*s%s%s", (int) (found - text), text, HIDDEN,
					found + strlen(debug_query_string));
}

/*
 * A syntax error names the token where it stopped ('... at or near "<token>"'); when
 * that token is a string, it may be the key (a comma forgotten between key and value).
 * This one rewrites what the client gets too: it keeps the error's position.
 */
static char *
without_quoted_token(char *message)
{
	const char *marker = " at or near \"";
	char	   *token;

	if (message == NULL || (token = strstr(message, marker)) == NULL)
		return message;
	token += strlen(marker);
	if (strpbrk(token, "'$") == NULL)
		return message;
	return psprintf("%.*s[a string, hidden by azure_ai_sim]\"",
					(int) (token - message), message);
}

/*
 * emit_log_hook: runs for every message that goes to the server log, before it is
 * written, in the message's own memory context; elog.c pfrees what the fields point to.
 */
static void
filter_log(ErrorData *edata)
{
	if (statement_mentions_set_setting())
	{
		/* no STATEMENT: line */
		edata->hide_stmt = true;
		/* "statement: %s", "duration: ... statement: %s", "execute <name>: %s" */
		edata->message = without_statement(edata->message);
		/*
		 * the extended protocol's bound values (log_parameter_max_length):
		 * "parameters: ..." in 15, "Parameters: ..." in 17
		 */
		if (edata->detail && pg_strncasecmp(edata->detail, "parameters: ", 12) == 0)
			edata->detail = pstrdup(HIDDEN);
		if (edata->detail_log && pg_strncasecmp(edata->detail_log, "parameters: ", 12) == 0)
			edata->detail_log = pstrdup(HIDDEN);
		/*
		 * The same values after an error (log_parameter_max_length_on_error):
		 * "unnamed portal with parameters: ...", "unnamed portal parameter $2 = ..."
		 */
		if (edata->context && strstr(edata->context, " parameter") != NULL)
			edata->context = pstrdup(HIDDEN);
		if (edata->sqlerrcode == ERRCODE_SYNTAX_ERROR)
			edata->message = without_quoted_token(edata->message);

		/*
		 * A statement that fails before parse analysis ends, never reaching the hook
		 * below, is still on show in pg_stat_activity.
		 */
		if (edata->elevel == ERROR)
			hide_activity();
	}

	if (prev_emit_log_hook)
		(*prev_emit_log_hook) (edata);
}

/*
 * post_parse_analyze_hook: hides the statement from pg_stat_activity once it parsed
 * (between the statement's arrival and here, pg_stat_activity shows it: PostgreSQL has
 * no earlier hook). Only the client's own statements count, not the queries that
 * functions run; the first statement of a client's string looks at all of it, since
 * pg_stat_activity shows all of it, and later ones at their own part: a long string of
 * statements is read about twice, not once a statement.
 */
static void
filter_activity(ParseState *pstate, Query *query, JumbleState *jstate)
{
	const char *text = pstate->p_sourcetext;

	if (text != NULL && text == debug_query_string)
	{
		const char *part = text;
		size_t		len;

		if (query->stmt_location > 0)
			part += query->stmt_location;
		len = query->stmt_location > 0 && query->stmt_len > 0 ?
			query->stmt_len : strlen(part);
		if (mentions_set_setting(part, len))
			hide_activity();
	}

	if (prev_post_parse_analyze_hook)
		(*prev_post_parse_analyze_hook) (pstate, query, jstate);
}

/*
 * The library's _PG_init: this file's hooks, error_report.c's, batch.c's and usage.c's
 * (shared memory: only at server start). Runs when the library loads: at server start
 * with shared_preload_libraries, otherwise in each session that loads it. error_report.c's emit_log_hook, installed last, runs first: it sees the
 * messages as PostgreSQL made them.
 */
void
_PG_init(void)
{
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = filter_log;
	prev_post_parse_analyze_hook = post_parse_analyze_hook;
	post_parse_analyze_hook = filter_activity;
	azure_ai_sim_error_report_init();
	azure_ai_sim_batch_init();
	azure_ai_sim_usage_init();
}
