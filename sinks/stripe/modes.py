"""The three ways the Stripe sink reports window revisions (`stripe.mode`), one object each, picked
once by `reporting_mode`, as a transport is picked once for an HTTP client:

- `meter_events`: a meter event of the revision's delta, one call each, one in flight per
  (customer, meter) in offset order; a report whose answer was lost and which is older than
  Stripe's 24 hours of identifiers is decided from Stripe's totals (sinks.stripe.landed).
- `meter_event_stream`: the same events, 100 per v2 stream call.
- `usage_records` (legacy): a usage record on the subscription item that billed the meter at the
  window's time; a negative delta `set`s the window's total where that is exact, and is refused
  where it is not. A lost answer is resent under its Idempotency-Key: there is no identifier.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple, Protocol

from meterline.schemas.records import WindowAggregate
from meterline.sinks.stripe.calls import Caller
from meterline.sinks.stripe.directory import Directory, item_at
from meterline.sinks.stripe.ledger import Ledger
from meterline.sinks.stripe.report import STREAM_BATCH, Outcome, Reason, Report
from meterline.sinks.stripe.webhooks.role import subscriptions_changed_since

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

SUBSCRIPTION_LOOK_S = 5.0  # how often the legacy mode looks for subscription events


class Refusal(NamedTuple):
    """Why a revision is not reported: Stripe would refuse it for good."""

    reason: Reason
    detail: str


class ReportingMode(Protocol):
    name: str
    checks_lost_answers: bool
    """Whether a report pending past Stripe's 24 hours is decided from Stripe's totals before it is
    sent again: meter events carry an identifier Stripe forgets, and totals per window."""

    def prepare(self) -> None:
        """Before each batch."""

    def report(self, aggregate: WindowAggregate, stripe_customer: str, event_name: str) -> Report | Refusal:
        """What is sent for the revision, or why nothing is."""

    def refuse_in_batch(self, reports: Sequence[Report]) -> dict[str, Refusal]:
        """identifier -> refusal, for reports that cannot go out beside others of their batch."""

    def send(self, reports: Sequence[Report]) -> dict[str, Outcome]:
        """identifier -> how each ended."""

    def close(self) -> None:
        """The threads it sends on, once the sink stops."""


def _in_order_per_pair(
    pool: ThreadPoolExecutor, reports: Sequence[Report], call: Callable[[Report], Outcome]
) -> dict[str, Outcome]:
    """One call in flight per (customer, meter), in offset order; the pairs concurrently."""
    groups: dict[tuple[str, str], list[Report]] = defaultdict(list)
    for report in reports:
        groups[(report.aggregate.customer_id, report.aggregate.meter)].append(report)

    def run(group: list[Report]) -> list[tuple[str, Outcome]]:
        return [(r.identifier, call(r)) for r in group]

    return {key: outcome for done in pool.map(run, groups.values()) for key, outcome in done}


class MeterEvents:
    name = "meter_events"
    checks_lost_answers = True

    def __init__(self, caller: Caller, pool: ThreadPoolExecutor) -> None:
        self.caller = caller
        self.pool = pool

    def prepare(self) -> None:
        pass

    def report(self, aggregate: WindowAggregate, stripe_customer: str, event_name: str) -> Report | Refusal:
        return Report(aggregate, stripe_customer, event_name)

    def refuse_in_batch(self, reports: Sequence[Report]) -> dict[str, Refusal]:
        return {}

    def send(self, reports: Sequence[Report]) -> dict[str, Outcome]:
        return _in_order_per_pair(self.pool, reports, self.caller.meter_event)

    def close(self) -> None:
        self.pool.shutdown()


class MeterEventStream(MeterEvents):
    name = "meter_event_stream"

    def send(self, reports: Sequence[Report]) -> dict[str, Outcome]:
        outcomes: dict[str, Outcome] = {}
        for first in range(0, len(reports), STREAM_BATCH):
            chunk = reports[first : first + STREAM_BATCH]
            outcome = self.caller.stream(chunk)
            outcomes.update({r.identifier: outcome for r in chunk})
        return outcomes


class UsageRecords:
    """Legacy usage records (`Stripe-Version: stripe.legacy_api_version`), on the subscription item
    that billed the meter at the window's time (sinks.stripe.directory.item_at)."""

    name = "usage_records"
    checks_lost_answers = False

    def __init__(
        self, caller: Caller, pool: ThreadPoolExecutor, directory: Directory, ledger: Ledger, client: Client
    ) -> None:
        self.caller = caller
        self.pool = pool
        self.directory = directory
        self.ledger = ledger
        self.client = client
        self._subscriptions_seen = 0  # epoch s of the newest subscription event looked at
        self._subscriptions_looked_at = float("-inf")

    def prepare(self) -> None:
        """The subscription events the webhook consumer stored since the last look (at most every
        few seconds): the items cached for those customers may be gone (a plan change replaces
        them), so the directory looks them up again."""
        if time.monotonic() - self._subscriptions_looked_at < SUBSCRIPTION_LOOK_S:
            return
        self._subscriptions_looked_at = time.monotonic()
        changed = subscriptions_changed_since(self.client, self._subscriptions_seen)
        if changed:
            self.directory.forget_items(changed)
            self._subscriptions_seen = max(changed.values())

    def report(self, aggregate: WindowAggregate, stripe_customer: str, event_name: str) -> Report | Refusal:
        items = self.directory.subscription_items(stripe_customer, aggregate.meter)
        if not items:
            return Refusal(
                Reason.NO_SUBSCRIPTION_ITEM,
                f"{stripe_customer} has no active subscription item priced for {aggregate.meter}",
            )
        billing = item_at(items, aggregate.window_start // 1000)
        if billing is None:
            at = datetime.fromtimestamp(aggregate.window_start / 1000, UTC)
            return Refusal(
                Reason.NO_ITEM_AT_WINDOW_TIME,
                f"no subscription item of {stripe_customer} billed {aggregate.meter} at the window's "
                f"time ({at:%Y-%m-%d %H:%M} UTC): the item of that time was removed (a plan change), "
                f"and {', '.join(i.id for i in items)} would bill it at another price",
            )
        if aggregate.delta >= 0:
            return Report(aggregate, stripe_customer, event_name, billing.id)
        # Stripe takes no negative increment; `set` overwrites the quantity at a timestamp
        # (https://stripe.com/docs/api/usage_records/create), which is the window's own: exact
        # when this partition alone reported the window (see also refuse_in_batch).
        others = self.ledger.other_partitions_reported(aggregate)
        if others:
            return cannot_lower(aggregate, others)
        return Report(aggregate, stripe_customer, event_name, billing.id, sets_total=True)

    def refuse_in_batch(self, reports: Sequence[Report]) -> dict[str, Refusal]:
        """A `set` is refused too where another partition's revision of its window is in the same
        batch: the ledger does not have it yet, and the set would overwrite it."""
        partitions: dict[tuple[str, str, int], set[int]] = defaultdict(set)
        for r in reports:
            partitions[_window(r.aggregate)].add(r.aggregate.source_partition)
        refused = {}
        for r in reports:
            others = sorted(partitions[_window(r.aggregate)] - {r.aggregate.source_partition})
            if r.sets_total and others:
                refused[r.identifier] = cannot_lower(r.aggregate, others)
        return refused

    def send(self, reports: Sequence[Report]) -> dict[str, Outcome]:
        return _in_order_per_pair(self.pool, reports, self.caller.usage_record)

    def close(self) -> None:
        self.pool.shutdown()


def _window(aggregate: WindowAggregate) -> tuple[str, str, int]:
    return aggregate.customer_id, aggregate.meter, aggregate.window_start


def cannot_lower(aggregate: WindowAggregate, others: Sequence[int]) -> Refusal:
    return Refusal(
        Reason.CANNOT_LOWER_USAGE,
        f"a correction of {aggregate.delta} for a window partitions {list(others)} also report: Stripe's "
        "usage records lower usage only by `set`, which would overwrite theirs. Over-billed by "
        f"{-aggregate.delta} until corrected by hand",
    )


def reporting_mode(
    mode: str, caller: Caller, concurrency: int, directory: Directory, ledger: Ledger, client: Client
) -> ReportingMode:
    """The mode `stripe.mode` names, sending on `concurrency` threads."""
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="stripe")
    if mode == "usage_records":
        return UsageRecords(caller, pool, directory, ledger, client)
    return MeterEventStream(caller, pool) if mode == "meter_event_stream" else MeterEvents(caller, pool)
