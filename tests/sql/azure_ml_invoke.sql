-- azure_ml.invoke against the Azure ML simulator: the examples of Azure's docs
-- (README "azure_ml.invoke", tests/demo.sql).
CREATE EXTENSION azure_ai;
-- Before the endpoint is set: an error that says which setting to set.
SELECT azure_ml.invoke('{"input_data": [[1,2,3,4,5,6,7,8]]}');

-- The simulator's address and key come from the test (they change from run to run).
\getenv scoring_endpoint AZURE_AI_SIM_REGRESS_AZUREML_URL
\getenv endpoint_key AZURE_AI_SIM_REGRESS_AZUREML_KEY
\set scoring_endpoint :scoring_endpoint/score
SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', :'scoring_endpoint');
SELECT azure_ai.set_setting('azure_ml.endpoint_key', :'endpoint_key');
SELECT azure_ai.get_setting('azure_ml.scoring_endpoint') = :'scoring_endpoint' AS endpoint_set;

-- The documented examples, scored by the Housingprediction deployment.
SELECT * FROM azure_ml.invoke('{"input_data": [[1,2,3,4,5,6,7,8],[-1,-2,-3,-4,-5,-6,-7,-8]], "params": {}}', deployment_name=>'Housingprediction');
SELECT jsonb_array_elements(invoke.invoke) as MedianHousePrediction FROM azure_ml.invoke('{"input_data": [[1,2,3,4,5,6,7,8],[-1,-2,-3,-4,-5,-6,-7,-8]], "params": {}}', deployment_name=>'Housingprediction');
-- The newer form: (input, deployment).
SELECT azure_ml.invoke('{"input_data": [[1,2,3,4,5,6,7,8]]}', 'Housingprediction') AS prediction;

-- One call per row: a California block group (MedInc, HouseAge, AveRooms, AveBedrms,
-- Population, AveOccup, Latitude, Longitude); values in $100,000.
CREATE TABLE blocks (name text, features jsonb);
INSERT INTO blocks VALUES
    ('Berkeley hills', '[8.3252, 41, 6.984, 1.024, 322, 2.556, 37.88, -122.23]'),
    ('Central Valley', '[2.5, 25, 5.1, 1.1, 1200, 3.1, 36.7, -119.8]');
SELECT name, round((azure_ml.invoke(jsonb_build_object('input_data', jsonb_build_array(features)),
                                    deployment_name => 'Housingprediction') ->> 0)::numeric, 2)
       AS median_house_value
FROM blocks ORDER BY name;

-- The diabetes deployment (10 features), rounded.
SELECT round(value::numeric, 1) AS disease_progression
FROM jsonb_array_elements_text(azure_ml.invoke(
    '{"input_data": [[0.0380759, 0.0506801, 0.0616962, 0.0218724, -0.0442235, -0.0348208, -0.0434008, -0.00259226, 0.0199084, -0.0176461]]}',
    deployment_name => 'diabetes')) AS value;

-- Failures read as the service answered; the request ids of DETAIL change every run.
\set VERBOSITY terse
-- A deployment that does not exist: HTTP 404.
SELECT azure_ml.invoke('{"input_data": [[1,2,3,4,5,6,7,8]]}', deployment_name => 'Housingprediction2');
-- The model raises on 3 features instead of 8: HTTP 424; with throw_on_error => false
-- the call gives NULL and a WARNING, and the transaction goes on.
SELECT azure_ml.invoke('{"input_data": [[1,2,3]]}', deployment_name => 'Housingprediction');
SELECT azure_ml.invoke('{"input_data": [[1,2,3]]}', throw_on_error => false) IS NULL AS failed;
-- A wrong key: HTTP 401.
SELECT azure_ai.set_setting('azure_ml.endpoint_key', 'not-the-key');
SELECT azure_ml.invoke('{"input_data": [[1,2,3,4,5,6,7,8]]}');
-- Nothing listens there: the connection is refused.
SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', 'http://127.0.0.1:1/score');
SELECT azure_ml.invoke('{"input_data": [[1,2,3,4,5,6,7,8]]}');
-- Bad arguments.
SELECT azure_ml.invoke('{"input_data": [[1,2,3,4,5,6,7,8]]}', timeout_ms => -1);
SELECT azure_ml.invoke('{"input_data": [[1,2,3,4,5,6,7,8]]}', max_attempts => 0);
\set VERBOSITY default
