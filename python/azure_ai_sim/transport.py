"""HTTP for every cloud call: keep-alive connections, deadlines, retries and cancellation.

A blocking socket read ignores pg_cancel_backend and statement_timeout until it returns.
So HTTP runs on non-blocking sockets from the backend's own thread (wire.py), waiting a
short slice at a time and letting PostgreSQL process interrupts in between. What can
only block (a DNS lookup, a library's own network call such as azure-identity's) runs on
an I/O thread instead, which the backend's thread abandons on a cancel or a deadline.

send_many keeps several requests in flight at once, up to max_parallel_requests() per
endpoint (scheme, host and port): one loop on the backend's thread polls the sockets of
all of them together, resumes each request's steps (wire.py) when its socket is ready,
and starts the next attempt of a request whose backoff has passed, without holding up
the others. send is send_many of one request.

Kept-alive connections are pooled per endpoint per backend, as many as the cap allows.
"""

from __future__ import annotations

import contextlib
import heapq
import ipaddress
import json
import math
import os
import random
import select
import signal
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from azure_ai_sim import errors, pg, redaction, settings, usage, wire

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# AWS signals throttling with 400 and one of these codes.
RETRY_CODES = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException"})
SERVICE_MESSAGE_CHARS = 500
REQUEST_ID_HEADERS = ("x-ms-request-id", "x-request-id", "x-amzn-requestid")


# Requests in flight at once per endpoint: a GUC of the native library. The default is
# what a boto3 client keeps open to a service (botocore's max_pool_connections).
PARALLEL_SETTING = "azure_ai_sim.max_parallel_requests"
DEFAULT_PARALLEL_REQUESTS = 10
MAX_PARALLEL_REQUESTS = 64

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
    # What the usage ledger counts it under: the service, the endpoint or model (empty:
    # the URL, as errors show it), and how many rows of the caller's it carries.
    service: str = "http"
    endpoint: str = ""
    rows: int = 1


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
    (result,) = send_many([request], deadline, policy)
    if isinstance(result, errors.Error):
        raise result
    return result  # type: ignore[return-value]


def send_many(
    requests: Sequence[Request],
    deadline: Deadline | Callable[[], Deadline],
    policy: RetryPolicy,
    stop_on_error: bool = True,
) -> list[Response | errors.Error | None]:
    """Sends the requests, several at once, each until it succeeds, fails for good, or the
    deadline comes; returns their outcomes in their order: a Response, or the error that
    send would raise for that request.

    The deadline is the whole batch's, or a function that makes each request its own
    when it starts, as its own call would have had (a request waiting for a place under
    the cap uses none of it). Each request is retried on its own (policy), and one
    waiting for its retry holds up no other. With stop_on_error, once a request has
    failed for good no request after it starts any more, and those after it still in
    flight are abandoned (their connections closed): the outcome of a request not started
    or abandoned is None. The requests before it run to their end, so the first failure
    in order is known. A cancel, a statement timeout or a bug raises, and abandons every
    request in flight."""
    sending = Sending(stop_on_error)
    for request in requests:
        sending.add(request, deadline, policy)
    return sending.run()


_outside_postgres = False


def max_parallel_requests() -> int:
    """The azure_ai_sim.max_parallel_requests setting: requests in flight per endpoint."""
    global _outside_postgres
    value = None
    if not _outside_postgres:
        try:
            value = pg.setting(PARALLEL_SETTING)
        except AttributeError:  # not inside PostgreSQL (a unit test): no settings to read
            _outside_postgres = True
    if value is None or not value.strip():
        return DEFAULT_PARALLEL_REQUESTS
    value = value.strip()
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_PARALLEL_REQUESTS):
        raise errors.InvalidParameter(
            f"{PARALLEL_SETTING} must be an integer from 1 to {MAX_PARALLEL_REQUESTS}",
            hint=f"RESET {PARALLEL_SETTING}; the default is {DEFAULT_PARALLEL_REQUESTS}.",
        )
    return int(value)


