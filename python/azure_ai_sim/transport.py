"""HTTP for every cloud call: keep-alive connections, deadlines, retries and cancellation.

A blocking socket read ignores pg_cancel_backend and statement_timeout until it returns.
So HTTP runs on non-blocking sockets from the backend's own thread (wire.py), waiting a
short slice at a time and letting PostgreSQL process interrupts in between. What can
only block (a DNS lookup, a library's own network call such as azure-identity's) runs on
an I/O thread instead, which the backend's thread abandons on a cancel or a deadline.

One kept-alive connection per endpoint per backend; nothing else is needed per call.
"""

from __future__ import annotations

import ipaddress
import json
import random
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from azure_ai_sim import errors, pg, redaction, settings, wire

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# AWS signals throttling with 400 and one of these codes.
RETRY_CODES = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException"})
SERVICE_MESSAGE_CHARS = 500
REQUEST_ID_HEADERS = ("x-ms-request-id", "x-request-id", "x-amzn-requestid")


# When statement_timeout is the limit, PostgreSQL's own timer should end the statement.
STATEMENT_TIMEOUT_GRACE_SECONDS = 0.5


class Deadline:
    """A point in time that the whole call, retries and waits included, must not pass."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(self.end - time.monotonic(), 0.0)


def timeout_seconds(timeout_ms: int | None) -> float | None:
    """A timeout_ms argument in seconds; NULL stays None, and it must be positive."""
    if timeout_ms is None:
        return None
    if timeout_ms <= 0:
        raise errors.InvalidParameter(f"timeout_ms must be positive, not {timeout_ms}")
    return timeout_ms / 1000


def statement_seconds_left() -> float | None:
    """Until the statement's statement_timeout timer fires, plus a grace; None unarmed."""
    left = pg.statement_seconds_left()
    return None if left is None else left + STATEMENT_TIMEOUT_GRACE_SECONDS


@dataclass
class Request:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    max_response_bytes: int
    # Values that must never appear in an error: keys and tokens sent in the headers.
    secrets: tuple[str, ...] = ()
    # How a caller raises max_response_bytes, for the error when a response is larger.
    max_response_hint: str | None = None


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes
    attempts: int = 1

    @property
    def request_id(self) -> str | None:
        return next((self.headers[h] for h in REQUEST_ID_HEADERS if h in self.headers), None)


@dataclass
class RetryPolicy:
    max_attempts: int = 1
    delay_seconds: float = 1.0
    jitter: Callable[[], float] = field(default=random.random)

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter, never shorter than the service's Retry-After."""
        exponential = self.delay_seconds * 2 ** min(attempt - 1, 30)
        jittered = exponential * (0.5 + self.jitter() / 2)
        return max(jittered, retry_after or 0.0)


def send(request: Request, deadline: Deadline, policy: RetryPolicy) -> Response:
    """Sends the request until it succeeds, fails for good, or the deadline comes."""
    attempt = 0
    while True:
        attempt += 1
        pg.check_for_interrupts()
        retry_after = None
        try:
            response = _attempt(request, deadline)
        except errors.TimedOut:
            failure: errors.CallFailed = errors.TimedOut(
                f"no response from {_show(request.url)} within {deadline.seconds * 1000:.0f} ms"
            )
        except (errors.ConnectFailed, errors.ConnectionLost) as lost:
            failure = lost
        except errors.CallFailed as final:
            raise _with_attempts(final, attempt, request) from None
        else:
            response.attempts = attempt
            if 200 <= response.status < 300:
                response.body = redaction.scrub_body(response.body, request.secrets)
                return response
            code = service_code(response)
            failure = _status_error(request, response, code)
            retry_after = _retry_after_seconds(response.headers.get("retry-after"))
            if response.status not in RETRY_STATUSES and code not in RETRY_CODES:
                raise _with_attempts(failure, attempt, request)
        if attempt >= policy.max_attempts or deadline.left() <= 0:
            raise _with_attempts(failure, attempt, request)
        wait = policy.backoff(attempt, retry_after)
        if wait >= deadline.left():
            raise _with_attempts(failure, attempt, request, "the next retry would pass the timeout")
        pg.sleep(wait)


