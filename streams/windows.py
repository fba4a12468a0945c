"""Tumbling-window arithmetic on integer epoch milliseconds. Pure functions, no I/O."""

from __future__ import annotations

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


def forget_dedup_at(closed_by_watermark_ms: int, retention_ms: int) -> int:
    """When a closed window's event ids may go: the retention after the watermark that closed it
    last ("until an hour after the window closed", DESIGN §4)."""
    return closed_by_watermark_ms + retention_ms


def forget_window_at(window_end_ms: int, forget_after_ms: int) -> int:
    """When a closed window's state may go: no event can be accepted for it after this."""
    return window_end_ms + forget_after_ms


def event_value(aggregation: str, quantity: int) -> int:
    """What one event adds to its window: its quantity for a `sum` meter, 1 for a `count` meter."""
    return quantity if aggregation == "sum" else 1
