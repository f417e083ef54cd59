"""azure_ai's semantic operators (generate, is_true, extract, rank) against the Azure OpenAI
simulator's chat completions (a deterministic responder, sim/responder.py) and the Cohere
reranker simulator: Azure's documented calls, both wire forms, retries, cancel, batches."""

from __future__ import annotations

import json

import psycopg
import pytest

from azure_ai_sim.sim import CohereSimulator, Fault
from azure_ai_sim.sim import cohere as cohere_sim
from azure_ai_sim.sim.e5 import E5, default_model_dir
from azure_ai_sim.sim.openai import DEFAULT_KEY
from conftest import assert_interrupted, cleared, run_in_thread, set_settings, wait_until

REVIEWS = [
    "The product has a great battery life, good design, and decent sound quality.",
    "These headphones are perfect for long calls and music.",
    "Best headphones for music lovers. Call quality could have been better.",
    "The product has a good design, but it is a bit heavy. Not recommended for travel.",
]
QUERY = "Clear calling capability that blocks out background noise"


@pytest.fixture(scope="module")
def cohere_simulator():
    with CohereSimulator() as simulator:
        yield simulator


@pytest.fixture
def cohere(cohere_simulator):
    return cleared(cohere_simulator)


@pytest.fixture
def conn(database, openai, cohere):
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS azure_ai")
        set_settings(conn, {
            "azure_openai.endpoint": openai.url, "azure_openai.subscription_key": DEFAULT_KEY,
            "azure_openai.api_type": "azure",
            "azure_ml.serverless_ranking_endpoint": f"{cohere.url}/v2/rerank",
            "azure_ml.serverless_ranking_endpoint_key": cohere_sim.DEFAULT_KEY,
        })  # fmt: skip
        yield conn


def chat_bodies(openai) -> list[dict]:
    return [json.loads(r["body"]) for r in openai.recorded.snapshot()]


def test_generate_as_documented(conn, openai):
    conn.execute("DROP TABLE IF EXISTS products")
    conn.execute("CREATE TABLE products (name text)")
    conn.execute("INSERT INTO products VALUES ('headphones'), ('speaker')")
    rows = conn.execute(
        "SELECT name, azure_ai.generate('Generate a description for the product: ' || name)"
        " AS description FROM products ORDER BY name"
    ).fetchall()
    assert rows == [
        ("headphones", "Simulated reply: Generate a description for the product: headphones"),
        ("speaker", "Simulated reply: Generate a description for the product: speaker"),
    ]
    request = openai.recorded.snapshot()[0]
    assert request["path"] == "/openai/deployments/gpt-4.1/chat/completions"
    assert request["query"]["api-version"] == "2024-10-21"
    assert json.loads(request["body"])["messages"][0] == {
        "role": "system", "content": "You are a helpful assistant."
    }  # fmt: skip
    # a second positional argument in quotes is the model, as in Azure's example
    openai.recorded.clear()
    (kind,) = conn.execute(
        "SELECT pg_typeof(azure_ai.generate('Generate a description for the product: '"
        " || name, 'gpt-4.1-mini')) FROM products LIMIT 1"
    ).fetchone()
    assert kind == "text"
    assert openai.recorded.snapshot()[0]["path"].endswith("/gpt-4.1-mini/chat/completions")


