-- azure_ai: settings, as Azure's docs use them (README "azure_ai settings").
CREATE EXTENSION azure_ai;
SELECT azure_ai.version();

SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', 'https://x.example/score');
SELECT azure_ai.get_setting('azure_ml.scoring_endpoint');
SELECT azure_ai.set_setting('azure_openai.auth_type', 'managed-identity');
SELECT azure_ai.get_setting('azure_openai.auth_type');
SELECT azure_ai.set_setting('azure_cognitive.region', 'westeurope');
SELECT azure_ai.get_setting('azure_cognitive.region');
-- A key never set is NULL; setting NULL removes a key.
SELECT azure_ai.get_setting('azure_ml.endpoint_key') IS NULL AS never_set;
SELECT azure_ai.set_setting('azure_cognitive.region', NULL);
SELECT azure_ai.get_setting('azure_cognitive.region') IS NULL AS removed;
-- Settings live in a table that pg_dump keeps.
SELECT key FROM azure_ai.settings ORDER BY key;

-- Mistakes: errors name the setting and what is wrong, never the value or an unknown key.
SELECT azure_ai.get_setting('azure_ml.endpointkey');
SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', 'x.example/score');
SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', 'https://x.example/a score');
SELECT azure_ai.set_setting('azure_ml.auth_type', 'password');
SELECT azure_ai.set_setting('azure_ml.endpoint_key', 'two words');
SELECT azure_ai.get_setting('azure_ml.scoring_endpoint');

-- Only superusers and azure_ai_settings_manager members read or change settings;
-- version() is for everyone.
BEGIN;
CREATE ROLE regress_azure_ai_user;
SET ROLE regress_azure_ai_user;
SELECT azure_ai.version();
SELECT azure_ai.get_setting('azure_ml.scoring_endpoint');
ROLLBACK;
