"""The pure aggregation (judge + partition processor) is exact for any order, duplication, lateness,
batching, tick timing and crash point of a generated workload: no broker, no Faust (crashes as
tests.support.processor models them).
"""

from __future__ import annotations

import dataclasses
import pickle
import random
from collections.abc import Iterable, Mapping

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterline.config import load_config
from meterline.schemas.records import UsageEvent, WindowAggregate
from meterline.schemas.serde import AvroSerde
from meterline.streams.judge import Judge
from meterline.streams.processor import PartitionProcessor, rules_from
from meterline.streams.state import (
    IDS_BUCKET_MS,
    Entries,
    PartitionClock,
    PartitionStore,
    UnsavedStore,
    WindowKey,
    WindowState,
    store_key_parts,
)
from meterline.streams.windows import DAY_MS
from meterline.workload import Expected, WorkloadSpec, generate
from tests.support.processor import (
    ChangelogEntries,
    months_of,
    recovered,
    run_with_crashes,
    start_processor,
    sums_by_window,
)

CONFIG = load_config(None, {})
SERDE = AvroSerde()
JUDGE = Judge(CONFIG, SERDE)
RULES = rules_from(CONFIG)
# The shortest dedup horizon (a day): ids go before their window does.
SHORT_RULES = rules_from(load_config(None, {"METERLINE__WINDOWS__DEDUP_HORIZON_DAYS": "1"}))
KEEP_MS = SHORT_RULES.keep_ids_ms
START = 1_780_000_000_000 // 60_000 * 60_000
NOW = START + DAY_MS // 4  # the records' timestamps: produce time, after the span


def records_of(
    spec: WorkloadSpec, rng: random.Random, shuffle: float, max_batch: int
) -> tuple[list, Expected]:
    """The workload as Kafka records (value, timestamp): batches of 1..max_batch events, some
    records moved out of place, as far as the end of the span (dedup holds for the lateness
    horizon, DESIGN §4), invalid ones as single records."""
    expected = Expected(CONFIG.windows.size_ms)
    emissions = list(generate(spec, CONFIG.meters, CONFIG.windows.size_ms, expected))
    position = {
        id(e): i + (rng.randint(0, len(emissions)) if rng.random() < shuffle else 0)
        for i, e in enumerate(emissions)
    }
    emissions.sort(key=lambda e: position[id(e)])
    records: list[tuple[bytes, int]] = []
    batch: list[UsageEvent] = []

    def flush() -> None:
        if batch:
            records.append((SERDE.encode_batch([SERDE.batch_item(e) for e in batch]), NOW))
            batch.clear()

    for emission in emissions:
        if emission.raw is not None:
            flush()
            records.append((emission.raw, NOW))
        elif not emission.valid:
            flush()
            records.append((SERDE.encode_event(emission.event), NOW))  # type: ignore[arg-type]
        else:
            batch.append(emission.event)  # type: ignore[arg-type]
            if len(batch) >= rng.randint(1, max_batch):
                flush()
    flush()
    return records, expected


@settings(
    max_examples=settings().max_examples * 3 // 5, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    seed=st.integers(0, 10_000),
    shuffle=st.sampled_from([0.0, 0.05, 0.5]),
    max_batch=st.sampled_from([1, 7, 50]),
    tick_rate=st.sampled_from([0.0, 0.02, 0.2]),
    commit_rate=st.sampled_from([1.0, 0.3, 0.05]),
    crashes=st.integers(0, 3),
    plan_seed=st.integers(0, 2**32),
)
def test_totals_are_exact_for_any_order_batching_ticks_and_crashes(
    seed: int,
    shuffle: float,
    max_batch: int,
    tick_rate: float,
    commit_rate: float,
    crashes: int,
    plan_seed: int,
) -> None:
    plan = random.Random(plan_seed)  # orders, batch sizes, ticks and crash points
    spec = WorkloadSpec(
        seed=seed,
        events=400,
        customers=3,
        start_ms=START,
        span_ms=3 * 3_600_000,
        duplicate_rate=0.1,
        out_of_order_rate=0.1,
        late_rate=0.05,
        malformed_rate=0.05,
    )
    records, expected = records_of(spec, plan, shuffle, max_batch)
    tick = SERDE.encode_batch([])
    with_ticks: list[tuple[bytes, int]] = []
    for record in records:
        with_ticks.append(record)
        if plan.random() < tick_rate:  # a quiet-partition tick stamped by the wall clock: now
            with_ticks.append((tick, NOW))
    with_ticks.append((tick, NOW + 365 * DAY_MS))  # the end: every window closes
    delivered, rejected = run_with_crashes(with_ticks, JUDGE, RULES, plan, crashes, commit_rate)
    # A unique_count meter's months: shuffled, its values may be first seen in other windows.
    unique = CONFIG.unique_attributes
    # A time_weighted hour a level was carried into, then taken from by an event that arrived later
    # with an earlier time, is revised to nothing: no window, as the generator has none.
    windows = {key: total for key, total in sums_by_window(delivered).items() if total != [0, 0]}
    assert months_of(windows, unique) == months_of(expected.totals, unique)
    assert rejected == expected.rejected


