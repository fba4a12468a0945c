"""`meterline dispute`: the seed customer's month explained: which day crossed the included
quantity, the invoice lines, and the Stripe identifiers that carried the usage."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from meterline.config import load_config
from meterline.reconciler.checks.dispute import Carrier, HourUsage, build, render_html
from meterline.sinks.clickhouse.client import connect
from meterline.sinks.clickhouse.migrate import migrate
from meterline.sinks.clickhouse.rows import EVENT_COLUMNS, REVISION_COLUMNS
from meterline.sinks.stripe.ledger import COLUMNS as LEDGER_COLUMNS

NOV_1 = 1_793_491_200_000  # 2026-11-01T00:00:00Z
HOUR = 3_600_000
DAY = 24 * HOUR


def test_the_day_that_crossed_the_included_quantity_is_shown() -> None:
    config = load_config(None, {})
    hours = [
        HourUsage("api_calls", NOV_1 + 9 * HOUR, 800_000, 0),
        HourUsage("api_calls", NOV_1 + DAY + 9 * HOUR, 300_000, 1),
        HourUsage("api_calls", NOV_1 + DAY + 10 * HOUR, 100_000, 0),
    ]
    carriers = [
        Carrier("api_calls", NOV_1 + 9 * HOUR, 0, 800_000, "ml:cust-seed:api_calls:1:0:0", "sent", "req_1")
    ]
    report = build(config, "cust-seed", "2026-11", hours, carriers)
    days = [(d.day, d.quantity, d.cumulative, dict(d.bands)) for d in report.days if d.meter == "api_calls"]
    assert days == [
        ("2026-11-01", 800_000, 800_000, {"included": 800_000}),
        ("2026-11-02", 400_000, 1_200_000, {"included": 200_000, "overage": 200_000}),
    ]
    assert str(report.bill.total) == "200.00"
    page = render_html(report)
    assert "ml:cust-seed:api_calls:1:0:0" in page and "$200.00" in page and "<script" not in page


def test_a_peak_day_shows_how_far_it_raised_the_period_s_peak() -> None:
    """Seats (a `max` meter) on the team plan: a day is its highest hour, and what falls into the
    price's bands is the rise of the period's peak, so that the days' shares add up to the peak
    billed (11 seats at $10), not to the sum of the hours."""
    config = load_config(None, {"METERLINE__BILLING__CUSTOMERS": '{ "cust-team" = "team" }'})
    hours = [
        HourUsage("seats", NOV_1 + 9 * HOUR, 5, 0),
        HourUsage("seats", NOV_1 + 10 * HOUR, 8, 0),
        HourUsage("seats", NOV_1 + DAY + 9 * HOUR, 6, 0),
        HourUsage("seats", NOV_1 + DAY + 10 * HOUR, 11, 0),
        HourUsage("seats", NOV_1 + 2 * DAY + 9 * HOUR, 4, 0),
    ]
    report = build(config, "cust-team", "2026-11", hours, [])
    days = [(d.day, d.quantity, d.cumulative, dict(d.bands)) for d in report.days if d.meter == "seats"]
    assert days == [
        ("2026-11-01", 8, 8, {"billed": 8}),
        ("2026-11-02", 11, 11, {"billed": 3}),
        ("2026-11-03", 4, 11, {}),
    ]
    assert str(report.bill.total) == "139.00"  # $29 base fee, 11 seats at $10, no calls


def test_a_latest_level_falls_into_the_bands_on_its_last_day_alone() -> None:
    """Seats as a `last` meter: a day is its latest hour, and the level billed is the last day's
    (4 seats at $10), which alone falls into the price's bands."""
    config = load_config(
        None,
        {
            "METERLINE__BILLING__CUSTOMERS": '{ "cust-team" = "team" }',
            "METERLINE__METERS__SEATS__AGGREGATION": "last",
        },
    )
    hours = [
        HourUsage("seats", NOV_1 + 9 * HOUR, 5, 0),
        HourUsage("seats", NOV_1 + 10 * HOUR, 8, 0),
        HourUsage("seats", NOV_1 + DAY + 9 * HOUR, 11, 0),
        HourUsage("seats", NOV_1 + 2 * DAY + 9 * HOUR, 6, 0),
        HourUsage("seats", NOV_1 + 2 * DAY + 10 * HOUR, 4, 0),
    ]
    report = build(config, "cust-team", "2026-11", hours, [])
    days = [(d.day, d.quantity, d.cumulative, dict(d.bands)) for d in report.days if d.meter == "seats"]
    assert days == [
        ("2026-11-01", 8, 8, {}),
        ("2026-11-02", 11, 11, {}),
        ("2026-11-03", 4, 4, {"billed": 4}),
    ]
    assert str(report.bill.total) == "69.00"  # $29 base fee, 4 seats at $10


