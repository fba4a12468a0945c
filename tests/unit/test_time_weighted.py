"""`time_weighted` meters (issue 37): each event sets the customer's level, and each UTC hour's
window holds the level integrated over it in level-seconds, carried into hours without events and
revised, hour after hour, by a late event until the next level event. Exact for any order,
duplication, lateness, batching and crash point, across a month's reset; against a brute force
that walks the seconds one by one, written apart from the processor."""

from __future__ import annotations

import random
from bisect import bisect_right
from collections import Counter, defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterline.config import load_config
from meterline.core.dimensions import declared_of
from meterline.core.months import calendar_month
from meterline.schemas.errors import InvalidEventError
from meterline.schemas.records import UsageEvent, WindowAggregate
from meterline.schemas.serde import AvroSerde
from meterline.schemas.validation import MAX_LEVEL, MeterRules, require_valid
from meterline.streams.accrual import SLICE_MS, accrued
from meterline.streams.judge import Judge
from meterline.streams.processor import PartitionProcessor, rules_from
from meterline.streams.state import UnsavedStore
from meterline.streams.windows import DAY_MS
from tests.support.processor import (
    CRASH_PLANS,
    Log,
    first_sendings,
    recovered,
    run_with_crashes,
    start_processor,
    sums_by_window,
)

STORAGE = {  # compute_ms: a level held, in this module; its price is written in level-seconds
    "METERLINE__METERS__COMPUTE_MS__AGGREGATION": "time_weighted",
    "METERLINE__PLANS__STANDARD__PRICES__COMPUTE_MS__UNIT": "millisecond-second",
}
CONFIG = load_config(None, STORAGE)
SERDE = AvroSerde()
JUDGE = Judge(CONFIG, SERDE)
RULES = rules_from(CONFIG)
RESET = calendar_month(1_780_000_000_000)[1]  # 2026-06-01T00:00Z: a month starts afresh
START = RESET - 90 * 60_000  # the events span 3 hours across it
HORIZON = RESET + 4 * SLICE_MS  # the last tick closes every hour before it
NOW = START + DAY_MS // 4  # the records' produce time, after every event
UNITS = {name: meter.unit for name, meter in CONFIG.meters.items()}


def usage(n: int, customer: str, meter: str, at: int, quantity: int) -> UsageEvent:
    return UsageEvent(f"e{n}", customer, meter, quantity, UNITS[meter], at, "t", {"status": "200"})


def record(events: list[UsageEvent], at: int = NOW) -> tuple[bytes, int]:
    return SERDE.encode_batch([SERDE.batch_item(e) for e in events]), at


def brute_force_hours(levels: list[tuple[int, str, int]], first_hour: int, end: int) -> dict[int, int]:
    """Hour start -> the level-seconds of each second in [first_hour, end): at a second, the level
    of the latest event (time, then id) stamped before the second ends; 0 before any."""
    ordered = sorted(levels)
    stamps = [timestamp for timestamp, _, _ in ordered]
    hours: dict[int, int] = defaultdict(int)
    for second in range(first_hour, end, 1000):
        latest = bisect_right(stamps, second + 999) - 1
        hours[second - second % SLICE_MS] += ordered[latest][2] if latest >= 0 else 0
    return {hour: total for hour, total in hours.items() if total}


events = st.lists(
    st.tuples(
        st.integers(0, 40),  # the event id: a repeated id is a retry, the same event again
        st.sampled_from(["cust-a", "cust-b"]),
        st.sampled_from(["compute_ms", "api_calls"]),
        st.integers(0, 3 * SLICE_MS - 1),  # event time within three hours of START
        st.sampled_from([0, 1, 7, 1000, 25_000]),  # the level (a sum's quantity)
    ),
    min_size=1,
    max_size=80,
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=events, **CRASH_PLANS)
def test_each_hour_accrues_the_level_exactly_for_any_order_duplication_reset_and_crash(
    drawn: list[tuple[int, str, str, int, int]],
    arrival_seed: int,
    batch: int,
    crashes: int,
    commit_rate: float,
) -> None:
    first = first_sendings(drawn)  # customer, meter, offset, level
    sent = [usage(n, first[n][0], first[n][1], START + first[n][2], first[n][3]) for n, *_ in drawn]
    plan = random.Random(arrival_seed)
    plan.shuffle(sent)  # any arrival order: late and out-of-order events alike
    records = [record(sent[i : i + batch]) for i in range(0, len(sent), batch)]
    records.append(record([], HORIZON + RULES.grace_ms))  # a tick: every hour before HORIZON closes

    delivered, rejected = run_with_crashes(records, JUDGE, RULES, plan, crashes, commit_rate)

    levels: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    sums: dict[tuple[str, str, int], int] = defaultdict(int)
    for number, (customer, meter, offset_ms, quantity) in first.items():
        if meter == "compute_ms":
            levels[customer].append((START + offset_ms, f"e{number}", quantity))
        else:
            sums[(customer, meter, START + offset_ms - (START + offset_ms) % RULES.size_ms)] += quantity
    expected = {k: v for k, v in sums.items() if v}
    for customer, changes in levels.items():
        for hour, total in brute_force_hours(changes, START - START % SLICE_MS, HORIZON).items():
            expected[(customer, "compute_ms", hour)] = total
    windows = {key: value for key, (value, _) in sums_by_window(delivered).items() if value}
    assert windows == expected
    assert rejected == Counter()