def test_a_late_event_emits_the_next_revision_with_its_delta() -> None:
    processor, _, _ = start_processor({}, [], 0, RULES)
    minute = START

    def record(offset: int, *events: tuple[str, int, int]) -> list[WindowAggregate]:
        batch = [UsageEvent(eid, "c", "egress_bytes", qty, "byte", ts, "t", {}) for eid, qty, ts in events]
        return processor.process(
            offset, NOW, JUDGE(SERDE.encode_batch([SERDE.batch_item(e) for e in batch]), NOW)
        )

    assert record(0, ("a", 5, minute + 1), ("b", 7, minute + 2)) == []
    [first] = record(1, ("c", 1, minute + 60_000 + 10_001))  # watermark passes end + grace
    assert (first.revision, first.value, first.delta, first.event_count) == (0, 12, 12, 2)
    [late] = record(2, ("d", 4, minute + 3), ("a", 5, minute + 1), ("e", 1, minute + 100_000))
    assert (late.revision, late.value, late.delta, late.event_count) == (1, 16, 4, 3)
    assert processor.stats.duplicates == 1 and processor.stats.corrections == 1
    assert record(3, ("a", 5, minute + 1)) == []  # a duplicate never reopens a window


def test_a_corrected_window_keeps_its_event_ids_for_the_horizon_after_its_last_close() -> None:
    """DESIGN §4: with a horizon shorter than the lateness, the ids are kept until the horizon
    after the window closed, last. The aging entry of its first close must not drop them early: a
    processor recovered after the correction ages the window from its last close only, and would
    decide otherwise."""
    processor, _, _ = start_processor({}, [], 0, SHORT_RULES)

    def record(offset: int, *events: tuple[str, int]) -> list[WindowAggregate]:
        batch = [UsageEvent(eid, "c", "egress_bytes", 5, "byte", ts, "t", {}) for eid, ts in events]
        at = max(NOW, *(ts for _, ts in events))  # stamped when sent: the present
        return processor.process(
            offset, at, JUDGE(SERDE.encode_batch([SERDE.batch_item(e) for e in batch]), at)
        )

    record(0, ("a", START + 1))
    [first] = record(1, ("x", START + 70_001))  # closes the first minute at this watermark
    corrected_at = START + 1_800_000
    closed = record(2, ("b", START + 2), ("y", corrected_at))  # reopens it, closes it again
    [correction] = [a for a in closed if a.window_start == START]
    assert (first.revision, correction.revision, correction.delta) == (0, 1, 5)
    record(3, ("z", START + 70_001 + KEEP_MS + 1))  # past the first close's horizon only
    assert record(4, ("a", START + 1)) == []  # still a duplicate: the last close was later
    assert processor.stats.duplicates == 1 and processor.stats.undeduplicated == 0


