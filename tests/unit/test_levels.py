"""sinks.stripe.levels without I/O: each revision of a `max` meter sends what it raises its
period's peak by, each revision of a `last` meter's latest window what it moves the level by,
periods (UTC calendar months) apart, and the contributions of a period add up to its answer
whatever the order revisions arrive in."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from meterline.core.months import calendar_month
from meterline.schemas.records import AggregateIdentity
from meterline.sinks.stripe.ledger import Reported
from meterline.sinks.stripe.levels import Levels, contribution
from meterline.sinks.stripe.report import Report, Status
from tests.support.records import window_aggregate

DECEMBER = 1_796_083_200_000  # 2026-12-01T00:00Z
NOVEMBER_END = DECEMBER - 60_000


class MemoryLedger:
    """What the sink's ledger answers Levels: values kept per identity, summed per month."""

    def __init__(self) -> None:
        self.rows: dict[AggregateIdentity, int] = {}

    def values(self, identities: Iterable[AggregateIdentity]) -> dict[AggregateIdentity, int]:
        return {i: self.rows[i] for i in identities if i in self.rows}

    def reported_by_month(
        self, months: Iterable[tuple[str, str, int]]
    ) -> dict[tuple[str, str, int], Reported]:
        found = {}
        for customer, meter, start in months:
            rows = [
                (i.window_start, v)
                for i, v in self.rows.items()
                if (i.customer_id, i.meter) == (customer, meter)
                and calendar_month(i.window_start)[0] == start
            ]
            found[(customer, meter, start)] = Reported(
                sum(v for _, v in rows), max((w for w, _ in rows), default=-1)
            )
        return found


def report(start: int, value: int, revision: int = 0, meter: str = "seats") -> Report:
    return Report(window_aggregate("team", meter, start, value=value, revision=revision), "cus_1", meter)


def send(peaks: Levels, ledger: MemoryLedger, reports: list[Report]) -> list[int]:
    """One batch: the contributions decided, then written as the sink writes its pending rows."""
    decided = peaks.contributions(reports, {})
    for r in reports:
        if r.identifier in decided:
            ledger.rows[r.aggregate.identity] = decided[r.identifier].value
    return [decided[r.identifier].value for r in reports if r.identifier in decided]


def sent_in_batches(kind: str, revisions: list[Report], rng: random.Random) -> int:
    """What Stripe's sum meter holds once `revisions` of a `kind` seats meter are sent in batches of
    random sizes, in their order."""
    ledger = MemoryLedger()
    levels = Levels(ledger, {"seats": kind})  # type: ignore[arg-type]
    while revisions:
        size = rng.randint(1, len(revisions))
        send(levels, ledger, revisions[:size])
        revisions = revisions[size:]
    return sum(ledger.rows.values())


def test_a_revision_adds_only_what_rises_above_the_peak() -> None:
    at = window_aggregate("team", "seats", DECEMBER, value=0)
    sent = [
        contribution("max", Reported(peak, DECEMBER), replace(at, value=value))
        for peak, value in [(10, 7), (10, 10), (10, 13), (0, 4)]
    ]
    assert sent == [0, 0, 3, 4]


def test_a_level_moves_with_its_latest_window_up_or_down_and_an_earlier_one_moves_nothing() -> None:
    """Negative values fix usage: "You can also fix incorrectly recorded usage data by recording
    negative quantities" (https://docs.stripe.com/billing/subscriptions/usage-based/meters/configure)."""
    earlier, latest, later = (
        window_aggregate("team", "seats", DECEMBER + n * 60_000, value=4) for n in (0, 1, 2)
    )
    so_far = Reported(10, latest.window_start)
    assert [contribution("last", so_far, w) for w in (earlier, latest, later)] == [0, -6, -6]
    assert contribution("last", so_far, replace(later, value=15)) == 5
    assert contribution("last", Reported(0, -1), earlier) == 4


def test_each_month_has_its_own_peak_and_other_meters_are_left_alone() -> None:
    ledger = MemoryLedger()
    peaks = Levels(ledger, {"seats": "max"})  # type: ignore[arg-type]
    sent = send(peaks, ledger, [report(NOVEMBER_END, 12), report(DECEMBER, 5), report(DECEMBER + 60_000, 9)])
    assert sent == [12, 5, 4]  # December starts afresh: its first window is its whole peak so far
    assert peaks.contributions([report(DECEMBER, 50, meter="api_calls")], {}) == {}
    assert calendar_month(NOVEMBER_END) == (DECEMBER - 30 * 86_400_000, DECEMBER)


def test_a_pending_report_is_resent_with_what_its_row_says() -> None:
    ledger = MemoryLedger()
    peaks = Levels(ledger, {"seats": "max"})  # type: ignore[arg-type]
    first = report(DECEMBER, 8)
    send(peaks, ledger, [first])
    again = peaks.contributions([first], {first.aggregate.identity: Status.PENDING})
    assert again[first.identifier].value == 8  # recomputed, it would add nothing to a peak of 8


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 100)), min_size=1, max_size=30), st.randoms())
def test_the_contributions_of_a_month_add_up_to_its_peak_in_any_order(
    windows: list[tuple[int, int]], rng: random.Random
) -> None:
    """Each window's revisions rise (a late event only raises a peak); batches of any size."""
    revisions: list[Report] = []
    for slot, value in windows:
        earlier = [r for r in revisions if r.aggregate.window_start == DECEMBER + slot * 60_000]
        top = max((r.aggregate.value for r in earlier), default=0)
        revisions.append(report(DECEMBER + slot * 60_000, top + value, revision=len(earlier)))
    peak = max(r.aggregate.value for r in revisions)  # the brute force: the highest value reported
    assert sent_in_batches("max", revisions, rng) == peak


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 100)), min_size=1, max_size=30), st.randoms())
def test_the_contributions_of_a_month_add_up_to_its_latest_windows_last_revision_in_any_order(
    windows: list[tuple[int, int]], rng: random.Random
) -> None:
    """Each window's revisions come in their order, the windows' interleaved any way (a late event
    may open an earlier window after a later one was reported); a level rises or falls."""
    revisions: list[Report] = []
    for slot, value in windows:
        earlier = [r for r in revisions if r.aggregate.window_start == DECEMBER + slot * 60_000]
        revisions.append(report(DECEMBER + slot * 60_000, value, revision=len(earlier)))
    latest = max(r.aggregate.window_start for r in revisions)  # the brute force: the latest window's
    level = [r.aggregate.value for r in revisions if r.aggregate.window_start == latest][-1]  # last revision
    assert sent_in_batches("last", revisions, rng) == level
