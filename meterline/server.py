"""The HTTP face of a meterline process: /metrics, /healthz, /readyz, plus the routes a role adds.

Every role serves these three (`meterline run` on its API port, a standalone role with
`--http-port`). Health is what the roles report about themselves: a role is `starting` until its
loop runs, `ready` while it runs, and `failed` once it has died (the process then shuts down).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

log = logging.getLogger("meterline.http")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes | Iterable[bytes]
    """Bytes, or chunks written as they come (a long command's output)."""
    content_type: str = "application/json"

    @classmethod
    def json(cls, document: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(document, default=str).encode())

    @classmethod
    def html(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode(), "text/html; charset=utf-8")


Route = Callable[[Request], Response]


@dataclass
class Health:
    roles: dict[str, str] = field(default_factory=dict)
    """role -> "starting" | "ready" | "failed: why"."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, role: str, state: str) -> None:
        with self._lock:
            self.roles[role] = state

    def report(self) -> tuple[bool, bool, dict[str, str]]:
        """(alive: no role failed, ready: every role ready, the roles)."""
        with self._lock:
            roles = dict(self.roles)
        alive = not any(state.startswith("failed") for state in roles.values())
        return alive, alive and all(state == "ready" for state in roles.values()), roles


def serve(
    host: str,
    port: int,
    health: Health,
    routes: Mapping[str, Route] | None = None,
    registry: CollectorRegistry = REGISTRY,
) -> ThreadingHTTPServer:
    """Serve on (host, port) in a daemon thread; `shutdown()` the result to stop.

    `routes` maps "METHOD /path" to a handler; "METHOD /path/*" matches everything under /path/.
    """

    def metrics(_: Request) -> Response:
        return Response(200, generate_latest(registry), CONTENT_TYPE_LATEST)

    def healthz(_: Request) -> Response:
        alive, _ready, roles = health.report()
        return Response.json({"ok": alive, "roles": roles}, 200 if alive else 503)

    def readyz(_: Request) -> Response:
        _alive, ready, roles = health.report()
        return Response.json({"ok": ready, "roles": roles}, 200 if ready else 503)

    table: dict[str, Route] = {
        "GET /metrics": metrics,
        "GET /healthz": healthz,
        "GET /readyz": readyz,
        **(routes or {}),
    }

    def find(method: str, path: str) -> Route | None:
        exact = table.get(f"{method} {path}")
        if exact is not None:
            return exact
        prefixes = [k for k in table if k.endswith("*") and f"{method} {path}".startswith(k[:-1])]
        return table[max(prefixes, key=len)] if prefixes else None

    class Handler(BaseHTTPRequestHandler):
        server_version = "meterline"

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def _handle(self, method: str) -> None:
            url = urlsplit(self.path)
            route = find(method, url.path)
            if route is None:
                self._send(Response.json({"error": f"no route for {method} {url.path}"}, 404))
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                response = route(Request(method, url.path, dict(parse_qsl(url.query)), body))
            except Exception as exc:  # one bad request must not take the server down
                log.exception("%s %s failed", method, url.path)
                response = Response.json({"error": f"{type(exc).__name__}: {exc}"}, 500)
            self._send(response)

        def _send(self, response: Response) -> None:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            if isinstance(response.body, bytes):
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)
                return
            self.send_header("Connection", "close")  # the end of the stream ends the body
            self.end_headers()
            for chunk in response.body:
                self.wfile.write(chunk)
                self.wfile.flush()

        def log_message(self, format: str, *args: object) -> None:
            log.debug(format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"http-{port}", daemon=True).start()
    return server
