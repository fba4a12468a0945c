"""Issue 34: a duplicate is counted once for as long as an event can still change a bill, whatever
happened in between: a window reopened by a late event, a jump of the partition's event time, a
retry sent days later."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterline.config import load_config
from meterline.reconciler.checks.rederive import event_times, set_aside
from meterline.schemas.records import UsageEvent, WindowAggregate
from meterline.schemas.serde import AvroSerde
from meterline.streams.judge import Judge
from meterline.streams.processor import PartitionProcessor, rules_from
from meterline.streams.state import UnsavedStore
from meterline.streams.windows import DAY_MS, window_start
from tests.support.processor import range_totals, run_with_crashes, sums_by_window

CONFIG = load_config(None, {})
SERDE = AvroSerde()
JUDGE = Judge(CONFIG, SERDE)
RULES = rules_from(CONFIG)
TICK = SERDE.encode_batch([])
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
NOW = 1_780_000_000_000 // MINUTE_MS * MINUTE_MS


class Partition:
    """One partition's processor, fed one single-event record at a time, as `meterline emit` sends."""

    def __init__(self) -> None:
        self.processor = PartitionProcessor(0, RULES, UnsavedStore())
        self.offset = 0
        self.emitted: list[WindowAggregate] = []

    def emit(self, event_id: str, timestamp: int, quantity: int = 1, record_time: int = NOW) -> None:
        event = UsageEvent(event_id, "c", "egress_bytes", quantity, "byte", timestamp, "cli", {})
        held_from = self.processor.held_from(self.offset)
        verdict = JUDGE(SERDE.encode_batch([SERDE.batch_item(event)]), record_time, held_from)
        self.emitted += self.processor.process(self.offset, record_time, verdict)
        self.offset += 1

    def revisions(self, window_start: int) -> list[int]:
        """The values of the window's revisions, as the sinks receive them (all closed by a tick)."""
        tick = JUDGE(SERDE.encode_batch([]), NOW + 365 * DAY_MS)
        self.emitted += self.processor.process(self.offset, NOW + 365 * DAY_MS, tick)
        self.offset += 1
        return [a.value for a in self.emitted if a.window_start == window_start]


def test_a_window_reopened_after_its_ids_went_counts_a_retry_once() -> None:
    """The repro of issue 34, item 1, as `meterline emit` ran it (every record stamped now)."""
    window = NOW - 3 * HOUR_MS
    partition = Partition()
    partition.emit("A", window + 1, quantity=10)
    partition.emit("B", window + 70 * MINUTE_MS)  # closes the window
    partition.emit("C", NOW - 10 * MINUTE_MS)  # the watermark passes its close plus an hour
    partition.emit("D", window + 2, quantity=5)  # a correction reopens it
    partition.emit("D", window + 2, quantity=5, record_time=NOW + 2_000)  # its retry, seconds later
    assert partition.revisions(window) == [10, 15]


def test_a_retry_a_millisecond_later_is_counted_once_after_event_time_jumps_hours() -> None:
    """Issue 34, item 2: a quiet partition's window is closed by a tick; the next record is stamped
    two hours later in event time; the retry of the window's event arrives a millisecond after it."""
    window = NOW - 3 * HOUR_MS
    partition = Partition()
    partition.emit("A", window + 1, quantity=7, record_time=window + 1_000)
    tick = JUDGE(SERDE.encode_batch([]), window + 5 * MINUTE_MS)
    partition.emitted += partition.processor.process(partition.offset, window + 5 * MINUTE_MS, tick)
    partition.offset += 1
    partition.emit("B", window + 2 * HOUR_MS, record_time=window + 2 * HOUR_MS)
    partition.emit("A", window + 1, quantity=7, record_time=window + 2 * HOUR_MS + 1)
    assert partition.revisions(window) == [7]


def test_a_duplicate_sent_3_days_after_its_original_is_counted_once() -> None:
    """Issue 34, item 3: a producer re-sends a batch three days after an outage, while the
    partition's other usage has moved on day by day."""
    window = NOW - 3 * DAY_MS
    partition = Partition()
    partition.emit("A", window + 1, quantity=4, record_time=window + 1_000)
    for day in (1, 2, 3):
        partition.emit(f"day-{day}", window + day * DAY_MS, record_time=window + day * DAY_MS)
    partition.emit("A", window + 1, quantity=4, record_time=window + 3 * DAY_MS + 1_000)
    assert partition.revisions(window) == [4]


