"""Tumbling-window arithmetic on integer epoch milliseconds. Pure functions, no I/O."""

from __future__ import annotations

DAY_MS = 86_400_000


def window_start(timestamp_ms: int, size_ms: int) -> int:
    """Start of the tumbling window holding `timestamp_ms`; windows are aligned to the epoch."""
    return timestamp_ms - timestamp_ms % size_ms


def window_end(timestamp_ms: int, size_ms: int) -> int:
    """Exclusive end of the tumbling window holding `timestamp_ms`."""
    return window_start(timestamp_ms, size_ms) + size_ms


def event_value(aggregation: str, quantity: int) -> int:
    """What one event adds to its window: its quantity for a `sum` meter, 1 for a `count` meter."""
    return quantity if aggregation == "sum" else 1
