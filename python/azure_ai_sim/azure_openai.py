"""azure_openai.create_embeddings: embeddings from an Azure OpenAI deployment, or from any
server that speaks OpenAI's HTTP API (OpenAI, Ollama, vLLM, llama.cpp, Text Embeddings
Inference) when azure_openai.api_type is 'openai'.

Azure OpenAI: POST {endpoint}/openai/deployments/{deployment}/embeddings?api-version=...
with the api-key header (or an Entra ID token for Cognitive Services). OpenAI's API: POST
{endpoint}/v1/embeddings with {"model": deployment} and, if a key is set, a Bearer key.
Both answer {"data": [{"index", "embedding"}], "usage"}: embeddings are matched back to
their inputs by index, and returned as float32 bytes (the SQL turns them into real[]).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import struct
import sys
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote

import azure_ai_sim
from azure_ai_sim import aws, errors, pg, redaction, transport
from azure_ai_sim.azure_ai import SETTINGS, credential, required
from azure_ai_sim.azure_ml import call_timing

API_VERSION = "2024-10-21"  # the latest GA data-plane version
AUDIENCE = "https://cognitiveservices.azure.com"
DEFAULT_TIMEOUT_MS = 3_600_000
MAX_INPUTS = 2048  # per request, Azure OpenAI's and OpenAI's limit
MAX_INPUT_TOKENS = 8192  # per input, for every embedding model of theirs
BATCH_INPUTS = 100  # texts per request of a batch of rows, as the array form's default
MAX_RESPONSE_BYTES = 256 * 1024 * 1024  # 2,048 embeddings of 3,072 floats as JSON
USER_AGENT = f"azure_ai_sim/{azure_ai_sim.__version__}"


@dataclass(frozen=True)
class Target:
    """Where one call's requests go, and with which deadline, retries and credential."""

    base: str  # the endpoint, without a trailing /
    openai: bool  # OpenAI's API rather than Azure OpenAI's
    timing: aws.Timing
    secret: str | None
    token: bool  # the secret is an Entra ID token, not a key

    def request(
        self, deployment: str, operation: str, body: dict, rows: int, max_bytes: int
    ) -> transport.Request:
        """POST body to a deployment's operation ("embeddings", "chat/completions")."""
        if self.openai:
            url, body = f"{self.base}/v1/{operation}", {"model": deployment, **body}
        else:
            url = (f"{self.base}/openai/deployments/{quote(deployment, safe='')}/{operation}"
                   f"?api-version={API_VERSION}")  # fmt: skip
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if self.secret:
            if self.token or self.openai:
                headers["Authorization"] = f"Bearer {self.secret}"
            else:
                headers["api-key"] = self.secret
        return transport.Request(
            "POST", url, headers, json.dumps(body).encode(), max_bytes,
            secrets=(self.secret,) if self.secret else (), service="azure_openai",
            endpoint=deployment, rows=rows,
        )  # fmt: skip

    def check(self, text: str, argument: str) -> None:
        """An input the service would refuse is refused before sending, as a 400 would also
        fail the other texts of its request. The token limit is Azure OpenAI's: a server
        of OpenAI's API (a local model's context may be longer) checks its own."""
        if not text:
            raise errors.InputRefused(f"{argument} must not be an empty string")
        if not self.openai and len(text) > MAX_INPUT_TOKENS:  # fewer characters: fewer tokens
            tokens = sum(1 for _ in _sure_tokens().finditer(text))
            if tokens > MAX_INPUT_TOKENS:
                raise errors.InputRefused(
                    f"{argument} has at least {tokens} tokens; an embeddings input may have "
                    f"at most {MAX_INPUT_TOKENS}"
                )

    def embeddings(
        self, deployment: str, texts: list[str], dimensions: int | None
    ) -> transport.Request:
        body: dict = {"input": texts, "encoding_format": "base64"}  # a quarter of the bytes
        if dimensions is not None:
            body["dimensions"] = dimensions
        return self.request(deployment, "embeddings", body, len(texts), MAX_RESPONSE_BYTES)


def target_for(timing: aws.Timing) -> Target:
    """The settings' endpoint and credential; a managed identity's token is fetched here."""
    if pg.in_parallel_mode():
        raise errors.ParallelMode()
    settings = SETTINGS.snapshot()
    endpoint = required(settings, "azure_openai.endpoint", "https://<resource>.openai.azure.com")
    openai = settings.get("azure_openai.api_type") == "openai"
    if openai:  # a server of OpenAI's API may take no key, and knows no managed identity
        secret, token = settings.get("azure_openai.subscription_key") or None, False
        redaction.remember(secret)
    else:
        secret, token = credential(settings, "azure_openai.auth_type",
                                   "azure_openai.subscription_key", AUDIENCE,
                                   timing.deadline)  # fmt: skip
    return Target(endpoint.rstrip("/"), openai, timing, secret, token)


