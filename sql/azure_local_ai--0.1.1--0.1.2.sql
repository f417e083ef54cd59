-- azure_local_ai 0.1.2: a database owner who is not a superuser may create it (trusted),
-- manages its settings and models in this database, and registers models only from the
-- model directory; internal helpers leave the documented schema; every object says what
-- it is.
\echo Use "ALTER EXTENSION azure_local_ai UPDATE TO '0.1.2'" to load this file. \quit

-- Helpers that users never call directly: out of \df azure_local_ai.*. The embedding
-- functions call them, with their callers' rights, so the schema is usable by all.
CREATE SCHEMA azure_local_ai_internal;
GRANT USAGE ON SCHEMA azure_local_ai_internal TO PUBLIC;
ALTER FUNCTION azure_local_ai.plpython_handler() SET SCHEMA azure_local_ai_internal;
ALTER FUNCTION azure_local_ai.plpython_validator(oid) SET SCHEMA azure_local_ai_internal;
ALTER FUNCTION azure_local_ai.float4_array(bytea) SET SCHEMA azure_local_ai_internal;
ALTER FUNCTION azure_local_ai._embedding(text, text, integer) SET SCHEMA azure_local_ai_internal;
ALTER FUNCTION azure_local_ai._embeddings(text, text[], bigint, integer)
    SET SCHEMA azure_local_ai_internal;

-- The single-text form names its helpers by reference and follows them; this one names
-- them in its text.
CREATE OR REPLACE FUNCTION azure_local_ai.create_embeddings(
    model_uri text,
    inputs text[],
    batch_size bigint DEFAULT 128,
    timeout_ms integer DEFAULT 3600000
) RETURNS TABLE (embedding real[])
    LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT azure_local_ai_internal.float4_array(e)
    FROM azure_local_ai_internal._embeddings(
        model_uri,
        CASE WHEN array_ndims(inputs) > 1 THEN inputs
             ELSE ARRAY(SELECT substr(unnest(inputs), 1, 262144)) END,
        batch_size,
        timeout_ms) AS e
$$;

-- Models come from the model directory, fixed at install time, unless the caller may
-- read any file of the server (a superuser, or a member of pg_read_server_files).
CREATE OR REPLACE FUNCTION azure_local_ai.model_register(
    model_uri text,
    model_path text,
    tokenizer_path text DEFAULT NULL,
    timeout_ms integer DEFAULT 3600000
) RETURNS bigint
    LANGUAGE azure_local_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import local_ai
    return local_ai.model_register(model_uri, model_path, tokenizer_path, timeout_ms,
                                   "@MODELDIR@")
$$;

-- Privileges: besides azure_local_ai_setting_manager (a role of the whole cluster), the
-- extension's owner may change the settings and models of this database, and grant that
-- to others here. A trusted extension runs this script as a superuser, who owns the
-- functions; @extowner@ is the role that created (or owns) the extension.
GRANT EXECUTE ON FUNCTION
    azure_local_ai.set_setting(text, text, integer),
    azure_local_ai.set_setting(text[], text[], integer),
    azure_local_ai.model_register(text, text, text, integer),
    azure_local_ai.model_unregister(text, integer)
TO @extowner@ WITH GRANT OPTION;
-- So that the owner's pg_dump of the database works, and its restore carries the
-- settings. Registry rows are written only by model_register: a row names the files the
-- server reads, so a restore by the owner leaves registered models to register again.
GRANT SELECT, INSERT ON azure_local_ai.settings TO @extowner@;
GRANT SELECT ON azure_local_ai.models, azure_local_ai.models_id_seq TO @extowner@;

COMMENT ON SCHEMA azure_local_ai IS 'Embeddings computed in the database (azure_local_ai)';
COMMENT ON SCHEMA azure_local_ai_internal IS
    'Internal helpers of azure_local_ai; not for direct use';
COMMENT ON FUNCTION azure_local_ai_internal.plpython_handler() IS
    'Call handler of the language azure_local_ai_plpython (PL/Python 3)';
COMMENT ON FUNCTION azure_local_ai_internal.plpython_validator(oid) IS
    'Validator of the language azure_local_ai_plpython (PL/Python 3)';
COMMENT ON LANGUAGE azure_local_ai_plpython IS
    'PL/Python 3 for the functions of azure_local_ai; untrusted: only superusers write in it';
COMMENT ON FUNCTION azure_local_ai_internal.float4_array(bytea) IS
    'The real[] of the float32 values in the bytes (an embedding from Python)';
COMMENT ON FUNCTION azure_local_ai_internal._embedding(text, text, integer) IS
    'One embedding as float32 bytes (azure_local_ai.create_embeddings)';
COMMENT ON FUNCTION azure_local_ai_internal._embeddings(text, text[], bigint, integer) IS
    'Embeddings as float32 bytes, in input order (azure_local_ai.create_embeddings)';
COMMENT ON TABLE azure_local_ai.settings IS
    'Settings of the ONNX Runtime sessions; read and changed through '
    'azure_local_ai.get_setting and azure_local_ai.set_setting';
COMMENT ON TABLE azure_local_ai.models IS
    'The model registry: the built-in models and those of azure_local_ai.model_register';
COMMENT ON SEQUENCE azure_local_ai.models_id_seq IS 'Ids of azure_local_ai.models';
COMMENT ON FUNCTION azure_local_ai.model_register(text, text, text, integer) IS
    'Registers an ONNX embedding model under a name: copied into the server''s model store '
    'and checked; non-superusers name files of the model directory';
COMMENT ON FUNCTION azure_local_ai.model_unregister(text, integer) IS
    'Removes a registered model (not a built-in one) from the registry';
COMMENT ON FUNCTION azure_local_ai.model_loaded(text) IS
    'Whether this session has the model in memory';
COMMENT ON FUNCTION azure_local_ai.model_unload(text) IS
    'Frees this session''s copy of the model; the next use loads it again';
COMMENT ON FUNCTION azure_local_ai.model_metadata(text) IS
    'What the registry knows of the model: dimensions, maximum tokens, quantization, files';
COMMENT ON FUNCTION azure_local_ai.get_setting(text, integer) IS
    'The value of a setting (its default when not set)';
COMMENT ON FUNCTION azure_local_ai.get_setting(text[], integer) IS
    'The given settings as jsonb; all of them when keys is empty';
COMMENT ON FUNCTION azure_local_ai.set_setting(text, text, integer) IS
    'Sets a setting (NULL restores its default); applies when a model is next loaded';
COMMENT ON FUNCTION azure_local_ai.set_setting(text[], text[], integer) IS
    'Sets several settings at once, all or none';
