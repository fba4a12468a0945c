"""What every benchmark shares: the local stack it runs on (a broker and the Stripe fake of its
own, under a fresh temporary directory, stopped however the benchmark ends) and how it reports
(the machine, the table, the same rows as JSON)."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from meterline import devstack
from meterline.config import load_config
from meterline.core.config import Config
from meterline.table import render


class Stack(NamedTuple):
    """A NamedTuple, so that `with local_stack(...) as (config, bootstrap, state, services)` reads."""

    config: Config
    bootstrap: str
    state: Path
    services: Mapping[str, devstack.ServiceState]


@contextmanager
def local_stack(name: str, env: Mapping[str, str] | None = None) -> Iterator[Stack]:
    """The default configuration (with `env` over it) pointed at a new local stack, resolved as the
    commands resolve it: the components find the Stripe fake and ClickHouse in it."""
    state = Path(tempfile.mkdtemp(prefix=f"meterline-bench-{name}-"))
    config = load_config(None, {"METERLINE__DEV__STATE_DIR": str(state), **(env or {})})
    try:
        services = devstack.up(config, log=lambda _line: None)
        yield Stack(devstack.resolve(config), services["kafka"].address, state, services)
    finally:
        devstack.down(config, log=lambda _line: None)


def machine() -> str:
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


def report(rows: list[dict[str, Any]]) -> None:
    print(machine())
    print(render(rows))
    print(json.dumps(rows))
