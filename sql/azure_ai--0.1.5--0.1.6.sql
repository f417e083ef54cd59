-- azure_ai 0.1.6: the semantic operators azure_ai.generate, is_true, extract and rank, a
-- language model (or a reranker) inside a query.
\echo Use "ALTER EXTENSION azure_ai UPDATE TO '0.1.6'" to load this file. \quit

-- The cores, SECURITY DEFINER: they read the key, which their callers may not read. Each
-- per-row core has a batch form, <name>_batch, that the batching node calls with the rows
-- of a query: one chat request a row, several in flight (extension/batch.c).
CREATE FUNCTION azure_ai_internal.generate_text(prompt text, model text, system_prompt text)
RETURNS text
    LANGUAGE azure_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import semantic
    return semantic.generate([prompt], [model], [system_prompt])[0]
$$;

CREATE FUNCTION azure_ai_internal.generate_text_batch(
    prompt text[], model text[], system_prompt text[]
) RETURNS text[]
    LANGUAGE azure_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import semantic
    return semantic.generate(prompt, model, system_prompt)
$$;

CREATE FUNCTION azure_ai_internal.generate_json(
    prompt text, json_schema jsonb, model text, system_prompt text
) RETURNS jsonb
    LANGUAGE azure_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import semantic
    return semantic.generate_json([prompt], [json_schema], [model], [system_prompt])[0]
$$;

CREATE FUNCTION azure_ai_internal.generate_json_batch(
    prompt text[], json_schema jsonb[], model text[], system_prompt text[]
) RETURNS jsonb[]
    LANGUAGE azure_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import semantic
    return semantic.generate_json(prompt, json_schema, model, system_prompt)
$$;

CREATE FUNCTION azure_ai_internal.is_true(statement text, model text) RETURNS boolean
    LANGUAGE azure_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import semantic
    return semantic.is_true([statement], [model])[0]
$$;

CREATE FUNCTION azure_ai_internal.is_true_batch(statement text[], model text[])
RETURNS boolean[]
    LANGUAGE azure_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import semantic
    return semantic.is_true(statement, model)
$$;

