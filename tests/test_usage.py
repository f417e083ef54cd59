"""The usage ledger (ml_pipeline.usage) counts every attempt of every remote call, against
the simulators' own request logs, whatever becomes of the caller's transaction and across
a restart; budgets (ml_pipeline.budgets) refuse calls past their caps."""

from __future__ import annotations

import json
import threading

import psycopg
import pytest

from azure_ai_sim.sim import BedrockSimulator, ComprehendSimulator, Fault, SageMakerSimulator
from cluster import Cluster
from conftest import point_aws_at

HOUSING = (
    "SELECT aws_sagemaker.invoke_endpoint('housing', NULL, 8.3, 41, 6.9, 1.0, 322, 2.5, 37.88,"
    " -122.23)"
)
COUNTS = "requests, failed, rows, bytes_sent, bytes_received, input_tokens, output_tokens"


@pytest.fixture(scope="module")
def simulators():
    with ComprehendSimulator() as comprehend, SageMakerSimulator() as sagemaker, \
            BedrockSimulator() as bedrock:  # fmt: skip
        yield {"comprehend": comprehend, "sagemaker": sagemaker, "bedrock": bedrock}


@pytest.fixture
def conn(database, simulators):
    for simulator in simulators.values():
        simulator.faults.clear()
        simulator.recorded.clear()
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS aws_ml CASCADE")
        conn.execute("CREATE EXTENSION IF NOT EXISTS ml_pipeline")
        conn.execute("DELETE FROM ml_pipeline.budgets")
        point_aws_at(conn, {name: s.url for name, s in simulators.items()})
        yield conn


def usage(conn, service: str, endpoint: str) -> dict:
    """Today's counts of one endpoint (zeros before its first call)."""
    cursor = conn.execute(
        f"SELECT {COUNTS} FROM ml_pipeline.usage WHERE day = (now() AT TIME ZONE 'UTC')::date"
        " AND service = %s AND endpoint = %s",
        (service, endpoint),
    )
    row = cursor.fetchone() or (0,) * 7
    return dict(zip(COUNTS.split(", "), row, strict=True))


def spent(before: dict, after: dict) -> dict:
    return {name: after[name] - before[name] for name in before}


def comprehend_endpoint(simulators) -> str:
    return simulators["comprehend"].url.rstrip("/") + "/"


def test_the_ledger_counts_what_the_simulator_received(conn, simulators):
    comprehend = simulators["comprehend"]
    endpoint = comprehend_endpoint(simulators)
    before = usage(conn, "comprehend", endpoint)
    conn.execute(
        "CREATE TEMP TABLE notes AS SELECT 'note ' || g AS body FROM generate_series(1, 60) g"
    )
    # batch mode: BatchDetectSentiment requests of 25 documents; then one per-row call
    conn.execute("SELECT (aws_comprehend.detect_sentiment(body, 'en')).sentiment FROM notes")
    conn.execute("SELECT aws_comprehend.detect_sentiment('one more', 'en')")
    received = comprehend.recorded.snapshot()
    counted = spent(before, usage(conn, "comprehend", endpoint))
    documents = sum(len(json.loads(r["body"]).get("TextList", [None])) for r in received)
    assert len(received) == 4 and documents == 61
    assert counted["requests"] == len(received)
    assert counted["rows"] == documents
    assert counted["bytes_sent"] == sum(len(r["body"].encode()) for r in received)
    assert counted["bytes_received"] > 0 and counted["failed"] == 0


def test_a_rolled_back_call_and_its_retries_still_count(conn, simulators):
    comprehend = simulators["comprehend"]
    endpoint = comprehend_endpoint(simulators)
    before = usage(conn, "comprehend", endpoint)
    comprehend.faults.extend([Fault(status=503)] * 2)  # two retries before it succeeds
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT aws_comprehend.detect_sentiment('rolled back', 'en')")
    counted = spent(before, usage(conn, "comprehend", endpoint))
    assert len(comprehend.recorded.snapshot()) == 3
    assert (counted["requests"], counted["failed"], counted["rows"]) == (3, 2, 3)


