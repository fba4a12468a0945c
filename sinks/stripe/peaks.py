"""A `max` meter at Stripe: a peak (seats, concurrent jobs) billed through a `sum` meter.

A peak is the highest window value of its period (the UTC calendar month, the meter's `reset`).
The sink reports each revision of a peak meter's window as its contribution: how far it raises the
peak above what was reported for the period so far, 0 when it does not. The contributions of a
period add up to its peak, so a Stripe meter with the `sum` formula, whose "aggregated value is
the sum of all usage values for the billing period"
(https://docs.stripe.com/billing/subscriptions/usage-based/recording-usage, "Aggregation
formula"), bills the peak, and a late event that raises a past window raises it by the difference.
No contribution is ever negative: a window's value only rises, and the peak with it.

Why not Stripe's `last` formula: Stripe describes it as "the last event in a time range" in one
place and "the final meter event received in a billing period" in another
(https://docs.stripe.com/changelog/basil/2025-03-31/meters-last-agg-formula); a revision of an
earlier window sent after a later one is the last by arrival and not by time. A sum does not depend
on which is meant.

A contribution is decided once, before its report is sent, and kept in the ledger's `value`: a
report resent after a crash sends what its row says. Exact when Stripe's billing period is the
calendar month (subscriptions renewing on the 1st); the contributions of one period are summed
over the Stripe billing period that holds them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace

from meterline.core.months import calendar_month
from meterline.schemas.records import AggregateIdentity
from meterline.sinks.stripe.ledger import Ledger
from meterline.sinks.stripe.report import Report, Status


def contribution(peak_so_far: int, value: int) -> int:
    """What a window's revision of `value` adds to a period whose peak reported so far is
    `peak_so_far`."""
    return value - peak_so_far if value > peak_so_far else 0


class Peaks:
    def __init__(self, ledger: Ledger, peak_meters: Collection[str]) -> None:
        self.ledger = ledger
        self.meters = frozenset(peak_meters)

    def contributions(
        self, reports: Sequence[Report], settled: Mapping[AggregateIdentity, Status]
    ) -> dict[str, Report]:
        """identifier -> the report with its contribution, for each report of a peak meter, in
        order: one pending from before (`settled`) sends what its ledger row says; each other
        raises its period's peak by its contribution before the next is decided."""
        peaks = [r for r in reports if r.aggregate.meter in self.meters]
        if not peaks:
            return {}
        resent = [r.aggregate.identity for r in peaks if settled.get(r.aggregate.identity) is Status.PENDING]
        stored = self.ledger.values(resent)
        so_far = self.ledger.reported_by_month(
            {_month_of(r) for r in peaks if r.aggregate.identity not in stored}
        )
        decided = {}
        for report in peaks:
            identity = report.aggregate.identity
            if identity in stored:
                decided[report.identifier] = replace(report, contribution=stored[identity])
                continue
            period = _month_of(report)
            added = contribution(so_far[period], report.aggregate.value)
            so_far[period] += added
            decided[report.identifier] = replace(report, contribution=added)
        return decided


def _month_of(report: Report) -> tuple[str, str, int]:
    """(customer, meter, the UTC month start of its window) of a report."""
    aggregate = report.aggregate
    return aggregate.customer_id, aggregate.meter, calendar_month(aggregate.window_start)[0]
