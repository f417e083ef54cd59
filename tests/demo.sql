-- azure_ai_sim demo: SQL from the Azure Database for PostgreSQL and Aurora docs,
-- running on a plain PostgreSQL. psql prints each statement, then its result.
-- `make demo` starts a private PostgreSQL and the Azure ML simulator, and passes the
-- simulator's address as :'scoring_endpoint'.

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

-- Aurora: machine learning; CASCADE pulls in aws_commons, as in the AWS docs.
CREATE EXTENSION IF NOT EXISTS aws_ml CASCADE;

SELECT extname, extversion FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY extname;

-- Mistakes get errors that name the setting and never echo a value (both fail on purpose).
\set ON_ERROR_STOP off
\set SHOW_CONTEXT never
SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', 'x.example/score');
SELECT azure_ai.get_setting('azure_ml.endpointkey');
