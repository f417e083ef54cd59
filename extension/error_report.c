/*
 * Errors as a user needs them: a message, a DETAIL, a HINT, and no CONTEXT of ours but
 * the documented function's when it is SQL around an internal one.
 *
 * 1. Our PL/Python functions report errors through python/azure_ai_sim/pg.py
 *    (sql_error, sql_function). PL/Python puts the Python traceback first in the error's
 *    CONTEXT whenever there is one, and there always is (plpy_elog.c: its first frame is
 *    the function body's <module>): "Traceback (most recent call last):" and two lines a
 *    frame, before the line of PL/Python's own context callback ('PL/Python function
 *    "get_setting"') and those of the callers (SPI's "SQL statement ...", PL/pgSQL's
 *    "PL/pgSQL function f() line 3 at PERFORM"). Just before it raises, pg.py hands us
 *    the message that PL/Python is going to report (azure_ai_sim_our_error); when an
 *    error with exactly that message is emitted, the emit_log_hook below cuts the
 *    traceback off its CONTEXT, and PL/Python's line for our function (the message
 *    starts with its documented name), and keeps the callers' lines, for the client and
 *    the server log alike. An error of anybody else's PL/Python (another message) keeps its traceback.
 *    PL/Python's warnings (plpy.warning) carry no traceback: nothing to do there.
 *
 * 2. A role without EXECUTE on one of our functions gets PostgreSQL's 42501 "permission
 *    denied for function get_setting" before any code of ours runs; the hook adds a HINT
 *    that names the role to grant (the extension's manager role) and the GRANT EXECUTE
 *    that the extension's owner may run instead. The message names the function without
 *    its schema or arguments, and get_setting and set_setting are in three extensions (and
 *    perhaps in the user's own schemas), so the hint is given only when the denied
 *    function is known for certain: among the functions of that name that the user may
 *    not execute, the one that the failing statement's plan calls. PostgreSQL checks
 *    EXECUTE while the executor starts (ExecInitFunc), so an ExecutorStart_hook that
 *    fails remembers which functions the plan calls (its plan invalidation items: the
 *    hash of every user-defined function's syscache key; copying them needs no catalog
 *    access and cannot fail). A check made outside the executor (a PL/pgSQL expression
 *    such as v := f(x), a constant IMMUTABLE call folded by the planner) leaves no plan:
 *    then the name must designate one function the user may not execute. The same for
 *    "permission denied for schema aws_ml" (aws_ml's schemas are not open to PUBLIC):
 *    schema names are unique, so the hint names the role whenever the schema is one of
 *    our extensions'.
 *
 *    Only that hint reads the catalog in the hook, only for those two messages, both
 *    raised by aclcheck_error from a clean state (no lock or buffer held), and only
 *    inside a transaction not yet aborted: PostgresMain emits the error before it aborts
 *    the transaction, with interrupts held. The lookups use catalog caches and index
 *    scans that do not raise for a missing object; an error of theirs (I/O) would
 *    replace the permission error, and is not one of ours, so nothing recurses. A user's
 *    EXCEPTION block that catches the error sees no hint: nothing is emitted then.
 *
 * emit_log_hook only runs for a message that goes to the server log too (errors do,
 * unless a superuser sets log_min_messages above error). The hooks are installed by
 * _PG_init (log_filter.c) or, in a session that did not load the library before, by
 * pg.py when our Python first runs in it (through ctypes, which loads the library
 * without running _PG_init). So the traceback always goes, but the permission hint,
 * whose error may come before any code of ours ran, needs shared_preload_libraries =
 * 'azure_ai_sim' (or session_preload_libraries).
 *
 * PostgreSQL 16 replaced pg_proc_aclcheck and pg_namespace_aclcheck with object_aclcheck;
 * everything else used here is the same in 15, 16 and 17.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/parallel.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_proc.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/plannodes.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/catcache.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/resowner.h"
#include "utils/syscache.h"

#define TRACEBACK_HEADER "Traceback (most recent call last):"
#define PLPYTHON_LINE "PL/Python function \""

/* Plain C, no fmgr: pg.py calls them through ctypes (backend.c says why PGDLLEXPORT) */
extern PGDLLEXPORT void azure_ai_sim_error_report_init(void);
extern PGDLLEXPORT void azure_ai_sim_our_error(const char *message);

