/*
 * Batch mode, as Aurora machine learning has it: a query that calls one of our per-row
 * functions once per row gets its rows gathered into batches, and the function's batch
 * form is called once per batch, with one array per argument; each row gets the result
 * its own call would have given.
 *
 * Planning. A planner_hook runs after the standard planner, so Aurora's LANGUAGE SQL
 * wrappers are inlined by then. It walks down the plan's spine (through Limit, Sort,
 * Unique, LockRows, Material, SetOp and ModifyTable, whose rows come from below) to the
 * node that computes the SELECT list (or the new values of INSERT ... SELECT, UPDATE ...
 * SET, CREATE TABLE AS), and on below an aggregate, a window function or a subquery
 * (which read the rows below in order) and into each branch of a UNION; for every CTE
 * and subquery plan, the same. When that node's
 * target list calls a batchable function on every row (not under CASE, AND/OR, the later
 * arguments of COALESCE or anything else that evaluates its parts conditionally), a
 * CustomScan "Batch" is put on top of it:
 *
 *   - the node below keeps its target list, except that each entry with batched calls is
 *     replaced by a NULL placeholder, and the entry's leaves (Vars, Aggrefs, WindowFuncs,
 *     Params: the values that only the node below can compute) are added as columns;
 *   - the Batch node reads a batch of rows (see rows_per_batch), evaluates the calls'
 *     arguments over those leaf columns, calls each batch form once (a form in parts,
 *     once per PART_ROWS rows as it evaluates them), and then returns the rows one by
 *     one, evaluating the entries with the calls' results in place of the calls: the
 *     same expressions, the same conditions, the same order of rows.
 *
 * When a batch form fails on a row, it returns the results of the rows before it, and
 * the node calls it for each later row alone when that row is returned: a row a LIMIT
 * never reaches must not fail the query, and the failing row fails when its own call
 * would have (the package keeps its error for that call instead of asking again).
 *
 * An entry that holds something whose evaluation cannot move above the node (a
 * subquery, nextval, a PARAM_EXEC whose value may change between rows) keeps its
 * per-row calls; a plan shape not listed above is left as it was. WHERE and HAVING keep
 * their per-row calls (README). A batchable function is one of our extensions' per-row
 * functions for which its extension's internal schema has <name>_batch taking an array
 * of each argument (aws_sagemaker.invoke_endpoint's VARIADIC "any": the text fields of
 * each row's CSV record and their counts) and returning an array of its result type (or
 * of a composite with its OUT columns, or with one column of its result type, or of
 * text that the result type's input function reads).
 *
 * The node checks EXECUTE on each per-row function it replaces, as the executor would
 * have. EXPLAIN ANALYZE prints Aurora's "Batch Processing" line. Scrollable cursors are
 * left alone (the node does not run backwards).
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/htup_details.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/explain.h"
#include "executor/executor.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/extensible.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/planmain.h"
#include "optimizer/planner.h"
#include "portability/instr_time.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "azure_ai_sim.h"

static bool enable_batch_mode = true;
static int	batch_size = 0;
static int	max_parallel_requests = 10;
static bool exact_batches = true;	/* read by the batch forms, in Python */

static planner_hook_type prev_planner = NULL;

/* Our schemas with per-row functions, and the internal schema of their batch forms. */
static const struct
{
	const char *schema;
	const char *internal;
}			batch_schemas[] = {
	{"azure_ml", "azure_ai_internal"},
	{"azure_ai_internal", "azure_ai_internal"},
	{"azure_local_ai_internal", "azure_local_ai_internal"},
	{"aws_comprehend", "aws_ml_internal"},
	{"aws_sagemaker", "aws_ml_internal"},
	{"aws_bedrock", "aws_ml_internal"},
};

/* --- which functions have a batch form: looked up once per backend, per function ---- */

typedef struct BatchFormEntry
{
	Oid			function;		/* hash key */
	Oid			batch;			/* InvalidOid: none */
} BatchFormEntry;

static HTAB *batch_forms = NULL;

static void
forget_batch_forms(Datum arg, int cacheid, uint32 hashvalue)
{
	if (batch_forms != NULL)
	{
		hash_destroy(batch_forms);
		batch_forms = NULL;
	}
}

static const char *
internal_schema_of(Oid namespace)
{
	char	   *name = get_namespace_name(namespace);

	if (name == NULL)
		return NULL;
	for (int i = 0; i < lengthof(batch_schemas); i++)
		if (strcmp(name, batch_schemas[i].schema) == 0)
			return batch_schemas[i].internal;
	return NULL;
}

/*
 * A batch form may come in parts: it takes three more arguments, (batch bigint,
 * batch_rows integer, last boolean), and the node calls it for each PART_ROWS rows of a
 * batch as it evaluates their arguments; only the call with last true answers, for all
 * the rows of the batch. Its requests for the first rows are on their way while the
 * node evaluates the arguments of the later ones. batch is unique per batch in the
 * backend; batch_rows is the rows of the batch, to size requests by.
 */
#define PART_ARGS 3
#define PART_ROWS 1000

static int64 batches_begun = 0;

/*
 * The batch form of a function of ours: <internal schema>.<name>_batch of the same
 * extension, taking an array of each argument (and, in parts, PART_ARGS more) and
 * returning an array; or InvalidOid.
 */
