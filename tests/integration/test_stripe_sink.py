"""`meterline sink stripe` against the broker, the Stripe fake and the embedded ClickHouse (its
ledger): Stripe's totals equal the expected ones exactly, through injected 500s, 429s, timeouts,
dropped answers and SIGKILLs, and every refusal lands in usage.stripe.dlq and the ledger.

Stripe's totals are read as the reconciler will: meter event summaries per customer and meter.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest
import stripe

from meterline.compose import stripe_sink
from meterline.core.config import Config
from meterline.core.kafka import read_ends
from meterline.schemas.records import WindowAggregate
from meterline.schemas.serde import AvroSerde
from meterline.sinks.clickhouse.client import connect
from meterline.sinks.clickhouse.migrate import migrate
from meterline.sinks.stripe.calls import Caller, RateLimiter
from meterline.sinks.stripe.catalog.sync import refused, sync
from meterline.sinks.stripe.fake import FakeStripe
from meterline.sinks.stripe.report import identifier
from meterline.workload import customer_ids
from tests.support.kafka import read_messages
from tests.support.pipeline import SinkProcess, Workers, small_workload
from tests.support.records import window_aggregate
from tests.support.stripe import (
    KEY,
    LEGACY_VERSION,
    set_up_stripe,
    subscribe,
)
from tests.support.stripe_sink import (
    HOUR_MS,
    assert_reported_exactly,
    know_customers_at,
    ledger,
    legacy_config,
    produce_aggregates,
    stream_aggregates,
)


@pytest.mark.parametrize("mode", ["meter_events", "meter_event_stream", "usage_records"])
def test_a_workload_reaches_stripe_exactly_in_every_mode(
    config: Config,
    workers: Workers,
    stripe_fake: tuple[FakeStripe, str],
    stripe_sink: SinkProcess,
    ledger_dsn: str,
    mode: str,
) -> None:
    fake, base = stripe_fake
    spec = small_workload(seed=31)
    meters = set_up_stripe(config, base, customer_ids(spec))
    items = subscribe(config, base, customer_ids(spec)) if mode == "usage_records" else {}
    expected = stream_aggregates(config, workers, spec)
    stripe_sink.env["METERLINE__STRIPE__MODE"] = mode
    stripe_sink.start()
    stripe_sink.wait_caught_up(
        config.kafka.bootstrap, read_ends(config.kafka.bootstrap, [config.topics.aggregates])
    )
    stripe_sink.stop()
    if mode != "usage_records":
        assert_reported_exactly(config, fake, base, meters, spec, expected, ledger_dsn)
        return
    totals = {  # the current period's summary (the first), which holds every window of the workload
        key: total
        for key, item in items.items()
        if (total := fake.state.usage_record_summaries(item)[0]["total_usage"])
    }
    assert totals == expected.at_stripe()
    rows = ledger(config, ledger_dsn)
    assert {r.status for r in rows} == {"confirmed"} and len(rows) == sum(
        len(v) for v in fake.state.usage_records.values()
    )


def test_each_refusal_lands_in_the_dlq_and_the_ledger_with_its_reason(
    config: Config,
    workers: Workers,
    stripe_fake: tuple[FakeStripe, str],
    stripe_sink: SinkProcess,
    ledger_dsn: str,
) -> None:
    fake, base = stripe_fake
    set_up_stripe(config, base, ["known"])
    now = int(time.time() * 1000) // 60_000 * 60_000
    day = 86_400_000

    def aggregate(customer: str, meter: str, start: int, revision: int = 0) -> WindowAggregate:
        return window_aggregate(customer, meter, start, value=7, revision=revision)

    cases = {
        # Stripe never knew the customer while the window's invoice could take it (its month ended
        # more than the grace period ago); a newcomer's window waits instead (tested with its release
        # in test_waiting_for_customer).
        "unknown_customer": aggregate("nobody", "api_calls", now - 34 * day),
        "waiting_for_customer": aggregate("newcomer", "api_calls", now - HOUR_MS),
        "unknown_meter": aggregate("known", "not_a_meter", now - HOUR_MS),
        "timestamp_too_old": aggregate("known", "api_calls", now - 40 * day),
        # Passes the sink's own check, but this Stripe's clock runs ahead: Stripe refuses it.
        "timestamp_too_far_in_past": aggregate("known", "api_calls", now - 35 * day + 2 * HOUR_MS),
        "ok": aggregate("known", "api_calls", now - HOUR_MS),
    }
    fake.state.clock = lambda: (now + 3 * HOUR_MS) / 1000  # pinned: 3 hours past the test's instant
    serde = AvroSerde()
    produce_aggregates(config, list(cases.values()))
    stripe_sink.start()
    stripe_sink.wait_caught_up(
        config.kafka.bootstrap, read_ends(config.kafka.bootstrap, [config.topics.aggregates])
    )
    stripe_sink.stop()

    refused = read_messages(config.kafka.bootstrap, config.topics.stripe_dlq, 4)
    by_reason = {dict(m.headers() or [])["error.code"].decode(): m for m in refused}
    assert set(by_reason) == {
        "unknown_customer",
        "unknown_meter",
        "timestamp_too_old",
        "timestamp_too_far_in_past",
    }
    for reason, message in by_reason.items():
        assert serde.decode_aggregate(message.value() or b"") == cases[reason]
        assert dict(message.headers() or [])["identifier"].decode() == identifier(cases[reason].identity)
    statuses = {
        (r.customer_id, r.meter, r.window_start): (r.status, r.error_code) for r in ledger(config, ledger_dsn)
    }
    for reason, a in cases.items():
        assert statuses[(a.customer_id, a.meter, a.window_start)] == (
            ("sent", "")
            if reason == "ok"
            else (reason, reason)
            if reason.startswith("waiting")
            else ("failed", reason)
        )
    assert [e.identifier for e in fake.state.meter_events] == [identifier(cases["ok"].identity)]


@pytest.mark.skipif(
    not os.environ.get("STRIPE_API_KEY"), reason="no STRIPE_API_KEY: Stripe test mode not reachable"
)
def test_stripe_test_mode_takes_a_meter_event_from_the_same_code(config: Config) -> None:
    from meterline.sinks.stripe.calls import Caller, RateLimiter
    from meterline.sinks.stripe.report import Report, Status

    caller = Caller("https://api.stripe.com", os.environ["STRIPE_API_KEY"], 20, RateLimiter(5), "2024-06-20")
    customer = caller.client.v1.customers.create({"metadata": {"meterline_customer_id": "meterline-test"}})
    start = int(time.time() * 1000) // 60_000 * 60_000 - HOUR_MS
    report = Report(
        window_aggregate("meterline-test", "api_calls", start),
        customer.id,
        config.meters["api_calls"].stripe_event_name,
    )
    outcome = caller.meter_event(report)
    assert outcome.status is Status.SENT and outcome.request_id.startswith("req_")


def test_stripe_sync_creates_what_is_missing_once_and_dry_run_changes_nothing(
    config: Config, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, base = stripe_fake
    caller = Caller(base, KEY, 5, RateLimiter(1000), "2024-06-20")
    planned = sync(config, caller, dry_run=True)
    assert not fake.state.meters and not fake.state.products and not fake.state.prices
    made = sync(config, caller)
    actions = {(c.kind, c.name): c.action for c in made}
    assert actions == {(c.kind, c.name): c.action.replace("would create", "created") for c in planned}
    assert actions[("price", "meterline_standard_api_calls")] == "created"
    # The seed's price: 1,000,000 included, then $0.001 = 0.1 cent per call, on the api_calls meter.
    [price] = fake.state.list_prices(["meterline_standard_api_calls"])
    assert price["tiers"] == [  # as Stripe returns them, typed (the fake's tests cite the page)
        {
            "up_to": 1000000,
            "unit_amount": 0,
            "unit_amount_decimal": "0",
            "flat_amount": None,
            "flat_amount_decimal": None,
        },
        {
            "up_to": None,
            "unit_amount": None,
            "unit_amount_decimal": "0.1",
            "flat_amount": None,
            "flat_amount_decimal": None,
        },
    ]
    assert price["recurring"]["meter"] == fake.state.meters[price["recurring"]["meter"]]["id"]
    # Egress in GB with 2 decimals, rounded up: Stripe divides the bytes by 10^7, rounds up, and
    # bills 0.09 cents per hundredth of a GB (its transform_quantity; prices.py cites the page).
    [egress] = fake.state.list_prices(["meterline_standard_egress_bytes"])
    assert (egress["transform_quantity"], egress["unit_amount_decimal"]) == (
        {"divide_by": 10_000_000, "round": "up"},
        "0.09",
    )
    # Storage in GB-months of 30 days with 2 decimals, rounded up: Stripe sums the GB-seconds
    # meterline reports (a time_weighted meter), divides by 25,920 (a hundredth of 2,592,000), rounds
    # up, and bills 0.1 cents per hundredth (https://docs.stripe.com/billing/subscriptions/usage-based/
    # transform-quantities: "round: up" after "divide_by").
    [storage] = fake.state.list_prices(["meterline_team_storage"])
    assert (storage["transform_quantity"], storage["unit_amount_decimal"]) == (
        {"divide_by": 25_920, "round": "up"},
        "0.1",
    )
    again = sync(config, caller)
    assert {c.action for c in again} == {"exists"}
    # A product per meter, and one for the team plan's base fee.
    assert len(fake.state.meters) == len(config.meters) == len(fake.state.products) - 1
    assert len(fake.state.prices) == 10  # the default rate card is billable through Stripe, every price
    # A changed rate card replaces the price under the same lookup key.
    cheaper = dataclasses.replace(
        config.plans["standard"],
        prices={
            **config.plans["standard"].prices,
            "api_calls": dataclasses.replace(
                config.plans["standard"].prices["api_calls"], overage_price=Decimal("0.0005")
            ),
        },
    )
    changed = dataclasses.replace(config, plans={"standard": cheaper})
    assert ("price", "meterline_standard_api_calls", "replaced") in {
        (c.kind, c.name, c.action) for c in sync(changed, caller)
    }
    [current] = fake.state.list_prices(["meterline_standard_api_calls"])
    assert current["tiers"][1]["unit_amount_decimal"] == "0.05" and len(fake.state.prices) == 11  # one more


def test_a_subscription_event_makes_the_legacy_sink_look_its_customer_s_item_up_again(
    stripe_fake: tuple[FakeStripe, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A customer found without an item is not looked up again for a minute, nor an item found for
    five: a plan change would be missed that long. The webhook consumer stores every
    customer.subscription.* event, and the sink forgets what it cached for those customers."""
    from meterline.config import load_config
    from meterline.sinks.stripe import modes
    from meterline.sinks.stripe.calls import caller_for
    from meterline.sinks.stripe.customers import KnownCustomers
    from meterline.sinks.stripe.directory import Directory
    from meterline.sinks.stripe.ledger import Ledger
    from tests.support.stripe import know_customers, record_subscription_item

    _, base = stripe_fake
    monkeypatch.setattr(modes, "SUBSCRIPTION_LOOK_S", 0.0)
    config = legacy_config(load_config(None, {}), base)
    set_up_stripe(config, base, ["late-subscriber"])
    client = connect(config, f"chdb://{tmp_path / 'clickhouse'}")
    migrate(client, 400)
    know_customers(client, base)
    caller = caller_for(config)
    directory = Directory(config.stripe, caller, KnownCustomers(client).find)
    reporting = modes.reporting_mode(
        config.stripe.mode, caller, 1, directory, Ledger(client, config.stripe.mode), client
    )
    stripe_customer = directory.customer("late-subscriber")
    assert stripe_customer is not None
    assert directory.subscription_items(stripe_customer, "api_calls") == ()  # cached for 60 s
    item = subscribe(config, base, ["late-subscriber"])[("late-subscriber", "api_calls")]
    assert directory.subscription_items(stripe_customer, "api_calls") == ()  # still cached
    now_s = int(time.time())
    record_subscription_item(
        client, "late-subscriber", (now_s, now_s + 86_400), now_s, stripe_customer=stripe_customer
    )
    reporting.prepare()
    assert [i.id for i in directory.subscription_items(stripe_customer, "api_calls")] == [item]
    reporting.close()
    client.close()


