"""HTTP plumbing shared by the local cloud simulators: server, faults, recording, CLI.

A simulator (azureml.py, and later SageMaker, Bedrock, Comprehend) subclasses Simulator and
only maps requests to endpoints. This module serves them over a real HTTP/1.1 server with
keep-alive on loopback, so clients exercise their actual connection handling, and gives tests
a control API under /_sim/ (loopback clients only, no auth):

    POST   /_sim/faults    {"faults": [fault, ...]}  queue faults  -> {"queued": n, "pending": m}
    GET    /_sim/faults    the faults still queued                 -> {"faults": [...]}
    DELETE /_sim/faults    drop them all                           -> {"cleared": n}
    GET    /_sim/requests  recorded requests, oldest first         -> [{"method", "path",
                                                  "query", "headers", "body", "received"}]
    DELETE /_sim/requests  forget them                             -> {"cleared": n}
    GET    /_sim/latency   the latency of every request            -> {"latency_ms": x}
    PUT    /_sim/latency   {"latency_ms": x}  change it            -> {"latency_ms": x}
    GET    /_sim/in_flight requests being served now, the most at
                           once since the last reset, how many
                           were served and connections accepted    -> {"in_flight": n,
                                   "max_in_flight": m, "served": k, "connections": c}
    DELETE /_sim/in_flight reset all but in_flight                 -> the same, after

Each request to a "faulty" endpoint (the service calls: scoring, invoking) takes the next
fault off the queue; see Fault for what each field does. Every request but the control
API's waits latency_ms first (a constructor option, --latency-ms, or PUT /_sim/latency),
as a real service's network and model time, and counts as in flight while it waits and
is served; each connection is served on a thread of its own, so requests on different
connections overlap. "received" is when a recorded request arrived, in seconds of the
simulator's monotonic clock. Responses are written with a single send and TCP_NODELAY,
because a benchmark makes thousands of small calls on one connection.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import signal
import socket
import ssl
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure_ai_sim

MAX_REQUEST_BYTES = 64 * 1024 * 1024
RECORDED_REQUESTS = 10_000
CONTROL_PREFIX = "/_sim/"


@dataclass
class Request:
    method: str
    path: str  # without the query string
    query: dict[str, str]
    headers: Message  # case-insensitive get()
    body: bytes
    client: str  # the peer's IP address


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    chunked: bool = False


def json_response(status: int, value: Any, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(value, separators=(",", ":")).encode()
    return Response(status, body, {"content-type": "application/json", **(headers or {})})


class HTTPError(Exception):
    """Raised by endpoints; the simulator turns it into its service's error response."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def json_object(request: Request, not_json: str, not_object: str) -> dict:
    """The request's body as a JSON object; otherwise a 400 with the service's words."""
    try:
        payload = json.loads(request.body)
    except ValueError:
        raise HTTPError(400, not_json) from None
    if not isinstance(payload, dict):
        raise HTTPError(400, not_object)
    return payload


class DropConnection(Exception):
    """Close the connection without answering, as a crashed or overloaded front end does."""


@dataclass(frozen=True)
class Endpoint:
    call: Callable[[Request], Response]
    faulty: bool = False  # takes the next scripted fault: the service calls clients retry
    recorded: bool = False  # kept for GET /_sim/requests
    headers: dict[str, str] = field(default_factory=dict)  # on every response, faults included


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_text(value: Any) -> bool:
    """Strings that can go into a header or body without breaking the response framing."""
    return isinstance(value, str) and "\r" not in value and "\n" not in value


