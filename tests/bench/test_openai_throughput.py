"""azure_openai.create_embeddings over 10,000 texts, with 30 ms of latency per request (the
simulator in its own process), in its array form and per row in a SELECT list (batch
mode), against a Python client outside the database that reads the same texts and sends
the same requests (100 texts each) with the same parallelism, as the openai package's
client would. Writes build/bench/openai_throughput.json."""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy
import psycopg
import pytest
from processes import simulator_processes
from test_batch_throughput import chunks, column, in_database, medians, rate, requests_sent

from azure_ai_sim.sim.openai import DEFAULT_KEY
from azure_ai_sim.transport import DEFAULT_PARALLEL_REQUESTS

ROWS = 10_000
LATENCY_MS = 30
ROUNDS = 3
PER_REQUEST = 100  # the array form's default batch_size, and the batch form's
RESULT = Path(__file__).resolve().parents[2] / "build" / "bench" / "openai_throughput.json"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with simulator_processes("openai", options=("--latency-ms", str(LATENCY_MS))) as urls:
        yield urls["openai"]


@pytest.fixture(scope="module")
def bench_conn(database, endpoint):
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION azure_ai")
        conn.execute("SELECT azure_ai.set_setting('azure_openai.endpoint', %s)", (endpoint,))
        conn.execute("SELECT azure_ai.set_setting('azure_openai.subscription_key', %s)",
                     (DEFAULT_KEY,))  # fmt: skip
        conn.execute(
            "CREATE TABLE notes AS SELECT g AS id, 'Customer note number ' || g || ': it works.'"
            " AS body FROM generate_series(1, %s) g",
            (ROWS,),
        )
        yield conn


def send(url: str, texts: list[str]) -> list:
    """One request of texts, as the openai client sends it (base64, decoded with numpy);
    the embeddings, in order."""
    body = json.dumps({"input": texts, "encoding_format": "base64"}).encode()
    request = urllib.request.Request(
        url, body, method="POST",
        headers={"Content-Type": "application/json", "api-key": DEFAULT_KEY},
    )  # fmt: skip
    with urllib.request.urlopen(request) as answer:
        data = json.load(answer)["data"]
    return [
        numpy.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        for item in sorted(data, key=lambda item: item["index"])
    ]


def test_openai_throughput(bench_conn, endpoint):
    conn = bench_conn
    url = f"{endpoint}/openai/deployments/emb/embeddings?api-version=2024-10-21"
    # The embeddings are used in the database, as a query that fills a vector column
    # does, not printed as text for the client (3.8 million floats): the client's side
    # decodes them into numpy arrays, and prints nothing either.
    per_row = (
        "SELECT sum(cardinality(e)) FROM (SELECT azure_openai.create_embeddings('emb', body)"
        " AS e FROM notes OFFSET 0) s"
    )
    array = (
        "SELECT sum(cardinality(embedding)) FROM azure_openai.create_embeddings('emb',"
        " (SELECT array_agg(body ORDER BY id) FROM notes))"
    )
    conn.execute(f"{array}").fetchall()  # the simulator's embeddings, computed once
    assert requests_sent(endpoint, conn, per_row) == ROWS // PER_REQUEST

    def client() -> float:
        def run() -> None:
            texts = column(conn, "SELECT body FROM notes ORDER BY id")
            with ThreadPoolExecutor(DEFAULT_PARALLEL_REQUESTS) as pool:
                list(pool.map(lambda batch: send(url, batch), chunks(texts, PER_REQUEST)))

        return rate(ROWS, run)

    rates = medians(
        ROUNDS,
        array=lambda: in_database(conn, array, True, ROWS),
        per_row=lambda: in_database(conn, per_row, True, ROWS),
        client=client,
    )
    result = {
        "benchmark": "openai_throughput", "rows": ROWS, "latency_ms": LATENCY_MS,
        "rounds": ROUNDS, "parallel_requests": DEFAULT_PARALLEL_REQUESTS,
        "texts_per_request": PER_REQUEST, "array_form_rows_per_s": rates["array"],
        "per_row_rows_per_s": rates["per_row"], "client_rows_per_s": rates["client"],
        "array_form_to_client": rates["array"] / rates["client"],
        "per_row_to_client": rates["per_row"] / rates["client"], "target": 0.8,
    }  # fmt: skip
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
