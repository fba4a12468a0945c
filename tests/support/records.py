"""Records as tests write them: by name, with the defaults a window of usage has."""

from __future__ import annotations

from meterline.schemas.records import WindowAggregate

MINUTE_MS = 60_000
GRACE_MS = 10_000  # the default windows.grace_seconds: when a window closes after its end


def window_aggregate(
    customer: str = "cust-1",
    meter: str = "api_calls",
    start: int = 0,
    *,
    value: int = 1,
    delta: int | None = None,
    partition: int = 0,
    revision: int = 0,
    events: int = 1,
    size_ms: int = MINUTE_MS,
    closed_at: int | None = None,
) -> WindowAggregate:
    """A revision of the window of `customer` and `meter` starting at `start` (epoch ms): `delta`
    defaults to the whole value (a revision 0), `closed_at` to the end plus the default grace."""
    return WindowAggregate(
        customer,
        meter,
        start,
        start + size_ms,
        partition,
        value,
        value if delta is None else delta,
        events,
        revision,
        start + size_ms + GRACE_MS if closed_at is None else closed_at,
    )