def test_sagemaker_endpoints_and_bedrock_models_are_named_with_their_tokens(conn, simulators):
    before = usage(conn, "sagemaker", "housing")
    conn.execute(HOUSING + " FROM generate_series(1, 3)")
    assert spent(before, usage(conn, "sagemaker", "housing"))["rows"] == 3

    model = "anthropic.claude-3-haiku-20240307-v1:0"
    before = usage(conn, "bedrock", model)
    body = json.dumps({
        "anthropic_version": "bedrock-2023-05-31", "max_tokens": 20,
        "messages": [{"role": "user", "content": "Name three colours."}],
    })  # fmt: skip
    answer = conn.execute(
        "SELECT aws_bedrock.invoke_model(%s, 'application/json', 'application/json', %s)",
        (model, body),
    ).fetchone()[0]
    reported = json.loads(answer)["usage"]  # the simulator's count, also in its headers
    counted = spent(before, usage(conn, "bedrock", model))
    assert counted["requests"] == 1
    assert (counted["input_tokens"], counted["output_tokens"]) == (
        reported["input_tokens"], reported["output_tokens"]
    )  # fmt: skip
    assert counted["input_tokens"] > 0


def test_a_budget_refuses_calls_past_its_cap(conn, simulators):
    comprehend = simulators["comprehend"]
    endpoint = comprehend_endpoint(simulators)
    taken = conn.execute(  # by the whole service: the ledger is the server's
        "SELECT coalesce(sum(requests), 0) FROM ml_pipeline.usage WHERE service = 'comprehend'"
        " AND day = (now() AT TIME ZONE 'UTC')::date"
    ).fetchone()[0]
    mine = usage(conn, "comprehend", endpoint)["requests"]
    conn.execute(
        "INSERT INTO ml_pipeline.budgets (service, requests_per_day) VALUES ('comprehend', %s)",
        (taken + 2,),
    )
    for _ in range(2):
        conn.execute("SELECT aws_comprehend.detect_sentiment('within budget', 'en')")
    with pytest.raises(psycopg.errors.ConfigurationLimitExceeded) as refused:
        conn.execute("SELECT aws_comprehend.detect_sentiment('past budget', 'en')")
    assert refused.value.diag.message_primary == (
        f"aws_comprehend.detect_sentiment: the budget of comprehend (all endpoints),"
        f" {taken + 2} requests per day, is spent"
    )
    assert refused.value.diag.message_detail.startswith("retry after: ")
    assert len(comprehend.recorded.snapshot()) == 2  # the third never left
    assert usage(conn, "comprehend", endpoint)["requests"] == mine + 2

    # a raised budget lets calls through again, from the next statement on
    conn.execute("UPDATE ml_pipeline.budgets SET requests_per_day = NULL")
    conn.execute("SELECT aws_comprehend.detect_sentiment('budget raised', 'en')")


def per_row_calls(database: str, outcomes: list) -> None:
    with psycopg.connect(database, autocommit=True) as session:
        session.execute("SET azure_ai_sim.enable_batch_mode = off")  # a request per row
        try:
            session.execute(
                "SELECT aws_comprehend.detect_sentiment('call ' || g, 'en')"
                " FROM generate_series(1, 20) g"
            )
            outcomes.append("all done")
        except psycopg.errors.ConfigurationLimitExceeded:
            outcomes.append("refused")


