"""The billing review as tables (the CLI prints them; CSV-like rows for --json) and as one
self-contained HTML page: no scripts, no external resources, each figure drawn as an SVG bar chart
whose bars carry the number they draw (`data-value`), so a browser test reads back what is shown."""

from __future__ import annotations

import html
import json
from dataclasses import asdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from meterline.reconciler.billing.invoice_text import quantity_text
from meterline.reconciler.html_tables import section_tables
from meterline.reconciler.review.figures import EARLY_DAY, PERCENTILES, MonthReview, Review

Rows = list[dict[str, Any]]


def _time(ms: int, form: str = "%Y-%m-%d %H:%M") -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime(form)


def seconds(ms: int) -> Decimal:
    return (Decimal(ms) / 1000).quantize(Decimal("0.001"))


def drift_percent(month: MonthReview) -> Decimal | None:
    return None if month.drift is None else month.drift.total.percent


def _latency_row(month: MonthReview, levels: list[str]) -> dict[str, Any]:
    figures: list[object] = [seconds(ms) for ms in month.latency.percentiles_ms] or [""] * len(levels)
    return {
        "month": month.period,
        "windows": month.latency.windows,
        **dict(zip(levels, figures, strict=True)),
    }


def sections(review: Review) -> list[tuple[str, Rows]]:
    """(title, rows) of every table of the review, oldest month first."""
    return [
        ("Payments", [_payments_row(m) for m in review.months]),
        (
            "Usage reporting latency (window close to Stripe accepting it)",
            [_latency_row(m, [f"p{int(q * 100)} s" for q in PERCENTILES]) for m in review.months],
        ),
        ("Slowest windows", _slowest_rows(review.months)),
        ("Drift (the month's latest reconciliation)", [_drift_row(m) for m in review.months]),
        ("Hours that drifted", _drifted_hour_rows(review.months)),
        ("Pricing fit", _fit_rows(review.months)),
        (
            f"In overage by day {EARLY_DAY} of every month reviewed",
            [{"plan": p, "meter": meter, "customer": c} for p, meter, c in review.early_every_month],
        ),
        ("Not billed", _unbilled_rows(review.months)),
        (
            "Dead letters",
            [
                {"month": m.period, "reason": r, "events": n}
                for m in review.months
                for r, n in m.dead_letters.items()
            ],
        ),
    ]


def _payments_row(m: MonthReview) -> dict[str, Any]:
    return {
        "month": m.period,
        "paid": m.payments.paid,
        "payment failed": m.payments.failed,
        "success %": m.payments.success_percent,
        "failing": ", ".join(f"{c or '?'} ({i})" for c, i in m.payments.failing),
    }


def _slowest_rows(months: tuple[MonthReview, ...]) -> Rows:
    return [
        {
            "month": m.period,
            "customer": w.customer,
            "meter": w.meter,
            "window": _time(w.window_start),
            "seconds": seconds(w.latency_ms),
        }
        for m in months
        for w in m.latency.worst
    ]


def _drift_row(m: MonthReview) -> dict[str, Any]:
    if m.drift is None:
        return {
            "month": m.period,
            "reconciled": "never",
            "ours": "",
            "Stripe": "",
            "drift": "",
            "drift %": "",
        }
    total = m.drift.total
    return {
        "month": m.period,
        "reconciled": _time(m.drift.run_at),
        "ours": total.ours,
        "Stripe": total.theirs,
        "drift": total.drift,
        "drift %": total.percent,
    }


def _drifted_hour_rows(months: tuple[MonthReview, ...]) -> Rows:
    return [
        {
            "month": m.period,
            "customer": h.key[0],
            "meter": h.key[1],
            "hour (UTC)": _time(h.key[2], "%Y-%m-%d %H:00"),
            "ours": h.ours,
            "Stripe": h.theirs,
            "drift": h.drift,
        }
        for m in months
        if m.drift
        for h in m.drift.hours
    ]


def _fit_rows(months: tuple[MonthReview, ...]) -> Rows:
    return [
        {
            "month": m.period,
            "plan": f.plan,
            "meter": f.meter,
            "included": quantity_text(f.included),
            "customers": f.customers,
            "crossed": len(f.crossed),
            f"by day {EARLY_DAY}": sum(day <= EARLY_DAY for _, day in f.crossed),
            "far below": len(f.far_below),
            "crossing days": ", ".join(f"{c} {d}" for c, d in f.crossed),
            "far below customers": ", ".join(f.far_below),
        }
        for m in months
        for f in m.fits
    ]


