-- ml_pipeline 0.1.2: the usage ledger of every remote call of ours, and budgets that cap
-- it per day.
\echo Use "ALTER EXTENSION ml_pipeline UPDATE TO '0.1.2'" to load this file. \quit

-- The ledger lives in the server's shared memory (extension/usage.c), counted by every
-- call of every database whether or not its transaction commits, and saved to a file
-- that outlives restarts. Server-wide, so only for those who may read all statistics.
CREATE FUNCTION ml_pipeline_internal.usage() RETURNS TABLE (
    day date, service text, endpoint text, requests bigint, failed bigint, rows bigint,
    bytes_sent bigint, bytes_received bigint, input_tokens bigint, output_tokens bigint
)
    LANGUAGE c VOLATILE AS '$libdir/azure_ai_sim', 'azure_ai_sim_usage';

CREATE VIEW ml_pipeline.usage AS SELECT * FROM ml_pipeline_internal.usage();

-- Caps per UTC day, on a whole service (endpoint '*') or one endpoint or model of it,
-- as the ledger names them; NULL: no cap. Read once per statement by every call.
CREATE TABLE ml_pipeline.budgets (
    service text NOT NULL
        CHECK (service IN ('azure_ml', 'sagemaker', 'comprehend', 'bedrock', 'sts')),
    endpoint text NOT NULL DEFAULT '*',
    requests_per_day bigint CHECK (requests_per_day >= 0),
    rows_per_day bigint CHECK (rows_per_day >= 0),
    tokens_per_day bigint CHECK (tokens_per_day >= 0),
    PRIMARY KEY (service, endpoint)
);
SELECT pg_catalog.pg_extension_config_dump('ml_pipeline.budgets', '');

REVOKE ALL ON FUNCTION ml_pipeline_internal.usage() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ml_pipeline_internal.usage() TO pg_read_all_stats;
GRANT SELECT ON ml_pipeline.usage TO pg_read_all_stats;
GRANT SELECT ON ml_pipeline.budgets TO PUBLIC;

COMMENT ON FUNCTION ml_pipeline_internal.usage() IS 'The rows of the view ml_pipeline.usage';
COMMENT ON VIEW ml_pipeline.usage IS
    'Remote calls of the server, per UTC day, service and endpoint: requests, rows, bytes, tokens';
COMMENT ON TABLE ml_pipeline.budgets IS
    'Caps per UTC day on the calls to a service (endpoint ''*'') or one of its endpoints';
