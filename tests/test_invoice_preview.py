"""`meterline invoice preview` on ClickHouse's final windows: the seed's invoice, to the cent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from meterline.config import load_config
from sinks.clickhouse.client import connect
from sinks.clickhouse.migrate import migrate
from sinks.clickhouse.rows import REVISION_COLUMNS

NOV_1 = 1_793_491_200_000  # 2026-11-01T00:00:00Z
MINUTE = 60_000


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
        "compute seconds, 1 to 3,600 0 / Total $200.11" in shown.stdout
    )
    as_json = json.loads(subprocess.run([*command, "--json"], env=env, capture_output=True, text=True).stdout)
    assert as_json["usage"] == {"api_calls": 1_200_000, "egress_bytes": 1_234_000_001}
    assert as_json["total"] == "200.11"
    assert [line["amount"] for line in as_json["lines"]] == ["0", "200.000", "0.1116", "0"]
