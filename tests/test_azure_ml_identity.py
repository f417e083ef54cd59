"""auth_type = managed-identity: a token from the host's identity, through azure-identity.

The server gets the App Service identity protocol from its environment (IDENTITY_ENDPOINT,
IDENTITY_HEADER), which the Azure ML simulator speaks, so this needs a server of its own.
"""

import contextlib

import psycopg
import pytest

from azure_ai_sim.sim.models import HOUSING
from conftest import identity_cluster


@contextlib.contextmanager
def identity_session(server, azureml, identity_header):
    """A session on a server of its own whose identity is the simulator's, set up for
    managed-identity calls to it."""
    settings = {"azure_ml.scoring_endpoint": azureml.url + "/score",
                "azure_ml.auth_type": "managed-identity"}  # fmt: skip
    with (
        identity_cluster(server, azureml, identity_header, settings) as dsn,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        yield conn


def test_a_token_is_fetched_once_and_sent_as_bearer(server, azureml):
    with identity_session(server, azureml, "sim-identity-header") as conn:
        payload = '{"input_data": [[1,2,3,4,5,6,7,8]]}'
        for _ in range(3):
            result = conn.execute("SELECT azure_ml.invoke(%s::jsonb)", (payload,)).fetchone()[0]
            assert result == pytest.approx(HOUSING.predict([[1, 2, 3, 4, 5, 6, 7, 8]]))

    token_request, *scoring = azureml.recorded.snapshot()
    assert token_request["path"] == "/msi/token"
    assert token_request["query"]["resource"] == "https://ml.azure.com"
    assert [r["path"] for r in scoring] == ["/score"] * 3
    bearers = {r["headers"]["authorization"] for r in scoring}
    assert len(bearers) == 1 and bearers != {"Bearer sim-key"}


def test_a_refused_identity_says_why(server, azureml):
    """azure-identity lists every credential it tried; the managed identity's own reason,
    which it puts last, must survive the shortening of the message."""
    with (
        identity_session(server, azureml, "wrong") as conn,
        pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as caught,
    ):
        conn.execute("SELECT azure_ml.invoke('{}')")
    message = caught.value.diag.message_primary
    assert message.startswith(
        "azure_ml.invoke: could not get a managed-identity token for "
        "https://ml.azure.com/.default: ManagedIdentityCredential: "
    )
    assert "missing or wrong X-IDENTITY-HEADER" in message
    assert "aka.ms" not in message
