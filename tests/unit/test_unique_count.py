"""`unique_count` meters (issue 37): the period's answer is the number of distinct values of the
meter's `unique_by` attribute in the UTC calendar month, exact for any order, duplication,
lateness, batching and crash point, across a month's reset; against a brute force over the
distinct events written apart from the processor. Each window holds the values first seen in it,
so the windows add up to the month's answer and every sink sums them."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterline.config import load_config
from meterline.core.dimensions import declared_of
from meterline.core.months import calendar_month
from meterline.reconciler.checks.rederive import event_times, set_aside, sighting_times
from meterline.schemas.errors import InvalidEventError
from meterline.schemas.records import UsageEvent
from meterline.schemas.serde import AvroSerde
from meterline.schemas.validation import MeterRules, require_valid
from meterline.streams.judge import Judge, Verdict
from meterline.streams.processor import PartitionProcessor, rules_from
from meterline.streams.state import PartitionStore, UnsavedStore, store_key_parts
from meterline.streams.windows import DAY_MS
from tests.support.processor import (
    CRASH_PLANS,
    ChangelogEntries,
    first_sendings,
    range_totals,
    run_with_crashes,
    sums_by_window,
)

USERS = {  # compute_ms: monthly active users, in this module
    "METERLINE__METERS__COMPUTE_MS__AGGREGATION": "unique_count",
    "METERLINE__METERS__COMPUTE_MS__UNIQUE_BY": "user",
}
CONFIG = load_config(None, USERS)
SERDE = AvroSerde()
JUDGE = Judge(CONFIG, SERDE)
RULES = rules_from(CONFIG)
SIZE = CONFIG.windows.size_ms
RESET = calendar_month(1_780_000_000_000)[1]  # 2026-06-01T00:00Z: a month starts afresh
START = RESET - 90 * 60_000  # the events span 3 hours across it
NOW = START + DAY_MS // 4  # the records' produce time, after every event
UNITS = {name: meter.unit for name, meter in CONFIG.meters.items()}
RULES_OF_METERS = MeterRules.of(declared_of(CONFIG.meters).values())


def usage(n: int, customer: str, meter: str, at: int, user: str | None, quantity: int = 1) -> UsageEvent:
    attributes = {"status": "200"} if user is None else {"status": "200", "user": user}
    return UsageEvent(f"e{n}", customer, meter, quantity, UNITS[meter], at, "t", attributes)


def record(events: list[UsageEvent], at: int = NOW) -> tuple[bytes, int]:
    return SERDE.encode_batch([SERDE.batch_item(e) for e in events]), at


def month_answers(windows: dict[tuple[str, str, int], list[int]]) -> dict[tuple[str, str, int], int]:
    """(customer, meter, month start) -> the sum of its windows' values (deltas summed per window)."""
    answers: dict[tuple[str, str, int], int] = defaultdict(int)
    for (customer, meter, window), (value, _) in windows.items():
        answers[(customer, meter, calendar_month(window)[0])] += value
    return {key: value for key, value in answers.items() if value}


events = st.lists(
    st.tuples(
        st.integers(0, 40),  # the event id: a repeated id is a retry, the same event again
        st.sampled_from(["cust-a", "cust-b"]),
        st.sampled_from(["compute_ms", "api_calls"]),
        st.sampled_from(["u0", "u1", "u2", "u3", "u4", None]),  # None: without the attribute
        st.integers(0, 3 * 3_600_000 - 1),  # event time within three hours of START
    ),
    min_size=1,
    max_size=120,
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=events, **CRASH_PLANS)
def test_distinct_values_are_exact_for_any_order_duplication_reset_and_crash(
    drawn: list[tuple[int, str, str, str | None, int]],
    arrival_seed: int,
    batch: int,
    crashes: int,
    commit_rate: float,
) -> None:
    first = first_sendings(drawn)  # customer, meter, user, offset
    sent = [
        usage(n, first[n][0], first[n][1], START + first[n][3], first[n][2], quantity=n) for n, *_ in drawn
    ]
    plan = random.Random(arrival_seed)
    plan.shuffle(sent)  # any arrival order: late and out-of-order events alike
    records = [record(sent[i : i + batch]) for i in range(0, len(sent), batch)]
    records.append(record([], NOW + 365 * DAY_MS))  # a tick far ahead: all close, all forgotten

    delivered, rejected = run_with_crashes(records, JUDGE, RULES, plan, crashes, commit_rate)

    # The brute force: each distinct event once; a month's distinct users, a sum's quantities.
    users: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    sums: dict[tuple[str, str, int], int] = defaultdict(int)
    for number, (customer, meter, user, offset_ms) in first.items():
        month = calendar_month(START + offset_ms)[0]
        if meter == "api_calls":
            sums[(customer, meter, month)] += number
        elif user is not None:
            users[(customer, meter, month)].add(user)
    expected = {k: len(v) for k, v in users.items()} | {k: v for k, v in sums.items() if v}
    assert month_answers(sums_by_window(delivered)) == expected
    # Every sending of a user event without its user is a dead letter, named so.
    without_user = sum(1 for e in sent if e.meter == "compute_ms" and "user" not in e.attributes)
    assert rejected == (Counter({"missing_field": without_user}) if without_user else Counter())


