"""`meterline review` over two generated months in the embedded ClickHouse: every figure equals
what this test computes by hand from the rows it wrote, as a table, as JSON, and drawn on the HTML
page in Chromium."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from meterline.config import load_config
from meterline.reconciler.billing.periods import period_bounds
from meterline.reconciler.checks.reconcile import RUN_COLUMNS
from meterline.sinks.clickhouse.client import connect
from meterline.sinks.clickhouse.migrate import migrate
from meterline.sinks.clickhouse.rows import REVISION_COLUMNS
from meterline.sinks.stripe.ledger import COLUMNS as LEDGER_COLUMNS
from meterline.sinks.stripe.webhooks.events import INVOICE_COLUMNS, PAYMENT_COLUMNS
from tests.support.browser import launch, needs_chromium

DAY, HOUR = 86_400_000, 3_600_000
MONTHS = ["2026-10", "2026-11"]
# API calls a day (day of the month -> calls); the standard plan includes 1,000,000 a month.
USAGE = {
    "2026-10": {
        "cust-a": {2: 600_000, 3: 500_000},
        "cust-b": {1: 900_000, 20: 200_000},
        "cust-c": {4: 100_000},
    },
    "2026-11": {"cust-a": {2: 700_000, 3: 400_000}, "cust-b": {5: 950_000, 8: 60_000}, "cust-c": {6: 90_000}},
}
REFUSED = ("2026-11", "cust-c", 6)  # the sink refused this window: not billed, not in the latency
LATE = ("2026-11", "cust-b", 8)  # corrected by +5 after its invoice was finalized


@dataclass
class Written:
    """What the test wrote, from which it computes the review by hand."""

    latencies_ms: dict[str, list[int]] = field(default_factory=dict)
    """Per month, close to acceptance of every revision Stripe accepted."""
    drift: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per month, (ours, Stripe's) of its latest reconciliation."""


def _window(month: str, day: int) -> int:
    return period_bounds(month)[0] + (day - 1) * DAY + 12 * HOUR


def _write_windows(client: Any, written: Written) -> None:
    """A window a day of USAGE, each reported to Stripe a different number of seconds after its
    close; the LATE one corrected once, the REFUSED one refused by the sink."""
    revisions, ledger = [], []
    for month, customers in USAGE.items():
        written.latencies_ms[month] = []
        for customer, days in customers.items():
            for day, calls in days.items():
                start = _window(month, day)
                closed = start + 90_000
                late = (month, customer, day) == LATE
                refused = (month, customer, day) == REFUSED
                for revision, value, delta in [(0, calls, calls), *([(1, calls + 5, 5)] if late else [])]:
                    n = len(ledger)
                    latency = (n * 7919) % 90_000 + 500  # a spread of seconds, all distinct
                    revisions.append(
                        [customer, "api_calls", start, start + 60_000, 0, revision, value, delta, 1, closed]
                    )
                    status, code = ("failed", "unknown_customer") if refused else ("sent", "")
                    stripe_customer, identifier = f"cus_{customer[-1]}", f"ml:{n}"
                    ledger.append(
                        [
                            customer,
                            "api_calls",
                            start,
                            0,
                            revision,
                            identifier,
                            "meter_events",
                            stripe_customer,
                        ]
                    )
                    ledger[-1].extend(["api_calls", delta, status, 1, code, "", f"req_{n}", closed + latency])
                    if not refused:
                        written.latencies_ms[month].append(latency)
    client.insert("usage_window_revisions", revisions, column_names=list(REVISION_COLUMNS))
    client.insert("stripe_reports", ledger, column_names=list(LEDGER_COLUMNS))


PAYMENTS = [  # (event, invoice, customer, outcome, month, seconds after the month's end)
    ("e1", "in_a_oct", "a", "paid", "2026-10", 10),
    ("e2", "in_b_oct", "b", "paid", "2026-10", 10),
    ("e3", "in_c_oct", "c", "failed", "2026-10", 10),
    ("e4", "in_a_nov", "a", "failed", "2026-11", 10),
    ("e5", "in_a_nov", "a", "paid", "2026-11", 90_000),  # Stripe's retry a day later paid it
    ("e6", "in_b_nov", "b", "failed", "2026-11", 10),
    ("e7", "in_c_nov", "c", "paid", "2026-11", 10),
]