def _unbilled_rows(months: tuple[MonthReview, ...]) -> Rows:
    return [
        {
            "month": m.period,
            "customer": u.customer_id,
            "meter": u.meter,
            "reason": u.reason,
            "units": u.value,
            "revisions": u.revisions,
        }
        for m in months
        for u in m.unbilled
    ]


def render_json(review: Review) -> str:
    def default(value: object) -> object:
        return str(value) if isinstance(value, Decimal) else repr(value)

    document = {
        "months": [asdict(m) for m in review.months],
        "early_every_month": review.early_every_month,
        "sections": dict(sections(review)),
    }
    return json.dumps(document, default=default)


# -- the page ---------------------------------------------------------------------------------------

CHART_WIDTH, BAR_AREA = 640, 160
POLICY = "default-src 'none'; style-src 'unsafe-inline'"
"""Nothing but the page's own style: no script, no request anywhere."""
STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin-bottom:2em}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}"
    "svg{display:block;margin-bottom:1em}rect{fill:#4a7bd0}rect.negative{fill:#d0574a}"
    "text{font-size:11px;fill:#222}"
)


def charts(review: Review) -> list[tuple[str, str, list[tuple[str, Decimal]]]]:
    """(id, title, bars) of every chart the page draws: what a bar shows is its number."""
    months = review.months
    latest = months[-1] if months else None
    levels = [f"p{int(q * 100)}" for q in PERCENTILES]
    return [
        (
            "payments",
            "Payment success, % of invoices",
            [(m.period, p) for m in months if (p := m.payments.success_percent) is not None],
        ),
        (
            "latency",
            "Window close to Stripe, seconds",
            [
                (f"{m.period} {level}", seconds(ms))
                for m in months
                for level, ms in zip(levels, m.latency.percentiles_ms, strict=False)
            ],
        ),
        (
            "drift",
            "Stripe vs ours, drift %",
            [(m.period, p) for m in months if (p := drift_percent(m)) is not None],
        ),
        (
            "fit",
            f"Customers past their included quantity by day {EARLY_DAY}, {latest.period if latest else ''}",
            [
                (f"{f.plan} {f.meter}", Decimal(sum(day <= EARLY_DAY for _, day in f.crossed)))
                for f in (latest.fits if latest else ())
            ],
        ),
        (
            "unbilled",
            f"Units not billed by reason, {latest.period if latest else ''}",
            [(u.reason, Decimal(u.value)) for u in (latest.unbilled if latest else ())],
        ),
    ]


def bar_chart(chart: str, title: str, bars: list[tuple[str, Decimal]]) -> str:
    """Bars from one zero line, up for positive values, down for negative ones, each labelled."""
    if not bars:
        return f"<h3>{html.escape(title)}</h3><p>Nothing to draw.</p>"
    top = max([Decimal(0), *(v for _, v in bars)])
    bottom = min([Decimal(0), *(v for _, v in bars)])
    scale = Decimal(BAR_AREA) / (top - bottom) if top != bottom else Decimal(0)
    zero = 20 + float(top * scale)
    step = CHART_WIDTH / len(bars)
    parts = [
        f"<h3>{html.escape(title)}</h3>",
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{CHART_WIDTH}' height='{BAR_AREA + 60}' "
        f"data-chart='{chart}' role='img' aria-label='{html.escape(title, quote=True)}'>",
    ]
    for n, (label, value) in enumerate(bars):
        height = float(abs(value) * scale)
        y = zero - height if value >= 0 else zero
        x = n * step + step * 0.15
        parts.append(
            f"<rect x='{x:.1f}' y='{y:.1f}' width='{step * 0.7:.1f}' height='{height:.2f}' "
            f"class='{'negative' if value < 0 else 'positive'}' "
            f"data-label='{html.escape(label, quote=True)}' "
            f"data-value='{value}'></rect>"
            f"<text x='{x:.1f}' y='{(y - 4 if value >= 0 else y + height + 12):.1f}'>{value}</text>"
            f"<text x='{x:.1f}' y='{BAR_AREA + 55}'>{html.escape(label)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(review: Review) -> str:
    first = review.months[0].period if review.months else ""
    last = review.months[-1].period if review.months else ""
    title = f"Billing review, {first} to {last}" if first != last else f"Billing review, {last}"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{POLICY}\">",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [bar_chart(chart, heading, bars) for chart, heading, bars in charts(review)]
    parts += section_tables(sections(review))
    parts.append("</body></html>")
    return "\n".join(parts)
