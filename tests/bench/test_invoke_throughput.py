"""Per-row azure_ml.invoke against plain Python HTTP clients, on the same local endpoint.

One SELECT scores ROWS rows; the same number of requests then goes out from this process
with a requests Session, a urllib3 pool (keep-alive), and http.client with a new connection
per call, as extensions that open a connection per call do. The simulator runs as its own
process. Rounds interleave, medians are kept; the ratios are what to compare.
Writes build/bench/invoke_throughput.json.
"""

from __future__ import annotations

import http.client
import json
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import requests
import urllib3
from processes import simulator_processes

ROWS = 2_000
ROUNDS = 3
KEY = "bench-key"
PAYLOAD = b'{"input_data": [[1, 2, 3, 4, 5, 6, 7, 8]]}'
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
RESULT = Path(__file__).resolve().parents[2] / "build" / "bench" / "invoke_throughput.json"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with simulator_processes("azureml", options=("--key", KEY)) as urls:
        yield urls["azureml"] + "/score"


@pytest.fixture(scope="module")
def bench_conn(database, endpoint):
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION azure_ai")
        conn.execute("SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', %s)", (endpoint,))
        conn.execute("SELECT azure_ai.set_setting('azure_ml.endpoint_key', %s)", (KEY,))
        yield conn


def in_database(conn: psycopg.Connection) -> Callable[[], None]:
    statement = (
        f"SELECT count(azure_ml.invoke('{PAYLOAD.decode()}')) FROM generate_series(1, {ROWS})"
    )

    def run() -> None:
        assert conn.execute(statement).fetchone() == (ROWS,)

    return run


def requests_session(url: str) -> Callable[[], None]:
    session = requests.Session()

    def run() -> None:
        for _ in range(ROWS):
            session.post(url, data=PAYLOAD, headers=HEADERS).raise_for_status()

    return run


def urllib3_pool(url: str) -> Callable[[], None]:
    parts = urlsplit(url)
    pool = urllib3.HTTPConnectionPool(parts.hostname, parts.port, maxsize=1)

    def run() -> None:
        for _ in range(ROWS):
            response = pool.urlopen("POST", parts.path, body=PAYLOAD, headers=HEADERS)
            assert response.status == 200 and response.data

    return run


def new_connection_per_call(url: str) -> Callable[[], None]:
    parts = urlsplit(url)

    def run() -> None:
        for _ in range(ROWS):
            connection = http.client.HTTPConnection(parts.hostname, parts.port)
            connection.request("POST", parts.path, PAYLOAD, HEADERS)
            response = connection.getresponse()
            assert response.status == 200 and response.read()
            connection.close()

    return run


def test_invoke_throughput(bench_conn, endpoint):
    variants = {
        "azure_ml_invoke_per_row": in_database(bench_conn),
        "requests_session_loop": requests_session(endpoint),
        "urllib3_pool_loop": urllib3_pool(endpoint),
        "new_connection_per_call_loop": new_connection_per_call(endpoint),
    }
    for run in variants.values():  # warm up: boot, connections, the simulator's caches
        run()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - started)

    calls_per_second = {name: ROWS / statistics.median(s) for name, s in samples.items()}
    invoke = calls_per_second["azure_ml_invoke_per_row"]
    result = {
        "benchmark": "invoke_throughput",
        "requests": ROWS,
        "rounds": ROUNDS,
        "calls_per_second": calls_per_second,
        "invoke_ratio_to": {
            name: invoke / rate for name, rate in calls_per_second.items() if rate != invoke
        },
        "target": "azure_ml_invoke_per_row >= 0.8 x urllib3_pool_loop",
        "server": bench_conn.execute("SELECT version()").fetchone()[0],
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
