/*
 * The native part of azure_ai_sim: what PL/Python cannot do, or not fast enough.
 */
#include "postgres.h"

#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "azure_ai_sim.h"

PG_MODULE_MAGIC;

/*
 * real[] from the float32 values, in the server's byte order, that a bytea holds.
 *
 * PL/Python turns every float of a returned list into text and parses it back, about
 * 0.5 us a value: 0.2 ms for one 384-value embedding. A bytea crosses for a copy.
 */
PG_FUNCTION_INFO_V1(azure_ai_sim_float4_array);

Datum
azure_ai_sim_float4_array(PG_FUNCTION_ARGS)
{
	bytea	   *bytes = PG_GETARG_BYTEA_PP(0);
	int			size = VARSIZE_ANY_EXHDR(bytes);
	int			total = ARR_OVERHEAD_NONULLS(1) + size;
	ArrayType  *result;

	if (size % sizeof(float4) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("float32 values come in multiples of 4 bytes, not %d", size)));
	if (size == 0)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(FLOAT4OID));

	result = (ArrayType *) palloc0(total);
	SET_VARSIZE(result, total);
	result->ndim = 1;
	result->dataoffset = 0;		/* no null bitmap */
	result->elemtype = FLOAT4OID;
	ARR_DIMS(result)[0] = size / sizeof(float4);
	ARR_LBOUND(result)[0] = 1;
	memcpy(ARR_DATA_PTR(result), VARDATA_ANY(bytes), size);
	PG_RETURN_ARRAYTYPE_P(result);
}

/*
 * aws_sagemaker.invoke_endpoint(endpoint_name, max_rows_per_batch, VARIADIC model_input "any")
 *
 * Only C can take VARIADIC "any". This turns every argument into its text form (the
 * type's own output function; one-dimensional arrays flattened in order; NULL stays NULL)
 * and hands a text[] to _invoke_endpoint(text, integer, text[]) (core_function), the
 * PL/Python core that does everything else. The shim itself uses no SPI.
 */
PG_FUNCTION_INFO_V1(azure_ai_sim_invoke_endpoint);

void
field_list_init(FieldList *fields, int expected)
{
	fields->allocated = Max(expected, 8);
	fields->values = palloc(fields->allocated * sizeof(Datum));
	fields->nulls = palloc(fields->allocated * sizeof(bool));
	fields->count = 0;
}

static void
add_field(FieldList *fields, Datum value, bool isnull, Oid type)
{
	if (fields->count == fields->allocated)
	{
		fields->allocated *= 2;
		fields->values = repalloc(fields->values, fields->allocated * sizeof(Datum));
		fields->nulls = repalloc(fields->nulls, fields->allocated * sizeof(bool));
	}
	fields->nulls[fields->count] = isnull;
	if (!isnull)
	{
		Oid			output;
		bool		varlena;

		getTypeOutputInfo(type, &output, &varlena);
		fields->values[fields->count] =
			CStringGetTextDatum(OidOutputFunctionCall(output, value));
	}
	fields->count++;
}

/* one argument: an array gives a field per element (in order), anything else one field */
void
add_argument(FieldList *fields, Datum value, bool isnull, Oid type)
{
	Oid			element = get_element_type(getBaseType(type));
	ArrayType  *array;
	Datum	   *elements;
	bool	   *nulls;
	int			count;
	int16		length;
	bool		byval;
	char		align;

	if (isnull || !OidIsValid(element))
	{
		add_field(fields, value, isnull, type);
		return;
	}
	array = DatumGetArrayTypeP(value);
	if (ARR_NDIM(array) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("aws_sagemaker.invoke_endpoint: model_input arrays must have one dimension, not %d",
						ARR_NDIM(array))));
	get_typlenbyvalalign(element, &length, &byval, &align);
	deconstruct_array(array, element, length, byval, align, &elements, &nulls, &count);
	for (int i = 0; i < count; i++)
		add_field(fields, elements[i], nulls[i], element);
}

