"""The pure parts of operations, without I/O: the dashboard's projection and allowance, the paths a
forwarded command carries, the HTTP server's routing and health, the log formats."""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from pathlib import Path

import pytest

from meterline.core.http import Limits, Response
from meterline.core.logs import JsonFormatter, TextFormatter, context
from meterline.core.ratecard import MeterPrice
from meterline.dashboard import allowance
from meterline.forward import absolute_paths
from meterline.reconciler.billing.periods import projected_usage
from meterline.server import Health, serve
from tests.support.pipeline import http_get

DAY = 86_400_000


@pytest.mark.parametrize(
    ("usage", "now", "projected"),
    [
        ({"api_calls": 1_000}, 10 * DAY, {"api_calls": 3_000}),  # a third of a 30-day period
        ({"api_calls": 1_001}, 10 * DAY, {"api_calls": 3_003}),
        ({"api_calls": 1}, 7 * DAY, {"api_calls": 4}),  # 4.28...: whole units, rounded down
        ({"api_calls": 500}, 30 * DAY, {"api_calls": 500}),  # over: what it was
        ({"api_calls": 500}, 31 * DAY, {"api_calls": 500}),
        ({"api_calls": 0}, 0, {"api_calls": 0}),  # not begun
        ({}, 5 * DAY, {}),
    ],
)
def test_projection_scales_usage_to_the_whole_period(
    usage: dict[str, int], now: int, projected: dict[str, int]
) -> None:
    assert projected_usage(usage, 0, 30 * DAY, now) == projected


def test_allowance_splits_billed_units_into_included_and_overage() -> None:
    calls = MeterPrice(
        "api_calls", "API calls", "call", included=Decimal(1_000_000), overage_price=Decimal("0.001")
    )
    assert allowance(calls, 1_200_000) == (Decimal(1_200_000), Decimal(1_000_000), Decimal(200_000))
    assert allowance(calls, 999_999) == (Decimal(999_999), Decimal(999_999), Decimal(0))
    assert allowance(calls, 1_000_000) == (Decimal(1_000_000), Decimal(1_000_000), Decimal(0))
    gb = MeterPrice("egress_bytes", "egress", "GB", per=Decimal(10**9), decimals=2, rounding="up")
    assert allowance(gb, 1) == (Decimal("0.01"), Decimal(0), Decimal("0.01"))


def test_forwarded_paths_are_the_callers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_paths(["--config", "m.toml", "dispute", "--output", "d.csv", "--customer", "c"]) == [
        "--config",
        str(tmp_path / "m.toml"),
        "dispute",
        "--output",
        str(tmp_path / "d.csv"),
        "--customer",
        "c",
    ]
    assert absolute_paths(["dispute", "--output=d.html"]) == ["dispute", f"--output={tmp_path / 'd.html'}"]
    assert absolute_paths(["sql", "SELECT 1"]) == ["sql", "SELECT 1"]


def test_health_routes_and_a_failing_route(caplog: pytest.LogCaptureFixture) -> None:
    health = Health({"stream": "starting"})

    def boom(_: object) -> Response:
        raise ValueError("the handler broke")

    routes = {
        "GET /customers/*": lambda request: Response.json(
            {"path": request.path, "query": dict(request.query)}
        ),
        "GET /boom": boom,
    }
    server = serve("127.0.0.1", 0, health, Limits(), routes)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert http_get(f"{base}/healthz")[0] == 200
        assert http_get(f"{base}/readyz")[0] == 503  # starting
        health.set("stream", "ready")
        status, body = http_get(f"{base}/readyz")
        assert status == 200 and json.loads(body) == {"ok": True, "roles": {"stream": "ready"}}
        health.set("sink", "failed: boom")
        assert http_get(f"{base}/healthz")[0] == 503 and http_get(f"{base}/readyz")[0] == 503
        assert json.loads(http_get(f"{base}/customers/cust-1?grain=day")[1]) == {
            "path": "/customers/cust-1",
            "query": {"grain": "day"},
        }
        assert http_get(f"{base}/customers")[0] == 404  # the prefix route is /customers/...
        status, body = http_get(f"{base}/boom")
        # The answer does not carry the exception (it may hold what a caller must not see): the log does.
        assert status == 500 and "the handler broke" not in body and "log" in json.loads(body)["error"]
        assert any("the handler broke" in r.exc_text for r in caplog.records if r.exc_text)
        assert http_get(f"{base}/metrics")[0] == 200  # the server survived the broken route
    finally:
        server.shutdown()


def record(message: str, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("meterline.sink.stripe", logging.WARNING, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(entry, key, value)
    return entry


def test_logs_carry_the_billing_context_in_both_formats() -> None:
    fields = context(customer="cust-42", window=1_795_000_000_000, identifier="ml:abc", invoice=None)
    assert fields == {"customer": "cust-42", "window": 1_795_000_000_000, "identifier": "ml:abc"}
    line = json.loads(JsonFormatter().format(record("not billed", **fields)))
    assert line["message"] == "not billed" and line["level"] == "WARNING"
    assert {k: line[k] for k in fields} == fields
    text = TextFormatter().format(record("not billed", **fields))
    assert text.endswith("not billed customer=cust-42 window=1795000000000 identifier=ml:abc")
