"""Usage over a period: a UTC month's bounds (`period_bounds`) and usage projected to a period's
end. The totals themselves are read by sinks.clickhouse.usage_windows."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal

from core.errors import MeterlineError


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


def projected_usage(usage: Mapping[str, int], start_ms: int, end_ms: int, now_ms: int) -> dict[str, int]:
    """Usage at the end of the period if it goes on at the rate so far (whole base units, down).

    A period that is over is what it was; one not begun projects nothing."""
    if now_ms >= end_ms:
        return dict(usage)
    elapsed = now_ms - start_ms
    if elapsed <= 0:
        return {meter: 0 for meter in usage}
    scale = Decimal(end_ms - start_ms) / Decimal(elapsed)
    return {
        meter: int((Decimal(units) * scale).to_integral_value(ROUND_FLOOR)) for meter, units in usage.items()
    }
