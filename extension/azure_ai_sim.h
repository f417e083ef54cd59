/*
 * What the C files of azure_ai_sim share.
 */
#ifndef AZURE_AI_SIM_H
#define AZURE_AI_SIM_H

#include "postgres.h"

/* aws_sagemaker.invoke_endpoint's arguments as the text fields of one CSV record */
typedef struct FieldList
{
	Datum	   *values;
	bool	   *nulls;
	int			count;
	int			allocated;
} FieldList;

extern void field_list_init(FieldList *fields, int expected);
extern void add_argument(FieldList *fields, Datum value, bool isnull, Oid type);
extern Oid	function_beside(Oid sibling, const char *schema, const char *name,
							const Oid *argtypes, int nargs);

/* batch.c */
extern void azure_ai_sim_batch_init(void);

#endif							/* AZURE_AI_SIM_H */
