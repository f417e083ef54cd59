"""azure_local_ai inputs: bounded work and memory for any input size, the same embeddings
as a tokenization of the whole text, and clear errors for inputs of the wrong shape."""

from __future__ import annotations

import random
from pathlib import Path

import psycopg
import pytest

from conftest import INT8, model_files

# What one call may add to a backend's peak memory, whatever the input's size (README).
CALL_MEMORY_BOUND_MB = 64


pytestmark = pytest.mark.usefixtures("local_ai")


@pytest.fixture(scope="module")
def int8_files(database):
    with psycopg.connect(database) as conn:
        return model_files(conn, INT8)


def embed(conn, text, model=INT8):
    query = "SELECT azure_local_ai.create_embeddings(%s, %s)"
    return conn.execute(query, (model, text)).fetchone()[0]


def long_texts() -> dict[str, str]:
    """About 200 KB each: words, text without whitespace, and whitespace-heavy text."""
    chooser = random.Random(3)
    words = "the of Paris bread Hauptstadt größte 東京 都市 наука ciudad".split()
    return {
        "words": " ".join(chooser.choice(words) for _ in range(30_000))[:200_000],
        "no_whitespace": "".join(chooser.choice(words) for _ in range(30_000))[:200_000],
        "whitespace_runs": "".join(
            chooser.choice(words) + " \t\n\u3000"[chooser.randrange(4)] * chooser.randrange(1, 60)
            for _ in range(8_000)
        )[:200_000],
        "unknown_runs": "\U0001f9ff" * 150_000 + " ".join(words * 200),
    }


def reference_embedding(model_path: str, tokenizer_path: str, text: str):
    """The embedding of the first 510 tokens of the whole text, tokenized in full."""
    import numpy as np
    import onnxruntime
    import sentencepiece

    tokenizer = sentencepiece.SentencePieceProcessor(model_file=tokenizer_path)
    ids = [0, *tokenizer.encode(text.rstrip())[:510], 2]
    session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    feed = {"input_ids": np.array([ids]), "attention_mask": np.ones((1, len(ids)), np.int64)}
    return session.run(["sentence_embedding"], feed)[0][0]


@pytest.mark.parametrize("kind", sorted(long_texts()))
def test_long_texts_embed_as_if_tokenized_whole(conn, int8_files, kind):
    text = long_texts()[kind]
    expected = reference_embedding(*int8_files, text)
    assert embed(conn, text) == pytest.approx(expected.tolist(), abs=2e-5)
    (from_array,) = conn.execute(
        "SELECT embedding FROM azure_local_ai.create_embeddings(%s, %s::text[])", (INT8, [text])
    ).fetchone()
    assert from_array == pytest.approx(expected.tolist(), abs=2e-5)


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


@pytest.fixture(scope="module")
def huge_row(database):
    """A 100 MB text in a table, built by the server (TOASTed and compressed)."""
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE TABLE huge (id int, body text)")
        conn.execute("INSERT INTO huge SELECT 1, repeat('word ', 20000000)")
        conn.execute("INSERT INTO huge SELECT 2, repeat('wordword', 12500000)")
    yield
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("DROP TABLE huge")


def peak_growth_mb(conn, query: str, arguments: tuple) -> float:
    """How much the backend's peak memory grows while it runs the query."""
    pid = conn.info.backend_pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak := now
    before = memory_kb(pid, "VmHWM")
    rows = conn.execute(query, arguments).fetchall()
    assert rows
    return (memory_kb(pid, "VmHWM") - before) / 1024


SINGLE = "SELECT azure_local_ai.create_embeddings(%s, {text}) FROM huge WHERE id = %s"
ARRAY = (
    "SELECT e.embedding FROM huge, azure_local_ai.create_embeddings("
    "%s, ARRAY[{text}, 'short', {text}]) AS e WHERE id = %s"
)
CALLERS_ARRAY = "SELECT cardinality(ARRAY[{text}, 'short', {text}]), %s FROM huge WHERE id = %s"


@pytest.mark.parametrize("row", [1, 2])
def test_a_100_mb_text_costs_bounded_memory(database, huge_row, row):
    """What a 100 MB text costs beyond a text of 3,000 characters (the same 512 tokens):
    the single-text form reads a slice of the TOASTed value; the array form adds a bounded
    figure to what the caller's own array costs (two 100 MB elements here)."""
    with psycopg.connect(database, autocommit=True) as conn:
        if not Path(f"/proc/{conn.info.backend_pid}/clear_refs").exists():
            pytest.skip("the server runs elsewhere")

        def cost(template: str, text: str) -> float:
            return peak_growth_mb(conn, template.format(text=text), (INT8, row))

        short = "repeat('word ', 600)"
        for template in (SINGLE, ARRAY):  # loads the model, runs both shapes once
            cost(template, short)
        single = cost(SINGLE, "body") - cost(SINGLE, short)
        array = cost(ARRAY, "body") - cost(CALLERS_ARRAY, "body")
        array -= cost(ARRAY, short) - cost(CALLERS_ARRAY, short)
    assert single < CALL_MEMORY_BOUND_MB, f"single: the peak grew by {single:.0f} MB more"
    assert array < CALL_MEMORY_BOUND_MB, f"array: the peak grew by {array:.0f} MB more"


# --- inputs of the wrong shape --------------------------------------------------------------


def test_two_dimensional_inputs_are_refused(conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute(
            "SELECT * FROM azure_local_ai.create_embeddings(%s, ARRAY[['a','b'],['c','d']])",
            (INT8,),
        )
    assert caught.value.diag.message_primary == (
        "azure_local_ai.create_embeddings: inputs must be a one-dimensional array, "
        "not one of 2 dimensions"
    )


def test_ids_must_match_the_inputs_one_to_one(conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute(
            "SELECT * FROM azure_local_ai.create_embeddings("
            "%s, ARRAY['a','b','c','d'], ARRAY[[1,2],[3,4]])",
            (INT8,),
        )
    assert caught.value.diag.message_primary == (
        "azure_local_ai.create_embeddings: ids must be a one-dimensional array "
        "as long as inputs, not one of 2 dimensions"
    )
    rows = conn.execute(
        "SELECT id FROM azure_local_ai.create_embeddings(%s, ARRAY['a','b'], ARRAY[7, 8])",
        (INT8,),
    ).fetchall()
    assert rows == [(7,), (8,)]
