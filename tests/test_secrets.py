"""No part of a secret reaches SQL or the server log, whatever a service sends back.

Property-style: random secrets (keys, AWS secret keys, ~1 KB session tokens) are planted,
whole or in part, at random offsets of random service answers (error statuses, 200s,
redirects, chunked or not, JSON or text, in headers too), for every service; then every
text SQL can see (message, DETAIL, HINT, WARNING, the value returned) and the whole server
log are searched for any run of 8 characters of a secret (16 in a successful call's
value: see redaction.py for why).
"""

from __future__ import annotations

import json
import random
import string

import psycopg
import pytest

from azure_ai_sim.sim import (
    AzureMLSimulator,
    BedrockSimulator,
    ComprehendSimulator,
    Fault,
    SageMakerSimulator,
    StsSimulator,
)

ALPHABETS = [
    string.hexdigits.lower()[:16],  # Azure keys
    string.ascii_letters + string.digits + "+/=",  # AWS secret keys, session tokens
    string.ascii_letters + string.digits + "-_",  # tokens
]
STATUSES = [200, 200, 200, 301, 302, 307, 400, 401, 403, 404, 413, 424, 429, 500, 502, 503]
TRIALS = 40


def seeded() -> random.Random:
    seed = random.randrange(2**32)
    print(f"random seed {seed}")  # shown by pytest when the test fails, to replay it
    return random.Random(seed)


def random_secret(rng: random.Random, low: int, high: int) -> str:
    alphabet = rng.choice(ALPHABETS)
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


def part_of(rng: random.Random, secret: str, at_least: int) -> str:
    """The secret, or a run of it at least `at_least` characters long."""
    if rng.random() < 0.5 or len(secret) <= at_least:
        return secret
    length = rng.randint(at_least, len(secret))
    start = rng.randint(0, len(secret) - length)
    return secret[start : start + length]


def planted(rng: random.Random, secrets: list[str], at_least: int) -> str:
    """Filler of random length with parts of the secrets at random offsets."""
    text = " ".join(rng.choice(["error", "the", "Bearer", "key:", "x" * 9, "…"]) for _ in
                    range(rng.randint(0, 150)))  # fmt: skip
    for _ in range(rng.randint(1, 3)):
        at = rng.randint(0, len(text))
        text = text[:at] + part_of(rng, rng.choice(secrets), at_least) + text[at:]
    return text


def random_fault(rng: random.Random, secrets: list[str]) -> tuple[Fault, int]:
    status = rng.choice(STATUSES)
    at_least = 16 if status == 200 else 8
    text = planted(rng, secrets, at_least)
    shape = rng.choice(["json-message", "json-nested", "text"])
    if shape == "json-message":
        body, content_type = json.dumps({"message": text}), "application/json"
    elif shape == "json-nested":
        body, content_type = (
            json.dumps({"error": {"code": "E", "message": text}}),
            ("application/json"),
        )
    else:
        body, content_type = text, "text/plain"
    headers = {"x-ms-request-id": part_of(rng, rng.choice(secrets), 8)}
    if 300 <= status < 400:
        headers["location"] = "https://elsewhere.example/?k=" + rng.choice(secrets)
    fault = Fault(
        status=None if status == 200 else status,
        body=body,
        content_type=content_type,
        headers=headers,
        chunked=rng.random() < 0.5,
    )
    return fault, status


def leaked(text: str | None, secrets: list[str], run: int) -> list[str]:
    """The secrets of which `text` holds a run of `run` characters (all of a shorter one)."""
    if not text:
        return []
    found = []
    for secret in secrets:
        if len(secret) <= run:
            if secret in text:
                found.append(secret)
        elif any(secret[i : i + run] in text for i in range(len(secret) - run + 1)):
            found.append(secret)
    return found


def call_and_check(conn, statement: str, secrets: list[str], warnings: list[str]) -> None:
    warnings.clear()
    try:
        value = conn.execute(statement).fetchone()[0]
    except psycopg.Error as error:
        diag = error.diag
        for text in (diag.message_primary, diag.message_detail, diag.message_hint):
            assert not leaked(text, secrets, 8), (statement, text)
    else:
        assert not leaked(json.dumps(value), secrets, 16), (statement, value)
    for text in warnings:
        assert not leaked(text, secrets, 8), (statement, text)


