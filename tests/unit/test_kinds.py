"""Meters that do not add up (issue 37): a `max` meter's period answer, the peak, and a `last`
meter's, the quantity of the latest event, are exact for any order, duplication, lateness, batching
and crash point, against a brute force over the distinct events written apart from the processor
(no fold, no period_answer). A `sum` meter beside them keeps its totals."""

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
from meterline.streams.windows import DAY_MS, combine, fold, later, period_answer, running
from tests.support.processor import CRASH_PLANS, first_sendings, run_with_crashes, sums_by_window

LEVELS = {  # in this module, compute_ms is a peak and egress_bytes a level at the period's end
    "METERLINE__METERS__COMPUTE_MS__AGGREGATION": "max",
    "METERLINE__METERS__EGRESS_BYTES__AGGREGATION": "last",
}
CONFIG = load_config(None, LEVELS)
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
    assert [period_answer(kind, {3: 4, 1: 9, 2: 2}) for kind in ("sum", "max", "last")] == [15, 9, 4]
    assert [running(kind, 9, 4) for kind in ("count", "max", "last")] == [13, 9, 4]
    assert later((5, "e2"), (5, "e10")) and not later((4, "e9"), (5, "e1")) and later((1, "a"), None)


events = st.lists(
    st.tuples(
        st.integers(0, 40),  # the event id: a repeated id is a retry, the same event again
        st.sampled_from(["cust-a", "cust-b"]),
        st.sampled_from(["compute_ms", "api_calls", "egress_bytes"]),
        st.integers(0, 1_000),
        st.integers(0, 3 * 3_600_000 - 1),  # event time within three hours of START
    ),
    min_size=1,
    max_size=120,
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=events, **CRASH_PLANS)
def test_a_peak_and_a_latest_level_are_exact_for_any_order_duplication_and_crash(
    drawn: list[tuple[int, str, str, int, int]],
    arrival_seed: int,
    batch: int,
    crashes: int,
    commit_rate: float,
) -> None:
    first = first_sendings(drawn)  # customer, meter, quantity, offset
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
    windows: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
    for (customer, meter, start), (value, _) in sums_by_window(delivered).items():
        windows[(customer, meter)][start] = value
    ours = {pair: period_answer(CONFIG.meters[pair[1]].aggregation, w) for pair, w in windows.items()}
    # The brute force: each distinct event once; the peak is the largest quantity, the level the
    # quantity of the latest event (its id deciding a tie), usage the sum.
    peaks: dict[tuple[str, str], int] = {}
    latest: dict[tuple[str, str], tuple[int, str, int]] = {}
    sums: dict[tuple[str, str], int] = {}
    for number, (customer, meter, quantity, at) in first.items():
        if meter == "compute_ms":
            peaks[(customer, meter)] = max(peaks.get((customer, meter), 0), quantity)
        elif meter == "egress_bytes":
            latest[(customer, meter)] = max(
                latest.get((customer, meter), (-1, "", 0)), (at, f"e{number}", quantity)
            )
        else:
            sums[(customer, meter)] = sums.get((customer, meter), 0) + quantity
    assert ours == peaks | sums | {pair: quantity for pair, (_, _, quantity) in latest.items()}
