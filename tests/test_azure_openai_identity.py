"""auth_type = managed-identity: azure_openai.create_embeddings with an Entra ID token for
Cognitive Services, and azure_ai.rank's Cohere reranker with one for Azure ML, from the
host's identity through azure-identity, sent as a Bearer.

As in test_azure_ml_identity.py, the server gets the App Service identity protocol from its
environment (IDENTITY_ENDPOINT, IDENTITY_HEADER), here pointing at the Azure OpenAI
simulator, which issues the tokens and then accepts them; so this needs servers of its own.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import psycopg
import pytest

from azure_ai_sim.sim import CohereSimulator, Fault, OpenAISimulator, managed_identity
from azure_ai_sim.sim import cohere as cohere_sim
from azure_ai_sim.sim.openai import COGNITIVE_SERVICES, DEFAULT_KEY
from conftest import cleared, identity_cluster

IDENTITY_HEADER = secrets.token_hex(16)  # random: no run of it is a word of a message
DOCS_QUERY = "SELECT azure_openai.create_embeddings('text-embedding-ada-002', 'Your text here')"
EMBEDDINGS_PATH = "/openai/deployments/text-embedding-ada-002/embeddings"


@pytest.fixture(scope="module")
def simulator() -> Iterator[OpenAISimulator]:
    with OpenAISimulator(identity_header=IDENTITY_HEADER) as simulator:
        yield simulator


@pytest.fixture
def openai(simulator: OpenAISimulator) -> OpenAISimulator:
    return cleared(simulator)


def openai_identity(simulator: OpenAISimulator) -> dict[str, str | None]:
    """The settings of managed-identity calls to the Azure OpenAI simulator."""
    return {"azure_openai.endpoint": simulator.url, "azure_openai.auth_type": "managed-identity"}


@pytest.fixture(scope="module")
def identity_dsn(server, simulator: OpenAISimulator) -> Iterator[str]:
    with identity_cluster(server, simulator, IDENTITY_HEADER, openai_identity(simulator)) as dsn:
        yield dsn


@pytest.fixture
def conn(identity_dsn: str, openai: OpenAISimulator) -> Iterator[psycopg.Connection]:
    """A new session (so a token of its own) on the managed-identity server, with no key."""
    with psycopg.connect(identity_dsn, autocommit=True) as conn:
        conn.execute("SELECT azure_ai.set_setting('azure_openai.auth_type', 'managed-identity')")
        conn.execute("SELECT azure_ai.set_setting('azure_openai.subscription_key', NULL)")
        yield conn


def leaks(secret: str, text: str | None) -> bool:
    """Whether the text holds the secret, or any run of 8 of its characters (redaction.py's
    MIN_RUN: what survives a shortening)."""
    text = text or ""
    return any(secret[i : i + 8] in text for i in range(max(len(secret) - 7, 1)))


def error_texts(error: psycopg.Error) -> list[str | None]:
    diag = error.diag
    return [str(error), diag.message_primary, diag.message_detail, diag.message_hint,
            diag.context, diag.internal_query]  # fmt: skip


def bearer(request: dict) -> str:
    scheme, _, token = request["headers"]["authorization"].partition(" ")
    assert scheme == "Bearer" and token
    return token


def test_the_docs_query_uses_a_token_fetched_once_and_no_key(conn, openai):
    (key,) = conn.execute("SELECT azure_ai.get_setting('azure_openai.subscription_key')").fetchone()
    assert key is None  # the token is the only credential there is
    embeddings = [conn.execute(DOCS_QUERY).fetchone()[0] for _ in range(3)]
    assert len(embeddings[0]) == 384 and all(isinstance(v, float) for v in embeddings[0])
    assert abs(sum(v * v for v in embeddings[0]) - 1) < 1e-4
    assert embeddings[1] == embeddings[0] and embeddings[2] == embeddings[0]
    # rows of a query share requests (the batch form): the same token
    rows = conn.execute(
        "SELECT azure_openai.create_embeddings('text-embedding-ada-002', t)"
        " FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, n) ORDER BY n",
        (["Your text here", "Another text"],),
    ).fetchall()
    assert len(rows) == 2 and rows[0][0] == embeddings[0] and len(rows[1][0]) == 384

    token_request, *calls = openai.recorded.snapshot()
    assert token_request["method"] == "GET" and token_request["path"] == managed_identity.PATH
    assert token_request["query"]["resource"] == COGNITIVE_SERVICES
    assert token_request["headers"]["x-identity-header"] == IDENTITY_HEADER
    assert [(r["method"], r["path"]) for r in calls] == [("POST", EMBEDDINGS_PATH)] * 4
    assert json.loads(calls[-1]["body"])["input"] == ["Your text here", "Another text"]
    assert all(r["query"]["api-version"] for r in calls)
    assert all("api-key" not in r["headers"] for r in calls)
    tokens = {bearer(r) for r in calls}
    assert len(tokens) == 1 and tokens != {DEFAULT_KEY}
    assert openai.identity.accepts(tokens.pop(), COGNITIVE_SERVICES)

    # the same text by key, on the same session: the same embedding
    openai.recorded.clear()
    conn.execute("SELECT azure_ai.set_setting('azure_openai.auth_type', 'subscription-key')")
    conn.execute("SELECT azure_ai.set_setting('azure_openai.subscription_key', %s)", (DEFAULT_KEY,))
    (by_key,) = conn.execute(DOCS_QUERY).fetchone()
    assert by_key == embeddings[0]
    (request,) = openai.recorded.snapshot()
    assert request["path"] == EMBEDDINGS_PATH and request["headers"]["api-key"] == DEFAULT_KEY
    assert "authorization" not in request["headers"]


def test_a_refused_identity_says_why(server, openai):
    """The managed identity's own reason, first and without azure-identity's links, and
    nothing of the header (the right one or the one sent) in the error."""
    wrong = secrets.token_hex(16)
    with (
        identity_cluster(server, openai, wrong, openai_identity(openai)) as dsn,
        psycopg.connect(dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as caught,  # 28000
    ):
        conn.execute(DOCS_QUERY)
    message = caught.value.diag.message_primary
    assert message.startswith(
        "azure_openai.create_embeddings: could not get a managed-identity token for "
        "https://cognitiveservices.azure.com/.default: ManagedIdentityCredential: "
    )
    assert "missing or wrong X-IDENTITY-HEADER" in message
    assert "aka.ms" not in message
    for text in error_texts(caught.value):
        assert not leaks(wrong, text) and not leaks(IDENTITY_HEADER, text)
    recorded = openai.recorded.snapshot()
    assert recorded and {r["path"] for r in recorded} == {managed_identity.PATH}  # nothing sent
    assert {r["headers"]["x-identity-header"] for r in recorded} == {wrong}


@pytest.mark.parametrize(
    ("status", "sqlstate"),
    [(401, "28000"), (403, "42501")],  # invalid_authorization_specification, insufficient_privilege
)
def test_a_refused_call_does_not_show_the_token(conn, openai, status, sqlstate):
    """Even when the service quotes the Authorization header back in its error."""
    (embedding,) = conn.execute(DOCS_QUERY).fetchone()
    assert len(embedding) == 384
    token = bearer(openai.recorded.snapshot()[-1])
    echo = {"error": {"code": str(status), "message": f"Bearer {token} was refused"}}
    openai.faults.extend([Fault(status=status, body=json.dumps(echo))])
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(DOCS_QUERY)
    assert caught.value.sqlstate == sqlstate
    assert caught.value.diag.message_primary.startswith(
        f"azure_openai.create_embeddings: HTTP {status} from {openai.url}{EMBEDDINGS_PATH}"
    )
    assert "Bearer [redacted] was refused" in caught.value.diag.message_primary  # scrubbed, kept
    for text in error_texts(caught.value):
        assert not leaks(token, text) and not leaks(IDENTITY_HEADER, text)
    failed = openai.recorded.snapshot()[-1]
    assert failed["path"] == EMBEDDINGS_PATH and bearer(failed) == token  # the same token

    # throw_on_error => false: NULL, and the WARNING does not show it either
    warnings: list[tuple] = []  # a notice's fields are there only while it is handled
    conn.add_notice_handler(
        lambda diag: warnings.append((diag.severity_nonlocalized, diag.message_primary,
                                      diag.message_detail, diag.message_hint, diag.context))
    )  # fmt: skip
    openai.faults.extend([Fault(status=status, body=json.dumps(echo))])
    (none,) = conn.execute(
        "SELECT azure_openai.create_embeddings('text-embedding-ada-002', 'Your text here',"
        " throw_on_error => false)"
    ).fetchone()
    assert none is None
    ((severity, *texts),) = warnings
    assert severity == "WARNING" and f"HTTP {status}" in texts[0]
    for text in texts:
        assert not leaks(token, text) and not leaks(IDENTITY_HEADER, text)


def test_rank_takes_a_token_for_azure_ml_when_azure_ml_uses_managed_identity(server):
    with CohereSimulator(identity_header=IDENTITY_HEADER) as cohere:
        settings = {"azure_ml.serverless_ranking_endpoint": cohere.url + "/v2/rerank",
                    "azure_ml.auth_type": "managed-identity"}  # fmt: skip
        with (
            identity_cluster(server, cohere, IDENTITY_HEADER, settings) as dsn,
            psycopg.connect(dsn, autocommit=True) as conn,
        ):
            rows = conn.execute(
                "SELECT document_id FROM azure_ai.rank('a sleeping cat',"
                " ARRAY['Bond yields rose in March.', 'A cat sleeps on the sofa.'])"
            ).fetchall()
            assert rows == [(2,), (1,)]
            token_request, rerank = cohere.recorded.snapshot()
    assert token_request["query"]["resource"] == "https://ml.azure.com"
    scheme, _, token = rerank["headers"]["authorization"].partition(" ")
    assert scheme == "Bearer" and token != cohere_sim.DEFAULT_KEY and len(token) > 20
