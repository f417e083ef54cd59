-- aws_ml 1.0: Aurora machine learning from SQL: SageMaker and Comprehend.
\echo Use "CREATE EXTENSION aws_ml" to load this file. \quit

CREATE SCHEMA aws_sagemaker;
CREATE SCHEMA aws_comprehend;
CREATE SCHEMA aws_ml;  -- our settings; Aurora configures through IAM roles instead

-- PL/Python under a language name of our own (see azure_ai's install script for why).
-- Every body starts with #BOOT: see python/azure_ai_sim/boot.py.
CREATE FUNCTION aws_ml.plpython_handler() RETURNS language_handler
    LANGUAGE c AS '$libdir/plpython3', 'plpython3_call_handler';
CREATE FUNCTION aws_ml.plpython_validator(oid) RETURNS void
    LANGUAGE c STRICT AS '$libdir/plpython3', 'plpython3_validator';
CREATE LANGUAGE aws_ml_plpython
    HANDLER aws_ml.plpython_handler VALIDATOR aws_ml.plpython_validator;


-- Settings: region, endpoint URLs and credentials, each optional. Without them, the
-- server's own AWS environment applies (AWS_REGION, AWS_ENDPOINT_URL[_<SERVICE>],
-- shared config and credentials files, instance and container roles).
CREATE TABLE aws_ml.settings (
    key text PRIMARY KEY,
    value text NOT NULL
);
SELECT pg_catalog.pg_extension_config_dump('aws_ml.settings', '');

CREATE FUNCTION aws_ml.set_setting(key text, value text) RETURNS void
    LANGUAGE aws_ml_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET log_min_error_statement = panic
AS $$
    #BOOT
    from azure_ai_sim import aws_ml
    aws_ml.set_setting(key, value)
$$;

CREATE FUNCTION aws_ml.get_setting(key text) RETURNS text
    LANGUAGE aws_ml_plpython STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import aws_ml
    return aws_ml.get_setting(key)
$$;


-- SageMaker: one CSV record of the arguments, scored by an endpoint. Only C can take
-- VARIADIC "any": the C function turns the arguments into text and calls the core.
CREATE FUNCTION aws_sagemaker._invoke_endpoint(
    endpoint_name text, max_rows_per_batch integer, fields text[]
) RETURNS text
    LANGUAGE aws_ml_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import aws_ml
    return aws_ml.invoke_endpoint(endpoint_name, max_rows_per_batch, fields)
$$;

CREATE FUNCTION aws_sagemaker.invoke_endpoint(
    endpoint_name varchar,
    max_rows_per_batch int,
    VARIADIC model_input "any",
    OUT model_output varchar
)
    LANGUAGE c VOLATILE COST 5000  -- a network call: the planner should put it last
    AS '$libdir/azure_ai_sim', 'azure_ai_sim_invoke_endpoint';


-- Comprehend: the sentiment of a text, and the score of that sentiment.
CREATE FUNCTION aws_comprehend.detect_sentiment(
    input_text varchar,
    language_code varchar,
    max_rows_per_batch int DEFAULT NULL,
    OUT sentiment varchar,
    OUT confidence real
)
    LANGUAGE aws_ml_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import aws_ml
    return aws_ml.detect_sentiment(input_text, language_code, max_rows_per_batch)
$$;


-- Privileges, as on Aurora: the aws_ml role may use the schemas and call the functions;
-- EXECUTE is revoked from PUBLIC, so other users need the role or a GRANT.
DO $$ BEGIN
    CREATE ROLE aws_ml NOLOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;  -- roles are per cluster, databases are many
END $$;
GRANT USAGE ON SCHEMA aws_sagemaker, aws_comprehend, aws_ml TO aws_ml;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA aws_sagemaker, aws_comprehend, aws_ml FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA aws_sagemaker, aws_comprehend, aws_ml TO aws_ml;
