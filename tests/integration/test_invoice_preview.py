"""`meterline invoice preview` on ClickHouse's final windows, and `meterline invoice quote` on usage
stated: the seed's invoice, each Stripe line to the cent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from meterline.config import load_config
from meterline.sinks.clickhouse.client import connect
from meterline.sinks.clickhouse.migrate import migrate
from meterline.sinks.clickhouse.rows import REVISION_COLUMNS
from tests.support.stripe import record_subscription_item

NOV_1 = 1_793_491_200_000  # 2026-11-01T00:00:00Z
MINUTE = 60_000


NO_TOKENS = "tokens small 0 at $0.0005 / tokens medium 0 at $0.003 / tokens large 0 at $0.015"
"""The default rate card's tokens, a line per model (a meter priced per value), none used here."""


def test_the_seed_customer_s_november_invoice(tmp_path: Path) -> None:
    dsn = f"chdb://{tmp_path / 'clickhouse'}"
    config = load_config(None, {})
    client = connect(config, dsn)
    try:
        migrate(client, 400)
        # 1,200,000 calls in November over 12 windows, one corrected; one in October, one in December
        rows = [
            [
                "cust-seed",
                "api_calls",
                NOV_1 + n * MINUTE,
                NOV_1 + (n + 1) * MINUTE,
                0,
                0,
                100_000,
                100_000,
                10,
                NOV_1,
            ]
            for n in range(12)
        ]
        rows.append(
            ["cust-seed", "api_calls", NOV_1, NOV_1 + MINUTE, 0, 1, 100_000, 0, 10, NOV_1]
        )  # same total
        rows.append(["cust-seed", "api_calls", NOV_1 - MINUTE, NOV_1, 0, 0, 5, 5, 1, NOV_1])
        rows.append(
            [
                "cust-seed",
                "api_calls",
                NOV_1 + 30 * 86_400_000,
                NOV_1 + 30 * 86_400_000 + MINUTE,
                0,
                0,
                7,
                7,
                1,
                NOV_1,
            ]
        )
        rows.append(
            ["cust-seed", "egress_bytes", NOV_1, NOV_1 + MINUTE, 0, 0, 1_234_000_001, 1_234_000_001, 1, NOV_1]
        )
        client.insert("usage_window_revisions", rows, column_names=list(REVISION_COLUMNS))
    finally:
        client.close()
    env = {**os.environ, "CLICKHOUSE_DSN": dsn, "METERLINE__DEV__STATE_DIR": str(tmp_path)}
    command = [
        sys.executable,
        "-m",
        "meterline.cli",
        "invoice",
        "preview",
        "--customer",
        "cust-seed",
        "--period",
        "2026-11",
    ]
    shown = subprocess.run(command, env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert (
        "Included API calls 1,000,000 / Overage API calls 200,000 at $0.001 / egress 1.24 at $0.09 / "
        f"{NO_TOKENS} / compute, 1 to 3,600,000 0 / Total $200.11" in shown.stdout
    )
    # Each Stripe line with its cents, its breakdown exact beneath it: egress's $0.1116 bills $0.11.
    table = [line.split() for line in shown.stdout.splitlines()]
    assert ["API", "calls", "1,200,000", "$200.00"] in table
    assert ["egress", "1.24", "$0.09", "$0.11"] in table and ["egress", "1.24", "$0.09", "$0.1116"] in table
    as_json = json.loads(subprocess.run([*command, "--json"], env=env, capture_output=True, text=True).stdout)
    assert as_json["usage"] == {"api_calls": 1_200_000, "egress_bytes": 1_234_000_001}
    assert (as_json["total"], as_json["total_minor_units"], as_json["stripe_total"]) == (
        "200.11",
        20011,
        "200.11",
    )
    assert [(line["exact_amount"], line["amount"]) for line in as_json["lines"]] == [
        ("200.000", "200.00"),
        ("0.1116", "0.11"),
        ("0.0000", "0.00"),  # tokens per model (small, medium, large): a line each, as Stripe bills
        ("0.000", "0.00"),  # a price each
        ("0.000", "0.00"),
        ("0", "0.00"),
    ]


def quote(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterline.cli", "invoice", "quote", *args], capture_output=True, text=True
    )


def test_a_quote_prices_the_usage_stated_with_the_preview_s_lines_and_no_clickhouse() -> None:
    shown = quote("--plan", "standard", "--usage", "api_calls=1200000", "--usage", "egress_bytes=1234000001")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[-1] == (
        "Included API calls 1,000,000 / Overage API calls 200,000 at $0.001 / egress 1.24 at $0.09 / "
        f"{NO_TOKENS} / compute, 1 to 3,600,000 0 / Total $200.11"
    )
    as_json = json.loads(quote("--plan", "standard", "--usage", "compute_ms=3600001", "--json").stdout)
    assert [line["amount"] for line in as_json["lines"]] == ["0.00"] * 6  # $0.0000001
    assert (as_json["usage"], as_json["total"]) == ({"compute_ms": 3_600_001}, "0.00")


def test_a_quote_names_each_bad_argument() -> None:
    refused = quote(
        "--plan", "standard", "--usage", "gpu_hours=5", "--usage", "api_calls=1.5", "--usage", "egress_bytes",
        "--usage", "compute_ms=1", "--usage", "compute_ms=2",
    )  # fmt: skip
    assert refused.returncode == 2  # argument errors, as argparse's own: every one at once
    assert "--usage 'gpu_hours=5': plan 'standard' prices no meter 'gpu_hours'" in refused.stderr
    assert "--usage 'api_calls=1.5': the quantity is a whole number of calls" in refused.stderr
    assert "--usage 'egress_bytes': expected METER=QUANTITY, e.g. egress_bytes=1200000" in refused.stderr
    assert "--usage 'compute_ms=2': compute_ms given twice" in refused.stderr
    wrong = quote("--plan", "standard", "--currency", "eur")
    assert "plan 'standard' is priced in usd" in wrong.stderr and wrong.returncode == 1
    assert "no such plan" in quote("--plan", "gold").stderr


def test_the_preview_of_a_billing_period_counts_the_period_s_usage_against_its_included_calls(
    tmp_path: Path,
) -> None:
    """Stripe bills each subscription item over its own period (items.data[].current_period_*
    since API 2025-03-31.basil, https://docs.stripe.com/changelog/basil/2025-03-31/deprecate-subscription-current-period-start-and-end):
    a subscription started on the 15th is billed 15th to 15th, and its 1,000,000 included calls
    apply to that period, not to the calendar month."""
    from meterline.reconciler.billing.periods import PeriodError, resolve

    nov_15, dec_15 = NOV_1 + 14 * 86_400_000, NOV_1 + 44 * 86_400_000
    dsn = f"chdb://{tmp_path / 'clickhouse'}"
    config = load_config(None, {})
    client = connect(config, dsn)
    try:
        migrate(client, 400)
        record_subscription_item(client, "cust-mid", (nov_15 // 1000, dec_15 // 1000), nov_15 // 1000)

        def window(start: int, value: int) -> list[object]:
            return ["cust-mid", "api_calls", start, start + MINUTE, 0, 0, value, value, 1, start]

        # 900,000 before the 15th (the previous period), 700,000 on the 15th, 500,000 on Dec 14.
        rows = [window(NOV_1, 900_000), window(nov_15, 700_000), window(dec_15 - 86_400_000, 500_000)]
        client.insert("usage_window_revisions", rows, column_names=list(REVISION_COLUMNS))
        previous = resolve(client, "cust-mid", "previous", nov_15 + 86_400_000)
        assert (previous.start_ms, previous.end_ms) == (NOV_1 - 17 * 86_400_000, nov_15)  # Oct 15
        assert resolve(client, "cust-mid", "2026-12-20", 0).start_ms == dec_15
        assert (
            resolve(client, "cust-mid", "2026-11", 0).start_ms,
            resolve(client, "cust-mid", "2026-11", 0).end_ms,
        ) == (
            NOV_1,
            NOV_1 + 30 * 86_400_000,
        )
        try:
            resolve(client, "cust-unknown", "current", 0)
            raise AssertionError("a customer with no known subscription has no billing period")
        except PeriodError as exc:
            assert "use YYYY-MM for the UTC month" in str(exc)
    finally:
        client.close()
    env = {**os.environ, "CLICKHOUSE_DSN": dsn, "METERLINE__DEV__STATE_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "meterline.cli", "invoice", "preview", "--customer", "cust-mid"]
    by_period = json.loads(
        subprocess.run(
            [*command, "--period", "2026-11-20", "--json"], env=env, capture_output=True, text=True
        ).stdout
    )
    assert (by_period["period_start"], by_period["period_end"], by_period["subscription"]) == (
        nov_15,
        dec_15,
        "sub_1",
    )
    assert by_period["usage"] == {"api_calls": 1_200_000} and by_period["total"] == "200.00"
    by_month = json.loads(
        subprocess.run(
            [*command, "--period", "2026-11", "--json"], env=env, capture_output=True, text=True
        ).stdout
    )
    assert by_month["usage"] == {"api_calls": 1_600_000} and by_month["total"] == "600.00"  # the UTC month


PLANS = """
[billing]
customers = { "cust-up" = "standard", "cust-cl" = "standard" }
history = { "cust-up" = [{ plan = "starter", until = "2026-11-16T00:00:00Z" }] }

[plans.starter.prices.api_calls]
unit = "call"
label = "API calls"
included = 100000
overage_price = "0.002"

[plans.standard.prices.api_calls]
unit = "call"
label = "API calls"
included = 1000000
overage_price = "0.001"
"""


def test_a_plan_change_mid_period_prices_each_part_on_its_plan_as_stripe_bills_it(tmp_path: Path) -> None:
    """https://docs.stripe.com/billing/subscriptions/usage-based/manage-billing-setup, "Update prices
    mid-cycle": with billing_mode=flexible Stripe bills the old price's usage up to the change, with
    classic billing mode "Usage from January 1 to January 16 isn't billed". Each part counts its
    included calls from zero, as each price is its own line."""
    nov_16 = NOV_1 + 15 * 86_400_000
    path = tmp_path / "meterline.toml"
    path.write_text(PLANS)
    config = load_config(path, {})
    dsn = f"chdb://{tmp_path / 'clickhouse'}"
    client = connect(config, dsn)
    try:
        migrate(client, 400)
        rows = [
            [customer, "api_calls", start, start + MINUTE, 0, 0, value, value, 1, start]
            for customer in ("cust-up", "cust-cl")
            for start, value in ((NOV_1, 300_000), (nov_16, 1_200_000))
        ]
        client.insert("usage_window_revisions", rows, column_names=list(REVISION_COLUMNS))
        # cust-cl: Stripe said starter on Nov 1 and standard on Nov 16, in classic billing mode.
        period = (NOV_1 // 1000, NOV_1 // 1000 + 30 * 86_400)
        for at, plan in ((NOV_1, "starter"), (nov_16, "standard")):
            record_subscription_item(
                client, "cust-cl", period, at // 1000, "sub_cl", f"meterline_{plan}_api_calls", "classic"
            )
    finally:
        client.close()
    env = {**os.environ, "CLICKHOUSE_DSN": dsn, "METERLINE__DEV__STATE_DIR": str(tmp_path)}

    def preview(customer: str) -> dict[str, Any]:
        command = [sys.executable, "-m", "meterline.cli", "--config", str(path), "invoice", "preview"]
        done = subprocess.run(
            [*command, "--customer", customer, "--period", "2026-11", "--json"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        found: dict[str, Any] = json.loads(done.stdout)
        return found

    # From the configuration (the billing mode unknown): starter's 300,000 (100,000 included, then
    # $0.002) = $400.00, standard's 1,200,000 (1,000,000 included, then $0.001) = $200.00.
    flexible = preview("cust-up")
    assert [(p["plan"], p["usage"]) for p in flexible["parts"]] == [
        ("starter", {"api_calls": 300_000}),
        ("standard", {"api_calls": 1_200_000}),
    ]
    assert [line["amount"] for line in flexible["lines"]] == ["400.00", "200.00"]
    assert (flexible["total"], flexible["stripe_total"]) == ("600.00", "600.00")
    assert "classic would not bill it" in flexible["notes"][0]
    # The dashboard prices the period as the preview does, and projects the current plan's part.
    from meterline.dashboard import document

    client = connect(config, dsn)
    try:
        page = document(config, client, "cust-up", "2026-11", as_of_ms=NOV_1 + 30 * 86_400_000)
        halfway = document(config, client, "cust-up", "2026-11", as_of_ms=nov_16 + 7 * 86_400_000)
    finally:
        client.close()
    assert (page["plan"], page["invoice"]["total"], page["projected"]["total"]) == (
        "standard",
        "$600.00",
        "$600.00",
    )
    # A week into standard's 15 days: its 1,200,000 calls project to 2,571,428 ($1,571.43), starter's stay.
    assert halfway["projected"]["total"] == "$1,971.43"
    # From Stripe's events, classic billing mode: the part before the change is not billed.
    classic = preview("cust-cl")
    assert [line["billed_by_stripe"] for line in classic["lines"]] == [False, True]
    assert (classic["total"], classic["stripe_total"]) == ("600.00", "200.00")
    assert "classic billing mode drops usage before a price change" in classic["notes"][0]
