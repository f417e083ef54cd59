"""Fixtures: one server per test session, a fresh database per test module."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import psycopg
import pytest
from azure_ai_sim.sim import AzureMLSimulator
from cluster import Server, server_from_environment


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    with server_from_environment() as server:
        yield server


@pytest.fixture(scope="session")
def azureml_simulator() -> Iterator[AzureMLSimulator]:
    """The Azure ML simulator; its request timeout is long, so slow calls end by our hand."""
    with AzureMLSimulator(request_timeout_ms=120_000) as simulator:
        yield simulator


@pytest.fixture
def azureml(azureml_simulator: AzureMLSimulator) -> AzureMLSimulator:
    """The simulator with no faults queued and no requests recorded."""
    azureml_simulator.faults.clear()
    azureml_simulator.recorded.clear()
    return azureml_simulator


@pytest.fixture(scope="module")
def database(server: Server, request: pytest.FixtureRequest) -> Iterator[str]:
    """The DSN of a database of this test module's own."""
    with server.database(request.module.__name__.removeprefix("test_")) as dsn:
        yield dsn


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


def notices(conn: psycopg.Connection) -> list[str]:
    """Collects the server's NOTICE messages on this connection into the returned list."""
    collected: list[str] = []
    conn.add_notice_handler(lambda diag: collected.append(diag.message_primary))
    return collected