def _write_payments(client: Any) -> None:
    rows = []
    for event, invoice, customer, outcome, month, after in PAYMENTS:
        start, end = (edge // 1000 for edge in period_bounds(month))
        paid = 2900 if outcome == "paid" else 0
        rows.append(
            [event, invoice, f"cus_{customer}", outcome, 2900, paid, "usd", 1, start, end, end + after]
        )
    client.insert("stripe_invoice_payments", rows, column_names=list(PAYMENT_COLUMNS))


def _write_runs(client: Any, written: Written) -> None:
    """October reconciled twice (the later run clean), November once, Stripe 1,000 calls short in
    one hour of cust-a."""
    rows = []
    for run_id, month, hours_after, missing in (
        ("r-oct-1", "2026-10", 1, 300),
        ("r-oct-2", "2026-10", 2, 0),
        ("r-nov-1", "2026-11", 1, 1_000),
    ):
        start, end = period_bounds(month)
        run_at = end + hours_after * HOUR
        ours = {c: sum(days.values()) for c, days in USAGE[month].items()}
        stripe = {**ours, "cust-a": ours["cust-a"] - missing}
        source = "meter_event_summaries"
        for c in ours:
            drift = stripe[c] - ours[c]
            rows.append(
                [run_id, run_at, month, "period", c, "api_calls", start, ours[c], stripe[c], drift, source]
            )
        if missing:
            hour = _window(month, 2) // HOUR * HOUR
            calls = USAGE[month]["cust-a"][2]
            rows.append([run_id, run_at, month, "hour", "cust-a", "api_calls", hour, calls, calls - missing])
            rows[-1] += [-missing, source]
        written.drift[month] = (sum(ours.values()), sum(stripe.values()))
    client.insert("reconciliation_runs", rows, column_names=list(RUN_COLUMNS))


def _write_not_billed(client: Any) -> None:
    """cust-b's November invoice finalized on Dec 1 at 01:00, before its correction was stored
    (now); two dead letters in November."""
    start, end = period_bounds("2026-11")
    invoice = ["in_b_nov", "cus_b", "open", start // 1000, end // 1000, "[]", end // 1000 + 3600]
    client.insert("stripe_invoices", [invoice], column_names=list(INVOICE_COLUMNS))
    client.insert(
        "dlq_events",
        [["usage.events", 0, k, 0, "invalid_quantity", start + k * DAY] for k in (1, 2)],
        column_names=[
            "source_topic",
            "source_partition",
            "source_offset",
            "source_index",
            "error_code",
            "received_at",
        ],
    )


def by_hand(values: list[int], q: str) -> Decimal:
    """A percentile as the review states it: the value at index floor(q * n) of the sorted values, in s."""
    ordered = sorted(values)
    return Decimal(ordered[min(len(ordered) - 1, int(Decimal(q) * len(ordered)))]) / 1000


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Written, dict[str, str], Path]:
    tmp = tmp_path_factory.mktemp("review")
    dsn = f"chdb://{tmp / 'clickhouse'}"
    client = connect(load_config(None, {}), dsn)
    try:
        migrate(client, 400)
        written = Written()
        _write_windows(client, written)
        _write_payments(client)
        _write_runs(client, written)
        _write_not_billed(client)
    finally:
        client.close()
    env = {**os.environ, "CLICKHOUSE_DSN": dsn, "METERLINE__DEV__STATE_DIR": str(tmp)}
    return written, env, tmp


def review(env: dict[str, str], *extra: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "meterline.cli", "review", "--period", "2026-11", "--periods", "2", *extra],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_review_equals_what_the_rows_give_by_hand(
    reviewed: tuple[Written, dict[str, str], Path],
) -> None:
    written, env, _ = reviewed
    document = json.loads(review(env, "--format", "json"))
    sections = document["sections"]
    assert [
        (r["month"], r["paid"], r["payment failed"], r["success %"], r["failing"])
        for r in sections["Payments"]
    ] == [
        ("2026-10", 2, 1, "66.7", "cust-c (in_c_oct)"),
        ("2026-11", 2, 1, "66.7", "cust-b (in_b_nov)"),  # in_a_nov failed, then was paid
    ]
    latency = sections["Usage reporting latency (window close to Stripe accepting it)"]
    for row, month in zip(latency, MONTHS, strict=True):
        values = written.latencies_ms[month]
        assert row["windows"] == len(values)
        assert [Decimal(row[k]) for k in ("p50 s", "p95 s", "p99 s")] == [
            by_hand(values, q) for q in ("0.5", "0.95", "0.99")
        ]
    slowest = [r for r in sections["Slowest windows"] if r["month"] == "2026-11"]
    assert [Decimal(r["seconds"]) for r in slowest] == sorted(
        (Decimal(v) / 1000 for v in written.latencies_ms["2026-11"]), reverse=True
    )[:5]
    drift = sections["Drift (the month's latest reconciliation)"]
    for row, month in zip(drift, MONTHS, strict=True):
        ours, stripe = written.drift[month]
        percent = (Decimal(stripe - ours) * 100 / ours).quantize(Decimal("0.001"))
        assert (row["ours"], row["Stripe"], row["drift"], Decimal(row["drift %"])) == (
            ours,
            stripe,
            stripe - ours,
            percent,
        )
    assert [
        (h["month"], h["customer"], h["hour (UTC)"], h["drift"]) for h in sections["Hours that drifted"]
    ] == [
        ("2026-11", "cust-a", "2026-11-02 12:00", -1_000)  # October's latest run is clean
    ]
    fit = [
        (r["month"], r["customers"], r["crossing days"], r["far below customers"], r["by day 10"])
        for r in sections["Pricing fit"]
    ]
    assert fit == [
        ("2026-10", 3, "cust-a 3, cust-b 20", "cust-c", 1),
        ("2026-11", 3, "cust-a 3, cust-b 8", "cust-c", 2),
    ]
    assert sections["In overage by day 10 of every month reviewed"] == [
        {"plan": "standard", "meter": "api_calls", "customer": "cust-a"}
    ]
    assert sorted((r["customer"], r["reason"], r["units"]) for r in sections["Not billed"]) == [
        ("cust-b", "after invoice in_b_nov was finalized", 5),
        ("cust-c", "unknown_customer", 90_000),
    ]
    assert sections["Dead letters"] == [{"month": "2026-11", "reason": "invalid_quantity", "events": 2}]
    table = review(env)
    assert "Payments" in table and "cust-b (in_b_nov)" in table and "after invoice in_b_nov" in table


@needs_chromium
def test_the_review_page_draws_the_numbers_it_computes_in_chromium(
    reviewed: tuple[Written, dict[str, str], Path],
) -> None:
    from playwright.sync_api import sync_playwright

    from meterline.reconciler.review.page import charts
    from meterline.reconciler.review.queries import review as computed

    _, env, tmp = reviewed
    page_file = tmp / "review.html"
    assert "wrote" in review(env, "--format", "html", "--output", str(page_file))
    client = connect(load_config(None, {}), env["CLICKHOUSE_DSN"])
    try:
        expected = {chart: bars for chart, _, bars in charts(computed(load_config(None, {}), client, MONTHS))}
    finally:
        client.close()
    assert expected["payments"] == [("2026-10", Decimal("66.7")), ("2026-11", Decimal("66.7"))]
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page()
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri())
            for chart, bars in expected.items():
                drawn = page.locator(f"svg[data-chart='{chart}'] rect")
                shown = [
                    (r.get_attribute("data-label"), Decimal(r.get_attribute("data-value") or ""))
                    for r in drawn.all()
                ]
                assert shown == bars, chart
                heights = [Decimal(r.get_attribute("height") or "0") for r in drawn.all()]
                sizes = [abs(v) for _, v in bars]
                if sizes and max(sizes):  # drawn to one scale: each height in proportion to its value
                    tallest = heights[sizes.index(max(sizes))]
                    assert all(
                        abs(h - tallest * v / max(sizes)) < 1 for h, v in zip(heights, sizes, strict=True)
                    )
            assert requests == [page_file.as_uri()]  # self-contained: nothing else fetched
        finally:
            browser.close()
