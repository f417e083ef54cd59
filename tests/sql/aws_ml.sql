-- aws_ml against the SageMaker, Comprehend and Bedrock simulators: the examples of
-- Aurora's docs (README "aws_ml", tests/demo.sql). CASCADE pulls in aws_commons.
CREATE EXTENSION IF NOT EXISTS aws_ml CASCADE;
SELECT extname, extversion FROM pg_extension WHERE extname IN ('aws_commons', 'aws_ml') ORDER BY extname;

-- Point aws_ml at the simulators, whose addresses come from the test.
\getenv sagemaker_url AZURE_AI_SIM_REGRESS_SAGEMAKER_URL
\getenv comprehend_url AZURE_AI_SIM_REGRESS_COMPREHEND_URL
\getenv bedrock_url AZURE_AI_SIM_REGRESS_BEDROCK_URL
SELECT aws_ml.set_setting('region', 'us-east-1');
SELECT aws_ml.set_setting('sagemaker.endpoint_url', :'sagemaker_url');
SELECT aws_ml.set_setting('comprehend.endpoint_url', :'comprehend_url');
SELECT aws_ml.set_setting('bedrock.endpoint_url', :'bedrock_url');
SELECT aws_ml.set_setting('aws_access_key_id', 'AKIDSIMULATOR');
SELECT aws_ml.set_setting('aws_secret_access_key', 'sim-secret');
SELECT aws_ml.get_setting('region');

-- SageMaker: any arguments become one CSV record.
SELECT aws_sagemaker.invoke_endpoint('ep', NULL, 1, '2024-01-01'::date, 2.5::real) AS echoed;
SELECT aws_sagemaker.invoke_endpoint('ep', NULL, ARRAY[1.0, 2.0]::real[], NULL, 'say "x", y') AS echoed;
SELECT round(aws_sagemaker.invoke_endpoint('housing', NULL, 8.3252, 41, 6.984, 1.024, 322, 2.556, 37.88, -122.23)::numeric, 2) AS median_house_value;
CREATE FUNCTION classify_iris (IN sepal_length REAL, IN sepal_width REAL, IN petal_length REAL, IN petal_width REAL, OUT species INT)
AS $$ SELECT aws_sagemaker.invoke_endpoint('iris-classifier', NULL, sepal_length, sepal_width, petal_length, petal_width)::INT $$
LANGUAGE SQL PARALLEL SAFE COST 5000;
SELECT classify_iris(5.1, 3.5, 1.4, 0.2) AS setosa, classify_iris(6.7, 3.0, 5.2, 2.3) AS virginica;
-- Aurora's wrappers, verbatim.
CREATE FUNCTION classify_event (IN arg1 INT, IN arg2 DATE, OUT category INT)
AS $$
    SELECT aws_sagemaker.invoke_endpoint (
        'sagemaker_model_endpoint_name', NULL,
        arg1, arg2                        -- model inputs are separate arguments
        )::INT                            -- cast the output to INT
$$ LANGUAGE SQL PARALLEL SAFE COST 5000;
SELECT classify_event(7, '2024-01-01');
CREATE TYPE company_forecasts AS (six_month_forecast REAL, twelve_month_forecast REAL);
CREATE FUNCTION analyze_company (IN p1 REAL, IN p2 REAL, IN p3 REAL, IN p4 REAL,
                                 IN p5 REAL, IN p6 REAL, IN p7 REAL, IN p8 REAL,
                                 OUT forecasts company_forecasts)
AS $$
    SELECT (aws_sagemaker.invoke_endpoint('multiple_output_endpoint', NULL,
            p1, p2, p3, p4, p5, p6, p7, p8))::company_forecasts
$$ LANGUAGE SQL PARALLEL SAFE COST 5000;
SELECT round((f).six_month_forecast::numeric, 2) AS six_months, round((f).twelve_month_forecast::numeric, 2) AS twelve_months
FROM (SELECT analyze_company(8.3252, 41, 6.984, 1.024, 322, 2.556, 37.88, -122.23) AS f) AS s;

