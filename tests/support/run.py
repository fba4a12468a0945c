"""Helpers of the tests that run `meterline run` whole: its environment (with secrets planted in
it), what ClickHouse holds, and waiting until ClickHouse and Stripe are exact."""

from __future__ import annotations

import base64
import json
import time

from meterline.workload import Expected, WorkloadSpec, customer_ids
from tests.support.pipeline import (
    RunProcess,
    Workers,
)
from tests.support.stripe import stripe_totals

WINDOWS = (
    "SELECT customer_id, meter, toUnixTimestamp64Milli(window_start) AS w, sum(value) AS v, "
    "sum(event_count) AS n FROM usage_windows FINAL GROUP BY customer_id, meter, w"
)


# Planted in every run here: none may appear in anything a run prints (its logs, text or JSON).
PLANTED = {
    "STRIPE_API_KEY": "sk_test_planted4d1c9a7e0b2f",
    "STRIPE_WEBHOOK_SECRET": "whsec_planted8e3b5f1a9c7d",
    "CLICKHOUSE_PASSWORD": "planted-clickhouse-6b2e0d4f",
    "METERLINE__RUN__DASHBOARD_TOKEN": "planted-dashboard-token-93ac5e1f",
    "METERLINE__RUN__DASHBOARD_USER": "operator",
    "METERLINE__RUN__DASHBOARD_PASSWORD": "planted-dashboard-pass-27f08b6d",
    "METERLINE__ALERTS__SIGNING_SECRET": "planted-alerts-secret-5a1e70c3",
}
SECRETS = [v for k, v in PLANTED.items() if not k.endswith("_USER")]
BASIC = "Basic " + base64.b64encode(b"operator:planted-dashboard-pass-27f08b6d").decode()


def assert_no_secret_in(text: str) -> None:
    leaked = [secret for secret in SECRETS if secret in text]
    assert leaked == [], f"printed: {leaked}"


def run_environment(workers: Workers, stripe_base: str) -> dict[str, str]:
    return {
        **workers.env,
        **PLANTED,
        "METERLINE__STRIPE__API_BASE": stripe_base,
        "METERLINE__STRIPE__REQUESTS_PER_SECOND": "400",
        "METERLINE__STRIPE__CONCURRENCY": "8",
        "METERLINE__STRIPE__TIMEOUT_SECONDS": "2",
        "METERLINE__RUN__PORT": "0",
        "METERLINE__STRIPE__WEBHOOK_PORT": "0",
    }


def clickhouse_windows(run: RunProcess) -> dict[tuple[str, str, int], tuple[int, int]]:
    done = run.command("sql", "--format", "json", WINDOWS)
    assert done.returncode == 0, done.stderr
    return {
        (r["customer_id"], r["meter"], int(r["w"])): (int(r["v"]), int(r["n"]))
        for r in json.loads(done.stdout)
    }


def wait_until_settled(
    run: RunProcess,
    base: str,
    meters: dict[str, str],
    spec: WorkloadSpec,
    expected: Expected,
    timeout: float,
) -> None:
    """Until ClickHouse holds exactly the expected windows and Stripe exactly the expected totals
    (Expected.at_stripe: a peak meter's are its months' peaks)."""
    wanted_windows = {k: (v, n) for k, (v, n) in expected.totals.items()}
    wanted_stripe = expected.at_stripe()
    # The workload's customers, and any whose usage came another way (the HTTP ingest).
    customers = sorted(set(customer_ids(spec)) | {customer for customer, _, _ in expected.totals})
    starts = [start for _, _, start in expected.totals]  # late events reach before the span's start
    span = (min(starts), max(starts) + 60_000)
    deadline = time.monotonic() + timeout
    windows: dict[tuple[str, str, int], tuple[int, int]] = {}
    stripe: dict[tuple[str, str], int] = {}
    while time.monotonic() < deadline:
        windows = clickhouse_windows(run)
        stripe = stripe_totals(base, meters, customers, span)
        if windows == wanted_windows and stripe == wanted_stripe:
            return
        time.sleep(3)
    differing = [k for k in wanted_windows.keys() | windows.keys() if wanted_windows.get(k) != windows.get(k)]
    raise AssertionError(
        f"not exact within {timeout} s: {len(differing)} windows differ, e.g. "
        f"{[(k, wanted_windows.get(k), windows.get(k)) for k in differing[:5]]}; "
        f"Stripe {stripe} != {wanted_stripe}\n{run.logs()}"
    )
