"""Which billing period a command means: Stripe bills each subscription item over its own period
(`items.data[].current_period_start/end` since API 2025-03-31.basil), which is a calendar month
only when the subscription started on the 1st at midnight UTC. The periods of a customer come from
the `customer.subscription.*` webhooks (`stripe_subscription_items`); periods are monthly, as the
prices `stripe sync` creates recur monthly.

`--period` takes `YYYY-MM` (the UTC calendar month, as before, and the only choice for a customer
whose subscription meterline has not heard of), `current`, `previous`, or `YYYY-MM-DD` (the
billing period that day falls in). No period at all means the current billing period where one
is known, else the UTC month of now (the dashboard's default). Usage over a period so far is
projected to its end here too (`projected_usage`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING

from meterline.core.errors import MeterlineError
from meterline.core.months import anchor_of, monthly_period

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


class PeriodError(MeterlineError):
    pass


def period_bounds(period: str) -> tuple[int, int]:
    """[start, end) in epoch ms of a billing period written YYYY-MM (a UTC calendar month)."""
    try:
        start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise PeriodError(f"period {period!r}: expected YYYY-MM, e.g. 2026-11") from None
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def projected_usage(
    usage: Mapping[str, int], start_ms: int, end_ms: int, now_ms: int, levels: Collection[str] = ()
) -> dict[str, int]:
    """Usage at the end of the period if it goes on at the rate so far (whole base units, down).

    A period that is over is what it was; one not begun projects nothing. A level (`levels`: a
    peak, a latest level) does not grow with time: it is projected as it stands."""
    if now_ms >= end_ms:
        return dict(usage)
    elapsed = now_ms - start_ms
    if elapsed <= 0:
        return {meter: 0 for meter in usage}
    scale = Decimal(end_ms - start_ms) / Decimal(elapsed)
    return {
        meter: units if meter in levels else int((Decimal(units) * scale).to_integral_value(ROUND_FLOOR))
        for meter, units in usage.items()
    }


@dataclass(frozen=True)
class Period:
    start_ms: int
    end_ms: int
    label: str
    """How commands name it: "2026-11 (UTC month)", "2026-11-15 to 2026-12-15 (billing period)"."""
    subscription: str = ""
    """The Stripe subscription whose period it is; empty for a UTC month."""


def is_month(spec: str) -> bool:
    """Whether `spec` is written YYYY-MM: a UTC calendar month, the same for every customer."""
    return re.fullmatch(r"\d{4}-\d{2}", spec) is not None


def month_period(month: str) -> Period:
    start, end = period_bounds(month)
    return Period(start, end, f"{month} (UTC month)")


def check_spec(spec: str) -> str:
    """`spec` if it names a period in one of the accepted forms, checked before anything connects."""
    if spec in ("current", "previous"):
        return spec
    for shape, form in ((r"\d{4}-\d{2}", "%Y-%m"), (r"\d{4}-\d{2}-\d{2}", "%Y-%m-%d")):
        try:
            if re.fullmatch(shape, spec) and datetime.strptime(spec, form):
                return spec
        except ValueError:
            continue
    raise PeriodError(f"period {spec!r}: expected YYYY-MM (a UTC month), current, previous, or YYYY-MM-DD")


def resolve(client: Client, customer: str, spec: str, now_ms: int) -> Period:
    """The period `spec` names for `customer` (see the module's docstring)."""
    if is_month(spec):
        return month_period(spec)
    if spec:
        check_spec(spec)
    known = current_billing_period(client, customer)
    if known is None and not spec:
        return month_period(datetime.fromtimestamp(now_ms / 1000, UTC).strftime("%Y-%m"))
    if known is None:
        raise PeriodError(
            f"no billing period known for {customer!r} (no customer.subscription.* webhook for it yet): "
            "use YYYY-MM for the UTC month"
        )
    subscription, start_s, end_s = known
    anchor = anchor_of(start_s, end_s)  # the periods run monthly from the one Stripe last reported
    if spec in ("", "current"):
        target = now_ms // 1000
    elif spec == "previous":
        target = start_s - 1
    else:
        target = int(datetime.strptime(spec, "%Y-%m-%d").replace(tzinfo=UTC).timestamp())  # checked
    if not start_s <= target < end_s:  # Stripe's own period where it covers the target
        start_s, end_s = monthly_period(anchor, target)
    label = f"{_day(start_s)} to {_day(end_s)} (billing period of {subscription})"
    return Period(start_s * 1000, end_s * 1000, label, subscription)


def current_billing_period(client: Client, customer: str) -> tuple[str, int, int] | None:
    """(subscription, period start, end in epoch s) as the latest subscription event stated it."""
    rows = client.query(
        "SELECT subscription_id, toUnixTimestamp(current_period_start), toUnixTimestamp(current_period_end) "
        "FROM stripe_subscription_items FINAL WHERE customer_id = %(customer)s "
        "AND status IN ('active', 'trialing', 'past_due') "
        "ORDER BY event_created DESC, current_period_end DESC LIMIT 1",
        parameters={"customer": customer},
    ).result_rows
    if not rows:
        return None
    subscription, start, end = rows[0]
    return str(subscription), int(start), int(end)


def _day(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M")
