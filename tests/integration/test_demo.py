"""The README's demo, small: the whole story on a fresh local stack of its own, every number
checked against the generator by the demo itself (exit 0 only if all match)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SECTIONS = (
    "== 1. the local stack, afresh",
    "== 2. a month of usage",
    "HTTP ingest",
    "demo-refused-1  refused  unit   unit_mismatch",
    "== 5. `meterline run`",
    "usage_windows FINAL, window by window:",
    "Stripe equals the generator for all",
    "0 drifting beyond 0 units",
    "every rejected record is there with its reason: yes",
    "Invoice preview for cust-0000",
    "Stripe's line rules on Stripe's own totals bill what the preview shows: yes",
    # The seat-based plan (issue 37): a customer on `team`, its storage billed in GB-months (GB held
    # by the second), its seats at the month's peak.
    "Invoice preview for cust-0001, ",
    "Base fee $29.00 / storage ",
    " at $0.10 / seats ",
    "== the usage dashboard: http://127.0.0.1:",
    "every number matches the generator",
)


def test_the_demo_tells_the_whole_story_and_every_number_matches(tmp_path: Path) -> None:
    services = ("KAFKA_BOOTSTRAP", "CLICKHOUSE_DSN", "STRIPE_API_KEY", "STRIPE_API_BASE", "METERLINE_CONFIG")
    env = {k: v for k, v in os.environ.items() if k not in services and not k.startswith("METERLINE__")}
    env.update(
        METERLINE__RUN__PORT="0",
        METERLINE__STRIPE__WEBHOOK_PORT="0",
        METERLINE__INGEST__PORT="0",
        PYTHONUNBUFFERED="1",
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "meterline.cli",
            "demo",
            "--events",
            "8000",
            "--customers",
            "3",
            "--duplicates",
            "0.02",
            "--out-of-order",
            "0.05",
            "--late",
            "0.01",
            "--malformed",
            "0.01",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    positions = [done.stdout.find(section) for section in SECTIONS]
    assert -1 not in positions, [s for s, p in zip(SECTIONS, positions, strict=True) if p < 0]
    assert positions == sorted(positions)  # in the README's order
    assert done.stdout.count("bill what the preview shows: yes") == 2  # both plans' invoices
    assert not (tmp_path / ".meterline" / "stack.json").exists()  # it stopped what it started