/* the roles that the extensions create for their privileged functions */
static const struct
{
	const char *extension;
	const char *role;
}			manager_roles[] =
{
	{"azure_ai", "azure_ai_settings_manager"},
	{"azure_local_ai", "azure_local_ai_setting_manager"},
	{"aws_ml", "aws_ml"},
};

static bool hooks_installed = false;
static emit_log_hook_type prev_emit_log_hook = NULL;
static ExecutorStart_hook_type prev_ExecutorStart = NULL;

/*
 * The message of our error that PL/Python is about to report (in the server's
 * encoding), or NULL. malloc'd: it is set from Python through ctypes, where a palloc
 * that failed would throw through Python's frames.
 */
static char *our_message = NULL;

/* What a plan that failed to start calls: its functions' PROCOID hash values. */
#define MAX_PLAN_FUNCTIONS 64
static struct
{
	bool		valid;			/* set by a failed ExecutorStart, until an error
								 * is emitted or the next ExecutorStart */
	bool		overflow;		/* more functions than fit: do not filter */
	Oid			user;			/* whose privileges the executor checked */
	int			count;
	uint32		hashes[MAX_PLAN_FUNCTIONS];
}			failed_plan;

/*
 * context without the Python traceback at its start and PL/Python's line for our
 * function, whose name the message already starts with; the callers' lines stay
 */
static char *
without_our_lines(char *context)
{
	char	   *rest;

	if (context == NULL ||
		strncmp(context, TRACEBACK_HEADER, strlen(TRACEBACK_HEADER)) != 0)
		return context;
	/* the frames' lines, each indented by two spaces or more */
	rest = context + strlen(TRACEBACK_HEADER);
	while (rest[0] == '\n' && rest[1] == ' ' && rest[2] == ' ')
	{
		rest = strchr(rest + 1, '\n');
		if (rest == NULL)
			return NULL;		/* nothing but the traceback */
	}
	if (rest[0] == '\0')
		return NULL;
	if (rest[0] != '\n')
		return context;			/* not PL/Python's traceback after all */
	rest++;
	if (strncmp(rest, PLPYTHON_LINE, strlen(PLPYTHON_LINE)) == 0)
	{
		rest = strchr(rest, '\n');
		if (rest == NULL)
			return NULL;
		rest++;
	}
	return pstrdup(rest);
}

/* the object name in a message made from a format with one %s, or NULL */
static char *
name_in_message(ErrorData *edata)
{
	const char *format = dgettext(edata->domain, edata->message_id);
	const char *hole = strstr(format, "%s");
	const char *suffix;
	size_t		prefix_len,
				suffix_len,
				len;

	if (hole == NULL || edata->message == NULL)
		return NULL;
	suffix = hole + 2;
	prefix_len = hole - format;
	suffix_len = strlen(suffix);
	len = strlen(edata->message);
	if (strchr(suffix, '%') != NULL || len <= prefix_len + suffix_len ||
		strncmp(edata->message, format, prefix_len) != 0 ||
		strcmp(edata->message + len - suffix_len, suffix) != 0)
		return NULL;
	return pnstrdup(edata->message + prefix_len, len - prefix_len - suffix_len);
}

/* a function's (ProcedureRelationId) or a schema's (NamespaceRelationId) */
static AclResult
aclcheck(Oid classid, Oid object, Oid role, AclMode mode)
{
#if PG_VERSION_NUM >= 160000
	return object_aclcheck(classid, object, role, mode);
#else
	if (classid == ProcedureRelationId)
		return pg_proc_aclcheck(object, role, mode);
	return pg_namespace_aclcheck(object, role, mode);
#endif
}

/*
 * The manager role of the extension that the object belongs to, if it is one of ours:
 * its name and OID (InvalidOid if it does not exist), the extension's name and owner.
 */
static const char *
manager_role(Oid classid, Oid object, Oid *role, char **extension, Oid *owner)
{
	Oid			extension_oid = getExtensionOfObject(classid, object);
	const char *result = NULL;
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;

	if (!OidIsValid(extension_oid))
		return NULL;
	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(extension_oid));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		Form_pg_extension form = (Form_pg_extension) GETSTRUCT(tuple);

		for (int i = 0; i < lengthof(manager_roles); i++)
		{
			if (strcmp(NameStr(form->extname), manager_roles[i].extension) == 0)
			{
				result = manager_roles[i].role;
				*extension = pstrdup(NameStr(form->extname));
				*owner = form->extowner;
				*role = get_role_oid(result, true);
				break;
			}
		}
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return result;
}

