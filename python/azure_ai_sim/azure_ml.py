"""azure_ml.invoke: score a JSON payload on an Azure ML online endpoint or v1 web service."""

from __future__ import annotations

import functools
import json
import os
import re
import uuid
from dataclasses import dataclass
from typing import Any

import azure_ai_sim
from azure_ai_sim import aws, errors, identity, pg, redaction, transport
from azure_ai_sim.azure_ai import SETTINGS

# timeout_ms NULL without a statement_timeout: Azure ML's own longest request timeout.
DEFAULT_TIMEOUT_MS = 180_000
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
MAX_RESPONSE_BYTES_SETTING = "azure_ai.max_response_bytes"
AUDIENCE = "https://ml.azure.com"
USER_AGENT = f"azure_ai_sim/{azure_ai_sim.__version__}"


@pg.sql_function("azure_ml.invoke")
def invoke(
    input_data: str | None,
    timeout_ms: int | None = None,
    throw_on_error: bool | None = True,
    deployment_name: str | None = None,
    max_attempts: int | None = 1,
    retry_delay_ms: int | None = 1000,
) -> str | None:
    """Posts input_data verbatim to the scoring endpoint; returns the JSON it answers."""
    call = _call(input_data, timeout_ms, deployment_name, max_attempts, retry_delay_ms)
    if call is None:
        return None
    deadline = call.timing.deadline()
    try:
        request = call.request(_credential(call.settings, deadline))
        return _json_text(transport.send(request, deadline, call.timing.policy()))
    except errors.CallFailed as failure:
        if throw_on_error is False:
            pg.warning(failure, "azure_ml.invoke")
            return None
        raise


@dataclass(frozen=True)
class _Call:
    """One row's call, checked: what it posts, where, with which deadline and retries."""

    payload: str
    deployment_name: str | None
    timing: aws.Timing
    settings: dict[str, str]
    endpoint: str

    def request(self, secret: str | None, rows: int = 1) -> transport.Request:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            "x-ms-client-request-id": str(uuid.uuid4()),
        }
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        if self.deployment_name is not None:
            headers["azureml-model-deployment"] = self.deployment_name
        return transport.Request(
            "POST",
            self.endpoint,
            headers,
            self.payload.encode(),
            max_response_bytes=_max_response_bytes(),
            secrets=(secret,) if secret else (),
            max_response_hint=f"Raise {MAX_RESPONSE_BYTES_SETTING} if the response is "
            "expected to be this large.",
            service="azure_ml",
            rows=rows,
        )


def _call(
    input_data: str | None, timeout_ms: int | None, deployment_name: str | None,
    max_attempts: int | None, retry_delay_ms: int | None,
) -> _Call | None:  # fmt: skip
    """The row's checks; None when the result is NULL without a call. Their errors are
    raised whatever throw_on_error says."""
    if input_data is None:
        return None
    timing = call_timing(timeout_ms, max_attempts, retry_delay_ms, DEFAULT_TIMEOUT_MS)
    if deployment_name == "":
        raise errors.InvalidParameter("deployment_name must not be empty")
    if pg.in_parallel_mode():
        raise errors.ParallelMode()
    settings = SETTINGS.snapshot()
    endpoint = _setting(settings, "azure_ml.scoring_endpoint")
    if endpoint is None:
        raise errors.SettingMissing(
            'setting "azure_ml.scoring_endpoint" is not set, nor the server\'s '
            "AZURE_ML_SCORING_ENDPOINT",
            hint="SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', '<scoring URI>');",
        )
    return _Call(input_data, deployment_name, timing, settings, endpoint)