def test_an_event_without_its_value_is_refused_by_the_sdk_and_the_stream_naming_the_attribute() -> None:
    """The SDK refuses (require_valid, which the HTTP ingest judges by too) what the stream dead-letters."""
    event = usage(1, "c", "compute_ms", RESET, None)
    with pytest.raises(InvalidEventError) as refused:
        require_valid(event, UNITS, RULES_OF_METERS)
    assert (refused.value.reason, refused.value.field) == ("missing_field", "attributes.user")
    assert "counts the distinct values of this attribute" in str(refused.value)
    require_valid(usage(2, "c", "compute_ms", RESET, "ann"), UNITS, RULES_OF_METERS)
    require_valid(usage(3, "c", "api_calls", RESET, None), UNITS, RULES_OF_METERS)
    [rejection] = JUDGE(*record([usage(2, "c", "compute_ms", RESET, "ann"), event])).rejections
    assert (rejection.reason, rejection.index, rejection.event) == ("missing_field", 1, event)


def test_a_value_counts_in_the_window_it_is_first_seen_and_again_after_the_reset() -> None:
    processor = PartitionProcessor(0, RULES, UnsavedStore())
    before, after = RESET - 10 * 60_000, RESET + 10 * 60_000
    emitted = processor.process(
        0,
        NOW,
        JUDGE(
            *record(
                [
                    usage(1, "c", "compute_ms", before, "ann"),
                    usage(2, "c", "compute_ms", before + SIZE, "ann"),  # the same user, a later window
                    usage(3, "c", "compute_ms", before + SIZE, "bob"),
                    usage(4, "c", "compute_ms", after, "ann"),  # a new month: ann is new again
                ]
            )
        ),
    )
    emitted += processor.process(1, NOW, JUDGE(*record([], NOW + DAY_MS)))
    assert {(a.window_start - before) // SIZE: (a.value, a.event_count) for a in emitted} == {
        0: (1, 1),
        1: (1, 2),  # two events, one of them new
        20: (1, 1),
    }


def test_a_late_event_revises_its_window_only_when_its_value_is_new_to_the_month() -> None:
    processor = PartitionProcessor(0, RULES, UnsavedStore())
    at = RESET + 60 * 60_000
    processor.process(0, NOW, JUDGE(*record([usage(1, "c", "compute_ms", at, "ann")])))
    closed = processor.process(1, NOW, JUDGE(*record([usage(2, "c", "compute_ms", at + 10 * SIZE, "bob")])))
    assert [(a.value, a.revision) for a in closed] == [(1, 0)]  # ann's window closed
    late_known = processor.process(2, NOW, JUDGE(*record([usage(3, "c", "compute_ms", at, "bob")])))
    late_new = processor.process(3, NOW, JUDGE(*record([usage(4, "c", "compute_ms", at + 1, "cy")])))
    # Each reopens ann's window, past its grace, and closes it again: a revision each. bob was
    # first seen later in the month, so his late event counts nothing there; cy is new: +1.
    revised = [(a.value, a.delta, a.event_count, a.revision) for a in late_known + late_new]
    assert revised == [(1, 0, 2, 1), (2, 1, 3, 2)]


