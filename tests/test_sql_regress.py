"""Regression tests in SQL, kept as pgvector keeps them: tests/sql/<name>.sql, run by psql
exactly as pg_regress runs it (`psql -X -a -q`: each statement echoed, then its result,
errors and notices in line), must print tests/expected/<name>.out.

Each file runs in a new database of the session's server, against the simulators started
here. Their addresses change from run to run, so they reach psql as environment variables
(read with `\\getenv`, which is echoed unexpanded), and wherever one shows in the output
(an error names the URL it posted to) it reads <azureml>, <sagemaker>, ... instead.

To regenerate the expected files on purpose (a new file, a changed message), run

    AZURE_AI_SIM_REGRESS_UPDATE=1 .venv/bin/python -m pytest tests/test_sql_regress.py

which writes each output to tests/expected/<name>.out instead of comparing; review the
change with `git diff tests/expected` before committing it.
"""

from __future__ import annotations

import difflib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from azure_ai_sim.sim import (
    AzureMLSimulator,
    BedrockSimulator,
    ComprehendSimulator,
    SageMakerSimulator,
    Simulator,
)
from cluster import Server

HERE = Path(__file__).parent
SQL_DIR, EXPECTED_DIR = HERE / "sql", HERE / "expected"
NAMES = sorted(path.stem for path in SQL_DIR.glob("*.sql"))
UPDATE = os.environ.get("AZURE_AI_SIM_REGRESS_UPDATE") == "1"

AZUREML_KEY = "sim-key"
# Endpoint names of Aurora's examples, served by the SageMaker simulator's endpoints.
SAGEMAKER_ALIASES = {
    "ep": "echo",
    "sagemaker_model_endpoint_name": "field-count",
    "multiple_output_endpoint": "housing-multi",
}

# What pg_regress sets for psql (pg_regress.c, initialize_environment), except that dates
# print in ISO style, as users see them (invoke_endpoint sends their text form), and UTF-8
# so that psql aligns non-ASCII text the same whatever the caller's locale.
PSQL_ENVIRONMENT = {
    "LC_MESSAGES": "C",
    "PGTZ": "UTC",
    "PGDATESTYLE": "ISO, MDY",
    "PGAPPNAME": "pg_regress",
    "PGCLIENTENCODING": "UTF8",
    "PGOPTIONS": "-c intervalstyle=postgres_verbose -c lc_messages=C",
}


@pytest.fixture(scope="module")
def simulators() -> Iterator[dict[str, Simulator]]:
    with (
        AzureMLSimulator(keys=(AZUREML_KEY,)) as azureml,
        SageMakerSimulator() as sagemaker,
        ComprehendSimulator() as comprehend,
        BedrockSimulator() as bedrock,
    ):
        sagemaker.aliases = SAGEMAKER_ALIASES
        yield {
            "azureml": azureml,
            "sagemaker": sagemaker,
            "comprehend": comprehend,
            "bedrock": bedrock,
        }


def run_sql_file(server: Server, dsn: str, name: str, simulators: dict[str, Simulator]) -> str:
    """What psql prints for tests/sql/<name>.sql, simulator URLs replaced by <name>."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("LANGUAGE", "LC_ALL") and not key.startswith("AZURE_AI_SIM_REGRESS_")
    }
    environment.update(PSQL_ENVIRONMENT)
    for sim_name, simulator in simulators.items():
        environment[f"AZURE_AI_SIM_REGRESS_{sim_name.upper()}_URL"] = simulator.url
    environment["AZURE_AI_SIM_REGRESS_AZUREML_KEY"] = AZUREML_KEY
    with open(SQL_DIR / f"{name}.sql", encoding="utf-8") as script:
        result = server.run(
            "psql", "-X", "-a", "-q", "-d", dsn,
            stdin=script, stderr=subprocess.STDOUT, env=environment, timeout=600,
        )  # fmt: skip
    output = result.stdout
    for sim_name, simulator in simulators.items():
        output = output.replace(simulator.url, f"<{sim_name}>")
    return output


@pytest.mark.parametrize("name", NAMES)
def test_sql_file_prints_its_expected_output(server, simulators, name):
    for simulator in simulators.values():
        simulator.faults.clear()
        simulator.recorded.clear()
    with server.database(f"regress_{name}") as dsn:
        actual = run_sql_file(server, dsn, name, simulators)
    expected_path = EXPECTED_DIR / f"{name}.out"
    # pg_regress's alternatives, <name>_1.out, ...: where a PostgreSQL major prints
    # otherwise (17 lists the row and array types of an extension's tables in \dx+)
    alternatives = sorted(EXPECTED_DIR.glob(f"{name}_[0-9].out"))
    if UPDATE:
        if not any(path.read_text(encoding="utf-8") == actual for path in alternatives):
            expected_path.write_text(actual, encoding="utf-8")
        return
    assert expected_path.exists(), f"no {expected_path}: run with AZURE_AI_SIM_REGRESS_UPDATE=1"
    expected = expected_path.read_text(encoding="utf-8")
    if actual != expected and all(
        path.read_text(encoding="utf-8") != actual for path in alternatives
    ):
        diff = difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            f"tests/expected/{name}.out",
            f"output of tests/sql/{name}.sql",
        )
        pytest.fail("output differs from the expected (-) one:\n" + "".join(diff), pytrace=False)
