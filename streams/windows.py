"""Tumbling-window arithmetic on integer epoch milliseconds. Pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

DAY_MS = 86_400_000


def window_start(timestamp_ms: int, size_ms: int) -> int:
    """Start of the tumbling window holding `timestamp_ms`; windows are aligned to the epoch."""
    return timestamp_ms - timestamp_ms % size_ms


def window_end(timestamp_ms: int, size_ms: int) -> int:
    """Exclusive end of the tumbling window holding `timestamp_ms`."""
    return window_start(timestamp_ms, size_ms) + size_ms


def closing_limit(watermark_ms: int, grace_ms: int, tick_ms: int | None = None) -> int:
    """The latest window end that is due: a window closes once its end plus the grace is at or
    before the watermark, or, on a tick (an empty batch the app sends into a quiet partition), at
    or before the tick's time (DESIGN §4)."""
    limit = watermark_ms - grace_ms
    return limit if tick_ms is None else max(limit, tick_ms - grace_ms)


def forget_dedup_at(
    window_end_ms: int, closed_by_watermark_ms: int, keep_ids_ms: int, forget_after_ms: int
) -> int:
    """When a closed window's event ids may go: `keep_ids_ms` (the dedup horizon and its margin)
    after the later of its end and the watermark that closed it last, so that neither a reopening
    nor a jump of event time shortens it; never later than the window itself goes (DESIGN §4).
    With the default horizon (the lateness horizon) that is when the window goes."""
    return min(
        forget_window_at(window_end_ms, forget_after_ms),
        max(window_end_ms, closed_by_watermark_ms) + keep_ids_ms,
    )


def forget_window_at(window_end_ms: int, forget_after_ms: int) -> int:
    """When a closed window's state may go: no event can be accepted for it after this."""
    return window_end_ms + forget_after_ms


def earliest_held(watermark_ms: int, forget_after_ms: int, size_ms: int) -> int:
    """The earliest event time whose window a partition at `watermark_ms` still holds: an event
    before it would find its window's total and ids gone, so it is dead-lettered as too late
    rather than counted again from revision 0 (DESIGN §4). Inverse of forget_window_at: the window
    of `t` is held while window_end(t) + forget_after > watermark, that is t >= this."""
    return window_start(watermark_ms - forget_after_ms, size_ms)


ADDITIVE = ("sum", "count", "unique_count", "time_weighted")
"""Aggregations whose period answer is the sum of its windows' values (and of partitions' partials):
a `unique_count` window holds the values first seen in its period, a `time_weighted` window its
hour's accrual (streams.processor)."""


def fold(aggregation: str, value: int, quantity: int) -> int:
    """A window's value with one more event counted: the quantity added for a `sum` meter, one for
    a `count` meter, the higher of the two for a `max` meter (its peak). A `unique_count` window
    counts an event by whether its value is new to the period, a `last` window takes the quantity
    of its latest event (streams.processor knows both)."""
    if aggregation == "sum":
        return value + quantity
    if aggregation == "count":
        return value + 1
    if aggregation == "max":
        return value if value >= quantity else quantity
    raise ValueError(f"a {aggregation!r} window is not folded from quantities")


def combine(aggregation: str, values: Iterable[int]) -> int:
    """A window's value from its source partitions' partials: their sum for the additive meters,
    their highest for a level (`max`, `last`: a window split over two partitions, which happens only
    when the events topic's partition count changed within it, answers its highest partial); 0 for
    none."""
    return sum(values) if aggregation in ADDITIVE else max(values, default=0)


def period_answer(aggregation: str, windows: Mapping[int, int]) -> int:
    """A period's answer from its windows' values by window start: their sum for the additive
    meters, their highest for `max`, the latest window's for `last`; 0 for a period without any."""
    if aggregation in ADDITIVE:
        return sum(windows.values())
    if aggregation == "max":
        return max(windows.values(), default=0)
    return windows[max(windows)] if windows else 0


def running(aggregation: str, so_far: int, then: int) -> int:
    """A period's answer so far, given the answer `then` of its next span of time (a day, an hour)
    after those that made `so_far`: added, the higher of the two (`max`), or `then` (`last`)."""
    if aggregation in ADDITIVE:
        return so_far + then
    return max(so_far, then) if aggregation == "max" else then


def later(event: tuple[int, str], than: tuple[int, str] | None) -> bool:
    """Whether an event (its time, its id) is a `last` window's latest so far: later in time, the
    id deciding a tie, so that the answer does not depend on the order events arrive in."""
    return than is None or event > than
