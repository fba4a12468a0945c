"""`meterline` run as a user runs it: a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def meterline(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("METERLINE", "KAFKA_", "STRIPE_", "CLICKHOUSE_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "meterline.cli", *args],
        capture_output=True,
        text=True,
        env=clean | (env or {}),
        cwd=cwd,
        timeout=120,
    )