-- The labels come as a jsonb array: an array of text[] (the batch form's argument) does
-- not exist in PostgreSQL.
CREATE FUNCTION azure_ai_internal.extract(document text, data jsonb, model text)
RETURNS jsonb
    LANGUAGE azure_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import semantic
    return semantic.extract([document], [data], [model])[0]
$$;

CREATE FUNCTION azure_ai_internal.extract_batch(document text[], data jsonb[], model text[])
RETURNS jsonb[]
    LANGUAGE azure_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import semantic
    return semantic.extract(document, data, model)
$$;

-- place: the document's place in document_contents, from 1. id_shape: the dimensions
-- and number of the document_ids, which must be one per document (NULL: none given).
CREATE FUNCTION azure_ai_internal.rank(
    query text, document_contents text[], model text, id_shape integer[]
) RETURNS TABLE (place integer, rank integer, relevance_score double precision)
    LANGUAGE azure_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import semantic
    return semantic.rank(query, document_contents, model, id_shape)
$$;

-- As Azure documents them; inlinable SQL, so that batch mode finds the cores inside.
-- generate has two forms: text, and jsonb when a JSON schema is given (a positional
-- second argument in quotes is the model, as in Azure's examples).
CREATE FUNCTION azure_ai.generate(
    prompt text,
    model text DEFAULT 'gpt-4.1',
    system_prompt text DEFAULT 'You are a helpful assistant.'
) RETURNS text
    LANGUAGE sql VOLATILE
    RETURN azure_ai_internal.generate_text(prompt, model, system_prompt);

CREATE FUNCTION azure_ai.generate(
    prompt text,
    json_schema jsonb,
    model text DEFAULT 'gpt-4.1',
    system_prompt text DEFAULT 'You are a helpful assistant.'
) RETURNS jsonb
    LANGUAGE sql VOLATILE
    RETURN azure_ai_internal.generate_json(prompt, json_schema, model, system_prompt);

CREATE FUNCTION azure_ai.is_true(statement text, model text DEFAULT 'gpt-4.1') RETURNS boolean
    LANGUAGE sql VOLATILE
    RETURN azure_ai_internal.is_true(statement, model);

CREATE FUNCTION azure_ai.extract(document text, data text[], model text DEFAULT 'gpt-4.1')
RETURNS jsonb
    LANGUAGE sql VOLATILE
    RETURN azure_ai_internal.extract(document, to_jsonb(data), model);

-- Best first. Without document_ids, a document's id is its place in document_contents.
CREATE FUNCTION azure_ai.rank(
    query text,
    document_contents text[],
    model text DEFAULT 'cohere-rerank-v3.5'
) RETURNS TABLE (document_id integer, rank integer, relevance_score double precision)
    LANGUAGE sql VOLATILE
AS $$
    SELECT r.place, r.rank, r.relevance_score
    FROM azure_ai_internal.rank(query, document_contents, model, NULL) AS r
    ORDER BY r.rank
$$;

CREATE FUNCTION azure_ai.rank(
    query text,
    document_contents text[],
    document_ids anyarray,
    model text DEFAULT 'cohere-rerank-v3.5'
) RETURNS TABLE (document_id anyelement, rank integer, relevance_score double precision)
    LANGUAGE sql VOLATILE
AS $$
    SELECT document_ids[array_lower(document_ids, 1) + r.place - 1], r.rank,
           r.relevance_score
    FROM azure_ai_internal.rank(query, document_contents, model,
                                ARRAY[array_ndims(document_ids), cardinality(document_ids)])
         AS r
    ORDER BY r.rank
$$;

-- The batching node calls the batch forms without a privilege check of its own: it
-- checks EXECUTE on the per-row cores they stand for.
REVOKE EXECUTE ON FUNCTION
    azure_ai_internal.generate_text_batch(text[], text[], text[]),
    azure_ai_internal.generate_json_batch(text[], jsonb[], text[], text[]),
    azure_ai_internal.is_true_batch(text[], text[]),
    azure_ai_internal.extract_batch(text[], jsonb[], text[]),
    azure_ai_internal.openai_embedding_batch(
        text[], text[], integer[], integer[], boolean[], integer[], integer[])
FROM PUBLIC;

COMMENT ON FUNCTION azure_ai_internal.generate_text(text, text, text)
    IS 'The core of azure_ai.generate(text, ...)';
COMMENT ON FUNCTION azure_ai_internal.generate_text_batch(text[], text[], text[])
    IS 'The batch form of azure_ai_internal.generate_text';
COMMENT ON FUNCTION azure_ai_internal.generate_json(text, jsonb, text, text)
    IS 'The core of azure_ai.generate(text, jsonb, ...)';
COMMENT ON FUNCTION azure_ai_internal.generate_json_batch(text[], jsonb[], text[], text[])
    IS 'The batch form of azure_ai_internal.generate_json';
COMMENT ON FUNCTION azure_ai_internal.is_true(text, text)
    IS 'The core of azure_ai.is_true';
COMMENT ON FUNCTION azure_ai_internal.is_true_batch(text[], text[])
    IS 'The batch form of azure_ai_internal.is_true';
COMMENT ON FUNCTION azure_ai_internal.extract(text, jsonb, text)
    IS 'The core of azure_ai.extract, its labels as a jsonb array';
COMMENT ON FUNCTION azure_ai_internal.extract_batch(text[], jsonb[], text[])
    IS 'The batch form of azure_ai_internal.extract';
COMMENT ON FUNCTION azure_ai_internal.rank(text, text[], text, integer[])
    IS 'The core of azure_ai.rank: each document''s place, rank and relevance score';
COMMENT ON FUNCTION azure_ai.generate(text, text, text)
    IS 'A language model''s answer to a prompt (an Azure OpenAI chat deployment)';
COMMENT ON FUNCTION azure_ai.generate(text, jsonb, text, text)
    IS 'A language model''s answer to a prompt, as JSON that follows json_schema';
COMMENT ON FUNCTION azure_ai.is_true(text, text)
    IS 'Whether a language model judges the statement true; NULL if it cannot tell';
COMMENT ON FUNCTION azure_ai.extract(text, text[], text)
    IS 'The data a language model finds in a document, one JSON key per label';
COMMENT ON FUNCTION azure_ai.rank(text, text[], text)
    IS 'The documents ranked by relevance to the query (a reranker or a chat deployment)';
COMMENT ON FUNCTION azure_ai.rank(text, text[], anyarray, text)
    IS 'The documents, by their ids, ranked by relevance to the query';
