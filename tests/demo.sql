-- azure_ai_sim demo: SQL from the Azure Database for PostgreSQL and Aurora docs,
-- running on a plain PostgreSQL. psql prints each statement, then its result.
-- `make demo` starts a private PostgreSQL and the simulators, and passes their addresses
-- (:'scoring_endpoint', :'openai_endpoint', ...).

-- Azure: install azure_ai (no CASCADE needed) and configure Azure ML.
CREATE EXTENSION IF NOT EXISTS azure_ai;
SELECT azure_ai.version();
select azure_ai.set_setting('azure_ml.scoring_endpoint', :'scoring_endpoint');
select azure_ai.set_setting('azure_ml.endpoint_key', :'endpoint_key');
select azure_ai.get_setting('azure_ml.scoring_endpoint');
SELECT azure_ai.set_setting('azure_openai.auth_type', 'managed-identity');
SELECT azure_ai.get_setting('azure_openai.auth_type');

-- Azure ML: the documented examples, scored by the Housingprediction deployment.
SELECT * FROM azure_ml.invoke('{"input_data": [[1,2,3,4,5,6,7,8],[-1,-2,-3,-4,-5,-6,-7,-8]], "params": {}}', deployment_name=>'Housingprediction');
SELECT jsonb_array_elements(invoke.invoke) as MedianHousePrediction FROM azure_ml.invoke('{"input_data": [[1,2,3,4,5,6,7,8],[-1,-2,-3,-4,-5,-6,-7,-8]], "params": {}}', deployment_name=>'Housingprediction');

-- One call per row of a table: a California block group (MedInc, HouseAge, AveRooms,
-- AveBedrms, Population, AveOccup, Latitude, Longitude); values in $100,000.
CREATE TEMP TABLE blocks (name text, features jsonb);
INSERT INTO blocks VALUES
    ('Berkeley hills', '[8.3252, 41, 6.984, 1.024, 322, 2.556, 37.88, -122.23]'),
    ('Central Valley', '[2.5, 25, 5.1, 1.1, 1200, 3.1, 36.7, -119.8]');
SELECT name, round((azure_ml.invoke(jsonb_build_object('input_data', jsonb_build_array(features)),
                                    deployment_name => 'Housingprediction') ->> 0)::numeric, 2)
       AS median_house_value
FROM blocks ORDER BY name;

-- The same per row with azure_ml.score: the row's input alone; the request (here the
-- pandas "split" form, with the columns) comes from the deployment's swagger.
SELECT name, round((azure_ml.score(features, deployment_name => 'Housingprediction'))::numeric, 2)
       AS median_house_value
FROM blocks ORDER BY name;

-- Azure Stream Analytics' machine-learning example rows, as it sends them: its createArray
-- form and its DataFrame form (a row of a table, its columns by name).
SELECT azure_ml.score(ARRAY['1', 'Mon', '12', '1', '5.8'], deployment_name => 'nyc-taxi-fare')
       ->> 'Scored Labels' AS fare;
CREATE TEMP TABLE trips (vendorid text, weekday text, pickuphour text, passenger text, distance text);
INSERT INTO trips VALUES ('1', 'Mon', '12', '1', '5.8'), ('2', 'Tue', '10', '2', '10');
SELECT t.*, azure_ml.score(t, deployment_name => 'nyc-taxi-fare') ->> 'Scored Labels' AS fare
FROM trips t;

-- A failed call with throw_on_error => false: NULL and a WARNING, the transaction goes on.
SELECT azure_ml.invoke('{"input_data": [[1,2,3]]}', throw_on_error => false) IS NULL AS failed;

-- Azure: local embeddings; CASCADE pulls in pgvector.
CREATE EXTENSION IF NOT EXISTS azure_local_ai CASCADE;
SELECT array_length(azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'query: hello'), 1) AS dimensions;

-- Documents embedded as they are stored, in any language, and searched by meaning.
CREATE TEMP TABLE documents (
    doc_id serial PRIMARY KEY,
    doc_contents text,
    doc_vector vector(384) GENERATED ALWAYS AS (azure_local_ai.create_embeddings('multilingual-e5-small:v1', doc_contents)::vector) STORED
);
INSERT INTO documents (doc_contents) VALUES
    ('passage: The cat sleeps on the warm windowsill all afternoon.'),
    ('passage: Der Zug nach Berlin fährt um acht Uhr vom Hauptbahnhof ab.'),
    ('passage: La receta lleva harina, huevos, leche y una pizca de sal.'),
    ('passage: 东京是日本的首都，也是世界上最大的城市之一。'),
    ('passage: Инвестиции в акции всегда связаны с риском.');
