-- azure_local_ai 0.1.0: embeddings computed inside the database with a local model.
\echo Use "CREATE EXTENSION azure_local_ai" to load this file. \quit

CREATE SCHEMA azure_local_ai;

-- PL/Python under a language name of our own (see azure_ai's install script for why).
-- Every body starts with #BOOT: see python/azure_ai_sim/boot.py.
CREATE FUNCTION azure_local_ai.plpython_handler() RETURNS language_handler
    LANGUAGE c AS '$libdir/plpython3', 'plpython3_call_handler';
CREATE FUNCTION azure_local_ai.plpython_validator(oid) RETURNS void
    LANGUAGE c STRICT AS '$libdir/plpython3', 'plpython3_validator';
CREATE LANGUAGE azure_local_ai_plpython
    HANDLER azure_local_ai.plpython_handler VALIDATOR azure_local_ai.plpython_validator;


-- Settings of the ONNX Runtime sessions (thread counts, spinning). pg_dump keeps them.
CREATE TABLE azure_local_ai.settings (
    key text PRIMARY KEY,
    value text NOT NULL
);
SELECT pg_catalog.pg_extension_config_dump('azure_local_ai.settings', '');

-- Registered models. The built-in ones come from this script on every CREATE EXTENSION,
-- so pg_dump keeps only the others.
CREATE TABLE azure_local_ai.models (
    id bigserial PRIMARY KEY,
    model_uri text NOT NULL UNIQUE,
    model_path text NOT NULL,
    tokenizer_path text NOT NULL,
    metadata jsonb NOT NULL,
    builtin boolean NOT NULL DEFAULT false,
    registered_at timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('azure_local_ai.models', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('azure_local_ai.models_id_seq', '');

INSERT INTO azure_local_ai.models (model_uri, model_path, tokenizer_path, metadata, builtin)
VALUES
    ('multilingual-e5-small:v1',
     '@MODELDIR@/multilingual-e5-small/v1/model.onnx',
     '@MODELDIR@/multilingual-e5-small/v1/sentencepiece.model',
     '{"dimensions": 384, "max_tokens": 512, "quantization": "none"}', true),
    ('multilingual-e5-small:v1-int8',
     '@MODELDIR@/multilingual-e5-small/v1/model-int8.onnx',
     '@MODELDIR@/multilingual-e5-small/v1/sentencepiece.model',
     '{"dimensions": 384, "max_tokens": 512, "quantization": "int8 per channel"}', true);


-- Embeddings. IMMUTABLE, as on Azure, so that a generated column can use it:
--   doc_vector vector(384) GENERATED ALWAYS AS
--       (azure_local_ai.create_embeddings('multilingual-e5-small:v1', doc_contents)::vector) STORED
-- Python hands each embedding over as the bytes of its float32 values, and a C function
-- makes the real[]: PL/Python would format and parse every value as text.
CREATE FUNCTION azure_local_ai.float4_array(bytea) RETURNS real[]
    LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
    AS '$libdir/azure_ai_sim', 'azure_ai_sim_float4_array';

CREATE FUNCTION azure_local_ai._embedding(model_uri text, input text, timeout_ms integer)
    RETURNS bytea
    LANGUAGE azure_local_ai_plpython IMMUTABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import local_ai
    return local_ai.create_embedding(model_uri, input, timeout_ms)
$$;

CREATE FUNCTION azure_local_ai._embeddings(
    model_uri text, inputs text[], batch_size bigint, timeout_ms integer
) RETURNS SETOF bytea
    LANGUAGE azure_local_ai_plpython IMMUTABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import local_ai
    return local_ai.create_embeddings(model_uri, inputs, batch_size, timeout_ms)
$$;

CREATE FUNCTION azure_local_ai.create_embeddings(
    model_uri text,
    input text,
    timeout_ms integer DEFAULT 3600000
) RETURNS real[]
    LANGUAGE sql IMMUTABLE
    RETURN azure_local_ai.float4_array(azure_local_ai._embedding(model_uri, input, timeout_ms));

-- One row per input, in input order.
CREATE FUNCTION azure_local_ai.create_embeddings(
    model_uri text,
    inputs text[],
    batch_size bigint DEFAULT 128,
    timeout_ms integer DEFAULT 3600000
) RETURNS TABLE (embedding real[])
    LANGUAGE sql IMMUTABLE
AS $$
    SELECT azure_local_ai.float4_array(e)
    FROM azure_local_ai._embeddings(model_uri, inputs, batch_size, timeout_ms) AS e
$$;

-- With an id per input (any type), kept with its embedding.
CREATE FUNCTION azure_local_ai.create_embeddings(
    model_uri text,
    inputs text[],
    ids anyarray,
    batch_size bigint DEFAULT 128,
    timeout_ms integer DEFAULT 3600000
) RETURNS TABLE (id anyelement, embedding real[])
    LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF cardinality(ids) IS DISTINCT FROM cardinality(inputs) THEN
        RAISE EXCEPTION 'azure_local_ai.create_embeddings: ids has % elements, inputs has %',
            cardinality(ids), cardinality(inputs) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
        SELECT ids[array_lower(ids, 1) + e.n::integer - 1], e.embedding
        FROM azure_local_ai.create_embeddings(model_uri, inputs, batch_size, timeout_ms)
             WITH ORDINALITY AS e (embedding, n)
        ORDER BY e.n;
END
$$;


-- The model registry. A model path is a file the server reads: only managers register.
CREATE FUNCTION azure_local_ai.model_register(
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
    return local_ai.model_register(model_uri, model_path, tokenizer_path, timeout_ms)
$$;

CREATE FUNCTION azure_local_ai.model_unregister(
    model_uri text,
    timeout_ms integer DEFAULT 3600000
) RETURNS void
    LANGUAGE azure_local_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import local_ai
    local_ai.model_unregister(model_uri)
$$;

-- Whether this session has the model in memory.
CREATE FUNCTION azure_local_ai.model_loaded(model_uri text) RETURNS boolean
    LANGUAGE azure_local_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import local_ai
    return local_ai.model_loaded(model_uri)
$$;

-- Frees this session's copy; the next use loads it again.
CREATE FUNCTION azure_local_ai.model_unload(model_uri text) RETURNS void
    LANGUAGE azure_local_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import local_ai
    local_ai.model_unload(model_uri)
$$;

CREATE FUNCTION azure_local_ai.model_metadata(model_uri text) RETURNS jsonb
    LANGUAGE azure_local_ai_plpython STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import local_ai
    return local_ai.model_metadata(model_uri)
$$;


-- Settings: intra_op_parallelism, inter_op_parallelism, spin_control. A change applies
-- when a model is next loaded.
CREATE FUNCTION azure_local_ai.get_setting(key text, timeout_ms integer DEFAULT 3600000)
    RETURNS text
    LANGUAGE azure_local_ai_plpython STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import local_ai
    return local_ai.get_setting(key)
$$;

-- All settings when keys is empty.
CREATE FUNCTION azure_local_ai.get_setting(
    keys text[] DEFAULT ARRAY[]::text[],
    timeout_ms integer DEFAULT 3600000
) RETURNS jsonb
    LANGUAGE azure_local_ai_plpython STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import local_ai
    return local_ai.get_settings(keys)
$$;

CREATE FUNCTION azure_local_ai.set_setting(
    key text,
    value text,
    timeout_ms integer DEFAULT 3600000
) RETURNS void
    LANGUAGE azure_local_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import local_ai
    local_ai.set_settings([key], [value])
$$;

CREATE FUNCTION azure_local_ai.set_setting(
    keys text[],
    "values" text[],
    timeout_ms integer DEFAULT 3600000
) RETURNS void
    LANGUAGE azure_local_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import local_ai
    local_ai.set_settings(keys, values)
$$;


-- Privileges: only azure_local_ai_setting_manager members (and superusers) change
-- settings or register models, since a model path is a file the server reads.
DO $$ BEGIN
    CREATE ROLE azure_local_ai_setting_manager NOLOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;  -- roles are per cluster, databases are many
END $$;
GRANT USAGE ON SCHEMA azure_local_ai TO PUBLIC;
REVOKE EXECUTE ON FUNCTION
    azure_local_ai.set_setting(text, text, integer),
    azure_local_ai.set_setting(text[], text[], integer),
    azure_local_ai.model_register(text, text, text, integer),
    azure_local_ai.model_unregister(text, integer)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    azure_local_ai.set_setting(text, text, integer),
    azure_local_ai.set_setting(text[], text[], integer),
    azure_local_ai.model_register(text, text, text, integer),
    azure_local_ai.model_unregister(text, integer)
TO azure_local_ai_setting_manager;
