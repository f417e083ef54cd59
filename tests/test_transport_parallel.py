"""transport.send_many inside PostgreSQL: several requests in flight at once on the
backend's thread, against the Azure ML simulator with injected latency.

A test function, send_batch(spec jsonb), runs the installed package exactly as our
extensions do (the prologue of azure_ai.version, in the azure_ai_plpython language) and
hands send_many the requests of its spec; it returns every slot's outcome as JSON, or
raises the first failure as a caller of send_many would. The simulator counts the
requests it serves at once, which proves that they overlapped without timing them.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import sys
import threading
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg.types.json import Jsonb

from azure_ai_sim.sim import AzureMLSimulator, Fault
from azure_ai_sim.sim.models import HOUSING
from azure_ai_sim.sim.server import oversized_json
from azure_ai_sim.transport import DEFAULT_PARALLEL_REQUESTS
from cluster import Cluster
from conftest import run_in_thread, wait_until

KEY = "sim-key"
SECRET = "sk-ParallelSecretThatMustNotLeak42"
SETTING = "azure_ai_sim.max_parallel_requests"
BODY_AFTER_BOOT = "    from azure_ai_sim import azure_ai\n"

SEND_BATCH = """
    import json
    from azure_ai_sim import errors, pg, transport

    def outcome(result):
        if result is None:
            return None
        if isinstance(result, errors.Error):
            return {"sqlstate": result.sqlstate, "message": result.message,
                    "detail": result.detail, "hint": result.hint}
        return {"status": result.status, "attempts": result.attempts,
                "body": result.body.decode("utf-8", "replace")}

    @pg.sql_function("send_batch")
    def run(spec):
        requests = [
            transport.Request(r.get("method", "POST"), r["url"], r.get("headers", {}),
                              r.get("body", "").encode(), r.get("max_response_bytes", 1 << 20),
                              secrets=tuple(r.get("secrets", ())))
            for r in spec["requests"]
        ]
        def deadline():
            seconds = spec.get("timeout_ms", 60000) / 1000
            left = transport.statement_seconds_left()
            if left is not None and not spec.get("timeout_ms_only"):
                seconds = min(seconds, left)
            return transport.Deadline(seconds)

        if not spec.get("deadline_per_request"):
            deadline = deadline()
        policy = transport.RetryPolicy(spec.get("max_attempts", 1),
                                       spec.get("retry_delay_ms", 0) / 1000)
        if spec.get("one_by_one"):  # what send alone does with each request
            results = []
            for request in requests:
                try:
                    results.append(transport.send(request, deadline, policy))
                except errors.CallFailed as failure:
                    results.append(failure)
            return json.dumps([outcome(r) for r in results])
        results = transport.send_many(requests, deadline, policy,
                                      spec.get("stop_on_error", True))
        if spec.get("raise_first"):
            first = next((r for r in results if isinstance(r, errors.Error)), None)
            if first is not None:
                raise first
        return json.dumps([outcome(r) for r in results])

    return run(json.loads(spec))