def test_concurrent_sessions_cannot_overdraw_a_budget(conn, database, simulators):
    comprehend = simulators["comprehend"]
    taken = conn.execute(
        "SELECT coalesce(sum(requests), 0) FROM ml_pipeline.usage WHERE service = 'comprehend'"
        " AND day = (now() AT TIME ZONE 'UTC')::date"
    ).fetchone()[0]
    conn.execute(
        "INSERT INTO ml_pipeline.budgets (service, requests_per_day) VALUES ('comprehend', %s)",
        (taken + 25,),
    )
    comprehend.latency_ms = 10
    outcomes: list = []
    sessions = [threading.Thread(target=per_row_calls, args=(database, outcomes)) for _ in range(3)]
    try:
        for session in sessions:
            session.start()
        for session in sessions:
            session.join(60)
    finally:
        comprehend.latency_ms = 0
    # 60 calls against a budget of 25: at most one session can have all of its 20
    assert len(outcomes) == 3 and outcomes.count("all done") <= 1, outcomes
    assert len(comprehend.recorded.snapshot()) == 25  # not one more than the budget


def test_an_endpoint_budget_caps_rows(conn, simulators):
    conn.execute(
        "INSERT INTO ml_pipeline.budgets (service, endpoint, rows_per_day)"
        " SELECT 'sagemaker', 'echo', coalesce(sum(rows), 0) + 5 FROM ml_pipeline.usage"
        " WHERE service = 'sagemaker' AND endpoint = 'echo'"
        " AND day = (now() AT TIME ZONE 'UTC')::date"
    )
    cap = conn.execute("SELECT rows_per_day FROM ml_pipeline.budgets").fetchone()[0]
    call = "SELECT aws_sagemaker.invoke_endpoint(%s, NULL, g) FROM generate_series(1, %s) g"
    conn.execute(call, ("echo", 5))  # one request of 5 rows
    with pytest.raises(psycopg.errors.ConfigurationLimitExceeded) as refused:
        conn.execute(call, ("echo", 1))
    assert f"the budget of echo, {cap} rows per day, is spent" in str(refused.value)
    conn.execute(HOUSING)  # another endpoint is not capped


def test_only_the_extensions_own_budgets_are_read(server, simulators):
    """A table (or a view that calls its maker's function) named ml_pipeline.budgets in a
    database without the extension is not read: it would run as every caller."""
    with server.database("planted") as planted, psycopg.connect(planted, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION aws_ml CASCADE")
        point_aws_at(conn, {"comprehend": simulators["comprehend"].url})
        conn.execute("CREATE SCHEMA ml_pipeline")
        conn.execute(
            "CREATE TABLE ml_pipeline.budgets AS SELECT 'comprehend'::text AS service,"
            " '*'::text AS endpoint, 0::bigint AS requests_per_day,"
            " NULL::bigint AS rows_per_day, NULL::bigint AS tokens_per_day"
        )
        answer = conn.execute("SELECT aws_comprehend.detect_sentiment('fine', 'en')").fetchone()
        assert answer[0] is not None


def test_the_ledger_survives_a_restart(conn, database, server, simulators):
    if not isinstance(server, Cluster):
        pytest.skip("a restart needs the postmaster of the private cluster")
    conn.execute("SELECT aws_comprehend.detect_sentiment('before the restart', 'en')")
    endpoint = comprehend_endpoint(simulators)
    before = usage(conn, "comprehend", endpoint)
    conn.close()
    server._pg("pg_ctl", "-D", str(server.data), "-l", str(server.log_path), "-m", "fast",
               "-w", "restart")  # fmt: skip
    with psycopg.connect(database, autocommit=True) as after:
        assert usage(after, "comprehend", endpoint) == before


def test_only_readers_of_all_statistics_see_the_ledger(conn, make_role):
    role = make_role()
    conn.execute(f"SET ROLE {role}")
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM ml_pipeline.usage")
        assert conn.execute("SELECT count(*) FROM ml_pipeline.budgets").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO ml_pipeline.budgets (service) VALUES ('comprehend')")
    finally:
        conn.execute("RESET ROLE")
    conn.execute(f"GRANT pg_read_all_stats TO {role}")
    conn.execute(f"SET ROLE {role}")
    try:
        conn.execute("SELECT * FROM ml_pipeline.usage")
    finally:
        conn.execute("RESET ROLE")
