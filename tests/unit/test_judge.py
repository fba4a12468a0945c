"""The judge sorts every event of a record as the rules one by one sort it (check_event,
check_timing, the meter's BillableFilter), though its first look (triage: compiled in
schemas._readers, in Python in schemas.validation) reckons the timing bounds once per record, reads
the fields from the events' slots and skips the filter call for meters without rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterline.config import load_config
from meterline.core.dimensions import declared_of
from meterline.schemas import _readers, validation
from meterline.schemas.errors import RejectReason
from meterline.schemas.records import UsageEvent
from meterline.schemas.serde import AvroSerde
from meterline.schemas.validation import MeterRules, check_event, check_timing
from meterline.streams import judge
from meterline.streams.billable import BillableFilter
from meterline.streams.judge import Judge

CONFIG = load_config(None, {})
SERDE = AvroSerde()
JUDGE = Judge(CONFIG, SERDE)
LATENESS, SKEW = CONFIG.windows.max_lateness_ms, CONFIG.windows.max_clock_skew_ms
RECORD_TIME = 1_780_000_000_000


def event(
    *,
    timestamp: int = RECORD_TIME,
    meter: str = "api_calls",
    unit: str | None = None,
    quantity: int = 1,
    attributes: dict[str, str] | None = None,
    customer_id: str = "cust-1",
) -> UsageEvent:
    return UsageEvent(
        "evt-1",
        customer_id,
        meter,
        quantity,
        CONFIG.meter_units.get(meter, "call") if unit is None else unit,
        timestamp,
        "test",
        {"status": "200"} if attributes is None else attributes,
    )


Sorted = tuple[list[UsageEvent], list[UsageEvent], list[tuple[str, int | None]]]


METER_RULES = MeterRules.of(declared_of(CONFIG.meters).values())


def judged(events: list[UsageEvent]) -> Sorted:
    """The billable events, the non-billable ones, and (reason, index) of each rejected one, as the
    judge sorts one batch record of `events`."""
    verdict = JUDGE(SERDE.encode_batch([SERDE.batch_item(e) for e in events]), RECORD_TIME)
    return verdict.billable, verdict.non_billable, [(r.reason.value, r.index) for r in verdict.rejections]


def by_the_rules(events: list[UsageEvent], meter_rules: MeterRules = METER_RULES) -> Sorted:
    """The same, each event put through check_event, check_timing, its meter's rules (a
    unique_count meter's attribute) and its meter's filter in turn."""
    rules = {name: BillableFilter(meter.billable) for name, meter in CONFIG.meters.items()}
    billable, non_billable, rejected = [], [], []
    for index, e in enumerate(events):
        error = check_event(e, CONFIG.meter_units) or check_timing(e.timestamp, RECORD_TIME, LATENESS, SKEW)
        error = error or meter_rules.check(e)
        if error is not None:
            rejected.append((error.reason.value, index))
        elif rules[e.meter](e.attributes):
            billable.append(e)
        else:
            non_billable.append(e)
    return billable, non_billable, rejected


def test_the_timing_bounds_are_inclusive_and_one_millisecond_past_them_is_rejected() -> None:
    earliest, too_late = event(timestamp=RECORD_TIME - LATENESS), event(timestamp=RECORD_TIME - LATENESS - 1)
    latest, too_early = event(timestamp=RECORD_TIME + SKEW), event(timestamp=RECORD_TIME + SKEW + 1)
    assert judged([earliest, too_late, latest, too_early]) == (
        [earliest, latest],
        [],
        [(RejectReason.TOO_LATE.value, 1), (RejectReason.TOO_FAR_FUTURE.value, 3)],
    )


def test_a_meter_without_rules_bills_any_attributes_and_a_rule_sorts_by_them() -> None:
    bare, failed = (
        event(meter="egress_bytes", attributes={}),
        event(meter="egress_bytes", attributes={"status": "500"}),
    )
    server_error, no_status = event(attributes={"status": "500"}), event(attributes={})
    no_content = event(attributes={"status": "204"})
    assert judged([bare, failed, server_error, no_status, no_content]) == (
        [bare, failed, no_content],
        [server_error, no_status],
        [],
    )


def test_an_invalid_event_is_rejected_by_the_first_rule_it_breaks_even_when_also_out_of_time() -> None:
    events = [
        event(quantity=-1, timestamp=RECORD_TIME + SKEW + 1),
        event(meter="nope", timestamp=RECORD_TIME - LATENESS - 1),
        event(unit="byte"),
        event(customer_id=""),
    ]
    assert judged(events) == (
        [],
        [],
        [
            (RejectReason.NEGATIVE_QUANTITY.value, 0),
            (RejectReason.UNKNOWN_METER.value, 1),
            (RejectReason.UNIT_MISMATCH.value, 2),
            (RejectReason.MISSING_FIELD.value, 3),
        ],
    )


EVENTS = st.builds(
    event,
    timestamp=st.sampled_from([RECORD_TIME - LATENESS, RECORD_TIME + SKEW, RECORD_TIME])
    | st.integers(RECORD_TIME - LATENESS - 3, RECORD_TIME - LATENESS + 3)
    | st.integers(RECORD_TIME + SKEW - 3, RECORD_TIME + SKEW + 3),
    meter=st.sampled_from([*CONFIG.meters, "unknown"]),
    unit=st.none() | st.sampled_from(["call", "byte"]),
    quantity=st.integers(-2, 5),
    attributes=st.dictionaries(
        st.sampled_from(["status", "region"]), st.sampled_from(["200", "299", "500", ""])
    ),
    customer_id=st.sampled_from(["cust-1", ""]),
)


@given(st.lists(EVENTS, min_size=1, max_size=20))
def test_the_verdict_is_the_rules_applied_one_by_one(events: list[UsageEvent]) -> None:
    assert judged(events) == by_the_rules(events)


@given(st.lists(EVENTS, max_size=20))
def test_both_triages_sort_events_as_the_rules_do(events: list[UsageEvent]) -> None:
    billable, non_billable, rejected = by_the_rules(events, MeterRules())  # meter rules come after triage
    filters = JUDGE._filters
    for triage in (_readers.triage, validation.triage):
        sorted_billable: list[UsageEvent] = []
        sorted_non_billable: list[UsageEvent] = []
        indices = triage(
            events,
            CONFIG.meter_units,
            filters,
            RECORD_TIME - LATENESS,
            RECORD_TIME + SKEW,
            sorted_billable,
            sorted_non_billable,
        )
        assert (sorted_billable, sorted_non_billable, indices) == (
            billable,
            non_billable,
            [i for _, i in rejected],
        )


def test_the_compiled_triage_is_the_judges_here_and_reads_only_usage_events() -> None:
    """./run.sh builds it; an install without a C compiler falls back to schemas.validation.triage."""
    assert judge.triage is _readers.triage
    with pytest.raises(TypeError, match="triage reads UsageEvents, not tuple"):
        _readers.triage([("e-1",)], {}, {}, 0, 1, [], [])  # type: ignore[list-item]