CREATE INDEX ON documents USING hnsw (doc_vector vector_cosine_ops);
SELECT doc_contents,
       round((1 - (doc_vector <=> azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'query: when does the train leave?')::vector))::numeric, 3) AS similarity
FROM documents ORDER BY similarity DESC LIMIT 3;
SELECT d.doc_contents
FROM documents d
ORDER BY d.doc_vector <=> azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'query: ingredients for pancakes')::vector
LIMIT 1;
SELECT azure_local_ai.model_metadata('multilingual-e5-small:v1-int8') ->> 'source' AS built_from;

-- Azure OpenAI (here the local simulator: e5 embeddings, and chat answers from a
-- deterministic responder, not a language model) and a Cohere reranker (ranking by e5).
SELECT azure_ai.set_setting('azure_openai.auth_type', 'subscription-key');
SELECT azure_ai.set_setting('azure_openai.endpoint', :'openai_endpoint');
SELECT azure_ai.set_setting('azure_openai.subscription_key', :'openai_key');
SELECT azure_ai.set_setting('azure_ml.serverless_ranking_endpoint', :'ranking_endpoint');
SELECT azure_ai.set_setting('azure_ml.serverless_ranking_endpoint_key', :'ranking_key');
CREATE TEMP TABLE conference_sessions (session_id int PRIMARY KEY, title text, session_abstract text);
INSERT INTO conference_sessions VALUES
    (1, 'Bots that talk back', 'Building chatbots with large language models and PostgreSQL.'),
    (2, 'Query plans', 'How the planner picks a join order, with live examples.'),
    (3, 'Customer service assistants', 'Designing a conversational assistant that answers support questions.'),
    (4, 'No chat here', 'This session is not about chatbots: it covers backups and restores.');
CREATE TEMP TABLE conference_session_embeddings (session_id int PRIMARY KEY, session_embedding vector(384));
-- Azure's example: embeddings inserted for the sessions that have none (one batched request).
INSERT INTO conference_session_embeddings (session_id, session_embedding)
SELECT c.session_id, (azure_openai.create_embeddings('text-embedding-ada-002', c.session_abstract))
FROM conference_sessions as c LEFT OUTER JOIN conference_session_embeddings e ON e.session_id = c.session_id
WHERE e.session_id IS NULL;
SELECT c.title FROM conference_session_embeddings e INNER JOIN conference_sessions c ON c.session_id = e.session_id
ORDER BY e.session_embedding <=> azure_openai.create_embeddings('text-embedding-ada-002', 'Session to learn about building chatbots')::vector
LIMIT 1;
-- A semantic query: the three nearest sessions, reranked, kept where the model agrees.
WITH nearest AS (
    SELECT c.* FROM conference_session_embeddings e JOIN conference_sessions c USING (session_id)
    ORDER BY e.session_embedding <=> azure_openai.create_embeddings('text-embedding-ada-002', 'Session to learn about building chatbots')::vector
    LIMIT 3)
SELECT r.rank, n.title, round(r.relevance_score::numeric, 3) AS relevance
FROM azure_ai.rank('Session to learn about building chatbots',
                   (SELECT array_agg(session_abstract ORDER BY session_id) FROM nearest),
                   (SELECT array_agg(session_id ORDER BY session_id) FROM nearest)) AS r
JOIN nearest n ON n.session_id = r.document_id
WHERE azure_ai.is_true('This session teaches chatbots: ' || n.session_abstract)
ORDER BY r.rank;
SELECT azure_ai.extract('The music quality is good, though the call quality could have been better. The design is sleek, but still slightly heavy for convenient travel.',
    ARRAY['design: string - comma separated list of design features of the product',
          'sentiment: number - sentiment score of the review; 1 (lowest) to 5 (highest)']);

-- Aurora: machine learning; CASCADE pulls in aws_commons, as in the AWS docs.
CREATE EXTENSION IF NOT EXISTS aws_ml CASCADE;

