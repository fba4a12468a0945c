"""Stripe's own request validator in the tests: stripe-mock (github.com/stripe/stripe-mock), which
checks every v1 request against Stripe's OpenAPI specification and answers with fixtures. It
keeps no state, so meterline's flows run against the fake behind a recorder, and each request
they made is then sent to stripe-mock as it was sent: a request stripe-mock refuses is one real
Stripe would refuse.

`./run.sh test` installs stripe-mock where Go is (`go install
github.com/stripe/stripe-mock@v0.197.0` into .venv/bin) and then requires it
(METERLINE_REQUIRE_STRIPE_MOCK), so that a failed install fails the lane instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

STRIPE_MOCK_VERSION = "v0.197.0"
_FORWARDED = ("authorization", "content-type", "idempotency-key", "stripe-version")


def stripe_mock_binary() -> str | None:
    beside = Path(sys.executable).with_name("stripe-mock")
    return str(beside) if beside.exists() else shutil.which("stripe-mock")


def stripe_mock_spec() -> Path:
    """The OpenAPI specification stripe-mock bundles, in Go's module cache (`go install` put it
    there)."""
    cache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True)
    module = Path(cache.stdout.strip()) / f"github.com/stripe/stripe-mock@{STRIPE_MOCK_VERSION}"
    return module / "embedded" / "openapi" / "spec3.json"


requires_stripe_mock = pytest.mark.skipif(
    stripe_mock_binary() is None and not os.environ.get("METERLINE_REQUIRE_STRIPE_MOCK"),
    reason=f"no stripe-mock: `./run.sh test` installs it where Go is (go install "
    f"github.com/stripe/stripe-mock@{STRIPE_MOCK_VERSION})",
)


@dataclass(frozen=True)
class Sent:
    """One request as it went over the wire."""

    method: str
    path: str
    """With its query string."""
    body: bytes
    headers: dict[str, str]


class Recorder:
    """A loopback HTTP proxy in front of `target` that records every request it forwards."""

    def __init__(self, target: str) -> None:
        self.sent: list[Sent] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items() if k.lower() in _FORWARDED}
                recorder.sent.append(Sent(self.command, self.path, body, headers))
                status, data = _send(target, Sent(self.command, self.path, body, headers))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _forward

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def replay(base: str, sent: Sent) -> tuple[int, str]:
    """`sent` sent again to `base`, under the key stripe-mock takes (sk_test_ and letters or
    digits): its status and body."""
    status, data = _send(base, replace(sent, headers={**sent.headers, "authorization": "Bearer sk_test_123"}))
    return status, data.decode(errors="replace")


def _send(base: str, sent: Sent) -> tuple[int, bytes]:
    request = urllib.request.Request(
        base + sent.path, data=sent.body or None, headers=sent.headers, method=sent.method
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


@pytest.fixture(scope="module")
def stripe_mock() -> Iterator[str]:
    """stripe-mock on a free loopback port for the module: its base address."""
    binary = stripe_mock_binary()
    assert binary is not None, "stripe-mock is required here (METERLINE_REQUIRE_STRIPE_MOCK) and missing"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [binary, "-http-addr", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "stripe-mock did not listen within 30 s"
                time.sleep(0.1)
        yield base
    finally:
        process.kill()
        process.wait()