static Oid
find_batch_form(Oid function)
{
	HeapTuple	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(function));
	Form_pg_proc proc;
	const char *internal;
	Oid			argtypes[FUNC_MAX_ARGS + PART_ARGS];
	int			nargs;
	Oid			batch = InvalidOid;

	if (!HeapTupleIsValid(tuple))
		return InvalidOid;
	proc = (Form_pg_proc) GETSTRUCT(tuple);
	internal = internal_schema_of(proc->pronamespace);
	if (internal != NULL && !proc->proretset)
	{
		if (proc->provariadic == ANYOID)
		{
			/* the SageMaker shim: (endpoint, max rows, fields, field counts) */
			argtypes[0] = VARCHARARRAYOID;
			argtypes[1] = INT4ARRAYOID;
			argtypes[2] = TEXTARRAYOID;
			argtypes[3] = INT4ARRAYOID;
			nargs = 4;
		}
		else
		{
			nargs = proc->pronargs;
			for (int i = 0; i < nargs; i++)
				argtypes[i] = get_array_type(proc->proargtypes.values[i]);
			/* the form in parts, if there is one: (..., batch, batch_rows, last) */
			argtypes[nargs] = INT8OID;
			argtypes[nargs + 1] = INT4OID;
			argtypes[nargs + 2] = BOOLOID;
			batch = function_beside(function, internal,
									psprintf("%s_batch", NameStr(proc->proname)),
									argtypes, nargs + PART_ARGS);
		}
		if (!OidIsValid(batch))
			batch = function_beside(function, internal,
									psprintf("%s_batch", NameStr(proc->proname)),
									argtypes, nargs);
	}
	ReleaseSysCache(tuple);
	if (OidIsValid(batch) && !OidIsValid(get_element_type(get_func_rettype(batch))))
		batch = InvalidOid;
	return batch;
}

/* The batch form of a function, or InvalidOid; cached. */
static Oid
batch_form_of(Oid function)
{
	BatchFormEntry *entry;
	bool		found;

	if (function < FirstNormalObjectId)
		return InvalidOid;		/* a built-in function */
	if (batch_forms == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(BatchFormEntry);
		batch_forms = hash_create("azure_ai_sim batch forms", 64, &ctl,
								  HASH_ELEM | HASH_BLOBS);
	}
	entry = hash_search(batch_forms, &function, HASH_ENTER, &found);
	if (!found)
	{
		entry->batch = InvalidOid;	/* if the lookup fails, the entry is still valid */
		entry->batch = find_batch_form(function);
	}
	return entry->batch;
}

static bool
is_batchable(Node *node)
{
	return IsA(node, FuncExpr) && !((FuncExpr *) node)->funcretset &&
		OidIsValid(batch_form_of(((FuncExpr *) node)->funcid));
}

static bool
contains_batchable_walker(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (is_batchable(node))
		return true;
	return expression_tree_walker(node, contains_batchable_walker, context);
}

static bool
contains_batchable(Node *node)
{
	return contains_batchable_walker(node, NULL);
}

/* --- planning ------------------------------------------------------------------------ */

typedef struct Split
{
	List	   *calls;			/* the batched FuncExprs, as written (deduplicated) */
	List	   *leaves;			/* what the node below computes for us (deduplicated) */
	int			below;			/* columns of the node below before the leaves */
	int			found;			/* calls found, the same one more than once too */
} Split;

/* the position of node in list, by equal(); -1 if absent */
static int
list_index_of(List *list, Node *node)
{
	int			i = 0;
	ListCell   *lc;

	foreach(lc, list)
	{
		if (equal(lfirst(lc), node))
			return i;
		i++;
	}
	return -1;
}

/*
 * The batchable calls of an expression that run on every row: a batchable call whose
 * arguments hold no other; below a node that evaluates all its arguments whenever it is
 * evaluated. Anything else is looked into no further.
 */
static bool
find_calls(Node *node, void *context)
{
	Split	   *split = context;

	if (node == NULL)
		return false;
	if (is_batchable(node) && !contains_batchable((Node *) ((FuncExpr *) node)->args))
	{
		if (list_index_of(split->calls, node) < 0)
			split->calls = lappend(split->calls, node);
		split->found++;
		return false;
	}
	switch (nodeTag(node))
	{
		case T_List:
		case T_FuncExpr:
		case T_OpExpr:
		case T_DistinctExpr:
		case T_NullIfExpr:
		case T_ScalarArrayOpExpr:
		case T_FieldSelect:
		case T_FieldStore:
		case T_RelabelType:
		case T_CoerceViaIO:
		case T_ConvertRowtypeExpr:
		case T_CollateExpr:
		case T_RowExpr:
		case T_ArrayExpr:
		case T_MinMaxExpr:
		case T_NullTest:
		case T_BooleanTest:
		case T_CoerceToDomain:
			return expression_tree_walker(node, find_calls, context);
		case T_CoalesceExpr:
			return find_calls(linitial(((CoalesceExpr *) node)->args), context);
		default:
			return false;
	}
}

/* whether an expression holds something that must be evaluated where it is */
static bool
must_stay_walker(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, SubPlan) || IsA(node, AlternativeSubPlan) ||
		IsA(node, NextValueExpr) || IsA(node, CurrentOfExpr) ||
		(IsA(node, Param) && ((Param *) node)->paramkind == PARAM_EXEC))
		return true;
	if (IsA(node, Aggref) || IsA(node, WindowFunc) || IsA(node, GroupingFunc))
		return false;			/* leaves: their insides are the node below's */
	return expression_tree_walker(node, must_stay_walker, context);
}

/* what only the node below computes: it gives us their values as columns */
static bool
is_leaf(Node *node)
{
	return IsA(node, Var) || IsA(node, Param) || IsA(node, Aggref) ||
		IsA(node, WindowFunc) || IsA(node, GroupingFunc);
}

static bool
collect_leaves(Node *node, void *context)
{
	Split	   *split = context;

	if (node == NULL)
		return false;
	if (is_leaf(node))
	{
		if (list_index_of(split->leaves, node) < 0)
			split->leaves = lappend(split->leaves, node);
		return false;
	}
	return expression_tree_walker(node, collect_leaves, context);
}

static Var *
scan_column(Node *expr, int column)
{
	return makeVar(INDEX_VAR, column, exprType(expr), exprTypmod(expr),
				   exprCollation(expr), 0);
}

/*
 * An expression of the node below, rewritten for the Batch node: leaves become columns
 * of the scan tuple (pushed to the node below), batched calls the columns of results.
 */
