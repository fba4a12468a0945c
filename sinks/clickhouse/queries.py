"""What queries of the analysts' tables share: one spelling of "in this span of time"."""

from __future__ import annotations


def in_span(column: str = "window_start") -> str:
    """SQL: `column` in [start, end), the query's parameters `start` and `end` in epoch ms (UTC)."""
    return (
        f"{column} >= fromUnixTimestamp64Milli(%(start)s, 'UTC') "
        f"AND {column} < fromUnixTimestamp64Milli(%(end)s, 'UTC')"
    )
