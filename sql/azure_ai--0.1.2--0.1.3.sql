-- azure_ai 0.1.3: azure_ml.score, one row's prediction from its input, as Azure Stream
-- Analytics' machine-learning functions give it: the request is built in the shape the
-- endpoint's swagger describes (or the setting azure_ml.request_format names), and in
-- batch mode the rows of a batch share requests, sent several at once.
\echo Use "ALTER EXTENSION azure_ai UPDATE TO '0.1.3'" to load this file. \quit

CREATE FUNCTION azure_ml.score(
    input_data jsonb,
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

-- A row (of a table, or ROW(...)) or an array, as JSON: a row's fields by name, an
-- array's elements in order. No SET clause, so that the planner inlines it and the
-- batching node finds the call inside; what it calls is schema-qualified.
CREATE FUNCTION azure_ml.score(
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
    SELECT azure_ml.score(pg_catalog.to_jsonb(input_data), timeout_ms, throw_on_error,
                          deployment_name, max_attempts, retry_delay_ms, max_batch_count)
$$;

-- A JSON literal, '{"distance": 5.8, ...}', without a cast (with only jsonb and
-- anyelement, such a call would be ambiguous).
CREATE FUNCTION azure_ml.score(
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
    SELECT azure_ml.score(input_data::pg_catalog.jsonb, timeout_ms, throw_on_error,
                          deployment_name, max_attempts, retry_delay_ms, max_batch_count)
$$;

CREATE FUNCTION azure_ai_internal.score_batch(
    input_data jsonb[],
    timeout_ms integer[],
    throw_on_error boolean[],
    deployment_name text[],
    max_attempts integer[],
    retry_delay_ms integer[],
    max_batch_count integer[]
) RETURNS jsonb[]
    LANGUAGE azure_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import scoring
    return scoring.score_batch(input_data, timeout_ms, throw_on_error, deployment_name,
                               max_attempts, retry_delay_ms, max_batch_count)
$$;

-- The batching node calls it without a privilege check of its own: it checks EXECUTE on
-- azure_ml.score.
REVOKE EXECUTE ON FUNCTION azure_ai_internal.score_batch(
    jsonb[], integer[], boolean[], text[], integer[], integer[], integer[]
) FROM PUBLIC;

COMMENT ON FUNCTION azure_ml.score(jsonb, integer, boolean, text, integer, integer, integer) IS
    'One row''s prediction from the Azure ML endpoint, the request shaped by its swagger';
COMMENT ON FUNCTION
    azure_ml.score(anyelement, integer, boolean, text, integer, integer, integer)
IS 'azure_ml.score of a row (its fields by name) or an array (its elements in order)';
COMMENT ON FUNCTION azure_ml.score(text, integer, boolean, text, integer, integer, integer)
IS 'azure_ml.score of JSON text';
COMMENT ON FUNCTION azure_ai_internal.score_batch(
    jsonb[], integer[], boolean[], text[], integer[], integer[], integer[]
) IS 'azure_ml.score for many rows: shared requests, several at once';
