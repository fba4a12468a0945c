"""What the billing review reads from ClickHouse for one UTC month: invoice payment outcomes (the
webhook consumer's `stripe_invoice_payments`), the ledger joined to the window revisions it
reported (latency), the stored reconciliation runs (drift), daily usage (pricing fit), and what
reconcile lists as not billed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meterline.core.config import Config
from meterline.reconciler.billing.periods import period_bounds
from meterline.reconciler.checks.compare import Difference
from meterline.reconciler.checks.reconcile import not_billed
from meterline.reconciler.review.figures import (
    PERCENTILES,
    Drift,
    Latency,
    MonthReview,
    Review,
    SlowWindow,
    fits,
    payments,
)
from meterline.sinks.clickhouse.queries import in_span
from meterline.sinks.clickhouse.usage_windows import by_day_of_month

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

WORST = 5
"""Slowest windows listed per month."""


def review(config: Config, client: Client, months: list[str]) -> Review:
    return Review(tuple(month_review(config, client, month) for month in months))


def month_review(config: Config, client: Client, month: str) -> MonthReview:
    start, end = period_bounds(month)
    span = {"start": start, "end": end}
    unbilled, dead_letters = not_billed(client, start, end)
    daily = by_day_of_month(client, start, end, levels=config.levels)
    plans = {customer: config.plan_for(customer) for customer, _ in daily}
    return MonthReview(
        period=month,
        payments=payments(_payment_outcomes(client, span)),
        latency=_latency(client, span),
        drift=_drift(client, month),
        fits=fits(plans, daily, config.levels),
        unbilled=tuple(unbilled),
        dead_letters=dead_letters,
    )


def _payment_outcomes(client: Client, span: dict[str, int]) -> list[tuple[str, str, str]]:
    """(invoice, our customer, its latest outcome) of the invoices billing a period that begins in
    the month. Within one second a success wins: Stripe's dunning retries after a failure."""
    rows = client.query(
        "SELECT p.invoice_id, any(c.customer_id), argMax(p.outcome, (p.event_created, p.outcome = 'paid')) "
        "FROM stripe_invoice_payments AS p FINAL "
        "LEFT JOIN (SELECT stripe_customer, any(customer_id) AS customer_id FROM stripe_reports FINAL "
        "           GROUP BY stripe_customer) AS c ON c.stripe_customer = p.stripe_customer "
        f"WHERE {in_span('p.period_start')} GROUP BY p.invoice_id",
        parameters=span,
    ).result_rows
    return [(str(invoice), str(customer), str(outcome)) for invoice, customer, outcome in rows]


_ACCEPTED = (
    "FROM stripe_reports AS l FINAL "
    "INNER JOIN (SELECT customer_id, meter, window_start, source_partition, revision, closed_at "
    "            FROM usage_window_revisions FINAL) AS r "
    "USING (customer_id, meter, window_start, source_partition, revision) "
    "WHERE l.status IN ('sent', 'confirmed') AND {span}"
)
"""Every revision of the month's windows Stripe accepted, beside its window's close."""
_LATENCY_MS = "dateDiff('millisecond', r.closed_at, l.updated_at)"


def _latency(client: Client, span: dict[str, int]) -> Latency:
    accepted = _ACCEPTED.format(span=in_span("l.window_start"))
    levels = ", ".join(str(q) for q in PERCENTILES)
    [(windows, quantiles)] = client.query(
        f"SELECT count(), quantilesExact({levels})({_LATENCY_MS}) {accepted}", parameters=span
    ).result_rows
    worst = client.query(
        f"SELECT customer_id, meter, toUnixTimestamp64Milli(window_start), {_LATENCY_MS} AS ms {accepted} "
        f"ORDER BY ms DESC, customer_id, meter, window_start LIMIT {WORST}",
        parameters=span,
    ).result_rows
    return Latency(
        int(windows),
        tuple(int(q) for q in quantiles) if windows else (),
        tuple(SlowWindow(str(c), str(m), int(w), int(ms)) for c, m, w, ms in worst),
    )


def _drift(client: Client, month: str) -> Drift | None:
    latest = client.query(
        "SELECT run_id, toUnixTimestamp64Milli(run_at) FROM reconciliation_runs WHERE period = %(p)s "
        "ORDER BY run_at DESC, run_id LIMIT 1",
        parameters={"p": month},
    ).result_rows
    if not latest:
        return None
    [(run_id, run_at)] = latest
    rows = client.query(
        "SELECT level, customer_id, meter, toUnixTimestamp64Milli(hour_start), ours, stripe "
        "FROM reconciliation_runs WHERE run_id = %(r)s ORDER BY customer_id, meter, hour_start",
        parameters={"r": run_id},
    ).result_rows
    pairs = [(int(ours), int(stripe)) for level, _, _, _, ours, stripe in rows if level == "period"]
    hours = tuple(
        Difference((str(c), str(m), int(h)), int(ours), int(stripe))
        for level, c, m, h, ours, stripe in rows
        if level == "hour"
    )
    total = Difference(month, sum(o for o, _ in pairs), sum(s for _, s in pairs))
    return Drift(str(run_id), int(run_at), total, hours)
