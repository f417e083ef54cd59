"""HTTP/1.1 on non-blocking sockets, driven from the backend's own thread.

Connecting (TCP, then the TLS handshake) and an exchange (send the request, read the reply)
are generators of steps: each runs until the socket would block, then yields what it
waits for, a Wait (the socket, and READ or WRITE), and is resumed once the socket is ready.
So one thread can drive many connections at once (transport.send_many polls all their
sockets together), and drive(), the one-connection driver, waits on a single socket.
Either driver waits at most pg.WAIT_SLICE_SECONDS at a time and lets PostgreSQL act on a
pending cancel or statement_timeout in between, so an exchange ends within a slice
whatever the server does, even a server that trickles bytes; a deadline that passes is
thrown into the steps as TimeoutError. Doing this on the backend's thread, instead of
handing blocking calls to another thread, saves two thread switches (about 60 µs) a call.

Only what the transport needs: one request at a time per connection, responses framed by
Content-Length, chunked encoding or the end of the connection.
"""

from __future__ import annotations

import os
import re
import select
import socket
import ssl
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from azure_ai_sim import errors, pg

RECEIVE_BYTES = 65536
MAX_HEAD_BYTES = 65536
NO_BODY_STATUSES = frozenset({204, 304})
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,15}")
_IN_PROGRESS = (115, 36, 10035)  # EINPROGRESS on Linux and BSD, WSAEWOULDBLOCK

READ = select.POLLIN
WRITE = select.POLLOUT

T = TypeVar("T")
DeadlineLeft = Callable[[], float]
# What a step waits for: the socket, and READ or WRITE.
Wait = tuple[socket.socket, int]
Steps = Generator[Wait, None, T]


class Closed(Exception):
    """The peer closed the connection, or it broke: the caller decides what that means."""


class SendFailed(Exception):
    """The request could not be written: the server cannot have acted on it."""


class TooLarge(Exception):
    def __init__(self, size: int | None):
        super().__init__(size)
        self.size = size


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes
    keep_alive: bool


def connect(
    addresses: list[tuple], tls: ssl.SSLContext | None, server_name: str
) -> Steps[Connection]:
    """Connects to the first address that answers; with TLS, completes the handshake."""
    failure: OSError | None = None
    for family, kind, protocol, _, address in addresses:
        sock = socket.socket(family, kind, protocol)
        try:
            sock.setblocking(False)
            if family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            result = sock.connect_ex(address)
            if result not in (0, *_IN_PROGRESS):
                raise OSError(result, os.strerror(result))
            if result:
                yield sock, WRITE
                result = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if result:
                    raise OSError(result, os.strerror(result))
            if tls is not None:
                sock = tls.wrap_socket(
                    sock, server_hostname=server_name, do_handshake_on_connect=False
                )
                yield from _on_want(sock, sock.do_handshake, writing=False)
            return Connection(sock)
        except TimeoutError:  # the deadline: no time for another address either
            sock.close()
            raise
        except OSError as error:
            sock.close()
            failure = error
        except BaseException:
            sock.close()
            raise
    raise failure or OSError("no address to connect to")