def test_an_event_for_a_window_the_partition_no_longer_holds_is_a_dead_letter_not_a_new_revision_0() -> None:
    """A record stamped days behind the partition's event time (a producer's clock) may carry an
    event its own timestamp still accepts, for a window forgotten since (past the lateness, the
    clock skew and a day). Counted, it would start the window again at revision 0, an identity
    already billed, with none of its ids. It is dead-lettered as too late, whatever the crashes."""
    window = NOW - 40 * DAY_MS
    first = UsageEvent("A", "c", "egress_bytes", 3, "byte", window + 1, "t", {})
    later = UsageEvent("B", "c", "egress_bytes", 1, "byte", window + 37 * DAY_MS, "t", {})
    behind = UsageEvent("C", "c", "egress_bytes", 9, "byte", window + 2, "t", {})
    records = [
        (SERDE.encode_batch([SERDE.batch_item(first)]), window + 1_000),
        (SERDE.encode_batch([SERDE.batch_item(later)]), later.timestamp),  # forgets the first window
        (SERDE.encode_batch([SERDE.batch_item(e) for e in (behind, first)]), window + 34 * DAY_MS),
        (TICK, NOW + 365 * DAY_MS),
    ]
    verdict = JUDGE(records[2][0], records[2][1])
    assert verdict.rejections == [] and len(verdict.billable) == 2  # its record alone accepts both
    for plan_seed in range(40):
        plan = random.Random(plan_seed)
        delivered, letters = run_with_crashes(records, JUDGE, RULES, plan, plan.randint(0, 3), 0.5)
        assert sums_by_window(delivered) == {
            ("c", "egress_bytes", window): [3, 1],
            ("c", "egress_bytes", window_start(later.timestamp, RULES.size_ms)): [1, 1],
        }, plan_seed
        assert letters == Counter({"too_late": 2}), plan_seed

    partition = Partition()
    for value, record_time in records[:2]:
        partition.emitted += partition.processor.process(
            partition.offset,
            record_time,
            JUDGE(value, record_time, partition.processor.held_from(partition.offset)),
        )
        partition.offset += 1
    verdict = JUDGE(records[2][0], records[2][1], partition.processor.held_from(partition.offset))
    held_from = later.timestamp - RULES.forget_after_ms  # on a minute: the start of its window
    assert [(r.index, r.detail) for r in verdict.rejections] == [
        (
            index,
            f"too_late: timestamp={timestamp}: before {held_from}, the earliest this partition "
            "still holds: its event time has moved past this window by more than the lateness "
            "horizon, and the window's total and ids are gone",
        )
        for index, timestamp in ((0, window + 2), (1, window + 1))
    ]
    assert verdict.gone == 2 and verdict.billable == []


def arrivals(seed: int, max_batch: int) -> tuple[list[tuple[bytes, int]], list[UsageEvent]]:
    """Records as a partition sees them (stamped when sent), and the events sent: usage of the
    present, retries of anything sent before (a millisecond or days later), late events that
    reopen closed windows, ticks of a quiet partition, and jumps of event time of up to 30 hours;
    the last record a tick that closes every window."""
    rng = random.Random(seed)
    customers, statuses = ("a", "b", "c"), ("200", "201", "404")
    present = NOW - 20 * DAY_MS
    sent: list[UsageEvent] = []
    batch: list[UsageEvent] = []
    records: list[tuple[bytes, int]] = []

    def flush() -> None:
        if batch:
            records.append((SERDE.encode_batch([SERDE.batch_item(e) for e in batch]), present))
            batch.clear()

    for step in range(300):
        present += rng.randint(0, 30_000)
        roll = rng.random()
        if roll < 0.04:  # a quiet customer's backlog, a producer's clock: hours ahead in event time
            flush()
            present += rng.randint(HOUR_MS, 30 * HOUR_MS)
        elif roll < 0.08:  # a quiet partition's tick, stamped by the wall clock
            flush()
            records.append((TICK, present + rng.randint(0, 10 * MINUTE_MS)))
        elif roll < 0.28 and sent:  # a retry of anything sent before
            batch.append(rng.choice(sent))
        else:
            if roll < 0.40 and sent:  # a correction, late into a window that may have closed
                timestamp = window_start(rng.choice(sent).timestamp, RULES.size_ms) + rng.randint(0, 59_999)
            else:
                timestamp = present - rng.randint(0, 20_000)
            meter = rng.choice(("api_calls", "egress_bytes"))
            unit, attributes = (
                ("call", {"status": rng.choice(statuses)}) if meter == "api_calls" else ("byte", {})
            )
            event = UsageEvent(
                f"e{step}",
                rng.choice(customers),
                meter,
                rng.randint(1, 1_000),
                unit,
                timestamp,
                "t",
                attributes,
            )
            sent.append(event)
            batch.append(event)
        if len(batch) >= rng.randint(1, max_batch):
            flush()
    flush()
    records.append((TICK, present + 365 * DAY_MS))  # the end: every window closes

    return records, sent


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    max_batch=st.sampled_from([1, 5, 40]),
    commit_rate=st.sampled_from([1.0, 0.3, 0.05]),
    crashes=st.integers(0, 4),
)
def test_every_total_is_the_sum_of_its_distinct_events_through_retries_reopenings_jumps_and_crashes(
    seed: int, max_batch: int, commit_rate: float, crashes: int
) -> None:
    """Issue 34: with the default horizon every window's total is what a brute force finds, the
    quantities of its distinct event ids once each, whatever the retries, reopenings, jumps of
    event time and crashes (`arrivals`); nothing is dead-lettered."""
    records, sent = arrivals(seed, max_batch)
    brute_force: dict[tuple[str, str, int], list[int]] = {}
    for event in {e.event_id: e for e in sent}.values():
        if event.attributes.get("status", "200").startswith("2"):
            total = brute_force.setdefault(
                (event.customer_id, event.meter, window_start(event.timestamp, RULES.size_ms)), [0, 0]
            )
            total[0] += event.quantity
            total[1] += 1
    delivered, letters = run_with_crashes(records, JUDGE, RULES, random.Random(seed), crashes, commit_rate)
    assert sums_by_window(delivered) == brute_force
    assert letters == Counter()


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), hours=st.integers(1, 48), customer=st.sampled_from([None, "b"]))
def test_replay_setting_aside_other_windows_derives_the_range_s_totals_as_the_stream_did(
    seed: int, hours: int, customer: str | None
) -> None:
    """reconciler.checks.rederive folds only the windows of the range asked (and of its customer): the
    others' events move event time only. Every window of the range ends where the whole fold
    ends it, ids included, however the range cuts through retries, reopenings and jumps."""
    records, sent = arrivals(seed, 20)
    start = random.Random(seed).choice(sent).timestamp
    in_range = event_times(start, start + hours * HOUR_MS, RULES.size_ms)

    replayed = range_totals(
        records, JUDGE, RULES, in_range, lambda v: set_aside(v, in_range, customer), customer
    )
    assert replayed == range_totals(records, JUDGE, RULES, in_range, customer=customer)