static Node *
lift_mutator(Node *node, Split *split)
{
	int			index;

	if (node == NULL)
		return NULL;
	if ((index = list_index_of(split->calls, node)) >= 0)
		return (Node *) scan_column(node, split->below + list_length(split->leaves) +
									index + 1);
	if (is_leaf(node))
		return (Node *) scan_column(node, split->below +
									list_index_of(split->leaves, node) + 1);
	return expression_tree_mutator(node, lift_mutator, split);
}

static CustomScanMethods batch_scan_methods;	/* below */
static int	batch_nodes_added;

/*
 * The Batch node on top of plan, or plan as it was. custom_private: the calls (their
 * argument expressions lifted), and their batch forms' OIDs.
 */
static Plan *
add_batch_node(PlannedStmt *stmt, Plan *plan)
{
	Split		split = {NIL, NIL, list_length(plan->targetlist), 0};
	List	   *lifted = NIL;
	List	   *below = NIL;
	List	   *batch_oids = NIL;
	List	   *scan_tlist = NIL;
	CustomScan *batch;
	List	   *batched = NIL;	/* per entry: whether it has calls */
	ListCell   *lc;
	int			column = 0;
	int			found_before;

	/* first the calls, and the leaves of the entries that have them */
	foreach(lc, plan->targetlist)
	{
		Node	   *expr = (Node *) lfirst_node(TargetEntry, lc)->expr;

		found_before = split.found;
		if (!must_stay_walker(expr, NULL))
			find_calls(expr, &split);
		batched = lappend_int(batched, split.found > found_before);
		if (llast_int(batched))
			collect_leaves(expr, &split);
	}
	if (split.calls == NIL)
		return plan;

	foreach(lc, plan->targetlist)
	{
		TargetEntry *entry = lfirst_node(TargetEntry, lc);
		TargetEntry *kept = flatCopyTargetEntry(entry);
		TargetEntry *up = flatCopyTargetEntry(entry);

		column++;
		if (list_nth_int(batched, column - 1))
		{
			/* computed up here; a placeholder below */
			kept->expr = (Expr *) makeNullConst(exprType((Node *) entry->expr),
												exprTypmod((Node *) entry->expr),
												exprCollation((Node *) entry->expr));
			up->expr = (Expr *) lift_mutator((Node *) entry->expr, &split);
		}
		else
			up->expr = (Expr *) scan_column((Node *) entry->expr, column);
		below = lappend(below, kept);
		lifted = lappend(lifted, up);
	}

	/* the calls with their arguments lifted, and their batch forms */
	{
		List	   *calls = NIL;

		foreach(lc, split.calls)
		{
			FuncExpr   *call = copyObject(lfirst_node(FuncExpr, lc));
			Oid			batch_oid = batch_form_of(call->funcid);
			PlanInvalItem *item = makeNode(PlanInvalItem);

			call->args = (List *) lift_mutator((Node *) call->args, &split);
			calls = lappend(calls, call);
			batch_oids = lappend_oid(batch_oids, batch_oid);
			item->cacheId = PROCOID;
			item->hashValue = GetSysCacheHashValue1(PROCOID, ObjectIdGetDatum(batch_oid));
			stmt->invalItems = lappend(stmt->invalItems, item);
		}
		split.calls = calls;
	}

	/* the node below: its entries, then the leaves */
	foreach(lc, split.leaves)
		below = lappend(below, makeTargetEntry(lfirst(lc), list_length(below) + 1,
											   NULL, true));
	plan->targetlist = below;

	/*
	 * The scan tuple: the columns of the node below (the outer plan), then one per call,
	 * described by the call itself, so that EXPLAIN VERBOSE shows it.
	 */
	foreach(lc, below)
	{
		Expr	   *expr = lfirst_node(TargetEntry, lc)->expr;

		scan_tlist = lappend(scan_tlist,
							 makeTargetEntry((Expr *) makeVar(OUTER_VAR,
															  list_length(scan_tlist) + 1,
															  exprType((Node *) expr),
															  exprTypmod((Node *) expr),
															  exprCollation((Node *) expr), 0),
											 list_length(scan_tlist) + 1, NULL, false));
	}
	foreach(lc, split.calls)
		scan_tlist = lappend(scan_tlist,
							 makeTargetEntry(lfirst(lc), list_length(scan_tlist) + 1,
											 NULL, false));

	batch = makeNode(CustomScan);
	batch->scan.plan.targetlist = lifted;
	batch->scan.plan.lefttree = plan;	/* executed by this file, not ExecInitCustomScan */
	batch->scan.plan.startup_cost = plan->startup_cost;
	batch->scan.plan.total_cost = plan->total_cost;
	batch->scan.plan.plan_rows = plan->plan_rows;
	batch->scan.plan.plan_width = plan->plan_width;
	batch->scan.plan.parallel_aware = false;
	batch->scan.plan.parallel_safe = false;
	batch->scan.plan.plan_node_id = plan->plan_node_id;	/* renumbered below */
	batch->scan.plan.extParam = bms_copy(plan->extParam);
	batch->scan.plan.allParam = bms_copy(plan->allParam);
	batch->scan.scanrelid = 0;
	batch->flags = 0;
	batch->custom_plans = NIL;
	batch->custom_private = list_make2(split.calls, batch_oids);
	batch->custom_scan_tlist = scan_tlist;
	batch->custom_relids = NULL;
	batch->methods = &batch_scan_methods;
	batch_nodes_added++;
	return (Plan *) batch;
}

static Plan *batch_spine(PlannedStmt *stmt, Plan *plan);

/* the plan, under a Batch node if its target list has calls to batch */
static Plan *
batch_own(PlannedStmt *stmt, Plan *plan)
{
	if (is_projection_capable_plan(plan) && contains_batchable((Node *) plan->targetlist))
		return add_batch_node(stmt, plan);
	return plan;
}

static void
batch_each(PlannedStmt *stmt, List *plans)
{
	ListCell   *lc;

	foreach(lc, plans)
		lfirst(lc) = batch_spine(stmt, lfirst(lc));
}