def _outcome(
    request: Request,
    attempt: int,
    response: Response | None,
    failure: errors.Error | None,
    deadline: Deadline,
    policy: RetryPolicy,
) -> Response | errors.Error | float:
    """What an attempt's end means: the request's outcome, or how long to wait before
    the next attempt."""
    retry_after = None
    if response is None:
        if isinstance(failure, errors.TimedOut):
            failure = errors.TimedOut(
                f"no response from {_show(request.url)} within {deadline.seconds * 1000:.0f} ms"
            )
        elif isinstance(failure, (errors.ConnectFailed, errors.ConnectionLost)):
            pass
        elif isinstance(failure, errors.CallFailed):
            return _with_attempts(failure, attempt, request)
        else:  # the caller's own mistake, not a failed call
            return failure  # type: ignore[return-value]
    else:
        response.attempts = attempt
        if 200 <= response.status < 300:
            response.body = redaction.scrub_body(response.body, request.secrets)
            return response
        code = service_code(response)
        failure = _status_error(request, response, code)
        retry_after = _retry_after(response.headers)
        if response.status not in RETRY_STATUSES and code not in RETRY_CODES:
            return _with_attempts(failure, attempt, request)
    assert isinstance(failure, errors.CallFailed)
    if attempt >= policy.max_attempts or deadline.left() <= 0:
        return _with_attempts(failure, attempt, request, retry_after=retry_after)
    wait = policy.backoff(attempt, retry_after)
    if wait >= deadline.left():
        return _with_attempts(
            failure, attempt, request, "the next retry would pass the timeout", retry_after
        )
    return wait


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


def _retry_after(headers: dict[str, str]) -> float | None:
    """The wait a response asks for: Azure OpenAI's retry-after-ms (finer), or Retry-After."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(float(milliseconds), 0.0) / 1000
        except ValueError:
            pass
    return _retry_after_seconds(headers.get("retry-after"))


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
    failure: errors.CallFailed, attempts: int, request: Request, why_stopped: str | None = None,
    retry_after: float | None = None,
) -> errors.CallFailed:  # fmt: skip
    """Adds what the caller needs to act on: attempts, the service's Retry-After (which
    ml_pipeline's workers wait for), request ids; removes secrets."""
    details = [f"attempts: {attempts}"]
    if why_stopped:
        details.append(why_stopped)
    if retry_after is not None:
        seconds = f"{retry_after:.3f}".rstrip("0").rstrip(".")  # never 1e+06
        details.append(f"{errors.RETRY_AFTER} {seconds} s")
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


# --- endpoints ---------------------------------------------------------------------------


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


# --- many requests at once --------------------------------------------------------------

_Key = tuple[str, str, int]  # an endpoint's scheme, host and port


class _Flight:
    """One request of a batch: its attempts, and what the one in flight waits for."""

    __slots__ = (
        "attempt", "deadline", "endpoint", "index", "key", "ledger", "message", "new_deadline",
        "order", "policy", "request", "steps", "wait",
    )  # fmt: skip

    def __init__(
        self, index: int, order: float, request: Request, endpoint: _Endpoint, message: bytes,
        new_deadline: Callable[[], Deadline], policy: RetryPolicy,
    ):  # fmt: skip
        self.index = index
        self.order = order
        self.request = request
        self.endpoint = endpoint
        self.key: _Key = (endpoint.scheme, endpoint.host, endpoint.port)
        self.message = message
        endpoint_name = request.endpoint or _show(request.url)
        self.ledger = (request.service, usage.endpoint_label(endpoint_name))  # its entry
        self.new_deadline = new_deadline
        self.policy = policy
        self.attempt = 0
        self.deadline: Deadline | None = None  # from its first attempt on
        self.steps: Generator[Any, None, Response] | None = None  # the attempt in flight
        self.wait: Any = None  # what it waits for: a wire.Wait, or a _Job


