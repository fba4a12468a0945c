"""The usage dashboard `meterline run` serves per customer (/customers/<id>).

One JSON document (/api/customers/<id>/usage) carries everything the page shows: usage over time
per meter (by hour or day, from `usage_windows FINAL`), how the period's usage splits into
included and overage, the invoice so far and the projected invoice for the whole period. The page
draws it with a few lines of its own script (no CDN here, nor in many production networks).
Money stays Decimal until it becomes text; the page only prints what the server computed.
"""

from __future__ import annotations

import base64
import hashlib
import html
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from meterline.core.config import Config
from meterline.core.http import Response
from meterline.core.ratecard import MeterPrice
from meterline.reconciler.alerts.role import customer_alerts
from meterline.reconciler.billing.invoice_text import quantity_text, rows
from meterline.reconciler.billing.periods import projected_usage, resolve
from meterline.reconciler.billing.plan_history import invoice_over, period_invoice
from meterline.reconciler.billing.pricing import Invoice, billed_quantity
from meterline.sinks.clickhouse.usage_windows import Grain, by_bucket
from meterline.streams.windows import period_answer

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


def allowance(price: MeterPrice, base_units: int) -> tuple[Decimal, Decimal, Decimal]:
    """(used, included, overage) in the price's billed unit."""
    used = billed_quantity(price, base_units)
    included = min(used, price.included)
    return used, included, used - included


def series(
    client: Client, customer: str, start_ms: int, end_ms: int, grain: Grain, levels: Mapping[str, str]
) -> dict[str, list[tuple[int, int]]]:
    """meter -> [(bucket start ms, the bucket's answer)], buckets with usage only, in time order."""
    return {
        meter: [(t, value) for t, value, _ in buckets]
        for meter, buckets in by_bucket(client, customer, start_ms, end_ms, grain, levels=levels).items()
    }


def document(
    config: Config,
    client: Client,
    customer: str,
    period: str | None = None,
    grain: Grain = "hour",
    as_of_ms: int | None = None,
) -> dict[str, Any]:
    """The page's document; the projection is for the instant `as_of_ms` (default now), which the
    document states, so that the page and a second reading agree."""
    as_of_ms = int(time.time() * 1000) if as_of_ms is None else as_of_ms
    chosen = resolve(client, customer, period or "", as_of_ms)  # "": current, else the UTC month
    start, end = chosen.start_ms, chosen.end_ms
    # Priced as the preview prices it: each part of the period on the plan of its time. The current
    # part's included units are the ones left to use, and the rate so far projects that part only.
    split, usages, so_far = period_invoice(config, client, customer, start, end)
    current, current_usage = split[-1], usages[-1]
    levels = config.levels
    projected = projected_usage(current_usage, current.start_ms, end, as_of_ms, levels)
    projected_usages = [*usages[:-1], projected]
    plan = current.plan
    by_meter = series(client, customer, start, end, grain, levels)
    usage = {m: period_answer(config.meters[m].aggregation, dict(points)) for m, points in by_meter.items()}
    meters = []
    for name, meter in config.meters.items():
        price = plan.prices.get(name)
        row: dict[str, Any] = {
            "meter": name,
            "unit": meter.usage_unit,
            "aggregation": meter.aggregation,
            "priced_per": meter.declared,  # a value of a meter priced per value: charted with the others
            "used_base_units": usage.get(name, 0),
        }
        if price is not None:
            used, included, overage = allowance(price, current_usage.get(name, 0))
            row.update(
                label=price.label,
                billed_unit=price.billed_unit,
                used=quantity_text(used),
                included=quantity_text(included),
                included_limit=quantity_text(price.included),
                overage=quantity_text(overage),
            )
        meters.append(row)
    return {
        "customer": customer,
        "period": period,
        "period_label": chosen.label,
        "grain": grain,
        "plan": plan.name,
        "currency": plan.currency.code,
        "as_of": as_of_ms,
        "period_start": start,
        "period_end": end,
        "meters": meters,
        "series": {meter: [[t, v] for t, v in points] for meter, points in by_meter.items()},
        "invoice": _invoice_json(so_far),
        "projected": _invoice_json(invoice_over(split, projected_usages)),
        "alerts": [
            {"threshold": threshold, "raised_at": raised_at, "status": status}
            for threshold, raised_at, status in customer_alerts(client, customer, start, end)
        ],
    }