-- Point aws_ml at the local simulators (a server with an AWS environment needs none of this).
SELECT aws_ml.set_setting('region', 'us-east-1');
SELECT aws_ml.set_setting('sagemaker.endpoint_url', :'sagemaker_url');
SELECT aws_ml.set_setting('comprehend.endpoint_url', :'comprehend_url');
SELECT aws_ml.set_setting('bedrock.endpoint_url', :'bedrock_url');
SELECT aws_ml.set_setting('aws_access_key_id', 'AKIDSIMULATOR');
SELECT aws_ml.set_setting('aws_secret_access_key', 'sim-secret');

-- SageMaker: any arguments become one CSV record.
SELECT aws_sagemaker.invoke_endpoint('housing', NULL, 8.3252, 41, 6.984, 1.024, 322, 2.556, 37.88, -122.23) AS median_house_value;
CREATE FUNCTION classify_iris (IN sepal_length REAL, IN sepal_width REAL, IN petal_length REAL, IN petal_width REAL, OUT species INT)
AS $$ SELECT aws_sagemaker.invoke_endpoint('iris-classifier', NULL, sepal_length, sepal_width, petal_length, petal_width)::INT $$
LANGUAGE SQL PARALLEL SAFE COST 5000;
SELECT classify_iris(5.1, 3.5, 1.4, 0.2) AS setosa, classify_iris(6.7, 3.0, 5.2, 2.3) AS virginica;

-- Comprehend: sentiment per row.
CREATE TEMP TABLE support (feedback text);
INSERT INTO support VALUES ('The support team was wonderful, thank you!'), ('The product broke after one day. Terrible.'), ('I received the parcel on Tuesday.');
SELECT feedback, s.sentiment, s.confidence FROM support, aws_comprehend.detect_sentiment(feedback, 'en') s ORDER BY s.confidence DESC;

-- Batch mode, as on Aurora: per-row calls in a SELECT list go out in batches (BatchDetectSentiment).
INSERT INTO support SELECT 'Feedback number ' || g FROM generate_series(1, 3000) g;
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)
SELECT feedback, (aws_comprehend.detect_sentiment(feedback, 'en')).sentiment FROM support;

-- Bedrock: an embedding (from the local e5 model, projected: the simulator is no Titan).
SELECT array_length(aws_bedrock.invoke_model_get_embeddings(model_id := 'amazon.titan-embed-text-v2:0', content_type := 'application/json', json_key := 'embedding', model_input := '{"inputText": "PostgreSQL with machine learning"}'), 1) AS titan_dimensions;

-- ml_pipeline: reviews whose sentiment (a column) and embeddings (a table of their own)
-- stay current as reviews come and change; CALL ml_pipeline.run() is what pg_cron runs.
CREATE EXTENSION IF NOT EXISTS ml_pipeline;
CREATE TABLE reviews (id int PRIMARY KEY, body text);
INSERT INTO reviews VALUES (1, 'The support team was wonderful, thank you!'), (2, 'The product broke after one day. Terrible.');
SELECT ml_pipeline.create('review_mood', 'reviews', $$(aws_comprehend.detect_sentiment(body, 'en')).sentiment$$, 'sentiment');
SELECT ml_pipeline.create('review_vectors', 'reviews', $$azure_local_ai.create_embeddings('multilingual-e5-small:v1', body)$$, 'embedding', sink => 'review_embeddings');
CALL ml_pipeline.run();
INSERT INTO reviews VALUES (3, 'I received the parcel on Tuesday.');
UPDATE reviews SET body = 'They replaced it at once, I am happy now.' WHERE id = 2;
SELECT name, total, done, pending, failed FROM ml_pipeline.status;
CALL ml_pipeline.run();
SELECT r.id, r.body, r.sentiment, array_length(e.embedding, 1) AS dimensions FROM reviews r JOIN review_embeddings e USING (id) ORDER BY r.id;
SELECT name, total, done, pending, failed FROM ml_pipeline.status;
-- Every remote call of the day, counted by service and endpoint (ml_pipeline.usage).
SELECT service, endpoint, requests, failed, rows, bytes_sent, input_tokens + output_tokens AS tokens FROM ml_pipeline.usage WHERE day = (now() AT TIME ZONE 'UTC')::date ORDER BY service, endpoint;

SELECT extname, extversion FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY extname;

-- Mistakes get errors that name the setting and never echo a value (both fail on purpose).
\echo
\echo '== Two deliberate mistakes follow: their ERRORs are part of the demo. =='
\set ON_ERROR_STOP off
\set SHOW_CONTEXT never
SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', 'x.example/score');
SELECT azure_ai.get_setting('azure_ml.endpointkey');
