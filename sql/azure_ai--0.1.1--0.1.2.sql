-- azure_ai 0.1.2: the batch form of azure_ml.invoke. When the native library is loaded
-- (shared_preload_libraries), a query that calls azure_ml.invoke once per row has its
-- rows gathered into batches, whose requests are sent in parallel: one array per
-- argument, one result per row, in order. Users never call it directly.
\echo Use "ALTER EXTENSION azure_ai UPDATE TO '0.1.2'" to load this file. \quit

CREATE FUNCTION azure_ai_internal.invoke_batch(
    input_data jsonb[],
    timeout_ms integer[],
    throw_on_error boolean[],
    deployment_name text[],
    max_attempts integer[],
    retry_delay_ms integer[]
) RETURNS jsonb[]
    LANGUAGE azure_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import azure_ml
    return azure_ml.invoke_batch(input_data, timeout_ms, throw_on_error, deployment_name,
                                 max_attempts, retry_delay_ms)
$$;

-- The batching node calls it without a privilege check of its own: it checks EXECUTE on
-- azure_ml.invoke.
REVOKE EXECUTE ON FUNCTION
    azure_ai_internal.invoke_batch(jsonb[], integer[], boolean[], text[], integer[], integer[])
FROM PUBLIC;

COMMENT ON FUNCTION
    azure_ai_internal.invoke_batch(jsonb[], integer[], boolean[], text[], integer[], integer[])
IS 'azure_ml.invoke for many rows: requests in parallel';
