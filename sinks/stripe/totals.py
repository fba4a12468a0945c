"""What Stripe holds for our customers: meter event summaries per (customer, meter), read the way
Stripe bills them. The reconciler compares these with ClickHouse, the demo prints them, and the
sink asks them whether a report whose answer was lost landed (sinks.stripe.landed).
"""

from __future__ import annotations

from collections.abc import Iterable

from core.config import Config
from sinks.stripe.calls import Caller
from sinks.stripe.directory import Directory, Known


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


class StripeTotals:
    """Stripe's aggregated values for meterline customers and meters (meter event summaries)."""

    def __init__(self, caller: Caller, config: Config, known: Known | None = None) -> None:
        """`known`: the customers known without searching (KnownCustomers.find)."""
        self.caller = caller
        self.meters = meter_ids(caller, config)
        self.directory = Directory(config.stripe, caller, known)

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
