"""Every read of `usage_windows` (the ClickHouse sink's final window rows, latest revision wins:
`FINAL`): our totals, as the invoice preview, reconcile, replay, the dispute report, the billing
review, the usage alerts and the dashboard start from them. One home for the table's SQL; its
writer is sinks.clickhouse.sink.

Every span is [start, end) in epoch ms of `window_start`; `customer` and `meter` narrow it. Windows
make a span's answer as their meter's aggregation says (streams.windows.period_answer): summed, or
for the `levels` (Config.levels) the highest value of a `max` meter and the latest window's of a
`last` meter (of a window split over partitions, its highest partial: streams.windows.combine).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from meterline.sinks.clickhouse.queries import in_span, narrowed

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

Grain = Literal["hour", "day"]
_BUCKET = {"hour": "toStartOfHour", "day": "toStartOfDay"}
ANSWER = (
    "multiIf(has(%(peaks)s, meter), max(value), "
    "has(%(lasts)s, meter), argMax(value, (window_start, value)), sum(value))"
)
"""A group of window rows of one meter as its answer: the peak of a `max` meter, the latest
window's value of a `last` meter, else the sum."""


def kinds(levels: Mapping[str, str]) -> dict[str, Any]:
    """The query parameters ANSWER reads: the `max` meters and the `last` meters of `levels`."""
    return {
        "peaks": sorted(m for m, kind in levels.items() if kind == "max"),
        "lasts": sorted(m for m, kind in levels.items() if kind == "last"),
    }


def totals(
    client: Client,
    start_ms: int,
    end_ms: int,
    customer: str | None = None,
    meter: str | None = None,
    *,
    levels: Mapping[str, str],
) -> dict[tuple[str, str], int]:
    """(customer, meter) -> the span's answer in the meter's base unit; pairs without usage left out."""
    rows = client.query(
        f"SELECT customer_id, meter, {ANSWER} FROM usage_windows FINAL WHERE {in_span()}"
        f"{narrowed(customer, meter)} GROUP BY customer_id, meter",
        parameters={
            "start": start_ms,
            "end": end_ms,
            "customer": customer,
            "meter": meter,
            **kinds(levels),
        },
    ).result_rows
    return {(str(c), str(m)): int(v) for c, m, v in rows if v}


def customer_usage(
    client: Client, customer: str, start_ms: int, end_ms: int, *, levels: Mapping[str, str]
) -> dict[str, int]:
    """meter -> the customer's answer in its base unit (every meter with windows in the span)."""
    rows = client.query(
        f"SELECT meter, {ANSWER} FROM usage_windows FINAL WHERE customer_id = %(customer)s "
        f"AND {in_span()} GROUP BY meter",
        parameters={"customer": customer, "start": start_ms, "end": end_ms, **kinds(levels)},
    ).result_rows
    return {str(meter): int(total) for meter, total in rows}


def by_bucket(
    client: Client,
    customer: str,
    start_ms: int,
    end_ms: int,
    grain: Grain,
    meter: str | None = None,
    *,
    levels: Mapping[str, str],
) -> dict[str, list[tuple[int, int, int]]]:
    """meter -> [(bucket start ms, the bucket's answer, corrected windows)], buckets with windows
    only, in time order."""
    rows = client.query(
        f"SELECT meter, toUnixTimestamp({_BUCKET[grain]}(window_start)) * 1000 AS t, {ANSWER}, "
        f"countIf(revision > 0) FROM usage_windows FINAL WHERE {in_span()}{narrowed(customer, meter)} "
        "GROUP BY meter, t ORDER BY meter, t",
        parameters={
            "customer": customer,
            "start": start_ms,
            "end": end_ms,
            "meter": meter,
            **kinds(levels),
        },
    ).result_rows
    found: dict[str, list[tuple[int, int, int]]] = {}
    for m, t, value, corrected in rows:
        found.setdefault(str(m), []).append((int(t), int(value), int(corrected)))
    return found


def by_day_of_month(
    client: Client, start_ms: int, end_ms: int, *, levels: Mapping[str, str]
) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """(customer, meter) -> [(day of the month, the day's answer)], in day order."""
    rows = client.query(
        f"SELECT customer_id, meter, toDayOfMonth(window_start) AS day, {ANSWER} FROM usage_windows FINAL "
        f"WHERE {in_span()} GROUP BY customer_id, meter, day ORDER BY customer_id, meter, day",
        parameters={"start": start_ms, "end": end_ms, **kinds(levels)},
    ).result_rows
    daily: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for customer, meter, day, quantity in rows:
        daily.setdefault((str(customer), str(meter)), []).append((int(day), int(quantity)))
    return daily


def latest_revisions(
    client: Client, start_ms: int, end_ms: int, customer: str | None = None
) -> dict[tuple[str, str, int, int], tuple[int, int]]:
    """(customer, meter, window start, source partition) -> (value, revision): what is stored of
    each window, per source partition as its identity is."""
    rows = client.query(
        "SELECT customer_id, meter, toUnixTimestamp64Milli(window_start), source_partition, value, revision "
        f"FROM usage_windows FINAL WHERE {in_span()}{narrowed(customer, None)}",
        parameters={"start": start_ms, "end": end_ms, "customer": customer},
    ).result_rows
    return {(str(c), str(m), int(w), int(p)): (int(v), int(r)) for c, m, w, p, v, r in rows}


def customers_since(client: Client, since_ms: int | None = None) -> list[str]:
    """Every customer with windows (at or after `since_ms`), in order."""
    since = "" if since_ms is None else " WHERE window_start >= fromUnixTimestamp64Milli(%(since)s, 'UTC')"
    rows = client.query(
        f"SELECT DISTINCT customer_id FROM usage_windows{since} ORDER BY customer_id",
        parameters={"since": since_ms},
    ).result_rows
    return [str(c) for (c,) in rows]
