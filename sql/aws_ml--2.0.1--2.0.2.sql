-- aws_ml 2.0.2: batch forms of the per-row functions. When the native library is
-- loaded (shared_preload_libraries), a query that calls a per-row function once per row
-- has its rows gathered into batches, and the batch form is called once per batch: one
-- array per argument, one result per row, in order. Users never call them directly.
\echo Use "ALTER EXTENSION aws_ml UPDATE TO '2.0.2'" to load this file. \quit

CREATE TYPE aws_ml_internal.sentiment AS (sentiment varchar, confidence real);
CREATE TYPE aws_ml_internal.embedding AS (embedding float8[]);

CREATE FUNCTION aws_ml_internal.detect_sentiment_batch(
    input_text varchar[], language_code varchar[], max_rows_per_batch integer[]
) RETURNS aws_ml_internal.sentiment[]
    LANGUAGE aws_ml_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import aws_ml
    return aws_ml.detect_sentiment_batch(input_text, language_code, max_rows_per_batch)
$$;

-- The variadic arguments of each row as its CSV fields: field_counts[i] of them per row.
CREATE FUNCTION aws_ml_internal.invoke_endpoint_batch(
    endpoint_name varchar[], max_rows_per_batch integer[], fields text[], field_counts integer[]
) RETURNS varchar[]
    LANGUAGE aws_ml_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import aws_ml
    return aws_ml.invoke_endpoint_batch(endpoint_name, max_rows_per_batch, fields, field_counts)
$$;

CREATE FUNCTION aws_ml_internal.invoke_model_batch(
    model_id varchar[], content_type text[], accept_type text[], model_input text[]
) RETURNS varchar[]
    LANGUAGE aws_ml_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import aws_ml
    return aws_ml.invoke_model_batch(model_id, content_type, accept_type, model_input)
$$;

CREATE FUNCTION aws_ml_internal.invoke_model_get_embeddings_batch(
    model_id varchar[], content_type text[], json_key text[], model_input text[]
) RETURNS aws_ml_internal.embedding[]
    LANGUAGE aws_ml_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import aws_ml
    return aws_ml.invoke_model_get_embeddings_batch(model_id, content_type, json_key, model_input)
$$;

-- The batching node calls them without a privilege check of its own: it checks EXECUTE
-- on the per-row function each replaces.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA aws_ml_internal FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA aws_ml_internal TO aws_ml;

COMMENT ON TYPE aws_ml_internal.sentiment IS 'A result of aws_comprehend.detect_sentiment';
COMMENT ON TYPE aws_ml_internal.embedding IS
    'A result of aws_bedrock.invoke_model_get_embeddings, as an array element';
COMMENT ON FUNCTION aws_ml_internal.detect_sentiment_batch(varchar[], varchar[], integer[]) IS
    'aws_comprehend.detect_sentiment for many rows: BatchDetectSentiment';
COMMENT ON FUNCTION aws_ml_internal.invoke_endpoint_batch(varchar[], integer[], text[], integer[]) IS
    'aws_sagemaker.invoke_endpoint for many rows: multi-record CSV requests';
COMMENT ON FUNCTION aws_ml_internal.invoke_model_batch(varchar[], text[], text[], text[]) IS
    'aws_bedrock.invoke_model for many rows: requests in parallel';
COMMENT ON FUNCTION aws_ml_internal.invoke_model_get_embeddings_batch(varchar[], text[], text[], text[]) IS
    'aws_bedrock.invoke_model_get_embeddings for many rows: requests in parallel';
