"""`meterline reconcile`: do Stripe's totals equal ours, and where not, which hours differ?

1. Our totals per (customer, meter) over the period: ClickHouse `usage_windows FINAL`.
2. Stripe's: meter event summaries over the same period (legacy accounts: the usage record
   summaries of the subscription item, one per billing period of its own; each period that begins
   inside the one asked for is compared with our total over that billing period's own bounds).
3. Every pair whose drift exceeds the threshold is drilled into by hour: our hourly totals
   against Stripe's summaries grouped by hour (meter events only: usage records have no hours).
4. Usage that is not billed is listed beside: revisions Stripe refused or the sink refused (the
   ledger's `failed` rows), revisions still waiting for Stripe to know their customer,
   corrections that arrived after the invoice of their period was finalized (known from the
   `invoice.finalized` webhook: Stripe has them, the invoice does not), and the dead letters of
   the period by reason.
5. The run is stored in `reconciliation_runs`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meterline.core import metrics
from meterline.core.config import Config
from meterline.core.logs import context
from meterline.core.months import calendar_month
from meterline.reconciler.billing.periods import PeriodError, is_month, period_bounds, resolve
from meterline.reconciler.checks.compare import Difference, Unbilled, compare, differing
from meterline.sinks.clickhouse import usage_windows
from meterline.sinks.clickhouse.queries import in_span, narrowed
from meterline.sinks.stripe.calls import Caller
from meterline.sinks.stripe.customers import KnownCustomers
from meterline.sinks.stripe.ledger import not_reported
from meterline.sinks.stripe.totals import totals_for

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

log = logging.getLogger("meterline.reconcile")

RUN_COLUMNS = (
    "run_id",
    "run_at",
    "period",
    "level",
    "customer_id",
    "meter",
    "hour_start",
    "ours",
    "stripe",
    "drift",
    "source",
)
"""A row of reconciliation_runs: one per pair (level 'period') and one per hour that differs."""

Pair = tuple[str, str]  # customer, meter
Hour = tuple[str, str, int]  # customer, meter, hour start (epoch ms)


@dataclass
class Reconciliation:
    run_id: str
    period: str
    threshold: int
    pairs: list[Difference[Pair]] = field(default_factory=list)
    hours: list[Difference[Hour]] = field(default_factory=list)
    unbilled: list[Unbilled] = field(default_factory=list)
    dead_letters: dict[str, int] = field(default_factory=dict)
    not_compared: dict[str, str] = field(default_factory=dict)
    """meter -> why it was left out of this run."""

    @property
    def drifting(self) -> list[Difference[Pair]]:
        return differing(self.pairs, self.threshold)

    @property
    def ok(self) -> bool:
        return not self.drifting


def reconcile(
    config: Config,
    client: Client,
    caller: Caller,
    period: str,
    customer: str | None = None,
    meter: str | None = None,
    threshold: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Reconciliation:
    if is_month(period):
        start, end = period_bounds(period)
    elif customer is None:
        raise PeriodError(
            f"period {period!r}: a billing period is a customer's own; give --customer, or YYYY-MM "
            "to reconcile every customer over the UTC month"
        )
    else:  # the customer's Stripe billing period (reconciler.billing.periods)
        chosen = resolve(client, customer, period, int(time.time() * 1000))
        start, end, period = chosen.start_ms, chosen.end_ms, chosen.label
    result = Reconciliation(uuid.uuid4().hex[:12], period, threshold)
    # 1. Ours.
    levels = config.levels
    ours = usage_windows.totals(client, start, end, customer, meter, levels=levels)
    customers = sorted({c for c, _ in ours} | ({customer} if customer else set()))
    meters = [meter] if meter else list(config.meters)
    if calendar_month(start) != (start, end):  # a level's contributions add up per UTC month
        result.not_compared = {
            m: f"its {levels[m]} resets each UTC month (sinks.stripe.levels), and this period is not one"
            for m in meters
            if m in levels
        }
        meters = [m for m in meters if m not in levels]
        ours = {pair: total for pair, total in ours.items() if pair[1] in meters}
    # 2. Stripe's.
    theirs: dict[Pair, int] = {}
    stripe = totals_for(config, caller, KnownCustomers(client).find)  # each customer looked up once
    for n, who in enumerate(customers, 1):
        for what in meters:
            summaries = stripe.periods(who, what, start, end)
            theirs[(who, what)] = sum(summaries.values())
            if summaries and not stripe.per_window:  # totals per billing period: ours over the same
                ours[(who, what)] = sum(
                    usage_windows.totals(client, low, high, who, what, levels=levels).get((who, what), 0)
                    for low, high in summaries
                )
        if progress:
            progress(n, len(customers))
    result.pairs = compare(ours, {k: v for k, v in theirs.items() if v})
    # 3. The hours of what drifts.
    if stripe.per_window:  # a level has no hours that add up to it: its period answer was compared
        for pair in (p for p in result.drifting if p.key[1] not in levels):
            who, what = pair.key
            hours = usage_windows.by_bucket(client, who, start, end, "hour", what, levels=levels)
            our_hours = {t: v for t, v, _ in hours.get(what, []) if v}
            their_hours = stripe.by_hour(who, what, start, end)
            result.hours += differing(
                compare(
                    {(who, what, h): v for h, v in our_hours.items()},
                    {(who, what, h): v for h, v in their_hours.items()},
                )
            )
    # 4. Not billed on purpose.
    result.unbilled, result.dead_letters = not_billed(client, start, end, customer, meter)
    # 5. Kept.
    _store(client, result, start, stripe.source)
    metrics.RECONCILE_RUNS.labels("ok" if result.ok else "drift").inc()
    metrics.RECONCILE_DRIFT_UNITS.set(sum(abs(d.drift) for d in result.pairs))
    metrics.RECONCILE_DRIFTING_PAIRS.set(len(result.drifting))
    metrics.RECONCILE_LAST_RUN.set_to_current_time()
    for drift in result.hours:
        customer_id, meter_name, hour = drift.key
        log.warning(
            "drift of %d units in the hour starting %d",
            drift.drift,
            hour,
            extra=context(customer=customer_id, meter=meter_name, window=hour, run_id=result.run_id),
        )
    return result


def not_billed(
    client: Client, start: int, end: int, customer: str | None = None, meter: str | None = None
) -> tuple[list[Unbilled], dict[str, int]]:
    """Step 4: the usage of [start, end) not billed, by reason (refused by Stripe or by the sink,
    corrections after their invoice was finalized), and the period's dead letters by reason."""
    refused = _unbilled(client, start, end, customer, meter)
    return refused + late_corrections(client, start, end, customer, meter), _dead_letters(client, start, end)