def test_generate_with_a_json_schema(conn, openai):
    conn.execute("DROP TABLE IF EXISTS reviews")
    conn.execute("CREATE TABLE reviews (review text)")
    conn.execute("INSERT INTO reviews VALUES (%s)", (REVIEWS[3],))
    (answer,) = conn.execute(  # Azure's example, verbatim but for its table
        """SELECT azure_ai.generate(
    prompt        => 'Rewrite the following comment to be more polite and return the number of products mentioned:' || review,
    json_schema   => '{
                        "name": "generate_response",
                        "description": "Generate a response to the user",
                        "strict": true,
                        "schema": {
                          "type": "object",
                          "properties": {
                            "comment": { "type": "string" },
                            "num_products": { "type": "integer" }
                          },
                          "required": ["comment", "num_products"],
                          "additionalProperties": false
                          }
                        }',
     model  => 'gpt-4.1-mini'
) as polite_comment_with_count
FROM
    Reviews"""  # noqa: E501
    ).fetchone()
    assert set(answer) == {"comment", "num_products"}
    prompt = "Rewrite the following comment to be more polite and return the number of"
    assert answer["comment"].startswith(prompt)  # the responder's pick: a clause of the prompt
    assert isinstance(answer["num_products"], int)
    (body,) = chat_bodies(openai)
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["name"] == "generate_response"
    # a bare JSON schema is wrapped; a schema that is not an object is refused
    (bare,) = conn.execute(
        """SELECT azure_ai.generate('Is it raining?', '{"type": "object", "properties":
           {"raining": {"type": "boolean"}}}'::jsonb)"""
    ).fetchone()
    assert bare == {"raining": True}
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="json_schema must be"):
        conn.execute("SELECT azure_ai.generate('x', '[1]'::jsonb)")
    # a wrapped schema without a name gets one, as structured outputs require it
    conn.execute("""SELECT azure_ai.generate('x', json_schema => '{"schema": {}}')""")
    assert chat_bodies(openai)[-1]["response_format"]["json_schema"] == {
        "name": "generate_response", "schema": {}
    }  # fmt: skip


def test_is_true_in_a_where_clause(conn, openai):
    conn.execute("DROP TABLE IF EXISTS product_reviews")
    conn.execute("CREATE TABLE product_reviews (id int, product_name text, review_text text)")
    conn.execute(
        "INSERT INTO product_reviews VALUES (1, 'headphones', 'Great sound and a long battery'),"
        " (2, 'headphones', 'This is not about headphones at all'),"
        " (3, 'speaker', 'Loud and clear')"
    )
    kept = conn.execute(
        "SELECT id FROM product_reviews WHERE azure_ai.is_true("
        "'The review talks about the product: ' || product_name || ' Review: ' || review_text)"
        " ORDER BY id"
    ).fetchall()
    assert kept == [(1,), (3,)]
    verdicts = conn.execute(
        "SELECT azure_ai.is_true(s) FROM unnest(ARRAY['The sky is blue',"
        " 'The sky is not blue', 'Maybe it will rain tomorrow?']) s"
    ).fetchall()
    assert verdicts == [(True,), (False,), (None,)]  # NULL: inconclusive
    schema = chat_bodies(openai)[-1]["response_format"]["json_schema"]
    assert schema["strict"] is True
    assert schema["schema"]["properties"]["result"]["type"] == ["boolean", "null"]


def test_extract_with_plain_and_typed_labels(conn, openai):
    (plain,) = conn.execute(
        "SELECT azure_ai.extract('The headphones are not great. They have a good design, but"
        " the sound quality is poor and the battery life is short.', ARRAY[ 'product',"
        " 'sentiment'])"
    ).fetchone()
    assert set(plain) == {"product", "sentiment"}
    assert all(isinstance(value, str) for value in plain.values())
    document = (
        "The music quality is good, though the call quality could have been better. The design"
        " is sleek, but still slightly heavy for convenient travel."
    )
    (typed,) = conn.execute(
        """SELECT azure_ai.extract(%s,
    ARRAY[
        'design: string - comma separated list of design features of the product',
        'sound: string - sound quality (e.g., music, call, noise cancellation) of the product',
        'sentiment: number - sentiment score of the review; 1 (lowest) to 5 (highest)'
    ]
)""",
        (document,),
    ).fetchone()
    assert typed["sentiment"] == 3  # a number in its range, as Azure's example gives
    assert "design" in typed["design"] and "quality" in typed["sound"]
    properties = chat_bodies(openai)[-1]["response_format"]["json_schema"]["schema"]["properties"]
    assert properties["sentiment"] == {
        "type": ["number", "null"],
        "description": "sentiment score of the review; 1 (lowest) to 5 (highest)",
    }
    assert chat_bodies(openai)[-1]["messages"][1] == {"role": "user", "content": document}
    # a word that is not a type begins a string's description
    conn.execute("SELECT azure_ai.extract('Rated 4 of 5.', ARRAY['rating: 1 to 5',"
                 " 'price: number (USD)', 'color: red-ish'])")  # fmt: skip
    properties = chat_bodies(openai)[-1]["response_format"]["json_schema"]["schema"]["properties"]
    assert properties == {
        "rating": {"type": ["string", "null"], "description": "1 to 5"},
        "price": {"type": ["number", "null"], "description": "(USD)"},
        "color": {"type": ["string", "null"], "description": "red-ish"},
    }


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("ARRAY[':x']", "data[1] has no name: ':x'"),
        ("ARRAY[['a', 'b'], ['c', 'd']]", "data must be a one-dimensional array of labels"),
        ("ARRAY[]::text[]", "data must be an array of at least one label"),
        ("ARRAY['a', NULL]", "data[2] is NULL"),
        ("ARRAY['a', 'a: string']", "data has the label 'a' twice"),
    ],
)
def test_extract_refuses_bad_labels_before_sending(conn, openai, labels, message):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        conn.execute(f"SELECT azure_ai.extract('a document', {labels})")
    assert refused.value.diag.message_primary.startswith(f"azure_ai.extract: {message}")
    assert openai.recorded.snapshot() == []