@pytest.fixture
def warnings(conn) -> list[str]:
    collected: list[str] = []

    def note(diag) -> None:
        collected.extend(filter(None, [diag.message_primary, diag.message_detail]))

    conn.add_notice_handler(note)
    return collected


def check_log(server, secrets: list[str]) -> None:
    if server.log_path is None:
        return
    log = server.log_path.read_text(errors="replace")
    assert not leaked(log, secrets, 8)


def test_azure_ml_keys_never_leak(conn, server, warnings):
    rng = seeded()
    keys = [random_secret(rng, 8, 120) for _ in range(4)]
    conn.execute("CREATE EXTENSION IF NOT EXISTS azure_ai")
    with AzureMLSimulator(keys=keys) as azureml:
        conn.execute("SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', %s)",
                     (azureml.url + "/score",))  # fmt: skip
        payload = "'{\"input_data\": [[1,2,3,4,5,6,7,8]]}'"
        for _ in range(TRIALS):
            key = rng.choice(keys)
            conn.execute("SELECT azure_ai.set_setting('azure_ml.endpoint_key', %s)", (key,))
            fault, _ = random_fault(rng, [key])
            azureml.faults.extend([fault])
            throw = rng.choice(["true", "false"])
            call_and_check(conn, f"SELECT azure_ml.invoke({payload}, throw_on_error => {throw})",
                           [key], warnings)  # fmt: skip
    conn.execute("SELECT pg_catalog.pg_sleep(0)")
    check_log(server, keys)


AWS_CALLS = {
    "sagemaker": "SELECT aws_sagemaker.invoke_endpoint('echo', NULL, 1, 2)",
    "comprehend": "SELECT (aws_comprehend.detect_sentiment('Great service', 'en')).sentiment",
    "bedrock": "SELECT aws_bedrock.invoke_model('anthropic.claude-v2', 'application/json', "
    "'application/json', '{\"prompt\": \"hi\"}')",
}


def test_aws_secret_keys_and_session_tokens_never_leak(conn, server, warnings):
    rng = seeded()
    secret_key = random_secret(rng, 40, 40)
    token = random_secret(rng, 600, 1200)
    wrong_key = random_secret(rng, 40, 40)
    simulators = {
        "sagemaker": SageMakerSimulator(secret_key=secret_key),
        "comprehend": ComprehendSimulator(secret_key=secret_key),
        "bedrock": BedrockSimulator(secret_key=secret_key),
        "sts": StsSimulator(secret_key=secret_key),
    }
    conn.execute("CREATE EXTENSION IF NOT EXISTS aws_ml CASCADE")
    try:
        for name, simulator in simulators.items():
            simulator.start()
            conn.execute("SELECT aws_ml.set_setting(%s, %s)", (f"{name}.endpoint_url",
                                                                simulator.url))  # fmt: skip
        for key, value in [("region", "us-east-1"), ("aws_access_key_id", "AKIDSIMULATOR"),
                           ("aws_session_token", token)]:  # fmt: skip
            conn.execute("SELECT aws_ml.set_setting(%s, %s)", (key, value))
        secrets = [secret_key, token, wrong_key]
        for trial in range(TRIALS):
            name = rng.choice(sorted(simulators))
            # A wrong secret key: AWS echoes the canonical request, session token included.
            # The first call uses it, so that it is a secret in use when others plant it.
            wrong = trial == 0 or rng.random() < 0.25
            conn.execute("SELECT aws_ml.set_setting('aws_secret_access_key', %s)",
                         (wrong_key if wrong else secret_key,))  # fmt: skip
            if not wrong:
                fault, _ = random_fault(rng, secrets)
                simulators[name].faults.extend([fault])
            # STS: the fault is AssumeRole's answer, asked for a role of SageMaker's.
            role = "arn:aws:iam::123456789012:role/feature" if name == "sts" else None
            conn.execute("SELECT aws_ml.set_setting('sagemaker.role_arn', %s)", (role,))
            call_and_check(conn, AWS_CALLS.get(name, AWS_CALLS["sagemaker"]), secrets, warnings)
        signatures = [
            r["headers"]["authorization"].rpartition("Signature=")[2]
            for simulator in simulators.values()
            for r in simulator.recorded.snapshot()
        ]
    finally:
        for simulator in simulators.values():
            simulator.stop()
    conn.execute("SELECT pg_catalog.pg_sleep(0)")
    check_log(server, [*secrets, *signatures])
