"""azure_ml.score over 10,000 rows, with 30 ms of latency per request (the simulator in its
own process), against a Python client outside the database that reads the same rows and
sends the same batches with the same parallelism, and against per-row azure_ml.invoke
with batching off (over OFF_ROWS rows: at 30 ms a row, 10,000 would take minutes).
Writes build/bench/score_throughput.json."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from processes import simulator_processes
from test_batch_throughput import chunks, column, in_database, medians, rate, requests_sent

from azure_ai_sim.sim.models import HOUSING
from azure_ai_sim.transport import DEFAULT_PARALLEL_REQUESTS

ROWS = 10_000
OFF_ROWS = 300
LATENCY_MS = 30
ROUNDS = 5
KEY = "sim-key"
RESULT = Path(__file__).resolve().parents[2] / "build" / "bench" / "score_throughput.json"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    options = ("--latency-ms", str(LATENCY_MS), "--key", KEY)
    with simulator_processes("azureml", options=options) as urls:
        yield urls["azureml"]


@pytest.fixture(scope="module")
def bench_conn(database, endpoint):
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION azure_ai")
        conn.execute(
            "SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', %s)", (endpoint + "/score",)
        )
        conn.execute("SELECT azure_ai.set_setting('azure_ml.endpoint_key', %s)", (KEY,))
        conn.execute(
            "CREATE TABLE houses AS SELECT g AS id, ARRAY[g %% 10, 2, 3, 4, 5, 6, 7, 8]::float8[]"
            " AS features FROM generate_series(1, %s) g",
            (ROWS,),
        )
        yield conn


def send(url: str, rows: list) -> list:
    """One request of rows, as azure_ml.score sends it (the swagger's pandas split form);
    its predictions."""
    split = {"columns": list(HOUSING.features), "index": list(range(len(rows))), "data": rows}
    request = urllib.request.Request(
        url, json.dumps({"input_data": split}).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
    )  # fmt: skip
    with urllib.request.urlopen(request) as answer:
        return json.load(answer)


def test_score_throughput(bench_conn, endpoint):
    conn = bench_conn
    score = "SELECT azure_ml.score(features) FROM houses"
    conn.execute(f"{score} LIMIT 1").fetchall()  # the swagger, fetched once per backend
    per_request = -(-ROWS // requests_sent(endpoint, conn, score))

    def client() -> float:
        def run() -> None:
            rows = column(conn, "SELECT features FROM houses")
            with ThreadPoolExecutor(DEFAULT_PARALLEL_REQUESTS) as pool:
                list(
                    pool.map(
                        lambda batch: send(endpoint + "/score", batch), chunks(rows, per_request)
                    )
                )

        return rate(ROWS, run)

    on, outside = medians(
        ROUNDS, on=lambda: in_database(conn, score, True, ROWS), client=client
    ).values()
    invoke = (
        "SELECT azure_ml.invoke(jsonb_build_object('input_data', jsonb_build_array("
        f"to_jsonb(features)))) FROM houses WHERE id <= {OFF_ROWS}"
    )
    off = in_database(conn, invoke, False, OFF_ROWS)
    result = {
        "benchmark": "score_throughput", "rows": ROWS, "latency_ms": LATENCY_MS,
        "rounds": ROUNDS, "parallel_requests": DEFAULT_PARALLEL_REQUESTS,
        "rows_per_request": per_request, "score_rows_per_s": on,
        "client_rows_per_s": outside, "invoke_batching_off_rows_per_s": off,
        "score_to_client": on / outside, "score_to_invoke_off": on / off,
    }  # fmt: skip
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