static Plan *
batch_spine(PlannedStmt *stmt, Plan *plan)
{
	if (plan == NULL)
		return NULL;
	switch (nodeTag(plan))
	{
		case T_Limit:
		case T_Sort:
		case T_IncrementalSort:
		case T_Unique:
		case T_LockRows:
		case T_Material:
		case T_ModifyTable:
		case T_SetOp:
			plan->lefttree = batch_spine(stmt, plan->lefttree);
			return plan;
		case T_Agg:
		case T_Group:
		case T_WindowAgg:
			/* they read the rows below in order, as a Limit does */
			plan->lefttree = batch_spine(stmt, plan->lefttree);
			return batch_own(stmt, plan);
		case T_SubqueryScan:
			((SubqueryScan *) plan)->subplan =
				batch_spine(stmt, ((SubqueryScan *) plan)->subplan);
			return batch_own(stmt, plan);
		case T_Append:
			batch_each(stmt, ((Append *) plan)->appendplans);
			return plan;
		case T_MergeAppend:
			batch_each(stmt, ((MergeAppend *) plan)->mergeplans);
			return plan;
		case T_ProjectSet:
		case T_CustomScan:
			return plan;
		case T_Result:
			/* one row without a FROM: nothing to batch; PL/pgSQL's simple expressions
			 * must keep this plan shape */
			if (plan->lefttree == NULL)
				return plan;
			/* FALLTHROUGH */
		default:
			return batch_own(stmt, plan);
	}
}

/* plan_node_id must number the nodes from 0, as EXPLAIN and parallel query expect */
static void
renumber(Plan *plan, int *next)
{
	ListCell   *lc;

	if (plan == NULL)
		return;
	plan->plan_node_id = (*next)++;
	renumber(plan->lefttree, next);
	renumber(plan->righttree, next);
	if (IsA(plan, CustomScan))
		foreach(lc, ((CustomScan *) plan)->custom_plans)
			renumber(lfirst(lc), next);
	if (IsA(plan, Append))
		foreach(lc, ((Append *) plan)->appendplans)
			renumber(lfirst(lc), next);
	else if (IsA(plan, MergeAppend))
		foreach(lc, ((MergeAppend *) plan)->mergeplans)
			renumber(lfirst(lc), next);
	else if (IsA(plan, SubqueryScan))
		renumber(((SubqueryScan *) plan)->subplan, next);
	else if (IsA(plan, BitmapAnd))
		foreach(lc, ((BitmapAnd *) plan)->bitmapplans)
			renumber(lfirst(lc), next);
	else if (IsA(plan, BitmapOr))
		foreach(lc, ((BitmapOr *) plan)->bitmapplans)
			renumber(lfirst(lc), next);
}

static PlannedStmt *
batch_planner(Query *parse, const char *query_string, int cursorOptions,
			  ParamListInfo boundParams)
{
	PlannedStmt *stmt;
	ListCell   *lc;

	if (prev_planner)
		stmt = prev_planner(parse, query_string, cursorOptions, boundParams);
	else
		stmt = standard_planner(parse, query_string, cursorOptions, boundParams);
	if (!enable_batch_mode || (cursorOptions & CURSOR_OPT_SCROLL) ||
		stmt->commandType == CMD_UTILITY || stmt->parallelModeNeeded)
		return stmt;

	batch_nodes_added = 0;
	stmt->planTree = batch_spine(stmt, stmt->planTree);
	foreach(lc, stmt->subplans)
		lfirst(lc) = batch_spine(stmt, lfirst(lc));
	if (batch_nodes_added > 0)
	{
		int			next = 0;

		renumber(stmt->planTree, &next);
		foreach(lc, stmt->subplans)
			renumber(lfirst(lc), &next);
	}
	return stmt;
}

/* --- execution ----------------------------------------------------------------------- */

typedef struct BatchCall
{
	FuncExpr   *call;			/* its arguments over the scan tuple */
	List	   *args;			/* their ExprStates */
	Oid		   *argtypes;		/* their types, lengths and by-value flags */
	int16	   *arglens;
	bool	   *argbyvals;
	FmgrInfo	batch_form;	/* the batch form */
	bool		shim;			/* aws_sagemaker.invoke_endpoint: CSV fields per row */
	bool		parts;			/* the batch form comes in parts (PART_ARGS) */
	int64		batch_id;		/* in parts: the batch of the calls so far */
	int		   *called;			/* in parts: the rows of the calls so far */
	int			ncalled;
	bool		strict;
	Oid			element;		/* the element type of the batch form's result */
	int16		elemlen;
	bool		elembyval;
	char		elemalign;
	int			unwrap;			/* 0: the element is the result; 1: its only column;
								 * -1: a record of the function's OUT columns;
								 * 2: the result's text */
	FmgrInfo	input;			/* unwrap 2: the result type's input function */
	Oid			ioparam;
	MemoryContext scratch;		/* unwrap 2: what the input function leaves behind */
	int16		resultlen;
	bool		resultbyval;
	TupleDesc	record;			/* unwrap -1: the OUT columns, blessed */
	TupleDesc	element_desc;	/* unwrap -1: the element's columns */
	Datum	   *results;		/* per row of the batch */
	bool	   *nulls;
	bool	   *ready;			/* whether the row's result is there */
} BatchCall;

typedef struct BatchState
{
	CustomScanState css;
	List	   *calls;			/* BatchCall */
	int			below;			/* columns of the node below */
	int			rows_per_batch;
	MemoryContext context;		/* the rows and results of one batch */
	MemoryContext arguments;	/* the arguments of one call of a batch form */
	TupleTableSlot *row;		/* a row of the node below */
	MinimalTuple *rows;
	int			count;
	int			next;
	bool		done;
	/* for EXPLAIN ANALYZE, in rows and milliseconds */
	int64		batches;
	double		rows_total;
	double		rows_min;
	double		rows_max;
	double		time_total;
	double		time_min;
	double		time_max;
} BatchState;

