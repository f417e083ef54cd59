"""Per-row aws_ml calls against a plain boto3 loop, on the same local simulators.

2,000 rows of aws_sagemaker.invoke_endpoint and of aws_comprehend.detect_sentiment in one
SELECT each, and the same 2,000 requests from a boto3 client in this process. The
simulators run as their own processes; rounds interleave; medians are kept.
Writes build/bench/aws_throughput.json.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import psycopg
import pytest
from botocore.config import Config
from processes import simulator_processes

ROWS = 2_000
ROUNDS = 3
KEY, SECRET = "AKIDSIMULATOR", "sim-secret"
RESULT = Path(__file__).resolve().parents[2] / "build" / "bench" / "aws_throughput.json"
FEATURES = "8.3252,41,6.984,1.024,322,2.556,37.88,-122.23"
FEEDBACK = "The support team was wonderful and solved my problem quickly."


@pytest.fixture(scope="module")
def endpoints() -> Iterator[dict[str, str]]:
    with simulator_processes("sagemaker", "comprehend") as urls:
        yield urls


@pytest.fixture(scope="module")
def bench_conn(database, endpoints):
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION aws_ml CASCADE")
        settings = {
            "region": "us-east-1",
            "aws_access_key_id": KEY,
            "aws_secret_access_key": SECRET,
        }
        settings.update({f"{name}.endpoint_url": url for name, url in endpoints.items()})
        for key, value in settings.items():
            conn.execute("SELECT aws_ml.set_setting(%s, %s)", (key, value))
        yield conn


def client(service: str, url: str):
    return boto3.client(
        service, endpoint_url=url, region_name="us-east-1", aws_access_key_id=KEY,
        aws_secret_access_key=SECRET, config=Config(retries={"total_max_attempts": 1}),
    )  # fmt: skip


def rate(run) -> float:
    started = time.perf_counter()
    run()
    return ROWS / (time.perf_counter() - started)


def test_aws_throughput(bench_conn, endpoints):
    sagemaker = client("sagemaker-runtime", endpoints["sagemaker"])
    comprehend = client("comprehend", endpoints["comprehend"])
    variants = {
        "invoke_endpoint": (
            lambda: bench_conn.execute(
                "SELECT count(aws_sagemaker.invoke_endpoint('housing', NULL, "
                f"{FEATURES})) FROM generate_series(1, {ROWS})"
            ),
            lambda: [
                sagemaker.invoke_endpoint(
                    EndpointName="housing",
                    ContentType="text/csv",
                    Accept="text/csv",
                    Body=FEATURES.encode(),
                )["Body"].read()
                for _ in range(ROWS)
            ],
        ),  # fmt: skip
        "detect_sentiment": (
            lambda: bench_conn.execute(
                f"SELECT count((aws_comprehend.detect_sentiment('{FEEDBACK}', 'en')).sentiment)"
                f" FROM generate_series(1, {ROWS})"
            ),
            lambda: [
                comprehend.detect_sentiment(Text=FEEDBACK, LanguageCode="en") for _ in range(ROWS)
            ],
        ),
    }
    result: dict = {"benchmark": "aws_throughput", "rows": ROWS, "rounds": ROUNDS}
    for name, (in_database, boto3_loop) in variants.items():
        in_database(), boto3_loop()  # warm up: imports, connections, credentials
        inside, outside = [], []
        for _ in range(ROUNDS):
            inside.append(rate(in_database))
            outside.append(rate(boto3_loop))
        result[f"{name}_in_database_calls_per_s"] = statistics.median(inside)
        result[f"{name}_boto3_loop_calls_per_s"] = statistics.median(outside)
        result[f"{name}_ratio_to_boto3"] = statistics.median(
            i / o for i, o in zip(inside, outside, strict=False)
        )
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
