"""azure_ml.invoke over HTTPS: the TLS handshake runs non-blocking like the rest, and the
server's certificate is verified against the system's trust store."""

import ssl
import subprocess
from pathlib import Path

import psycopg
import pytest

from azure_ai_sim.sim import AzureMLSimulator, SageMakerSimulator
from azure_ai_sim.sim.models import HOUSING
from cluster import Cluster

PAYLOAD = '{"input_data": [[1,2,3,4,5,6,7,8]]}'


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def https_cluster(server):
    """A server whose trust store (SSL_CERT_FILE) holds the simulator's certificate."""
    if not isinstance(server, Cluster):
        pytest.skip("needs a server started by the tests, with SSL_CERT_FILE in its environment")
    cluster = Cluster()
    cert, key = self_signed_certificate(cluster.dir)
    cluster.env["SSL_CERT_FILE"] = str(cert)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with AzureMLSimulator(tls=context) as simulator, cluster:
        yield cluster, simulator, context


def configure(conn, url):
    conn.execute("CREATE EXTENSION IF NOT EXISTS azure_ai")
    conn.execute("SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', %s)", (url,))
    conn.execute("SELECT azure_ai.set_setting('azure_ml.endpoint_key', 'sim-key')")


def test_https_with_a_trusted_certificate(https_cluster):
    cluster, simulator, _ = https_cluster
    assert simulator.url.startswith("https://")
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        configure(conn, simulator.url + "/score")
        for _ in range(3):
            result = conn.execute("SELECT azure_ml.invoke(%s::jsonb)", (PAYLOAD,)).fetchone()[0]
            assert result == pytest.approx(HOUSING.predict([[1, 2, 3, 4, 5, 6, 7, 8]]))


def test_an_untrusted_certificate_is_refused_at_once(https_cluster, database):
    """Retrying cannot make a certificate trusted: one attempt, whatever max_attempts says."""
    _, simulator, _ = https_cluster
    simulator.recorded.clear()
    with psycopg.connect(database, autocommit=True) as conn:
        configure(conn, simulator.url + "/score")
        with pytest.raises(psycopg.errors.IoError) as caught:
            conn.execute("SELECT azure_ml.invoke(%s::jsonb, max_attempts => 3, "
                         "retry_delay_ms => 0)", (PAYLOAD,))  # fmt: skip
    message = caught.value.diag.message_primary
    assert message.startswith(f"azure_ml.invoke: could not connect to {simulator.url}/score: ")
    assert "CERTIFICATE_VERIFY_FAILED: self-signed certificate" in message
    assert caught.value.diag.message_detail.startswith("attempts: 1")
    assert simulator.recorded.snapshot() == []


def test_aws_calls_do_not_retry_an_untrusted_certificate(https_cluster, database):
    *_, context = https_cluster
    with (
        SageMakerSimulator(tls=context) as sagemaker,
        psycopg.connect(database, autocommit=True) as conn,
    ):
        conn.execute("CREATE EXTENSION IF NOT EXISTS aws_ml CASCADE")
        for key, value in [("region", "us-east-1"), ("aws_access_key_id", "AKIDSIMULATOR"),
                           ("aws_secret_access_key", "sim-secret"),
                           ("sagemaker.endpoint_url", sagemaker.url)]:  # fmt: skip
            conn.execute("SELECT aws_ml.set_setting(%s, %s)", (key, value))
        with pytest.raises(psycopg.errors.IoError) as caught:
            conn.execute("SELECT aws_sagemaker.invoke_endpoint('echo', NULL, 1)")
    assert "CERTIFICATE_VERIFY_FAILED" in caught.value.diag.message_primary
    assert caught.value.diag.message_detail.startswith("attempts: 1")