static void
check_execute(Oid function)
{
	AclResult	result;

#if PG_VERSION_NUM >= 160000
	result = object_aclcheck(ProcedureRelationId, function, GetUserId(), ACL_EXECUTE);
#else
	result = pg_proc_aclcheck(function, GetUserId(), ACL_EXECUTE);
#endif
	if (result != ACLCHECK_OK)
		aclcheck_error(result, OBJECT_FUNCTION, get_func_name(function));
	InvokeFunctionExecuteHook(function);
}

/*
 * Whether the rows of a function share requests: SageMaker's multi-record CSV and
 * azure_ml.score's (up to 1,000 rows a request, each costing about what one row's does),
 * and Azure OpenAI's embeddings (100 texts a request).
 */
static bool
shares_requests(Oid function)
{
	char	   *schema = get_namespace_name(get_func_namespace(function));
	char	   *name = get_func_name(function);

	return schema != NULL && name != NULL &&
		((strcmp(schema, "aws_sagemaker") == 0 && strcmp(name, "invoke_endpoint") == 0) ||
		 (strcmp(schema, "azure_ml") == 0 && strcmp(name, "score") == 0) ||
		 (strcmp(schema, "azure_ai_internal") == 0 &&
		  strcmp(name, "openai_embedding") == 0));
}

/*
 * Rows a batch gathers: azure_ai_sim.batch_size if set, else the smallest choice of the
 * node's functions. A function whose rows share requests takes max_parallel_requests of
 * 1,000 rows: enough to fill every request in flight, several times over for requests
 * of fewer rows, since each batch waits for its slowest request. The others cost per
 * row or per few rows, and take 1,000, which keeps the parallel requests busy while
 * bounding what a LIMIT that stops early has paid for.
 */
static int
rows_per_batch(List *calls)
{
	ListCell   *lc;
	int			rows = INT_MAX;

	if (batch_size > 0)
		return batch_size;
	foreach(lc, calls)
	{
		BatchCall  *call = lfirst(lc);

		rows = Min(rows, shares_requests(call->call->funcid) ?
				   max_parallel_requests * 1000 : 1000);
	}
	return rows;
}

/* how the batch form's result elements become the per-row function's results */
static void
init_result(BatchCall *call)
{
	Oid			rettype = call->call->funcresulttype;
	TupleDesc	element_desc = NULL;

	call->element = get_element_type(get_func_rettype(call->batch_form.fn_oid));
	get_typlenbyvalalign(call->element, &call->elemlen, &call->elembyval, &call->elemalign);
	if (call->element == rettype)
	{
		call->unwrap = 0;
		return;
	}
	if (call->element == TEXTOID)
	{
		/* PL/Python makes text of a str many times faster than it makes jsonb */
		Oid			input;

		getTypeInputInfo(rettype, &input, &call->ioparam);
		get_typlenbyval(rettype, &call->resultlen, &call->resultbyval);
		fmgr_info(input, &call->input);
		call->scratch = AllocSetContextCreate(CurrentMemoryContext, "azure_ai_sim batch results",
											  ALLOCSET_SMALL_SIZES);
		call->unwrap = 2;
		return;
	}
	if (type_is_rowtype(call->element))
		element_desc = lookup_rowtype_tupdesc_copy(call->element, -1);
	if (rettype == RECORDOID && element_desc != NULL)
	{
		TupleDesc	out;

		if (get_func_result_type(call->call->funcid, NULL, &out) == TYPEFUNC_COMPOSITE &&
			out->natts == element_desc->natts)
		{
			bool		same = true;

			for (int i = 0; i < out->natts; i++)
				same &= TupleDescAttr(out, i)->atttypid ==
					TupleDescAttr(element_desc, i)->atttypid;
			if (same)
			{
				call->unwrap = -1;
				call->record = BlessTupleDesc(CreateTupleDescCopy(out));
				call->element_desc = element_desc;
				return;
			}
		}
	}
	if (element_desc != NULL && element_desc->natts == 1 &&
		TupleDescAttr(element_desc, 0)->atttypid == rettype)
	{
		call->unwrap = 1;
		return;
	}
	elog(ERROR, "batch form %s does not return the results of %s",
		 format_procedure_qualified(call->batch_form.fn_oid),
		 format_procedure_qualified(call->call->funcid));
}

static void
begin_batch(CustomScanState *node, EState *estate, int eflags)
{
	BatchState *state = (BatchState *) node;
	CustomScan *cscan = (CustomScan *) node->ss.ps.plan;
	Plan	   *below = outerPlan(cscan);
	ListCell   *lc;
	ListCell   *oid;

	outerPlanState(node) = ExecInitNode(below, estate, eflags);
	state->below = list_length(below->targetlist);
	state->row = ExecInitExtraTupleSlot(estate, ExecGetResultType(outerPlanState(node)),
										&TTSOpsMinimalTuple);
	state->context = AllocSetContextCreate(estate->es_query_cxt, "azure_ai_sim batch",
										   ALLOCSET_DEFAULT_SIZES);
	state->arguments = AllocSetContextCreate(estate->es_query_cxt, "azure_ai_sim batch arguments",
											 ALLOCSET_DEFAULT_SIZES);
	forboth(lc, linitial(cscan->custom_private), oid, lsecond(cscan->custom_private))
	{
		BatchCall  *call = palloc0(sizeof(BatchCall));
		ListCell   *arg;

		call->call = lfirst_node(FuncExpr, lc);
		check_execute(call->call->funcid);
		call->shim = get_func_variadictype(call->call->funcid) == ANYOID;
		call->strict = func_strict(call->call->funcid);
		call->argtypes = palloc(list_length(call->call->args) * sizeof(Oid));
		call->arglens = palloc(list_length(call->call->args) * sizeof(int16));
		call->argbyvals = palloc(list_length(call->call->args) * sizeof(bool));
		foreach(arg, call->call->args)
		{
			int			k = foreach_current_index(arg);

			call->args = lappend(call->args, ExecInitExpr(lfirst(arg), &node->ss.ps));
			call->argtypes[k] = exprType(lfirst(arg));
			get_typlenbyval(call->argtypes[k], &call->arglens[k], &call->argbyvals[k]);
		}
		fmgr_info(lfirst_oid(oid), &call->batch_form);
		call->parts = !call->shim && get_func_nargs(call->batch_form.fn_oid) ==
			list_length(call->call->args) + PART_ARGS;
		init_result(call);
		state->calls = lappend(state->calls, call);
	}
	state->rows_per_batch = rows_per_batch(state->calls);
	state->rows_min = state->time_min = -1;
}

