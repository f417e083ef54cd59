-- aws_ml 2.0.1: a database owner who is not a superuser may create it (trusted) and use
-- it in this database; the SageMaker core and the language handlers leave the documented
-- schemas; every object says what it is. The SQL API is 2.0's, unchanged.
\echo Use "ALTER EXTENSION aws_ml UPDATE TO '2.0.1'" to load this file. \quit

-- Helpers that users never call: out of \df aws_sagemaker.* and aws_ml.*.
CREATE SCHEMA aws_ml_internal;
ALTER FUNCTION aws_ml.plpython_handler() SET SCHEMA aws_ml_internal;
ALTER FUNCTION aws_ml.plpython_validator(oid) SET SCHEMA aws_ml_internal;
ALTER FUNCTION aws_sagemaker._invoke_endpoint(text, integer, text[]) SET SCHEMA aws_ml_internal;

-- Privileges: besides the aws_ml role (of the whole cluster, as on Aurora), the
-- extension's owner may use every function in this database, and grant that to others
-- here. A trusted extension runs this script as a superuser, who owns the functions;
-- @extowner@ is the role that created (or owns) the extension.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA aws_ml_internal FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA aws_ml_internal TO aws_ml;
GRANT USAGE ON SCHEMA aws_sagemaker, aws_comprehend, aws_bedrock, aws_ml
    TO @extowner@ WITH GRANT OPTION;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA aws_sagemaker, aws_comprehend, aws_bedrock, aws_ml
    TO @extowner@ WITH GRANT OPTION;
-- So that the owner's pg_dump of the database, and its restore, carry the settings.
GRANT SELECT, INSERT ON aws_ml.settings TO @extowner@;

COMMENT ON SCHEMA aws_sagemaker IS 'Amazon SageMaker endpoints from SQL (aws_ml)';
COMMENT ON SCHEMA aws_comprehend IS 'Amazon Comprehend from SQL (aws_ml)';
COMMENT ON SCHEMA aws_bedrock IS 'Amazon Bedrock models from SQL (aws_ml)';
COMMENT ON SCHEMA aws_ml IS 'Settings of aws_ml: region, endpoints, credentials, roles';
COMMENT ON SCHEMA aws_ml_internal IS 'Internal helpers of aws_ml; not for direct use';
COMMENT ON FUNCTION aws_ml_internal.plpython_handler() IS
    'Call handler of the language aws_ml_plpython (PL/Python 3)';
COMMENT ON FUNCTION aws_ml_internal.plpython_validator(oid) IS
    'Validator of the language aws_ml_plpython (PL/Python 3)';
COMMENT ON LANGUAGE aws_ml_plpython IS
    'PL/Python 3 for the functions of aws_ml; untrusted: only superusers write in it';
COMMENT ON FUNCTION aws_ml_internal._invoke_endpoint(text, integer, text[]) IS
    'The core of aws_sagemaker.invoke_endpoint: the fields of one CSV record, as text';
COMMENT ON TABLE aws_ml.settings IS
    'Region, endpoint URLs, credentials and roles of aws_ml; read and changed through '
    'aws_ml.get_setting and aws_ml.set_setting';
COMMENT ON FUNCTION aws_ml.set_setting(text, text) IS 'Sets a setting (NULL removes it)';
COMMENT ON FUNCTION aws_ml.get_setting(text) IS 'The value of a setting, or NULL';
COMMENT ON FUNCTION aws_sagemaker.invoke_endpoint(varchar, integer, "any") IS
    'The SageMaker endpoint''s answer to one CSV record of the arguments';
COMMENT ON FUNCTION aws_comprehend.detect_sentiment(varchar, varchar, integer) IS
    'Comprehend''s sentiment of the text, and its confidence';
COMMENT ON FUNCTION aws_bedrock.invoke_model(varchar, text, text, text) IS
    'The Bedrock model''s response body to the request body model_input';
COMMENT ON FUNCTION aws_bedrock.invoke_model_get_embeddings(varchar, text, text, text) IS
    'The numbers under json_key of the Bedrock model''s response (an embedding)';