def _invoice_json(bill: Invoice) -> dict[str, Any]:
    """The rows as the page draws them (each Stripe line, its breakdown, the total), as text."""
    return {"rows": rows(bill), "total": bill.currency.format(bill.total), "notes": list(bill.notes)}


def page(customer: str) -> str:
    """The page: a shell whose script (/dashboard.js) fetches the document and draws it. The
    customer id is user data: it reaches the page escaped, and the script only ever sets text."""
    return _PAGE.replace("__CUSTOMER__", html.escape(customer, quote=True))


def index(customers: list[str]) -> str:
    links = (
        "".join(
            f'<li><a href="/customers/{html.escape(quote(c, safe=""))}">{html.escape(c)}</a></li>'
            for c in customers
        )
        or "<li>no usage yet</li>"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><link rel='icon' href='data:,'>"
        "<title>meterline</title></head><body>"
        f"<h1>meterline: customers with usage</h1><ul>{links}</ul>"
        "<p><a href='/metrics'>metrics</a> · <a href='/readyz'>readiness</a></p></body></html>"
    )


def respond(text: str) -> Response:
    """A page of the dashboard, with a policy that lets nothing run but its own script: whatever
    a customer id smuggled into the page, the browser would not execute it."""
    return Response.html(
        text,
        headers=(
            ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
            ("Referrer-Policy", "no-referrer"),
            ("X-Frame-Options", "DENY"),
        ),
    )


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>Usage: __CUSTOMER__</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2433; }
  h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
  .muted { color: #667085; }
  table { border-collapse: collapse; } td, th { padding: 4px 10px; border-bottom: 1px solid #e4e7ec; }
  th { text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .chart { margin: 8px 0 16px; } .chart rect { fill: #3e63dd; } .chart rect:hover { fill: #1f3fb8; }
  .chart line { stroke: #3e63dd; stroke-width: 3; }
  .chart .part1 rect, .chart text.part1 { fill: #e5484d; }
  .chart .part2 rect, .chart text.part2 { fill: #30a46c; }
  .chart .part3 rect, .chart text.part3 { fill: #f76b15; } .chart text.part0 { fill: #3e63dd; }
  .chart text { font-size: 11px; fill: #667085; }
  nav a { margin-right: 12px; }
</style>
</head>
<body data-customer="__CUSTOMER__">
<h1>Usage of __CUSTOMER__</h1>
<div class="muted" id="summary">loading…</div>
<nav id="controls"></nav>
<h2>This period: included and overage</h2>
<table id="allowance"></table>
<h2>Usage over time</h2>
<div id="charts"></div>
<h2>Invoice so far</h2>
<table id="invoice"></table>
<h2>Projected invoice for the whole period</h2>
<p class="muted" id="projection-basis">If usage goes on at the rate so far.</p>
<table id="projected"></table>
<h2>Usage alerts this period</h2>
<table id="alerts"></table>
<script src="/dashboard.js"></script>
</body>
</html>
"""

# The page's script, served as /dashboard.js: the policy lets no inline script run.
SCRIPT = """\
"use strict";
const customer = document.body.dataset.customer;
const params = new URLSearchParams(location.search);
const svgNS = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const node = ["svg", "g", "rect", "text", "title", "line"].includes(tag)
    ? document.createElementNS(svgNS, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fill(table, header, rows, numeric) {
  table.replaceChildren(el("tr", {}));
  header.forEach(h => table.firstChild.appendChild(el("th", {}, h)));
  for (const row of rows) {
    const tr = el("tr", {});
    row.forEach((cell, i) => tr.appendChild(el("td", numeric.includes(i) ? {class: "num"} : {}, cell)));
    table.appendChild(tr);
  }
}

function invoiceRows(bill) {
  return bill.rows.map(r => [r.line, r.quantity, r["unit price"], r.amount]);
}

function when(ms, grain) {
  const iso = new Date(ms).toISOString();
  return grain === "day" ? iso.slice(0, 10) : iso.slice(0, 13).replace("T", " ") + ":00";
}

function chart(meter, label, points, grain, peak) {
  const width = 900, height = 160, pad = 28;
  const max = Math.max(1, ...points.map(p => p[1]));
  const svg = el("svg", {class: "chart", width, height: height + pad, "data-meter": meter,
                         role: "img", "aria-label": label + " by " + grain});
  // Bars sit at their time: an hour without usage is a gap, not a neighbour moved closer.
  const bucket = grain === "day" ? 86400000 : 3600000;
  const first = points.length ? points[0][0] : 0;
  const slots = points.length ? (points[points.length - 1][0] - first) / bucket + 1 : 1;
  const step = (width - 2 * pad) / slots;
  points.forEach(([t, value]) => {
    const h = Math.max(1, (value / max) * height);
    const x = pad + ((t - first) / bucket) * step;
    // A peak is a level, drawn as a line at its height: bars would read as amounts that add up.
    const mark = peak
      ? el("line", {x1: x, x2: x + Math.max(1, step - 1), y1: height - h, y2: height - h,
                    "data-t": t, "data-value": value})
      : el("rect", {x, y: height - h, width: Math.max(1, step - 1), height: h, "data-t": t,
                    "data-value": value});
    mark.appendChild(el("title", {}, when(t, grain) + ": " + value.toLocaleString("en-US")));
    svg.appendChild(mark);
  });
  svg.appendChild(el("text", {x: pad, y: 12}, "max " + max.toLocaleString("en-US")));
  if (points.length) {
    svg.appendChild(el("text", {x: pad, y: height + 16}, when(points[0][0], grain)));
    svg.appendChild(el("text", {x: width - pad, y: height + 16, "text-anchor": "end"},
                       when(points[points.length - 1][0], grain)));
  }
  return svg;
}

function stacked(name, unit, parts, grain) {
  // A meter priced per value: each value's bars on the ones before it, at their time, so that a
  // bar's height is the meter's usage and its parts the values'.
  const width = 900, height = 160, pad = 28;
  const totals = new Map();
  for (const part of parts) for (const [t, v] of part.points) totals.set(t, (totals.get(t) || 0) + v);
  const times = [...totals.keys()].sort((a, b) => a - b);
  const max = Math.max(1, ...totals.values());
  const svg = el("svg", {class: "chart", width, height: height + pad, "data-meter": name, role: "img",
                         "aria-label": `${name} (${unit}) by ${grain}, stacked by value`});
  const bucket = grain === "day" ? 86400000 : 3600000;
  const first = times.length ? times[0] : 0;
  const slots = times.length ? (times[times.length - 1] - first) / bucket + 1 : 1;
  const step = (width - 2 * pad) / slots;
  const below = new Map();
  parts.forEach((part, n) => {
    const group = el("g", {"data-meter": part.meter, class: "part" + (n % 4)});
    for (const [t, value] of part.points) {
      const under = below.get(t) || 0;
      below.set(t, under + value);
      const h = Math.max(1, (value / max) * height);
      const x = pad + ((t - first) / bucket) * step, y = height - ((under + value) / max) * height;
      const bar = {x, y, width: Math.max(1, step - 1), height: h, "data-t": t, "data-value": value};
      const rect = el("rect", bar);
      rect.appendChild(el("title", {}, `${when(t, grain)}, ${part.label}: ${value.toLocaleString("en-US")}`));
      group.appendChild(rect);
    }
    svg.appendChild(group);
    const legend = {x: width - pad, y: 12 + 12 * n, "text-anchor": "end", class: "part" + (n % 4)};
    svg.appendChild(el("text", legend, part.label));
  });
  svg.appendChild(el("text", {x: pad, y: 12}, "max " + max.toLocaleString("en-US")));
  if (times.length) {
    svg.appendChild(el("text", {x: pad, y: height + 16}, when(first, grain)));
    svg.appendChild(el("text", {x: width - pad, y: height + 16, "text-anchor": "end"},
                       when(times[times.length - 1], grain)));
  }
  return svg;
}

async function load() {
  const query = new URLSearchParams({grain: params.get("grain") || "hour"});
  for (const key of ["period", "as_of"]) if (params.get(key)) query.set(key, params.get(key));
  const response = await fetch("/api/customers/" + encodeURIComponent(customer) + "/usage?" + query);
  if (!response.ok) throw new Error("usage API answered " + response.status);
  const doc = await response.json();
  const asOf = new Date(doc.as_of).toISOString().slice(0, 19).replace("T", " ") + " UTC";
  document.getElementById("summary").textContent = `Plan ${doc.plan}, ${doc.period_label}, as of ${asOf}`;
  document.getElementById("projection-basis").textContent =
    `If usage goes on at the rate it had until ${asOf}.`;
  const controls = document.getElementById("controls");
  controls.replaceChildren();
  for (const grain of ["hour", "day"]) {
    const link = new URLSearchParams({grain, period: doc.period});
    if (params.get("as_of")) link.set("as_of", params.get("as_of"));
    controls.appendChild(el("a", {href: "?" + link}, "by " + grain));
  }
  const priced = doc.meters.filter(m => m.label);
  fill(document.getElementById("allowance"), ["meter", "used", "included (of limit)", "overage", "billed in"],
       priced.map(m => [m.label, m.used, m.included_limit === "0" ? "none included" : m.included + " of " +
                        m.included_limit, m.overage, m.billed_unit]),
       [1, 2, 3]);
  const charts = document.getElementById("charts");
  charts.replaceChildren();
  const byValue = new Map();  // a meter priced per value (not a level) -> its values, charted stacked
  for (const m of doc.meters) {
    const level = m.aggregation === "max" || m.aggregation === "last";  // a level: drawn as a line
    if (m.priced_per && !level) {
      if (!byValue.has(m.priced_per)) byValue.set(m.priced_per, []);
      byValue.get(m.priced_per).push(m);
      continue;
    }
    const points = doc.series[m.meter] || [];
    const kind = {max: ["peak ", "at the period's peak"], last: ["level ", "at the period's latest"]};
    const [before, after] = kind[m.aggregation] || ["", "in the period"];
    charts.appendChild(el("div", {}, `${m.label || m.meter} (${m.unit}), ${before}by ` +
                          `${doc.grain}: ${m.used_base_units.toLocaleString("en-US")} ${after}`));
    charts.appendChild(chart(m.meter, m.label || m.meter, points, doc.grain, level));
  }
  for (const [name, values] of byValue) {
    const used = values.reduce((sum, m) => sum + m.used_base_units, 0);
    charts.appendChild(el("div", {}, `${name} (${values[0].unit}) by value, by ${doc.grain}: ` +
                          `${used.toLocaleString("en-US")} in the period`));
    charts.appendChild(stacked(name, values[0].unit, values.map(m => (
      {meter: m.meter, label: m.label || m.meter, points: doc.series[m.meter] || []})), doc.grain));
  }
  fill(document.getElementById("invoice"), ["line", "quantity", "unit price", "amount"],
       invoiceRows(doc.invoice), [1, 2, 3]);
  fill(document.getElementById("projected"), ["line", "quantity", "unit price", "amount"],
       invoiceRows(doc.projected), [1, 2, 3]);
  fill(document.getElementById("alerts"), ["alert", "raised (UTC)", "status"],
       doc.alerts.map(a => [a.threshold, new Date(a.raised_at).toISOString().slice(0, 16).replace("T", " "),
                            a.status]), []);
  document.body.dataset.ready = "1";
}

load().catch(error => {
  document.getElementById("summary").textContent = "could not load usage: " + error.message;
  document.body.dataset.ready = "error";
  console.error(error);
});
"""

_STYLE = _PAGE.split("<style>", 1)[1].split("</style>", 1)[0]
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; img-src data:; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()}'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