@pg.sql_function("azure_ml.invoke")
def invoke_batch(
    input_data: list[str | None],
    timeout_ms: list[int | None],
    throw_on_error: list[bool | None],
    deployment_name: list[str | None],
    max_attempts: list[int | None],
    retry_delay_ms: list[int | None],
) -> list[str | None]:
    """azure_ml.invoke for many rows: each row's own request, several at once
    (max_parallel_requests), each with the deadline and retries of its own call. A row
    with throw_on_error false that fails is NULL, with its WARNING, in row order;
    otherwise the first failing row raises its own call's error."""
    batch = aws.RowBatch(
        input_data, timeout_ms, throw_on_error, deployment_name, max_attempts, retry_delay_ms
    )
    arguments = (input_data, timeout_ms, deployment_name, max_attempts, retry_delay_ms)
    calls = batch.prepare(_call, *arguments)

    def failed(row: int, failure: errors.Error) -> None:
        batch.failed([row], failure, throw_on_error)

    def finish(row: int, response: transport.Response) -> None:
        batch.results[row] = _json_text(response)

    secret: tuple[str | None] | errors.Error | None = None
    for row, call in calls.items():
        if secret is None:  # found once, as the first row's call finds it
            try:
                secret = (_credential(call.settings, call.timing.deadline()),)
            except errors.Error as failure:
                secret = failure
        if isinstance(secret, errors.Error):
            failed(row, secret)
            continue
        exchange = aws.Exchange(
            row, call.request(secret[0]), call.timing, functools.partial(finish, row)
        )
        exchange.failed = functools.partial(failed, row)
        batch.add(exchange)
    batch.run()
    batch.warn("azure_ml.invoke")
    return batch.outcome()


def _credential(settings: dict[str, str], deadline: transport.Deadline) -> str | None:
    """The endpoint key, or an Entra ID token; None sends no Authorization header."""
    if settings.get("azure_ml.auth_type") == "managed-identity":
        return identity.bearer_token(AUDIENCE, deadline)
    key = _setting(settings, "azure_ml.endpoint_key")
    redaction.remember(key)
    return key


# What the server's environment gives for a setting that is not set, as AWS_REGION and
# AWS_ENDPOINT_URL do for aws_ml: a container is pointed at an endpoint by variables alone.
ENVIRONMENT = {
    "azure_ml.scoring_endpoint": "AZURE_ML_SCORING_ENDPOINT",
    "azure_ml.endpoint_key": "AZURE_ML_ENDPOINT_KEY",
}


def _setting(settings: dict[str, str], key: str) -> str | None:
    return settings.get(key) or os.environ.get(ENVIRONMENT[key]) or None


def _json_text(response: transport.Response) -> str:
    """The body, once it is known to be JSON that jsonb accepts too."""
    return json_answer(response)[0]


def json_answer(response: transport.Response) -> tuple[str, Any]:
    """The body, once it is known to be JSON that jsonb accepts too, and what it says."""
    try:
        text = response.body.decode("utf-8")
        document = json.loads(text, parse_constant=_not_in_jsonb)
        if "\\u" in text:  # escapes jsonb refuses: \u0000 and unpaired surrogates
            json.dumps(document, ensure_ascii=False).encode("utf-8")
            if "\\u0000" in text:
                raise ValueError("\\u0000")
    except (ValueError, RecursionError):
        raise errors.InvalidResponse(
            f"the endpoint answered HTTP {response.status} with a body that is not JSON "
            f"PostgreSQL accepts: {redaction.excerpt(response.body, 100)!r}",
            request_id=response.request_id,
            detail=f"request id: {response.request_id}." if response.request_id else None,
        ) from None
    return text, document


def _not_in_jsonb(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def call_timing(
    timeout_ms: int | None, max_attempts: int | None, retry_delay_ms: int | None,
    default_timeout_ms: int,
) -> aws.Timing:  # fmt: skip
    """The retries and deadline that azure_ai's functions take as arguments (azure_ml.invoke,
    azure_openai.create_embeddings): timeout_ms NULL is until statement_timeout, or the
    service's default_timeout_ms."""
    return aws.Timing(
        max_attempts=_at_least("max_attempts", max_attempts, 1, default=1),
        delay_seconds=_at_least("retry_delay_ms", retry_delay_ms, 0, default=1000) / 1000,
        seconds=transport.timeout_seconds(timeout_ms),
        default_seconds=default_timeout_ms / 1000,
    )


def _at_least(name: str, value: int | None, minimum: int, *, default: int) -> int:
    if value is None:
        return default
    if value < minimum:
        raise errors.InvalidParameter(f"{name} must be at least {minimum}, not {value}")
    return value


def _max_response_bytes() -> int:
    configured = pg.setting(MAX_RESPONSE_BYTES_SETTING)
    if not configured:
        return DEFAULT_MAX_RESPONSE_BYTES
    if not re.fullmatch(r"[0-9]{1,18}", configured) or int(configured) == 0:
        raise errors.InvalidParameter(
            f"{MAX_RESPONSE_BYTES_SETTING} must be a positive number of bytes"
        )
    return int(configured)