def test_the_store_writes_each_changed_window_once_per_commit_and_the_clock_last() -> None:
    log: list[tuple[bytes, bytes | None]] = []
    processor, store, _ = start_processor({}, log, 0, RULES)
    for offset in range(10):
        event = UsageEvent(f"e{offset}", "c", "egress_bytes", 1, "byte", START + offset, "t", {})
        processor.process(offset, NOW, JUDGE(SERDE.encode_batch([SERDE.batch_item(event)]), NOW))
    assert log == []  # nothing written before the commit
    assert store.write_behind() == 2
    [(window_key, window), (clock_key, clock)] = log
    assert (store_key_parts(window_key)[1], store_key_parts(clock_key)[1]) == ("w", "clock")
    state, ids_at = WindowState.decode(window)
    assert (state.value, state.last_offset, ids_at) == (10, 9, None)
    assert PartitionClock.decode(clock).last_offset == 9  # type: ignore[arg-type]
    assert store.write_behind() == 0


def test_a_window_entry_decodes_alike_whether_its_ids_were_stored_as_a_set_or_a_sorted_list() -> None:
    """Entries written before the ids were pickled as a set held a sorted list: same format, 1."""
    state = WindowState(WindowKey("c", "egress_bytes", START), 12, 2, 7, {"b", "a"}, [], False)
    as_list = pickle.dumps((1, tuple(state.key), 12, 2, 7, ["a", "b"], [], False), protocol=5)
    assert WindowState.decode(state.encode()) == WindowState.decode(as_list) == (state, None)
    assert WindowState.decode(dataclasses.replace(state, event_ids=None).encode())[0].event_ids is None


def test_closed_windows_ids_are_written_once_in_a_chunk_deleted_whole_past_their_horizon() -> None:
    """Issue 18: one write per window that opens and closes between two commits, its ids in a chunk
    written before it (a crash keeps a prefix, so no window points at a chunk not stored); when
    the ids expire no window is written again: the chunk is deleted whole, after the clock past them."""
    log: list[tuple[bytes, bytes | None]] = []
    processor, store, _ = start_processor({}, log, 0, SHORT_RULES)
    for customer in range(3):
        _one_event(processor, customer, f"e{customer}", START + 1, f"c{customer}")
    closing_at = START + 10 * 60_000 + 1
    _one_event(processor, 3, "e10", closing_at)  # closes the three windows at one watermark
    store.write_behind()
    assert [kind for kind, _ in _entries(log)] == ["i", "w", "w", "w", "w", "clock"]
    chunk_key = log[0][0]
    windows = [
        WindowState.decode(value)
        for key, value in log
        if value is not None and store_key_parts(key)[1] == "w"
    ]
    assert [ids_at for _, ids_at in windows] == [chunk_key] * 3 + [None]  # the open one holds its ids
    assert pickle.loads(log[0][1]) == (1, {(f"c{c}", "egress_bytes", START): {f"e{c}"} for c in range(3)})  # type: ignore[arg-type]
    assert windows[3][0].event_ids == {"e10"}

    del log[:]
    later = closing_at + KEEP_MS + IDS_BUCKET_MS
    _one_event(processor, 4, "later", later, record_time=later)
    store.write_behind()
    assert [kind for kind, _ in _entries(log)] == ["i", "w", "w", "clock", "deleted i"]
    assert log[-1] == (chunk_key, None)


def test_a_duplicate_is_not_counted_within_a_short_horizon_and_counted_once_more_after_it() -> None:
    """A horizon shorter than the lateness (a stated choice, DESIGN §4) bounds dedup: the ids go
    once the watermark passes the horizon after the close. The window reopened then remembers its
    ids again: a retry of what it counts anew is a duplicate (issue 34). Expiry is judged from the
    watermark, not from what the store still holds, so a processor restarted from the changelog
    (or the in-memory store of replay) decides alike."""
    closed_by = START + 5 * 60_000  # the watermark that closes the first minute

    def run(restart_at: int | None, replay: bool) -> tuple[int, int]:
        log: list[tuple[bytes, bytes | None]] = []
        processor, store, _ = start_processor({}, log, 0, SHORT_RULES)
        if replay:
            processor = PartitionProcessor(0, SHORT_RULES, UnsavedStore())
        events = [
            ("a", START + 1),
            ("x", closed_by),
            ("a", START + 1),  # within the horizon: a duplicate
            ("y", closed_by + KEEP_MS - 1),
            ("a", START + 1),  # still within it
            ("z", closed_by + KEEP_MS),
            ("a", START + 1),  # past it: counted again, and remembered again
            ("a", START + 1),  # its retry: a duplicate
        ]
        sent = NOW  # each record stamped when it is sent: the present
        for offset, (event_id, timestamp) in enumerate(events):
            if offset == restart_at:
                store.write_behind()
                processor, store, _ = start_processor(recovered(log), log, offset, SHORT_RULES)
            sent = max(sent, timestamp)
            _one_event(processor, offset, event_id, timestamp, record_time=sent)
        return processor.stats.duplicates, processor.stats.undeduplicated

    assert run(None, replay=False) == (3, 1)
    assert run(None, replay=True) == (3, 1)
    for restart_at in range(1, 8):
        duplicates, undeduplicated = run(restart_at, replay=False)
        assert undeduplicated == (1 if restart_at <= 6 else 0), restart_at
        assert duplicates == sum(1 for offset in (2, 4, 7) if offset >= restart_at), restart_at


