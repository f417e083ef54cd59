-- azure_local_ai 0.1.0: embeddings computed inside the database with a local model.
\echo Use "CREATE EXTENSION azure_local_ai" to load this file. \quit

CREATE SCHEMA azure_local_ai;

-- Settings of the ONNX Runtime sessions (thread counts, spinning). pg_dump keeps them.
CREATE TABLE azure_local_ai.settings (
    key text PRIMARY KEY,
    value text NOT NULL
);
SELECT pg_catalog.pg_extension_config_dump('azure_local_ai.settings', '');


-- Privileges: only azure_local_ai_setting_manager members (and superusers) change
-- settings or register models, since a model path is a file the server reads.
DO $$ BEGIN
    CREATE ROLE azure_local_ai_setting_manager NOLOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;  -- roles are per cluster, databases are many
END $$;
GRANT USAGE ON SCHEMA azure_local_ai TO PUBLIC;
