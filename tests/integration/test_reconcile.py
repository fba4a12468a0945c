"""`meterline reconcile` between the embedded ClickHouse and the Stripe fake, both filled by the real
sinks: zero drift after a clean run; a Stripe meter event deleted (or one added) is found by
customer, meter and hour with the right amount, and the command exits 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Producer

from meterline.compose import clickhouse_sink, stripe_sink
from meterline.config import load_config
from meterline.core.config import Config
from meterline.core.kafka import read_ends
from meterline.reconciler.billing.periods import PeriodError
from meterline.reconciler.checks.compare import Difference, compare
from meterline.reconciler.checks.reconcile import reconcile
from meterline.schemas.serde import AvroSerde
from meterline.sinks.clickhouse.client import connect
from meterline.sinks.clickhouse.migrate import migrate
from meterline.sinks.clickhouse.rows import REVISION_COLUMNS
from meterline.sinks.stripe.calls import Caller, RateLimiter
from meterline.sinks.stripe.fake import FakeStripe
from meterline.sinks.stripe.fake.objects import MeterEvent
from meterline.sinks.stripe.webhooks.events import INVOICE_COLUMNS
from tests.support.clickhouse_sink import fresh
from tests.support.records import window_aggregate
from tests.support.sinks import run_sink
from tests.support.stripe import (
    KEY,
    know_customers,
    record_subscription_item,
    set_up_stripe,
    stripe_api,
    subscribe,
)

MINUTE = 60_000
CUSTOMERS = ["cust-0000", "cust-0001", "cust-0002"]


def test_compare_reports_both_sides_and_the_drift() -> None:
    found = compare({"a": 10, "b": 5, "z": 0}, {"a": 10, "b": 7, "c": 1})
    assert found == [Difference("a", 10, 10), Difference("b", 5, 7), Difference("c", 0, 1)]
    assert [(d.drift, d.percent) for d in found] == [(0, 0), (2, 40), (1, None)]


def _both_sinks_filled(config: Config, base: str, dsn: str, start: int, now: int) -> Config:
    """A window a minute per customer and meter in [start, now), written by the ClickHouse sink and
    reported by the Stripe sink to the fake. Returns the configuration pointed at the fake."""
    fresh(config, dsn)
    set_up_stripe(config, base, CUSTOMERS)
    serde = AvroSerde()
    producer = Producer({"bootstrap.servers": config.kafka.bootstrap})
    for n in range((now - start) // MINUTE):
        for customer in CUSTOMERS:
            for meter in config.meters:
                window = start + n * MINUTE
                value = 1 + (n * 31 + len(customer) + len(meter)) % 500
                a = window_aggregate(customer, meter, window, value=value, closed_at=window + MINUTE)
                producer.produce(config.topics.aggregates, serde.encode_aggregate(a), customer.encode())
    producer.flush()
    ends = read_ends(config.kafka.bootstrap, [config.topics.aggregates])
    run_sink(
        clickhouse_sink(config, config.kafka.bootstrap, dsn=dsn, group_id="test-reconcile-ch"),
        config.kafka.bootstrap,
        ends,
    )
    stripe_config = _with_fake(config, base)
    run_sink(
        stripe_sink(stripe_config, config.kafka.bootstrap, dsn=dsn, group_id="test-reconcile-stripe"),
        config.kafka.bootstrap,
        ends,
    )
    return stripe_config


def _assert_clean_by_month_and_by_billing_period(
    stripe_config: Config, dsn: str, base: str, period: str, start: int, now: int
) -> None:
    caller = Caller(base, KEY, 5, RateLimiter(1000), "2024-06-20")
    client = connect(stripe_config, dsn)
    try:
        clean = reconcile(stripe_config, client, caller, period)
        assert (
            clean.ok and len(clean.pairs) == len(CUSTOMERS) * len(stripe_config.meters) and clean.hours == []
        )
        assert all(d.drift == 0 for d in clean.pairs)
        # One customer's own billing period (started halfway through the windows, so before now
        # at any time of day), as Stripe bills it: only the windows inside it are compared.
        billed_from = start + (now - start) // 2 // MINUTE * MINUTE
        record_subscription_item(
            client,
            CUSTOMERS[0],
            (billed_from // 1000, billed_from // 1000 + 30 * 86_400),
            billed_from // 1000,
            "sub_r",
        )
        own = reconcile(stripe_config, client, caller, "current", customer=CUSTOMERS[0])
        [(expected_calls,)] = client.query(
            "SELECT sum(value) FROM usage_windows FINAL WHERE customer_id = %(c)s AND meter = 'api_calls' "
            "AND window_start >= fromUnixTimestamp64Milli(%(s)s, 'UTC')",
            parameters={"c": CUSTOMERS[0], "s": billed_from},
        ).result_rows
        calls = next(d for d in own.pairs if d.key == (CUSTOMERS[0], "api_calls"))
        assert (
            own.ok
            and "billing period of sub_r" in own.period
            and calls.ours == calls.theirs == expected_calls
        )
        # A peak's contributions add up per UTC month: over another period they would not compare.
        assert list(own.not_compared) == ["seats"] and all(d.key[1] != "seats" for d in own.pairs)
        with pytest.raises(PeriodError, match="give --customer"):
            reconcile(stripe_config, client, caller, "current")
    finally:
        client.close()


def _hour(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s - epoch_s % 3600, UTC).strftime("%Y-%m-%d %H:00")


def test_reconcile_finds_the_customer_meter_and_hour_that_drift(
    config: Config, stripe_fake: tuple[FakeStripe, str], tmp_path: Path
) -> None:
    fake, base = stripe_fake
    dsn = f"chdb://{tmp_path / 'clickhouse'}"
    # Windows of the last 90 minutes (within this month, and within Stripe's 35 days).
    now = int(time.time() * 1000) // MINUTE * MINUTE
    month = datetime.fromtimestamp(now / 1000, UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    start = max(int(month.timestamp() * 1000), now - 90 * MINUTE)
    period = month.strftime("%Y-%m")
    stripe_config = _both_sinks_filled(config, base, dsn, start, now)
    _assert_clean_by_month_and_by_billing_period(stripe_config, dsn, base, period, start, now)

    # Stripe loses one meter event and gains one nobody sent.
    lost = next(
        e
        for e in fake.state.meter_events
        if e.customer == fake.state.meter_events[0].customer and e.event_name == "api_calls"
    )
    fake.state.meter_events.remove(lost)
    extra_customer = next(
        c for c in fake.state.customers.values() if c["metadata"]["meterline_customer_id"] == "cust-0002"
    )
    fake.state.meter_events.append(
        MeterEvent("egress_bytes", "stray", extra_customer["id"], 77, start // 1000 + 5, start // 1000)
    )
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": config.kafka.bootstrap,
        "CLICKHOUSE_DSN": dsn,
        "METERLINE__STRIPE__API_BASE": base,
        "METERLINE__DEV__STATE_DIR": str(tmp_path),
    }
    shown = subprocess.run(
        [sys.executable, "-m", "meterline.cli", "reconcile", "--period", period, "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 1 and shown.stdout.startswith("{"), shown.stderr
    report = json.loads(shown.stdout)
    lost_customer = next(
        c["metadata"]["meterline_customer_id"]
        for c in fake.state.customers.values()
        if c["id"] == lost.customer
    )
    assert [(h["customer"], h["meter"], h["hour (UTC)"], h["drift"]) for h in report["hours"]] == sorted(
        [
            (lost_customer, "api_calls", _hour(lost.timestamp), -lost.value),
            ("cust-0002", "egress_bytes", _hour(start // 1000), 77),
        ],
        key=lambda h: repr((h[0], h[1], h[2])),
    )
    drifting = {(p["customer"], p["meter"]): p["drift"] for p in report["pairs"] if p["drift"]}
    assert drifting == {(lost_customer, "api_calls"): -lost.value, ("cust-0002", "egress_bytes"): 77}


def test_legacy_usage_records_are_reconciled_over_each_item_s_own_billing_period(
    stripe_fake: tuple[FakeStripe, str], tmp_path: Path
) -> None:
    """A usage record summary covers one billing period of the item, one summary per period
    (https://stripe.com/docs/api/usage_records): an item started on Nov 15 is summed Nov 15 to
    Dec 15, so reconciling "2026-11" compares ours over that period, not over the UTC month (which
    would show the December usage as drift), and still finds what Stripe lacks."""
    import dataclasses

    fake, base = stripe_fake
    nov_15 = 1_794_700_800  # 2026-11-15T00:00:00Z
    fake.state.clock = lambda: nov_15 + 16 * 86_400 + 12 * 3600  # Dec 1, 12:00: inside the period
    defaults = load_config(None, {})
    config = dataclasses.replace(
        defaults, stripe=dataclasses.replace(defaults.stripe, api_base=base, mode="usage_records")
    )
    set_up_stripe(config, base, ["cust-legacy"])
    item = subscribe(config, base, ["cust-legacy"], started=nov_15)[("cust-legacy", "api_calls")]
    nov_20, dec_1_10h = nov_15 + 5 * 86_400, nov_15 + 16 * 86_400 + 10 * 3600
    for quantity, at in ((700, nov_20), (500, dec_1_10h)):
        stripe_api(base).raw_request(
            "post",
            f"/v1/subscription_items/{item}/usage_records",
            quantity=quantity,
            timestamp=at,
            action="increment",
            stripe_version="2024-06-20",
        )
    client = connect(config, f"chdb://{tmp_path / 'clickhouse'}")
    try:
        migrate(client, 400)
        know_customers(client, base)  # the fake's clock stands still: its search never catches up

        def window(at_s: int, value: int) -> list[object]:
            return ["cust-legacy", "api_calls", at_s * 1000, at_s * 1000 + MINUTE, 0, 0, value, value, 1, 0]

        windows = [window(nov_20, 700), window(dec_1_10h, 500)]
        client.insert("usage_window_revisions", windows, column_names=list(REVISION_COLUMNS))
        caller = Caller(base, KEY, 5, RateLimiter(1000), "2024-06-20")
        clean = reconcile(config, client, caller, "2026-11")
        [calls] = [d for d in clean.pairs if d.key == ("cust-legacy", "api_calls")]
        assert clean.ok and (calls.ours, calls.theirs) == (1200, 1200)
        # A window Stripe never got, inside the period but after the UTC month: drift of 5.
        client.insert(
            "usage_window_revisions", [window(dec_1_10h + 3600, 5)], column_names=list(REVISION_COLUMNS)
        )
        drifted = reconcile(config, client, caller, "2026-11")
        assert [(d.key, d.ours, d.theirs) for d in drifted.drifting] == [
            (("cust-legacy", "api_calls"), 1205, 1200)
        ]
    finally:
        client.close()


def _with_fake(config: Config, base: str) -> Config:
    import dataclasses

    return dataclasses.replace(
        config,
        stripe=dataclasses.replace(config.stripe, api_base=base, requests_per_second=1000, concurrency=8),
    )


def test_a_correction_stored_after_its_invoice_was_finalized_is_listed_as_unbilled(
    config: Config, tmp_path: Path
) -> None:
    from meterline.reconciler.checks.reconcile import late_corrections
    from meterline.sinks.clickhouse.rows import REVISION_COLUMNS
    from meterline.sinks.stripe.ledger import Ledger
    from meterline.sinks.stripe.report import Outcome, Status

    dsn = f"chdb://{tmp_path / 'clickhouse'}"
    client = connect(config, dsn)
    try:
        migrate(client, 400)
        start = 1_793_491_200_000  # 2026-11-01
        base = window_aggregate("cust-0000", "api_calls", start, value=10, closed_at=start)
        late = window_aggregate(
            "cust-0000", "api_calls", start, value=14, delta=4, events=2, revision=1, closed_at=start
        )
        for a in (base, late):
            row = [getattr(a, c) for c in REVISION_COLUMNS]
            client.insert("usage_window_revisions", [row], column_names=list(REVISION_COLUMNS))
        Ledger(client, "meter_events").record(
            [(a, "cus_1", "api_calls", Outcome(Status.SENT, 1)) for a in (base, late)]
        )
        client.insert(  # finalized (by its webhook) before the correction was stored: now
            "stripe_invoices",
            [
                [
                    "in_1",
                    "cus_1",
                    "open",
                    start // 1000,
                    start // 1000 + 30 * 86_400,
                    "[]",
                    start // 1000 + 86_400,
                ]
            ],
            column_names=list(INVOICE_COLUMNS),
        )
        [unbilled] = late_corrections(client, start, start + 30 * 86_400_000, None, None)
        assert (unbilled.customer_id, unbilled.value, unbilled.revisions) == ("cust-0000", 4, 1)
        assert "in_1" in unbilled.reason
    finally:
        client.close()
