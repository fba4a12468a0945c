"""What Stripe holds for our customers: meter event summaries per (customer, meter), read the way
Stripe bills them. The reconciler compares these with ClickHouse; the demo prints them.
"""

from __future__ import annotations

from collections.abc import Iterable

from meterline.config import Config
from sinks.stripe.calls import Caller
from sinks.stripe.directory import Directory


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


def meter_totals(
    caller: Caller, config: Config, customers: Iterable[str], start_ms: int, end_ms: int
) -> dict[tuple[str, str], int]:
    """Stripe's aggregated value per (meterline customer, meter) over [start, end), widened to whole
    minutes as Stripe requires. Customers Stripe does not know are left out."""
    meters = meter_ids(caller, config)
    directory = Directory(config.stripe, caller)
    start, end = start_ms // 60_000 * 60, -(-end_ms // 60_000) * 60
    totals: dict[tuple[str, str], int] = {}
    for customer in customers:
        stripe_customer = directory.customer(customer)
        if stripe_customer is None:
            continue
        for meter, meter_id in meters.items():
            params = {"customer": stripe_customer, "start_time": start, "end_time": end}
            summaries, _ = caller.retrying(
                lambda m=meter_id, p=params: caller.client.v1.billing.meters.event_summaries.list(m, p)  # type: ignore[misc]
            )
            value = sum(int(s.aggregated_value) for s in summaries.auto_paging_iter())
            if value:
                totals[(customer, meter)] = value
    return totals