def test_state_written_in_format_1_recovers_and_is_rewritten_with_its_ids_in_a_chunk() -> None:
    """A changelog written before issue 18 (format 1: every window holds its ids) recovers: its
    closed windows still deduplicate, are rewritten once with their ids in a chunk (or without
    them, when expired), and totals continue exactly."""
    old_close = START + 2 * 60_000
    first, second, expired = (
        WindowKey("c", "egress_bytes", START + m * 60_000) for m in (0, 1, -3 * 24 * 60)
    )
    watermark = old_close + 60_000

    def v1(
        key: WindowKey, ids: list[str] | None, revision_watermark: int, is_open: bool
    ) -> tuple[bytes, bytes]:
        revisions = (
            [] if is_open else [(0, 5 * len(ids or ["?"]), len(ids or ["?"]), 3, NOW, revision_watermark)]
        )
        row = (1, tuple(key), 5 * len(ids or ["?"]), len(ids or ["?"]), 3, ids, revisions, is_open)
        return pickle.dumps((0, "w", *key), protocol=5), pickle.dumps(row, protocol=5)

    data = dict(
        [
            v1(first, ["a"], old_close, False),
            v1(expired, ["old"], old_close - 2 * KEEP_MS, False),
            v1(second, ["b"], 0, True),
            (pickle.dumps((0, "clock"), protocol=5), pickle.dumps((1, watermark, 3), protocol=5)),
        ]
    )
    log: list[tuple[bytes, bytes | None]] = []
    processor, store, again = start_processor(data, log, 4, SHORT_RULES)
    assert again == []
    _one_event(processor, 4, "a", START + 1)  # a duplicate of the closed window's event
    _one_event(processor, 5, "b", START + 60_001)  # and of the open one's
    _one_event(processor, 6, "old", expired.window_start + 1)  # past its horizon: counted
    assert (processor.stats.duplicates, processor.stats.undeduplicated) == (2, 1)
    store.write_behind()
    rewritten = {
        store_key_parts(key)[2:]: value
        for key, value in log
        if value is not None and store_key_parts(key)[1] == "w"
    }
    state, ids_at = WindowState.decode(rewritten[first])
    assert ids_at is not None and (state.value, state.last_offset) == (5, 3)  # moved, not changed
    assert pickle.loads(data[ids_at])[1][first] == {"a"}
    state, ids_at = WindowState.decode(rewritten[expired])  # reopened by "old", closed again
    assert ids_at is not None and pickle.loads(data[ids_at])[1][expired] == {"old"}
    assert pickle.loads(rewritten[expired])[0] == 4  # the current format (4: a time_weighted hour's levels)


