"""docker/compose.yaml: up, the README's walkthroughs (First steps) verbatim in psql inside
the database's container, their printed results compared, calls with no SQL setting, a
`down` and `up` on the same volume, then `down -v`. Run by make docker-test."""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from cluster import _free_port, docker

ROOT = Path(__file__).resolve().parents[2]
SIMULATOR_PORTS = (8080, 8081, 8082, 8083)  # compose.yaml's, the README's


def compose_command() -> list[str]:
    """Compose v2 (the docker plugin) or v1 (docker-compose), whichever this machine has."""
    for command in ([docker(), "compose"], ["docker-compose"]):
        try:
            subprocess.run([*command, "version"], check=True, capture_output=True)
            return command
        except (OSError, subprocess.CalledProcessError):
            continue
    pytest.skip("no Docker Compose here (docker compose, docker-compose)")


def walkthroughs() -> list[str]:
    """The SQL blocks of the README's First steps."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## First steps\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, re.S)


def printed(block: str) -> list[str]:
    """What the README says psql prints: its "-- " lines."""
    return [line[2:].strip() for line in block.splitlines() if line.startswith("-- ")]


@pytest.fixture
def compose(image) -> Iterator[Callable[..., subprocess.CompletedProcess]]:
    taken = [port for port in SIMULATOR_PORTS if _in_use(port)]
    if taken:
        pytest.skip(f"the simulators' ports {taken} are taken on this machine")
    project = f"azure_ai_sim_test_{secrets.token_hex(4)}"
    env = {
        **os.environ,
        "AZURE_AI_SIM_PORT": str(_free_port()),
        "POSTGRES_PASSWORD": secrets.token_hex(8),
    }
    base = [*compose_command(), "-p", project, "-f", str(ROOT / "docker" / "compose.yaml")]

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*base, *args], input=stdin, env=env, capture_output=True, text=True, check=True
        )

    run.dsn = (  # type: ignore[attr-defined]
        f"host=127.0.0.1 port={env['AZURE_AI_SIM_PORT']} user=postgres dbname=postgres"
        f" password={env['POSTGRES_PASSWORD']}"
    )
    try:
        run("up", "-d")
        _wait_for(run.dsn)  # type: ignore[attr-defined]
        yield run
    finally:
        subprocess.run([*base, "down", "-v"], env=env, capture_output=True)


def psql(compose, sql: str) -> str:
    return compose(
        "exec", "-T", "postgres", "psql", "-U", "postgres", "-X", "-v", "ON_ERROR_STOP=1",
        stdin=sql,
    ).stdout  # fmt: skip


def test_the_readme_walkthroughs_work_unchanged_and_state_survives(compose):
    blocks = walkthroughs()
    assert len(blocks) == 2  # Azure ML, then AWS
    for block in blocks:
        output = [line.strip() for line in psql(compose, block).splitlines()]
        for line in printed(block):
            assert line in output, (line, output)

    # the database's environment points it at the simulators: no setting needed
    with psycopg.connect(compose.dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT aws_sagemaker.invoke_endpoint('field-count', NULL, 1, 2)"
        ).fetchone() == ("2",)
        conn.execute("CREATE TABLE kept AS SELECT 'a row' AS body")

    compose("down")  # the volume stays
    compose("up", "-d")
    _wait_for(compose.dsn)
    with psycopg.connect(compose.dsn, autocommit=True) as conn:
        assert conn.execute("SELECT body FROM kept").fetchone() == ("a row",)
        assert conn.execute(
            "SELECT azure_ai.get_setting('azure_ml.scoring_endpoint')"
        ).fetchone() == ("http://127.0.0.1:8080/score",)


def _in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _wait_for(dsn: str) -> None:
    for _ in range(600):  # a first start creates the cluster: seconds, far below this
        try:
            psycopg.connect(dsn, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            time.sleep(0.1)
    raise AssertionError(f"the database of compose.yaml did not start: {dsn}")