def test_a_held_level_closes_an_hour_each_hour_and_a_late_level_revises_each_until_the_next() -> None:
    """The chain, by hand: 10 from 00:30, then 4 from 03:30. A late event (20 from 01:15) revises
    01:00 and 02:00, which carries 20 into 03:00 (still open) until 03:30."""
    hour = RESET
    processor = PartitionProcessor(0, RULES, UnsavedStore())
    out = []
    for offset, (at, level) in enumerate([(hour + SLICE_MS // 2, 10), (hour + 7 * SLICE_MS // 2, 4)]):
        out += processor.process(offset, NOW, JUDGE(*record([usage(offset, "c", "compute_ms", at, level)])))
    assert [(a.window_start - hour, a.value, a.revision, a.event_count) for a in out] == [
        (0, 10 * 1800, 0, 1),
        (SLICE_MS, 10 * 3600, 0, 0),
        (2 * SLICE_MS, 10 * 3600, 0, 0),
    ]
    late = usage(2, "c", "compute_ms", hour + SLICE_MS + SLICE_MS // 4, 20)
    again = processor.process(2, NOW, JUDGE(*record([late])))
    again += processor.process(3, NOW, JUDGE(*record([], hour + 4 * SLICE_MS + RULES.grace_ms)))
    assert [(a.window_start - hour, a.value, a.delta, a.revision) for a in again] == [
        (SLICE_MS, 10 * 900 + 20 * 2700, 20 * 2700 - 10 * 2700, 1),
        (2 * SLICE_MS, 20 * 3600, 10 * 3600, 1),
        (3 * SLICE_MS, 20 * 1800 + 4 * 1800, 20 * 1800 + 4 * 1800, 0),
    ]


def test_a_crash_anywhere_in_a_write_keeps_each_hour_and_the_hours_it_revised_together() -> None:
    """A late level revises an hour and the hours after it in one record: a crash that keeps any
    part of its write (the changelog's first k entries, for every k) recovers the same windows and
    sends no revision that differs from one sent before, nor one more. Written in record order, the revised
    hour can be kept without the next one's change, which no replay redoes."""
    hour = RESET
    records = [
        record([usage(0, "c", "compute_ms", hour + SLICE_MS // 2, 10)]),
        record([usage(1, "c", "compute_ms", hour + 7 * SLICE_MS // 2, 4)]),
        record([usage(2, "c", "compute_ms", hour + SLICE_MS + SLICE_MS // 4, 20)]),  # late
        record([usage(3, "c", "compute_ms", hour + SLICE_MS + 3 * SLICE_MS // 4, 30)]),  # and again
        record([], hour + 4 * SLICE_MS + RULES.grace_ms),
    ]
    final_tick = record([], hour + 6 * SLICE_MS + RULES.grace_ms)

    def run(processor: PartitionProcessor, offsets: range) -> list[WindowAggregate]:
        out = []
        for offset in offsets:
            value, timestamp = records[offset] if offset < len(records) else final_tick
            out += processor.process(offset, timestamp, JUDGE(value, timestamp, processor.held_from(offset)))
        return out

    log: Log = []
    processor, store, _ = start_processor({}, log, 0, RULES)
    committed = run(processor, range(2))
    store.write_behind()
    first_write = len(log)
    in_flight = run(processor, range(2, 5))
    store.write_behind()
    whole = committed + in_flight + run(processor, range(5, 6))
    assert len(log) - first_write >= 4  # the revised hours 01:00 and 02:00, 03:00 and 04:00
    for kept in range(first_write, len(log) + 1):
        processor, _, again = start_processor(recovered(log[:kept]), log[:kept], 2, RULES)
        delivered = committed + in_flight + again + run(processor, range(2, 6))
        crash = f"a crash keeping {kept - first_write} entries"
        assert sums_by_window(delivered) == sums_by_window(whole), crash
        assert {a.identity for a in delivered} == {a.identity for a in whole}, crash  # no revision more


def test_accrual_counts_from_the_second_an_event_is_stamped_in() -> None:
    """A level takes effect at the start of its second; two in one second: the later holds it."""
    start = RESET
    changes = [(start + 1_500, "b", 5), (start + 1_999, "a", 9)]
    assert accrued(2, changes, start, start + 4_000) == 2 * 1 + 9 * 3
    assert accrued(7, [], start, start + SLICE_MS) == 7 * 3600


def test_a_level_no_meter_value_can_report_is_refused_by_the_sdk_and_dead_lettered_by_the_stream() -> None:
    rules = MeterRules.of(declared_of(CONFIG.meters).values())
    too_high = usage(1, "c", "compute_ms", START, MAX_LEVEL + 1)
    with pytest.raises(InvalidEventError) as refused:
        require_valid(too_high, UNITS, rules)
    assert (refused.value.reason, refused.value.field, refused.value.value) == (
        "level_too_high",
        "quantity",
        MAX_LEVEL + 1,
    )
    require_valid(usage(2, "c", "compute_ms", START, MAX_LEVEL), UNITS, rules)
    require_valid(usage(3, "c", "api_calls", START, MAX_LEVEL + 1), UNITS, rules)  # a sum's quantity
    verdict = JUDGE(*record([too_high, usage(4, "c", "compute_ms", START, MAX_LEVEL)]))
    assert [(r.reason, r.index) for r in verdict.rejections] == [("level_too_high", 0)]
    assert [e.event_id for e in verdict.billable] == ["e4"]
    assert len(str(MAX_LEVEL * 3600)) == 15  # an hour of the highest level is a 15-digit meter value