/* the scan tuple of row i: its columns from below, then the calls' results */
static void
store_row(BatchState *state, int i, TupleTableSlot *scan)
{
	ListCell   *lc;
	int			column = state->below;

	ExecStoreMinimalTuple(state->rows[i], state->row, false);
	slot_getallattrs(state->row);
	ExecClearTuple(scan);
	memcpy(scan->tts_values, state->row->tts_values, state->below * sizeof(Datum));
	memcpy(scan->tts_isnull, state->row->tts_isnull, state->below * sizeof(bool));
	foreach(lc, state->calls)
	{
		BatchCall  *call = lfirst(lc);

		scan->tts_values[column] = call->results ? call->results[i] : (Datum) 0;
		scan->tts_isnull[column] = call->results ? call->nulls[i] : true;
		column++;
	}
	ExecStoreVirtualTuple(scan);
}

static Datum
make_array(Datum *values, bool *nulls, int count, Oid element)
{
	int16		length;
	bool		byval;
	char		align;
	int			dims[1] = {count};
	int			lbs[1] = {1};

	get_typlenbyvalalign(element, &length, &byval, &align);
	return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs, element,
											  length, byval, align));
}

/* the batch form's result element of a row as the per-row function's result */
static Datum
unwrap_result(BatchCall *call, Datum element)
{
	HeapTupleHeader tuple;
	bool		isnull;

	switch (call->unwrap)
	{
		case 1:
			return GetAttributeByNum(DatumGetHeapTupleHeader(element), 1, &isnull);
		case 2:
			{
				/* jsonb_in, say, allocates a kilobyte per value: only the value is kept */
				MemoryContext old = MemoryContextSwitchTo(call->scratch);
				Datum		value = InputFunctionCall(&call->input,
													  TextDatumGetCString(element),
													  call->ioparam, -1);

				MemoryContextSwitchTo(old);
				value = datumCopy(value, call->resultbyval, call->resultlen);
				MemoryContextReset(call->scratch);
				return value;
			}
		case -1:
			{
				/* the same values, formed as the function's own result is */
				HeapTupleData element_tuple;
				Datum	   *values = palloc(call->record->natts * sizeof(Datum));
				bool	   *nulls = palloc(call->record->natts * sizeof(bool));

				tuple = DatumGetHeapTupleHeader(element);
				element_tuple.t_len = HeapTupleHeaderGetDatumLength(tuple);
				ItemPointerSetInvalid(&element_tuple.t_self);
				element_tuple.t_tableOid = InvalidOid;
				element_tuple.t_data = tuple;
				heap_deform_tuple(&element_tuple, call->element_desc, values, nulls);
				return HeapTupleGetDatum(heap_form_tuple(call->record, values, nulls));
			}
		default:
			return element;
	}
}

/* what a value takes in an array: a toasted value's full size */
static Size
value_size(Datum value, int16 typlen)
{
	return typlen == -1 ? toast_raw_datum_size(value) : datumGetSize(value, false, typlen);
}

/*
 * One call of the batch form for the rows from first on, up to count of them and as many
 * as have arguments that fit in work_mem (at least one), and in parts at most PART_ROWS:
 * arrays of the arguments of the rows that call it (a strict function's rows with a NULL
 * argument get NULL, as they would). Returns the rows it went through, or count if the
 * batch form failed on one.
 */
