-- azure_ai 0.1.0: the azure_ai API of Azure Database for PostgreSQL.
\echo Use "CREATE EXTENSION azure_ai" to load this file. \quit

CREATE SCHEMA azure_ai;
CREATE SCHEMA azure_ml;

-- PL/Python under a language name of our own: a language belongs to one extension, and
-- requiring plpython3u would make the documented `CREATE EXTENSION azure_ai;` fail
-- without CASCADE. Every body starts with #BOOT, which `make install` replaces with the
-- prologue of python/azure_ai_sim/boot.py (find the package, check its version).
CREATE FUNCTION azure_ai.plpython_handler() RETURNS language_handler
    LANGUAGE c AS '$libdir/plpython3', 'plpython3_call_handler';
CREATE FUNCTION azure_ai.plpython_validator(oid) RETURNS void
    LANGUAGE c STRICT AS '$libdir/plpython3', 'plpython3_validator';
CREATE LANGUAGE azure_ai_plpython
    HANDLER azure_ai.plpython_handler VALIDATOR azure_ai.plpython_validator;


-- Settings: endpoints, keys and auth types of the Azure services. pg_dump keeps them.
CREATE TABLE azure_ai.settings (
    key text PRIMARY KEY,
    value text NOT NULL
);
SELECT pg_catalog.pg_extension_config_dump('azure_ai.settings', '');

-- NULL as value removes the setting. log_min_error_statement keeps a statement that
-- fails here, and the key it may carry, out of the server log.
CREATE FUNCTION azure_ai.set_setting(key text, value text) RETURNS void
    LANGUAGE azure_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET log_min_error_statement = panic
AS $$
    #BOOT
    from azure_ai_sim import azure_ai
    azure_ai.set_setting(key, value)
$$;

CREATE FUNCTION azure_ai.get_setting(key text) RETURNS text
    LANGUAGE azure_ai_plpython STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import azure_ai
    return azure_ai.get_setting(key)
$$;

-- Azure ML: score input_data on the endpoint of the azure_ml.scoring_endpoint setting.
-- SECURITY DEFINER: it reads the endpoint key, which its callers may not read.
CREATE FUNCTION azure_ml.invoke(
    input_data jsonb,
    timeout_ms integer DEFAULT NULL,
    throw_on_error boolean DEFAULT true,
    deployment_name text DEFAULT NULL,
    max_attempts integer DEFAULT 1,
    retry_delay_ms integer DEFAULT 1000
) RETURNS jsonb
    LANGUAGE azure_ai_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import azure_ml
    return azure_ml.invoke(input_data, timeout_ms, throw_on_error, deployment_name,
                           max_attempts, retry_delay_ms)
$$;

-- Newer Azure material calls invoke(input, deployment) by position.
CREATE FUNCTION azure_ml.invoke(input jsonb, deployment text) RETURNS jsonb
    LANGUAGE sql VOLATILE
    RETURN azure_ml.invoke(input, deployment_name => deployment);

-- The name of the first previews.
CREATE FUNCTION azure_ml.inference(
    input_data jsonb,
    timeout_ms integer DEFAULT NULL,
    throw_on_error boolean DEFAULT true,
    deployment_name text DEFAULT NULL,
    max_attempts integer DEFAULT 1,
    retry_delay_ms integer DEFAULT 1000
) RETURNS jsonb
    LANGUAGE sql VOLATILE
    RETURN azure_ml.invoke(input_data, timeout_ms, throw_on_error, deployment_name,
                           max_attempts, retry_delay_ms);

-- The version of the code this session runs.
CREATE FUNCTION azure_ai.version() RETURNS text
    LANGUAGE azure_ai_plpython STABLE PARALLEL SAFE
AS $$
    #BOOT
    from azure_ai_sim import azure_ai
    return azure_ai.version()
$$;


-- Privileges: settings hold keys, so only superusers and azure_ai_settings_manager
-- members may read or change them.
DO $$ BEGIN
    CREATE ROLE azure_ai_settings_manager NOLOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;  -- roles are per cluster, databases are many
END $$;
GRANT USAGE ON SCHEMA azure_ai, azure_ml TO PUBLIC;
REVOKE EXECUTE ON FUNCTION azure_ai.set_setting(text, text), azure_ai.get_setting(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION azure_ai.set_setting(text, text), azure_ai.get_setting(text)
    TO azure_ai_settings_manager;