/* schema.name(argument types), as GRANT ... ON FUNCTION takes it */
static char *
function_signature(Form_pg_proc proc)
{
	StringInfoData buf;
	char	   *schema = get_namespace_name(proc->pronamespace);

	if (schema == NULL)
		return NULL;
	initStringInfo(&buf);
	appendStringInfo(&buf, "%s(",
					 quote_qualified_identifier(schema, NameStr(proc->proname)));
	for (int i = 0; i < proc->pronargs; i++)
		appendStringInfo(&buf, "%s%s", i > 0 ? ", " : "",
						 format_type_be(proc->proargtypes.values[i]));
	appendStringInfoChar(&buf, ')');
	return buf.data;
}

/*
 * The hint for a user who may not execute the function: the manager role, if it may
 * execute the function, and the GRANT EXECUTE that the extension's owner may give (if it
 * has the grant option, as from azure_ai 0.1.1, azure_local_ai 0.1.2, aws_ml 2.0.1 on, or
 * is a superuser), else the function's owner.
 */
static char *
function_hint(HeapTuple tuple, Oid user)
{
	Form_pg_proc proc = (Form_pg_proc) GETSTRUCT(tuple);
	Oid			role;
	Oid			owner;
	char	   *extension;
	const char *role_name = manager_role(ProcedureRelationId, proc->oid, &role,
										 &extension, &owner);
	char	   *user_name;
	char	   *owner_name;
	char	   *signature;
	char	   *grantor;
	char	   *grant;

	if (role_name == NULL || (user_name = GetUserNameFromId(user, true)) == NULL ||
		(signature = function_signature(proc)) == NULL)
		return NULL;
	if (aclcheck(ProcedureRelationId, proc->oid, owner,
				 ACL_GRANT_OPTION_FOR(ACL_EXECUTE)) == ACLCHECK_OK)
	{
		if ((owner_name = GetUserNameFromId(owner, true)) == NULL)
			return NULL;
		grantor = psprintf("the owner of extension %s, %s", extension, owner_name);
	}
	else
	{
		if ((owner_name = GetUserNameFromId(proc->proowner, true)) == NULL)
			return NULL;
		grantor = psprintf("its owner, %s", owner_name);
	}
	grant = psprintf("GRANT EXECUTE ON FUNCTION %s TO %s; (%s)",
					 signature, quote_identifier(user_name), grantor);
	if (!OidIsValid(role) ||
		aclcheck(ProcedureRelationId, proc->oid, role, ACL_EXECUTE) != ACLCHECK_OK)
		return psprintf("Grant EXECUTE on the function: %s.", grant);
	return psprintf("Grant the role: GRANT %s TO %s; (a superuser), or EXECUTE on the function: %s.",
					quote_identifier(role_name), quote_identifier(user_name), grant);
}

static bool
in_failed_plan(Oid function)
{
	uint32		hash = GetSysCacheHashValue1(PROCOID, ObjectIdGetDatum(function));

	for (int i = 0; i < failed_plan.count; i++)
		if (failed_plan.hashes[i] == hash)
			return true;
	return false;
}

/* "permission denied for function <name>": the denied function, if certain */
static char *
denied_function_hint(ErrorData *edata)
{
	char	   *name = name_in_message(edata);
	bool		filter = failed_plan.valid && !failed_plan.overflow;
	Oid			user = failed_plan.valid ? failed_plan.user : GetUserId();
	CatCList   *candidates;
	HeapTuple	denied = NULL;
	int			count = 0;
	char	   *hint = NULL;

	if (name == NULL)
		return NULL;
	candidates = SearchSysCacheList1(PROCNAMEARGSNSP, CStringGetDatum(name));
	for (int i = 0; i < candidates->n_members; i++)
	{
		HeapTuple	tuple = &candidates->members[i]->tuple;
		Oid			function = ((Form_pg_proc) GETSTRUCT(tuple))->oid;

		if ((filter && !in_failed_plan(function)) ||
			aclcheck(ProcedureRelationId, function, user, ACL_EXECUTE) == ACLCHECK_OK)
			continue;
		denied = tuple;
		count++;
	}
	if (count == 1)
		hint = function_hint(denied, user);
	ReleaseSysCacheList(candidates);
	return hint;
}

