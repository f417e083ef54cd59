-- azure_ai_sim demo: SQL from the Azure Database for PostgreSQL and Aurora docs,
-- running on a plain PostgreSQL. psql prints each statement, then its result.

-- Azure: install azure_ai (no CASCADE needed) and configure an Azure ML endpoint.
CREATE EXTENSION IF NOT EXISTS azure_ai;
SELECT azure_ai.version();
select azure_ai.set_setting('azure_ml.scoring_endpoint','https://x.example/score');
select azure_ai.set_setting('azure_ml.endpoint_key', 'demo-endpoint-key');
select azure_ai.get_setting('azure_ml.scoring_endpoint');
SELECT azure_ai.set_setting('azure_openai.auth_type', 'managed-identity');
SELECT azure_ai.get_setting('azure_openai.auth_type');

-- Azure: local embeddings; CASCADE pulls in pgvector.
CREATE EXTENSION IF NOT EXISTS azure_local_ai CASCADE;

-- Aurora: machine learning; CASCADE pulls in aws_commons, as in the AWS docs.
CREATE EXTENSION IF NOT EXISTS aws_ml CASCADE;

SELECT extname, extversion FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY extname;

-- Mistakes get errors that name the setting and never echo a value (both fail on purpose).
\set ON_ERROR_STOP off
\set SHOW_CONTEXT never
SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', 'x.example/score');
SELECT azure_ai.get_setting('azure_ml.endpointkey');
