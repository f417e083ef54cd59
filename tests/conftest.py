"""Fixtures: one server per test session, a fresh database per test module."""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
import pytest

from azure_ai_sim.sim import AzureMLSimulator, OpenAISimulator, Simulator, managed_identity
from cluster import Cluster, Server, server_from_environment

AnySimulator = TypeVar("AnySimulator", bound=Simulator)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--image", help="run against a container of this image of docker/Dockerfile "
        "(testcontainers), not a private cluster; the environment's AZURE_AI_SIM_IMAGE too",
    )  # fmt: skip


@pytest.fixture(scope="session")
def image(request: pytest.FixtureRequest) -> str:
    """The --image under test: tests/docker tests the image itself, and without one skips."""
    name = request.config.getoption("image")
    if not name:
        pytest.skip("tests an image of docker/: make docker-test (pytest --image NAME)")
    return name


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    with server_from_environment(request.config.getoption("image")) as server:
        yield server


@pytest.fixture(scope="session")
def azureml_simulator() -> Iterator[AzureMLSimulator]:
    """The Azure ML simulator; its request timeout is long, so slow calls end by our hand."""
    with AzureMLSimulator(request_timeout_ms=120_000) as simulator:
        yield simulator


@pytest.fixture
def azureml(azureml_simulator: AzureMLSimulator) -> AzureMLSimulator:
    return cleared(azureml_simulator)


@pytest.fixture(scope="module")
def openai_simulator() -> Iterator[OpenAISimulator]:
    """The Azure OpenAI (and OpenAI) simulator, with its default key."""
    with OpenAISimulator() as simulator:
        yield simulator


@pytest.fixture
def openai(openai_simulator: OpenAISimulator) -> OpenAISimulator:
    return cleared(openai_simulator)


def cleared(simulator: AnySimulator) -> AnySimulator:
    """The simulator with no faults queued and no requests recorded."""
    simulator.faults.clear()
    simulator.recorded.clear()
    return simulator


def set_settings(conn: psycopg.Connection, settings: dict[str, str | None]) -> None:
    """azure_ai.set_setting of each key (NULL: unset)."""
    for key, value in settings.items():
        conn.execute("SELECT azure_ai.set_setting(%s, %s)", (key, value))


@contextlib.contextmanager
def identity_cluster(
    server: Server, simulator: Simulator, identity_header: str, settings: dict[str, str | None]
) -> Iterator[str]:
    """A server of its own whose host identity is the simulator's (App Service's protocol,
    with this X-IDENTITY-HEADER, from the server's environment), azure_ai created and
    these settings set; yields its DSN."""
    if not isinstance(server, Cluster):
        pytest.skip("needs a server started by the tests, with the identity in its environment")
    cluster = Cluster()
    cluster.env.update(
        IDENTITY_ENDPOINT=simulator.url + managed_identity.PATH, IDENTITY_HEADER=identity_header
    )
    with cluster, psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION azure_ai")
        set_settings(conn, settings)
        yield cluster.dsn


@pytest.fixture(scope="module")
def database(server: Server, request: pytest.FixtureRequest) -> Iterator[str]:
    """The DSN of a database of this test module's own."""
    with server.database(request.module.__name__.removeprefix("test_")) as dsn:
        yield dsn


FP32, INT8 = "multilingual-e5-small:v1", "multilingual-e5-small:v1-int8"


@pytest.fixture(scope="module")
def local_ai(database: str) -> str:
    """This module's database with azure_local_ai (and pgvector) created."""
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION azure_local_ai CASCADE")
    return database


def model_files(conn: psycopg.Connection, model_uri: str) -> tuple[str, str]:
    """The graph and tokenizer paths that a model is registered with."""
    return conn.execute(
        "SELECT model_path, tokenizer_path FROM azure_local_ai.models WHERE model_uri = %s",
        (model_uri,),
    ).fetchone()


@pytest.fixture
def conn(database: str) -> Iterator[psycopg.Connection]:
    """A superuser connection in autocommit mode."""
    with psycopg.connect(database, autocommit=True) as conn:
        yield conn


@pytest.fixture
def make_role(conn: psycopg.Connection) -> Iterator[Callable[..., str]]:
    """Creates roles that are dropped after the test: make_role(member_of=...)."""
    created: list[str] = []

    def make(*member_of: str) -> str:
        name = f"test_role_{secrets.token_hex(4)}"
        conn.execute(f"CREATE ROLE {name} LOGIN")
        for group in member_of:
            conn.execute(f"GRANT {group} TO {name}")
        created.append(name)
        return name

    yield make
    conn.execute("RESET ROLE")
    for name in created:
        conn.execute(f"DROP OWNED BY {name}")
        conn.execute(f"DROP ROLE {name}")


def point_aws_at(conn: psycopg.Connection, urls: dict[str, str]) -> None:
    """aws_ml's settings for the simulators: region, their key, and each service's URL
    (urls: service name, such as "sagemaker", to URL)."""
    settings = {
        "region": "us-east-1",
        "aws_access_key_id": "AKIDSIMULATOR",
        "aws_secret_access_key": "sim-secret",
        **{f"{name}.endpoint_url": url for name, url in urls.items()},
    }
    for key, value in settings.items():
        conn.execute("SELECT aws_ml.set_setting(%s, %s)", (key, value))


def force_parallel(conn: psycopg.Connection, on: bool = True) -> None:
    """Sets (or resets) force_parallel_mode, which PostgreSQL 16 renamed debug_parallel_query."""
    version = int(conn.execute("SELECT current_setting('server_version_num')").fetchone()[0])
    name = "debug_parallel_query" if version >= 160000 else "force_parallel_mode"
    conn.execute(f"SET {name} = on" if on else f"RESET {name}")


def notices(conn: psycopg.Connection) -> list[str]:
    """Collects the server's NOTICE messages on this connection into the returned list."""
    collected: list[str] = []
    conn.add_notice_handler(lambda diag: collected.append(diag.message_primary))
    return collected


def run_in_thread(
    database: str,
    statement: str,
    setup: str = "",
    params: Any = None,
    after: tuple[str, Any] = ("SELECT 42", None),
) -> dict:
    """Runs a statement on a connection of its own; returns its pid and, once the thread
    has ended, its error (or None) and the answer of a statement run after it (after
    RESET ALL)."""
    outcome: dict = {}
    ready = threading.Event()

    def run() -> None:
        with psycopg.connect(database, autocommit=True) as own:
            outcome["pid"] = own.info.backend_pid
            if setup:
                own.execute(setup)
            ready.set()
            try:
                own.execute(statement, params)
                outcome["error"] = None
            except psycopg.Error as error:
                outcome["error"] = error
            own.execute("RESET ALL")
            outcome["after"] = own.execute(*after).fetchone()[0]

    outcome["thread"] = threading.Thread(target=run)
    outcome["thread"].start()
    ready.wait(10)
    return outcome


def wait_until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(2000):  # a functional bound, far beyond what any of these takes
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def assert_interrupted(call: dict, reason: str, source: str = "azure_ml.invoke") -> None:
    """The statement ended with PostgreSQL's own cancel, and its session went on."""
    call["thread"].join(30)  # a functional bound, far beyond what a cancel takes
    assert not call["thread"].is_alive()
    assert isinstance(call["error"], psycopg.errors.QueryCanceled)
    assert call["error"].diag.message_primary == f"{source}: canceling statement {reason}"
    assert call["after"] == 42
