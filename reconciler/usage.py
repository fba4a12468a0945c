"""Our totals, from ClickHouse's final window rows: what the invoice preview, the reconciler and
the dispute report start from."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING

from core.errors import MeterlineError
from sinks.clickhouse.queries import in_span

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


def customer_usage(client: Client, customer_id: str, start_ms: int, end_ms: int) -> dict[str, int]:
    """meter -> total in its base unit, over the windows that start in [start, end)."""
    rows = client.query(
        "SELECT meter, sum(value) FROM usage_windows FINAL WHERE customer_id = %(customer)s "
        f"AND {in_span()} GROUP BY meter",
        parameters={"customer": customer_id, "start": start_ms, "end": end_ms},
    ).result_rows
    return {meter: int(total) for meter, total in rows}


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