class Connection:
    """One kept-alive connection."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._buffer = bytearray()

    @classmethod
    def open(
        cls, addresses: list[tuple], tls: ssl.SSLContext | None, server_name: str,
        deadline_left: DeadlineLeft,
    ) -> Connection:  # fmt: skip
        """connect() on this thread alone."""
        return drive(connect(addresses, tls, server_name), deadline_left)

    def close(self) -> None:
        self.sock.close()

    def usable(self) -> bool:
        """An idle kept-alive connection stays usable until the server sends or closes."""
        if self._buffer:
            return False
        try:
            if isinstance(self.sock, ssl.SSLSocket):
                self.sock.recv(1)  # a TLS record that is not data (a ticket) reads as nothing
            else:
                self.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, ssl.SSLWantReadError):
            return True
        except OSError:
            return False
        return False  # data nobody asked for, or the end of the connection

    def exchange(self, request: bytes, deadline_left: DeadlineLeft, max_body: int) -> Reply:
        """exchange_steps() on this thread alone."""
        return drive(self.exchange_steps(request, max_body), deadline_left)

    def exchange_steps(self, request: bytes, max_body: int) -> Steps[Reply]:
        """Sends the request and reads the reply."""
        try:
            yield from self._send(request)
        except TimeoutError:
            raise
        except (OSError, Closed) as error:
            early = yield from self._early_reply(max_body)
            if early is None:
                raise SendFailed(str(error) or type(error).__name__) from error
            return early
        return (yield from self._receive(max_body))

    def _early_reply(self, max_body: int) -> Steps[Reply | None]:
        """A server may answer before it has read the whole request, and close: 413 for a
        body it will not take. That answer, not the broken pipe, is the outcome."""
        try:
            reply = yield from self._receive(max_body)
        except TimeoutError:
            raise
        except (OSError, Closed, errors.MalformedResponse):
            return None
        reply.keep_alive = False
        return reply

    def _send(self, data: bytes) -> Steps[None]:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                yield self.sock, WRITE
            except ssl.SSLWantReadError:
                yield self.sock, READ
            except ssl.SSLWantWriteError:
                yield self.sock, WRITE
            except InterruptedError:
                pass

    def _fill(self) -> Steps[None]:
        """Receives whatever the server has sent next into the buffer."""
        while True:
            try:
                data = self.sock.recv(RECEIVE_BYTES)
                break
            except (BlockingIOError, ssl.SSLWantReadError):
                yield self.sock, READ
            except ssl.SSLWantWriteError:
                yield self.sock, WRITE
            except InterruptedError:
                pass
        if not data:
            raise Closed("the server closed the connection")
        self._buffer += data

    def _take(self, size: int) -> bytes:
        taken = bytes(self._buffer[:size])
        del self._buffer[:size]
        return taken

    def _line(self) -> Steps[bytes]:
        while (line := self._buffered_line()) is None:
            yield from self._fill()
        return line

    def _buffered_line(self) -> bytes | None:
        """The next line if the buffer holds all of it: the head of a response usually
        arrives whole, and its lines are then taken without the cost of a generator."""
        end = self._buffer.find(b"\r\n")
        if end >= 0:
            return self._take(end + 2)[:-2]
        if len(self._buffer) > MAX_HEAD_BYTES:
            raise errors.MalformedResponse("the server sent a line longer than 64 KiB")
        return None

    def _exactly(self, size: int) -> Steps[bytes]:
        while len(self._buffer) < size:
            yield from self._fill()
        return self._take(size)

    def _receive(self, max_body: int) -> Steps[Reply]:
        status, headers, http10 = yield from self._head()
        while 100 <= status < 200:  # interim responses such as 100 Continue
            status, headers, http10 = yield from self._head()
        connection = {token.strip().lower() for token in headers.get("connection", "").split(",")}
        keep_alive = not http10 and "close" not in connection
        if status in NO_BODY_STATUSES:
            return Reply(status, headers, b"", keep_alive)
        codings = headers.get("transfer-encoding", "").lower().split(",")
        if codings[-1].strip() == "chunked":
            body = yield from self._chunked(max_body)
            return Reply(status, headers, body, keep_alive)
        length = headers.get("content-length")
        if length is not None:
            if not re.fullmatch(r"[0-9]{1,18}", length):
                raise errors.MalformedResponse(f"the server sent Content-Length {length[:20]!r}")
            size = int(length)
            if size > max_body:
                raise TooLarge(size)
            if len(self._buffer) >= size:  # most often, it came with the head
                return Reply(status, headers, self._take(size), keep_alive)
            return Reply(status, headers, (yield from self._exactly(size)), keep_alive)
        body = yield from self._until_closed(max_body)
        return Reply(status, headers, body, False)

    def _head(self) -> Steps[tuple[int, dict[str, str], bool]]:
        line = self._buffered_line()
        if line is None:
            line = yield from self._line()
        status_line = line.decode("latin-1")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise errors.MalformedResponse(
                f"the server sent no HTTP status line: {status_line[:60]!r}"
            )
        headers: dict[str, str] = {}
        size = len(status_line)
        while True:
            line = self._buffered_line()
            if line is None:
                line = yield from self._line()
            if not line:
                break
            size += len(line)
            if size > MAX_HEAD_BYTES:
                raise errors.MalformedResponse("the server sent more than 64 KiB of headers")
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return int(code), headers, version == "HTTP/1.0"

    def _chunked(self, max_body: int) -> Steps[bytes]:
        body = bytearray()
        while True:
            size_field = (yield from self._line()).split(b";")[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_field):
                raise errors.MalformedResponse(
                    f"the server sent a bad chunk size {size_field[:20]!r}"
                )
            size = int(size_field, 16)
            if size == 0:
                while (yield from self._line()):  # trailers, up to the empty line
                    pass
                return bytes(body)
            if len(body) + size > max_body:
                raise TooLarge(None)
            chunk = yield from self._exactly(size + 2)
            if chunk[-2:] != b"\r\n":
                raise errors.MalformedResponse("a chunk of the response does not end in CRLF")
            body += chunk[:-2]

    def _until_closed(self, max_body: int) -> Steps[bytes]:
        while True:
            try:
                yield from self._fill()
            except Closed:
                return self._take(len(self._buffer))
            if len(self._buffer) > max_body:
                raise TooLarge(None)


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


def drive(steps: Steps[T], deadline_left: DeadlineLeft) -> T:
    """Runs steps to their end on this thread, for one connection: waits for its socket a
    slice at a time, letting interrupts through; a deadline is thrown into the steps as
    TimeoutError (and a cancel as PostgreSQL's error), so they clean up after themselves."""
    try:
        wait = next(steps)
        while True:
            try:
                _wait(*wait, deadline_left)
            except BaseException as error:
                wait = steps.throw(error)
            else:
                wait = steps.send(None)
    except StopIteration as done:
        return done.value


def _wait(sock: socket.socket, events: int, deadline_left: DeadlineLeft) -> None:
    """Waits until the socket is ready, a slice at a time, letting interrupts through."""
    poller = select.poll()  # not select(): that fails on descriptors over 1023
    poller.register(sock, events)
    while True:
        pg.check_for_interrupts()
        left = deadline_left()
        if left <= 0:
            raise TimeoutError("the deadline passed")
        if poller.poll(min(pg.WAIT_SLICE_SECONDS, left) * 1000):
            return


def _on_want(sock: socket.socket, operation: Callable[[], Any], *, writing: bool) -> Steps[Any]:
    """Runs a non-blocking socket operation, yielding what it waits for whenever it would
    block (TLS may need to read while writing, and the other way round)."""
    while True:
        try:
            return operation()
        except BlockingIOError:
            yield sock, WRITE if writing else READ
        except ssl.SSLWantReadError:
            yield sock, READ
        except ssl.SSLWantWriteError:
            yield sock, WRITE
        except InterruptedError:
            pass