def test_the_command_writes_csv_json_and_html_from_clickhouse(tmp_path: Path) -> None:
    dsn = f"chdb://{tmp_path / 'clickhouse'}"
    client = connect(load_config(None, {}), dsn)
    try:
        migrate(client, 400)
        windows = [
            [
                "cust-<b>",
                "api_calls",
                NOV_1 + n * HOUR,
                NOV_1 + n * HOUR + 60_000,
                0,
                0,
                600_000,
                600_000,
                6,
                NOV_1,
            ]
            for n in range(2)
        ]
        client.insert("usage_window_revisions", windows, column_names=list(REVISION_COLUMNS))
        ledger = [
            [
                "cust-<b>",
                "api_calls",
                w[2],
                0,
                0,
                f"ml:id-{n}",
                "meter_events",
                "cus_1",
                "api_calls",
                600_000,
                "sent",
                1,
                "",
                "",
                f"req_{n}",
                NOV_1,
            ]
            for n, w in enumerate(windows)
        ]
        client.insert("stripe_reports", ledger, column_names=list(LEDGER_COLUMNS))
        # Seats reported by the product: the peak is 12, reported by two events (one retried).
        seats = [
            ("e1", 7, 1, True),
            ("e2", 12, 2, True),
            ("e2", 12, 2, True),  # a retry: once under FINAL
            ("e3", 12, 3, True),
            ("e4", 15, 4, False),  # not billable: not a peak
        ]
        # Active users: ann first at hour 2 (her event at hour 1 came late, earlier in time), bob once.
        users = [
            ("u1", "ann", 2, True),
            ("u2", "ann", 1, True),
            ("u3", "bob", 3, True),
            ("u4", "cy", 4, False),
        ]
        client.insert(
            "usage_events",
            [
                [
                    event,
                    "cust-<b>",
                    "seats",
                    quantity,
                    "seat",
                    NOV_1 + hour * HOUR,
                    "hr-sync",
                    {},
                    billable,
                    0,
                    n,
                ]
                for n, (event, quantity, hour, billable) in enumerate(seats)
            ]
            + [
                [
                    event,
                    "cust-<b>",
                    "active_users",
                    1,
                    "user",
                    NOV_1 + hour * HOUR,
                    "app",
                    {"user": user},
                    ok,
                    0,
                    n,
                ]
                for n, (event, user, hour, ok) in enumerate(users, len(seats))
            ]
            # Storage held, metered here as a `last` meter: its latest event is x3 (x2's time, a
            # later id), though x2 holds more and x4 came later but is not billable.
            + [
                [
                    event,
                    "cust-<b>",
                    "egress_bytes",
                    quantity,
                    "byte",
                    NOV_1 + hour * HOUR,
                    "store",
                    {},
                    ok,
                    0,
                    n,
                ]
                for n, (event, quantity, hour, ok) in enumerate(
                    [("x1", 5, 1, True), ("x2", 9, 3, True), ("x3", 7, 3, True), ("x4", 1, 4, False)], 20
                )
            ]
            # GB stored (storage, time_weighted): 4 carried in from October, set again to 4 (no
            # change), raised to 10 (retried), set to 10 again, emptied by an event not billable, 6.
            + [
                [event, "cust-<b>", "storage", quantity, "GB", NOV_1 + hour * HOUR, "store", {}, ok, 0, n]
                for n, (event, quantity, hour, ok) in enumerate(
                    [
                        ("s0", 4, -1, True),
                        ("s1", 4, 1, True),
                        ("s2", 10, 2, True),
                        ("s2", 10, 2, True),
                        ("s3", 10, 3, True),
                        ("s4", 0, 5, False),
                        ("s5", 6, 6, True),
                    ],
                    30,
                )
            ],
            column_names=list(EVENT_COLUMNS),
        )
    finally:
        client.close()
    env = {
        **os.environ,
        "CLICKHOUSE_DSN": dsn,
        "METERLINE__DEV__STATE_DIR": str(tmp_path),
        "METERLINE__METERS__EGRESS_BYTES__AGGREGATION": "last",
    }

    def dispute(fmt: str) -> str:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "meterline.cli",
                "dispute",
                "--customer",
                "cust-<b>",
                "--period",
                "2026-11",
                "--format",
                fmt,
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    as_json = json.loads(dispute("json"))
    assert as_json["bill"]["total"] == "200.00" and [c["identifier"] for c in as_json["carriers"]] == [
        "ml:id-0",
        "ml:id-1",
    ]
    made = [(p["meter"], p["event_id"], p["quantity"]) for p in as_json["level_events"]]
    assert made == [
        ("egress_bytes", "x3", 7),
        ("seats", "e2", 12),
        ("seats", "e3", 12),
        ("storage", "s0", 4),  # the level carried into November, then each change of it
        ("storage", "s2", 10),
        ("storage", "s5", 6),
    ]
    counted = [(v["meter"], v["value"], v["event_id"]) for v in as_json["counted_values"]]
    assert counted == [("active_users", "ann", "u2"), ("active_users", "bob", "u3")]
    rows = list(csv.reader(io.StringIO(dispute("csv"))))
    assert ["Total", "", "", "$200.00"] in rows and any("req_1" in row for row in rows)
    page = dispute("html")
    assert "cust-&lt;b&gt;" in page and "cust-<b>" not in page  # escaped
