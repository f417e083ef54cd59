"""What every function of ours pays per call: PL/Python plus the package, against plain SQL.

Each variant is evaluated once per row of one statement, so client round trips do not
count. Variants run interleaved for several rounds and the median is kept, because the
machines are shared; the ratios between variants of the same run are what to compare.
Writes build/bench/call_overhead.json.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import psycopg
import pytest

ROWS = 200_000
ROUNDS = 7
RESULT = Path(__file__).resolve().parents[2] / "build" / "bench" / "call_overhead.json"

FUNCTIONS = [
    "CREATE FUNCTION bench_sql() RETURNS text LANGUAGE sql STABLE AS $$ SELECT '0.1.0' $$",
    "CREATE FUNCTION bench_plpgsql() RETURNS text LANGUAGE plpgsql STABLE"
    " AS $$ BEGIN RETURN '0.1.0'; END $$",
    "CREATE FUNCTION bench_plpython() RETURNS text LANGUAGE azure_ai_plpython STABLE"
    " AS $$ return '0.1.0' $$",
]
VARIANTS = {
    "no_function": "1",
    "sql_function_inlined": "bench_sql()",
    "plpgsql_function": "bench_plpgsql()",
    "plpython_bare": "bench_plpython()",
    "plpython_into_package": "azure_ai.version()",
}


@pytest.fixture(scope="module")
def bench_conn(database):
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION azure_ai")
        for statement in FUNCTIONS:
            conn.execute(statement)
        yield conn


def seconds(conn: psycopg.Connection, expression: str) -> float:
    start = time.perf_counter()
    (count,) = conn.execute(
        f"SELECT count({expression}) FROM generate_series(1, {ROWS})"
    ).fetchone()
    elapsed = time.perf_counter() - start
    assert count == ROWS
    return elapsed


def test_call_overhead(bench_conn):
    for expression in VARIANTS.values():  # warm up: boot, plan caches
        seconds(bench_conn, expression)
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(ROUNDS):
        for name, expression in VARIANTS.items():
            samples[name].append(seconds(bench_conn, expression))

    median = {name: statistics.median(values) for name, values in samples.items()}
    per_call_us = {name: (median[name] - median["no_function"]) / ROWS * 1e6 for name in VARIANTS}
    result = {
        "benchmark": "call_overhead",
        "rows_per_statement": ROWS,
        "rounds": ROUNDS,
        "median_statement_seconds": median,
        "per_call_us_over_no_function": per_call_us,
        "ratio_to_plpython_bare": {
            name: median[name] / median["plpython_bare"] for name in VARIANTS
        },
        "package_cost_us": per_call_us["plpython_into_package"] - per_call_us["plpython_bare"],
        "server": bench_conn.execute("SELECT version()").fetchone()[0],
        "machine": platform.platform(),
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
