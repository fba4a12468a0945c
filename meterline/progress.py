"""Progress lines for long-running commands, on stderr (rewritten in place on a terminal)."""

from __future__ import annotations

import sys
from collections.abc import Callable


def counter(verb: str) -> Callable[[int, int], None]:
    """`verb: done/total`."""

    def show(done: int, total: int) -> None:
        end = "" if sys.stderr.isatty() else "\n"
        print(f"\r  {verb}: {done:,}/{total:,}", end=end, file=sys.stderr)

    return show


def rate(verb: str, total: int) -> Callable[[int, float], None]:
    """`verb done/total (n/s)`."""

    def show(done: int, seconds: float) -> None:
        end = "" if sys.stderr.isatty() else "\n"
        print(f"\r  {verb} {done:,}/{total:,} ({done / seconds:,.0f}/s)", end=end, file=sys.stderr)

    return show