def test_a_legacy_customer_without_a_subscription_item_is_refused_before_the_call(
    config: Config, stripe_fake: tuple[FakeStripe, str], ledger_dsn: str
) -> None:
    from tests.support.sinks import run_sink

    fake, base = stripe_fake
    set_up_stripe(config, base, ["subscribed", "unsubscribed"])
    subscribe(config, base, ["subscribed"])
    now = int(time.time() * 1000) // 60_000 * 60_000
    cases = {
        customer: window_aggregate(customer, "api_calls", now - HOUR_MS, value=9, closed_at=now)
        for customer in ("subscribed", "unsubscribed")
    }
    serde = AvroSerde()
    produce_aggregates(config, list(cases.values()))
    legacy = legacy_config(config, base)
    ends = read_ends(config.kafka.bootstrap, [config.topics.aggregates])
    run_sink(
        stripe_sink(legacy, config.kafka.bootstrap, dsn=ledger_dsn, group_id="test-legacy"),
        config.kafka.bootstrap,
        ends,
    )

    [refused] = read_messages(config.kafka.bootstrap, config.topics.stripe_dlq, 1)
    assert dict(refused.headers() or [])["error.code"] == b"no_subscription_item"
    assert serde.decode_aggregate(refused.value() or b"") == cases["unsubscribed"]
    statuses = {r.customer_id: (r.status, r.error_code) for r in ledger(config, ledger_dsn)}
    assert statuses == {"subscribed": ("confirmed", ""), "unsubscribed": ("failed", "no_subscription_item")}
    assert [r["quantity"] for records in fake.state.usage_records.values() for r in records] == [9]


