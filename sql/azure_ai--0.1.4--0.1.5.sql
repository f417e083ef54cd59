-- azure_ai 0.1.5: azure_openai.create_embeddings, against Azure OpenAI or any server that
-- speaks OpenAI's API (the setting azure_openai.api_type = 'openai').
\echo Use "ALTER EXTENSION azure_ai UPDATE TO '0.1.5'" to load this file. \quit

CREATE SCHEMA azure_openai;

-- real[] from float32 bytes: PL/Python would format and parse every value as text.
CREATE FUNCTION azure_ai_internal.float4_array(bytea) RETURNS real[]
    LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
    AS '$libdir/azure_ai_sim', 'azure_ai_sim_float4_array';

-- The cores, SECURITY DEFINER: they read the key, which their callers may not read.
CREATE FUNCTION azure_ai_internal.openai_embedding(
    deployment_name text, input text, dimensions integer, timeout_ms integer,
    throw_on_error boolean, max_attempts integer, retry_delay_ms integer
) RETURNS bytea
    LANGUAGE azure_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import azure_openai
    return azure_openai.create_embedding(deployment_name, input, dimensions, timeout_ms,
                                         throw_on_error, max_attempts, retry_delay_ms)
$$;

CREATE FUNCTION azure_ai_internal.openai_embeddings(
    deployment_name text, input text[], batch_size integer, dimensions integer,
    timeout_ms integer, throw_on_error boolean, max_attempts integer, retry_delay_ms integer
) RETURNS SETOF bytea
    LANGUAGE azure_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import azure_openai
    return azure_openai.create_embeddings(deployment_name, input, batch_size, dimensions,
                                          timeout_ms, throw_on_error, max_attempts,
                                          retry_delay_ms)
$$;

-- The batch form of the single-text core: the batching node calls it with the rows of
-- a query, whose texts then share requests (extension/batch.c).
CREATE FUNCTION azure_ai_internal.openai_embedding_batch(
    deployment_name text[], input text[], dimensions integer[], timeout_ms integer[],
    throw_on_error boolean[], max_attempts integer[], retry_delay_ms integer[]
) RETURNS bytea[]
    LANGUAGE azure_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import azure_openai
    return azure_openai.create_embedding_batch(deployment_name, input, dimensions, timeout_ms,
                                               throw_on_error, max_attempts, retry_delay_ms)
$$;

-- As Azure documents them; inlinable SQL, so that batch mode finds the core inside.
CREATE FUNCTION azure_openai.create_embeddings(
    deployment_name text,
    input text,
    dimensions integer DEFAULT NULL,
    timeout_ms integer DEFAULT 3600000,
    throw_on_error boolean DEFAULT true,
    max_attempts integer DEFAULT 1,
    retry_delay_ms integer DEFAULT 1000
) RETURNS real[]
    LANGUAGE sql VOLATILE
    RETURN azure_ai_internal.float4_array(azure_ai_internal.openai_embedding(
        deployment_name, input, dimensions, timeout_ms, throw_on_error, max_attempts,
        retry_delay_ms));

-- One row per input, in input order.
CREATE FUNCTION azure_openai.create_embeddings(
    deployment_name text,
    input text[],
    batch_size integer DEFAULT 100,
    dimensions integer DEFAULT NULL,
    timeout_ms integer DEFAULT 3600000,
    throw_on_error boolean DEFAULT true,
    max_attempts integer DEFAULT 1,
    retry_delay_ms integer DEFAULT 1000
) RETURNS TABLE (embedding real[])
    LANGUAGE sql VOLATILE
AS $$
    SELECT azure_ai_internal.float4_array(e)
    FROM azure_ai_internal.openai_embeddings(deployment_name, input, batch_size, dimensions,
                                             timeout_ms, throw_on_error, max_attempts,
                                             retry_delay_ms) AS e
$$;

GRANT USAGE ON SCHEMA azure_openai TO PUBLIC;

COMMENT ON SCHEMA azure_openai IS 'Azure OpenAI from SQL (azure_ai)';
COMMENT ON FUNCTION azure_ai_internal.float4_array(bytea) IS 'real[] from float32 bytes';
COMMENT ON FUNCTION azure_ai_internal.openai_embedding(
    text, text, integer, integer, boolean, integer, integer
) IS 'The core of azure_openai.create_embeddings(text, text, ...)';
COMMENT ON FUNCTION azure_ai_internal.openai_embedding_batch(
    text[], text[], integer[], integer[], boolean[], integer[], integer[]
) IS 'The batch form of azure_ai_internal.openai_embedding';
COMMENT ON FUNCTION azure_ai_internal.openai_embeddings(
    text, text[], integer, integer, integer, boolean, integer, integer
) IS 'The core of azure_openai.create_embeddings(text, text[], ...)';
COMMENT ON FUNCTION azure_openai.create_embeddings(
    text, text, integer, integer, boolean, integer, integer
) IS 'The embedding of a text, from an Azure OpenAI deployment or an OpenAI-compatible server';
COMMENT ON FUNCTION azure_openai.create_embeddings(
    text, text[], integer, integer, integer, boolean, integer, integer
) IS 'The embeddings of texts, one row each in input order, in requests of batch_size';
