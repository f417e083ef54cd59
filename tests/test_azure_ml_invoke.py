"""azure_ml.invoke against the Azure ML simulator: the documented SQL, errors, retries,
deadlines, cancellation, keys kept secret, and several backends at once."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import psycopg
import pytest

from azure_ai_sim.sim import AzureMLSimulator, Fault
from azure_ai_sim.sim.models import DIABETES, HOUSING
from cluster import Cluster
from conftest import assert_interrupted, force_parallel, notices, run_in_thread
from samples import DIABETES_ROWS

KEY = "sim-key"
DOC_PAYLOAD = '{"input_data": [[1,2,3,4,5,6,7,8],[-1,-2,-3,-4,-5,-6,-7,-8]], "params": {}}'
DOC_ROWS = [[1, 2, 3, 4, 5, 6, 7, 8], [-1, -2, -3, -4, -5, -6, -7, -8]]
SMALL = "'{\"input_data\": [[1,2,3,4,5,6,7,8]]}'"


@pytest.fixture(scope="module", autouse=True)
def extension(database, azureml_simulator):
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION azure_ai")
        configure(conn, azureml_simulator.url + "/score")


@pytest.fixture(autouse=True)
def simulator_settings(conn, azureml_simulator):
    """Tests may point the settings elsewhere; the next test finds the simulator again."""
    yield
    configure(conn, azureml_simulator.url + "/score")


def configure(conn, endpoint, key=KEY, auth_type="subscription-key"):
    for setting, value in (
        ("azure_ml.scoring_endpoint", endpoint),
        ("azure_ml.endpoint_key", key),
        ("azure_ml.auth_type", auth_type),
    ):
        conn.execute("SELECT azure_ai.set_setting(%s, %s)", (setting, value))


def invoke(conn, arguments: str = SMALL):
    return conn.execute(f"SELECT azure_ml.invoke({arguments})").fetchone()[0]


def queue(azureml, *faults: dict) -> None:
    azureml.faults.extend(Fault.from_json(fault) for fault in faults)


def scoring_requests(azureml) -> list[dict]:
    return [r for r in azureml.recorded.snapshot() if r["path"].endswith("/score")]


# --- the documented SQL ------------------------------------------------------------------


def test_doc_example_select_star(conn, azureml):
    rows = conn.execute(
        f"SELECT * FROM azure_ml.invoke('{DOC_PAYLOAD}', deployment_name=>'Housingprediction')"
    ).fetchall()
    assert rows == [(pytest.approx(HOUSING.predict(DOC_ROWS)),)]
    (request,) = scoring_requests(azureml)
    assert request["headers"]["azureml-model-deployment"] == "Housingprediction"


def test_doc_example_jsonb_array_elements(conn, azureml):
    rows = conn.execute(
        "SELECT jsonb_array_elements(invoke.invoke) as MedianHousePrediction "
        f"FROM azure_ml.invoke('{DOC_PAYLOAD}', deployment_name=>'Housingprediction')"
    )
    assert [desc.name for desc in rows.description] == ["medianhouseprediction"]
    assert [row[0] for row in rows] == pytest.approx(HOUSING.predict(DOC_ROWS))


def test_request_is_the_payload_verbatim_with_azure_headers(conn, azureml):
    result = invoke(conn, f"'{DOC_PAYLOAD}'")
    (request,) = scoring_requests(azureml)
    as_jsonb = conn.execute(f"SELECT '{DOC_PAYLOAD}'::jsonb::text").fetchone()[0]
    assert request["body"] == as_jsonb
    headers = request["headers"]
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["content-type"] == "application/json"
    assert "azureml-model-deployment" not in headers  # the endpoint's default deployment
    uuid.UUID(headers["x-ms-client-request-id"])
    assert result == pytest.approx(HOUSING.predict(DOC_ROWS))


def test_positional_deployment_and_the_old_name(conn, azureml):
    assert invoke(conn, f"{SMALL}, 'Housingprediction'") == pytest.approx(
        HOUSING.predict(DOC_ROWS[:1])
    )
    assert conn.execute(f"SELECT azure_ml.inference({SMALL})").fetchone()[0] is not None
    # An integer second argument is still timeout_ms of the documented signature.
    assert invoke(conn, f"{SMALL}, 30000") is not None
    deployments = [r["headers"].get("azureml-model-deployment") for r in scoring_requests(azureml)]
    assert deployments == ["Housingprediction", None, None]
    overloads = conn.execute(
        "SELECT pg_get_function_identity_arguments(oid) FROM pg_proc "
        "WHERE proname = 'invoke' AND pronamespace = 'azure_ml'::regnamespace ORDER BY 1"
    ).fetchall()
    assert overloads == [
        ("input jsonb, deployment text",),
        ("input_data jsonb, timeout_ms integer, throw_on_error boolean, deployment_name text, "
         "max_attempts integer, retry_delay_ms integer",),
    ]  # fmt: skip


def test_v1_web_service_with_the_diabetes_model(conn, azureml):
    configure(conn, azureml.url + "/api/v1/service/diabetes/score")
    payload = json.dumps({"data": DIABETES_ROWS})
    assert invoke(conn, f"'{payload}'") == pytest.approx(DIABETES.predict(DIABETES_ROWS))


def test_null_input_sends_nothing(conn, azureml):
    assert invoke(conn, "NULL") is None
    assert scoring_requests(azureml) == []


# --- errors ------------------------------------------------------------------------------


def error_of(conn, arguments: str) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as caught:
        invoke(conn, arguments)
    return caught.value


def test_unknown_deployment(conn, azureml):
    error = error_of(conn, f"{SMALL}, deployment_name => 'nope'")
    assert error.sqlstate == "42704"
    assert error.diag.message_primary.startswith(
        f"azure_ml.invoke: HTTP 404 from {azureml.url}/score: "
    )
    assert "nope" in error.diag.message_primary
    assert error.diag.message_detail.startswith("attempts: 1; request id: ")


def test_model_error_is_424_with_the_models_message(conn, azureml):
    error = error_of(conn, "'{\"input_data\": [[1, 2, 3]]}', max_attempts => 3")
    assert error.sqlstate == "38000"
    assert "HTTP 424" in error.diag.message_primary
    assert "expected 8 features per row, got 3" in error.diag.message_primary
    assert len(scoring_requests(azureml)) == 1


def test_non_json_success_shows_the_first_bytes(conn, azureml):
    queue(azureml, {"body": "<html>gateway says hi</html>", "content_type": "text/html"})
    error = error_of(conn, SMALL)
    assert error.sqlstate == "22032"
    assert error.diag.message_primary == (
        "azure_ml.invoke: the endpoint answered HTTP 200 with a body that is not JSON "
        "PostgreSQL accepts: '<html>gateway says hi</html>'"
    )


@pytest.mark.parametrize(
    "body", ['{"pred": NaN}', "[Infinity]", '["\\u0000"]', '["\\ud800"]', "[" * 100_000]
)
def test_json_that_jsonb_refuses_is_a_failed_call(conn, azureml, body):
    queue(azureml, {"body": body})
    assert invoke(conn, f"{SMALL}, throw_on_error => false") is None
    queue(azureml, {"body": body})
    assert error_of(conn, SMALL).sqlstate == "22032"


@pytest.mark.parametrize("chunked", [False, True])
def test_response_size_cap(conn, azureml, chunked):
    conn.execute("SET azure_ai.max_response_bytes = 10000")
    try:
        queue(azureml, {"oversized_bytes": 50_000, "chunked": chunked})
        error = error_of(conn, SMALL)
        assert error.sqlstate == "54000"
        assert "over the limit of 10000 bytes" in error.diag.message_primary
        assert invoke(conn) is not None  # the next call gets a clean connection
    finally:
        conn.execute("RESET azure_ai.max_response_bytes")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("max_attempts => 0", "max_attempts must be at least 1, not 0"),
        ("retry_delay_ms => -1", "retry_delay_ms must be at least 0, not -1"),
        ("timeout_ms => 0", "timeout_ms must be positive, not 0"),
        ("timeout_ms => -5", "timeout_ms must be positive, not -5"),
        ("deployment_name => ''", "deployment_name must not be empty"),
    ],
)
def test_invalid_arguments_name_the_argument(conn, azureml, arguments, message):
    error = error_of(conn, f"{SMALL}, throw_on_error => false, {arguments}")
    assert error.sqlstate == "22023"
    assert error.diag.message_primary == f"azure_ml.invoke: {message}"
    assert scoring_requests(azureml) == []


def test_missing_endpoint_setting(conn, azureml):
    conn.execute("SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', NULL)")
    error = error_of(conn, f"{SMALL}, throw_on_error => false")
    assert error.sqlstate == "55000"
    assert error.diag.message_primary == (
        'azure_ml.invoke: setting "azure_ml.scoring_endpoint" is not set, nor the server\'s '
        "AZURE_ML_SCORING_ENDPOINT"
    )


def test_the_servers_environment_stands_in_for_unset_settings(server, azureml):
    """AZURE_ML_SCORING_ENDPOINT and AZURE_ML_ENDPOINT_KEY, as a container gets them;
    settings, once set, win; the key from the environment is never shown."""
    if not isinstance(server, Cluster):
        pytest.skip("needs a server started by the tests, with the variables in its environment")
    cluster = Cluster()
    cluster.env.update(
        AZURE_ML_SCORING_ENDPOINT=azureml.url + "/score", AZURE_ML_ENDPOINT_KEY=azureml.keys[0]
    )
    with cluster, psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION azure_ai")
        assert invoke(conn) == pytest.approx(HOUSING.predict([[1, 2, 3, 4, 5, 6, 7, 8]]))
        assert scoring_requests(azureml)[-1]["headers"]["authorization"] == (
            f"Bearer {azureml.keys[0]}"
        )
        conn.execute("SELECT azure_ai.set_setting('azure_ml.endpoint_key', 'wrong-key')")
        error = error_of(conn, SMALL)
        assert error.sqlstate == "28000"
        assert azureml.keys[0] not in str(error)


# --- retries -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried(conn, azureml, status):
    queue(azureml, {"status": status})
    assert invoke(conn, f"{SMALL}, max_attempts => 2, retry_delay_ms => 1") is not None
    assert len(scoring_requests(azureml)) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 424])
def test_other_statuses_are_not_retried(conn, azureml, status):
    queue(azureml, {"status": status})
    error = error_of(conn, f"{SMALL}, max_attempts => 3, retry_delay_ms => 1")
    assert f"HTTP {status}" in error.diag.message_primary
    assert error.diag.message_detail.startswith("attempts: 1;")
    assert len(scoring_requests(azureml)) == 1


def test_attempts_run_out(conn, azureml):
    queue(azureml, {"status": 503}, {"status": 503}, {"status": 503})
    error = error_of(conn, f"{SMALL}, max_attempts => 3, retry_delay_ms => 1")
    assert error.sqlstate == "58000"
    assert error.diag.message_primary == (
        f"azure_ml.invoke: HTTP 503 from {azureml.url}/score: simulated 503"
    )
    assert error.diag.message_detail.startswith("attempts: 3;")


def test_retry_after_is_honoured(conn, azureml):
    queue(azureml, {"status": 429, "retry_after": "1"})
    started = time.monotonic()
    assert invoke(conn, f"{SMALL}, max_attempts => 2, retry_delay_ms => 1") is not None
    assert time.monotonic() - started >= 0.95  # waited what the service asked for


def test_a_retry_after_past_the_timeout_stops_at_once(conn, azureml):
    queue(azureml, {"status": 503, "retry_after": "60"})
    error = error_of(conn, f"{SMALL}, timeout_ms => 5000, max_attempts => 3")
    assert "the next retry would pass the timeout" in error.diag.message_detail
    assert len(scoring_requests(azureml)) == 1


def test_dropped_connections(conn, azureml):
    queue(azureml, {"drop": True})
    error = error_of(conn, SMALL)
    assert error.sqlstate == "58030"
    queue(azureml, {"drop": True})
    assert invoke(conn, f"{SMALL}, max_attempts => 2, retry_delay_ms => 1") is not None


def test_connection_refused(conn, azureml):
    configure(conn, "http://127.0.0.1:1/score")
    error = error_of(conn, SMALL)
    assert error.sqlstate == "58030"
    assert error.diag.message_primary == (
        "azure_ml.invoke: could not connect to http://127.0.0.1:1/score: Connection refused"
    )


# --- deadlines, throw_on_error, cancellation ---------------------------------------------


def test_timeout_ms_bounds_the_call(conn, azureml):
    queue(azureml, {"latency_ms": 10_000})
    error = error_of(conn, f"{SMALL}, timeout_ms => 300")
    assert error.sqlstate == "57014"
    assert error.diag.message_primary == (
        f"azure_ml.invoke: no response from {azureml.url}/score within 300 ms"
    )


def test_timeout_ms_covers_the_retries(conn, azureml):
    queue(azureml, {"status": 503}, {"latency_ms": 10_000}, {"latency_ms": 10_000})
    error = error_of(conn, f"{SMALL}, timeout_ms => 900, max_attempts => 3, retry_delay_ms => 0")
    assert error.sqlstate == "57014"
    assert "within 900 ms" in error.diag.message_primary
    assert error.diag.message_detail.startswith("attempts: 2;")  # no time was left for a third


def test_each_statement_of_a_query_string_has_its_own_statement_timeout(conn, azureml):
    """PostgreSQL arms statement_timeout per statement; the call reads that very timer."""
    queue(azureml, {"latency_ms": 500})
    conn.execute("SET statement_timeout = 1000")
    try:
        cursor = conn.execute(f"SELECT pg_sleep(0.7); SELECT azure_ml.invoke({SMALL})")
        assert cursor.fetchone()[0] is not None
    finally:
        conn.execute("RESET statement_timeout")


def test_throw_on_error_false_keeps_the_transaction(conn, azureml):
    warnings = []  # a notice's fields are only readable inside the handler
    conn.add_notice_handler(
        lambda diag: warnings.append((diag.severity, diag.message_primary, diag.sqlstate))
    )
    queue(azureml, {"status": 500})
    with conn.transaction():
        conn.execute("CREATE TEMP TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (1)")
        assert invoke(conn, f"{SMALL}, throw_on_error => false") is None
        conn.execute("INSERT INTO kept VALUES (2)")
    assert conn.execute("SELECT array_agg(n ORDER BY n) FROM kept").fetchone()[0] == [1, 2]
    assert warnings == [
        ("WARNING", f"azure_ml.invoke: HTTP 500 from {azureml.url}/score: simulated 500", "58000")
    ]


def wait_for_request(azureml, count: int = 1) -> None:
    for _ in range(500):
        if len(scoring_requests(azureml)) >= count:
            return
        time.sleep(0.01)
    raise AssertionError("the simulator never saw the request")


def test_pg_cancel_backend_interrupts_a_slow_call(conn, database, azureml):
    queue(azureml, {"latency_ms": 60_000})
    call = run_in_thread(database, f"SELECT azure_ml.invoke({SMALL})")
    wait_for_request(azureml)
    conn.execute("SELECT pg_cancel_backend(%s)", (call["pid"],))
    assert_interrupted(call, "due to user request")


def test_statement_timeout_interrupts_a_slow_call(database, azureml):
    queue(azureml, {"latency_ms": 60_000})
    statement = f"SELECT azure_ml.invoke({SMALL}, throw_on_error => false)"
    call = run_in_thread(database, statement, setup="SET statement_timeout = 300")
    assert_interrupted(call, "due to statement timeout")


class RawServer:
    """A TCP server whose every connection is handled by `serve(socket, request_number)`."""

    def __init__(self, serve):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/score"
        self.requests = 0
        self.serve = serve
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    def _handle(self, connection):
        with connection:
            reader = connection.makefile("rb")
            try:
                while reader.readline():  # request line and headers, then the body
                    headers = {}
                    while (line := reader.readline()) not in (b"\r\n", b""):
                        name, _, value = line.decode().partition(":")
                        headers[name.strip().lower()] = value.strip()
                    reader.read(int(headers.get("content-length", 0)))
                    self.requests += 1
                    if not self.serve(connection, self.requests):
                        return
            except OSError:
                return

    def close(self):
        self.listener.close()


def reply(connection, body=b"[1.0]"):
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    return True


def test_a_server_that_trickles_bytes_is_still_cancelled(conn, database):
    def trickle(connection, _):
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 10_000:
            connection.sendall(bytes([byte]))
            time.sleep(0.005)
        return False

    server = RawServer(trickle)
    configure(conn, server.url)
    try:
        call = run_in_thread(database, f"SELECT azure_ml.invoke({SMALL}, timeout_ms => 120000)")
        while server.requests == 0:
            time.sleep(0.01)
        conn.execute("SELECT pg_cancel_backend(%s)", (call["pid"],))
        assert_interrupted(call, "due to user request")
    finally:
        server.close()


def test_a_request_the_server_may_have_processed_is_not_sent_again(conn):
    def second_request_dies_late(connection, number):
        if number == 1:
            return reply(connection)
        time.sleep(0.3)  # it worked on the request, then the connection broke
        return False

    server = RawServer(second_request_dies_late)
    configure(conn, server.url)
    try:
        assert invoke(conn) == [1.0]
        error = error_of(conn, SMALL)  # the same kept-alive connection
        assert error.sqlstate == "58030"
        assert server.requests == 2
    finally:
        server.close()


def test_a_body_refused_early_with_413_reports_the_413(conn):
    """The server answers 413 after the headers and closes without reading the body; the
    send then breaks, but the answer is what counts (and it is not retried)."""
    listener = socket.create_server(("127.0.0.1", 0))
    connections = []

    def refuse():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connections.append(connection)
            head = b""
            while b"\r\n\r\n" not in head:
                head += connection.recv(65536)
            body = b'{"message": "request body of 33554432 bytes is over the limit of 1 MB"}'
            connection.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: "
                               b"application/json\r\nConnection: close\r\nContent-Length: "
                               b"%d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            connection.close()

    threading.Thread(target=refuse, daemon=True).start()
    configure(conn, f"http://127.0.0.1:{listener.getsockname()[1]}/score")
    try:
        error = error_of(conn, "jsonb_build_object('data', repeat('x', 32 * 1024 * 1024)), "
                               "max_attempts => 3, retry_delay_ms => 0")  # fmt: skip
    finally:
        listener.close()
    assert error.sqlstate == "54000"
    assert error.diag.message_primary.startswith("azure_ml.invoke: HTTP 413 from ")
    assert "over the limit of 1 MB" in error.diag.message_primary
    assert error.diag.message_detail.startswith("attempts: 1")
    assert len(connections) == 1


def test_a_rolled_back_endpoint_is_never_used(conn, azureml):
    """Settings follow savepoints and EXCEPTION blocks inside one statement: once rolled
    back, the other endpoint (and the key sent to it) is never used again."""
    configure(conn, azureml.url + "/score")
    with AzureMLSimulator() as other:
        rolled_back = other.url + "/score"
        set_endpoint = f"PERFORM azure_ai.set_setting('azure_ml.scoring_endpoint', '{rolled_back}')"
        conn.execute(f"""DO $$ BEGIN
            BEGIN
                {set_endpoint};
                PERFORM azure_ml.invoke({SMALL});
                RAISE EXCEPTION 'undo';
            EXCEPTION WHEN raise_exception THEN NULL;
            END;
            PERFORM azure_ml.invoke({SMALL});
        END $$""")
        conn.execute(  # one query string: one statement start for all of them
            f"BEGIN; SAVEPOINT s; {set_endpoint.replace('PERFORM', 'SELECT')}; "
            f"SELECT azure_ml.invoke({SMALL}); ROLLBACK TO s; SELECT azure_ml.invoke({SMALL}); "
            "COMMIT"
        )
        assert len(scoring_requests(other)) == 2  # the calls before each rollback
    assert len(scoring_requests(azureml)) == 2  # and every call after it
    assert conn.execute("SELECT azure_ai.get_setting('azure_ml.scoring_endpoint')").fetchone() == (
        azureml.url + "/score",
    )


def test_an_endpoint_url_from_a_restored_row_is_checked_before_use(conn, azureml):
    conn.execute("UPDATE azure_ai.settings SET value = value || ' a b' "
                 "WHERE key = 'azure_ml.scoring_endpoint'")  # fmt: skip
    try:
        error = error_of(conn, SMALL)
        assert error.sqlstate == "22023"
        assert "must be a URL of RFC 3986" in error.diag.message_primary
        assert scoring_requests(azureml) == []
    finally:
        configure(conn, azureml.url + "/score")


# --- settings, concurrency, parallel query -----------------------------------------------


def test_other_sessions_see_a_changed_setting_from_their_next_statement(conn, database, azureml):
    with psycopg.connect(database, autocommit=True) as other:
        assert invoke(other) is not None
        conn.execute("SELECT azure_ai.set_setting('azure_ml.endpoint_key', 'rotated-key')")
        with pytest.raises(psycopg.Error) as caught:
            invoke(other)
        assert caught.value.sqlstate == "28000"
        configure(conn, azureml.url + "/score")
        assert invoke(other) is not None


def test_concurrent_backends(database, azureml):
    statement = f"SELECT count(azure_ml.invoke({SMALL})) FROM generate_series(1, 50)"
    calls = [run_in_thread(database, statement) for _ in range(4)]
    for call in calls:
        call["thread"].join(60)
        assert call["error"] is None
    assert len(scoring_requests(azureml)) == 200


def test_parallel_workers_refuse_cleanly(conn, azureml):
    conn.execute(
        "CREATE FUNCTION score_safe(payload jsonb) RETURNS jsonb LANGUAGE sql PARALLEL SAFE "
        "AS $$ SELECT azure_ml.invoke(payload) $$"
    )
    try:
        force_parallel(conn)
        with pytest.raises(psycopg.errors.InvalidTransactionState, match="parallel query"):
            conn.execute(f"SELECT score_safe({SMALL}) FROM generate_series(1, 2)")
        force_parallel(conn, on=False)
        assert conn.execute(f"SELECT score_safe({SMALL})").fetchone()[0] is not None
    finally:
        force_parallel(conn, on=False)
        conn.execute("DROP FUNCTION score_safe")


# --- secrets -----------------------------------------------------------------------------


def test_keys_appear_in_no_error_warning_or_log_line(conn, server, azureml):
    secret = "sk-SecretThatMustNotLeak77"
    captured = notices(conn)
    conn.execute("SELECT azure_ai.set_setting('azure_ml.endpoint_key', %s)", (secret,))
    queue(azureml, {"status": 500, "body": f'{{"message": "bad key {secret}"}}'})
    error = error_of(conn, SMALL)
    assert error.sqlstate == "58000"
    assert "bad key [redacted]" in error.diag.message_primary
    queue(azureml, {"status": 503, "body": f"echo: Bearer {secret}"})
    assert invoke(conn, f"{SMALL}, throw_on_error => false") is None
    assert captured and all(secret not in message for message in captured)
    queue(azureml, {"status": 200, "body": f"Bearer {secret}", "content_type": "text/plain"})
    error = error_of(conn, SMALL)  # a proxy echoing the request: its first bytes are shown
    assert error.sqlstate == "22032" and "Bearer [redacted]" in error.diag.message_primary
    error = error_of(conn, SMALL)  # the simulator rejects the key: 401
    assert error.sqlstate == "28000"
    assert secret not in str(error) + str(error.diag.message_detail)
    if server.log_path is not None:
        assert secret not in server.log_path.read_text()
