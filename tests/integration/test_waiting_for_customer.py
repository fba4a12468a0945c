"""A new customer's usage waits for Stripe to know it, and is billed once it does (issue 35 item 2).

Stripe's customer search lags a write: "Don't use search in read-after-write flows where strict
consistency is necessary. Under normal operating conditions, data is searchable in less than a
minute. Occasionally, propagation of new or updated data can be up to an hour behind during
outages" (https://docs.stripe.com/api/customers/search). The fake's search lags the same way
(`search_lag_seconds`). Before, a customer created a minute before its first usage was refused
for good (`unknown_customer`) and billed nothing.

The sink runs in this process, on the broker, the fake and the embedded ClickHouse; its ledger is
read between runs (one process at a time holds the embedded engine).
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from meterline.compose import stripe_sink
from meterline.core.config import Config
from meterline.core.kafka import committed_reaches, read_ends
from meterline.schemas.records import WindowAggregate
from meterline.sinks.clickhouse.client import connect
from meterline.sinks.stripe.fake import FakeStripe
from meterline.sinks.stripe.report import identifier
from meterline.sinks.stripe.sink import StripeSink
from tests.support.cli import meterline
from tests.support.kafka import read_messages
from tests.support.records import window_aggregate
from tests.support.stripe import set_up_stripe
from tests.support.stripe_sink import HOUR_MS, ledger, produce_aggregates
from tests.support.webhooks import post, start_webhooks

NOW = int(time.time() * 1000) // 60_000 * 60_000


def usage(customer: str) -> list[WindowAggregate]:
    """Two windows of the past two hours: 5 and 7 calls."""
    return [
        window_aggregate(customer, "api_calls", start, value=value)
        for start, value in ((NOW - 2 * HOUR_MS, 5), (NOW - HOUR_MS, 7))
    ]


def run_sink_until(config: Config, dsn: str, done: Callable[[StripeSink], bool]) -> StripeSink:
    """A Stripe sink in a thread of this process until `done(sink)`, then stopped (its ClickHouse
    client closed with it)."""
    sink = stripe_sink(config, config.kafka.bootstrap, dsn=dsn, group_id="test-waiting")
    stopping = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stopping.is_set,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 90
    while not done(sink):
        assert thread.is_alive() and time.monotonic() < deadline, vars(sink.stats)
        time.sleep(0.2)
    stopping.set()
    thread.join(timeout=60)
    return sink


def committed(config: Config) -> Callable[[StripeSink], bool]:
    ends = read_ends(config.kafka.bootstrap, [config.topics.aggregates])
    return lambda sink: committed_reaches(config.kafka.bootstrap, sink.group_id, ends)


def on_fake(config: Config, base: str, **stripe: object) -> Config:
    """The sink's configuration on the fake. The windows wait a day for their customer: by default
    a window of the previous month would be past its horizon an hour into the 1st, and these tests
    must not depend on the time of day (the horizon is pinned in tests/unit/test_customer_wait.py)."""
    wait = dataclasses.replace(config.stripe, api_base=base, customer_wait_hours=24, **stripe)
    return dataclasses.replace(config, stripe=wait)


def billed(fake: FakeStripe) -> list[tuple[str, int]]:
    return sorted((e.identifier, e.value) for e in fake.state.meter_events)


def test_a_customer_created_a_moment_before_its_usage_is_billed_once_search_finds_it(
    config: Config, stripe_fake: tuple[FakeStripe, str], ledger_dsn: str
) -> None:
    fake, base = stripe_fake
    clock = [NOW / 1000]
    fake.state.clock = lambda: clock[0]  # pinned: search finds the customer when the test says
    fake.state.search_lag_seconds = 30
    set_up_stripe(config, base, ["fresh"])
    windows = usage("fresh")
    produce_aggregates(config, windows)
    searching = on_fake(config, base, search_again_seconds=1)
    held = committed(config)

    def found_after_waiting(sink: StripeSink) -> bool:
        if sink.stats.waiting == 2 and held(sink) and not fake.state.meter_events:
            clock[0] = NOW / 1000 + 31  # the search index catches up
        return len(fake.state.meter_events) == 2

    sink = run_sink_until(searching, ledger_dsn, found_after_waiting)

    assert (sink.stats.waiting, sink.stats.released, sink.stats.failed) == (2, 2, 0)
    assert billed(fake) == sorted((identifier(w.identity), w.value) for w in windows)
    assert {(r.customer_id, r.status) for r in ledger(config, ledger_dsn)} == {("fresh", "sent")}


def test_a_customer_named_by_a_webhook_or_an_import_is_billed_without_search_and_across_restarts(
    config: Config, stripe_fake: tuple[FakeStripe, str], ledger_dsn: str, tmp_path: Path
) -> None:
    """Search stays an hour behind here (an outage): the customer.created webhook names one customer,
    `meterline stripe customers --import` the other. Their usage waits in the ledger meanwhile, through
    a restart of the sink, is listed by reconcile as not billed yet, and is then billed exactly once."""
    from meterline.reconciler.checks.compare import Unbilled
    from meterline.reconciler.checks.reconcile import not_billed

    fake, base = stripe_fake
    fake.state.search_lag_seconds = 3600
    set_up_stripe(config, base, ["hooked", "imported"])
    stripe_id = {c["metadata"]["meterline_customer_id"]: c["id"] for c in fake.state.customers.values()}
    windows = usage("hooked") + usage("imported")
    produce_aggregates(config, windows)
    stripe_config = on_fake(config, base)

    first = run_sink_until(stripe_config, ledger_dsn, committed(config))
    assert (first.stats.waiting, first.stats.sent, len(fake.state.meter_events)) == (4, 0, 0)
    assert {(r.customer_id, r.status, r.error_code) for r in ledger(config, ledger_dsn)} == {
        ("hooked", "waiting_for_customer", "waiting_for_customer"),
        ("imported", "waiting_for_customer", "waiting_for_customer"),
    }
    client = connect(config, ledger_dsn)
    try:
        unbilled, _ = not_billed(client, NOW - 3 * HOUR_MS, NOW)
    finally:
        client.close()
    assert unbilled == [
        Unbilled("hooked", "api_calls", "waiting_for_customer", 12, 2),
        Unbilled("imported", "api_calls", "waiting_for_customer", 12, 2),
    ]
    env = {"CLICKHOUSE_DSN": ledger_dsn, "KAFKA_BOOTSTRAP": config.kafka.bootstrap}
    listed = meterline("stripe", "customers", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "hooked" in listed.stdout and "imported" in listed.stdout and "UTC" in listed.stdout

    # The customer.created event, signed by the fake, through the receiver and the consumer.
    process, log_path = start_webhooks(config, base, ledger_dsn, tmp_path)
    try:
        sent = post(
            base,
            "/_fake/events",
            {"type": "customer.created", "object": fake.state.customers[stripe_id["hooked"]]},
        )
        assert sent["status"] == 200
        ends = read_ends(config.kafka.bootstrap, [config.topics.webhooks])
        deadline = time.monotonic() + 60
        while not committed_reaches(config.kafka.bootstrap, "test-webhooks", ends):
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    mapping = tmp_path / "customers.csv"
    mapping.write_text(f"customer_id,stripe_customer\nimported,{stripe_id['imported']}\n")
    imported = meterline("stripe", "customers", "--import", str(mapping), env=env)
    assert imported.returncode == 0, imported.stderr
    assert "imported 1 customers" in imported.stdout and "1 from import, 1 from webhook" in imported.stdout

    second = run_sink_until(stripe_config, ledger_dsn, lambda sink: len(fake.state.meter_events) == 4)
    assert (second.stats.released, second.stats.sent, second.stats.failed) == (4, 4, 0)
    assert billed(fake) == sorted((identifier(w.identity), w.value) for w in windows)
    assert {e.customer for e in fake.state.meter_events} == set(stripe_id.values())
    assert {(r.customer_id, r.status) for r in ledger(config, ledger_dsn)} == {
        ("hooked", "sent"),
        ("imported", "sent"),
    }
    assert read_messages(config.kafka.bootstrap, config.topics.stripe_dlq, 0, timeout=1) == []


def test_a_revision_taken_up_whose_report_a_crash_cut_short_is_taken_up_again(
    config: Config, stripe_fake: tuple[FakeStripe, str], ledger_dsn: str
) -> None:
    """A held revision's offset was committed long ago: once taken up, its `pending` row keeps the
    record, so that a crash between that row and Stripe's answer does not lose it. Here the sink
    died there (the row is written as it left it), and the next run reports it once."""
    from meterline.schemas.serde import AvroSerde
    from meterline.sinks.stripe.ledger import Consumed, Ledger
    from meterline.sinks.stripe.report import Outcome, Status
    from tests.support.stripe import know_customers

    fake, base = stripe_fake
    set_up_stripe(config, base, ["cut-short"])
    [window, _] = usage("cut-short")
    client = connect(config, ledger_dsn)
    try:
        know_customers(client, base)
        record = Consumed(AvroSerde().encode_aggregate(window), 0, 41)
        Ledger(client, "meter_events").record([(window, "", "", Outcome(Status.PENDING))], [record])
    finally:
        client.close()

    sink = run_sink_until(on_fake(config, base), ledger_dsn, lambda sink: bool(fake.state.meter_events))
    assert (sink.stats.released, sink.stats.sent) == (1, 1)
    assert billed(fake) == [(identifier(window.identity), 5)]
    assert [(r.customer_id, r.status) for r in ledger(config, ledger_dsn)] == [("cut-short", "sent")]
