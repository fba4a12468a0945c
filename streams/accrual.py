"""A `time_weighted` meter: each event sets the customer's level (GB stored, seats held), and the
meter accrues the level integrated over time, in level-seconds. Pure functions, no I/O.

A time-weighted meter's windows are UTC hours (`SLICE_MS`) whatever the configured window size: a
level is carried into every hour until the next level event, so each held level closes one window an
hour, where a minute's windows would send Stripe sixty times as many reports. Hours split every UTC
day and month exactly, so a period's accrual is the sum of its windows'.

A level takes effect at the start of the second its event is stamped in (whole seconds: Stripe's
meter values are whole numbers, and level-milliseconds would leave a 15-digit meter value room for
levels up to only 277 million an hour; schemas.validation bounds the level by `MAX_LEVEL`). Two events
in one second: the later by time (the event id deciding a tie) holds it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

SLICE_MS = 3_600_000
"""A time-weighted meter's window: one UTC hour."""

SECOND_MS = 1000

Change = tuple[int, str, int]
"""A level event in its window: its time (ms), its id, the level it sets."""


def takes_effect(timestamp_ms: int) -> int:
    """When an event's level starts to accrue: the start of its second."""
    return timestamp_ms - timestamp_ms % SECOND_MS


def accrued(carried: int, changes: Sequence[Change], start_ms: int, end_ms: int) -> int:
    """Level-seconds over [start_ms, end_ms): `carried` until the first change, then each change's
    level until the next; `changes` in order of (time, id), all within the span."""
    total, level, since = 0, carried, start_ms
    for timestamp, _, quantity in changes:
        at = takes_effect(timestamp)
        total += level * (at - since)
        level, since = quantity, at
    return (total + level * (end_ms - since)) // SECOND_MS


def with_change(value: int, carried: int, changes: list[Change], change: Change, end_ms: int) -> int:
    """Insert `change` into `changes` (in order) and return the window's accrual `value` with it:
    the span from it to the next change (or the window's end) now holds its level instead of the
    one before it. A step per event, where recomputing the window was a pass over all its changes
    (quadratic in a busy hour)."""
    position = bisect_right(changes, change)
    changes.insert(position, change)
    before = changes[position - 1][2] if position else carried
    until = takes_effect(changes[position + 1][0]) if position + 1 < len(changes) else end_ms
    return value + (change[2] - before) * (until - takes_effect(change[0])) // SECOND_MS


def with_carried(
    value: int, carried: int, level: int, changes: Sequence[Change], start_ms: int, end_ms: int
) -> int:
    """A window's accrual `value` with `level` carried into it instead of `carried`: it holds until
    the first change."""
    until = takes_effect(changes[0][0]) if changes else end_ms
    return value + (level - carried) * (until - start_ms) // SECOND_MS


def level_at_end(carried: int, changes: Sequence[Change]) -> int:
    """The level a window hands the next hour: its latest change's, or the one carried into it."""
    return changes[-1][2] if changes else carried
