"""Python's cycle collector, tuned for the workers that hold many long-lived objects.

A stream or replay worker keeps every open window and its dedup set alive: hundreds of
thousands of containers that the default thresholds (a young collection every 700 allocations,
a full one soon after the heap grows by a quarter) traverse again and again. On a day of sparse
windows that was a third of the worker's time (BENCHMARKS.md). None of these objects form
cycles (refcounting frees them); the collector is kept for what does (asyncio, aiokafka), run
less often.
"""

from __future__ import annotations

import gc


def tune_for_long_lived_state() -> None:
    """Move everything alive now (modules, configuration) out of the collector's sight, and
    collect young objects every 10,000 allocations instead of 700."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 100)
