"""Chromium for the pages meterline draws (the dashboard, the billing review): Debian's package,
which `./run.sh test` installs and then requires (METERLINE_REQUIRE_BROWSER), so that a missing
browser fails those tests instead of skipping them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these, Chromium calls home at start: refused here, many connections at a time.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("METERLINE_REQUIRE_BROWSER"),
    reason="no /usr/bin/chromium (Debian's chromium package); ./run.sh test installs it and requires it",
)


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
