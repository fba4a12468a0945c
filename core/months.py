"""Monthly steps in UTC, as Stripe's monthly billing periods run: the same day and time of the
month, the day clamped to the length of a shorter month."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime


def add_months(epoch_s: int, count: int) -> int:
    """`count` months after `epoch_s` (before it when negative)."""
    when = datetime.fromtimestamp(epoch_s, UTC)
    index = when.year * 12 + when.month - 1 + count
    year, month = divmod(index, 12)
    day = min(when.day, calendar.monthrange(year, month + 1)[1])
    return int(when.replace(year=year, month=month + 1, day=day).timestamp())