_FAULT_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "status": (
        lambda v: _is_int(v) and 200 <= v <= 599 and v not in (204, 304),
        "an HTTP status from 200 to 599 that has a body (not 204 or 304)",
    ),
    "latency_ms": (lambda v: type(v) in (int, float) and 0 <= v < math.inf, "milliseconds >= 0"),
    "retry_after": (_is_text, "a string"),
    "body": (lambda v: isinstance(v, str), "a string"),
    "content_type": (_is_text, "a string"),
    "headers": (
        lambda v: isinstance(v, dict) and all(map(_is_text, [*v, *v.values()])),
        "an object of header names to strings",
    ),
    "drop": (lambda v: isinstance(v, bool), "true or false"),
    "oversized_bytes": (lambda v: _is_int(v) and 0 < v <= MAX_REQUEST_BYTES, "bytes > 0"),
    "chunked": (lambda v: isinstance(v, bool), "true or false"),
}


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, applied in this order to the request that takes it.

    latency_ms: sleep first; past the request timeout, answer 408 when the timeout is reached.
    drop: then close the connection without a response.
    status: answer {"message": "simulated <status>"} in the service's error format, or
    oversized_bytes: answer 200 with a JSON list of numbers of at least that many bytes;
    otherwise the request is served normally. Whatever the answer, body and content_type
    replace its body and Content-Type, retry_after and headers add headers, and chunked sends
    it with Transfer-Encoding: chunked instead of Content-Length.
    """

    status: int | None = None
    latency_ms: float = 0
    retry_after: str | None = None
    body: str | None = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    oversized_bytes: int | None = None
    chunked: bool = False

    @classmethod
    def from_json(cls, value: Any) -> Fault:
        """Strict, so that a typo in a test's fault fails loudly instead of doing nothing."""
        if not isinstance(value, dict):
            raise ValueError("each fault must be a JSON object")
        for name, item in value.items():
            if name not in _FAULT_FIELDS:
                raise ValueError(f"unknown fault field {name!r}; known: {', '.join(_FAULT_FIELDS)}")
            check, expected = _FAULT_FIELDS[name]
            if not check(item):
                raise ValueError(f"fault field {name!r} must be {expected}")
        return cls(**value)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v != getattr(NO_FAULT, k)}


NO_FAULT = Fault()