-- Comprehend: sentiment per row.
CREATE TABLE support (feedback text);
INSERT INTO support VALUES ('The support team was wonderful, thank you!'), ('The product broke after one day. Terrible.'), ('I received the parcel on Tuesday.');
SELECT feedback, s.sentiment, round(s.confidence::numeric, 2) AS confidence
FROM support, aws_comprehend.detect_sentiment(feedback, 'en') s ORDER BY feedback;
CREATE TABLE clinician_notes (id int, french_notes text, sentiment varchar, confidence real);
INSERT INTO clinician_notes VALUES (1, 'Le patient va très bien, excellent progrès.');
UPDATE clinician_notes
SET sentiment = (aws_comprehend.detect_sentiment (french_notes, 'fr')).sentiment,
    confidence = (aws_comprehend.detect_sentiment (french_notes, 'fr')).confidence
WHERE clinician_notes.french_notes IS NOT NULL
AND LENGTH(TRIM(clinician_notes.french_notes)) > 0
AND clinician_notes.sentiment IS NULL;
SELECT id, sentiment FROM clinician_notes;

-- Bedrock: embeddings from the local e5 model, projected to each model's size (the
-- simulator is no Titan), and the labelled local generator for Claude.
SELECT array_length(aws_bedrock.invoke_model_get_embeddings(model_id := 'amazon.titan-embed-text-v2:0', content_type := 'application/json', json_key := 'embedding', model_input := '{"inputText": "PostgreSQL with machine learning"}'), 1) AS titan_dimensions;
SELECT array_length(aws_bedrock.invoke_model_get_embeddings('amazon.titan-embed-text-v1', 'application/json', 'embedding', '{"inputText": "PostgreSQL is a database"}'), 1) AS titan_v1_dimensions;
SELECT array_length(aws_bedrock.invoke_model_get_embeddings('cohere.embed-multilingual-v3', 'application/json', 'embeddings', '{"texts": ["hola"], "input_type": "search_document"}'), 1) AS cohere_dimensions;
SELECT round(sqrt(sum(x * x))::numeric, 3) AS norm
FROM unnest(aws_bedrock.invoke_model_get_embeddings('amazon.titan-embed-text-v2:0', 'application/json', 'embedding', '{"inputText": "hello world", "dimensions": 256}')) AS x;
SELECT aws_bedrock.invoke_model(model_id := 'amazon.titan-embed-text-v2:0', content_type := 'application/json', accept_type := 'application/json', model_input := '{"inputText": "hello world", "dimensions": 256}')::jsonb ? 'embedding' AS has_embedding;
SELECT aws_bedrock.invoke_model('anthropic.claude-3-haiku-20240307-v1:0', 'application/json', 'application/json',
    '{"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50, "messages": [{"role": "user", "content": "Say hi"}]}')::jsonb -> 'content' -> 0 ->> 'text' LIKE '%[azure_ai_sim local generator]%' AS local_generator;

-- Mistakes. Failed requests read with AWS's own code and message and the URL they went
-- to; their DETAIL (attempts and request id) changes every run, so VERBOSITY terse.
\set VERBOSITY terse
SELECT aws_sagemaker.invoke_endpoint('nope', NULL, 1);
SELECT aws_sagemaker.invoke_endpoint('housing', NULL, 1, 2);
SELECT (aws_comprehend.detect_sentiment('hola', 'xx')).sentiment;
SELECT aws_ml.set_setting('aws_access_key_id', 'AKIDUNKNOWN');
SELECT aws_sagemaker.invoke_endpoint('ep', NULL, 1);
SELECT aws_ml.set_setting('aws_access_key_id', 'AKIDSIMULATOR');
SELECT aws_bedrock.invoke_model('amazon.titan-embed-text-v9:0', 'application/json', 'application/json', '{"inputText": "x"}');
\set VERBOSITY default
SELECT aws_sagemaker.invoke_endpoint('ep', -1, 1);
SELECT aws_comprehend.detect_sentiment(repeat('é', 2600), 'fr');
SELECT aws_bedrock.invoke_model_get_embeddings('amazon.titan-embed-text-v1', 'application/json', 'vector', '{"inputText": "x"}');
SELECT aws_ml.set_setting('regoin', 'us-east-1');
SELECT aws_ml.set_setting('region', 'Mars');
SELECT aws_ml.set_setting('sagemaker.endpoint_url', 'sagemaker.example');
