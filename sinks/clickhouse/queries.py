"""The analysts' everyday questions, as the README shows them (a test keeps the two the same and
runs them). Periods are relative to today, so they answer on any recent data. And what meterline's
own queries share: one spelling of "in this span of time" (`in_span`) and of "this customer and
meter" (`narrowed`)."""

from __future__ import annotations


def in_span(column: str = "window_start") -> str:
    """SQL: `column` in [start, end), the query's parameters `start` and `end` in epoch ms (UTC)."""
    return (
        f"{column} >= fromUnixTimestamp64Milli(%(start)s, 'UTC') "
        f"AND {column} < fromUnixTimestamp64Milli(%(end)s, 'UTC')"
    )


def narrowed(customer: str | None, meter: str | None, table: str = "") -> str:
    """SQL: ` AND` the customer and the meter, where given, as the query's parameters `customer` and
    `meter` (columns of `table` where a join names it)."""
    prefix = f"{table}." if table else ""
    return (f" AND {prefix}customer_id = %(customer)s" if customer else "") + (
        f" AND {prefix}meter = %(meter)s" if meter else ""
    )


USAGE_PER_CUSTOMER_PER_DAY = """\
SELECT customer_id, meter, day, quantity, events
FROM usage_daily
WHERE day >= today() - 30
ORDER BY customer_id, meter, day"""

USAGE_PER_CUSTOMER_PER_HOUR = """\
SELECT customer_id, meter, hour, quantity
FROM usage_hourly
WHERE hour >= now() - INTERVAL 1 DAY
ORDER BY customer_id, meter, hour"""

TOP_CUSTOMERS_BY_METER = """\
SELECT meter, customer_id, sum(quantity) AS total
FROM usage_daily
WHERE day >= today() - 30
GROUP BY meter, customer_id
ORDER BY meter, total DESC
LIMIT 3 BY meter"""

CORRECTED_WINDOWS = """\
SELECT customer_id, meter, window_start, revision, value
FROM usage_windows FINAL
WHERE revision > 0
ORDER BY window_start DESC
LIMIT 10"""

DLQ_BY_REASON = """\
SELECT error_code, count() AS records
FROM dlq_events FINAL
GROUP BY error_code
ORDER BY records DESC"""

ALL = {
    "usage per customer per day": USAGE_PER_CUSTOMER_PER_DAY,
    "usage per customer per hour": USAGE_PER_CUSTOMER_PER_HOUR,
    "top customers by meter": TOP_CUSTOMERS_BY_METER,
    "windows with corrections": CORRECTED_WINDOWS,
    "dead letters by reason": DLQ_BY_REASON,
}
