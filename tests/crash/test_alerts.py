"""Usage alerts are raised once per (customer, meter, period, threshold): `meterline alerts` SIGKILLed
at random points while the product's endpoint is slow and fails now and then, then the aggregates
replayed through the ClickHouse sink. One record per alert on usage.alerts, one row per alert in
ClickHouse, every webhook signed and carrying the alert's id."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from meterline import dashboard
from meterline.compose import clickhouse_sink
from meterline.core.config import Config
from meterline.core.kafka import read_ends
from meterline.reconciler.alerts.rules import SIGNATURE_HEADER, alert_id, signature
from meterline.reconciler.billing.periods import period_bounds
from meterline.schemas.records import WindowAggregate
from meterline.sinks.clickhouse.client import connect
from tests.support.clickhouse_sink import fresh
from tests.support.kafka import read_messages
from tests.support.pipeline import start_meterline
from tests.support.records import window_aggregate
from tests.support.sinks import run_sink
from tests.support.stripe_sink import produce_aggregates

SECRET = "whsec_alerts_test"
# API calls per customer in the month; the standard plan includes 1,000,000 at $0.001 beyond.
CALLS = [300_000, 500_000, 700_000, 999_999, 1_000_000, 1_009_994, 1_009_995, 2_000_000]
THRESHOLDS = """
[alerts]
endpoint = "http://127.0.0.1:{port}/alerts"
signing_secret = "{secret}"

[alerts.rules.standard.api_calls]
included = ["50%", "100%"]
spend = ["10.00"]
projected_overage = false
"""


def expected_by_hand() -> set[tuple[str, str]]:
    """(customer, threshold) of every crossing: 50% from 500,000 calls, 100% from 1,000,000, and a
    $10.00 line from 1,009,995 calls: $9.995 of overage, which the line rounds half up to the cent as
    Stripe does (https://docs.stripe.com/billing/subscriptions/decimal-amounts); 1,009,994 is $9.99."""
    found = set()
    for n, calls in enumerate(CALLS):
        customer = f"cust-{n:02d}"
        if calls >= 500_000:
            found.add((customer, "50% of 1,000,000 included"))
        if calls >= 1_000_000:
            found.add((customer, "100% of 1,000,000 included"))
        if calls >= 1_009_995:
            found.add((customer, "spend $10.00"))
    return found


class Product:
    """The product's alert endpoint: slow, failing each alert's first delivery with a 503."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bool]] = []  # (alert id, signature right)
        product = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                stamp = int(self.headers[SIGNATURE_HEADER].split(",")[0].removeprefix("t="))
                signed = self.headers[SIGNATURE_HEADER] == signature(SECRET, stamp, body)
                key = self.headers["Idempotency-Key"]
                first = all(k != key for k, _ in product.received)
                product.received.append((key, signed and json.loads(body)["id"] == key))
                time.sleep(0.3)
                self.send_response(503 if first else 200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def delivered(self) -> set[str]:
        """Ids answered 200: each one's second delivery or later."""
        seen = Counter(key for key, _ in self.received)
        return {key for key, n in seen.items() if n >= 2}


def _aggregates(start: int) -> list[WindowAggregate]:
    return [
        window_aggregate(f"cust-{n:02d}", "api_calls", start, value=calls, closed_at=start + 90_000)
        for n, calls in enumerate(CALLS)
    ]


def _sink(config: Config, dsn: str) -> None:
    ends = read_ends(config.kafka.bootstrap, [config.topics.aggregates])
    run_sink(
        clickhouse_sink(config, config.kafka.bootstrap, dsn=dsn, group_id="test-alerts-ch"),
        config.kafka.bootstrap,
        ends,
    )


def test_alerts_are_raised_once_through_sigkills_and_a_replay(config: Config, tmp_path: Path) -> None:
    rng = random.Random()
    dsn = f"chdb://{tmp_path / 'clickhouse'}"
    fresh(config, dsn)
    now = int(time.time() * 1000)
    month_start, month_end = period_bounds(time.strftime("%Y-%m", time.gmtime(now / 1000)))
    if month_end - now < 10 * 60_000:  # the role judges the current month by its own clock:
        time.sleep((month_end - now) / 1000 + 1)  # never let the month end during the test
        now = int(time.time() * 1000)
        month_start = month_end
    start = max(month_start, now - 3_600_000) // 60_000 * 60_000  # this month, before now
    aggregates = _aggregates(start)
    produce_aggregates(config, aggregates)
    _sink(config, dsn)

    product = Product()
    config_file = tmp_path / "alerts.toml"
    config_file.write_text(THRESHOLDS.format(port=product.port, secret=SECRET))
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": config.kafka.bootstrap,
        "CLICKHOUSE_DSN": dsn,
        "METERLINE__DEV__STATE_DIR": str(tmp_path),
        "METERLINE__TOPICS__ALERTS": config.topics.alerts,
    }
    argv = ["alerts", "--every", "0.2", "--config", str(config_file)]
    expected = expected_by_hand()
    for n in range(4):  # three kills at random points, then one run to the end
        process = start_meterline(argv, env, tmp_path / f"alerts-{n}.log")
        if n < 3:
            time.sleep(rng.uniform(1.5, 5.0))
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            continue
        deadline = time.monotonic() + 120
        while len(product.delivered()) < len(expected):
            assert process.poll() is None and time.monotonic() < deadline, (
                tmp_path / "alerts-3.log"
            ).read_text()
            time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0

    records = read_messages(config.kafka.bootstrap, config.topics.alerts, len(expected))
    documents = [json.loads(m.value() or b"") for m in records]
    assert sorted((d["customer_id"], d["threshold"]) for d in documents) == sorted(expected)  # once each
    assert all(
        d["id"] == alert_id(d["customer_id"], "api_calls", month_start, d["threshold"]) for d in documents
    )
    assert all(m.key() == d["id"].encode() for m, d in zip(records, documents, strict=True))
    assert product.delivered() == {d["id"] for d in documents}
    assert all(signed for _, signed in product.received)

    # The aggregates again (a replay, duplicates): the totals do not change, nor do the alerts.
    produce_aggregates(config, aggregates)
    _sink(config, dsn)
    again = start_meterline(["alerts", "--once", "--config", str(config_file)], env, tmp_path / "once.log")
    assert again.wait(timeout=120) == 0, (tmp_path / "once.log").read_text()
    assert "(no rows)" in (tmp_path / "once.log").read_text()
    assert len(read_messages(config.kafka.bootstrap, config.topics.alerts, len(expected))) == len(expected)
    client = connect(config, dsn)
    try:
        shown = dashboard.document(config, client, "cust-07", as_of_ms=now)["alerts"]
        rows = client.query(
            "SELECT alert_id, status, count() OVER (PARTITION BY alert_id) FROM usage_alerts FINAL"
        ).result_rows
    finally:
        client.close()
    assert sorted(r[0] for r in rows) == sorted(d["id"] for d in documents)
    assert {(status, n) for _, status, n in rows} == {("delivered", 1)}
    # The dashboard lists the customer's alerts of the period.
    assert sorted((a["threshold"], a["status"]) for a in shown) == sorted(
        (threshold, "delivered") for customer, threshold in expected if customer == "cust-07"
    )
