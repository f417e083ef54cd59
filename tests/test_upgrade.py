"""The version contract: a database made by any earlier release reaches, by ALTER EXTENSION
... UPDATE, exactly what a fresh CREATE EXTENSION gives (psql's \\dx+, \\df+, \\dn+, \\dp and
\\dL+ of every schema it owns), and keeps working on the way.

The earlier releases' scripts are the files of sql/ (released.sha256 holds them as they
were released, test_extensions.py checks); a script exists for every step."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from azure_ai_sim.boot import SQL_VERSIONS
from azure_ai_sim.sim import SageMakerSimulator
from cluster import Server
from conftest import point_aws_at

# What each extension's schemas are, after an update and after a fresh install alike.
SCHEMAS = {
    "azure_ai": ["azure_ai", "azure_ml", "azure_ai_internal"],
    "azure_local_ai": ["azure_local_ai", "azure_local_ai_internal"],
    "aws_ml": ["aws_ml", "aws_sagemaker", "aws_comprehend", "aws_bedrock", "aws_ml_internal"],
    "ml_pipeline": ["ml_pipeline", "ml_pipeline_internal"],
}
LANGUAGES = {name: f"{name}_plpython" for name in SCHEMAS}
EARLIER = [(name, old) for name, versions in SQL_VERSIONS.items() for old in versions[:-1]]


def describe(server: Server, dsn: str, extension: str) -> str:
    """What psql shows of the extension and its schemas, as a user would list them."""
    commands = [f"\\dx+ {extension}", f"\\dL+ {LANGUAGES[extension]}", "\\dy+"]
    for schema in SCHEMAS[extension]:
        commands += [f"\\dn+ {schema}", f"\\df+ {schema}.*", f"\\dp {schema}.*"]
    args = ["-X", "-d", dsn, "-v", "ON_ERROR_STOP=1"]
    for command in commands:
        args += ["-c", command]
    result = server.run("psql", *args, check=True)
    return result.stdout


@pytest.fixture
def two_databases(server: Server) -> Iterator[tuple[str, str]]:
    with server.database("upgraded") as upgraded, server.database("fresh") as fresh:
        yield upgraded, fresh


@pytest.mark.parametrize(("extension", "old"), EARLIER)
def test_an_update_gives_what_a_fresh_install_gives(server, two_databases, extension, old):
    upgraded, fresh = two_databases
    with psycopg.connect(upgraded, autocommit=True) as conn:
        conn.execute(f"CREATE EXTENSION {extension} VERSION '{old}' CASCADE")
        conn.execute(f"ALTER EXTENSION {extension} UPDATE")
        (version,) = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = %s", (extension,)
        ).fetchone()
    with psycopg.connect(fresh, autocommit=True) as conn:
        conn.execute(f"CREATE EXTENSION {extension} CASCADE")
    assert version == SQL_VERSIONS[extension][-1]
    after_update = describe(server, upgraded, extension)
    assert after_update == describe(server, fresh, extension)
    assert f"internal helpers of {extension}" in after_update.lower()  # the schemas are there


@pytest.fixture
def aws_ml_database(server: Server) -> Iterator[str]:
    with server.database("aws_steps") as dsn:
        yield dsn


def test_sagemaker_works_at_every_aws_ml_version(aws_ml_database):
    """The native shim finds its PL/Python core where each version keeps it."""
    call = "SELECT aws_sagemaker.invoke_endpoint('echo', NULL, 1, 'two')"
    with SageMakerSimulator() as sagemaker, psycopg.connect(aws_ml_database) as conn:
        conn.autocommit = True
        conn.execute("CREATE EXTENSION aws_ml VERSION '1.0' CASCADE")
        point_aws_at(conn, {"sagemaker": sagemaker.url})
        for version in SQL_VERSIONS["aws_ml"]:
            if version != "1.0":
                conn.execute(f"ALTER EXTENSION aws_ml UPDATE TO '{version}'")
            assert conn.execute(call).fetchone() == ('("1","two")',), version