def service_message(body: bytes, secrets: Iterable[str] = ()) -> str:
    """The service's own words: a JSON message field if there is one, else the text;
    scrubbed of secrets before it is shortened."""
    text = body.decode("utf-8", "replace").strip()
    try:
        document = json.loads(text)
    except ValueError:
        return _trim(" ".join(text.split()), secrets)
    found = _find_message(document)
    return _trim(found if found is not None else text, secrets)


def _find_message(document: Any) -> str | None:
    if isinstance(document, dict):
        for key in ("message", "Message", "error_description", "detail", "error"):
            value = document.get(key)
            if isinstance(value, str):
                return value
            if isinstance(value, dict):
                return _find_message(value)
    return None


def _trim(text: str, secrets: Iterable[str]) -> str:
    return redaction.excerpt(text, SERVICE_MESSAGE_CHARS, secrets)


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def service_code(response: Response) -> str | None:
    """The service's own name for the error: AWS's error type, or an "error.code"."""
    header = response.headers.get("x-amzn-errortype")
    if header:
        return header.split(":")[0]
    try:
        document = json.loads(response.body)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    error = document.get("error")
    code = document.get("__type") or (error.get("code") if isinstance(error, dict) else None)
    return code.rsplit("#", 1)[-1] if isinstance(code, str) else None


def _status_error(request: Request, response: Response, code: str | None) -> errors.CallFailed:
    message = f"HTTP {response.status} from {_show(request.url)}"
    reason = service_message(response.body, request.secrets)
    if code:
        message += f": {code}"
    if reason:
        message += f": {reason}"
    sqlstate = "53400" if code in RETRY_CODES else errors.http_sqlstate(response.status)
    return errors.CallFailed(message, sqlstate=sqlstate, request_id=response.request_id)


def _with_attempts(
    failure: errors.CallFailed, attempts: int, request: Request, why_stopped: str | None = None
) -> errors.CallFailed:
    """Adds what the caller needs to act on: attempts, request ids; removes secrets."""
    details = [f"attempts: {attempts}"]
    if why_stopped:
        details.append(why_stopped)
    if failure.request_id:
        details.append(f"request id: {failure.request_id}")
    client_id = request.headers.get("x-ms-client-request-id")
    if client_id:
        details.append(f"client request id: {client_id}")
    failure.message = redaction.scrub(failure.message, request.secrets)
    failure.detail = redaction.scrub("; ".join(details) + ".", request.secrets)
    failure.args = (failure.message,)
    return failure