class FaultQueue:
    """FIFO of scripted faults, shared by all connections."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: deque[Fault] = deque()

    def extend(self, faults: Iterable[Fault]) -> int:
        """Appends faults and returns how many are now pending."""
        with self._lock:
            self._faults.extend(faults)
            return len(self._faults)

    def pop(self) -> Fault:
        with self._lock:
            return self._faults.popleft() if self._faults else NO_FAULT

    def pending(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def clear(self) -> int:
        with self._lock:
            count = len(self._faults)
            self._faults.clear()
            return count


class RequestLog:
    """The last `limit` recorded requests, so that a long benchmark cannot exhaust memory."""

    def __init__(self, limit: int = RECORDED_REQUESTS) -> None:
        self._lock = threading.Lock()
        self._entries: deque[dict[str, Any]] = deque(maxlen=limit)

    def add(self, request: Request) -> None:
        entry = {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": {name.lower(): value for name, value in request.headers.items()},
            "body": request.body.decode("utf-8", "replace"),
            "received": time.monotonic(),
        }
        with self._lock:
            self._entries.append(entry)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> int:
        with self._lock:
            count = len(self._entries)
            self._entries.clear()
            return count


def oversized_json(min_bytes: int) -> bytes:
    """A valid JSON list of numbers at least min_bytes long: "[0.5,0.5,...]" is 4k+1 bytes."""
    return b"[" + b",".join([b"0.5"] * (min_bytes // 4 + 1)) + b"]"


class Simulator:
    """A simulated service on its own HTTP server thread; subclasses implement route().

    start() returns the base URL, stop() ends the server and its open connections; the object
    is also a context manager. serve_until_signal() is what the command line runs.
    """

    name = "simulator"  # the command-line subcommand, and the first word of the start line
    default_request_timeout_ms = 5000

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        request_timeout_ms: int | None = None,
        tls: ssl.SSLContext | None = None,
        latency_ms: float = 0,
    ):
        self.host = host
        self.port = port
        self.tls = tls  # a server-side context: serve HTTPS
        self.request_timeout_ms = request_timeout_ms or self.default_request_timeout_ms
        self.latency_ms = _latency(latency_ms)  # before every request; may be changed
        self.faults = FaultQueue()
        self.recorded = RequestLog()
        # Requests being served (control API's aside), the most at once since
        # reset_counts(), how many were served and how many connections accepted since.
        self.in_flight = 0
        self.max_in_flight = 0
        self.served = 0
        self.connections = 0
        self._counts_lock = threading.Lock()
        self._stopping = threading.Event()  # ends the latency waits
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # What a service implements.

    def route(self, request: Request) -> Endpoint | None:
        """The endpoint for this request, or None for 404."""
        raise NotImplementedError

    def error_response(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        """The service's error format; Azure's is {"message": ...}."""
        return json_response(status, {"message": message}, headers)

    # Serving one request.

    def reset_counts(self) -> dict[str, int]:
        """Forgets the most requests at once (it restarts from those in flight now) and
        the counts of requests served and connections accepted; returns the counts."""
        with self._counts_lock:
            self.max_in_flight = self.in_flight
            self.served = self.connections = 0
        return self.counts()

    def counts(self) -> dict[str, int]:
        with self._counts_lock:
            return {
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "served": self.served,
                "connections": self.connections,
            }

    def _accepted(self) -> None:
        with self._counts_lock:
            self.connections += 1

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        with self._counts_lock:
            self.in_flight += 1
            self.served += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield
        finally:
            with self._counts_lock:
                self.in_flight -= 1

    def handle(self, request: Request) -> Response:
        """Runs on the connection's thread; raises DropConnection to close without answering."""
        if request.path.startswith(CONTROL_PREFIX):
            try:
                return self._control(request)
            except HTTPError as error:
                return self._error(error)
        with self._counted():
            if self.latency_ms:
                self._stopping.wait(self.latency_ms / 1000)
            return self._handle(request)

    def _handle(self, request: Request) -> Response:
        try:
            endpoint = self.route(request)
            if endpoint is None:
                raise HTTPError(404, f"no route for {request.method} {request.path}")
        except HTTPError as error:
            return self._error(error)
        if endpoint.recorded:
            self.recorded.add(request)
        fault = self.faults.pop() if endpoint.faulty else NO_FAULT
        try:
            response = self._serve(endpoint, request, fault)
        except HTTPError as error:
            response = self._error(error)
        response.headers.update(endpoint.headers)
        return self._alter(response, fault) if fault is not NO_FAULT else response

    def _error(self, error: HTTPError) -> Response:
        return self.error_response(error.status, error.message, error.headers)

    def _serve(self, endpoint: Endpoint, request: Request, fault: Fault) -> Response:
        if fault.latency_ms > self.request_timeout_ms:
            time.sleep(self.request_timeout_ms / 1000)
            raise HTTPError(408, f"request timed out after {self.request_timeout_ms} ms")
        if fault.latency_ms:
            time.sleep(fault.latency_ms / 1000)
        if fault.drop:
            raise DropConnection
        if fault.status is not None:
            raise HTTPError(fault.status, f"simulated {fault.status}")
        if fault.oversized_bytes:
            return Response(
                200, oversized_json(fault.oversized_bytes), {"content-type": "application/json"}
            )
        return endpoint.call(request)

    @staticmethod
    def _alter(response: Response, fault: Fault) -> Response:
        if fault.body is not None:
            response.body = fault.body.encode()
        if fault.content_type is not None:
            response.headers["content-type"] = fault.content_type
        if fault.retry_after is not None:
            response.headers["retry-after"] = fault.retry_after
        response.headers.update({name.lower(): value for name, value in fault.headers.items()})
        response.chunked = fault.chunked
        return response

    def _control(self, request: Request) -> Response:
        if not ipaddress.ip_address(request.client).is_loopback:
            raise HTTPError(403, "the /_sim/ control API answers loopback clients only")
        action = (request.method, request.path.rstrip("/"))
        if action == ("POST", "/_sim/faults"):
            faults = _parse_faults(request.body)
            pending = self.faults.extend(faults)
            return json_response(200, {"queued": len(faults), "pending": pending})
        if action == ("GET", "/_sim/faults"):
            return json_response(200, {"faults": [f.to_json() for f in self.faults.pending()]})
        if action == ("DELETE", "/_sim/faults"):
            return json_response(200, {"cleared": self.faults.clear()})
        if action == ("GET", "/_sim/requests"):
            return json_response(200, self.recorded.snapshot())
        if action == ("DELETE", "/_sim/requests"):
            return json_response(200, {"cleared": self.recorded.clear()})
        if action == ("GET", "/_sim/latency"):
            return json_response(200, {"latency_ms": self.latency_ms})
        if action == ("PUT", "/_sim/latency"):
            self.latency_ms = _parse_latency(request.body)
            return json_response(200, {"latency_ms": self.latency_ms})
        if action == ("GET", "/_sim/in_flight"):
            return json_response(200, self.counts())
        if action == ("DELETE", "/_sim/in_flight"):
            return json_response(200, self.reset_counts())
        raise HTTPError(404, f"no control route for {request.method} {request.path}")

    # Lifecycle.

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"the {self.name} simulator is not running")
        host, port = self._server.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def start(self) -> str:
        """Starts serving on a background thread and returns the base URL."""
        if self._server is None:
            self._stopping.clear()
            self._server = _Server((self.host, self.port), self)
            if self.tls is not None:
                self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},  # how long stop() may wait
                name=f"{self.name}-simulator",
                daemon=True,
            )
            self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stops accepting, and shuts down open connections so their threads end too."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def serve_until_signal(self) -> int:
        """Prints the one start line, serves until SIGTERM or SIGINT, returns the exit status."""
        stopping = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stopping.set())
        url = self.start()
        print(f"{self.name} simulator listening on {url}", flush=True)
        stopping.wait()
        self.stop()
        return 0

    # Command line: subclasses add their options and build themselves from them.

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
        parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
        parser.add_argument(
            "--request-timeout-ms",
            type=int,
            default=cls.default_request_timeout_ms,
            help="requests delayed beyond this get 408 once it has passed",
        )
        parser.add_argument(
            "--latency-ms",
            type=float,
            default=0,
            help="every request waits this long before it is served, as a real service's "
            "network and model time (default: 0)",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Simulator:
        return cls(
            args.host,
            args.port,
            request_timeout_ms=args.request_timeout_ms,
            latency_ms=args.latency_ms,
        )


def _latency(value: Any) -> float:
    if type(value) not in (int, float) or not 0 <= value < math.inf:
        raise ValueError("latency_ms must be a number of milliseconds >= 0")
    return float(value)


def _parse_latency(body: bytes) -> float:
    try:
        payload = json.loads(body)
        if not isinstance(payload, dict) or set(payload) != {"latency_ms"}:
            raise ValueError('expected {"latency_ms": milliseconds}')
        return _latency(payload["latency_ms"])
    except ValueError as error:
        raise HTTPError(400, str(error)) from None


def _parse_faults(body: bytes) -> list[Fault]:
    try:
        payload = json.loads(body)
        if not isinstance(payload, dict) or not isinstance(payload.get("faults"), list):
            raise ValueError('expected {"faults": [fault, ...]}')
        return [Fault.from_json(item) for item in payload["faults"]]
    except ValueError as error:  # includes JSON syntax errors
        raise HTTPError(400, str(error)) from None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for a request sleeping in injected latency
    request_queue_size = 128  # the listen backlog: a client may open many connections at once

    def __init__(self, address: tuple[str, int], simulator: Simulator):
        self.simulator = simulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            _shutdown(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients going away (dropped tests, stop()) are normal here, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def _shutdown(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the peer
        connection.shutdown(socket.SHUT_RDWR)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _chunked(body: bytes) -> bytes:
    """At least two chunks when there is more than one byte, to exercise reassembly."""
    size = max(1, min(16384, (len(body) + 1) // 2))
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = f"azure_ai_sim/{azure_ai_sim.__version__}"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)
        self.server.simulator._accepted()

    def finish(self) -> None:
        self.server.track(self.connection, False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a benchmark makes thousands of requests."""

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except HTTPError as error:
            self.close_connection = True  # the rest of the stream cannot be trusted
            self._write(self.server.simulator._error(error))
            return
        url = urlsplit(self.path)
        request = Request(
            self.command,
            url.path,
            dict(parse_qsl(url.query)),
            self.headers,
            body,
            self.client_address[0],
        )
        try:
            response = self.server.simulator.handle(request)
        except DropConnection:
            self.close_connection = True
            _shutdown(self.connection)
            return
        except Exception:
            traceback.print_exc()
            response = self.server.simulator.error_response(500, "simulator error")
        self._write(response)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("content-length")
        if length is None:
            return b""
        if not length.strip().isdigit():
            raise HTTPError(400, "invalid Content-Length")
        if int(length) > MAX_REQUEST_BYTES:
            raise HTTPError(413, f"request bodies are limited to {MAX_REQUEST_BYTES} bytes")
        return self.rfile.read(int(length))

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            try:
                size = int(self.rfile.readline(1024).split(b";")[0], 16)
            except ValueError:
                raise HTTPError(400, "invalid chunk size") from None
            if len(body) + size > MAX_REQUEST_BYTES:
                raise HTTPError(413, f"request bodies are limited to {MAX_REQUEST_BYTES} bytes")
            if size == 0:
                break
            body += self.rfile.read(size)
            self.rfile.readline(1024)  # the CRLF after the chunk
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return bytes(body)

    def _write(self, response: Response) -> None:
        """Status line, headers and body in one send."""
        body = _chunked(response.body) if response.chunked else response.body
        head = [
            f"HTTP/1.1 {response.status} {_reason(response.status)}",
            f"server: {self.server_version}",
            f"date: {self.date_time_string()}",
            *(f"{name}: {value}" for name, value in response.headers.items()),
            "transfer-encoding: chunked"
            if response.chunked
            else f"content-length: {len(response.body)}",
        ]
        if self.close_connection:
            head.append("connection: close")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace") + body)
