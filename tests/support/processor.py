"""The partition processor driven as the stream app drives it, crashes included, with no broker
and no Faust: for the property tests of the aggregation.

A crash is modelled as the stream app meets it: the store writes behind at commits chosen at
random, the state changelog keeps a prefix of its writes, the committed offset lies at or before
the last record whose writes are all in that prefix (Faust writes and flushes before it commits),
emissions of records before it were delivered and any of the later ones may be lost. Recovery
loads the prefix and processing restarts at the committed offset. Dead letters that depend on
the state (Verdict.gone) are delivered before the clock that marks their record applied is
written (streams.app.StreamRuntime.write_behind).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hypothesis import strategies as st

from meterline.core.months import calendar_month
from meterline.schemas.records import AggregateIdentity, WindowAggregate
from meterline.streams.judge import Judge, Verdict
from meterline.streams.processor import PartitionProcessor, WindowRules
from meterline.streams.state import PartitionStore, UnsavedStore

Log = list[tuple[bytes, bytes | None]]

CRASH_PLANS = {
    "arrival_seed": st.integers(0, 2**32),
    "batch": st.sampled_from([1, 5, 40]),
    "crashes": st.integers(0, 3),
    "commit_rate": st.sampled_from([1.0, 0.3]),
}
"""How a property test's events reach the processor (`@given(..., **CRASH_PLANS)`): the seed of
their order, records of up to `batch` events, the crashes, and how often the store writes behind."""


class ChangelogEntries:
    """A partition's state entries whose every write is also appended to a log, like the changelog
    topic behind streams.stores.LocalState."""

    def __init__(self, data: dict[bytes, bytes], log: Log) -> None:
        self.data, self.log = data, log

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def items(self) -> Iterable[tuple[bytes, bytes]]:
        return self.data.items()

    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        for key, value in changes.items():
            self.log.append((key, value))
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value


def recovered(log: Log) -> dict[bytes, bytes]:
    """The entries a worker rebuilds from the changelog `log`."""
    data: dict[bytes, bytes] = {}
    for key, value in log:
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def start_processor(
    data: dict[bytes, bytes], log: Log, first_offset: int, rules: WindowRules
) -> tuple[PartitionProcessor, PartitionStore, list[WindowAggregate]]:
    """A processor recovered from `data`, writing to `log`, and the revisions it sends again."""
    store = PartitionStore(ChangelogEntries(data, log), 0)
    processor = PartitionProcessor(0, rules, store)
    windows, clock = store.saved_state()
    return processor, store, processor.recover(windows, clock, first_offset)


def run_with_crashes(
    records: list[tuple[bytes, int]],
    judge: Judge,
    rules: WindowRules,
    plan: random.Random,
    crashes: int,
    commit_rate: float,
) -> tuple[list[WindowAggregate], Counter[str]]:
    """Every aggregate delivered from processing `records` (value, timestamp) in offset order with
    `crashes` crashes at random points, and the dead letters' reasons (one per event)."""
    crash_at = sorted(plan.sample(range(len(records)), min(crashes, len(records))))
    log: Log = []
    processor, store, delivered = start_processor({}, log, 0, rules)
    in_flight: list[tuple[int, WindowAggregate]] = []
    writes_done: dict[int, int] = {}  # offset -> log length once its writes were made
    letters: dict[tuple[int, int | None], str] = {}  # (offset, index in batch) -> reason
    state_letters: set[tuple[int, int | None]] = set()
    offset = 0
    while offset < len(records):
        if crash_at and offset == crash_at[0]:
            crash_at.pop(0)
            kept = plan.randint(0, len(log))
            complete = [o for o, n in writes_done.items() if n <= kept]
            committed = plan.randint(0, max(complete) + 1) if complete else 0
            delivered += [a for o, a in in_flight if o < committed or plan.random() < 0.5]
            in_flight.clear()
            del log[kept:]
            writes_done = {o: n for o, n in writes_done.items() if o < committed}
            processor, store, again = start_processor(recovered(log), log, committed, rules)
            applied = processor.clock.last_offset
            letters = {
                k: v
                for k, v in letters.items()
                if k[0] < committed or (k in state_letters and k[0] <= applied)
            }
            delivered += again
            offset = committed
            continue
        value, timestamp = records[offset]
        verdict = judge(value, timestamp, processor.held_from(offset))
        for rejection in verdict.rejections:
            letters[(offset, rejection.index)] = str(rejection.reason)
            if verdict.gone:
                state_letters.add((offset, rejection.index))
        in_flight += [(offset, a) for a in processor.process(offset, timestamp, verdict)]
        if plan.random() < commit_rate:  # the app writes behind before each commit
            store.write_behind()
            writes_done[offset] = len(log)
        offset += 1
    delivered += [a for _, a in in_flight]
    return delivered, Counter(letters.values())


