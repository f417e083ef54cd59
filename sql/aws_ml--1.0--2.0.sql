-- aws_ml 2.0: adds Amazon Bedrock.
\echo Use "ALTER EXTENSION aws_ml UPDATE TO '2.0'" to load this file. \quit

CREATE SCHEMA aws_bedrock;

-- The model's response body, as text; the request body is passed through.
CREATE FUNCTION aws_bedrock.invoke_model(
    model_id varchar,
    content_type text,
    accept_type text,
    model_input text
) RETURNS varchar
    LANGUAGE aws_ml_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import aws_ml
    return aws_ml.invoke_model(model_id, content_type, accept_type, model_input)
$$;

-- The numbers under json_key of the response: an embedding model's vector.
CREATE FUNCTION aws_bedrock.invoke_model_get_embeddings(
    model_id varchar,
    content_type text,
    json_key text,
    model_input text
) RETURNS float8[]
    LANGUAGE aws_ml_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import aws_ml
    return aws_ml.invoke_model_get_embeddings(model_id, content_type, json_key, model_input)
$$;

GRANT USAGE ON SCHEMA aws_bedrock TO aws_ml;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA aws_bedrock FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA aws_bedrock TO aws_ml;
