"""Levels from the aggregates to Stripe and ClickHouse (issue 37): Stripe's `sum` meter gets each
revision's contribution to its period's answer (sinks.stripe.levels), so that the period's sum is
the peak of a `max` meter and the latest level of a `last` meter, as Stripe's sum formula bills
"the sum of all usage values for the billing period"
(https://docs.stripe.com/billing/subscriptions/usage-based/recording-usage), a fall sent as a
negative value ("You can also fix incorrectly recorded usage data by recording negative
quantities", https://docs.stripe.com/billing/subscriptions/usage-based/meters/configure);
ClickHouse answers the same. The sinks run in this process on the broker, the fake and
the embedded ClickHouse."""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import TYPE_CHECKING

from meterline.compose import clickhouse_sink, stripe_sink
from meterline.core.config import Config
from meterline.core.kafka import read_ends
from meterline.core.months import calendar_month
from meterline.schemas.records import WindowAggregate
from meterline.sinks.clickhouse import usage_windows
from meterline.sinks.clickhouse.client import connect
from meterline.sinks.stripe.fake import FakeStripe
from meterline.sinks.stripe.ledger import Entry, Ledger
from meterline.sinks.stripe.report import Outcome, Status, identifier
from tests.support.records import window_aggregate
from tests.support.sinks import run_sink
from tests.support.stripe import set_up_stripe
from tests.support.stripe_sink import know_customers_at, produce_aggregates

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

MINUTE = 60_000


def with_peak(config: Config, base: str, aggregation: str = "max") -> Config:
    """compute_ms billed by its peak (`aggregation = "max"`), or another level, on the fake at `base`."""
    meters = {
        **config.meters,
        "compute_ms": dataclasses.replace(config.meters["compute_ms"], aggregation=aggregation),
    }
    return dataclasses.replace(
        config, meters=meters, stripe=dataclasses.replace(config.stripe, api_base=base)
    )


def windows_this_month() -> list[int]:
    """Three window starts a minute apart in the current UTC month, none more than 5 minutes ahead
    of now (Stripe's limit): from ten minutes ago, or from the month's start if that is later."""
    now = int(time.time() * 1000) // MINUTE * MINUTE  # read once: the windows' place, not a duration
    first = max(now - 10 * MINUTE, calendar_month(now)[0])
    return [first + n * MINUTE for n in range(3)]


def peak(
    customer: str, start: int, value: int, revision: int = 0, delta: int | None = None
) -> WindowAggregate:
    return window_aggregate(customer, "compute_ms", start, value=value, revision=revision, delta=delta)


def reported(fake: FakeStripe, aggregates: list[WindowAggregate]) -> list[int]:
    """What Stripe received for each of `aggregates`, in their order."""
    values = {event.identifier: event.value for event in fake.state.meter_events}
    return [values[identifier(a.identity)] for a in aggregates]


def test_each_revision_sends_what_it_adds_to_the_peak_and_stripe_sums_to_it(
    config: Config, stripe_fake: tuple[FakeStripe, str], ledger_dsn: str
) -> None:
    fake, base = stripe_fake
    config = with_peak(config, base)
    set_up_stripe(config, base, ["team"])
    know_customers_at(config, ledger_dsn, base)
    w1, w2, w3 = windows_this_month()
    first = [peak("team", w1, 10), peak("team", w2, 7), peak("team", w3, 15)]
    # Late events: w1 rises to 20 (above the peak of 15), w2 to 12 (below it).
    late = [peak("team", w1, 20, revision=1, delta=10), peak("team", w2, 12, revision=1, delta=5)]

    produce_aggregates(config, first)
    run_sink(stripe_sink(config, config.kafka.bootstrap, dsn=ledger_dsn, group_id="peaks"), *ends(config))
    assert reported(fake, first) == [10, 0, 5]
    # A crash after w1's revision 1 was written pending with its contribution, before Stripe had it:
    # the sink sends what the row says, though the ledger now holds the peak it makes (20).
    client = connect(config, ledger_dsn)
    try:
        Ledger(client, "meter_events").record([Entry(late[0], "", "compute_ms", Outcome(Status.PENDING), 5)])
    finally:
        client.close()
    produce_aggregates(config, late)
    run_sink(stripe_sink(config, config.kafka.bootstrap, dsn=ledger_dsn, group_id="peaks"), *ends(config))

    assert reported(fake, first + late) == [10, 0, 5, 5, 0]
    assert sum(reported(fake, first + late)) == 20  # what Stripe's sum meter bills: the peak

    client = in_clickhouse(config, ledger_dsn)
    try:
        month = calendar_month(w1)
        assert usage_windows.totals(client, *month, levels=config.levels) == {("team", "compute_ms"): 20}
        assert usage_windows.totals(client, *month, levels={}) == {("team", "compute_ms"): 20 + 12 + 15}
        daily = client.query("SELECT max(peak), sum(quantity) FROM usage_daily WHERE meter = 'compute_ms'")
        assert daily.result_rows == [(20, 47)]  # the analysts' rollup: the peak beside the sum
    finally:
        client.close()


def test_a_latest_level_rises_and_falls_at_stripe_and_an_earlier_window_moves_nothing(
    config: Config, stripe_fake: tuple[FakeStripe, str], ledger_dsn: str
) -> None:
    fake, base = stripe_fake
    config = with_peak(config, base, "last")
    set_up_stripe(config, base, ["team"])
    know_customers_at(config, ledger_dsn, base)
    w1, w2, w3 = windows_this_month()
    first = [peak("team", w1, 10), peak("team", w2, 7)]
    # A late event lowers w2 (a later event of a lower level), one raises w1, then w3 opens at 4.
    late = [
        peak("team", w2, 3, revision=1, delta=-4),
        peak("team", w1, 20, revision=1, delta=10),
        peak("team", w3, 4),
    ]
    produce_aggregates(config, first + late)
    run_sink(stripe_sink(config, config.kafka.bootstrap, dsn=ledger_dsn, group_id="lasts"), *ends(config))
    assert reported(fake, first + late) == [10, -3, -4, 0, 1]
    assert sum(reported(fake, first + late)) == 4  # what Stripe's sum meter bills: w3's level

    client = in_clickhouse(config, ledger_dsn)
    try:
        month = calendar_month(w1)
        assert usage_windows.totals(client, *month, levels=config.levels) == {("team", "compute_ms"): 4}
        # The analysts' rollup: the month's level is its latest day's `last` (the windows may span two)
        daily = client.query(
            "SELECT argMax(last, day), max(peak) FROM usage_daily WHERE meter = 'compute_ms'"
        )
        assert daily.result_rows == [(4, 20)]
    finally:
        client.close()


def in_clickhouse(config: Config, dsn: str) -> Client:
    """A client of ClickHouse once its sink, in a group of its own, has written every aggregate."""
    run_sink(
        clickhouse_sink(config, config.kafka.bootstrap, dsn=dsn, group_id=f"ch-{uuid.uuid4().hex[:8]}"),
        *ends(config),
    )
    return connect(config, dsn)


def ends(config: Config) -> tuple[str, dict[tuple[str, int], int]]:
    return config.kafka.bootstrap, read_ends(config.kafka.bootstrap, [config.topics.aggregates])