def test_a_closed_window_is_forgotten_once_no_event_can_reopen_it() -> None:
    """Past its end plus the maximum lateness, the clock skew and a day, no event is accepted for a
    window: its state is dropped then, not a record before, alike after a restart at any record, a
    crash keeping any prefix of the last write-behind, and on replay's store. A window corrected
    after its close is listed twice and dropped once."""
    deadline = START + RULES.size_ms + RULES.forget_after_ms
    later = START + 10 * 60_000
    events = [
        ("a", "c", START + 1),
        ("b", "d", START + 1),
        ("x", "c", later),  # closes both first windows
        ("late", "c", START + 2),  # a correction: reopens c's
        ("y", "c", later + 10 * 60_000),  # closes it again
        ("z", "c", deadline - 1),
        ("w", "c", deadline),  # forgets both first windows
    ]
    first_windows = [WindowKey(c, "egress_bytes", START) for c in ("c", "d")]
    kept = WindowKey("c", "egress_bytes", later)

    def stored(records: int, restart_at: int | None = None, replay: bool = False) -> list[bool]:
        log: list[tuple[bytes, bytes | None]] = []
        processor, store, _ = start_processor({}, log, 0, RULES)
        if replay:
            processor = PartitionProcessor(0, RULES, UnsavedStore())
        for offset, (event_id, customer, timestamp) in enumerate(events[:records]):
            if offset == restart_at:
                store.write_behind()
                processor, store, _ = start_processor(recovered(log), log, offset, RULES)
            _one_event(processor, offset, event_id, timestamp, customer, record_time=timestamp)
        store.write_behind()
        if restart_at is None and records > 4:
            assert processor.stats.corrections == 1
        return [processor.store.load_window(key) is not None for key in (*first_windows, kept)]

    assert stored(len(events) - 1) == [True, True, True]
    assert stored(len(events)) == [False, False, True]
    assert stored(len(events), replay=True) == [False, False, True]
    for restart_at in range(1, len(events)):
        assert stored(len(events), restart_at) == [False, False, True], restart_at

    # A crash amid the last record's writes: it is processed again from what was kept.
    log: list[tuple[bytes, bytes | None]] = []
    processor, store, _ = start_processor({}, log, 0, RULES)
    for offset, (event_id, customer, timestamp) in enumerate(events[:-1]):
        _one_event(processor, offset, event_id, timestamp, customer, record_time=timestamp)
    store.write_behind()
    committed = len(log)
    _one_event(processor, len(events) - 1, "w", deadline, "c", record_time=deadline)
    store.write_behind()
    writes = [kind for kind, _ in _entries(log[committed:])]
    assert writes.count("deleted w") == 2 and writes.index("deleted w") < writes.index("clock"), writes
    for kept_writes in range(committed, len(log) + 1):
        processor, store, _ = start_processor(recovered(log[:kept_writes]), [], len(events) - 1, RULES)
        _one_event(processor, len(events) - 1, "w", deadline, "c", record_time=deadline)
        assert [store.load_window(key) for key in first_windows] == [None, None], kept_writes
        assert store.load_window(kept) is not None


def test_a_closed_window_costs_the_processor_a_list_slot_until_it_is_forgotten() -> None:
    """Issue 18 item 5: a worker's memory is bounded by its open windows and the dedup retention,
    but a closed window must be remembered until it is forgotten, 36 days on. Traced allocations
    (not time): 10,000 windows closed over 20 series cost the processor under 40 bytes each (a key
    of its own per window, with its own strings, cost ~300)."""
    import tracemalloc

    class Discarding:  # the store's own memory is not the processor's
        def load_window(self, key: WindowKey) -> None:
            return None

        def save_window(self, state: WindowState, ids_until: int | None = None) -> None:
            pass

        def drop_window(self, key: WindowKey) -> None:
            pass

        def save_clock(self, clock: PartitionClock) -> None:
            pass

    series = [f"customer-{n}" for n in range(20)]
    minutes = 500
    records = []
    for minute in range(minutes + 10):
        at = START + minute * 60_000
        batch = [
            SERDE.batch_item(UsageEvent(f"{c}-{minute}", c, "egress_bytes", 5, "byte", at, "t", {}))
            for c in series
        ]
        records.append((SERDE.encode_batch(batch), at))
    processor = PartitionProcessor(0, RULES, Discarding())
    tracemalloc.start()
    try:
        for offset, (value, at) in enumerate(records[:10]):  # the open windows' heaps at their size
            processor.process(offset, at, JUDGE(value, at))
        before = tracemalloc.get_traced_memory()[0]
        closed_before = processor.stats.windows_closed
        for offset, (value, at) in enumerate(records[10:], start=10):
            processor.process(offset, at, JUDGE(value, at))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    closed = processor.stats.windows_closed - closed_before
    assert closed == minutes * len(series)
    assert grown / closed < 40, f"{grown / closed:.0f} bytes per closed window"