def first_sendings(drawn: Iterable[tuple[Any, ...]]) -> dict[int, tuple[Any, ...]]:
    """Drawn events (an id, then what the event carries) by id: an id stands for one event, and its
    retries carry what its first sending carried."""
    first: dict[int, tuple[Any, ...]] = {}
    for number, *carried in drawn:
        first.setdefault(number, tuple(carried))
    return first


def sums_by_window(aggregates: Iterable[WindowAggregate]) -> dict[tuple[str, str, int], list[int]]:
    """What a sink derives: one aggregate per identity (asserting repeats are identical), deltas
    summed, and the latest revision's event count."""
    by_identity: dict[AggregateIdentity, WindowAggregate] = {}
    for aggregate in aggregates:
        first = by_identity.setdefault(aggregate.identity, aggregate)
        assert first == aggregate, f"two aggregates share identity {aggregate.identity}"
    totals: dict[tuple[str, str, int], list[int]] = {}
    latest: dict[tuple[str, str, int], int] = {}
    for identity, aggregate in by_identity.items():
        key = (identity.customer_id, identity.meter, identity.window_start)
        totals.setdefault(key, [0, 0])[0] += aggregate.delta
        if aggregate.revision >= latest.get(key, -1):
            latest[key] = aggregate.revision
            totals[key][1] = aggregate.event_count
    revisions = Counter((i.customer_id, i.meter, i.window_start) for i in by_identity)
    for key, count in revisions.items():  # revisions are 0..n-1, none missing
        assert {i.revision for i in by_identity if (i.customer_id, i.meter, i.window_start) == key} == set(
            range(count)
        )
    return totals


def months_of(
    totals: Mapping[tuple[str, str, int], list[int]], unique_meters: Iterable[str]
) -> dict[tuple[str, str, int], list[int]]:
    """`totals` (window -> [value, event count]) with the windows of `unique_meters` summed per
    month (keyed by the month's start): which window first sees a value depends on the order events
    arrive in, the month's distinct values do not. For comparing with a generator's expectation
    when the events were shuffled."""
    unique = set(unique_meters)
    folded: dict[tuple[str, str, int], list[int]] = {}
    for (customer, meter, start), (value, count) in totals.items():
        key = (customer, meter, calendar_month(start)[0] if meter in unique else start)
        total = folded.setdefault(key, [0, 0])
        total[0] += value
        total[1] += count
    return folded


def range_totals(
    records: list[tuple[bytes, int]],
    judge: Judge,
    rules: WindowRules,
    in_range: range,
    aside: Callable[[Verdict], None] | None = None,
    customer: str | None = None,
) -> dict[tuple[str, str, int], tuple[int, int]]:
    """(customer, meter, window start) -> (value, event count) of the windows starting `in_range`
    (of `customer`, if given) as the processor emits them, each verdict first passed to `aside`:
    a replay's fold (reconciler.checks.rederive), and with `aside` None the stream's."""
    processor = PartitionProcessor(0, rules, UnsavedStore())
    found = {}
    for offset, (value, record_time) in enumerate(records):
        verdict = judge(value, record_time, processor.held_from(offset))
        if aside is not None:
            aside(verdict)
        for a in processor.process(offset, record_time, verdict):
            if a.window_start in in_range and customer in (None, a.customer_id):
                found[(a.customer_id, a.meter, a.window_start)] = (a.value, a.event_count)
    return found