def _unbilled(
    client: Client, start: int, end: int, customer: str | None, meter: str | None
) -> list[Unbilled]:
    return [Unbilled(*row) for row in not_reported(client, start, end, customer, meter)]


def late_corrections(
    client: Client, start: int, end: int, customer: str | None, meter: str | None
) -> list[Unbilled]:
    """Corrections (revision > 0) stored after the invoice covering their window was finalized."""
    where = narrowed(customer, meter, "r")
    rows = client.query(
        "SELECT r.customer_id, r.meter, i.invoice_id, sum(r.delta), count() "
        "FROM usage_window_revisions AS r FINAL "
        "INNER JOIN (SELECT customer_id, meter, window_start, source_partition, revision, stripe_customer "
        "            FROM stripe_reports FINAL) AS l "
        "USING (customer_id, meter, window_start, source_partition, revision) "
        "INNER JOIN (SELECT invoice_id, stripe_customer, period_start, period_end, event_created "
        "            FROM stripe_invoices FINAL) AS i ON i.stripe_customer = l.stripe_customer "
        "WHERE r.revision > 0 AND r.window_start >= i.period_start AND r.window_start < i.period_end "
        "AND r.inserted_at > i.event_created "
        f"AND {in_span('r.window_start')}{where} "
        "GROUP BY r.customer_id, r.meter, i.invoice_id ORDER BY 1, 2, 3",
        parameters={"start": start, "end": end, "customer": customer, "meter": meter},
    ).result_rows
    return [Unbilled(c, m, f"after invoice {inv} was finalized", int(v), int(n)) for c, m, inv, v, n in rows]


def _dead_letters(client: Client, start: int, end: int) -> dict[str, int]:
    rows = client.query(
        "SELECT error_code, count() FROM dlq_events FINAL "
        f"WHERE {in_span('received_at')} GROUP BY error_code ORDER BY error_code",
        parameters={"start": start, "end": end},
    ).result_rows
    return {str(code): int(n) for code, n in rows}


def _store(client: Client, result: Reconciliation, start: int, source: str) -> None:
    now = int(time.time() * 1000)
    rows = [
        [
            result.run_id,
            now,
            result.period,
            "period",
            d.key[0],
            d.key[1],
            start,
            d.ours,
            d.theirs,
            d.drift,
            source,
        ]
        for d in result.pairs
    ]
    rows += [
        [
            result.run_id,
            now,
            result.period,
            "hour",
            d.key[0],
            d.key[1],
            d.key[2],
            d.ours,
            d.theirs,
            d.drift,
            source,
        ]
        for d in result.hours
    ]
    if rows:
        client.insert(
            "reconciliation_runs",
            rows,
            column_names=list(RUN_COLUMNS),
        )
