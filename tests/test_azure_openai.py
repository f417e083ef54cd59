"""azure_openai.create_embeddings against the Azure OpenAI / OpenAI-compatible simulator:
Azure's documented calls, both wire forms, batches, dimensions, throw_on_error, the ledger."""

from __future__ import annotations

import json

import psycopg
import pytest

from azure_ai_sim.sim import Fault
from azure_ai_sim.sim.openai import DEFAULT_KEY
from conftest import assert_interrupted, run_in_thread, set_settings

TEXTS = ["The cat sat on the mat.", "A cat was sitting on a mat.", "Stock markets fell today."]


@pytest.fixture
def conn(database, openai):
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS azure_ai")
        set_settings(conn, {"azure_openai.endpoint": openai.url,
                            "azure_openai.subscription_key": DEFAULT_KEY,
                            "azure_openai.api_type": "azure"})  # fmt: skip
        yield conn


def test_azures_documented_calls(conn, openai):
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    (embedding,) = conn.execute(
        "SELECT azure_openai.create_embeddings('text-embedding-ada-002', 'text')"
    ).fetchone()
    assert len(embedding) == 384 and abs(sum(v * v for v in embedding) - 1) < 1e-4
    (again,) = conn.execute(
        "SELECT azure_openai.create_embeddings('text-embedding-ada-002', 'text',"
        " throw_on_error => false, max_attempts => 3, retry_delay_ms => 2000)"
    ).fetchone()
    assert again == embedding
    (request,) = openai.recorded.snapshot()[:1]
    assert request["path"] == "/openai/deployments/text-embedding-ada-002/embeddings"
    assert request["headers"]["api-key"] == DEFAULT_KEY
    # a vector column filled without a cast, and queried with ::vector, as Azure's examples
    conn.execute("DROP TABLE IF EXISTS sessions")
    conn.execute("CREATE TABLE sessions (id int PRIMARY KEY, abstract text, e vector(384))")
    conn.execute(
        "INSERT INTO sessions SELECT g, (%s::text[])[g] FROM generate_series(1, 3) g", (TEXTS,)
    )
    conn.execute("UPDATE sessions SET e = azure_openai.create_embeddings('emb', abstract)")
    nearest = conn.execute(
        "SELECT id FROM sessions ORDER BY e <=> azure_openai.create_embeddings('emb',"
        " 'a kitten on a rug')::vector LIMIT 1"
    ).fetchone()
    assert nearest in ((1,), (2,))


def test_the_array_form_keeps_input_order_in_batches_sent_together(conn, openai):
    texts = [f"text number {i}" for i in range(25)]
    rows = conn.execute(
        "SELECT embedding FROM azure_openai.create_embeddings('emb', %s::text[], batch_size => 10)",
        (texts,),
    ).fetchall()
    singles = [
        conn.execute("SELECT azure_openai.create_embeddings('emb', %s)", (t,)).fetchone()[0]
        for t in (texts[0], texts[24])
    ]
    assert len(rows) == 25 and rows[0][0] == singles[0] and rows[24][0] == singles[1]
    sizes = sorted(len(r["body"].split('"text number')) - 1 for r in openai.recorded.snapshot()[:3])
    assert sizes == [5, 10, 10]


def test_dimensions_and_the_openai_wire(conn, openai):
    (short,) = conn.execute(
        "SELECT azure_openai.create_embeddings('emb', 'text', dimensions => 64)"
    ).fetchone()
    assert len(short) == 64
    conn.execute("SELECT azure_ai.set_setting('azure_openai.api_type', 'openai')")
    (same,) = conn.execute(
        "SELECT azure_openai.create_embeddings('text-embedding-3-small', 'text', 64)"
    ).fetchone()
    assert same == short
    request = openai.recorded.snapshot()[-1]
    assert request["path"] == "/v1/embeddings"
    assert request["headers"]["authorization"] == f"Bearer {DEFAULT_KEY}"
    assert '"model": "text-embedding-3-small"' in request["body"]