def test_a_sighting_stored_before_its_window_counts_once_after_a_crash() -> None:
    """The store writes a first sighting before the window that counted it; a crash that keeps the
    sighting and loses the window has the record processed again, and it counts there once."""
    log: list[tuple[bytes, bytes | None]] = []
    data: dict[bytes, bytes] = {}
    store = PartitionStore(ChangelogEntries(data, log), 0)
    processor = PartitionProcessor(0, RULES, store)
    processor.recover(*store.saved_state(), 0)
    at = RESET + 60 * 60_000
    verdict = JUDGE(*record([usage(1, "c", "compute_ms", at, "ann"), usage(2, "c", "compute_ms", at, "ann")]))
    processor.process(0, NOW, verdict)
    store.write_behind()
    sighting_writes = [i for i, (key, _) in enumerate(log) if store_key_parts(key)[1] == "u"]
    window_writes = [i for i, (key, _) in enumerate(log) if store_key_parts(key)[1] == "w"]
    assert len(sighting_writes) == 1 and sighting_writes[0] < window_writes[0]

    kept = dict([log[sighting_writes[0]]])  # the crash kept the sighting, not the window or clock
    store = PartitionStore(ChangelogEntries(kept, []), 0)
    processor = PartitionProcessor(0, RULES, store)
    processor.recover(*store.saved_state(), 0)
    processor.process(0, NOW, verdict)
    processor.process(1, NOW, JUDGE(*record([usage(3, "c", "compute_ms", at + SIZE, "ann")])))
    closed = processor.process(2, NOW, JUDGE(*record([], NOW + DAY_MS)))
    assert [(a.value, a.event_count) for a in closed] == [(1, 2), (0, 1)]


def test_a_months_sightings_are_deleted_once_no_event_can_reach_it() -> None:
    log: list[tuple[bytes, bytes | None]] = []
    data: dict[bytes, bytes] = {}
    store = PartitionStore(ChangelogEntries(data, log), 0)
    processor = PartitionProcessor(0, RULES, store)
    processor.recover(*store.saved_state(), 0)
    processor.process(0, NOW, JUDGE(*record([usage(1, "c", "compute_ms", RESET + 1, "ann")])))
    store.write_behind()

    def sightings() -> list[tuple[object, ...]]:
        return [store_key_parts(key) for key in data if store_key_parts(key)[1] == "u"]

    assert sightings() == [(0, "u", "c", "compute_ms", RESET, "ann")]
    recovered = PartitionStore(ChangelogEntries(dict(data), []), 0)
    recovered.saved_state()
    assert recovered.sighting_periods() == {RESET}

    june_end = calendar_month(RESET)[1]
    last_chance = june_end + RULES.forget_after_ms  # the month's last window goes then
    # The event time of the partition (its watermark) decides, as for windows: other usage moves it.
    processor.process(
        1, last_chance, JUDGE(*record([usage(2, "d", "api_calls", last_chance - 1, None)], last_chance))
    )
    store.write_behind()
    assert sightings() != []
    processor.process(
        2, last_chance, JUDGE(*record([usage(3, "d", "api_calls", last_chance, None)], last_chance))
    )
    store.write_behind()
    assert sightings() != []  # let go by the processor; deleted by the next write, after its clock
    store.write_behind()
    assert sightings() == []
    assert (None in {value for key, value in log if store_key_parts(key)[1] == "u"}) is True


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    drawn=events,
    arrival_seed=st.integers(0, 2**32),
    start_minute=st.integers(0, 179),
    minutes=st.integers(1, 120),
)
def test_replay_of_a_range_counts_the_first_sightings_the_stream_counted(
    drawn: list[tuple[int, str, str, str | None, int]], arrival_seed: int, start_minute: int, minutes: int
) -> None:
    """reconciler.checks.rederive keeps the events of a unique_count meter in every month the range
    touches (sighting_times): a value first seen outside the range counts nothing inside it."""
    sent = [usage(n, customer, meter, START + at, user) for n, customer, meter, user, at in drawn]
    random.Random(arrival_seed).shuffle(sent)
    records = [record(sent[i : i + 5]) for i in range(0, len(sent), 5)] + [record([], NOW + 365 * DAY_MS)]
    start = START + start_minute * 60_000
    in_range = event_times(start, start + minutes * 60_000, SIZE)
    sighted = sighting_times(start, start + minutes * 60_000)
    assert sighted.start <= START if start < RESET else sighted.start == RESET

    def aside(verdict: Verdict) -> None:
        set_aside(verdict, in_range, None, CONFIG.unique_attributes, sighted)

    assert range_totals(records, JUDGE, RULES, in_range, aside) == range_totals(
        records, JUDGE, RULES, in_range
    )
