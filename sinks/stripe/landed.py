"""Whether a report whose answer was lost reached Stripe, decided from Stripe's own totals once
Stripe may have forgotten its identifier (issue 35, item 5).

A `pending` report was sent and its answer lost (a crash, a timeout); it is sent again with the
same identifier and Idempotency-Key, which Stripe answers with the first result. But Stripe
enforces a meter event identifier's uniqueness only "within a rolling period of at least 24 hours"
(https://docs.stripe.com/api/billing/meter-event/create, `identifier`) and keeps an idempotency
key 24 hours (https://docs.stripe.com/api/idempotent_requests): later, a blind resend may bill
it twice. So a pending report whose revision closed more than `stripe.resend_check_after_hours`
ago (its first sending was no earlier) is checked first, per window:
1. Stripe's total of the window: meter event summaries over its minute-aligned span, for the
   customer (a report's timestamp is its window's start);
2. less what the ledger settled for the window (sent or confirmed; every partition and revision):
3. what arrived of the window's pending reports. All of them: each is recorded `sent`, decided by
   the totals. None: they are sent again. Anything else cannot be told apart: each is `failed`
   with the figures, to usage.stripe.dlq for on-call (reconcile and replay show the window).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from enum import Enum
from functools import cached_property

from meterline.core.config import Config
from meterline.sinks.stripe.calls import Caller
from meterline.sinks.stripe.customers import KnownCustomers
from meterline.sinks.stripe.ledger import Ledger
from meterline.sinks.stripe.report import Outcome, Report, Status
from meterline.sinks.stripe.totals import StripeTotals

UNDECIDED = "undecided_after_identifier_window"
"""usage.stripe.dlq's error.code for a window whose lost reports Stripe's totals cannot place."""


class Landing(Enum):
    LANDED = "landed"
    NOT_LANDED = "not landed"
    UNDECIDED = "undecided"


def landing(stripe_total: int, settled: int, pending: Sequence[int]) -> Landing:
    """What Stripe's total says of the window's pending reports: `settled`, the sum the ledger
    knows reached Stripe; `pending`, the values of the reports whose answers were lost."""
    arrived = stripe_total - settled
    if arrived == 0:
        return Landing.NOT_LANDED  # sending them all again adds what is missing
    if arrived == sum(pending):
        return Landing.LANDED
    return Landing.UNDECIDED


class LostReports:
    """Decides, window by window, the pending reports Stripe may have forgotten the identifiers of."""

    def __init__(self, config: Config, caller: Caller, ledger: Ledger) -> None:
        self.config = config
        self.caller = caller
        self.ledger = ledger
        self.window_ms = config.windows.size_ms
        self.after_ms = config.stripe.resend_check_after_hours * 3_600_000

    @cached_property
    def totals(self) -> StripeTotals:
        """Made at the first check: it lists Stripe's meters, which `stripe sync` may make later."""
        return StripeTotals(self.caller, self.config, KnownCustomers(self.ledger.client).find)

    def may_be_forgotten(self, report: Report, now_ms: int) -> bool:
        """Whether Stripe may have forgotten the identifier of this pending report: its revision
        closed before the horizon (it was first sent no earlier)."""
        return report.aggregate.closed_at < now_ms - self.after_ms

    def decide(self, reports: Sequence[Report]) -> dict[str, Outcome]:
        """identifier -> the outcome of each report that must not be sent again (landed, or
        undecided); the others are absent: send them."""
        by_window: dict[tuple[str, str, int], list[Report]] = defaultdict(list)
        for report in reports:
            a = report.aggregate
            by_window[(a.customer_id, a.meter, a.window_start)].append(report)
        decided: dict[str, Outcome] = {}
        for (customer, meter, start), lost in by_window.items():
            rows = self.ledger.window_reports(customer, meter, start)
            settled = sum(value for status, value in rows if status in (Status.SENT, Status.CONFIRMED))
            pending = [value for status, value in rows if status is Status.PENDING]
            stripe_total = self.totals.total(customer, meter, start, start + self.window_ms)
            verdict = landing(stripe_total, settled, pending)
            if verdict is Landing.NOT_LANDED:
                continue
            figures = (
                f"Stripe's total of the window {stripe_total}, settled in the ledger {settled}, "
                f"pending {sum(pending)} in {len(pending)} report(s)"
            )
            outcome = (
                Outcome(Status.SENT, 0, "decided_by_totals", f"landed, decided by Stripe's totals: {figures}")
                if verdict is Landing.LANDED
                else Outcome(
                    Status.FAILED,
                    0,
                    UNDECIDED,
                    f"its answer was lost before Stripe may have forgotten its identifier, and "
                    f"Stripe's totals cannot place it: {figures}",
                )
            )
            decided.update({r.identifier: outcome for r in lost})
        return decided