def test_after_a_plan_change_a_legacy_window_goes_to_the_item_of_its_time_or_is_refused(
    config: Config, stripe_fake: tuple[FakeStripe, str], ledger_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plan change adds the new price's item and deletes the old one; the old item's usage stays
    billed (no clear_usage, https://docs.stripe.com/api/subscription_items/delete) and nothing can
    be reported to it any more. A late window from before the change would otherwise land on the
    new item and be billed at the new price: it is refused as unbilled, with its reason, while a
    window after the change goes to the new item. An item made with a backdated subscription bills
    from its start (https://docs.stripe.com/billing/subscriptions/backdating), one added later from
    its creation (https://docs.stripe.com/changelog/2019-10-17/replaces-subscription-start-field)."""
    from tests.support.sinks import run_sink
    from tests.support.stripe import stripe_api

    fake, base = stripe_fake
    now_s = int(time.time()) // 60 * 60
    created_s, changed_s = now_s - 3 * 3600, now_s - 2 * 3600
    set_up_stripe(config, base, ["changer"])
    monkeypatch.setattr(fake.state, "clock", lambda: created_s)
    old_item = subscribe(config, base, ["changer"], started=now_s - 7 * 86_400)[("changer", "api_calls")]
    api = stripe_api(base)
    cheaper = api.v1.prices.create(
        {
            "product": "meterline_api_calls",
            "currency": "usd",
            "unit_amount_decimal": "0.05",
            "metadata": {"meterline_meter": "api_calls"},
            "recurring": {"interval": "month", "usage_type": "metered"},
        },
        {"stripe_version": LEGACY_VERSION},
    )
    monkeypatch.setattr(fake.state, "clock", lambda: changed_s)
    [subscription] = fake.state.subscriptions
    new_item = api.v1.subscription_items.create({"subscription": subscription, "price": cheaper.id}).id
    api.v1.subscription_items.delete(old_item)
    monkeypatch.setattr(fake.state, "clock", lambda: now_s)

    def window(start_s: int, value: int) -> WindowAggregate:
        start = start_s * 1000
        return window_aggregate("changer", "api_calls", start, value=value, closed_at=now_s * 1000)

    before, after = window(changed_s - 1800, 7), window(changed_s + 1800, 11)
    know_customers_at(config, ledger_dsn, base)
    produce_aggregates(config, [before, after])
    ends = read_ends(config.kafka.bootstrap, [config.topics.aggregates])
    run_sink(
        stripe_sink(
            legacy_config(config, base), config.kafka.bootstrap, dsn=ledger_dsn, group_id="test-change"
        ),
        config.kafka.bootstrap,
        ends,
    )

    [refused] = read_messages(config.kafka.bootstrap, config.topics.stripe_dlq, 1)
    headers = dict(refused.headers() or [])
    assert headers["error.code"] == b"no_item_at_window_time"
    assert new_item.encode() in headers["error.detail"]
    assert AvroSerde().decode_aggregate(refused.value() or b"") == before
    statuses = {r.window_start: (r.status, r.error_code) for r in ledger(config, ledger_dsn)}
    assert statuses == {
        before.window_start: ("failed", "no_item_at_window_time"),
        after.window_start: ("confirmed", ""),
    }
    assert fake.state.usage_records.get(old_item) is None
    assert [(r["quantity"], r["timestamp"]) for r in fake.state.usage_records[new_item]] == [
        (11, after.window_start // 1000)
    ]


def test_a_legacy_correction_lowers_usage_by_set_where_exact_and_is_refused_where_not(
    config: Config, stripe_fake: tuple[FakeStripe, str], ledger_dsn: str
) -> None:
    """Stripe's usage records take no negative increment; `set` "will overwrite the usage quantity
    at that timestamp" (https://stripe.com/docs/api/usage_records/create). A window one partition
    reported is lowered to its total by a set; one two partitions reported cannot be: refused, with
    the over-billing stated, in the DLQ and the ledger."""
    from tests.support.sinks import run_sink

    fake, base = stripe_fake
    set_up_stripe(config, base, ["legacy"])
    items = subscribe(config, base, ["legacy"])
    now = int(time.time() * 1000) // 60_000 * 60_000
    alone, shared = now - HOUR_MS, now - HOUR_MS + 60_000

    def aggregate(start: int, partition: int, value: int, delta: int, revision: int) -> WindowAggregate:
        return window_aggregate(
            "legacy",
            "api_calls",
            start,
            value=value,
            delta=delta,
            partition=partition,
            revision=revision,
            closed_at=now,
        )

    revisions = [
        aggregate(alone, 0, 10, 10, 0),
        aggregate(alone, 0, 7, -3, 1),  # lowered: set to 7
        aggregate(alone, 0, 8, 1, 2),  # then an increment on top
        aggregate(shared, 0, 5, 5, 0),
        aggregate(shared, 1, 4, 4, 0),
        aggregate(shared, 0, 2, -3, 1),  # partition 1 reported this window too: refused
    ]
    produce_aggregates(config, revisions)
    legacy = legacy_config(config, base)
    run_sink(
        stripe_sink(legacy, config.kafka.bootstrap, dsn=ledger_dsn, group_id="test-lowering"),
        config.kafka.bootstrap,
        read_ends(config.kafka.bootstrap, [config.topics.aggregates]),
    )
    records = fake.state.usage_records[items[("legacy", "api_calls")]]
    assert [(r["timestamp"], r["quantity"], r["action"]) for r in records] == [
        (alone // 1000, 10, "increment"),
        (alone // 1000, 7, "set"),
        (alone // 1000, 1, "increment"),
        (shared // 1000, 5, "increment"),
        (shared // 1000, 4, "increment"),
    ]
    assert fake.state.usage_record_summaries(items[("legacy", "api_calls")])[0]["total_usage"] == 8 + 9
    [refused] = read_messages(config.kafka.bootstrap, config.topics.stripe_dlq, 1)
    headers = dict(refused.headers() or [])
    assert headers["error.code"] == b"cannot_lower_usage" and b"Over-billed by 3" in headers["error.detail"]
    failed = [r for r in ledger(config, ledger_dsn) if r.status == "failed"]
    assert [(r.revision, r.error_code) for r in failed] == [(1, "cannot_lower_usage")]


def test_stripe_sync_refuses_a_meter_of_the_same_event_name_that_bills_otherwise(
    config: Config, stripe_fake: tuple[FakeStripe, str]
) -> None:
    """Issue 35, item 4. A meter cannot be changed "aside from the display name", and an event name
    has one meter (https://docs.stripe.com/billing/subscriptions/usage-based/meters/configure): a
    meter made by hand that counts, or reads another payload key, would mis-bill or refuse every
    event meterline sends. Sync names it and what differs, and makes no price on it."""
    fake, base = stripe_fake
    fake.state.create_meter(
        {"display_name": "by hand", "event_name": "api_calls", "default_aggregation": {"formula": "count"}}
    )
    fake.state.create_meter(
        {
            "display_name": "by hand",
            "event_name": "egress_bytes",
            "default_aggregation": {"formula": "sum"},
            "value_settings": {"event_payload_key": "bytes"},
        }
    )
    made = sync(config, Caller(base, KEY, 5, RateLimiter(1000), "2024-06-20"))
    actions = {(c.kind, c.name): c.action for c in made}
    assert actions[("meter", "api_calls")].startswith(
        "refused: default_aggregation.formula is 'count', not 'sum'. A meter cannot be changed"
    )
    assert actions[("meter", "egress_bytes")].startswith(
        "refused: value_settings.event_payload_key is 'bytes', not 'value'."
    )
    assert actions[("meter", "compute_ms")] == "created"
    assert actions[("price", "meterline_standard_api_calls")] == "refused: its meter is refused (above)"
    assert actions[("price", "meterline_standard_compute_ms")] == "created"
    assert sorted(p["lookup_key"] for p in fake.state.prices.values()) == [
        "meterline_standard_compute_ms",
        "meterline_standard_tokens.large",
        "meterline_standard_tokens.medium",
        "meterline_standard_tokens.small",
        "meterline_team_base",
        "meterline_team_seats",
        "meterline_team_storage",
    ]
    assert refused(made) and not refused([c for c in made if c.kind == "product"])


def test_a_report_pending_past_stripe_s_identifier_window_is_sent_again_only_if_stripe_lacks_it(
    config: Config, stripe_fake: tuple[FakeStripe, str], ledger_dsn: str
) -> None:
    """Issue 35, item 5. Stripe enforces a meter event identifier "within a rolling period of at
    least 24 hours" (https://docs.stripe.com/api/billing/meter-event/create) and keeps idempotency
    keys 24 hours (https://docs.stripe.com/api/idempotent_requests). Three reports were sent 25
    hours ago and their answers lost (pending in the ledger); the fake has forgotten their
    identifiers. One landed: Stripe's totals say so, and it is not sent again (a blind resend
    billed it twice). One did not: it is sent once. Of one, Stripe holds a different amount: it is
    not sent, but failed and dead-lettered with the figures."""
    from meterline.sinks.stripe.calls import meter_payload
    from meterline.sinks.stripe.landed import UNDECIDED
    from meterline.sinks.stripe.ledger import Ledger
    from meterline.sinks.stripe.report import Outcome, Report, Status
    from tests.support.sinks import run_sink

    fake, base = stripe_fake
    customers = ["landed", "lost", "other"]
    set_up_stripe(config, base, customers)
    stripe_customer = {c["metadata"]["meterline_customer_id"]: c["id"] for c in fake.state.customers.values()}
    now_s = int(time.time())
    window = (now_s - 30 * 3600) // 60 * 60 * 1000
    aggregates = {c: window_aggregate(c, "api_calls", window, value=7) for c in customers}
    client = connect(config, ledger_dsn)
    try:
        Ledger(client, "meter_events").record(
            [(a, stripe_customer[c], "api_calls", Outcome(Status.PENDING)) for c, a in aggregates.items()]
        )
    finally:
        client.close()
    fake.state.clock = lambda: now_s - 25 * 3600  # the first sending, whose answers were lost
    for customer, value in (("landed", 7), ("other", 3)):
        report = Report(aggregates[customer], stripe_customer[customer], "api_calls")
        fake.state.record_meter_event(
            {
                "event_name": "api_calls",
                "payload": {**meter_payload(report), "value": str(value)},
                "identifier": report.identifier,
            },
            report.timestamp,
        )
    fake.state.clock = lambda: now_s  # a day on: Stripe forgot the identifiers
    know_customers_at(config, ledger_dsn, base)
    produce_aggregates(config, list(aggregates.values()))
    on_fake = dataclasses.replace(config, stripe=dataclasses.replace(config.stripe, api_base=base))
    run_sink(
        stripe_sink(on_fake, config.kafka.bootstrap, dsn=ledger_dsn, group_id="test-lost-answers"),
        config.kafka.bootstrap,
        read_ends(config.kafka.bootstrap, [config.topics.aggregates]),
    )

    events = Counter(e.customer for e in fake.state.meter_events)
    assert {c: events[stripe_customer[c]] for c in customers} == {"landed": 1, "lost": 1, "other": 1}
    statuses = {r.customer_id: (r.status, r.error_code) for r in ledger(config, ledger_dsn)}
    assert statuses == {
        "landed": ("sent", "decided_by_totals"),
        "lost": ("sent", ""),
        "other": ("failed", UNDECIDED),
    }
    [undecided] = read_messages(config.kafka.bootstrap, config.topics.stripe_dlq, 1)
    headers = dict(undecided.headers() or [])
    assert headers["error.code"] == UNDECIDED.encode()
    assert b"Stripe's total of the window 3, settled in the ledger 0, pending 7" in headers["error.detail"]


def test_stripe_sync_makes_prices_usage_records_can_bill_in_usage_records_mode(
    config: Config, stripe_fake: tuple[FakeStripe, str]
) -> None:
    """Issue 35, item 1. Usage records bill only "a price with a usage_type of metered without a
    specified meter", which only a Stripe-Version before 2025-03-31.basil creates
    (https://docs.stripe.com/changelog/basil/2025-03-31/deprecate-legacy-usage-based-billing).
    In usage_records mode sync makes those, pinned to stripe.legacy_api_version; the prices it
    makes for meter events carry the meter, and a usage record on their items is refused."""
    fake, base = stripe_fake
    set_up_stripe(config, base, ["legacy"])  # `stripe sync` for meter events
    [metered] = fake.state.list_prices(["meterline_standard_api_calls"])
    assert metered["recurring"]["meter"]
    sync(legacy_config(config, base), Caller(base, KEY, 5, RateLimiter(1000), LEGACY_VERSION))
    [price] = fake.state.list_prices(["meterline_standard_api_calls"])  # replaced under the key
    assert price["recurring"] == {
        "interval": "month",
        "interval_count": 1,
        "usage_type": "metered",
        "aggregate_usage": "sum",
    }
    api = stripe.StripeClient(KEY, base_addresses={"api": base}, max_network_retries=0)
    [customer] = fake.state.customers
    subscription = api.v1.subscriptions.create(
        {"customer": customer, "items": [{"price": price["id"]}, {"price": metered["id"]}]}
    )
    legacy_item, meter_item = (i["id"] for i in subscription["items"]["data"])
    record = {"quantity": 5, "timestamp": fake.state.now(), "action": "increment"}
    options = {"stripe_version": LEGACY_VERSION}
    assert api.raw_request("post", f"/v1/subscription_items/{legacy_item}/usage_records", **record, **options)
    with pytest.raises(stripe.InvalidRequestError, match="is attached to a meter"):
        api.raw_request("post", f"/v1/subscription_items/{meter_item}/usage_records", **record, **options)