/*
 * The function schema.name(argtypes) of the same extension as sibling, or InvalidOid.
 * Looked up without the caller's search_path or schema privileges, which decide
 * nothing here: the caller was allowed to run sibling.
 */
Oid
function_beside(Oid sibling, const char *schema, const char *name, const Oid *argtypes,
				int nargs)
{
	Oid			namespace = get_namespace_oid(schema, true);
	Oid			function;

	if (!OidIsValid(namespace))
		return InvalidOid;
	function = GetSysCacheOid3(PROCNAMEARGSNSP, Anum_pg_proc_oid, CStringGetDatum(name),
							   PointerGetDatum(buildoidvector(argtypes, nargs)),
							   ObjectIdGetDatum(namespace));
	if (!OidIsValid(function) ||
		getExtensionOfObject(ProcedureRelationId, function) !=
		getExtensionOfObject(ProcedureRelationId, sibling))
		return InvalidOid;
	return function;
}

/*
 * The PL/Python core of the shim: _invoke_endpoint(text, integer, text[]) in
 * aws_ml_internal (aws_ml 2.0.1 on) or aws_sagemaker (1.0 and 2.0).
 */
static Oid
core_function(Oid shim)
{
	const char *schemas[] = {"aws_ml_internal", "aws_sagemaker"};
	Oid			argtypes[3] = {TEXTOID, INT4OID, TEXTARRAYOID};

	for (int i = 0; i < lengthof(schemas); i++)
	{
		Oid			core = function_beside(shim, schemas[i], "_invoke_endpoint", argtypes, 3);

		if (OidIsValid(core))
			return core;
	}
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_FUNCTION),
			 errmsg("aws_sagemaker.invoke_endpoint: its core, _invoke_endpoint(text, integer, text[]), is missing"),
			 errhint("DROP EXTENSION aws_ml, then CREATE EXTENSION aws_ml.")));
	return InvalidOid;			/* keep compiler quiet */
}

Datum
azure_ai_sim_invoke_endpoint(PG_FUNCTION_ARGS)
{
	FmgrInfo   *core = (FmgrInfo *) fcinfo->flinfo->fn_extra;
	FieldList	fields;
	LOCAL_FCINFO(call, 3);
	Datum		result;
	int			dims[1];
	int			lbs[1] = {1};

	if (core == NULL)
	{
		Oid			oid = core_function(fcinfo->flinfo->fn_oid);

		core = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(FmgrInfo));
		fmgr_info_cxt(oid, core, fcinfo->flinfo->fn_mcxt);
		fcinfo->flinfo->fn_extra = core;
	}

	field_list_init(&fields, PG_NARGS());
	for (int i = 2; i < PG_NARGS(); i++)
	{
		/* VARIADIC NULL::int[] means no arguments, as for format() */
		if (PG_ARGISNULL(i) && get_fn_expr_variadic(fcinfo->flinfo))
			continue;
		add_argument(&fields, PG_GETARG_DATUM(i), PG_ARGISNULL(i),
					 get_fn_expr_argtype(fcinfo->flinfo, i));
	}

	dims[0] = fields.count;
	InitFunctionCallInfoData(*call, core, 3, PG_GET_COLLATION(), NULL, NULL);
	call->args[0].value = PG_GETARG_DATUM(0);
	call->args[0].isnull = PG_ARGISNULL(0);
	call->args[1].value = PG_GETARG_DATUM(1);
	call->args[1].isnull = PG_ARGISNULL(1);
	call->args[2].value = PointerGetDatum(fields.count == 0
										  ? construct_empty_array(TEXTOID)
										  : construct_md_array(fields.values, fields.nulls, 1,
															   dims, lbs, TEXTOID, -1,
															   false, TYPALIGN_INT));
	call->args[2].isnull = false;
	result = FunctionCallInvoke(call);
	if (call->isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}
