"""Exit codes a scheduler can use: `reconcile` exits 0 with no drift, 1 with drift beyond the
threshold (tests/integration/test_reconcile.py), and 2 when it could not run: ClickHouse or
Stripe unavailable, bad arguments; with --json the error is JSON on stdout. `--config` is taken
after the command too, and `meterline --version` answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from meterline import __version__
from meterline.config import load_config
from meterline.sinks.clickhouse.client import connect
from meterline.sinks.clickhouse.migrate import migrate
from meterline.sinks.clickhouse.rows import REVISION_COLUMNS
from tests.support.pipeline import free_port  # bound, then released: nothing listens there

NOV_1 = 1_793_491_200_000  # 2026-11-01T00:00:00Z


def meterline(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "meterline.cli", *args]
    return subprocess.run(
        command, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120
    )


def test_version_and_config_after_the_command(tmp_path: Path) -> None:
    assert meterline("--version").stdout.strip() == f"meterline {__version__}"
    path = tmp_path / "meterline.toml"
    path.write_text("[windows]\nsize_minutes = 3\n")
    for args in (["--config", str(path), "config", "check"], ["config", "check", "--config", str(path)]):
        checked = meterline(*args)
        assert checked.returncode == 1 and "windows.size_minutes = 3: must be 1 or 5" in checked.stderr


def test_reconcile_exits_2_with_a_json_error_when_clickhouse_is_unavailable(tmp_path: Path) -> None:
    env = {"CLICKHOUSE_DSN": f"http://127.0.0.1:{free_port()}", "METERLINE__DEV__STATE_DIR": str(tmp_path)}
    failed = meterline("reconcile", "--period", "2026-11", "--json", env=env)
    assert failed.returncode == 2, failed.stderr
    error = json.loads(failed.stdout)
    assert error["ok"] is False and error["error"]


def test_reconcile_exits_2_when_stripe_does_not_answer(tmp_path: Path) -> None:
    dsn = f"chdb://{tmp_path / 'clickhouse'}"
    client = connect(load_config(None, {}), dsn)
    try:
        migrate(client, 400)
        window = ["cust-1", "api_calls", NOV_1, NOV_1 + 60_000, 0, 0, 5, 5, 1, NOV_1]
        client.insert("usage_window_revisions", [window], column_names=list(REVISION_COLUMNS))
    finally:
        client.close()
    env = {
        "CLICKHOUSE_DSN": dsn,
        "STRIPE_API_BASE": f"http://127.0.0.1:{free_port()}",
        "METERLINE__DEV__STATE_DIR": str(tmp_path),
    }
    failed = meterline("reconcile", "--period", "2026-11", "--give-up-after", "1", "--json", env=env)
    assert failed.returncode == 2, failed.stderr
    assert json.loads(failed.stdout)["error"].startswith("Stripe did not answer for 1 s")
    shown = meterline("reconcile", "--period", "2026-11", "--give-up-after", "1", env=env)
    assert shown.returncode == 2 and "reconcile could not run: Stripe did not answer" in shown.stderr


def test_reconcile_exits_2_on_bad_arguments_with_json_errors(tmp_path: Path) -> None:
    env = {"METERLINE__DEV__STATE_DIR": str(tmp_path), "CLICKHOUSE_DSN": f"chdb://{tmp_path / 'ch'}"}
    bad_period = meterline("reconcile", "--period", "2026-13", "--json", env=env)
    assert bad_period.returncode == 2
    refusal = "argument --period: period '2026-13': expected YYYY-MM (a UTC month), current, previous"
    assert json.loads(bad_period.stdout)["error"].startswith(refusal)
    bad_number = meterline("reconcile", "--threshold", "many", "--json", env=env)
    assert bad_number.returncode == 2
    assert json.loads(bad_number.stdout) == {
        "ok": False,
        "error": "argument --threshold: invalid int value: 'many'",
        "kind": "UsageError",
    }


def test_stripe_sync_gives_up_on_an_unreachable_stripe_and_exits_2() -> None:
    """It retried forever (272 retries in 300 s, issue 40): now `--give-up-after` bounds it, as
    reconcile's does, and what was made before stays made for the next sync."""
    env = {
        "STRIPE_API_KEY": "sk_test_unreachable",
        "METERLINE__STRIPE__API_BASE": f"http://127.0.0.1:{free_port()}",
    }
    gave_up = meterline("stripe", "sync", "--give-up-after", "1", "--json", env=env)
    assert gave_up.returncode == 2, gave_up.stderr
    answer = json.loads(gave_up.stdout)
    assert answer["ok"] is False and "Stripe did not answer for 1 s" in answer["error"]
