-- azure_local_ai 0.1.3: the batch form of the single-text create_embeddings. When the
-- native library is loaded (shared_preload_libraries), a query that embeds one text per
-- row has its rows gathered into batches, embedded as the array form does. Users never
-- call it directly.
\echo Use "ALTER EXTENSION azure_local_ai UPDATE TO '0.1.3'" to load this file. \quit

CREATE FUNCTION azure_local_ai_internal._embedding_batch(
    model_uri text[], input text[], timeout_ms integer[]
) RETURNS bytea[]
    LANGUAGE azure_local_ai_plpython IMMUTABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import local_ai
    return local_ai.create_embedding_batch(model_uri, input, timeout_ms)
$$;

COMMENT ON FUNCTION azure_local_ai_internal._embedding_batch(text[], text[], integer[]) IS
    'Embeddings of many rows'' texts as float32 bytes, in order (azure_local_ai.create_embeddings)';
