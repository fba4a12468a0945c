"""What Stripe holds for our customers, per (customer, meter), read the way Stripe bills them: meter
event summaries (`StripeTotals`), or on legacy accounts usage record summaries per billing period
(`UsageRecordTotals`); `totals_for` picks the reader of `stripe.mode` once. The reconciler and
replay compare these with ClickHouse, the demo prints them, and the sink asks them whether a report
whose answer was lost landed (sinks.stripe.landed).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Protocol

from meterline.core.config import Config
from meterline.sinks.stripe.calls import Caller
from meterline.sinks.stripe.directory import Directory, Known


def meter_ids(caller: Caller, config: Config) -> dict[str, str]:
    """meter name -> Stripe meter id, for the configured meters Stripe has."""
    listed, _ = caller.retrying(
        lambda: caller.client.v1.billing.meters.list({"status": "active", "limit": 100})
    )
    by_event = {m.event_name: m.id for m in listed.auto_paging_iter()}
    return {
        name: by_event[m.stripe_event_name]
        for name, m in config.meters.items()
        if m.stripe_event_name in by_event
    }


Period = tuple[int, int]
"""[start, end) in epoch ms."""


class TotalsReader(Protocol):
    per_window: bool
    """Whether Stripe's totals can be read over any minute-aligned span (meter events); else only
    per billing period, as Stripe summarizes them."""
    source: str
    """What the totals are, as reconcile records it."""

    def periods(self, customer: str, meter: str, start_ms: int, end_ms: int) -> dict[Period, int]:
        """Stripe's totals over the periods it sums, of those that begin in [start, end)."""

    def total(self, customer: str, meter: str, start_ms: int, end_ms: int) -> int: ...

    def by_hour(
        self, customer: str, meter: str, start_ms: int, end_ms: int, grouping: str | None = "hour"
    ) -> dict[int, int]: ...


class StripeTotals:
    """Stripe's aggregated values for meterline customers and meters (meter event summaries)."""

    per_window = True
    source = "meter_event_summaries"

    def __init__(self, caller: Caller, config: Config, known: Known | None = None) -> None:
        """`known`: the customers known without searching (KnownCustomers.find)."""
        self.caller = caller
        self.meters = meter_ids(caller, config)
        self.directory = Directory(config.stripe, caller, known)

    def periods(self, customer: str, meter: str, start_ms: int, end_ms: int) -> dict[Period, int]:
        total = self.total(customer, meter, start_ms, end_ms)
        return {(start_ms, end_ms): total} if total else {}

    def total(self, customer: str, meter: str, start_ms: int, end_ms: int) -> int:
        return sum(self.by_hour(customer, meter, start_ms, end_ms, grouping=None).values())

    def by_hour(
        self, customer: str, meter: str, start_ms: int, end_ms: int, grouping: str | None = "hour"
    ) -> dict[int, int]:
        """Bucket start (epoch ms) -> value, over [start, end) widened to whole minutes, or with a
        grouping to whole hours or UTC days, as Stripe requires ("For hourly granularity, start and
        end times must align with hour boundaries", https://docs.stripe.com/api/billing/meter-event-summary/list):
        give aligned bounds to get exactly them. Empty when Stripe knows neither the customer nor
        the meter."""
        stripe_customer = self.directory.customer(customer)
        meter_id = self.meters.get(meter)
        if stripe_customer is None or meter_id is None:
            return {}
        step = {"hour": 3_600, "day": 86_400}.get(grouping or "", 60)
        params = {
            "customer": stripe_customer,
            "start_time": start_ms // 1000 // step * step,
            "end_time": -(-end_ms // (1000 * step)) * step,
        }
        if grouping:
            params["value_grouping_window"] = grouping
        summaries, _ = self.caller.retrying(
            lambda: self.caller.client.v1.billing.meters.event_summaries.list(meter_id, params)  # type: ignore[arg-type]
        )
        found: dict[int, int] = {}
        for summary in summaries.auto_paging_iter():
            found[int(summary.start_time) * 1000] = found.get(int(summary.start_time) * 1000, 0) + int(
                summary.aggregated_value
            )
        return {k: v for k, v in found.items() if v}


def meter_totals(
    caller: Caller, config: Config, customers: Iterable[str], start_ms: int, end_ms: int
) -> dict[tuple[str, str], int]:
    """Stripe's aggregated value per (meterline customer, meter) over [start, end). Customers
    Stripe does not know are left out."""
    stripe = StripeTotals(caller, config)
    totals = {(c, m): stripe.total(c, m, start_ms, end_ms) for c in customers for m in stripe.meters}
    return {k: v for k, v in totals.items() if v}


class UsageRecordTotals:
    """Legacy accounts: the usage record summaries of the subscription items pricing a meter (after a
    plan change, the one added and any still billing). One summary per billing period of the item,
    newest first (https://stripe.com/docs/api/usage_records): never every period the item ever had,
    and each is its own bounds, which are a calendar month only for an item started on the 1st."""

    per_window = False
    source = "usage_records"

    def __init__(self, caller: Caller, config: Config, known: Known | None = None) -> None:
        self.caller = caller
        self.directory = Directory(config.stripe, caller, known)

    def periods(self, customer: str, meter: str, start_ms: int, end_ms: int) -> dict[Period, int]:
        stripe_customer = self.directory.customer(customer)
        items = () if stripe_customer is None else self.directory.subscription_items(stripe_customer, meter)
        totals: dict[Period, int] = {}
        for item in items:
            path = f"/v1/subscription_items/{item.id}/usage_record_summaries"
            response, _ = self.caller.retrying(
                functools.partial(
                    self.caller.client.raw_request, "get", path, stripe_version=self.caller.legacy_version
                )
            )
            for summary in json.loads(response.body)["data"]:
                period = (int(summary["period"]["start"]) * 1000, int(summary["period"]["end"]) * 1000)
                if start_ms <= period[0] < end_ms:
                    totals[period] = totals.get(period, 0) + int(summary["total_usage"])
        return totals

    def total(self, customer: str, meter: str, start_ms: int, end_ms: int) -> int:
        return sum(self.periods(customer, meter, start_ms, end_ms).values())

    def by_hour(
        self, customer: str, meter: str, start_ms: int, end_ms: int, grouping: str | None = "hour"
    ) -> dict[int, int]:
        """Usage records have no hours: nothing to drill into."""
        return {}


def totals_for(config: Config, caller: Caller, known: Known | None = None) -> TotalsReader:
    """The reader of `stripe.mode`'s totals."""
    if config.stripe.mode == "usage_records":
        return UsageRecordTotals(caller, config, known)
    return StripeTotals(caller, config, known)
