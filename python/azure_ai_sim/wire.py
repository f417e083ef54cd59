"""HTTP/1.1 on a non-blocking socket, driven from the backend's own thread.

Every wait is a select() of at most pg.WAIT_SLICE_SECONDS followed by a look for
interrupts, so a cancel or statement_timeout ends any exchange within a slice, whatever the
server does. Doing this on the backend's thread instead of handing blocking calls to
another thread saves the two thread switches that cost about 60 µs a call.

Only what the transport needs: one request at a time per connection, responses framed by
Content-Length, chunked encoding or the end of the connection.
"""

from __future__ import annotations

import os
import re
import select
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from azure_ai_sim import errors, pg

RECEIVE_BYTES = 65536
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
MAX_HEAD_BYTES = 65536
NO_BODY_STATUSES = frozenset({204, 304})


class Closed(Exception):
    """The peer closed the connection, or it broke: the caller decides what that means."""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes
    keep_alive: bool


class Connection:
    """One kept-alive connection. `deadline_left` says how many seconds the call has left."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._buffer = bytearray()
        self.received = 0  # bytes of the current exchange: none means it is safe to resend

    @classmethod
    def open(
        cls,
        addresses: list[tuple],
        tls: ssl.SSLContext | None,
        server_name: str,
        deadline_left: Callable[[], float],
    ) -> Connection:
        """Connects to the first address that answers; with TLS, completes the handshake."""
        failure: OSError | None = None
        for family, kind, protocol, _, address in addresses:
            sock = socket.socket(family, kind, protocol)
            sock.setblocking(False)
            try:
                if family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                result = sock.connect_ex(address)
                if result not in (0, *_IN_PROGRESS):
                    raise OSError(result, _strerror(result))
                _wait(sock, deadline_left, write=True)
                result = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if result:
                    raise OSError(result, _strerror(result))
                if tls is not None:
                    sock = tls.wrap_socket(
                        sock, server_hostname=server_name, do_handshake_on_connect=False
                    )
                    _retry_on_want(sock, sock.do_handshake, deadline_left, writing=False)
                return cls(sock)
            except OSError as error:
                sock.close()
                failure = error
        raise failure or OSError("no address to connect to")

    def close(self) -> None:
        self.sock.close()

    def closed_by_peer(self) -> bool:
        """An idle kept-alive connection that is readable was closed by the server."""
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable) or bool(self._buffer)

    def exchange(self, request: bytes, deadline_left: Callable[[], float], max_body: int) -> Reply:
        self.received = 0
        self._send(request, deadline_left)
        return self._receive(deadline_left, max_body)

    def _send(self, data: bytes, deadline_left: Callable[[], float]) -> None:
        view = memoryview(data)
        while view:
            sent = _retry_on_want(
                self.sock, lambda rest=view: self.sock.send(rest), deadline_left, writing=True
            )
            view = view[sent:]

    def _fill(self, deadline_left: Callable[[], float]) -> None:
        """Receives whatever the server has sent next into the buffer."""
        data = _retry_on_want(
            self.sock, lambda: self.sock.recv(RECEIVE_BYTES), deadline_left, writing=False
        )
        if not data:
            raise Closed("the server closed the connection")
        self.received += len(data)
        self._buffer += data

    def _take(self, size: int) -> bytes:
        taken = bytes(self._buffer[:size])
        del self._buffer[:size]
        return taken

    def _line(self, deadline_left: Callable[[], float], limit: int = MAX_HEAD_BYTES) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > limit:
                raise errors.InvalidResponse("the server sent a line longer than 64 KiB")
            self._fill(deadline_left)
        return self._take(end + 2)[:-2]

    def _exactly(self, size: int, deadline_left: Callable[[], float]) -> bytes:
        while len(self._buffer) < size:
            self._fill(deadline_left)
        return self._take(size)

    def _receive(self, deadline_left: Callable[[], float], max_body: int) -> Reply:
        while True:
            status, headers, http10 = self._head(deadline_left)
            if not 100 <= status < 200:  # skip interim responses such as 100 Continue
                break
        close = headers.get("connection", "").lower() == "close" or http10
        if status in NO_BODY_STATUSES:
            return Reply(status, headers, b"", not close)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return Reply(status, headers, self._chunked(deadline_left, max_body), not close)
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise errors.InvalidResponse(f"the server sent Content-Length {length!r}")
            if int(length) > max_body:
                raise TooLarge(int(length))
            return Reply(status, headers, self._exactly(int(length), deadline_left), not close)
        return Reply(status, headers, self._until_closed(deadline_left, max_body), False)

    def _head(self, deadline_left: Callable[[], float]) -> tuple[int, dict[str, str], bool]:
        status_line = self._line(deadline_left).decode("latin-1")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise errors.InvalidResponse(f"the server sent no HTTP status line: {status_line!r}")
        headers: dict[str, str] = {}
        size = len(status_line)
        while line := self._line(deadline_left):
            size += len(line)
            if size > MAX_HEAD_BYTES:
                raise errors.InvalidResponse("the server sent more than 64 KiB of headers")
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            headers[name] = (
                f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
            )
        return int(code), headers, version == "HTTP/1.0"

    def _chunked(self, deadline_left: Callable[[], float], max_body: int) -> bytes:
        body = bytearray()
        while True:
            size_line = self._line(deadline_left).split(b";")[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise errors.InvalidResponse(f"bad chunk size {size_line[:20]!r}") from None
            if size == 0:
                while self._line(deadline_left):  # trailers, up to the empty line
                    pass
                return bytes(body)
            if len(body) + size > max_body:
                raise TooLarge(None)
            body += self._exactly(size + 2, deadline_left)[:-2]

    def _until_closed(self, deadline_left: Callable[[], float], max_body: int) -> bytes:
        while True:
            if len(self._buffer) > max_body:
                raise TooLarge(None)
            try:
                self._fill(deadline_left)
            except Closed:
                return self._take(len(self._buffer))


class TooLarge(Exception):
    def __init__(self, size: int | None):
        super().__init__(size)
        self.size = size


def encode_request(
    method: str, host: str, path: str, headers: dict[str, str], body: bytes
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    for name, value in headers.items():
        if _CONTROL_CHARACTERS.search(value):
            raise errors.InvalidParameter(f"the {name} header may not hold control characters")
        lines.append(f"{name}: {value}")
    try:
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise errors.InvalidParameter("HTTP header values must be Latin-1 text") from None
    return head + body


_IN_PROGRESS = (115, 36, 10035)  # EINPROGRESS on Linux and BSD, WSAEWOULDBLOCK


def _strerror(code: int) -> str:
    return os.strerror(code)


def _wait(sock: socket.socket, deadline_left: Callable[[], float], *, write: bool) -> None:
    """Waits until the socket is ready, a slice at a time, letting interrupts through."""
    readers, writers = ([], [sock]) if write else ([sock], [])
    while True:
        left = deadline_left()
        if left <= 0:
            raise TimeoutError("the deadline passed")
        if any(select.select(readers, writers, [], min(pg.WAIT_SLICE_SECONDS, left))[:2]):
            return
        pg.check_for_interrupts()


def _retry_on_want(
    sock: socket.socket, operation: Callable, deadline_left: Callable[[], float], *, writing: bool
):
    """Runs a non-blocking socket operation, waiting whenever it would block."""
    while True:
        try:
            return operation()
        except BlockingIOError:
            _wait(sock, deadline_left, write=writing)
        except ssl.SSLWantReadError:
            _wait(sock, deadline_left, write=False)
        except ssl.SSLWantWriteError:
            _wait(sock, deadline_left, write=True)
        except InterruptedError:
            pass