def e5_order(query: str, documents: list[str]) -> list[int]:
    """The documents' places (from 1) by e5 similarity to the query, best first."""
    e5 = E5(default_model_dir(), exact=True)
    vectors = e5.embed([f"query: {query}", *(f"passage: {d}" for d in documents)])
    scores = vectors[1:] @ vectors[0]
    return [int(i) + 1 for i in sorted(range(len(documents)), key=lambda i: -scores[i])]


def test_rank_with_cohere_v1_and_v2(conn, cohere):
    expected = e5_order(QUERY, REVIEWS)
    for route in ("/v2/rerank", "/v1/rerank"):
        conn.execute(
            "SELECT azure_ai.set_setting('azure_ml.serverless_ranking_endpoint', %s)",
            (cohere.url + route,),
        )
        rows = conn.execute(
            "SELECT * FROM azure_ai.rank(query => %s, document_contents => %s::text[],"
            " document_ids => ARRAY['Review1', 'Review2', 'Review3', 'Review4'])",
            (QUERY, REVIEWS),
        ).fetchall()
        assert [row[0] for row in rows] == [f"Review{i}" for i in expected]
        assert [row[1] for row in rows] == [1, 2, 3, 4]
        assert all(0 <= row[2] <= 1 for row in rows)
        assert [row[2] for row in rows] == sorted((row[2] for row in rows), reverse=True)
    request = cohere.recorded.snapshot()[-1]
    assert request["path"] == "/v1/rerank"
    assert request["headers"]["authorization"] == f"Bearer {cohere_sim.DEFAULT_KEY}"
    assert json.loads(request["body"])["model"] == "cohere-rerank-v3.5"
    # without ids, a document's id is its place; integer ids keep their type
    places = conn.execute(
        "SELECT document_id FROM azure_ai.rank(%s, %s::text[])", (QUERY, REVIEWS)
    ).fetchall()
    assert [p for (p,) in places] == expected
    (kind,) = conn.execute(
        "SELECT pg_typeof(document_id) FROM azure_ai.rank(%s, %s::text[], ARRAY[10, 20, 30, 40])"
        " LIMIT 1",
        (QUERY, REVIEWS),
    ).fetchone()
    assert kind == "integer"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("'q', ARRAY['a', 'b'], ARRAY[1, 2, 3]", "document_ids must have one id per document:"
         " 3 ids for 2 documents"),
        ("'q', ARRAY[]::text[], ARRAY['x']", "document_ids must have one id per document: 1 ids"
         " for 0 documents"),
        ("'q', ARRAY['a', 'b'], ARRAY[['x'], ['y']]", "document_ids must be a one-dimensional"
         " array"),
        ("'q', ARRAY['a', 'b'], NULL::text[]", "document_ids is NULL"),
        ("'q', ARRAY[['a'], ['b']]", "document_contents must be a one-dimensional array of texts"),
        ("'q', ARRAY['a', NULL]", "document_contents[2] is NULL"),
    ],
)  # fmt: skip
def test_rank_refuses_bad_arguments_before_sending(conn, cohere, arguments, message):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        conn.execute(f"SELECT * FROM azure_ai.rank({arguments})")
    assert refused.value.diag.message_primary == f"azure_ai.rank: {message}"
    assert cohere.recorded.snapshot() == []


