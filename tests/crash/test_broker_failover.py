"""A broker SIGKILLed mid-run on a three-broker Apache Kafka: the leader of a `usage.events`
partition, then the leader of a `usage.aggregates` partition, each restarted later, while the SDK
and the HTTP ingest produce and the stream and both sinks (one `meterline run`) are busy. Every
window is exact in ClickHouse and every total in the Stripe fake, and no role is restarted by hand.

What it relies on (deploy/README.md, "Broker settings"): replication factor 3 with
min.insync.replicas 2 (`topics ensure` creates them so and checks them), producers with acks=all
(meterline's are idempotent, which implies it), and no unclean leader election."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meterline.config import load_config
from meterline.core.config import Config
from meterline.core.kafka import admin
from meterline.schemas.ingest import PATH, key_digest
from meterline.sinks.stripe.fake import FakeStripe
from meterline.topics import ensure, isolated_topics, topic_specs
from meterline.workload import Expected, customer_ids
from tests.support import apache_kafka as kraft
from tests.support.ingest import KEY, cloud_event, post
from tests.support.pipeline import PacedProducer, RunProcess, Workers, workload
from tests.support.run import run_environment, wait_until_settled
from tests.support.stripe import set_up_stripe

INGEST_CUSTOMER, BATCHES, PER_BATCH = "cust-ingest", 80, 25


@pytest.fixture
def three_brokers(tmp_path: Path) -> Iterator[kraft.Cluster]:
    kraft.require()
    with kraft.cluster(tmp_path / "kafka", size=3) as running:
        yield running


def replicated_config(cluster: kraft.Cluster, tmp_path: Path) -> Config:
    """Topics made as `topics ensure` makes them in production: 3 replicas, 2 in sync."""
    base = load_config(
        None, {"METERLINE__KAFKA__REPLICATION_FACTOR": "3", "METERLINE__DEV__STATE_DIR": str(tmp_path)}
    )
    return isolated_topics(base, cluster.bootstrap, "failover")


class IngestService:
    """A product service posting CloudEvents batches to the run's ingest, each sent again until
    answered 200; all of one customer, in one window."""

    def __init__(self, url: str, window_start_ms: int) -> None:
        self.url = url
        self.time = datetime.fromtimestamp(window_start_ms / 1000 + 7, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.retries = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._send_all, daemon=True)

    def events(self) -> list[dict]:  # type: ignore[type-arg]
        return [
            {**cloud_event(n), "subject": INGEST_CUSTOMER, "time": self.time}
            for n in range(1, BATCHES * PER_BATCH + 1)
        ]

    def _send_all(self) -> None:
        try:
            events = self.events()
            for b in range(BATCHES):
                while post(self.url, events[b * PER_BATCH : (b + 1) * PER_BATCH])[0] != 200:
                    self.retries += 1
                    time.sleep(0.5)
                time.sleep(0.5)
        except BaseException as exc:  # surfaced by the test
            self.error = exc


def leader_of(cluster: kraft.Cluster, topic: str, partition: int = 0) -> int:
    metadata = admin(cluster.bootstrap).list_topics(topic, timeout=10)
    return int(metadata.topics[topic].partitions[partition].leader)


def elected_instead(cluster: kraft.Cluster, topic: str, killed: int, timeout: float = 30) -> int:
    """The partition's next leader, once the controller has elected it."""
    deadline = time.monotonic() + timeout
    while (leader := leader_of(cluster, topic)) in (killed, -1):
        assert time.monotonic() < deadline, f"no leader of {topic} elected in place of broker {killed}"
        time.sleep(0.2)
    return leader


@pytest.mark.integration
def wait_in_sync(cluster: kraft.Cluster, topics: list[str], replicas: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        metadata = admin(cluster.bootstrap).list_topics(timeout=10)
        behind = [
            (topic, p.id)
            for topic in topics
            for p in metadata.topics[topic].partitions.values()
            if len(p.isrs) < replicas
        ]
        if not behind:
            return
        assert time.monotonic() < deadline, f"not back in sync within {timeout:.0f} s: {behind[:5]}"
        time.sleep(0.5)


def test_a_leader_killed_mid_run_changes_no_total(
    three_brokers: kraft.Cluster, stripe_fake: tuple[FakeStripe, str], tmp_path: Path
) -> None:
    cluster = three_brokers
    config = replicated_config(cluster, tmp_path)
    # Apache Kafka reports each topic's effective settings: replicated, two in sync, no unclean election.
    checked = ensure(cluster.bootstrap, [s for s in topic_specs(config) if s.name in config.topics.all()])
    assert {t.action for t in checked.topics} == {"exists"}
    assert [f for t in checked.topics for f in t.findings] == []

    _, base = stripe_fake
    spec = workload(events=20_000, seed=83, customers=6, hours=2)
    meters = set_up_stripe(config, base, [*customer_ids(spec), INGEST_CUSTOMER])
    env = {
        **run_environment(Workers(config, tmp_path), base),
        "METERLINE__KAFKA__REPLICATION_FACTOR": "3",
        "METERLINE__INGEST__KEYS__BILLING_SVC": key_digest(KEY),
    }
    run = RunProcess(env, tmp_path)
    run.start()
    try:
        url = run.url(timeout=120)
        window = spec.start_ms // config.windows.size_ms * config.windows.size_ms + config.windows.size_ms
        service = IngestService(f"{url}{PATH}", window)
        producer = PacedProducer(config, spec, seconds=60)
        producer.start()
        service.thread.start()

        killed = []
        for topic in (config.topics.events, config.topics.aggregates):
            time.sleep(4)
            leader = leader_of(cluster, topic)
            assert producer.is_alive(), "the kill must land while the SDK produces"
            cluster.kill(leader)
            killed.append((topic, leader, elected_instead(cluster, topic, leader)))
            time.sleep(6)  # writes go on to the two in sync while it is down
            cluster.restart(leader)
            # Back in every partition's in-sync set before the next kill: two brokers down at once
            # would stop writes (min.insync.replicas 2), which is not what is tested here.
            wait_in_sync(cluster, config.topics.all(), 3)

        producer.finish()
        service.thread.join(timeout=300)
        assert not service.thread.is_alive() and service.error is None, service.error
        expected = producer.expected
        ingested = Expected(config.windows.size_ms)
        quantities = [e["data"]["quantity"] for e in service.events()]
        ingested.totals[(INGEST_CUSTOMER, "api_calls", window)] = [sum(quantities), len(quantities)]
        expected.add(ingested)
        wait_until_settled(run, base, meters, spec, expected, timeout=300)
        assert run.starts == 1  # no role restarted by hand
        assert run.process is not None and run.process.poll() is None, run.logs()
    finally:
        run.kill_if_running()
    assert [(topic, old != new) for topic, old, new in killed] == [
        (config.topics.events, True),
        (config.topics.aggregates, True),
    ]
