"""The billing review of the guide's Step 7, per UTC month: did customers pay, how long usage took
to reach Stripe, did Stripe's totals drift from ours, did the plans fit the usage, and what was not
billed. The figures come from what the pipeline already keeps (reconciler.review.queries reads
them); this module holds the records and the arithmetic, pure, so that a test checks them by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from meterline.core.ratecard import MeterPrice, Plan
from meterline.reconciler.billing.pricing import billed_quantity
from meterline.reconciler.checks.compare import Difference, Unbilled
from meterline.streams.windows import period_answer, running

EARLY_DAY = 10
"""Crossing the included quantity on or before this day of the month is crossing it early."""
FAR_BELOW = Decimal("0.25")
"""A customer whose month used less than this share of the included quantity is far below it."""
PERCENTILES = (Decimal("0.5"), Decimal("0.95"), Decimal("0.99"))


def months_ending(month: str, count: int) -> list[str]:
    """The `count` UTC months ending with `month` (YYYY-MM), oldest first."""
    year, number = (int(part) for part in month.split("-"))
    first = year * 12 + number - 1 - (count - 1)
    return [f"{m // 12:04d}-{m % 12 + 1:02d}" for m in range(first, first + count)]


@dataclass(frozen=True)
class Payments:
    """Invoices of the month by their latest payment outcome (`invoice.paid`, `invoice.payment_failed`)."""

    paid: int
    failed: int
    failing: tuple[tuple[str, str], ...]
    """(customer, invoice) of every invoice whose latest outcome is a failure."""

    @property
    def success_percent(self) -> Decimal | None:
        attempted = self.paid + self.failed
        return (Decimal(self.paid) * 100 / attempted).quantize(Decimal("0.1")) if attempted else None


def payments(latest: Iterable[tuple[str, str, str]]) -> Payments:
    """From (invoice, customer, latest outcome) rows."""
    rows = sorted(latest)
    return Payments(
        paid=sum(outcome == "paid" for _, _, outcome in rows),
        failed=sum(outcome == "failed" for _, _, outcome in rows),
        failing=tuple(
            sorted((customer, invoice) for invoice, customer, outcome in rows if outcome == "failed")
        ),
    )


@dataclass(frozen=True)
class SlowWindow:
    customer: str
    meter: str
    window_start: int
    """Epoch ms."""
    latency_ms: int


@dataclass(frozen=True)
class Latency:
    """From a window's close to Stripe accepting its report (the ledger's `sent` or `confirmed`)."""

    windows: int
    percentiles_ms: tuple[int, ...]
    """At PERCENTILES (p50, p95, p99), each the value at index floor(q * n) of the sorted latencies
    (ClickHouse's quantileExact, computed over a month of windows in place); empty when nothing
    was reported."""
    worst: tuple[SlowWindow, ...]


@dataclass(frozen=True)
class Drift:
    """The month's latest stored reconciliation: Stripe's total against ours, and the hours that differ."""

    run_id: str
    run_at: int
    """Epoch ms."""
    total: Difference[str]
    hours: tuple[Difference[tuple[str, str, int]], ...]
    """(customer, meter, hour start in epoch ms) of every hour Stripe's total differs from ours."""


@dataclass(frozen=True)
class Fit:
    """How one plan's included quantity of one meter fitted its customers' month."""

    plan: str
    meter: str
    included: Decimal
    """Billed units (GB, calls)."""
    customers: int
    """Customers on the plan with usage of the meter in the month."""
    crossed: tuple[tuple[str, int], ...]
    """(customer, day of the month its usage went past the included quantity)."""
    far_below: tuple[str, ...]


def crossing_day(daily: Sequence[tuple[int, int]], price: MeterPrice, aggregation: str = "sum") -> int | None:
    """The first day (of the month, from 1) on which the month's usage so far, in billed units,
    exceeds the included quantity: the day overage began. `daily` is (day, base units): each day's
    answer by the meter's `aggregation` (a sum, a peak, a latest level: streams.windows.running)."""
    used = 0
    for day, quantity in sorted(daily):
        used = running(aggregation, used, quantity)
        if billed_quantity(price, used) > price.included:
            return day
    return None


def fits(
    plans: Mapping[str, Plan],
    daily: Mapping[tuple[str, str], Sequence[tuple[int, int]]],
    levels: Mapping[str, str] | None = None,
) -> tuple[Fit, ...]:
    """Per plan and meter with an included quantity: who crossed it and when, who stayed far below.
    `plans` is each customer's plan; `daily` each (customer, meter)'s usage per day of the month;
    `levels` the meters billed by one window's value (Config.levels: `max`, `last`)."""
    found: dict[tuple[str, str], tuple[MeterPrice, list[tuple[str, int]], list[str], set[str]]] = {}
    for (customer, meter), days in sorted(daily.items()):
        plan = plans[customer]
        price = plan.prices.get(meter)
        if price is None or not price.included:
            continue
        _, crossed, far_below, customers = found.setdefault((plan.name, meter), (price, [], [], set()))
        customers.add(customer)
        aggregation = (levels or {}).get(meter, "sum")
        day = crossing_day(days, price, aggregation)
        if day is not None:
            crossed.append((customer, day))
        elif billed_quantity(price, period_answer(aggregation, dict(days))) < price.included * FAR_BELOW:
            far_below.append(customer)
    return tuple(
        Fit(plan, meter, price.included, len(customers), tuple(crossed), tuple(far_below))
        for (plan, meter), (price, crossed, far_below, customers) in sorted(found.items())
    )


@dataclass(frozen=True)
class MonthReview:
    period: str
    payments: Payments
    latency: Latency
    drift: Drift | None
    """None: no reconciliation of the month is stored."""
    fits: tuple[Fit, ...]
    unbilled: tuple[Unbilled, ...]
    dead_letters: Mapping[str, int]


@dataclass(frozen=True)
class Review:
    months: tuple[MonthReview, ...]
    """Oldest first."""

    @property
    def early_every_month(self) -> tuple[tuple[str, str, str], ...]:
        """(plan, meter, customer) that crossed the included quantity by EARLY_DAY in every month
        reviewed: a plan too small for them, whom a larger one would serve."""
        early: list[set[tuple[str, str, str]]] = [
            {
                (f.plan, f.meter, customer)
                for f in month.fits
                for customer, day in f.crossed
                if day <= EARLY_DAY
            }
            for month in self.months
        ]
        return tuple(sorted(set.intersection(*early))) if early else ()
