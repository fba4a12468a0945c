"""`meterline dispute`: everything support needs to answer "why is my bill higher?" for one
customer and period: usage by day and hour, how each day's usage falls into the included quantity,
overage or tiers, the invoice lines, the Stripe identifiers that carried the usage; for a level
the events that made it (those that reported a peak, a `last` meter's latest event, a
time_weighted meter's level history), for a
distinct count (active users) each value it counted with the event that first carried it. A peak's
day is its highest hour, and what falls into the bands is how far the day raised the period's peak.
Assembling it is pure (`build`); the queries and the renderers are around it.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from meterline.core.config import Config
from meterline.core.currencies import Currency
from meterline.core.ratecard import MeterPrice
from meterline.reconciler.billing import invoice_text
from meterline.reconciler.billing.periods import Period
from meterline.reconciler.billing.plan_history import period_invoice
from meterline.reconciler.billing.pricing import Invoice, invoice
from meterline.reconciler.html_tables import section_tables
from meterline.sinks.clickhouse.usage_events import first_sightings, latest_event, level_changes, peak_events
from meterline.sinks.clickhouse.usage_windows import by_bucket
from meterline.sinks.stripe.ledger import reports_of
from meterline.streams.windows import running

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


@dataclass(frozen=True)
class HourUsage:
    meter: str
    hour: int  # epoch ms
    quantity: int  # base units
    corrected_windows: int


@dataclass(frozen=True)
class DayShare:
    """How a day's usage of a meter falls into the price's bands (included, overage, tiers)."""

    meter: str
    day: str
    quantity: int
    cumulative: int
    bands: Mapping[str, int]  # band -> base units of this day in it


@dataclass(frozen=True)
class Carrier:
    """A Stripe report that carried part of the usage."""

    meter: str
    window_start: int
    revision: int
    value: int
    identifier: str
    status: str
    stripe_request_id: str


@dataclass(frozen=True)
class LevelEvent:
    """An event that made a level's answer: one that reported a `max` meter's highest quantity in
    the period, a `last` meter's latest event, or a `time_weighted` meter's level history (the
    level carried into the period, then each change)."""

    meter: str
    event_id: str
    timestamp: int  # epoch ms
    quantity: int
    source: str


@dataclass(frozen=True)
class CountedValue:
    """A value a `unique_count` meter counted in the period, with the event that first carried it
    in its month."""

    meter: str
    value: str
    event_id: str
    timestamp: int  # epoch ms
    source: str


@dataclass(frozen=True)
class DisputeReport:
    customer: str
    period: str
    plan: str
    currency: Currency
    hours: list[HourUsage]
    days: list[DayShare]
    bill: Invoice
    carriers: list[Carrier]
    level_events: list[LevelEvent] = field(default_factory=list)
    counted_values: list[CountedValue] = field(default_factory=list)


def bands(price: MeterPrice) -> list[tuple[str, int | None]]:
    """(band name, its upper bound in base units, None: open) in order."""
    if price.tiers_mode is None:
        included = int(price.included * price.per)
        return ([("included", included)] if included else []) + [("overage" if included else "billed", None)]
    return [
        (f"tier {n}", None if t.up_to is None else int(t.up_to * price.per))
        for n, t in enumerate(price.tiers, 1)
    ]


def build(
    config: Config,
    customer: str,
    period: str,
    hours: Sequence[HourUsage],
    carriers: Sequence[Carrier],
    bill: Invoice | None = None,
    made_levels: Sequence[LevelEvent] = (),
    counted_values: Sequence[CountedValue] = (),
) -> DisputeReport:
    """The report; `bill` is the period's invoice when it is not the current plan's over the whole
    period (a plan change: reconciler.billing.plan_history). `hours` hold a level's answer of each
    hour (Config.levels): a peak meter's day is its highest hour and its `cumulative` the period's
    peak so far; a `last` meter's day is its latest hour, its `cumulative` the level then."""
    plan = config.plan_for(customer)

    def add(meter: str, so_far: int, quantity: int) -> int:
        return running(config.meters[meter].aggregation, so_far, quantity)

    usage: dict[str, int] = {}
    for h in hours:
        usage[h.meter] = add(h.meter, usage.get(h.meter, 0), h.quantity)
    days: list[DayShare] = []
    for meter, price in plan.prices.items():
        by_day: dict[str, int] = {}
        for h in hours:
            if h.meter == meter:
                day = datetime.fromtimestamp(h.hour / 1000, UTC).date().isoformat()
                by_day[day] = add(meter, by_day.get(day, 0), h.quantity)
        cumulative = 0
        is_last, last_day = config.meters[meter].aggregation == "last", max(by_day, default="")
        for day in sorted(by_day):
            quantity = by_day[day]
            reached = add(meter, cumulative, quantity)
            # What falls into the bands: the day's rise of the answer; a latest level is billed as it
            # stands on its last day, which alone falls into them, whole.
            bottom, top_reached = (0, reached if day == last_day else 0) if is_last else (cumulative, reached)
            shares: dict[str, int] = {}
            floor = 0
            for name, top in bands(price):
                low, high = max(bottom, floor), top_reached if top is None else min(top_reached, top)
                if high > low:
                    shares[name] = high - low
                if top is not None:
                    floor = top
            cumulative = reached
            days.append(DayShare(meter, day, quantity, cumulative, shares))
    return DisputeReport(
        customer,
        period,
        plan.name,
        plan.currency,
        list(hours),
        days,
        bill or invoice(plan, usage),
        list(carriers),
        list(made_levels),
        list(counted_values),
    )


