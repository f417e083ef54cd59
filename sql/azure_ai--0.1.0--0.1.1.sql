-- azure_ai 0.1.1: a database owner who is not a superuser may create it (trusted), and
-- manages its settings in this database; the language handlers leave the documented
-- schemas; every object says what it is.
\echo Use "ALTER EXTENSION azure_ai UPDATE TO '0.1.1'" to load this file. \quit

-- Helpers that users never call: out of \df azure_ai.*.
CREATE SCHEMA azure_ai_internal;
ALTER FUNCTION azure_ai.plpython_handler() SET SCHEMA azure_ai_internal;
ALTER FUNCTION azure_ai.plpython_validator(oid) SET SCHEMA azure_ai_internal;

-- Privileges: besides azure_ai_settings_manager (a role of the whole cluster, as on
-- Azure), the extension's owner may read and change the settings of this database, and
-- grant that to others here. A trusted extension runs this script as a superuser, who
-- owns the functions; @extowner@ is the role that created (or owns) the extension.
GRANT EXECUTE ON FUNCTION azure_ai.set_setting(text, text), azure_ai.get_setting(text)
    TO @extowner@ WITH GRANT OPTION;
-- So that the owner's pg_dump of the database, and its restore, carry the settings.
GRANT SELECT, INSERT ON azure_ai.settings TO @extowner@;

COMMENT ON SCHEMA azure_ai IS 'Settings of the Azure services (azure_ai)';
COMMENT ON SCHEMA azure_ml IS 'Azure Machine Learning endpoints from SQL (azure_ai)';
COMMENT ON SCHEMA azure_ai_internal IS 'Internal helpers of azure_ai; not for direct use';
COMMENT ON FUNCTION azure_ai_internal.plpython_handler() IS
    'Call handler of the language azure_ai_plpython (PL/Python 3)';
COMMENT ON FUNCTION azure_ai_internal.plpython_validator(oid) IS
    'Validator of the language azure_ai_plpython (PL/Python 3)';
COMMENT ON LANGUAGE azure_ai_plpython IS
    'PL/Python 3 for the functions of azure_ai; untrusted: only superusers write in it';
COMMENT ON TABLE azure_ai.settings IS
    'Endpoints, keys and auth types of the Azure services; read and changed through '
    'azure_ai.get_setting and azure_ai.set_setting';
COMMENT ON FUNCTION azure_ai.set_setting(text, text) IS
    'Sets a setting (NULL removes it); azure_ai_settings_manager and the extension''s owner';
COMMENT ON FUNCTION azure_ai.get_setting(text) IS
    'The value of a setting, or NULL; azure_ai_settings_manager and the extension''s owner';
COMMENT ON FUNCTION azure_ml.invoke(jsonb, integer, boolean, text, integer, integer) IS
    'Scores input_data on the Azure ML endpoint of the setting azure_ml.scoring_endpoint';
COMMENT ON FUNCTION azure_ml.invoke(jsonb, text) IS
    'azure_ml.invoke with deployment_name, by position';
COMMENT ON FUNCTION azure_ml.inference(jsonb, integer, boolean, text, integer, integer) IS
    'The first previews'' name of azure_ml.invoke';
COMMENT ON FUNCTION azure_ai.version() IS 'The version of azure_ai_sim this session runs';
