"""Batch mode against per-row calls and against clients outside the database, with 30 ms of
latency per request, as real services answer (the simulators run as their own processes).

- detect_sentiment per row in a SELECT list, batching on and off, and a boto3 client
  sending BatchDetectSentiment of 25 documents from 8 threads;
- invoke_endpoint through Aurora's classify_event wrapper, batching on, and a boto3
  client sending as many multi-record CSV requests of as many rows from 8 threads;
- azure_ml.invoke per row, batching on and off (parallel requests only);
- create_embeddings(model, text) per row in a SELECT list against the array form, for
  the fp32 model (texts of one length share a run) and the int8 one (each text has a
  run of its own: its quantization scale spans a run, and each row must get its own
  call's bytes).

Each client outside the database reads its inputs from the table and gets each row's
result, as the query in the database does.

Batching off at 30 ms a row would take minutes for 10,000 rows: it runs over OFF_ROWS
rows, and rates (rows/s) are compared. Writes build/bench/batch_throughput.json.
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import psycopg
import pytest
from botocore.config import Config
from processes import simulator_processes

from conftest import FP32, INT8, point_aws_at

ROWS = 10_000
OFF_ROWS = 300
LATENCY_MS = 30
THREADS = 8
EMBED_ROWS = 1_000
ROUNDS = 5  # of the runs at batch speed; medians are compared
KEY, SECRET = "AKIDSIMULATOR", "sim-secret"
RESULT = Path(__file__).resolve().parents[2] / "build" / "bench" / "batch_throughput.json"
FEEDBACK = "The support team was wonderful and solved my problem quickly."
CLASSIFY_EVENT = """
CREATE FUNCTION classify_event (IN arg1 INT, IN arg2 DATE, OUT category INT)
AS $$
    SELECT aws_sagemaker.invoke_endpoint (
        'field-count', NULL,
        arg1, arg2                        -- model inputs are separate arguments
        )::INT                            -- cast the output to INT
$$ LANGUAGE SQL PARALLEL SAFE COST 5000
"""


@pytest.fixture(scope="module")
def endpoints() -> Iterator[dict[str, str]]:
    options = ("--latency-ms", str(LATENCY_MS))
    with simulator_processes("sagemaker", "comprehend", "azureml", options=options) as urls:
        yield urls


@pytest.fixture(scope="module")
def bench_conn(database, endpoints):
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION aws_ml CASCADE")
        conn.execute("CREATE EXTENSION azure_ai")
        conn.execute("CREATE EXTENSION azure_local_ai CASCADE")
        point_aws_at(conn, {name: endpoints[name] for name in ("sagemaker", "comprehend")})
        conn.execute(
            "SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', %s)",
            (endpoints["azureml"] + "/score",),
        )
        conn.execute("SELECT azure_ai.set_setting('azure_ml.endpoint_key', 'sim-key')")
        conn.execute(CLASSIFY_EVENT)
        conn.execute(
            "CREATE TABLE support AS SELECT g AS id, %s || ' ' || g AS feedback,"
            " DATE '2024-01-01' + g %% 365 AS day FROM generate_series(1, %s) g",
            (FEEDBACK, ROWS),
        )
        yield conn


def client(service: str, url: str):
    return boto3.client(
        service, endpoint_url=url, region_name="us-east-1", aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        config=Config(retries={"total_max_attempts": 1}, max_pool_connections=THREADS),
    )  # fmt: skip


def rate(rows: int, run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return rows / (time.perf_counter() - started)


def medians(rounds: int, **variants: Callable[[], float]) -> dict[str, float]:
    """Each variant's median rate over the rounds, the variants taking turns: the machine
    is shared, and one run of 10,000 rows at batch speed takes a tenth of a second."""
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, measure in variants.items():
            rates[name].append(measure())
    return {name: statistics.median(values) for name, values in rates.items()}


def in_database(conn: psycopg.Connection, query: str, batching: bool, rows: int) -> float:
    conn.execute(f"SET azure_ai_sim.enable_batch_mode = {batching}")
    conn.execute(f"{query} LIMIT 20").fetchall()  # warm up: imports, connections
    return rate(rows, lambda: conn.execute(query).fetchall())


def batch_processing(conn: psycopg.Connection, query: str) -> str:
    """The Batch node's line of EXPLAIN ANALYZE (batching on), for the record."""
    conn.execute("SET azure_ai_sim.enable_batch_mode = on")
    plan = [r[0].strip() for r in conn.execute(f"EXPLAIN (ANALYZE, COSTS OFF) {query}")]
    return next((line for line in plan if line.startswith("Batch Processing")), "no batching")