def test_rank_with_a_gpt_deployment(conn, openai, cohere):
    rows = conn.execute(  # Azure's example, verbatim
        """SELECT azure_ai.rank(
  query => 'Clear calling capability that blocks out background noise',
  document_contents => ARRAY['The product has a great battery life, good design, and decent sound quality.',
                        'These headphones are perfect for long calls and music.',
                        'Best headphones for music lovers. Call quality could have been better.',
                        'The product has a good design, but it is a bit heavy. Not recommended for travel.'],
  document_ids => ARRAY['Review1', 'Review2', 'Review3', 'Review4'],
  model => 'gpt-4.1'
) AS ranked_reviews;"""  # noqa: E501
    ).fetchall()
    places = e5_order(QUERY, REVIEWS)
    assert [row[0][:2] for row in rows] == [(f"Review{i}", str(n)) for n, i in enumerate(places, 1)]
    requests = openai.recorded.snapshot()
    assert len(requests) == 4 and cohere.recorded.snapshot() == []
    assert {r["path"] for r in requests} == {"/openai/deployments/gpt-4.1/chat/completions"}
    positional = conn.execute(
        "SELECT azure_ai.rank('Best headphones for travel', ARRAY['The headphones are"
        " lightweight and foldable, making them easy to carry.', 'Bad battery life, not so"
        " great for long trips.', 'The sound quality is excellent, with good noise"
        " isolation.'], 'gpt-4.1')"
    ).fetchall()
    assert len(positional) == 3


def test_the_openai_wire(conn, openai):
    conn.execute("SELECT azure_ai.set_setting('azure_openai.api_type', 'openai')")
    (answer,) = conn.execute("SELECT azure_ai.is_true('Water is wet', 'llama3')").fetchone()
    assert answer is True
    (request,) = openai.recorded.snapshot()
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {DEFAULT_KEY}"
    assert json.loads(request["body"])["model"] == "llama3"


def test_retried_and_fatal_statuses(conn, openai):
    openai.faults.extend([Fault(status=429, headers={"retry-after-ms": "10"}),
                          Fault(status=503)])  # fmt: skip
    assert conn.execute("SELECT azure_ai.is_true('It works')").fetchone() == (True,)
    assert len(openai.recorded.snapshot()) == 3
    openai.recorded.clear()
    openai.faults.extend([Fault(status=400)])
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        conn.execute("SELECT azure_ai.is_true('It works')")
    assert "HTTP 400" in refused.value.diag.message_primary
    assert len(openai.recorded.snapshot()) == 1  # not retried
    openai.faults.extend([Fault(status=500)] * 3)
    with pytest.raises(psycopg.errors.SystemError, match="HTTP 500"):
        conn.execute("SELECT azure_ai.generate('hello')")


@pytest.mark.parametrize(
    ("call", "answer", "message"),
    [
        ("is_true('It works')", {"message": {"content": "yes"}},
         "answered an answer that does not follow the JSON schema: 'yes'"),
        ("generate('hi')", {"message": "hi"}, "answered a body without a chat completion"),
        ("generate('hi')", {"message": {"content": "a\u0000b"}},
         "answered an answer PostgreSQL cannot hold: 'a\\x00b'"),
        ("extract('doc', ARRAY['a'])", {"message": {"content": "[1, 2]"}},
         "answered an answer that does not follow the JSON schema: '[1, 2]'"),
        ("extract('doc', ARRAY['a'])", {"message": {"content": '{"a": "\\u0000"}'}},
         "answered an answer that does not follow the JSON schema"),
        ("rank('q', ARRAY['a', 'b'], 'gpt-4.1')",
         {"message": {"content": '{"relevance_score": NaN}'}},
         "answered an answer that does not follow the JSON schema"),
        ("generate('hi')", {"message": {"content": None, "refusal": "No." * 100}},
         "answered a refusal: 'No.No."),
    ],
)  # fmt: skip
def test_answers_that_are_not_results_are_clear_errors(conn, openai, call, answer, message):
    body = json.dumps({"choices": [{"finish_reason": "stop", **answer}]})
    openai.faults.extend([Fault(body=body)])
    with pytest.raises(psycopg.errors.InvalidJsonText) as failed:  # 22032
        conn.execute(f"SELECT * FROM azure_ai.{call}")
    assert message in failed.value.diag.message_primary
    assert len(failed.value.diag.message_primary) < 300