static int
call_rows(BatchState *state, BatchCall *call, int first, int count, double *milliseconds)
{
	ExprContext *econtext = state->css.ss.ps.ps_ExprContext;
	TupleTableSlot *scan = state->css.ss.ss_ScanTupleSlot;
	int			nargs = list_length(call->args);
	int			narrays = call->shim ? 4 : nargs;
	int			nfcargs;
	int			most = call->parts ? PART_ROWS : count;
	Datum	  **values = palloc(nargs * sizeof(Datum *));
	bool	  **nulls = palloc(nargs * sizeof(bool *));
	int		   *rows = palloc(count * sizeof(int));
	int			calling = 0;
	int			i;
	bool		last;
	Size		bytes = 0;
	FieldList	fields;
	Datum	   *counts = NULL;
	FunctionCallInfo fcinfo;
	Datum		result;
	ArrayType  *array;
	Datum	   *elements;
	bool	   *element_nulls;
	int			nelements;
	instr_time	start;
	instr_time	duration;

	for (int k = 0; k < nargs; k++)
	{
		values[k] = palloc(count * sizeof(Datum));
		nulls[k] = palloc(count * sizeof(bool));
	}
	if (call->shim)
	{
		field_list_init(&fields, count * 4);
		counts = palloc(count * sizeof(Datum));
	}
	for (i = first; i < first + count && calling < most && bytes < work_mem * (Size) 1024; i++)
	{
		bool		skip = false;
		ListCell   *lc;
		int			k = 0;

		store_row(state, i, scan);
		econtext->ecxt_scantuple = scan;
		foreach(lc, call->args)
		{
			MemoryContext old = MemoryContextSwitchTo(econtext->ecxt_per_tuple_memory);
			Datum		value = ExecEvalExpr(lfirst(lc), econtext, &nulls[k][calling]);

			MemoryContextSwitchTo(old);
			values[k][calling] = nulls[k][calling] ? (Datum) 0 :
				datumCopy(value, call->argbyvals[k], call->arglens[k]);
			if (!nulls[k][calling])
				bytes += value_size(values[k][calling], call->arglens[k]);
			skip |= call->strict && nulls[k][calling];
			k++;
		}
		if (!skip && call->shim)
		{
			int			before = fields.count;

			for (k = 2; k < nargs; k++)
			{
				/* VARIADIC NULL::int[] means no arguments, as for format() */
				if (nulls[k][calling] && call->call->funcvariadic)
					continue;
				add_argument(&fields, values[k][calling], nulls[k][calling],
							 call->argtypes[k]);
			}
			counts[calling] = Int32GetDatum(fields.count - before);
		}
		ResetExprContext(econtext);
		if (!skip)
			rows[calling++] = i;
		else
			call->ready[i] = true;	/* NULL, without a call */
	}
	last = i == first + count;
	if (call->parts)
	{
		/* the rows of this part join those of the batch's earlier parts */
		if (call->ncalled == 0)
			call->batch_id = ++batches_begun;
		memcpy(call->called + call->ncalled, rows, calling * sizeof(int));
		call->ncalled += calling;
		if (calling == 0 && (!last || call->ncalled == 0))
			return i - first;
	}
	else if (calling == 0)
		return i - first;

	nfcargs = narrays + (call->parts ? PART_ARGS : 0);
	fcinfo = palloc0(SizeForFunctionCallInfo(nfcargs));
	InitFunctionCallInfoData(*fcinfo, &call->batch_form, nfcargs, call->call->inputcollid,
							 NULL, NULL);
	if (call->shim)
	{
		bool	   *no_nulls = palloc0(calling * sizeof(bool));

		fcinfo->args[0].value = make_array(values[0], nulls[0], calling, VARCHAROID);
		fcinfo->args[1].value = make_array(values[1], nulls[1], calling, INT4OID);
		fcinfo->args[2].value = fields.count == 0 ?
			PointerGetDatum(construct_empty_array(TEXTOID)) :
			make_array(fields.values, fields.nulls, fields.count, TEXTOID);
		fcinfo->args[3].value = make_array(counts, no_nulls, calling, INT4OID);
	}
	else
		for (int k = 0; k < nargs; k++)
			fcinfo->args[k].value =
				make_array(values[k], nulls[k], calling, call->argtypes[k]);
	if (call->parts)
	{
		fcinfo->args[narrays].value = Int64GetDatum(call->batch_id);
		fcinfo->args[narrays + 1].value = Int32GetDatum(state->count);
		fcinfo->args[narrays + 2].value = BoolGetDatum(last);
	}
	for (int k = 0; k < fcinfo->nargs; k++)
		fcinfo->args[k].isnull = false;

	INSTR_TIME_SET_CURRENT(start);
	MemoryContextSwitchTo(state->context);
	result = FunctionCallInvoke(fcinfo);
	INSTR_TIME_SET_CURRENT(duration);
	INSTR_TIME_SUBTRACT(duration, start);
	*milliseconds += INSTR_TIME_GET_MILLISEC(duration);

	if (fcinfo->isnull)
		elog(ERROR, "batch form %s returned NULL",
			 format_procedure_qualified(call->batch_form.fn_oid));
	array = DatumGetArrayTypeP(result);
	deconstruct_array(array, call->element, call->elemlen, call->elembyval,
					  call->elemalign, &elements, &element_nulls, &nelements);
	if (call->parts)
	{
		if (!last)
		{
			if (nelements != 0)
				elog(ERROR, "batch form %s answered before the last part of a batch",
					 format_procedure_qualified(call->batch_form.fn_oid));
			return i - first;
		}
		/* the last part answers for the rows of all of them */
		rows = call->called;
		calling = call->ncalled;
		call->ncalled = 0;
	}
	/* fewer results: the rows from the first failed one on get their own calls later */
	if (nelements > calling || nelements == 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("batch form %s returned %d results for %d rows",
						format_procedure_qualified(call->batch_form.fn_oid), nelements,
						calling)));
	for (int j = 0; j < nelements; j++)
	{
		call->nulls[rows[j]] = element_nulls[j];
		if (!element_nulls[j])
			call->results[rows[j]] = unwrap_result(call, elements[j]);
		call->ready[rows[j]] = true;
	}
	return nelements < calling ? count : i - first;
}

/*
 * The batch form's calls for the rows first .. first + count - 1 of the batch, as many
 * as their arguments take (each call's arguments are freed after it); returns their time.
 */
static double
run_call(BatchState *state, BatchCall *call, int first, int count)
{
	double		milliseconds = 0;
	int			done = 0;

	while (done < count)
	{
		MemoryContextSwitchTo(state->arguments);
		done += call_rows(state, call, first + done, count - done, &milliseconds);
		MemoryContextReset(state->arguments);
	}
	MemoryContextSwitchTo(state->context);
	return milliseconds;
}

/*
 * The next batch of rows from below, with the calls' results; false when none is left.
 * A batch also ends once its rows take work_mem, as a sort's would: a query over large
 * values gathers fewer rows, and at least one.
 */
