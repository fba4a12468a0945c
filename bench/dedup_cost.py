"""What dedup costs as its horizon grows (issue 34): the stream worker's state, its RocksDB store
and its changelog, driven in-process by streams.processor and streams.state with days of usage
as a worker keeping up with the present sees it (a record a second, the state written behind
every 3 s, as the worker commits), retries among them and a share re-sent days later.

For each horizon: what the changelog receives per event, what the store holds at the end (its
entries' bytes, and its RocksDB directory, with what the memtables hold not yet in it), the
store reads per event, the Python memory the processor and store hold, and the CPU time per
event. The ids held grow with the horizon until it is reached: the store's bytes over the events
it holds the ids of is what a steady state costs per event.

Run: .venv/bin/python bench/dedup_cost.py [--days 4] [--events-per-day 500000] [--horizons 1,35]
With PYTHONPATH=<a checkout> and no --horizons, the same workload through that checkout's rule
(e.g. before issue 34: ids an hour past the close).
"""

from __future__ import annotations

import argparse
import gc
import pickle
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from meterline.config import load_config
from meterline.schemas.records import UsageEvent
from meterline.schemas.serde import AvroSerde
from meterline.streams.judge import Judge
from meterline.streams.processor import PartitionProcessor, rules_from
from meterline.streams.state import PartitionStore, store_key_parts
from meterline.streams.stores import RocksStore
from meterline.streams.windows import DAY_MS
from meterline.workload import Expected, WorkloadSpec, generate

from harness import report

START = 1_780_000_000_000 // DAY_MS * DAY_MS
WRITE_BEHIND_MS = 3_000


class CountingEntries:
    """A store's entries (streams.state.Entries), counting what is read and what the changelog gets."""

    def __init__(self, inner: RocksStore) -> None:
        self.inner = inner
        self.gets = 0
        self.changelog_bytes = 0
        self.writes = 0

    def get(self, key: bytes) -> bytes | None:
        self.gets += 1
        return self.inner.get(key)

    def items(self) -> Iterable[tuple[bytes, bytes]]:
        return self.inner.items()

    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        self.writes += len(changes)
        self.changelog_bytes += sum(len(k) + len(v or b"") for k, v in changes.items())
        self.inner.write(changes)


def records(days: int, per_day: int, resend_rate: float) -> Iterator[tuple[list[UsageEvent], int]]:
    """A record a second of arrival (its events and its timestamp), days of usage for 50 customers:
    1% retried within minutes, 2% out of order, 0.1% late, and `resend_rate` re-sent 1 to 3 days
    after they were first sent (a producer's batch again after an outage). Event ids are UUIDs,
    as most producers make them (36 characters; the workload's own are 12)."""
    config = load_config(None, {})
    spec = WorkloadSpec(
        seed=1,
        events=days * per_day,
        customers=50,
        start_ms=START,
        span_ms=days * DAY_MS - 60_000,
        duplicate_rate=0.01,
        out_of_order_rate=0.02,
        late_rate=0.001,
    )
    rng = random.Random(2)
    resends: list[tuple[int, UsageEvent]] = []  # (when, event), in order of when
    batch: list[UsageEvent] = []
    second = START // 1000
    for emission in generate(spec, config.meters, config.windows.size_ms, Expected(config.windows.size_ms)):
        if emission.event is None:
            continue
        event = replace(emission.event, event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, emission.event.event_id)))
        arrival = max(event.timestamp // 1000, second)
        while arrival > second:
            while resends and resends[0][0] <= second * 1000:
                batch.append(resends.pop(0)[1])
            if batch:
                yield batch, second * 1000 + 999
                batch = []
            second += 1
        batch.append(event)
        if rng.random() < resend_rate:
            resends.append((event.timestamp + rng.randint(DAY_MS, 3 * DAY_MS), event))
            resends.sort(key=lambda r: r[0])
    if batch:
        yield batch, second * 1000 + 999


def deep_size(*roots: object) -> int:
    """Bytes of the Python objects reachable from `roots` (each counted once)."""
    seen: set[int] = set()
    stack = list(roots)
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


def measure(label: str, env: dict[str, str], days: int, per_day: int, resend_rate: float) -> dict[str, Any]:
    config = load_config(None, env)
    serde = AvroSerde()
    judge = Judge(config, serde)
    directory = Path(tempfile.mkdtemp(prefix="meterline-dedup-cost-"))
    try:
        rocks = RocksStore(directory)
        entries = CountingEntries(rocks)
        store = PartitionStore(entries, 0)
        processor = PartitionProcessor(0, rules_from(config), store)
        events = 0
        next_write = START + WRITE_BEHIND_MS
        started = time.process_time()
        for offset, (batch, record_time) in enumerate(records(days, per_day, resend_rate)):
            value = serde.encode_batch([serde.batch_item(e) for e in batch])
            processor.process(offset, record_time, judge(value, record_time))
            events += len(batch)
            if record_time >= next_write:
                store.write_behind()
                next_write = record_time + WRITE_BEHIND_MS
        store.write_behind()
        seconds = time.process_time() - started
        held = ids = id_bytes = 0
        for key, value in rocks.items():
            held += len(key) + len(value)
            if store_key_parts(key)[1] == "i":
                id_bytes += len(key) + len(value)
                ids += sum(len(window_ids) for window_ids in pickle.loads(value)[1].values())
        files = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
        stats = processor.stats
        return {
            "what": label,
            "events": events,
            "changelog B/event": round(entries.changelog_bytes / events, 1),
            "store entries MB": round(held / 1e6, 1),
            "ids in chunks": ids,
            "B/id in chunks": round(id_bytes / ids, 1) if ids else 0,
            "RocksDB dir MB": round(files / 1e6, 1),
            "store reads/1k events": round(entries.gets / events * 1000, 2),
            "Python heap MB": round(deep_size(processor, store) / 1e6, 1),
            "us/event": round(seconds / events * 1e6, 2),
            "duplicates": stats.duplicates,
            "counted again": stats.undeduplicated,
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--events-per-day", type=int, default=500_000)
    parser.add_argument("--resend-rate", type=float, default=0.001)
    parser.add_argument("--horizons", help="days, comma-separated (default: the checkout's own rule)")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    horizons = [int(h) for h in args.horizons.split(",")] if args.horizons else [None]
    rows = []
    for horizon in horizons:
        env = {} if horizon is None else {"METERLINE__WINDOWS__DEDUP_HORIZON_DAYS": str(horizon)}
        label = args.label or ("the checkout's default" if horizon is None else f"horizon {horizon} d")
        rows.append(measure(label, env, args.days, args.events_per_day, args.resend_rate))
    report(rows)


if __name__ == "__main__":
    main()
