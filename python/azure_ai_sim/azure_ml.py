"""azure_ml.invoke: score a JSON payload on an Azure ML online endpoint or v1 web service."""

from __future__ import annotations

import json
import re
import uuid

import azure_ai_sim
from azure_ai_sim import errors, identity, pg, redaction, transport
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
    if input_data is None:
        return None
    policy = transport.RetryPolicy(
        max_attempts=_at_least("max_attempts", max_attempts, 1, default=1),
        delay_seconds=_at_least("retry_delay_ms", retry_delay_ms, 0, default=1000) / 1000,
    )
    deadline = transport.Deadline(_seconds_allowed(timeout_ms))
    if deployment_name == "":
        raise errors.InvalidParameter("deployment_name must not be empty")
    if pg.in_parallel_mode():
        raise errors.ParallelMode()
    settings = SETTINGS.snapshot()
    endpoint = settings.get("azure_ml.scoring_endpoint")
    if endpoint is None:
        raise errors.SettingMissing(
            'setting "azure_ml.scoring_endpoint" is not set',
            hint="SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', '<scoring URI>');",
        )
    try:
        secret = _credential(settings, deadline)
        response = _score(input_data, endpoint, secret, deployment_name, deadline, policy)
        return _json_text(response)
    except errors.CallFailed as failure:
        if throw_on_error is False:
            pg.warning(failure, "azure_ml.invoke")
            return None
        raise


def _score(
    payload: str,
    endpoint: str,
    secret: str | None,
    deployment_name: str | None,
    deadline: transport.Deadline,
    policy: transport.RetryPolicy,
) -> transport.Response:
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
        "x-ms-client-request-id": str(uuid.uuid4()),
    }
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    if deployment_name is not None:
        headers["azureml-model-deployment"] = deployment_name
    request = transport.Request(
        "POST",
        endpoint,
        headers,
        payload.encode(),
        max_response_bytes=_max_response_bytes(),
        secrets=(secret,) if secret else (),
        max_response_hint=f"Raise {MAX_RESPONSE_BYTES_SETTING} if the response is expected "
        "to be this large.",
    )
    return transport.send(request, deadline, policy)


def _credential(settings: dict[str, str], deadline: transport.Deadline) -> str | None:
    """The endpoint key, or an Entra ID token; None sends no Authorization header."""
    if settings.get("azure_ml.auth_type") == "managed-identity":
        return identity.bearer_token(AUDIENCE, deadline)
    return settings.get("azure_ml.endpoint_key")


def _json_text(response: transport.Response) -> str:
    """The body, once it is known to be JSON that jsonb accepts too."""
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
    return text


def _not_in_jsonb(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def _seconds_allowed(timeout_ms: int | None) -> float:
    """timeout_ms, and never more than what statement_timeout leaves of the statement."""
    seconds = transport.timeout_seconds(timeout_ms)
    left = transport.statement_seconds_left()
    if seconds is None:
        return left if left is not None else DEFAULT_TIMEOUT_MS / 1000
    return min(seconds, left) if left is not None else seconds


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
