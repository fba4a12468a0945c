"""Meters that do not add up (issue 37): a `max` meter's period answer, the peak, is exact for any
order, duplication, lateness, batching and crash point, against a brute force over the distinct
events written apart from the processor (no fold, no combine). A `sum` meter beside it keeps its
totals."""

from __future__ import annotations

import random
from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterline.config import load_config
from meterline.schemas.records import UsageEvent
from meterline.schemas.serde import AvroSerde
from meterline.streams.judge import Judge
from meterline.streams.processor import rules_from
from meterline.streams.windows import DAY_MS, combine, fold
from tests.support.processor import run_with_crashes, sums_by_window

SEATS = {"METERLINE__METERS__COMPUTE_MS__AGGREGATION": "max"}  # compute_ms: a peak, in this module
CONFIG = load_config(None, SEATS)
SERDE = AvroSerde()
JUDGE = Judge(CONFIG, SERDE)
RULES = rules_from(CONFIG)
SIZE = CONFIG.windows.size_ms
START = 1_780_000_000_000 // SIZE * SIZE
NOW = START + DAY_MS // 4  # the records' produce time, after every event
UNITS = {name: meter.unit for name, meter in CONFIG.meters.items()}


def test_the_window_fold_and_the_period_answer_per_kind() -> None:
    assert [fold("sum", 5, 3), fold("count", 5, 3), fold("max", 5, 3), fold("max", 5, 9)] == [8, 6, 5, 9]
    assert [combine("sum", [4, 9, 2]), combine("count", [4, 9, 2]), combine("max", [4, 9, 2])] == [15, 15, 9]
    assert combine("max", []) == 0


events = st.lists(
    st.tuples(
        st.integers(0, 40),  # the event id: a repeated id is a retry, the same event again
        st.sampled_from(["cust-a", "cust-b"]),
        st.sampled_from(["compute_ms", "api_calls"]),
        st.integers(0, 1_000),
        st.integers(0, 3 * 3_600_000 - 1),  # event time within three hours of START
    ),
    min_size=1,
    max_size=120,
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    drawn=events,
    arrival_seed=st.integers(0, 2**32),
    batch=st.sampled_from([1, 5, 40]),
    crashes=st.integers(0, 3),
    commit_rate=st.sampled_from([1.0, 0.3]),
)
def test_a_peak_is_exact_for_any_order_duplication_and_crash(
    drawn: list[tuple[int, str, str, int, int]],
    arrival_seed: int,
    batch: int,
    crashes: int,
    commit_rate: float,
) -> None:
    # An id stands for one event: its retries carry what its first sending carried.
    first: dict[int, tuple[str, str, int, int]] = {}
    for number, customer, meter, quantity, offset_ms in drawn:
        first.setdefault(number, (customer, meter, quantity, offset_ms))
    sent = [
        UsageEvent(
            f"e{n}",
            *first[n][:2],
            first[n][2],
            UNITS[first[n][1]],
            START + first[n][3],
            "t",
            {"status": "200"},
        )
        for n, *_ in drawn
    ]
    plan = random.Random(arrival_seed)
    plan.shuffle(sent)  # any arrival order: late and out-of-order events alike
    records = [
        (SERDE.encode_batch([SERDE.batch_item(e) for e in sent[i : i + batch]]), NOW)
        for i in range(0, len(sent), batch)
    ]
    records.append((SERDE.encode_batch([]), NOW + 365 * DAY_MS))  # a tick far ahead: all close

    delivered, rejected = run_with_crashes(records, JUDGE, RULES, plan, crashes, commit_rate)

    assert rejected == {}
    windows: dict[tuple[str, str], list[int]] = defaultdict(list)
    for (customer, meter, _), (value, _) in sums_by_window(delivered).items():
        windows[(customer, meter)].append(value)
    ours = {pair: combine(CONFIG.meters[pair[1]].aggregation, values) for pair, values in windows.items()}
    # The brute force: each distinct event once; the peak is the largest quantity, usage the sum.
    peaks: dict[tuple[str, str], int] = {}
    sums: dict[tuple[str, str], int] = {}
    for customer, meter, quantity, _ in first.values():
        if meter == "compute_ms":
            peaks[(customer, meter)] = max(peaks.get((customer, meter), 0), quantity)
        else:
            sums[(customer, meter)] = sums.get((customer, meter), 0) + quantity
    assert ours == peaks | sums