class Sending:
    """Requests in flight together, driven by one loop on the backend's thread (see
    send_many). Requests may be added while others are in flight: a batch of rows sends
    its first requests while it is still preparing the later ones. Each request has an
    order (by default, the order it was added in): the first in order start first, and
    stopping after one stops those ordered after it."""

    def __init__(self, stop_on_error: bool = True):
        self.stop_on_error = stop_on_error
        self.cap = max_parallel_requests()
        self.results: list[Response | errors.Error | None] = []
        self.ended: deque[int] = deque()  # the requests whose outcome came, as they came
        self.last = math.inf  # no request ordered after this one starts any more
        self.flights: list[_Flight | None] = []
        self.ready: dict[_Key, list[tuple[float, int]]] = {}  # per endpoint: (order, index)
        self.busy: dict[_Key, int] = {}  # per endpoint, attempts in flight
        self.in_flight: set[_Flight] = set()
        self.timers: list[tuple[float, int]] = []  # (when, index): backoffs

    def add(
        self, request: Request, deadline: Deadline | Callable[[], Deadline],
        policy: RetryPolicy, order: float | None = None,
    ) -> int:  # fmt: skip
        """Queues a request (see send_many for deadline); returns its index in results."""
        index = len(self.results)
        self.results.append(None)
        self.flights.append(None)
        order = index if order is None else order
        try:
            endpoint = _endpoint(request.url)
            message = wire.encode_request(
                request.method, endpoint.host_header, endpoint.path, request.headers,
                request.body,
            )  # fmt: skip
        except errors.Error as error:
            self._fail(index, order, error)
            return index
        new_deadline = (lambda: deadline) if isinstance(deadline, Deadline) else deadline
        flight = _Flight(index, order, request, endpoint, message, new_deadline, policy)
        self.flights[index] = flight
        heapq.heappush(self.ready.setdefault(flight.key, []), (order, index))
        return index

    def step(self) -> None:
        """Starts what may start and takes what has arrived, without waiting."""
        try:
            self.turn(wait=False)
        except BaseException:
            self.abandon()
            raise

    def run(self) -> list[Response | errors.Error | None]:
        """Until every request that may still start has ended; their outcomes."""
        try:
            while self.turn(wait=True):
                pass
        finally:
            self.abandon()
        return self.results

    def stop_after(self, order: float) -> None:
        """No request ordered after `order` starts any more; those in flight are abandoned,
        those waiting for their retry forgotten."""
        if order >= self.last:
            return
        self.last = order
        for flight in list(self.in_flight):
            if flight.order > order:
                self._abandon(flight)
        self.timers = [t for t in self.timers if self._flight(t[1]).order <= order]
        heapq.heapify(self.timers)

    def abandon(self) -> None:
        """Ends every attempt in flight (a cancel, a bug, or a batch given up)."""
        for flight in list(self.in_flight):
            self._abandon(flight)

    def turn(self, wait: bool) -> bool:
        """One turn of the loop; False when nothing is left in flight or waiting."""
        pg.check_for_interrupts()
        self._wake_timers()
        self._start_ready()
        if not self.in_flight and not self.timers:
            return False
        left = self._time_out()
        if left is not None:
            self._poll(left if wait else 0.0)
        return True

    def _flight(self, index: int) -> _Flight:
        flight = self.flights[index]
        assert flight is not None
        return flight

    def _time_out(self) -> float | None:
        """Ends the attempts whose deadline has passed: None if any did. Otherwise the
        time until the first deadline of those in flight comes."""
        left = math.inf
        passed = []
        for flight in self.in_flight:
            assert flight.deadline is not None
            flight_left = flight.deadline.left()
            if flight_left <= 0:
                passed.append(flight)
            left = min(left, flight_left)
        for flight in passed:
            if flight in self.in_flight:
                self._resume(flight, TimeoutError("the deadline passed"))
        return None if passed else left

    def _wake_timers(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            flight = self._flight(heapq.heappop(self.timers)[1])
            heapq.heappush(self.ready.setdefault(flight.key, []), (flight.order, flight.index))

    def _start_ready(self) -> None:
        """Starts the waiting attempts, first in order first, as far as the caps allow."""
        for key in list(self.ready):
            waiting = self.ready[key]
            while waiting and self.busy.get(key, 0) < self.cap:
                if waiting[0][0] > self.last:
                    waiting.clear()
                    break
                flight = self._flight(heapq.heappop(waiting)[1])
                flight.attempt += 1
                if flight.deadline is None:
                    flight.deadline = flight.new_deadline()
                if flight.deadline.left() <= 0:  # as send would end: no time to connect
                    self._end_attempt(flight, None, errors.TimedOut("the deadline passed"))
                    continue
                refused = usage.begin(*flight.ledger, flight.request.rows, len(flight.request.body))
                if refused is not None:
                    self._end_attempt(flight, None, refused)
                    continue
                self.busy[key] = self.busy.get(key, 0) + 1
                self.in_flight.add(flight)
                flight.steps = _attempt_steps(flight, self.cap)
                self._resume(flight)
            if not waiting:
                del self.ready[key]

    def _poll(self, left: float) -> None:
        """Waits a slice at most for any socket or lookup that a request waits for."""
        timeout = min(pg.WAIT_SLICE_SECONDS, left)
        if self.timers:
            timeout = min(timeout, max(self.timers[0][0] - time.monotonic(), 0.0))
        poller = select.poll()
        waiting: dict[int, _Flight] = {}
        looking_up: list[_Flight] = []
        for flight in self.in_flight:
            if isinstance(flight.wait, _Job):
                looking_up.append(flight)
            else:
                sock, events = flight.wait
                waiting[sock.fileno()] = flight
                poller.register(sock, events)
        if looking_up:
            poller.register(_wake_pipe()[0], select.POLLIN)
        for descriptor, _ in poller.poll(timeout * 1000):
            flight = waiting.get(descriptor)  # type: ignore[assignment]
            if flight is None:
                _drain_wake_pipe()
            elif flight in self.in_flight:  # not abandoned meanwhile
                self._resume(flight)
        for flight in looking_up:
            if flight in self.in_flight and flight.wait.done.is_set():
                self._resume(flight)

    def _resume(self, flight: _Flight, error: BaseException | None = None) -> None:
        """Runs the flight's attempt until it waits again or ends."""
        assert flight.steps is not None
        response: Response | None = None
        failure: errors.Error | None = None
        try:
            if error is None:
                flight.wait = flight.steps.send(None)
            else:
                flight.wait = flight.steps.throw(error)
            return
        except StopIteration as done:
            response = done.value
        except errors.Interrupted:
            raise
        except errors.Error as ended:
            failure = ended
        self._land(flight)
        if response is None:
            usage.end(*flight.ledger, None, {}, b"")
        else:
            usage.end(*flight.ledger, response.status, response.headers, response.body)
        self._end_attempt(flight, response, failure)

    def _end_attempt(
        self, flight: _Flight, response: Response | None, failure: errors.Error | None
    ) -> None:
        assert flight.deadline is not None
        outcome = _outcome(
            flight.request, flight.attempt, response, failure, flight.deadline, flight.policy
        )
        if isinstance(outcome, float):
            heapq.heappush(self.timers, (time.monotonic() + outcome, flight.index))
        elif isinstance(outcome, Response):
            self.results[flight.index] = outcome
            self.ended.append(flight.index)
        else:
            self._fail(flight.index, flight.order, outcome)

    def _land(self, flight: _Flight) -> None:
        """The attempt is over: its place in the endpoint's cap is free."""
        self.in_flight.discard(flight)
        self.busy[flight.key] -= 1
        flight.steps = flight.wait = None

    def _fail(self, index: int, order: float, error: errors.Error) -> None:
        self.results[index] = error
        self.ended.append(index)
        if self.stop_on_error:
            self.stop_after(order)

    def _abandon(self, flight: _Flight) -> None:
        """Ends an attempt in flight; closing its steps closes its connection."""
        steps = flight.steps
        self._land(flight)
        usage.end(*flight.ledger, None, {}, b"")
        if steps is not None:
            steps.close()


# --- one attempt -------------------------------------------------------------------------

# Kept-alive connections of this backend, by endpoint, the most recently used last; only
# the backend's thread uses them.
_idle: dict[_Key, list[wire.Connection]] = {}


def _attempt_steps(flight: _Flight, keep: int) -> Generator[Any, None, Response]:
    """One exchange, as steps; it may use all the time that is left. Afterwards its
    connection goes back to the pool, which keeps up to `keep` per endpoint."""
    request, endpoint = flight.request, flight.endpoint
    connection = _take_idle(flight.key)
    reused = connection is not None
    try:
        if connection is None:
            connection = yield from _connect_steps(request.url, endpoint)
        try:
            reply = yield from connection.exchange_steps(flight.message, request.max_response_bytes)
        except wire.SendFailed:
            if not reused:
                raise
            # Closed by the server while idle: it never read this request. Once more, afresh.
            connection.close()
            connection = yield from _connect_steps(request.url, endpoint)
            reply = yield from connection.exchange_steps(flight.message, request.max_response_bytes)
    except GeneratorExit:  # abandoned
        if connection is not None:
            connection.close()
        raise
    except BaseException as error:
        if connection is not None:
            connection.close()
        raise _exchange_error(request, error) from None
    if reply.keep_alive:
        pool = _idle.setdefault(flight.key, [])
        pool.append(connection)
        while len(pool) > keep:
            pool.pop(0).close()
    else:
        connection.close()
    return Response(reply.status, reply.headers, reply.body)


def _take_idle(key: _Key) -> wire.Connection | None:
    pool = _idle.get(key)
    while pool:
        connection = pool.pop()
        if connection.usable():
            return connection
        connection.close()
    return None


def _connect_steps(url: str, endpoint: _Endpoint) -> Generator[Any, None, wire.Connection]:
    try:
        addresses = yield from _addresses_steps(endpoint.host, endpoint.port)
        tls = _tls_context() if endpoint.scheme == "https" else None
        return (yield from wire.connect(addresses, tls, endpoint.host))
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


def _addresses_steps(host: str, port: int) -> Generator[Any, None, list[tuple]]:
    """getaddrinfo; a name lookup blocks, so it runs on the I/O thread, and the steps
    wait for it (yield its _Job) as they wait for a socket."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    key = ("getaddrinfo", host, port)
    job = _job(key, lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    while not job.done.is_set():
        yield job
    return _collect(key, job)


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
        if _wake is not None:  # wakes a send_many polling for it; full: awake anyway
            with contextlib.suppress(OSError):
                os.write(_wake[1], b"!")


# In-flight calls by what they fetch: a call abandoned on a cancel or a deadline keeps
# running, and the next caller that needs the same thing waits for it instead of
# starting another. So there is at most one thread per thing, and no result is lost.
_jobs: dict[Any, _Job] = {}


def _job(key: Any, function: Callable[[], Any]) -> _Job:
    """The call in flight for `key`, started now if there is none."""
    _wake_pipe()  # before the thread that writes to it
    job = _jobs.get(key)
    if job is None:
        job = _jobs[key] = _Job(function)
    return job


def _collect(key: Any, job: _Job) -> Any:
    """A finished call's result, handed to the first caller that waits for it."""
    if _jobs.get(key) is job:
        del _jobs[key]
    if job.error is not None:
        raise job.error
    return job.result


def run_blocking(key: Any, function: Callable[[], Any], deadline: Deadline) -> Any:
    """Runs `function` on a thread; the backend's thread waits, cancellable, until the
    deadline. A finished call's result is handed to the first caller that waits for it."""
    job = _job(key, function)
    if not pg.wait_for(job.done, deadline.left()):
        raise errors.TimedOut(f"no result within {deadline.seconds * 1000:.0f} ms")
    return _collect(key, job)


# A pipe that a finished call writes a byte to, so that send_many's poll returns at once.
_wake: tuple[int, int] | None = None


def _wake_pipe() -> tuple[int, int]:
    global _wake
    if _wake is None:
        reader, writer = os.pipe()
        os.set_blocking(reader, False)
        os.set_blocking(writer, False)
        _wake = (reader, writer)
    return _wake


def _drain_wake_pipe() -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(_wake_pipe()[0], 4096):
            pass
