"""HTTP/1.1 framing of wire.Connection, over a socket pair holding a whole response.

The response is written before it is read, so no wait happens: these run without a
database (waits look for PostgreSQL's interrupts).
"""

import select
import socket

import pytest

from azure_ai_sim import errors, wire

REQUEST = wire.encode_request("POST", "h:8080", "/score", {"X-A": "1"}, b"{}")


def exchange(raw: bytes, max_body: int = 1000, close: bool = False) -> wire.Reply:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.sendall(raw)
    if close:
        theirs.shutdown(socket.SHUT_WR)  # the server is done sending
    try:
        return wire.Connection(ours).exchange(REQUEST, lambda: 5.0, max_body)
    finally:
        ours.close()
        theirs.close()


def test_request_encoding():
    assert REQUEST == (
        b"POST /score HTTP/1.1\r\nHost: h:8080\r\nContent-Length: 2\r\nX-A: 1\r\n\r\n{}"
    )
    with pytest.raises(errors.InvalidParameter, match="control characters"):
        wire.encode_request("POST", "h", "/", {"azureml-model-deployment": "a\r\nX: y"}, b"")


def test_content_length_and_repeated_headers():
    reply = exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nA: 1\r\na: 2\r\n\r\n[1]\n")
    assert (reply.status, reply.body, reply.keep_alive) == (200, b"[1]\n", True)
    assert reply.headers["a"] == "1, 2"


def test_chunked_with_extensions_and_trailers():
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\n[1,\r\n2\r\n2]\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    assert exchange(raw).body == b"[1,2]"


def test_interim_responses_are_skipped():
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}"
    assert exchange(raw).status == 201


def test_body_until_close_and_http10_do_not_keep_alive():
    reply = exchange(b"HTTP/1.0 200 OK\r\n\r\n[true]", close=True)
    assert (reply.body, reply.keep_alive) == (b"[true]", False)
    closing = exchange(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n"
    )
    assert closing.keep_alive is False


def test_no_body_statuses():
    assert exchange(b"HTTP/1.1 204 No Content\r\n\r\n").body == b""


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfff\r\n" + b"x" * 4095,
    ],
)
def test_too_large(raw):
    with pytest.raises(wire.TooLarge):
        exchange(raw, max_body=100)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "no HTTP status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]xx0\r\n\r\n", "CRLF"),
    ],
)
def test_malformed_responses(raw, message):
    with pytest.raises(errors.MalformedResponse, match=message):
        exchange(raw)


def test_a_connection_closed_mid_response():
    with pytest.raises(wire.Closed):
        exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n[1", close=True)


def test_an_idle_connection_is_usable_until_the_server_sends_or_closes():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    connection = wire.Connection(ours)
    assert connection.usable()
    theirs.close()
    assert not connection.usable()
    connection.close()


# --- steps: what a connection waits for, for a loop that drives many -------------------


RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n[1]\n"


def test_exchange_steps_yield_the_socket_they_wait_for():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    try:
        steps = wire.Connection(ours).exchange_steps(REQUEST, 1000)
        assert next(steps) == (ours, wire.READ)  # sent; nothing to read yet
        assert theirs.recv(1000) == REQUEST
        theirs.sendall(RESPONSE[:20])
        assert steps.send(None) == (ours, wire.READ)  # the head is not complete
        theirs.sendall(RESPONSE[20:])
        with pytest.raises(StopIteration) as done:
            steps.send(None)
        assert (done.value.value.status, done.value.value.body) == (200, b"[1]\n")
    finally:
        ours.close()
        theirs.close()


def test_a_full_send_buffer_waits_for_writable():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    try:
        steps = wire.Connection(ours).exchange_steps(REQUEST + b"x" * 10_000_000, 1000)
        assert next(steps) == (ours, wire.WRITE)
        steps.close()
    finally:
        ours.close()
        theirs.close()


def test_drive_throws_the_deadline_into_the_steps():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    try:
        with pytest.raises(TimeoutError):
            wire.Connection(ours).exchange(REQUEST, lambda: 0.0, 1000)
    finally:
        ours.close()
        theirs.close()


def test_connect_steps_wait_for_the_connection_then_return_it():
    listener = socket.create_server(("127.0.0.1", 0))
    addresses = socket.getaddrinfo(*listener.getsockname(), type=socket.SOCK_STREAM)
    try:
        steps = wire.connect(addresses, None, "127.0.0.1")
        sock, events = next(steps)  # a non-blocking connect is in progress
        assert events == wire.WRITE
        with pytest.raises(StopIteration) as done:
            while True:
                select.select([], [sock], [], 5)
                steps.send(None)
        connection = done.value.value
        assert connection.usable()
        connection.close()
    finally:
        listener.close()


def test_connect_tries_the_next_address_and_reports_the_last_failure():
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    refused = socket.getaddrinfo(*closed.getsockname(), type=socket.SOCK_STREAM)
    try:
        with pytest.raises(ConnectionRefusedError):
            wire.Connection.open(refused * 2, None, "127.0.0.1", lambda: 5.0)
    finally:
        closed.close()


def test_a_connect_abandoned_midway_closes_its_socket():
    listener = socket.create_server(("127.0.0.1", 0))
    addresses = socket.getaddrinfo(*listener.getsockname(), type=socket.SOCK_STREAM)
    try:
        steps = wire.connect(addresses, None, "127.0.0.1")
        sock, _ = next(steps)
        steps.close()
        assert sock.fileno() == -1
    finally:
        listener.close()
