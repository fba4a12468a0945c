"""meterline.guard without a server: which Host, Origin, secret and credentials let a request
through to a route. The same checks against a real `meterline run` are in tests/integration/test_run.py."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from meterline.config import load_config
from meterline.core.config import ConfigError, RunConfig
from meterline.core.http import Request, Response
from meterline.guard import Guard

SECRET = "s3cret-of-this-run"


def run_config(**env: str) -> RunConfig:
    return load_config(None, {f"METERLINE__RUN__{k.upper()}": v for k, v in env.items()}).run


def request(method: str = "GET", **headers: str) -> Request:
    named = {k.replace("_", "-").lower(): v for k, v in headers.items()}
    return Request(method, "/", {}, b'{"argv": []}', {"host": "127.0.0.1:8790", **named})


def ran(_: Request) -> Response:
    return Response.json({"ran": True})


def status(route_answer: Response) -> int:
    return route_answer.status


@pytest.mark.parametrize(
    ("listen", "allowed", "host", "through"),
    [
        ("127.0.0.1", "[]", "127.0.0.1:8790", True),
        ("127.0.0.1", "[]", "localhost:8790", True),
        ("127.0.0.1", "[]", "[::1]:8790", True),
        ("127.0.0.1", "[]", "evil.example:8790", False),  # DNS rebinding: the page's own name
        ("127.0.0.1", "[]", "localhost.evil.example", False),
        ("127.0.0.1", "[]", "", False),
        ("0.0.0.0", "['meterline.example.com']", "meterline.example.com", True),  # behind a proxy
        ("0.0.0.0", "['meterline.example.com']", "10.0.0.7:8790", True),  # an address is no rebinding
        ("0.0.0.0", "['meterline.example.com']", "evil.example", False),
        ("10.0.0.7", "[]", "10.0.0.7:8790", True),
        ("10.0.0.7", "[]", "10.0.0.8:8790", False),
    ],
)
def test_only_a_host_naming_this_server_gets_through(
    listen: str, allowed: str, host: str, through: bool
) -> None:
    config = run_config(host=listen, allowed_hosts=allowed, dashboard_token="t" * 16)
    refusal = Guard(config).host_refusal(request(host=host))
    assert (refusal is None) is through
    if refusal is not None:
        assert refusal.status == 421 and b"allowed_hosts" in refusal.body  # type: ignore[operator]


@pytest.mark.parametrize(
    ("origin", "through"),
    [
        (None, True),  # urllib, curl, meterline itself: no Origin
        ("http://127.0.0.1:8790", True),  # the dashboard's own page
        ("http://evil.example", False),
        ("http://127.0.0.1:9999", False),  # another local server's page
        ("null", False),  # a sandboxed frame, a file:// page
    ],
)
def test_only_its_own_origin_gets_through(origin: str | None, through: bool) -> None:
    guard = Guard(run_config())
    headers = {} if origin is None else {"origin": origin}
    assert (guard.origin_refusal(request(**headers)) is None) is through


def test_the_command_api_wants_the_secret_and_json() -> None:
    route = Guard(run_config()).commands(ran, SECRET)
    json_type = {"content_type": "application/json; charset=utf-8"}
    assert status(route(request(**json_type))) == 401
    assert status(route(request(**json_type, x_meterline_secret="nope"))) == 403
    assert status(route(request(content_type="text/plain", x_meterline_secret=SECRET))) == 415
    assert status(route(request(x_meterline_secret=SECRET))) == 415  # no Content-Type at all
    assert status(route(request(**json_type, x_meterline_secret=SECRET, origin="http://evil.example"))) == 403
    assert status(route(request(**json_type, x_meterline_secret=SECRET))) == 200


def test_the_dashboard_wants_its_token_or_its_basic_auth_when_configured() -> None:
    open_config = run_config()
    assert status(Guard(open_config).dashboard({"GET /": ran})["GET /"](request())) == 200
    config = run_config(dashboard_token="t" * 20, dashboard_user="ops", dashboard_password="p" * 20)
    route = Guard(config).dashboard({"GET /": ran})["GET /"]
    refused = route(request())
    assert refused.status == 401 and dict(refused.headers)["WWW-Authenticate"].startswith("Basic ")

    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    assert status(route(request(authorization=f"Bearer {'t' * 20}"))) == 200
    assert status(route(request(authorization=basic("ops", "p" * 20)))) == 200
    for wrong in (
        f"Bearer {'t' * 19}",
        basic("ops", "p" * 19),
        basic("other", "p" * 20),
        "Basic not-base64!",
        f"Token {'t' * 20}",
    ):
        assert status(route(request(authorization=wrong))) == 401, wrong
    assert status(route(request(authorization=f"Bearer {'t' * 20}", host="evil.example"))) == 421


def test_dashboard_credentials_are_checked_with_the_rest_of_the_configuration() -> None:
    with pytest.raises(ConfigError) as raised:
        run_config(dashboard_token="short", dashboard_user="ops", allowed_hosts="'one'", max_body_bytes="12")
    fields = {p.field for p in raised.value.problems}
    assert fields == {
        "run.dashboard_token",
        "run.dashboard_password",
        "run.allowed_hosts",
        "run.max_body_bytes",
    }
    assert "short" not in str(raised.value)


def test_run_beyond_loopback_refuses_to_start_without_dashboard_credentials(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meterline.cli", "run"],
        env={
            "METERLINE__DEV__STATE_DIR": str(tmp_path),
            "METERLINE__RUN__HOST": "0.0.0.0",
            "PATH": "/usr/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "dashboard_token" in done.stderr and "0.0.0.0" in done.stderr
    assert not (tmp_path / "stack.json").exists()  # refused before the stack started