"""


def create_send_batch(conn: psycopg.Connection) -> None:
    conn.execute("CREATE EXTENSION IF NOT EXISTS azure_ai")
    source = conn.execute("SELECT prosrc FROM pg_proc WHERE oid = 'azure_ai.version'::regproc")
    prologue = source.fetchone()[0].split(BODY_AFTER_BOOT)[0]
    conn.execute(
        "CREATE OR REPLACE FUNCTION send_batch(spec jsonb) RETURNS jsonb "
        f"LANGUAGE azure_ai_plpython AS $body${prologue}{SEND_BATCH}$body$"
    )


@pytest.fixture(scope="module", autouse=True)
def extension(database):
    with psycopg.connect(database, autocommit=True) as conn:
        create_send_batch(conn)


@pytest.fixture(scope="module")
def simulators():
    with (
        AzureMLSimulator(keys=[KEY, SECRET], request_timeout_ms=120_000) as main,
        AzureMLSimulator(keys=[KEY], request_timeout_ms=120_000) as other,
    ):
        yield main, other


def fresh(simulator: AzureMLSimulator) -> AzureMLSimulator:
    """No latency, faults or recorded requests, and counts from zero."""
    simulator.latency_ms = 0
    simulator.faults.clear()
    wait_until(lambda: simulator.in_flight == 0, "the simulator has served everything")
    simulator.recorded.clear()
    simulator.reset_counts()
    return simulator


@pytest.fixture
def sim(simulators) -> AzureMLSimulator:
    return fresh(simulators[0])


@pytest.fixture
def other(simulators) -> AzureMLSimulator:
    return fresh(simulators[1])


def rows(index: int) -> list[list[int]]:
    return [[index] * 8]


def score(
    simulator: AzureMLSimulator, index: int, *, key: str = KEY, **fields: Any
) -> dict[str, Any]:
    """A request of the batch: scores rows(index), marked with its index."""
    request = {
        "url": simulator.url + "/score",
        "headers": {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {key}",
            "x-index": str(index),
        },
        "body": json.dumps({"input_data": rows(index)}),
        "secrets": [key],
    }
    request.update(fields)
    return request


def send_batch(conn: psycopg.Connection, requests: list[dict], **options: Any) -> list:
    spec = {"requests": requests, **options}
    return conn.execute("SELECT send_batch(%s)", (Jsonb(spec),)).fetchone()[0]


def arrivals(simulator: AzureMLSimulator) -> list[tuple[int, float]]:
    """(index, received) of the scoring requests, in the order they arrived."""
    return [
        (int(r["headers"]["x-index"]), r["received"])
        for r in simulator.recorded.snapshot()
        if r["path"] == "/score"
    ]


def assert_scored(outcome: dict, index: int, attempts: int = 1) -> None:
    assert (outcome["status"], outcome["attempts"]) == (200, attempts)
    assert json.loads(outcome["body"]) == pytest.approx(HOUSING.predict(rows(index)))


# --- in flight at once, up to the cap ----------------------------------------------------


@pytest.mark.parametrize(
    ("cap", "expected"), [(None, DEFAULT_PARALLEL_REQUESTS), ("8", 8), ("3", 3)]
)
def test_requests_overlap_up_to_the_cap(conn, sim, cap, expected):
    """20 requests of 200 ms: with a cap of 8, three waves of 8, 8 and 4."""
    if cap is not None:
        conn.execute(f"SET {SETTING} = {cap}")
    sim.latency_ms = 200
    outcomes = send_batch(conn, [score(sim, i) for i in range(20)])
    for index, outcome in enumerate(outcomes):  # each slot holds its own request's answer
        assert_scored(outcome, index)
    assert sim.max_in_flight == expected
    assert sim.served == 20
    assert sorted(index for index, _ in arrivals(sim)) == list(range(20))


def test_the_cap_is_per_endpoint(conn, sim, other):
    conn.execute(f"SET {SETTING} = 4")
    sim.latency_ms = other.latency_ms = 200
    requests = [score(sim if i % 2 else other, i) for i in range(16)]
    for index, outcome in enumerate(send_batch(conn, requests)):
        assert_scored(outcome, index)
    assert (sim.max_in_flight, other.max_in_flight) == (4, 4)
    assert (sim.served, other.served) == (8, 8)


def test_kept_alive_connections_are_pooled_per_endpoint(conn, sim):
    """The connections of a batch stay open for the next one, as many as the cap."""
    conn.execute(f"SET {SETTING} = 8")
    sim.latency_ms = 50
    send_batch(conn, [score(sim, i) for i in range(8)])
    assert sim.connections == 8
    for index, outcome in enumerate(send_batch(conn, [score(sim, i) for i in range(12)])):
        assert_scored(outcome, index)
    assert (sim.served, sim.connections) == (20, 8)
    conn.execute(f"SET {SETTING} = 2")  # the pool keeps as many as the cap now allows
    send_batch(conn, [score(sim, i) for i in range(4)])
    send_batch(conn, [score(sim, i) for i in range(4)])
    assert (sim.served, sim.connections, sim.max_in_flight) == (28, 8, 8)


@pytest.mark.parametrize("value", ["0", "65", "many", "-1"])
def test_a_bad_cap_is_a_clear_error(conn, sim, value):
    """Until the native library defines the setting, any value can be SET and the call
    refuses it; once it does, SET itself refuses it. Either way: 22023, naming it."""
    try:
        conn.execute("SELECT set_config(%s, %s, false)", (SETTING, value))
    except psycopg.Error as refused:
        error = refused
    else:
        with pytest.raises(psycopg.Error) as caught:
            send_batch(conn, [score(sim, 0)])
        error = caught.value
        assert error.diag.message_primary == (
            f"send_batch: {SETTING} must be an integer from 1 to 64"
        )
    assert error.sqlstate == "22023"
    assert SETTING in error.diag.message_primary
    assert sim.served == 0


def test_names_are_looked_up_on_the_io_thread(conn, sim):
    """A host name, not an address: the lookup runs on the blocking I/O thread while the
    batch waits for it like for a socket."""
    conn.execute(f"SET {SETTING} = 8")
    by_name = sim.url.replace("127.0.0.1", "localhost")
    sim.latency_ms = 100
    outcomes = send_batch(conn, [score(sim, i, url=by_name + "/score") for i in range(10)])
    for index, outcome in enumerate(outcomes):
        assert_scored(outcome, index)
    assert sim.max_in_flight == 8


# --- failures ----------------------------------------------------------------------------


def test_each_failure_is_the_error_send_raises(conn, sim):
    """Without stop_on_error every request runs to its end, and a failed one's slot holds
    exactly what send alone would raise for it."""
    requests = [score(sim, i) for i in range(6)]
    requests[1]["headers"]["azureml-model-deployment"] = "nope"  # 404
    requests[3]["body"] = json.dumps({"input_data": [[1, 2]]})  # the model refuses: 424
    requests[4]["url"] = "http://127.0.0.1:1/score"  # refused
    requests[5]["headers"]["Authorization"] = "Bearer wrong-key"  # 401
    together = send_batch(conn, requests, stop_on_error=False)
    alone = send_batch(conn, requests, one_by_one=True)
    for index in (0, 2):
        assert_scored(together[index], index)
    for index, sqlstate in ((1, "42704"), (3, "38000"), (4, "58030"), (5, "28000")):
        assert together[index]["sqlstate"] == alone[index]["sqlstate"] == sqlstate
        assert together[index]["message"] == alone[index]["message"]
        assert together[index]["detail"].startswith("attempts: 1")
        assert alone[index]["detail"].startswith("attempts: 1")
    assert together[4]["message"] == (
        "could not connect to http://127.0.0.1:1/score: Connection refused"
    )


def test_a_failure_stops_the_requests_after_it(conn, sim, other):
    """Request 10 fails at once (another endpoint, no latency) while the first 8 are in
    flight: 8 and 9 still run, 11 and later never start."""
    sim.latency_ms = 500
    requests = [score(sim, i) for i in range(20)]
    requests[10] = score(other, 10)
    requests[10]["headers"]["azureml-model-deployment"] = "nope"
    outcomes = send_batch(conn, requests)
    for index in range(10):
        assert_scored(outcomes[index], index)
    assert outcomes[10]["sqlstate"] == "42704"
    assert outcomes[11:] == [None] * 9
    assert sim.served == 10
    assert sorted(index for index, _ in arrivals(sim)) == list(range(10))


def test_the_caller_raises_the_first_failure_in_order(conn, sim, other):
    """Request 10 fails first; request 3, before it, fails later: 3's error is raised,
    as a loop of send would have raised it."""
    sim.latency_ms = 300
    requests = [score(sim, i) for i in range(20)]
    requests[3]["body"] = json.dumps({"input_data": [[1, 2]]})
    requests[10] = score(other, 10)
    requests[10]["headers"]["azureml-model-deployment"] = "nope"
    outcomes = send_batch(conn, requests)
    assert (outcomes[3]["sqlstate"], outcomes[10]["sqlstate"]) == ("38000", "42704")
    with pytest.raises(psycopg.errors.ExternalRoutineException) as caught:
        send_batch(conn, requests, raise_first=True)
    assert caught.value.diag.message_primary == f"send_batch: {outcomes[3]['message']}"
    assert caught.value.diag.message_detail.startswith("attempts: 1")


class HeldAnswer:
    """A server that answers its one request with a 404 once the test releases it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/score"
        self.released = threading.Event()
        threading.Thread(target=self._answer, daemon=True).start()

    def _answer(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            data = b""
            while b"\r\n\r\n" not in data:
                data += connection.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += connection.recv(65536)
            self.released.wait(30)
            connection.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope")

    def close(self) -> None:
        self.listener.close()


def test_requests_in_flight_after_a_failure_are_abandoned(conn):
    """Request 0 fails once 1 to 8 are in flight on another endpoint: they are abandoned
    (None, their connections closed) instead of awaited, and 9 and later never start."""
    conn.execute(f"SET {SETTING} = 8")
    held = HeldAnswer()
    with AzureMLSimulator(keys=[KEY], latency_ms=60_000) as slow:
        requests = [{"url": held.url}, *(score(slow, i) for i in range(1, 20))]
        outcome: dict = {}
        batch = threading.Thread(target=lambda: outcome.update(sent=send_batch(conn, requests)))
        batch.start()
        wait_until(lambda: slow.in_flight == 8, "8 requests in flight")
        held.released.set()
        batch.join(30)
        held.close()
        outcomes = outcome["sent"]
        assert outcomes[0]["sqlstate"] == "42704"
        assert outcomes[0]["message"] == f"HTTP 404 from {held.url}: nope"
        assert outcomes[1:] == [None] * 19
        slow.latency_ms = 0  # the next batch finds no abandoned connection in the pool
        for index, outcome in enumerate(send_batch(conn, [score(slow, i) for i in range(8)])):
            assert_scored(outcome, index)
        assert (slow.served, slow.connections) == (16, 16)  # 8 abandoned, none after, 8 anew


def test_requests_waiting_for_their_retry_after_a_failure_are_abandoned(conn, sim, other):
    """Request 1 is told to retry in 30 s; request 0 then fails: nobody waits for 1's
    retry. (statement_timeout, not the batch's deadline, would end a batch that did.)"""
    conn.execute(f"SET {SETTING} = 1")
    other.latency_ms = 300
    sim.faults.extend([Fault(status=503, retry_after="30")])
    requests = [score(other, 0), score(sim, 1)]
    requests[0]["headers"]["azureml-model-deployment"] = "nope"
    conn.execute("SET statement_timeout = 10000")
    outcomes = send_batch(conn, requests, max_attempts=2, timeout_ms=60_000, timeout_ms_only=True)
    assert outcomes[0]["sqlstate"] == "42704"
    assert outcomes[1] is None
    assert sim.served == 1


def test_a_503_burst_is_retried_per_request(conn, sim):
    """Six requests get a 503 and are retried; the others succeed at their first attempt."""
    conn.execute(f"SET {SETTING} = 8")
    sim.latency_ms = 50
    sim.faults.extend([Fault(status=503)] * 6)
    outcomes = send_batch(
        conn, [score(sim, i) for i in range(16)], max_attempts=3, retry_delay_ms=10
    )
    for index, outcome in enumerate(outcomes):
        assert_scored(outcome, index, attempts=outcome["attempts"])
    assert sorted(outcome["attempts"] for outcome in outcomes) == [1] * 10 + [2] * 6
    assert sim.served == 22
    assert sim.max_in_flight == 8


def test_attempts_run_out_for_one_request_while_the_others_succeed(conn, sim):
    conn.execute(f"SET {SETTING} = 1")  # one at a time: request 0 takes the faults
    sim.faults.extend([Fault(status=503)] * 2)
    outcomes = send_batch(
        conn, [score(sim, i) for i in range(4)], max_attempts=2, retry_delay_ms=0,
        stop_on_error=False,
    )  # fmt: skip
    assert outcomes[0]["sqlstate"] == "58000"
    assert outcomes[0]["message"] == f"HTTP 503 from {sim.url}/score: simulated 503"
    assert outcomes[0]["detail"].startswith("attempts: 2;")
    for index in (1, 2, 3):
        assert_scored(outcomes[index], index)


def test_retry_after_is_honoured_per_request_and_holds_up_no_other(conn, sim):
    """The first two requests served are told to come back after 1 s and 2 s; the others
    are served meanwhile, and each retry waits what its own answer asked for."""
    conn.execute(f"SET {SETTING} = 2")
    sim.faults.extend([Fault(status=429, retry_after="1"), Fault(status=429, retry_after="2")])
    outcomes = send_batch(conn, [score(sim, i) for i in range(8)], max_attempts=2, retry_delay_ms=1)
    for index, outcome in enumerate(outcomes):
        assert_scored(outcome, index, attempts=outcome["attempts"])
    retried = {index for index, outcome in enumerate(outcomes) if outcome["attempts"] == 2}
    assert len(retried) == 2
    seen = arrivals(sim)
    assert len(seen) == 10
    assert {index for index, _ in seen[-2:]} == retried  # the retries came last: the
    assert {index for index, _ in seen[:-2]} == set(range(8))  # others did not wait
    first: dict[int, float] = {}
    again: dict[int, float] = {}
    for index, when in seen:
        (again if index in first else first)[index] = when
    gaps = sorted(again[index] - first[index] for index in retried)
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0  # the simulator's clock: what each was told


def test_a_response_over_the_size_cap(conn, sim):
    sim.faults.extend([Fault(oversized_bytes=50_000), Fault(oversized_bytes=50_000, chunked=True)])
    requests = [score(sim, i, max_response_bytes=10_000) for i in range(4)]
    outcomes = send_batch(conn, requests, stop_on_error=False)
    too_large = [outcome for outcome in outcomes if "sqlstate" in outcome]
    assert [outcome["sqlstate"] for outcome in too_large] == ["54000", "54000"]
    assert {outcome["message"].partition(" is ")[2] for outcome in too_large} == {
        f"{len(oversized_json(50_000))} bytes, over the limit of 10000 bytes",  # Content-Length
        "more, over the limit of 10000 bytes",  # chunked
    }
    assert sum("status" in outcome for outcome in outcomes) == 2
    for index, outcome in enumerate(send_batch(conn, requests)):  # clean connections
        assert_scored(outcome, index)


def test_secrets_never_appear_in_errors_or_bodies(conn, server, sim):
    sim.faults.extend(
        [
            Fault(status=500, body=f'{{"message": "bad key {SECRET}"}}'),
            Fault(status=503, body=f"echo: Authorization: Bearer {SECRET}"),
            Fault(status=200, body=f'{{"echo": "Bearer {SECRET}"}}'),
        ]
    )
    requests = [score(sim, i, key=SECRET) for i in range(3)]
    outcomes = send_batch(conn, requests, stop_on_error=False)
    text = json.dumps(outcomes)
    assert SECRET not in text and SECRET[:16] not in text
    assert sorted(o.get("sqlstate") or str(o["status"]) for o in outcomes) == [
        "200", "58000", "58000",
    ]  # fmt: skip
    assert "[redacted]" in text
    sim.faults.extend([Fault(status=500, body=f"key {SECRET} refused")])
    with pytest.raises(psycopg.Error) as caught:
        send_batch(conn, requests[:1], raise_first=True)
    assert "key [redacted] refused" in caught.value.diag.message_primary
    assert SECRET not in str(caught.value) + str(caught.value.diag.message_detail)
    if server.log_path is not None:
        assert SECRET not in server.log_path.read_text()


# --- cancel, statement_timeout, deadline -------------------------------------------------


def send_in_thread(database: str, spec: dict, then: dict, setup: str = "") -> dict:
    """send_batch(spec) on a connection of its own, then send_batch(then) on it."""
    return run_in_thread(
        database, "SELECT send_batch(%s)", setup, (Jsonb(spec),),
        after=("SELECT send_batch(%s)", (Jsonb(then),)),
    )  # fmt: skip


def assert_interrupted(call: dict, reason: str, sim: AzureMLSimulator) -> None:
    """The batch ended with PostgreSQL's own cancel, and the session went on."""
    call["thread"].join(30)  # a functional bound, far beyond what a cancel takes
    assert not call["thread"].is_alive()
    assert isinstance(call["error"], psycopg.errors.QueryCanceled)
    assert call["error"].diag.message_primary == f"send_batch: canceling statement {reason}"
    for index, outcome in enumerate(call["after"]):
        assert_scored(outcome, index)


def test_pg_cancel_backend_ends_a_batch(conn, database, sim):
    with AzureMLSimulator(keys=[KEY], latency_ms=60_000) as slow:
        requests = [score(slow, i) for i in range(20)]
        call = send_in_thread(
            database, {"requests": requests}, {"requests": [score(sim, 0)]},
            setup=f"SET {SETTING} = 8",
        )  # fmt: skip
        wait_until(lambda: slow.in_flight == 8, "8 requests in flight")
        conn.execute("SELECT pg_cancel_backend(%s)", (call["pid"],))
        assert_interrupted(call, "due to user request", sim)
        assert (slow.served, slow.connections) == (8, 8)


def test_statement_timeout_ends_a_batch(database, sim):
    with AzureMLSimulator(keys=[KEY], latency_ms=60_000) as slow:
        requests = [score(slow, i) for i in range(20)]
        call = send_in_thread(
            database, {"requests": requests}, {"requests": [score(sim, 0)]},
            setup=f"SET statement_timeout = 1000; SET {SETTING} = 8",
        )  # fmt: skip
        assert_interrupted(call, "due to statement timeout", sim)
        wait_until(lambda: slow.served >= 8, "8 requests arrived")
        assert (slow.served, slow.connections) == (8, 8)


# A row batch whose first request fails before it is ever in flight (a URL the transport
# refuses): its failure adds a request for the row, as a refused batch request does.
FALLBACK = """
    from azure_ai_sim import aws, pg, transport

    @pg.sql_function("fallback")
    def run(url):
        batch = aws.RowBatch([url])
        def good(failure):
            request = transport.Request("POST", url, {"Authorization": "Bearer sim-key",
                "Content-Type": "application/json"}, b'{"input_data": [[1,2,3,4,5,6,7,8]]}', 4096)
            batch.add(aws.Exchange(0, request, aws.TIMING, finish))
        def finish(response):
            batch.results[0] = response.body.decode()
        refused = aws.Exchange(0, transport.Request("POST", "ftp://nowhere/", {}, b"", 4096),
                               aws.TIMING, finish, failed=good)
        batch.add(refused)
        batch.run()
        return batch.outcome()[0]

    return run(url)
"""


def test_a_failure_before_anything_is_in_flight_may_add_requests(conn, sim):
    source = conn.execute("SELECT prosrc FROM pg_proc WHERE oid = 'azure_ai.version'::regproc")
    prologue = source.fetchone()[0].split(BODY_AFTER_BOOT)[0]
    conn.execute(
        "CREATE OR REPLACE FUNCTION pg_temp.fallback(url text) RETURNS jsonb "
        f"LANGUAGE azure_ai_plpython AS $body${prologue}{FALLBACK}$body$"
    )
    (answer,) = conn.execute("SELECT pg_temp.fallback(%s)", (sim.url + "/score",)).fetchone()
    assert answer == pytest.approx(HOUSING.predict([[1, 2, 3, 4, 5, 6, 7, 8]]))
    assert sim.counts()["served"] == 1


def test_each_request_may_have_a_deadline_of_its_own(conn, sim):
    """Five requests of 300 ms, one at a time, 1 s each: as one batch's deadline, the last
    ones cannot make it; as a deadline per request, made when each starts, all do."""
    conn.execute(f"SET {SETTING} = 1")
    sim.latency_ms = 300
    requests = [score(sim, i) for i in range(5)]
    shared = send_batch(conn, requests, timeout_ms=1000, stop_on_error=False)
    assert shared[-1]["sqlstate"] == "57014"
    assert shared[-1]["message"] == f"no response from {sim.url}/score within 1000 ms"
    own = send_batch(conn, requests, timeout_ms=1000, deadline_per_request=True)
    for index, outcome in enumerate(own):
        assert_scored(outcome, index)


def test_the_deadline_ends_every_request_in_flight(conn, sim):
    conn.execute(f"SET {SETTING} = 8")
    sim.latency_ms = 60_000
    outcomes = send_batch(
        conn, [score(sim, i) for i in range(12)], timeout_ms=300, stop_on_error=False
    )
    messages = {outcome["message"] for outcome in outcomes}
    assert messages == {f"no response from {sim.url}/score within 300 ms"}
    assert {outcome["sqlstate"] for outcome in outcomes} == {"57014"}
    assert {outcome["detail"] for outcome in outcomes} == {"attempts: 1."}
    assert (sim.served, sim.connections) == (8, 8)  # no time was left to connect the others


# --- TLS ---------------------------------------------------------------------------------


def test_https_requests_in_flight_at_once(server):
    """Non-blocking TLS handshakes, several at once, against a certificate the server
    trusts (SSL_CERT_FILE of a cluster of its own)."""
    if not isinstance(server, Cluster):
        pytest.skip("needs a server started by the tests, with SSL_CERT_FILE in its environment")
    cluster = Cluster()
    cert, key = cluster.dir / "cert.pem", cluster.dir / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    cluster.env["SSL_CERT_FILE"] = str(cert)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with (
        AzureMLSimulator(keys=[KEY], tls=context, latency_ms=200) as https,
        cluster,
        psycopg.connect(cluster.dsn, autocommit=True) as conn,
    ):
        create_send_batch(conn)
        conn.execute(f"SET {SETTING} = 4")
        outcomes = send_batch(conn, [score(https, i) for i in range(10)])
        for index, outcome in enumerate(outcomes):
            assert_scored(outcome, index)
        assert (https.max_in_flight, https.connections) == (4, 4)


# --- the simulators' latency and counts --------------------------------------------------


def http_call(url: str, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        body = None if payload is None else json.dumps(payload)
        connection.request(method, path, body, {"Authorization": f"Bearer {KEY}"})
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        connection.close()


def test_the_simulator_serves_requests_at_once_and_counts_them():
    with pytest.raises(ValueError, match="latency_ms"):
        AzureMLSimulator(latency_ms=-1)
    with AzureMLSimulator(keys=[KEY]) as simulator:
        url = simulator.url
        assert http_call(url, "PUT", "/_sim/latency", {"latency_ms": 300}) == (
            200, {"latency_ms": 300.0},
        )  # fmt: skip
        for bad in ({"latency_ms": -1}, {"latency_ms": "1"}, {"latency": 1}):
            assert http_call(url, "PUT", "/_sim/latency", bad)[0] == 400
        payload = {"input_data": rows(1)}
        callers = [
            threading.Thread(target=http_call, args=(url, "POST", "/score", payload))
            for _ in range(4)
        ]
        for caller in callers:
            caller.start()
        wait_until(lambda: simulator.in_flight == 4, "4 requests served at once")
        status, counts = http_call(url, "GET", "/_sim/in_flight")  # not delayed, not counted
        assert (status, counts["in_flight"], counts["max_in_flight"]) == (200, 4, 4)
        for caller in callers:
            caller.join(30)
        # a connection per call: 4 PUTs, 4 POSTs, a GET
        assert simulator.counts() == {
            "in_flight": 0, "max_in_flight": 4, "served": 4, "connections": 9,
        }  # fmt: skip
        assert http_call(url, "DELETE", "/_sim/in_flight") == (
            200, {"in_flight": 0, "max_in_flight": 0, "served": 0, "connections": 0},
        )  # fmt: skip


def test_the_simulator_command_takes_a_latency():
    command = [sys.executable, "-m", "azure_ai_sim.sim", "azureml", "--port", "0"]
    process = subprocess.Popen([*command, "--latency-ms", "25"], stdout=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().split()[-1]
        assert http_call(url, "GET", "/_sim/latency") == (200, {"latency_ms": 25.0})
    finally:
        process.terminate()
        process.wait(30)