def requests_sent(url: str, conn: psycopg.Connection, query: str) -> int:
    """How many requests the query sends to the simulator at url."""
    counts = urllib.request.Request(url + "/_sim/in_flight", method="DELETE")
    urllib.request.urlopen(counts).close()
    conn.execute(query).fetchall()
    with urllib.request.urlopen(url + "/_sim/in_flight") as answer:
        return json.load(answer)["served"]


def in_threads(requests: list, send: Callable) -> None:
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(send, requests))


def column(conn: psycopg.Connection, query: str) -> list:
    """The client's inputs, read from the table as the query in the database reads them."""
    return [row[0] for row in conn.execute(query)]


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def test_batch_throughput(bench_conn, endpoints):
    conn = bench_conn
    result: dict = {
        "benchmark": "batch_throughput", "rows": ROWS, "rows_batching_off": OFF_ROWS,
        "latency_ms": LATENCY_MS, "client_threads": THREADS, "rounds": ROUNDS,
    }  # fmt: skip

    sentiment = "SELECT (aws_comprehend.detect_sentiment(feedback, 'en')).sentiment FROM support"
    comprehend = client("comprehend", endpoints["comprehend"])
    off = in_database(conn, sentiment + f" WHERE id <= {OFF_ROWS}", False, OFF_ROWS)
    on, boto = medians(
        ROUNDS,
        on=lambda: in_database(conn, sentiment, True, ROWS),
        boto=lambda: rate(ROWS, lambda: in_threads(
            chunks(column(conn, "SELECT feedback FROM support"), 25),
            lambda batch: comprehend.batch_detect_sentiment(TextList=batch, LanguageCode="en"),
        )),
    ).values()  # fmt: skip
    result["detect_sentiment"] = {
        "batching_on_rows_per_s": on, "batching_off_rows_per_s": off,
        "boto3_batch_threads_rows_per_s": boto,
        "on_to_off": on / off, "on_to_boto3": on / boto,
        "explain": batch_processing(conn, sentiment),
    }  # fmt: skip

    classify = "SELECT classify_event(id, day) FROM support"
    sagemaker = client("sagemaker-runtime", endpoints["sagemaker"])
    # the client's requests as many as ours, of as many rows each
    per_request = -(-ROWS // requests_sent(endpoints["sagemaker"], conn, classify))
    on, boto = medians(
        ROUNDS,
        on=lambda: in_database(conn, classify, True, ROWS),
        boto=lambda: rate(ROWS, lambda: in_threads(
            chunks(column(conn, "SELECT id || ',' || day FROM support"), per_request),
            lambda batch: sagemaker.invoke_endpoint(
                EndpointName="field-count", ContentType="text/csv", Accept="text/csv",
                Body="\n".join(batch).encode() + b"\n",
            )["Body"].read().decode().splitlines(),
        )),
    ).values()  # fmt: skip
    result["invoke_endpoint_classify_event"] = {
        "batching_on_rows_per_s": on, "boto3_csv_threads_rows_per_s": boto,
        "boto3_rows_per_request": per_request, "on_to_boto3": on / boto,
        "explain": batch_processing(conn, classify),
    }  # fmt: skip

    invoke = (
        "SELECT azure_ml.invoke(jsonb_build_object('input_data', jsonb_build_array("
        "jsonb_build_array(id, 2, 3, 4, 5, 6, 7, 8))), deployment_name => 'Housingprediction')"
        " FROM support WHERE id <= {rows}"
    )
    on = in_database(conn, invoke.format(rows=ROWS // 5), True, ROWS // 5)
    off = in_database(conn, invoke.format(rows=OFF_ROWS), False, OFF_ROWS)
    result["azure_ml_invoke"] = {
        "rows": ROWS // 5, "batching_on_rows_per_s": on, "batching_off_rows_per_s": off,
        "on_to_off": on / off,
    }  # fmt: skip

    for name, model in (("create_embeddings", FP32), ("create_embeddings_int8", INT8)):
        per_row = in_database(
            conn,
            f"SELECT azure_local_ai.create_embeddings('{model}', feedback) FROM support"
            f" WHERE id <= {EMBED_ROWS}",
            True,
            EMBED_ROWS,
        )
        array_form = rate(EMBED_ROWS, lambda model=model: conn.execute(
            f"SELECT azure_local_ai.create_embeddings('{model}', array_agg(feedback ORDER BY id))"
            f" FROM support WHERE id <= {EMBED_ROWS}"
        ).fetchall())  # fmt: skip
        result[name] = {
            "model": model, "rows": EMBED_ROWS, "per_row_batched_rows_per_s": per_row,
            "array_form_rows_per_s": array_form, "per_row_to_array_form": per_row / array_form,
        }  # fmt: skip

    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
