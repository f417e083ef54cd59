-- azure_ai 0.1.4: azure_ml.score's core takes json. A row or an array becomes json text
-- (to_json) in a fraction of the time it takes to become jsonb, whose numbers are parsed
-- into numerics only to be printed again for the request. The jsonb and text forms call
-- the core through a cast. Its batch form comes in parts: the batching node sends the
-- first rows' requests on their way while it reads the later rows. The batch forms of
-- azure_ml.score and azure_ml.invoke return their results as text, which the node reads
-- as jsonb: PL/Python makes a text array of 10,000 strings in a fifteenth of the time it
-- takes to make a jsonb array.
\echo Use "ALTER EXTENSION azure_ai UPDATE TO '0.1.4'" to load this file. \quit

CREATE FUNCTION azure_ml.score(
    input_data json,
    timeout_ms integer DEFAULT NULL,
    throw_on_error boolean DEFAULT true,
    deployment_name text DEFAULT NULL,
    max_attempts integer DEFAULT 1,
    retry_delay_ms integer DEFAULT 1000,
    max_batch_count integer DEFAULT NULL
) RETURNS jsonb
    LANGUAGE azure_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import scoring
    return scoring.score(input_data, timeout_ms, throw_on_error, deployment_name,
                         max_attempts, retry_delay_ms, max_batch_count)
$$;

-- The other forms are inlinable SQL (no SET clause, not SECURITY DEFINER), so that the
-- batching node finds the core's call inside; what they call is schema-qualified.
CREATE OR REPLACE FUNCTION azure_ml.score(
    input_data jsonb,
    timeout_ms integer DEFAULT NULL,
    throw_on_error boolean DEFAULT true,
    deployment_name text DEFAULT NULL,
    max_attempts integer DEFAULT 1,
    retry_delay_ms integer DEFAULT 1000,
    max_batch_count integer DEFAULT NULL
) RETURNS jsonb
    LANGUAGE sql VOLATILE
AS $$
    SELECT azure_ml.score(input_data::pg_catalog.json, timeout_ms, throw_on_error,
                          deployment_name, max_attempts, retry_delay_ms, max_batch_count)
$$;

CREATE OR REPLACE FUNCTION azure_ml.score(
    input_data anyelement,
    timeout_ms integer DEFAULT NULL,
    throw_on_error boolean DEFAULT true,
    deployment_name text DEFAULT NULL,
    max_attempts integer DEFAULT 1,
    retry_delay_ms integer DEFAULT 1000,
    max_batch_count integer DEFAULT NULL
) RETURNS jsonb
    LANGUAGE sql VOLATILE
AS $$
    SELECT azure_ml.score(pg_catalog.to_json(input_data), timeout_ms, throw_on_error,
                          deployment_name, max_attempts, retry_delay_ms, max_batch_count)
$$;

CREATE OR REPLACE FUNCTION azure_ml.score(
    input_data text,
    timeout_ms integer DEFAULT NULL,
    throw_on_error boolean DEFAULT true,
    deployment_name text DEFAULT NULL,
    max_attempts integer DEFAULT 1,
    retry_delay_ms integer DEFAULT 1000,
    max_batch_count integer DEFAULT NULL
) RETURNS jsonb
    LANGUAGE sql VOLATILE
AS $$
    SELECT azure_ml.score(input_data::pg_catalog.json, timeout_ms, throw_on_error,
                          deployment_name, max_attempts, retry_delay_ms, max_batch_count)
$$;

DROP FUNCTION azure_ai_internal.score_batch(
    jsonb[], integer[], boolean[], text[], integer[], integer[], integer[]
);

-- The batch form in parts (extension/batch.c): the node calls it for each 1,000 rows of a
-- batch as it reads them, with the batch's number, its size in rows (which sizes the
-- requests) and whether this is the last part; that call answers for all the rows.
CREATE FUNCTION azure_ai_internal.score_batch(
    input_data json[],
    timeout_ms integer[],
    throw_on_error boolean[],
    deployment_name text[],
    max_attempts integer[],
    retry_delay_ms integer[],
    max_batch_count integer[],
    batch bigint,
    batch_rows integer,
    last boolean
) RETURNS text[]
    LANGUAGE azure_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import scoring
    return scoring.score_batch(input_data, timeout_ms, throw_on_error, deployment_name,
                               max_attempts, retry_delay_ms, max_batch_count, batch,
                               batch_rows, last)
$$;

-- The batching node calls it without a privilege check of its own: it checks EXECUTE on
-- azure_ml.score.
REVOKE EXECUTE ON FUNCTION azure_ai_internal.score_batch(
    json[], integer[], boolean[], text[], integer[], integer[], integer[], bigint, integer,
    boolean
) FROM PUBLIC;

DROP FUNCTION azure_ai_internal.invoke_batch(
    jsonb[], integer[], boolean[], text[], integer[], integer[]
);

CREATE FUNCTION azure_ai_internal.invoke_batch(
    input_data jsonb[],
    timeout_ms integer[],
    throw_on_error boolean[],
    deployment_name text[],
    max_attempts integer[],
    retry_delay_ms integer[]
) RETURNS text[]
    LANGUAGE azure_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import azure_ml
    return azure_ml.invoke_batch(input_data, timeout_ms, throw_on_error, deployment_name,
                                 max_attempts, retry_delay_ms)
$$;

REVOKE EXECUTE ON FUNCTION
    azure_ai_internal.invoke_batch(jsonb[], integer[], boolean[], text[], integer[], integer[])
FROM PUBLIC;

COMMENT ON FUNCTION azure_ml.score(json, integer, boolean, text, integer, integer, integer) IS
    'One row''s prediction from the Azure ML endpoint, the request shaped by its swagger';
COMMENT ON FUNCTION azure_ml.score(jsonb, integer, boolean, text, integer, integer, integer)
IS 'azure_ml.score of a jsonb value';
COMMENT ON FUNCTION azure_ai_internal.score_batch(
    json[], integer[], boolean[], text[], integer[], integer[], integer[], bigint, integer,
    boolean
) IS 'azure_ml.score for many rows, in parts: shared requests, several at once';
COMMENT ON FUNCTION
    azure_ai_internal.invoke_batch(jsonb[], integer[], boolean[], text[], integer[], integer[])
IS 'azure_ml.invoke for many rows: requests in parallel';