def test_pg_cancel_backend_interrupts_a_slow_call(conn, database, openai):
    openai.faults.extend([Fault(latency_ms=60_000)])
    call = run_in_thread(database, "SELECT azure_ai.generate('take your time')")
    wait_until(lambda: openai.in_flight == 1, "the call in flight")
    conn.execute("SELECT pg_cancel_backend(%s)", (call["pid"],))
    assert_interrupted(call, "due to user request", "azure_ai.generate")


def test_per_row_calls_are_sent_in_parallel_in_row_order(conn, openai):
    conn.execute("DROP TABLE IF EXISTS notes")
    conn.execute("CREATE TABLE notes AS SELECT g AS id, 'note ' || g AS body"
                 " FROM generate_series(1, 40) g")  # fmt: skip
    conn.execute("SET azure_ai_sim.enable_batch_mode = on")
    openai.reset_counts()
    openai.latency_ms = 50
    try:
        rows = conn.execute(
            "SELECT id, azure_ai.generate(body), azure_ai.extract(body, ARRAY['n: integer'])"
            " FROM notes ORDER BY id"
        ).fetchall()
    finally:
        openai.latency_ms = 0
    assert [r[1] for r in rows] == [f"Simulated reply: note {i}" for i in range(1, 41)]
    assert all(set(r[2]) == {"n"} for r in rows)
    assert openai.max_in_flight > 1
    plan = "\n".join(
        r[0] for r in conn.execute(
            "EXPLAIN (VERBOSE, COSTS OFF) SELECT azure_ai.is_true(body) FROM notes"
        ).fetchall()
    )  # fmt: skip
    assert "Custom Scan (Batch)" in plan


def test_the_ledger_counts_chat_tokens(conn, openai):
    conn.execute("CREATE EXTENSION IF NOT EXISTS ml_pipeline")
    ledger = (
        "SELECT coalesce(sum(requests), 0), coalesce(sum(input_tokens), 0),"
        " coalesce(sum(output_tokens), 0) FROM ml_pipeline.usage"
        " WHERE service = 'azure_openai' AND endpoint = 'counted-chat'"
    )
    before = conn.execute(ledger).fetchone()
    conn.execute("SELECT azure_ai.generate('Count my tokens', 'counted-chat')")
    after = conn.execute(ledger).fetchone()
    assert after[0] - before[0] == 1 and after[1] > before[1] and after[2] > before[2]


@pytest.mark.parametrize(
    ("setting", "call", "hint"),
    [
        ("azure_ml.serverless_ranking_endpoint", "rank('q', ARRAY['a'])",
         "SELECT azure_ai.set_setting('azure_ml.serverless_ranking_endpoint', 'https://"
         "<deployment>.<region>.models.ai.azure.com/v2/rerank');"),
        ("azure_ml.serverless_ranking_endpoint_key", "rank('q', ARRAY['a'])",
         "SELECT azure_ai.set_setting('azure_ml.serverless_ranking_endpoint_key', '<key>'); or"
         " set azure_ml.auth_type to managed-identity."),
        ("azure_openai.subscription_key", "is_true('x')",
         "SELECT azure_ai.set_setting('azure_openai.subscription_key', '<key>'); or set"
         " azure_openai.auth_type to managed-identity."),
    ],
)  # fmt: skip
def test_a_missing_setting_says_how_to_set_it(conn, setting, call, hint):
    conn.execute("SELECT azure_ai.set_setting(%s, NULL)", (setting,))
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as missing:
        conn.execute(f"SELECT * FROM azure_ai.{call}")
    assert missing.value.diag.message_primary.endswith(f'setting "{setting}" is not set')
    assert missing.value.diag.message_hint == hint
