"""core.http under abuse: what a client sends cannot hold the server's memory, its time or its
connections. Raw sockets, since a polite client (urllib) cannot misbehave on purpose; the webhook
receiver's own test under abuse is in test_webhooks.py."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest

from meterline.core.http import Limits, Request, Response, Server, dispatch, is_loopback

SMALL = Limits(max_body_bytes=1024, max_head_bytes=2048, read_timeout_s=0.5, max_connections=8)


@pytest.fixture
def echo() -> Iterator[tuple[Server, list[Request]]]:
    """A server whose one route records what reached it: a refused request never does."""
    seen: list[Request] = []

    def record(request: Request) -> Response:
        seen.append(request)
        return Response.json({"bytes": len(request.body)})

    server = Server("127.0.0.1", 0, dispatch({"POST /echo": record}), SMALL)
    yield server, seen
    server.shutdown()


def connect(server: Server) -> socket.socket:
    return socket.create_connection(server.server_address, timeout=5)


def answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read until the server closes: (status, headers, body)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def post(body: bytes, *headers: str) -> bytes:
    head = ["POST /echo HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_a_request_within_the_limits_reaches_its_route(echo: tuple[Server, list[Request]]) -> None:
    server, seen = echo
    with connect(server) as sock:
        sock.sendall(post(b"x" * 1024, "Content-Type: text/plain", "X-Thing: a", "X-Thing: b"))
        status, headers, body = answer(sock)
    assert (status, json.loads(body)) == (200, {"bytes": 1024})
    assert headers["connection"] == "close" and headers["x-content-type-options"] == "nosniff"
    assert seen[0].headers["x-thing"] == "a, b" and seen[0].headers["content-type"] == "text/plain"


def test_a_body_beyond_the_limit_is_refused_before_it_is_read(echo: tuple[Server, list[Request]]) -> None:
    server, seen = echo
    with connect(server) as sock:  # it announces 100 MB and sends none of it
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 104857600\r\n\r\n")
        status, _, body = answer(sock)
    assert status == 413 and "104857600" in json.loads(body)["error"]
    chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
    with connect(server) as sock:  # chunked: no length to read, refused as it passes the limit
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.sendall(chunk * 2)
        assert answer(sock)[0] == 413
    with connect(server) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: " + b"x" * 4096 + b"\r\n\r\n")
        assert answer(sock)[0] == 431
    assert seen == []


def test_a_client_too_slow_to_send_its_request_is_answered_408(echo: tuple[Server, list[Request]]) -> None:
    server, seen = echo
    with connect(server) as sock:
        sock.sendall(post(b"0123456789")[:-5])  # the last bytes never come
        status, _, body = answer(sock)  # the server's deadline ends it, not this socket's timeout
    assert status == 408 and "0.5 s" in json.loads(body)["error"]
    assert seen == []


def test_beyond_max_connections_a_new_one_is_told_to_come_back(echo: tuple[Server, list[Request]]) -> None:
    server, seen = echo
    held = [connect(server) for _ in range(SMALL.max_connections)]
    try:
        for sock in held:
            sock.sendall(b"POST /echo HTTP/1.1\r\n")  # each holds its slot until its deadline
        with connect(server) as sock:
            status, headers, _ = answer(sock)
        assert (status, headers["retry-after"]) == (503, "1")
        # The deadline frees them: each is answered 408, and the server takes requests again.
        assert [answer(sock)[0] for sock in held] == [408] * SMALL.max_connections
    finally:
        for sock in held:
            sock.close()
    with connect(server) as sock:
        sock.sendall(post(b"{}"))
        assert answer(sock)[0] == 200
    assert len(seen) == 1


def test_malformed_requests_get_400_and_expect_continue_is_honoured(
    echo: tuple[Server, list[Request]],
) -> None:
    server, seen = echo
    for garbage in (
        b"\x00\xff\r\n\r\n",
        b"POST /echo HTTP/1.1\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
    ):
        with connect(server) as sock:
            sock.sendall(garbage)
            assert answer(sock)[0] == 400, garbage
    with connect(server) as sock:  # curl's way with a large body: the head, then wait for 100
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        assert sock.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"{}")
        assert answer(sock)[0] == 200
    assert len(seen) == 1


def test_a_streamed_answer_arrives_chunk_by_chunk() -> None:
    release = threading.Event()

    def chunks() -> Iterator[bytes]:
        yield b"first\n"
        release.wait(5)
        yield b"second\n"

    server = Server("127.0.0.1", 0, dispatch({"GET /s": lambda _: Response(200, chunks(), "text/plain")}))
    try:
        with connect(server) as sock:
            sock.sendall(b"GET /s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            received = b""
            while b"first\n" not in received:
                received += sock.recv(1024)
            assert b"second" not in received  # the first chunk came before the second existed
            release.set()
            while chunk := sock.recv(1024):
                received += chunk
        assert received.partition(b"\r\n\r\n")[2] == b"first\nsecond\n"
    finally:
        server.shutdown()


def test_a_port_in_use_is_the_callers_error() -> None:
    first = Server("127.0.0.1", 0, dispatch({}))
    try:
        with pytest.raises(OSError):
            Server("127.0.0.1", first.server_address[1], dispatch({}))
    finally:
        first.shutdown()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("localhost.evil.example", False),
        ("", False),
    ],
)
def test_loopback_is_this_machine_only(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_path_asked_with_a_method_it_does_not_take_is_405_naming_those_it_does() -> None:
    """RFC 9110 §15.5.6: a 405 carries Allow; an unknown path stays a 404."""
    ok = Response.json({})
    route = dispatch(
        {"POST /v1/events": lambda _: ok, "GET /customers/*": lambda _: ok, "HEAD /customers/*": lambda _: ok}
    )

    def ask(method: str, path: str) -> Response:
        return route(Request(method, path, {}, b""))

    wrong = ask("GET", "/v1/events")
    assert (wrong.status, dict(wrong.headers)["Allow"]) == (405, "POST")
    assert (ask("POST", "/customers/c1").status, dict(ask("POST", "/customers/c1").headers)["Allow"]) == (
        405,
        "GET, HEAD",
    )
    assert ask("GET", "/nowhere").status == 404 and ask("POST", "/v1/events") is ok
