"""What every benchmark shares: the local stack it runs on (a broker and the Stripe fake of its
own, under a fresh temporary directory, stopped however the benchmark ends) and how it reports
(the machine, the table, the same rows as JSON)."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from meterline import devstack
from meterline.config import load_config
from meterline.core.config import Config
from meterline.table import render

ROOT = Path(__file__).resolve().parent.parent


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


@contextmanager
def apache_kafka_stack(name: str, env: Mapping[str, str] | None = None) -> Iterator[Stack]:
    """The default configuration on one Apache Kafka 4.x node (KRaft) started from its jars, the
    tests' launcher (tests/support/apache_kafka.py), under a fresh temporary directory."""
    sys.path.insert(0, str(ROOT))
    from tests.support import apache_kafka

    if reason := apache_kafka.missing():
        raise SystemExit(f"cannot start Apache Kafka: {reason}")
    state = Path(tempfile.mkdtemp(prefix=f"meterline-bench-{name}-"))
    with apache_kafka.cluster(state / "kafka") as cluster:
        environment = {"KAFKA_BOOTSTRAP": cluster.bootstrap, "METERLINE__DEV__STATE_DIR": str(state)}
        config = load_config(None, {**environment, **(env or {})})
        process = cluster.nodes[0].process
        kafka = devstack.ServiceState("kafka", cluster.bootstrap, process.pid if process else None)
        yield Stack(config, cluster.bootstrap, state, {"kafka": kafka})


def broker_stack(
    broker: str, name: str, env: Mapping[str, str] | None = None
) -> AbstractContextManager[Stack]:
    """`local_stack` (tansu) or `apache_kafka_stack`, by name."""
    stacks = {"tansu": local_stack, "apache-kafka": apache_kafka_stack}
    if broker not in stacks:
        raise SystemExit(f"--brokers: {broker!r} is not one of {', '.join(stacks)}")
    return stacks[broker](name, env)


def machine() -> str:
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


def report(rows: list[dict[str, Any]]) -> None:
    print(machine())
    print(render(rows))
    print(json.dumps(rows))