/* "permission denied for schema <name>": the role, if the schema is one of ours */
static char *
denied_schema_hint(ErrorData *edata)
{
	char	   *name = name_in_message(edata);
	Oid			schema;
	Oid			role;
	Oid			owner;
	char	   *extension;
	const char *role_name;
	char	   *user_name;

	if (name == NULL || !OidIsValid(schema = get_namespace_oid(name, true)))
		return NULL;
	role_name = manager_role(NamespaceRelationId, schema, &role, &extension, &owner);
	if (role_name == NULL || !OidIsValid(role) ||
		aclcheck(NamespaceRelationId, schema, role, ACL_USAGE) != ACLCHECK_OK ||
		(user_name = GetUserNameFromId(GetUserId(), true)) == NULL)
		return NULL;
	return psprintf("Grant the role: GRANT %s TO %s; (a superuser).",
					quote_identifier(role_name), quote_identifier(user_name));
}

/* whether the catalog may be read while this error is emitted: see the top */
static bool
may_read_catalog(ErrorData *edata)
{
	return edata->elevel == ERROR && IsTransactionState() &&
		!IsAbortedTransactionBlockState() && CurrentResourceOwner != NULL &&
		CritSectionCount == 0 && !IsParallelWorker();
}

/* emit_log_hook: runs in edata's memory context (ErrorContext) */
static void
report_error(ErrorData *edata)
{
	if (our_message != NULL && edata->message != NULL &&
		strcmp(edata->message, our_message) == 0)
	{
		free(our_message);
		our_message = NULL;
		edata->context = without_our_lines(edata->context);
	}
	else if (edata->sqlerrcode == ERRCODE_INSUFFICIENT_PRIVILEGE &&
			 edata->hint == NULL && edata->message_id != NULL &&
			 may_read_catalog(edata))
	{
		if (strcmp(edata->message_id, "permission denied for function %s") == 0)
			edata->hint = denied_function_hint(edata);
		else if (strcmp(edata->message_id, "permission denied for schema %s") == 0)
			edata->hint = denied_schema_hint(edata);
	}
	if (edata->elevel >= ERROR)
		failed_plan.valid = false;

	if (prev_emit_log_hook)
		(*prev_emit_log_hook) (edata);
}

/* ExecutorStart_hook: when starting the plan fails, remembers what it calls */
static void
start_executor(QueryDesc *queryDesc, int eflags)
{
	failed_plan.valid = false;
	PG_TRY();
	{
		if (prev_ExecutorStart)
			(*prev_ExecutorStart) (queryDesc, eflags);
		else
			standard_ExecutorStart(queryDesc, eflags);
	}
	PG_CATCH();
	{
		/* the innermost failed start counts, if they nest */
		if (!failed_plan.valid && queryDesc->plannedstmt != NULL)
		{
			ListCell   *lc;

			failed_plan.count = 0;
			failed_plan.overflow = false;
			failed_plan.user = GetUserId();
			foreach(lc, queryDesc->plannedstmt->invalItems)
			{
				PlanInvalItem *item = (PlanInvalItem *) lfirst(lc);

				if (item->cacheId != PROCOID)
					continue;
				if (failed_plan.count == MAX_PLAN_FUNCTIONS)
				{
					failed_plan.overflow = true;
					break;
				}
				failed_plan.hashes[failed_plan.count++] = item->hashValue;
			}
			failed_plan.valid = true;
		}
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/* Installs the hooks, once: from _PG_init, or through ctypes (see the top). */
void
azure_ai_sim_error_report_init(void)
{
	if (hooks_installed)
		return;
	hooks_installed = true;
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = report_error;
	prev_ExecutorStart = ExecutorStart_hook;
	ExecutorStart_hook = start_executor;
}

/*
 * Called through ctypes by pg.py (after azure_ai_sim_error_report_init) just before
 * PL/Python reports an error of ours whose message (in the server's encoding) is this:
 * its traceback goes. Nothing here may throw.
 */
void
azure_ai_sim_our_error(const char *message)
{
	free(our_message);
	our_message = message != NULL ? strdup(message) : NULL;
}
