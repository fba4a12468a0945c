"""Levels at Stripe: a `max` meter (peak seats) or a `last` meter (seats at the period's end) billed
through a `sum` meter.

A level's period answer is one window's value (the UTC calendar month, the meter's `reset`): its
highest for `max`, its latest window's for `last`. The sink reports each revision of a level's
window as its contribution: how far it moves the period's answer from what was reported for the
period so far. The contributions of a period add up to its answer, so a Stripe meter with the `sum`
formula, whose "aggregated value is the sum of all usage values for the billing period"
(https://docs.stripe.com/billing/subscriptions/usage-based/recording-usage, "Aggregation
formula"), bills the answer, and a late event that moves a window moves it by the difference.

- `max`: a revision raises the peak when its value is above it, else contributes 0. Never negative.
- `last`: a revision of the period's latest window reported so far, or of a later one, makes its
  value the answer (a contribution of the difference, negative when the level fell: Stripe takes
  negative values, "You can also fix incorrectly recorded usage data by recording negative
  quantities", https://docs.stripe.com/billing/subscriptions/usage-based/meters/configure); a
  revision of an earlier window is not the answer and contributes 0.

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

from collections.abc import Mapping, Sequence
from dataclasses import replace

from meterline.core.months import calendar_month
from meterline.schemas.records import AggregateIdentity, WindowAggregate
from meterline.sinks.stripe.ledger import Ledger, Reported
from meterline.sinks.stripe.report import Report, Status


def contribution(kind: str, reported: Reported, aggregate: WindowAggregate) -> int:
    """What a window's revision adds to a period whose answer reported so far is `reported.total`
    (its latest window reported: `reported.latest_window`)."""
    if kind == "max":
        return aggregate.value - reported.total if aggregate.value > reported.total else 0
    if aggregate.window_start >= reported.latest_window:
        return aggregate.value - reported.total
    return 0


class Levels:
    def __init__(self, ledger: Ledger, levels: Mapping[str, str]) -> None:
        self.ledger = ledger
        self.levels = dict(levels)

    def contributions(
        self, reports: Sequence[Report], settled: Mapping[AggregateIdentity, Status]
    ) -> dict[str, Report]:
        """identifier -> the report with its contribution, for each report of a level, in order: one
        pending from before (`settled`) sends what its ledger row says; each other moves its
        period's answer by its contribution before the next is decided."""
        levels = [r for r in reports if r.aggregate.meter in self.levels]
        if not levels:
            return {}
        resent = [r.aggregate.identity for r in levels if settled.get(r.aggregate.identity) is Status.PENDING]
        stored = self.ledger.values(resent)
        so_far = self.ledger.reported_by_month(
            {_month_of(r) for r in levels if r.aggregate.identity not in stored}
        )
        decided = {}
        for report in levels:
            aggregate = report.aggregate
            if aggregate.identity in stored:
                decided[report.identifier] = replace(report, contribution=stored[aggregate.identity])
                continue
            period = _month_of(report)
            reported = so_far[period]
            added = contribution(self.levels[aggregate.meter], reported, aggregate)
            so_far[period] = Reported(
                reported.total + added, max(reported.latest_window, aggregate.window_start)
            )
            decided[report.identifier] = replace(report, contribution=added)
        return decided


def _month_of(report: Report) -> tuple[str, str, int]:
    """(customer, meter, the UTC month start of its window) of a report."""
    aggregate = report.aggregate
    return aggregate.customer_id, aggregate.meter, calendar_month(aggregate.window_start)[0]