def test_a_retry_waits_for_retry_after_ms(conn, openai):
    openai.faults.extend([Fault(status=429, headers={"retry-after-ms": "600"})])
    conn.execute(
        "SELECT azure_openai.create_embeddings('emb', 'text', max_attempts => 2,"
        " retry_delay_ms => 1)"
    )
    first, again = (r["received"] for r in openai.recorded.snapshot())
    assert again - first >= 0.6  # the simulator's clock: what it asked for, not 1 ms


def test_throw_on_error_and_retries(conn, openai):
    openai.faults.extend([Fault(status=429, headers={"retry-after-ms": "10"})])
    (retried,) = conn.execute(
        "SELECT azure_openai.create_embeddings('emb', 'text', max_attempts => 2,"
        " retry_delay_ms => 10)"
    ).fetchone()
    assert len(retried) == 384
    openai.faults.extend([Fault(status=500)] * 2)
    with pytest.raises(psycopg.errors.SystemError) as failed:  # 58000
        conn.execute("SELECT azure_openai.create_embeddings('emb', 'text')")
    assert "HTTP 500" in str(failed.value)
    (kept,) = conn.execute(
        "SELECT azure_openai.create_embeddings('emb', 'text', throw_on_error => false)"
    ).fetchone()
    assert kept is None


def test_the_ledger_counts_its_tokens(conn, openai):
    conn.execute("CREATE EXTENSION IF NOT EXISTS ml_pipeline")
    ledger = (
        "SELECT coalesce(sum(requests), 0), coalesce(sum(input_tokens), 0)"
        " FROM ml_pipeline.usage WHERE service = 'azure_openai' AND endpoint = 'counted'"
    )
    before = conn.execute(ledger).fetchone()
    conn.execute("SELECT azure_openai.create_embeddings('counted', %s::text[])", (TEXTS,))
    after = conn.execute(ledger).fetchone()
    assert after[0] - before[0] == 1 and after[1] - before[1] > 0


def test_per_row_calls_in_a_query_share_requests_and_give_each_rows_own_result(conn, openai):
    conn.execute("DROP TABLE IF EXISTS notes")
    conn.execute("CREATE TABLE notes AS SELECT g AS id, 'note ' || g AS body"
                 " FROM generate_series(1, 250) g")  # fmt: skip
    conn.execute("SET azure_ai_sim.enable_batch_mode = on")
    batched = conn.execute(
        "SELECT id, azure_openai.create_embeddings('emb', body) FROM notes ORDER BY id"
    ).fetchall()
    bodies = [r["body"] for r in openai.recorded.snapshot()]
    assert sorted(len(json.loads(body)["input"]) for body in bodies) == [50, 100, 100]
    conn.execute("SET azure_ai_sim.enable_batch_mode = off")
    alone = conn.execute(
        "SELECT id, azure_openai.create_embeddings('emb', body) FROM notes"
        " WHERE id IN (1, 250) ORDER BY id"
    ).fetchall()
    assert [batched[0], batched[-1]] == alone


def test_inputs_over_the_limits_are_refused_before_sending(conn, openai):
    long_text = "word " * 9000  # at least 9,000 tokens in any of OpenAI's tokenizers
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        conn.execute("SELECT azure_openai.create_embeddings('emb', %s)", (long_text,))
    assert refused.value.diag.message_primary == (
        "azure_openai.create_embeddings: input has at least 9000 tokens; an embeddings input"
        " may have at most 8192"
    )
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"input\[2\] must not be an"):
        conn.execute("SELECT azure_openai.create_embeddings('emb', ARRAY['a', ''])")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="batch_size must be from 1"):
        conn.execute("SELECT azure_openai.create_embeddings('emb', ARRAY['a'], 2049)")
    assert openai.recorded.snapshot() == []
    # as many characters, but fewer sure tokens: sent, and the service decides
    (fits,) = conn.execute(
        "SELECT azure_openai.create_embeddings('emb', %s)", ("x" * 9000,)
    ).fetchone()
    assert len(fits) == 384


