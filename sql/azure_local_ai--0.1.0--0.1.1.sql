-- azure_local_ai 0.1.1: bounded work for any input, timeout_ms honoured everywhere, clear
-- errors for arrays of the wrong shape.
\echo Use "ALTER EXTENSION azure_local_ai UPDATE TO '0.1.1'" to load this file. \quit

-- Only the first 262,144 characters of an input are read: far more than 512 tokens can
-- use, and a TOASTed value is not even detoasted whole (substr reads a slice).
CREATE OR REPLACE FUNCTION azure_local_ai.create_embeddings(
    model_uri text,
    input text,
    timeout_ms integer DEFAULT 3600000
) RETURNS real[]
    LANGUAGE sql IMMUTABLE
    RETURN azure_local_ai.float4_array(
        azure_local_ai._embedding(model_uri, substr(input, 1, 262144), timeout_ms));

-- The same per element. Not inlined (the SET clause sees to it), so that the array is
-- evaluated once and never copied: an inlined function would evaluate it at every mention,
-- PL/pgSQL copies an array argument, and unnest in FROM copies every element whole
-- (in the select list, it hands each element to substr in order). An array of more dimensions goes to Python as
-- it is, to be refused with a clear error.
CREATE OR REPLACE FUNCTION azure_local_ai.create_embeddings(
    model_uri text,
    inputs text[],
    batch_size bigint DEFAULT 128,
    timeout_ms integer DEFAULT 3600000
) RETURNS TABLE (embedding real[])
    LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT azure_local_ai.float4_array(e)
    FROM azure_local_ai._embeddings(
        model_uri,
        CASE WHEN array_ndims(inputs) > 1 THEN inputs
             ELSE ARRAY(SELECT substr(unnest(inputs), 1, 262144)) END,
        batch_size,
        timeout_ms) AS e
$$;

CREATE OR REPLACE FUNCTION azure_local_ai.create_embeddings(
    model_uri text,
    inputs text[],
    ids anyarray,
    batch_size bigint DEFAULT 128,
    timeout_ms integer DEFAULT 3600000
) RETURNS TABLE (id anyelement, embedding real[])
    LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF array_ndims(ids) > 1 THEN
        RAISE EXCEPTION 'azure_local_ai.create_embeddings: ids must be a one-dimensional array '
            'as long as inputs, not one of % dimensions', array_ndims(ids)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(ids) IS DISTINCT FROM cardinality(inputs) THEN
        RAISE EXCEPTION 'azure_local_ai.create_embeddings: ids has % elements, inputs has %',
            cardinality(ids), cardinality(inputs) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
        SELECT ids[array_lower(ids, 1) + e.n::integer - 1], e.embedding
        FROM azure_local_ai.create_embeddings(model_uri, inputs, batch_size, timeout_ms)
             WITH ORDINALITY AS e (embedding, n)
        ORDER BY e.n;
END
$$;

COMMENT ON FUNCTION azure_local_ai.create_embeddings(text, text, integer) IS
    'Embedding of the input (its first 262,144 characters, then its first 512 tokens)';
COMMENT ON FUNCTION azure_local_ai.create_embeddings(text, text[], bigint, integer) IS
    'One embedding per input, in input order (each input cut as by the single-text form)';
COMMENT ON FUNCTION azure_local_ai.create_embeddings(text, text[], anyarray, bigint, integer) IS
    'One (id, embedding) per input, in input order; ids one-dimensional, as long as inputs';


-- timeout_ms now bounds lock waits on the registry and settings tables.
CREATE OR REPLACE FUNCTION azure_local_ai.model_unregister(
    model_uri text,
    timeout_ms integer DEFAULT 3600000
) RETURNS void
    LANGUAGE azure_local_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import local_ai
    local_ai.model_unregister(model_uri, timeout_ms)
$$;

CREATE OR REPLACE FUNCTION azure_local_ai.get_setting(key text, timeout_ms integer DEFAULT 3600000)
    RETURNS text
    LANGUAGE azure_local_ai_plpython STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import local_ai
    return local_ai.get_setting(key, timeout_ms)
$$;

CREATE OR REPLACE FUNCTION azure_local_ai.get_setting(
    keys text[] DEFAULT ARRAY[]::text[],
    timeout_ms integer DEFAULT 3600000
) RETURNS jsonb
    LANGUAGE azure_local_ai_plpython STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import local_ai
    return local_ai.get_settings(keys, timeout_ms)
$$;

CREATE OR REPLACE FUNCTION azure_local_ai.set_setting(
    key text,
    value text,
    timeout_ms integer DEFAULT 3600000
) RETURNS void
    LANGUAGE azure_local_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import local_ai
    local_ai.set_settings([key], [value], timeout_ms)
$$;

CREATE OR REPLACE FUNCTION azure_local_ai.set_setting(
    keys text[],
    "values" text[],
    timeout_ms integer DEFAULT 3600000
) RETURNS void
    LANGUAGE azure_local_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import local_ai
    local_ai.set_settings(keys, values, timeout_ms)
$$;