def query(config: Config, client: Client, customer: str, period: Period) -> DisputeReport:
    """The report for `customer` over `period` (reconciler.billing.periods: a UTC month or a billing
    period)."""
    start, end = period.start_ms, period.end_ms
    hours = [
        HourUsage(meter, hour, quantity, corrected)
        for meter, buckets in sorted(
            by_bucket(client, customer, start, end, "hour", levels=config.levels).items()
        )
        for hour, quantity, corrected in buckets
    ]
    carriers = [Carrier(*report) for report in reports_of(client, customer, start, end)]
    _, _, bill = period_invoice(config, client, customer, start, end)
    made_levels = [
        LevelEvent(meter, *event)
        for meter, kind in config.levels.items()
        for event in (peak_events if kind == "max" else latest_event)(client, customer, meter, start, end)
    ] + [
        LevelEvent(name, *event)
        for name, meter in config.meters.items()
        if meter.aggregation == "time_weighted"
        for event in level_changes(client, customer, name, start, end)
    ]
    counted_values = [
        CountedValue(meter, *sighting)
        for meter, attribute in config.unique_attributes.items()
        for sighting in first_sightings(client, customer, meter, attribute, start, end)
    ]
    return build(config, customer, period.label, hours, carriers, bill, made_levels, counted_values)


# -- renderers ---------------------------------------------------------------------------------------


def _hour(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:00")


def _instant(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _sections(report: DisputeReport) -> list[tuple[str, list[dict[str, Any]]]]:
    return [
        ("Invoice lines", invoice_text.rows(report.bill)),
        ("Notes", [{"note": note} for note in report.bill.notes]),
        (
            "Usage by day, and where it falls",
            [
                {"meter": d.meter, "day": d.day, "quantity": d.quantity, "cumulative": d.cumulative}
                | {band: d.bands.get(band, 0) for band in sorted({b for x in report.days for b in x.bands})}
                for d in report.days
            ],
        ),
        (
            "Usage by hour (UTC)",
            [
                {
                    "meter": h.meter,
                    "hour": _hour(h.hour),
                    "quantity": h.quantity,
                    "corrected windows": h.corrected_windows,
                }
                for h in report.hours
            ],
        ),
        (
            "What made each level (the events that reported a peak, a level's latest; clickhouse.raw_events)",
            [
                {
                    "meter": p.meter,
                    "event": p.event_id,
                    "at (UTC)": _instant(p.timestamp),
                    "quantity": p.quantity,
                    "source": p.source,
                }
                for p in report.level_events
            ],
        ),
        (
            "The values each distinct count counted, first seen (clickhouse.raw_events)",
            [
                {
                    "meter": v.meter,
                    "value": v.value,
                    "first event": v.event_id,
                    "at (UTC)": _instant(v.timestamp),
                    "source": v.source,
                }
                for v in report.counted_values
            ],
        ),
        (
            "Stripe reports that carried it",
            [
                {
                    "meter": c.meter,
                    "window": datetime.fromtimestamp(c.window_start / 1000, UTC).strftime("%Y-%m-%d %H:%M"),
                    "revision": c.revision,
                    "value": c.value,
                    "identifier": c.identifier,
                    "status": c.status,
                    "request id": c.stripe_request_id,
                }
                for c in report.carriers
            ],
        ),
    ]


def render_json(report: DisputeReport) -> str:
    def default(value: object) -> object:
        return str(value) if isinstance(value, Decimal) else repr(value)

    return json.dumps(
        {**asdict(report), "currency": report.currency.code, "bill": invoice_text.to_json(report.bill)},
        default=default,
    )


def render_csv(report: DisputeReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["customer", report.customer, "period", report.period, "plan", report.plan])
    for title, rows in _sections(report):
        writer.writerow([])
        writer.writerow([title])
        if rows:
            writer.writerow(list(rows[0]))
            writer.writerows([list(r.values()) for r in rows])
    return out.getvalue()


def render_html(report: DisputeReport) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Usage of {html.escape(report.customer)}, {html.escape(report.period)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}</style>",
        "</head><body>",
        f"<h1>Usage of {html.escape(report.customer)}, {html.escape(report.period)}, plan "
        f"{html.escape(report.plan)}</h1>",
    ]
    parts += section_tables(_sections(report))
    parts.append("</body></html>")
    return "\n".join(parts)
