-- aws_ml 2.0: Aurora machine learning from SQL (SageMaker, Comprehend, Bedrock).
\echo Use "CREATE EXTENSION aws_ml" to load this file. \quit

CREATE SCHEMA aws_sagemaker;
CREATE SCHEMA aws_comprehend;
CREATE SCHEMA aws_bedrock;


-- Privileges, as on Aurora: the aws_ml role may use the schemas and call the functions;
-- EXECUTE is revoked from PUBLIC, so other users need a GRANT.
DO $$ BEGIN
    CREATE ROLE aws_ml NOLOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;  -- roles are per cluster, databases are many
END $$;
GRANT USAGE ON SCHEMA aws_sagemaker, aws_comprehend, aws_bedrock TO aws_ml;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA aws_sagemaker, aws_comprehend, aws_bedrock FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA aws_sagemaker, aws_comprehend, aws_bedrock TO aws_ml;
