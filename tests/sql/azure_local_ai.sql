-- azure_local_ai: create_embeddings with the built-in multilingual-e5-small, the model
-- registry and the settings (README "azure_local_ai", tests/demo.sql). Embeddings are
-- shown as dimensions, a few rounded values and cosine similarities.
CREATE EXTENSION azure_local_ai CASCADE;
SELECT model_uri, builtin FROM azure_local_ai.models ORDER BY model_uri;

-- One text: 384 dimensions, L2-normalised.
SELECT array_length(azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'query: hello'), 1) AS dimensions;
SELECT round(sqrt(sum(x * x))::numeric, 3) AS norm
FROM unnest(azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'query: hello')) AS x;
SELECT (azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'query: hello')::vector(384)
        <=> azure_local_ai.create_embeddings('multilingual-e5-small:v1-int8', 'query: hello')::vector(384)) < 0.02
       AS int8_close_to_fp32;
SELECT i, round(x::numeric, 3) AS value
FROM unnest(azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'query: hello')) WITH ORDINALITY AS e(x, i)
WHERE i <= 3;
SELECT azure_local_ai.create_embeddings('multilingual-e5-small:v1', NULL::text) IS NULL AS null_in_null_out;

-- Arrays: one row per input, in input order; the ids form pairs each id with its input.
SELECT array_length(embedding, 1) AS dimensions, embedding IS NULL AS is_null
FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1-int8', ARRAY['query: one', NULL, 'query: three']);
SELECT id, array_length(embedding, 1) AS dimensions
FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1-int8', ARRAY['passage: a', 'passage: b'], ARRAY[10, 20]);
SELECT count(*) AS no_rows FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1-int8', ARRAY[]::text[]);

-- Documents embedded as they are stored, in any language, and searched by meaning.
CREATE TABLE documents (
    doc_id serial PRIMARY KEY,
    doc_contents text,
    doc_vector vector(384) GENERATED ALWAYS AS (azure_local_ai.create_embeddings('multilingual-e5-small:v1', doc_contents)::vector) STORED
);
INSERT INTO documents (doc_contents) VALUES
    ('passage: The cat sleeps on the warm windowsill all afternoon.'),
    ('passage: Der Zug nach Berlin fährt um acht Uhr vom Hauptbahnhof ab.'),
    ('passage: La receta lleva harina, huevos, leche y una pizca de sal.'),
    ('passage: Инвестиции в акции всегда связаны с риском.');
CREATE INDEX ON documents USING hnsw (doc_vector vector_cosine_ops);
SELECT doc_id,
       round((1 - (doc_vector <=> azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'query: when does the train leave?')::vector))::numeric, 2) AS similarity
FROM documents ORDER BY similarity DESC LIMIT 2;
SELECT d.doc_contents
FROM documents d
ORDER BY d.doc_vector <=> azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'query: ingredients for pancakes')::vector
LIMIT 1;

-- The registry: metadata of the built-in models, loading and unloading.
SELECT m ->> 'dimensions' AS dimensions, m ->> 'max_tokens' AS max_tokens, m ->> 'pooling' AS pooling,
       m -> 'quantization' ->> 'model-int8.onnx' AS quantization, m ->> 'builtin' AS builtin
FROM azure_local_ai.model_metadata('multilingual-e5-small:v1-int8') AS m;
SELECT azure_local_ai.model_loaded('multilingual-e5-small:v1-int8') AS loaded;
SELECT azure_local_ai.model_unload('multilingual-e5-small:v1-int8');
SELECT azure_local_ai.model_loaded('multilingual-e5-small:v1-int8') AS loaded;

-- Registering a model file under a name of one's own (here the built-in int8 graph).
SELECT model_path AS int8_path, tokenizer_path AS int8_tokenizer
FROM azure_local_ai.models WHERE model_uri = 'multilingual-e5-small:v1-int8' \gset
SELECT azure_local_ai.model_register('my-e5:int8', :'int8_path', :'int8_tokenizer') > 0 AS registered;
SELECT (azure_local_ai.create_embeddings('my-e5:int8', 'query: hello')::vector(384)
        <=> azure_local_ai.create_embeddings('multilingual-e5-small:v1-int8', 'query: hello')::vector(384)) = 0
       AS same_embedding;
SELECT azure_local_ai.model_metadata('my-e5:int8') ->> 'builtin' AS builtin;
SELECT azure_local_ai.model_unregister('my-e5:int8');
SELECT model_uri FROM azure_local_ai.models ORDER BY model_uri;

-- Settings: anyone reads them, managers change them (all keys of one call or none).
SELECT azure_local_ai.get_setting('inter_op_parallelism');
SELECT azure_local_ai.get_setting(ARRAY['spin_control', 'prepacking']);
SELECT azure_local_ai.set_setting('inter_op_parallelism', '2');
SELECT azure_local_ai.set_setting(ARRAY['spin_control', 'prepacking'], ARRAY['false', 'false']);
SELECT azure_local_ai.get_setting(ARRAY['inter_op_parallelism', 'spin_control', 'prepacking']);

-- Mistakes.
SELECT azure_local_ai.create_embeddings('multilingual-e5-small:v2', 'query: hello');
SELECT azure_local_ai.create_embeddings('multilingual-e5-small:v1', ARRAY[['a', 'b'], ['c', 'd']]);
SELECT azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'query: hello', timeout_ms => 0);
SELECT azure_local_ai.model_register('my-e5:relative', 'model.onnx');
SELECT azure_local_ai.model_register('my-e5:missing', '/nonexistent/model.onnx');
SELECT azure_local_ai.model_unregister('multilingual-e5-small:v1');
SELECT azure_local_ai.get_setting('intra_op_paralelism');
SELECT azure_local_ai.set_setting('intra_op_parallelism', 'many');
SELECT azure_local_ai.set_setting(ARRAY['inter_op_parallelism', 'prepacking'], ARRAY['1']);