def _show(url: str) -> str:
    """The URL as errors show it: no query string, which may carry a signature."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]  # never a user name or password
    return f"{parts.scheme}://{host}{parts.path}"


# --- one attempt -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Endpoint:
    scheme: str
    host: str
    port: int
    path: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


@lru_cache(maxsize=256)
def _endpoint(url: str) -> _Endpoint:
    """Settings are checked when set, but a URL may also come from the server's
    environment or from a restored row: what goes into the request line is checked here."""
    try:
        settings.http_url(url)
    except ValueError as reason:
        raise errors.InvalidParameter(f"the endpoint URL {_show(url)!r} {reason}") from None
    parts = urlsplit(url)
    default_port = 443 if parts.scheme == "https" else 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return _Endpoint(parts.scheme, parts.hostname or "", parts.port or default_port, path)


# Kept-alive connections of this backend, by endpoint; only the backend's thread uses them.
_idle: dict[tuple[str, str, int], wire.Connection] = {}


def _attempt(request: Request, deadline: Deadline) -> Response:
    """One exchange; it may use all the time that is left."""
    endpoint = _endpoint(request.url)
    message = wire.encode_request(
        request.method, endpoint.host_header, endpoint.path, request.headers, request.body
    )
    key = (endpoint.scheme, endpoint.host, endpoint.port)
    connection = _idle.pop(key, None)
    reused = connection is not None
    try:
        if connection is not None and not connection.usable():
            connection.close()
            connection, reused = None, False
        if connection is None:
            connection = _connect(request.url, endpoint, deadline)
        try:
            reply = connection.exchange(message, deadline.left, request.max_response_bytes)
        except wire.SendFailed:
            if not reused:
                raise
            # Closed by the server while idle: it never read this request. Once more, afresh.
            connection.close()
            connection = _connect(request.url, endpoint, deadline)
            reply = connection.exchange(message, deadline.left, request.max_response_bytes)
    except BaseException as error:
        if connection is not None:
            connection.close()
        raise _exchange_error(request, error) from None
    if reply.keep_alive:
        _idle[key] = connection
    else:
        connection.close()
    return Response(reply.status, reply.headers, reply.body)


def _connect(url: str, endpoint: _Endpoint, deadline: Deadline) -> wire.Connection:
    try:
        addresses = _addresses(endpoint.host, endpoint.port, deadline)
        tls = _tls_context() if endpoint.scheme == "https" else None
        return wire.Connection.open(addresses, tls, endpoint.host, deadline.left)
    except TimeoutError:
        raise errors.TimedOut(f"could not connect to {_show(url)} in time") from None
    except ssl.SSLError as error:
        reason = error.reason or error.strerror or str(error)
        if isinstance(error, ssl.SSLCertVerificationError):
            reason += f": {error.verify_message}"
        raise errors.TLSFailed(f"could not connect to {_show(url)}: {reason}") from None
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise errors.ConnectFailed(f"could not connect to {_show(url)}: {reason}") from None


def _addresses(host: str, port: int, deadline: Deadline) -> list[tuple]:
    """getaddrinfo; a name lookup blocks, so it runs on the I/O thread."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return run_blocking(
            ("getaddrinfo", host, port),
            lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM),
            deadline,
        )
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def _exchange_error(request: Request, error: BaseException) -> BaseException:
    if isinstance(error, errors.Error):
        return error
    if isinstance(error, TimeoutError):
        return errors.TimedOut("the deadline passed")
    if isinstance(error, wire.TooLarge):
        return _too_large(request, error.size)
    if isinstance(error, (OSError, wire.Closed, wire.SendFailed)):
        return _lost(request, error)
    return error


def _lost(request: Request, error: BaseException) -> errors.ConnectionLost:
    reason = str(error) or type(error).__name__
    return errors.ConnectionLost(f"the connection to {_show(request.url)} failed: {reason}")


def _too_large(request: Request, size: int | None) -> errors.ResponseTooLarge:
    shown = f"{size} bytes" if size is not None else "more"
    return errors.ResponseTooLarge(
        f"the response from {_show(request.url)} is {shown}, over the limit of "
        f"{request.max_response_bytes} bytes",
        hint=request.max_response_hint,
    )


# --- calls that can only block -----------------------------------------------------------


class _Job:
    """A blocking call on a thread of its own, with signals blocked: PostgreSQL's signal
    handlers must run on the backend's thread."""

    def __init__(self, function: Callable[[], Any]):
        self.function = function
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:  # a new thread inherits the signal mask of the thread that starts it
            threading.Thread(target=self._run, name="azure_ai_sim-blocking", daemon=True).start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _run(self) -> None:
        try:
            self.result = self.function()
        except BaseException as error:
            self.error = error
        self.done.set()


# In-flight calls by what they fetch: a call abandoned on a cancel or a deadline keeps
# running, and the next caller that needs the same thing waits for it instead of
# starting another. So there is at most one thread per thing, and no result is lost.
_jobs: dict[Any, _Job] = {}


def run_blocking(key: Any, function: Callable[[], Any], deadline: Deadline) -> Any:
    """Runs `function` on a thread; the backend's thread waits, cancellable, until the
    deadline. A finished call's result is handed to the first caller that waits for it."""
    job = _jobs.get(key)
    if job is None:
        job = _jobs[key] = _Job(function)
    if not pg.wait_for(job.done, deadline.left()):
        raise errors.TimedOut(f"no result within {deadline.seconds * 1000:.0f} ms")
    del _jobs[key]
    if job.error is not None:
        raise job.error
    return job.result
