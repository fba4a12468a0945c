"""Monthly steps in UTC, as Stripe's monthly billing periods run: each boundary is the anchor's day
and time of the month, the day clamped to the length of a shorter month. Boundaries are counted
from the anchor, never from the previous clamped one: periods anchored on the 31st run Jan 31,
Feb 28, Mar 31, not Mar 28."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime


def add_months(epoch_s: int, count: int) -> int:
    """`count` months after `epoch_s` (before it when negative), the day clamped."""
    when = datetime.fromtimestamp(epoch_s, UTC)
    index = when.year * 12 + when.month - 1 + count
    year, month = divmod(index, 12)
    day = min(when.day, calendar.monthrange(year, month + 1)[1])
    return int(when.replace(year=year, month=month + 1, day=day).timestamp())


def monthly_period(anchor: int, target: int) -> tuple[int, int]:
    """The monthly period [start, end) anchored at `anchor` that contains `target` (epoch s)."""
    anchored, at = datetime.fromtimestamp(anchor, UTC), datetime.fromtimestamp(target, UTC)
    k = (at.year - anchored.year) * 12 + at.month - anchored.month
    while add_months(anchor, k) > target:
        k -= 1
    while add_months(anchor, k + 1) <= target:
        k += 1
    return add_months(anchor, k), add_months(anchor, k + 1)


def calendar_month(epoch_ms: int) -> tuple[int, int]:
    """The UTC calendar month [start, end) holding `epoch_ms`, in epoch ms."""
    start, end = monthly_period(0, epoch_ms // 1000)  # the epoch falls on the 1st at midnight
    return start * 1000, end * 1000


def anchor_of(start: int, end: int) -> int:
    """An anchor of the monthly period [start, end): the boundary whose day was not clamped (a
    period Feb 28 to Mar 31 is anchored on the 31st; one Nov 15 to Dec 15 on the 15th)."""
    first, last = datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)
    clamped = first.day == calendar.monthrange(first.year, first.month)[1] and last.day > first.day
    return end if clamped else start
