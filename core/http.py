"""meterline's HTTP server: every port it listens on, bounded against whoever connects to it.

One asyncio loop, on a thread of its own, accepts connections and reads requests with h11 (a
protocol library made for this, not a parser of ours); a route then runs on a bounded pool of
threads, since routes block (a ClickHouse query, a Kafka flush). What a client cannot do:
- hold memory: a body beyond `max_body_bytes` gets 413 as soon as its Content-Length says so (or
  a chunked one passes it), before it is read; a head beyond `max_head_bytes` gets 431;
- hold a connection: the whole request (head and body) must arrive within `read_timeout_s` (408
  after it), and each part of the answer must be taken within `write_timeout_s`;
- hold the server: beyond `max_connections` at once, a new connection gets 503 and is closed.
  Each connection carries one request (Connection: close), so none outlives those deadlines but
  for a route's own streamed answer. A waiting connection costs a coroutine, not a thread: the
  threads are only ever busy with requests that have fully arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import ipaddress
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11

log = logging.getLogger("meterline.http")

READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20
    max_head_bytes: int = 16 << 10
    read_timeout_s: float = 10.0
    write_timeout_s: float = 30.0
    max_connections: int = 512
    route_threads: int = 16


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    """As sent: still percent-encoded."""
    query: Mapping[str, str]
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    """Names in lower case; a repeated header's values joined with ", "."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes | Iterable[bytes]
    """Bytes, or chunks written as they come (a long command's output)."""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, document: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        return cls(status, json.dumps(document, default=str).encode(), headers=headers)

    @classmethod
    def html(cls, text: str, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        return cls(status, text.encode(), "text/html; charset=utf-8", headers)

    @classmethod
    def error(cls, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        return cls.json({"error": reason}, status, headers)


Route = Callable[[Request], Response]


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 in brackets or not) is this machine only."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _serves(pattern: str, path: str) -> bool:
    return path == pattern or (pattern.endswith("*") and path.startswith(pattern[:-1]))


def dispatch(routes: Mapping[str, Route]) -> Route:
    """One route for a table of "METHOD /path" (exact) and "METHOD /path/*" (everything under it);
    the longest prefix wins."""

    def route(request: Request) -> Response:
        key = f"{request.method} {request.path}"
        exact = routes.get(key)
        if exact is not None:
            return exact(request)
        prefixes = [k for k in routes if k.endswith("*") and key.startswith(k[:-1])]
        if prefixes:
            return routes[max(prefixes, key=len)](request)
        allowed = sorted({k.split(" ", 1)[0] for k in routes if _serves(k.split(" ", 1)[1], request.path)})
        if allowed:  # RFC 9110 §15.5.6: a 405 names the methods the path takes
            return Response.error(
                405,
                f"{request.method} {request.path}: the path takes {', '.join(allowed)}",
                (("Allow", ", ".join(allowed)),),
            )
        return Response.error(404, f"no route for {request.method} {request.path}")

    return route


_BUSY = Response.error(503, "too many connections: try again shortly", (("Retry-After", "1"),))


class _Refused(Exception):
    """A request answered before its route runs (too big, too slow, malformed)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.response = Response.error(status, reason)


class Server:
    """Listens on (host, port) from the moment it is made; `shutdown()` stops it."""

    def __init__(self, host: str, port: int, route: Route, limits: Limits = Limits()) -> None:
        self.limits = limits
        self._route = route
        self._pool = ThreadPoolExecutor(limits.route_threads, thread_name_prefix=f"http-{port}")
        self._loop = asyncio.new_event_loop()
        self._open: set[asyncio.Task[None]] = set()
        try:
            # Bound here, on the caller's thread: a port in use is the caller's error to report.
            # The kernel's accept queue holds as many as the server will: with asyncio's default (100)
            # a burst of slow clients fills it and the next client's SYN is dropped, not refused.
            self._server = self._loop.run_until_complete(
                asyncio.start_server(
                    self._connection, host, port, limit=limits.max_head_bytes, backlog=limits.max_connections
                )
            )
        except BaseException:
            self._loop.close()
            self._pool.shutdown(wait=False)
            raise
        self.server_address: tuple[str, int] = self._server.sockets[0].getsockname()[:2]
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"http-{self.server_address[1]}", daemon=True
        )
        self._thread.start()

    def shutdown(self) -> None:
        async def close() -> None:
            self._server.close()
            for task in self._open:
                task.cancel()
            await asyncio.gather(*self._open, return_exceptions=True)

        with contextlib.suppress(TimeoutError):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        busy = len(self._open) >= self.limits.max_connections
        self._open.add(task)
        try:
            await (self._write(writer, _BUSY) if busy else self._exchange(reader, writer))
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away, or would not take the answer in time
        finally:
            self._open.discard(task)
            await _close(writer)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await self._read(reader, writer)
        except _Refused as refused:
            # Said, not shouted: under abuse there are many, and each is the client's doing.
            log.info("refused a request: %s", refused)
            await self._write(writer, refused.response)
            return
        response = await self._loop.run_in_executor(self._pool, self._answer, request)
        await self._write(writer, response)

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request:
        incoming = _Incoming(self.limits, reader, self._loop.time() + self.limits.read_timeout_s)
        head = await incoming.next_event()
        # h11 bounds a head that has not ended yet; one that arrived whole in a read is measured here.
        head_bytes = incoming.fed - len(incoming.connection.trailing_data[0])
        if head_bytes > self.limits.max_head_bytes:
            raise _Refused(431, f"a head of {head_bytes} bytes: at most {self.limits.max_head_bytes}")
        if not isinstance(head, h11.Request):
            raise _Refused(400, "expected a request")
        headers: dict[str, str] = {}
        for name, value in head.headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        declared = int(headers.get("content-length", "0"))  # h11 has checked it is one number
        if declared > self.limits.max_body_bytes:
            raise _Refused(413, f"a body of {declared} bytes: at most {self.limits.max_body_bytes}")
        if incoming.connection.they_are_waiting_for_100_continue:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = bytearray()
        while not isinstance(event := await incoming.next_event(), h11.EndOfMessage):
            if not isinstance(event, h11.Data):
                raise _Refused(400, "the request ended before its body")
            body += event.data
            if len(body) > self.limits.max_body_bytes:
                raise _Refused(413, f"a body beyond {self.limits.max_body_bytes} bytes")
        url = urlsplit(head.target.decode("latin-1"))
        return Request(
            head.method.decode("latin-1"), url.path, dict(parse_qsl(url.query)), bytes(body), headers
        )

    def _answer(self, request: Request) -> Response:
        try:
            return self._route(request)
        except Exception:  # one bad request must not take the server down; the log has why
            log.exception("%s %s failed", request.method, request.path)
            return Response.error(500, "the server failed to answer: its log says why")

    async def _write(self, writer: asyncio.StreamWriter, response: Response) -> None:
        timeout = self.limits.write_timeout_s
        if isinstance(response.body, bytes):
            writer.write(_head(response, len(response.body)) + response.body)
            await asyncio.wait_for(writer.drain(), timeout)
            return
        writer.write(_head(response, None))  # no length: the end of the connection ends the body
        chunks: Iterator[bytes] = iter(response.body)
        while (chunk := await self._loop.run_in_executor(self._pool, next, chunks, None)) is not None:
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), timeout)


class _Incoming:
    """One request's bytes into h11, against the request's deadline."""

    def __init__(self, limits: Limits, reader: asyncio.StreamReader, deadline: float) -> None:
        self.connection = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
        self.limits, self.reader, self.deadline = limits, reader, deadline
        self.fed = 0

    async def next_event(self) -> Any:
        loop = asyncio.get_running_loop()
        while True:
            try:
                event = self.connection.next_event()
            except h11.RemoteProtocolError as exc:
                raise _Refused(exc.error_status_hint, f"not a valid HTTP request: {exc}") from None
            if event is not h11.NEED_DATA:
                if isinstance(event, h11.ConnectionClosed):
                    raise ConnectionResetError("closed before the request was complete")
                return event
            try:
                data = await asyncio.wait_for(
                    self.reader.read(READ_CHUNK), max(0.0, self.deadline - loop.time())
                )
            except TimeoutError:
                raise _Refused(
                    408, f"the request did not arrive within {self.limits.read_timeout_s:g} s"
                ) from None
            self.fed += len(data)
            self.connection.receive_data(data)  # b"": the client closed its side


def _head(response: Response, length: int | None) -> bytes:
    lines = [
        f"HTTP/1.1 {response.status} {http.HTTPStatus(response.status).phrase}",
        f"Content-Type: {response.content_type}",
        "Connection: close",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1)