def _timed_target(
    timeout_ms: int | None, max_attempts: int | None, retry_delay_ms: int | None
) -> Target:
    return target_for(call_timing(timeout_ms, max_attempts, retry_delay_ms, DEFAULT_TIMEOUT_MS))


@functools.cache
def _sure_tokens() -> re.Pattern:
    """Runs of letters, and numerals three at a time: \\p{L}+ and \\p{N}{1,3} in the
    pre-tokenizers of OpenAI's tokenizers, which never put two of them in one piece. Each
    is at least one token, so a text with too many is surely too long."""
    numerals = "".join(
        re.escape(chr(code)) for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code))[0] == "N"
    )  # fmt: skip
    return re.compile(f"[^\\W{numerals}_]+|[{numerals}]{{1,3}}")


def _checked(deployment_name: str | None, dimensions: int | None) -> str:
    if not deployment_name:
        raise errors.InvalidParameter("deployment_name must not be NULL or empty")
    if dimensions is not None and dimensions < 1:
        raise errors.InvalidParameter(f"dimensions must be at least 1, not {dimensions}")
    return deployment_name


@pg.sql_function("azure_openai.create_embeddings")
def create_embedding(
    deployment_name: str | None, text: str | None, dimensions: int | None,
    timeout_ms: int | None, throw_on_error: bool | None, max_attempts: int | None,
    retry_delay_ms: int | None,
) -> bytes | None:  # fmt: skip
    """One text's embedding, as float32 bytes; NULL for a NULL text."""
    deployment = _checked(deployment_name, dimensions)
    if text is None:
        return None
    target = _timed_target(timeout_ms, max_attempts, retry_delay_ms)
    try:
        target.check(text, "input")
        request = target.embeddings(deployment, [text], dimensions)
        return _embeddings(transport.send(request, target.timing.deadline(),
                                          target.timing.policy()), 1)[0]  # fmt: skip
    except errors.CallFailed as failure:
        if throw_on_error is False:
            pg.warning(failure, "azure_openai.create_embeddings")
            return None
        raise


@pg.sql_function("azure_openai.create_embeddings")
def create_embeddings(
    deployment_name: str | None, texts: list[str | None] | None, batch_size: int | None,
    dimensions: int | None, timeout_ms: int | None, throw_on_error: bool | None,
    max_attempts: int | None, retry_delay_ms: int | None,
) -> list[bytes | None]:  # fmt: skip
    """The embeddings of the texts, in their order: requests of batch_size texts, sent
    several at once. A NULL text has a NULL embedding (it is not sent)."""
    deployment = _checked(deployment_name, dimensions)
    size = batch_size if batch_size is not None else 100
    if not 1 <= size <= MAX_INPUTS:
        raise errors.InvalidParameter(f"batch_size must be from 1 to {MAX_INPUTS}, not {size}")
    if not texts:
        return []
    target = _timed_target(timeout_ms, max_attempts, retry_delay_ms)
    present = []
    for i, text in enumerate(texts):
        if text is not None:
            try:
                target.check(text, f"input[{i + 1}]")
                present.append(i)
            except errors.InputRefused as refused:
                if throw_on_error is not False:
                    raise
                pg.warning(refused, "azure_openai.create_embeddings")
    chunks = [present[start : start + size] for start in range(0, len(present), size)]
    requests = [target.embeddings(deployment, [texts[i] for i in chunk], dimensions)  # type: ignore[misc]
                for chunk in chunks]  # fmt: skip
    outcomes = transport.send_many(requests, target.timing.deadline, target.timing.policy(),
                                   stop_on_error=throw_on_error is not False)  # fmt: skip
    results: list[bytes | None] = [None] * len(texts)
    for chunk, outcome in zip(chunks, outcomes, strict=True):
        if isinstance(outcome, errors.Error):
            if throw_on_error is False and isinstance(outcome, errors.CallFailed):
                pg.warning(outcome, "azure_openai.create_embeddings")
                continue
            raise outcome
        assert outcome is not None  # a request not sent comes after a failure, raised
        for i, vector in zip(chunk, _embeddings(outcome, len(chunk)), strict=True):
            results[i] = vector
    return results