def test_a_bucket_s_chunks_cost_the_store_no_memory_each_and_go_whole_whoever_wrote_them() -> None:
    """Issue 34: ids are held for the whole lateness horizon, and every commit that closes windows
    writes a chunk: a key per chunk in memory would be ~100 bytes an event-minute, 36 days long. A
    bucket's chunks are named by their writer and number instead, so the store holds a count per
    writer. When the bucket expires, every chunk goes: this store's, those of the store before a
    restart, and one named as before issue 34."""
    import tracemalloc

    import meterline.streams.state as state_module

    class Forgetful:  # entries that keep nothing: the store's own memory alone is traced
        def get(self, key: bytes) -> bytes | None:
            return None

        def items(self) -> Iterable[tuple[bytes, bytes]]:
            return []

        def write(self, changes: Mapping[bytes, bytes | None]) -> None:
            pass

    def late_windows(processor: PartitionProcessor, store: PartitionStore, first: int, count: int) -> None:
        """`count` commits, each closing a window of its own, all into one bucket."""
        for n in range(first, first + count):  # each a late event: a window opened and closed
            _one_event(processor, n, f"late-{n}", START - n * 60_000 + 2)
            store.write_behind()

    def closed_first(entries: Entries) -> tuple[PartitionProcessor, PartitionStore]:
        store = PartitionStore(entries, 0)
        processor = PartitionProcessor(0, SHORT_RULES, store)
        _one_event(processor, 0, "first", START + 1, "c-first")
        _one_event(processor, 1, "closes", START + 2 * 60_000)  # closes the first window
        store.write_behind()
        return processor, store

    processor, store = closed_first(Forgetful())
    late_windows(processor, store, 2, 10)  # the index at its size
    tracemalloc.start()
    try:
        in_the_store = [tracemalloc.Filter(True, state_module.__file__)]
        before = tracemalloc.take_snapshot().filter_traces(in_the_store)
        late_windows(processor, store, 12, 2_000)
        after = tracemalloc.take_snapshot().filter_traces(in_the_store)
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < 10_000, f"{grown} bytes for 2,000 chunks"  # a key each held: ~200,000

    log: list[tuple[bytes, bytes | None]] = []
    processor, store = closed_first(ChangelogEntries({}, log))
    processor, store, _ = start_processor(recovered(log), log, 2, SHORT_RULES)  # a second writer
    late_windows(processor, store, 2, 100)
    chunks = {key for key, value in log if value is not None and store_key_parts(key)[1] == "i"}
    assert len(chunks) == 101 and len({store_key_parts(key)[2] for key in chunks}) == 1  # one bucket
    data = recovered(log)
    named = pickle.dumps((0, "i", store_key_parts(min(chunks))[2], "0123abcd-7"), protocol=5)
    data[named] = pickle.dumps((1, {}), protocol=5)
    processor, store, _ = start_processor(data, log, 102, SHORT_RULES)  # a third writer
    del log[:]
    later = START + 2 * 60_000 + KEEP_MS + IDS_BUCKET_MS
    _one_event(processor, 102, "later", later, record_time=later)
    store.write_behind()
    assert {key for key, value in log if value is None and store_key_parts(key)[1] == "i"} == chunks | {named}
    bucket = store_key_parts(named)[2]
    assert not [key for key in data if store_key_parts(key)[1:3] == ("i", bucket)]


def _one_event(
    processor: PartitionProcessor,
    offset: int,
    event_id: str,
    timestamp: int,
    customer: str = "c",
    record_time: int = NOW,
) -> None:
    event = UsageEvent(event_id, customer, "egress_bytes", 5, "byte", timestamp, "t", {})
    processor.process(offset, record_time, JUDGE(SERDE.encode_batch([SERDE.batch_item(event)]), record_time))


def _entries(log: list[tuple[bytes, bytes | None]]) -> list[tuple[str, bytes]]:
    """The log's writes by kind of entry: "w" window, "i" ids chunk, "clock"; "deleted ..." for a deletion."""
    return [
        (store_key_parts(key)[1] if value is not None else f"deleted {store_key_parts(key)[1]}", key)
        for key, value in log
    ]
