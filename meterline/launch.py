"""The `meterline` console script. Its commands need the `pipeline` extra, which an install of the
producer SDK alone (`pip install meterline`) does without: that is said in one line, not a traceback."""

from __future__ import annotations

import sys

_OWN_PACKAGES = {"core", "meterline", "schemas", "streams", "sinks", "reconciler"}


def main() -> int:
    try:
        from meterline.cli import main as run_command
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing.split(".")[0] in _OWN_PACKAGES:
            raise
        print(
            f"meterline's commands need the pipeline's dependencies ({missing} is not installed): "
            "pip install 'meterline[pipeline]'",
            file=sys.stderr,
        )
        return 1
    return run_command()