def _embeddings(response: transport.Response, count: int) -> list[bytes]:
    """The response's embeddings in input order (by their index), as float32 bytes in the
    server's byte order: base64 of little-endian float32, or (from a server that ignores
    encoding_format) a list of numbers."""
    try:
        data = json.loads(response.body)["data"]
        by_index = {item["index"]: item["embedding"] for item in data}
        return [_float32(by_index[i]) for i in range(count)]
    except (ValueError, KeyError, TypeError, struct.error, binascii.Error):
        raise errors.InvalidResponse(
            f"the embeddings endpoint answered a body without {count} embeddings: "
            f"{redaction.excerpt(response.body, 100)!r}",
            request_id=response.request_id,
        ) from None


def _float32(embedding: str | list[float]) -> bytes:
    if isinstance(embedding, str):
        raw = base64.b64decode(embedding, validate=True)
        if sys.byteorder == "little":
            return raw
        count = len(raw) // 4
        return struct.pack(f"={count}f", *struct.unpack(f"<{count}f", raw))
    if not all(isinstance(value, (int, float)) for value in embedding):
        raise TypeError("not a list of numbers")
    return struct.pack(f"={len(embedding)}f", *embedding)


@pg.sql_function("azure_openai.create_embeddings")
def create_embedding_batch(
    deployment_name: list[str | None], text: list[str | None], dimensions: list[int | None],
    timeout_ms: list[int | None], throw_on_error: list[bool | None],
    max_attempts: list[int | None], retry_delay_ms: list[int | None],
) -> list[bytes | None]:  # fmt: skip
    """create_embeddings(text) for many rows: the texts of the rows that share a deployment,
    dimensions and timing go in requests of up to BATCH_INPUTS, several at once. Each row
    gets what its own call would (a service embeds each text of a request on its own); a
    row with throw_on_error false whose request failed is NULL with a WARNING."""
    batch = aws.RowBatch(
        deployment_name, text, dimensions, timeout_ms, throw_on_error, max_attempts,
        retry_delay_ms,
    )  # fmt: skip

    def check(
        deployment: str | None, row_text: str | None, row_dimensions: int | None,
        timeout: int | None, attempts: int | None, delay: int | None,
    ) -> tuple | None:  # fmt: skip
        name = _checked(deployment, row_dimensions)
        return None if row_text is None else (name, row_dimensions, timeout, attempts, delay)

    keys = batch.prepare(
        check, deployment_name, text, dimensions, timeout_ms, max_attempts, retry_delay_ms
    )
    groups: dict[tuple, list[int]] = {}
    for row, key in keys.items():
        groups.setdefault(key, []).append(row)

    def finish(rows: list[int], response: transport.Response) -> None:
        for row, vector in zip(rows, _embeddings(response, len(rows)), strict=True):
            batch.results[row] = vector

    def send(target: Target, name: str, row_dimensions: int | None, chunk: list[int]) -> None:
        request = target.embeddings(name, [text[row] for row in chunk], row_dimensions)  # type: ignore[misc]
        exchange = aws.Exchange(chunk[0], request, target.timing, functools.partial(finish, chunk))
        exchange.failed = functools.partial(refused, target, name, row_dimensions, chunk)
        batch.add(exchange)

    def refused(
        target: Target, name: str, row_dimensions: int | None, chunk: list[int],
        failure: errors.Error,
    ) -> None:  # fmt: skip
        """A request refused (400) may have been refused for one of its texts: each then
        goes alone, and gets its own answer or error."""
        if len(chunk) > 1 and failure.sqlstate == errors.http_sqlstate(400):
            for row in chunk:
                send(target, name, row_dimensions, [row])
        else:
            batch.failed(chunk, failure, throw_on_error)

    targets: dict[tuple, Target | errors.Error] = {}
    for (name, row_dimensions, *timing), rows in groups.items():
        if tuple(timing) not in targets:
            try:
                targets[tuple(timing)] = _timed_target(*timing)
            except errors.Error as failure:
                targets[tuple(timing)] = failure
        target = targets[tuple(timing)]
        if isinstance(target, errors.Error):
            batch.failed(rows[:1], target, throw_on_error)
            continue
        sendable = []
        for row in rows:
            try:
                target.check(text[row], "input")  # type: ignore[arg-type]
                sendable.append(row)
            except errors.InputRefused as refusal:
                batch.failed([row], refusal, throw_on_error)
        for start in range(0, len(sendable), BATCH_INPUTS):
            send(target, name, row_dimensions, sendable[start : start + BATCH_INPUTS])
    batch.run()
    batch.warn("azure_openai.create_embeddings")
    return batch.outcome()
