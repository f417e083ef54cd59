"""The database image of docker/Dockerfile: what it ships, what survives a restart, and a
container pointed at the services by its environment alone. Run by make docker-test."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator

import psycopg
import pytest

from azure_ai_sim.sim import AzureMLSimulator, ComprehendSimulator, SageMakerSimulator
from azure_ai_sim.sim.models import HOUSING
from cluster import Container, docker

FP32 = "multilingual-e5-small:v1"


def in_image(image: str, script: str) -> str:
    """What a shell script prints in a container of the image (not its entrypoint)."""
    return subprocess.run(
        [docker(), "run", "--rm", "--entrypoint", "sh", image, "-c", script],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip


def test_the_image_has_no_build_toolchain(image):
    found = in_image(image, "for c in gcc cc c++ clang make pip pip3; do command -v $c; done; true")
    assert found == ""
    headers = in_image(image, "ls /usr/include/postgresql/*/server 2>/dev/null || true")
    assert headers.split() in ([], ["extension"])  # pgvector's own headers only


def test_the_server_preloads_the_library_and_has_the_default_model(image):
    with Container(image) as server, psycopg.connect(server.dsn, autocommit=True) as conn:
        assert conn.execute("SHOW shared_preload_libraries").fetchone() == ("azure_ai_sim,pg_cron",)
        conn.execute("CREATE EXTENSION azure_local_ai CASCADE")
        (dimensions,) = conn.execute(
            "SELECT vector_dims(azure_local_ai.create_embeddings(%s, 'hello')::vector)", (FP32,)
        ).fetchone()
        assert dimensions == 384
        plan = conn.execute(
            "EXPLAIN (COSTS OFF) SELECT azure_local_ai.create_embeddings(%s, g::text)"
            " FROM generate_series(1, 3) g",
            (FP32,),
        ).fetchall()
        assert plan[0] == ("Custom Scan (Batch)",)


@pytest.fixture
def volume(image) -> Iterator[str]:
    name = f"azure_ai_sim_test_{secrets.token_hex(4)}"
    subprocess.run([docker(), "volume", "create", name], check=True, capture_output=True)
    yield name
    subprocess.run([docker(), "volume", "rm", "-f", name], check=True, capture_output=True)


def test_a_restart_keeps_settings_models_and_data(image, volume):
    with Container(image, volume=volume) as first:
        with psycopg.connect(first.dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION azure_ai")
            conn.execute("CREATE EXTENSION azure_local_ai CASCADE")
            conn.execute(
                "SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', 'http://x/score')"
            )
            conn.execute(
                "SELECT azure_local_ai.model_register('copy:v1', model_path, tokenizer_path)"
                " FROM azure_local_ai.models WHERE model_uri = %s",
                (FP32,),
            )
            conn.execute(
                "CREATE TABLE docs AS SELECT 'kept' AS body,"
                " azure_local_ai.create_embeddings('copy:v1', 'kept')::text AS embedding"
            )
        started_first = first.started_in
    with Container(image, volume=volume) as second:
        with psycopg.connect(second.dsn, autocommit=True) as conn:
            assert conn.execute(
                "SELECT azure_ai.get_setting('azure_ml.scoring_endpoint')"
            ).fetchone() == ("http://x/score",)
            (kept,) = conn.execute(
                "SELECT embedding = azure_local_ai.create_embeddings('copy:v1', body)::text"
                " FROM docs"
            ).fetchone()
            assert kept
        assert second.started_in < started_first + 60  # no second initdb: a functional bound


@pytest.fixture
def services() -> Iterator[dict]:
    with (
        AzureMLSimulator() as azureml,
        ComprehendSimulator() as comprehend,
        SageMakerSimulator() as sagemaker,
    ):
        yield {"azureml": azureml, "comprehend": comprehend, "sagemaker": sagemaker}


def test_the_environment_points_a_container_at_the_services(image, services):
    """No SQL setting at all: the AWS SDKs' variables and ours for Azure ML."""
    env = {
        "AZURE_ML_SCORING_ENDPOINT": services["azureml"].url + "/score",
        "AZURE_ML_ENDPOINT_KEY": services["azureml"].keys[0],
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "AKIDSIMULATOR",
        "AWS_SECRET_ACCESS_KEY": "sim-secret",
        "AWS_ENDPOINT_URL_COMPREHEND": services["comprehend"].url,
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": services["sagemaker"].url,
    }
    with Container(image, env=env) as server, psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION azure_ai")
        conn.execute("CREATE EXTENSION aws_ml CASCADE")
        (scored,) = conn.execute(
            "SELECT azure_ml.invoke('{\"input_data\": [[1,2,3,4,5,6,7,8]]}')"
        ).fetchone()
        assert scored == pytest.approx(HOUSING.predict([[1, 2, 3, 4, 5, 6, 7, 8]]))
        assert conn.execute(
            "SELECT sentiment FROM aws_comprehend.detect_sentiment('Wonderful, thank you!', 'en')"
        ).fetchone() == ("POSITIVE",)
        assert conn.execute(
            "SELECT aws_sagemaker.invoke_endpoint('field-count', NULL, 1, 2, 3)"
        ).fetchone() == ("3",)