static bool
fill_batch(BatchState *state)
{
	PlanState  *below = outerPlanState(state);
	MemoryContext old;
	ListCell   *lc;
	double		milliseconds = 0;
	Size		bytes = 0;

	MemoryContextReset(state->context);
	foreach(lc, state->calls)
		((BatchCall *) lfirst(lc))->results = NULL;
	state->rows = MemoryContextAlloc(state->context,
									 state->rows_per_batch * sizeof(MinimalTuple));
	state->count = state->next = 0;
	while (state->count < state->rows_per_batch && bytes < work_mem * (Size) 1024)
	{
		TupleTableSlot *slot = ExecProcNode(below);
		MinimalTuple row;

		if (TupIsNull(slot))
		{
			state->done = true;
			break;
		}
		old = MemoryContextSwitchTo(state->context);
		row = ExecCopySlotMinimalTuple(slot);
		MemoryContextSwitchTo(old);
		state->rows[state->count++] = row;
		bytes += row->t_len;
	}
	if (state->count == 0)
		return false;

	old = MemoryContextSwitchTo(state->context);
	foreach(lc, state->calls)
	{
		BatchCall  *call = lfirst(lc);

		call->results = palloc0(state->count * sizeof(Datum));
		call->nulls = palloc(state->count * sizeof(bool));
		memset(call->nulls, true, state->count * sizeof(bool));
		call->ready = palloc0(state->count * sizeof(bool));
		call->called = palloc(state->count * sizeof(int));
		call->ncalled = 0;
		milliseconds += run_call(state, call, 0, state->count);
	}
	MemoryContextSwitchTo(old);

	state->batches++;
	state->rows_total += state->count;
	state->time_total += milliseconds;
	if (state->rows_min < 0 || state->count < state->rows_min)
		state->rows_min = state->count;
	state->rows_max = Max(state->rows_max, state->count);
	if (state->time_min < 0 || milliseconds < state->time_min)
		state->time_min = milliseconds;
	state->time_max = Max(state->time_max, milliseconds);
	return true;
}

static TupleTableSlot *
exec_batch(CustomScanState *node)
{
	BatchState *state = (BatchState *) node;
	TupleTableSlot *scan = node->ss.ss_ScanTupleSlot;
	ExprContext *econtext = node->ss.ps.ps_ExprContext;
	ListCell   *lc;

	CHECK_FOR_INTERRUPTS();
	if (state->next >= state->count && (state->done || !fill_batch(state)))
		return ExecClearTuple(node->ss.ps.ps_ResultTupleSlot);
	foreach(lc, state->calls)
	{
		BatchCall  *call = lfirst(lc);

		if (!call->ready[state->next])
		{
			MemoryContext old = MemoryContextSwitchTo(state->context);

			run_call(state, call, state->next, 1);
			MemoryContextSwitchTo(old);
		}
	}
	store_row(state, state->next++, scan);
	ResetExprContext(econtext);
	if (node->ss.ps.ps_ProjInfo == NULL)
		return scan;
	econtext->ecxt_scantuple = scan;
	return ExecProject(node->ss.ps.ps_ProjInfo);
}

static void
end_batch(CustomScanState *node)
{
	ExecEndNode(outerPlanState(node));
}

static void
rescan_batch(CustomScanState *node)
{
	BatchState *state = (BatchState *) node;
	PlanState  *below = outerPlanState(node);

	state->count = state->next = 0;
	state->done = false;
	if (below->chgParam == NULL)
		ExecReScan(below);
}

static void
explain_batch(CustomScanState *node, List *ancestors, ExplainState *es)
{
	BatchState *state = (BatchState *) node;
	CustomScan *cscan = (CustomScan *) node->ss.ps.plan;
	ListCell   *lc;

	if (es->verbose)
	{
		List	   *names = NIL;

		foreach(lc, linitial(cscan->custom_private))
			names = lappend(names,
							format_procedure_qualified(lfirst_node(FuncExpr, lc)->funcid));
		ExplainPropertyList("Batched Calls", names, es);
	}
	if (es->analyze)
	{
		double		batches = Max(state->batches, 1);

		/* Aurora's line, as its docs show it */
		ExplainPropertyText("Batch Processing",
							psprintf("num batches=" INT64_FORMAT
									 " avg/min/max batch size=%.3f/%.3f/%.3f"
									 " avg/min/max batch call time=%.3f/%.3f/%.3f",
									 state->batches, state->rows_total / batches,
									 Max(state->rows_min, 0), state->rows_max,
									 state->time_total / batches,
									 Max(state->time_min, 0), state->time_max),
							es);
	}
}

static Node *
create_batch_state(CustomScan *cscan)
{
	BatchState *state = palloc0(sizeof(BatchState));
	static const CustomExecMethods methods = {
		.CustomName = "Batch",
		.BeginCustomScan = begin_batch,
		.ExecCustomScan = exec_batch,
		.EndCustomScan = end_batch,
		.ReScanCustomScan = rescan_batch,
		.ExplainCustomScan = explain_batch,
	};

	NodeSetTag(state, T_CustomScanState);
	state->css.methods = &methods;
	return (Node *) state;
}

static CustomScanMethods batch_scan_methods = {
	.CustomName = "Batch",
	.CreateCustomScanState = create_batch_state,
};

void
azure_ai_sim_batch_init(void)
{
	DefineCustomBoolVariable("azure_ai_sim.enable_batch_mode",
							 "Batches per-row calls of the ML functions in a query.",
							 "Aurora's apg_enable_function_migration; applies to queries "
							 "planned after it is set.",
							 &enable_batch_mode, true, PGC_USERSET, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("azure_ai_sim.batch_size",
							"Rows gathered into one batch of per-row ML calls.",
							"0 lets each function choose: 1000 rows, or for "
							"aws_sagemaker.invoke_endpoint and azure_ml.score 1000 "
							"per parallel request. "
							"A batch also ends once its rows take work_mem.",
							&batch_size, 0, 0, 100000, PGC_USERSET, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("azure_ai_sim.max_parallel_requests",
							"Requests in flight at once to one endpoint, per backend.",
							"The default is botocore's max_pool_connections.",
							&max_parallel_requests, 10, 1, 64, PGC_USERSET, 0,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("azure_ai_sim.exact_batches",
							 "Gives each row of a batch the bytes of its own call.",
							 "Off: an int8 embedding model embeds the texts of a batch "
							 "together, as the array form does: faster, but a row's "
							 "embedding may differ from its own call's in its last bits.",
							 &exact_batches, true, PGC_USERSET, 0,
							 NULL, NULL, NULL);
	RegisterCustomScanMethods(&batch_scan_methods);
	CacheRegisterSyscacheCallback(PROCOID, forget_batch_forms, (Datum) 0);
	prev_planner = planner_hook;
	planner_hook = batch_planner;
}