def test_a_refused_input_with_throw_on_error_false_is_null_and_a_warning(conn, openai):
    warnings: list[str] = []
    conn.add_notice_handler(lambda notice: warnings.append(notice.message_primary))
    (single,) = conn.execute(
        "SELECT azure_openai.create_embeddings('emb', '', throw_on_error => false)"
    ).fetchone()
    rows = conn.execute(
        "SELECT embedding IS NULL FROM azure_openai.create_embeddings('emb', ARRAY['a', '', 'b'],"
        " throw_on_error => false)"
    ).fetchall()
    assert single is None and rows == [(False,), (True,), (False,)]
    assert warnings == [
        "azure_openai.create_embeddings: input must not be an empty string",
        "azure_openai.create_embeddings: input[2] must not be an empty string",
    ]
    # a server of OpenAI's API checks its own token limit (a local model's may be longer)
    conn.execute("SELECT azure_ai.set_setting('azure_openai.api_type', 'openai')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="HTTP 400.*maximum context"):
        conn.execute("SELECT azure_openai.create_embeddings('emb', %s)", ("word " * 9000,))


def test_a_failed_request_of_the_array_form_with_throw_on_error_false_stops_no_other(conn, openai):
    warnings: list[str] = []
    conn.add_notice_handler(lambda notice: warnings.append(notice.message_primary))
    conn.execute("SET azure_ai_sim.max_parallel_requests = 1")  # the requests in input order
    openai.faults.extend([Fault(status=500)])  # the first request's only attempt
    rows = conn.execute(
        "SELECT embedding IS NULL FROM azure_openai.create_embeddings('emb', ARRAY['a', 'b', 'c'],"
        " batch_size => 1, throw_on_error => false)"
    ).fetchall()
    assert rows == [(True,), (False,), (False,)]
    assert len(openai.recorded.snapshot()) == 3
    assert len(warnings) == 1 and "HTTP 500" in warnings[0], warnings


def test_a_batch_refused_for_one_text_sends_each_text_alone(conn, openai):
    conn.execute("DROP TABLE IF EXISTS notes")
    conn.execute("CREATE TABLE notes AS SELECT g AS id, 'note ' || g AS body"
                 " FROM generate_series(1, 5) g")  # fmt: skip
    conn.execute("SET azure_ai_sim.enable_batch_mode = on")
    openai.faults.extend([Fault(status=400)])  # the shared request, as if one text were bad
    rows = conn.execute(
        "SELECT id, azure_openai.create_embeddings('emb', body) IS NOT NULL FROM notes ORDER BY id"
    ).fetchall()
    assert rows == [(i, True) for i in range(1, 6)]
    sizes = [len(json.loads(r["body"])["input"]) for r in openai.recorded.snapshot()]
    assert sizes == [5, 1, 1, 1, 1, 1]


def test_statement_timeout_interrupts_a_slow_call(database, openai):
    openai.faults.extend([Fault(latency_ms=60_000)])
    call = run_in_thread(
        database, "SELECT azure_openai.create_embeddings('emb', 'take your time')",
        setup="SET statement_timeout = '1s'",
    )  # fmt: skip
    assert_interrupted(call, "due to statement timeout", "azure_openai.create_embeddings")


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried(conn, openai, status):
    openai.faults.extend([Fault(status=status)])
    (embedding,) = conn.execute(
        "SELECT azure_openai.create_embeddings('emb', 'text', max_attempts => 2,"
        " retry_delay_ms => 1)"
    ).fetchone()
    assert len(embedding) == 384 and len(openai.recorded.snapshot()) == 2


@pytest.mark.parametrize(
    ("status", "sqlstate"),
    [(400, "22023"), (401, "28000"), (403, "42501"), (404, "42704"), (409, "22000"),
     (424, "38000")],
)  # fmt: skip
def test_other_statuses_are_not_retried(conn, openai, status, sqlstate):
    openai.faults.extend([Fault(status=status)])
    with pytest.raises(psycopg.Error) as failed:
        conn.execute(
            "SELECT azure_openai.create_embeddings('emb', 'text', max_attempts => 3,"
            " retry_delay_ms => 1)"
        )
    assert failed.value.sqlstate == sqlstate
    assert f"HTTP {status} from {openai.url}/openai/deployments/emb/embeddings" in str(
        failed.value.diag.message_primary
    )
    assert len(openai.recorded.snapshot()) == 1


def test_azures_documented_examples_verbatim(conn, openai):
    """Microsoft's examples, their vector(1536) columns vector(384) (the simulator's e5)."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    conn.execute("DROP TABLE IF EXISTS conference_session_embeddings, conference_sessions,"
                 " recipes, listings")  # fmt: skip
    conn.execute(
        "CREATE TABLE conference_sessions (session_id int PRIMARY KEY, session_abstract text)"
    )
    conn.execute("CREATE TABLE conference_session_embeddings (session_id int, session_embedding"
                 " vector(384))")  # fmt: skip
    conn.execute(
        "INSERT INTO conference_sessions VALUES (1, 'Building chatbots with language models'),"
        " (2, 'Tuning autovacuum on busy tables'), (3, 'Backups and point-in-time recovery')"
    )
    conn.execute("""
INSERT INTO conference_session_embeddings
    (session_id, session_embedding)
SELECT
    c.session_id, (azure_openai.create_embeddings('text-embedding-ada-002', c.session_abstract))
FROM
    conference_sessions as c
LEFT OUTER JOIN
    conference_session_embeddings e ON e.session_id = c.session_id
WHERE
    e.session_id IS NULL;""")
    (top,) = conn.execute("""
SELECT
    c.*
FROM
    conference_session_embeddings e
INNER JOIN
    conference_sessions c ON c.session_id = e.session_id
ORDER BY
    e.session_embedding <=> azure_openai.create_embeddings('text-embedding-ada-002', 'Session to learn about building chatbots')::vector
LIMIT 1;""").fetchall()  # noqa: E501
    assert top == (1, "Building chatbots with language models")
    conn.execute("CREATE TABLE recipes (rid int PRIMARY KEY, recipe_name text, cuisine_path"
                 " text, ingredients text, nutrition text, directions text)")  # fmt: skip
    conn.execute("INSERT INTO recipes SELECT g, 'Soup ' || g, '/Soups/', 'water, salt',"
                 " '10 kcal', 'Boil.' FROM generate_series(1, 7) g")  # fmt: skip
    conn.execute("ALTER TABLE recipes ADD COLUMN embedding vector(384);")
    conn.execute("""
WITH ro AS (
    SELECT ro.rid
    FROM
        recipes ro
    WHERE
        ro.embedding is null
        LIMIT 500
)
UPDATE
    recipes r
SET
    embedding = azure_openai.create_embeddings('text-embedding-ada-002', r.recipe_name||' '||r.cuisine_path||' '||r.ingredients||' '||r.nutrition||' '||r.directions)
FROM
    ro
WHERE
    r.rid = ro.rid;""")  # noqa: E501
    assert conn.execute("SELECT count(*) FROM recipes WHERE embedding IS NULL").fetchone() == (0,)
    conn.execute("CREATE TABLE listings (id int, name text, description text,"
                 " listing_vector vector(384))")  # fmt: skip
    conn.execute("INSERT INTO listings VALUES (1, 'Loft', 'Sunny apartment full of natural light'),"
                 " (2, 'Cellar', 'A dark basement room')")  # fmt: skip
    conn.execute("""
UPDATE listings
SET listing_vector = azure_openai.create_embeddings('embedding', description, max_attempts => 5, retry_delay_ms => 500)
WHERE listing_vector IS NULL;""")  # noqa: E501
    nearest = conn.execute("""
SELECT id, name FROM listings
ORDER BY listing_vector <=> azure_openai.create_embeddings('embedding', 'bright natural light')::vector
LIMIT 10;""").fetchall()  # noqa: E501
    assert nearest[0] == (1, "Loft")
    # in PL/pgSQL, into a vector variable, as Azure's recommendation tutorial does
    notices: list[str] = []
    conn.add_notice_handler(lambda notice: notices.append(notice.message_primary))
    conn.execute("""
DO $$
DECLARE
    query_embedding vector(384);
BEGIN
    query_embedding := (azure_openai.create_embeddings('text-embedding-ada-002', 'chatbots'));
    RAISE NOTICE '%', vector_dims(query_embedding);
END $$;""")
    assert notices == ["384"]
