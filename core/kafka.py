"""Small Kafka admin helpers shared by the dev stack, the CLI and the tests."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic  # type: ignore[attr-defined]

from meterline.core import metrics
from meterline.core.config import KafkaConfig, Secret
from meterline.core.errors import MeterlineError

log = logging.getLogger("meterline.kafka")
_LIBRDKAFKA = logging.getLogger("meterline.librdkafka")


@dataclass(frozen=True)
class Brokers:
    """Where Kafka is and how to reach it: every confluent-kafka client gets `properties`
    (security.protocol, sasl.*, ssl.*) beside bootstrap.servers. Secrets stay Secret until a client
    is configured, so that printing a Brokers shows none."""

    bootstrap: str
    properties: Mapping[str, str | Secret] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.bootstrap

    def redacted(self) -> dict[str, str]:
        """The properties as they may be printed: each secret as ***."""
        shown = {k: "***" if isinstance(v, Secret) else v for k, v in self.properties.items()}
        return {"bootstrap.servers": self.bootstrap, **shown}


Kafka = str | Brokers
"""A broker address alone means PLAINTEXT (the local stack, tests); Brokers carries credentials."""


def brokers(kafka: Kafka) -> Brokers:
    return kafka if isinstance(kafka, Brokers) else Brokers(kafka)


def security_properties(config: KafkaConfig) -> dict[str, str | Secret]:
    """librdkafka's properties for the configured security (its CONFIGURATION.md names them)."""
    found: dict[str, str | Secret] = {"security.protocol": config.security_protocol}
    if config.security_protocol.startswith("SASL_"):
        found.update(
            {
                "sasl.mechanism": config.sasl_mechanism,
                "sasl.username": config.sasl_username,
                "sasl.password": config.sasl_password,
            }
        )
    for key, value in (
        ("ssl.ca.location", config.ssl_ca_location),
        ("ssl.certificate.location", config.ssl_certificate_location),
        ("ssl.key.location", config.ssl_key_location),
        ("ssl.key.password", config.ssl_key_password),
    ):
        if value:
            found[key] = value
    return found


def client_properties(kafka: Kafka) -> dict[str, object]:
    """The brokers' security properties with their secrets revealed: for a client being configured."""
    return {k: v.reveal() if isinstance(v, Secret) else v for k, v in brokers(kafka).properties.items()}


def settings(kafka: Kafka, extra: Mapping[str, object] | None = None) -> dict[str, object]:
    """A confluent-kafka client's settings: the brokers, their security, and librdkafka's own log
    lines (disconnects, retries) through Python logging, so they take the process's --log-format."""
    security = client_properties(kafka)
    return {"bootstrap.servers": brokers(kafka).bootstrap, **security, "logger": _LIBRDKAFKA, **(extra or {})}


def idempotent_producer(kafka: Kafka, extra: Mapping[str, object] | None = None) -> Producer:
    """A producer whose retries can neither duplicate nor reorder a write (idempotence, acks=all):
    every producer of meterline is one. `extra` tunes batching and partitioning, never that."""
    return Producer(settings(kafka, {**(extra or {}), "enable.idempotence": True, "acks": "all"}))


class KafkaUnavailableError(MeterlineError):
    pass


def admin(kafka: Kafka, **extra: str | int) -> AdminClient:
    # The stubs omit "logger" (a logging.Logger), which librdkafka takes like any client.
    return AdminClient(settings(kafka, {"socket.timeout.ms": 5000, **extra}))  # type: ignore[arg-type]


# `FAIL [rdkafka#producer-1] [thrd:...]: ` (a log line's) and `sasl_ssl://host:port/bootstrap: `
_LIBRDKAFKA_PREFIX = re.compile(r"^(?:\w+ \[rdkafka[^\]]*\] \[thrd:[^\]]*\]: )?(?:\S+/\S+: )?")


class _Heard(logging.Handler):
    """What librdkafka said while a client tried to connect: its log lines and its errors."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        _LIBRDKAFKA.handle(record)

    def error(self, error: KafkaError) -> None:
        self.lines.append(str(error.str()))


def diagnose(heard: Sequence[str], kafka: Kafka) -> str | None:
    """The setting a failed connection points at, from what librdkafka said, or None when it says
    nothing conclusive (a broker not up yet is waited for, not diagnosed). Pure."""
    properties = brokers(kafka).properties
    protocol = str(properties.get("security.protocol", "PLAINTEXT"))

    def said(*parts: str) -> str | None:
        """The first line saying all of `parts`, without its log and broker prefixes."""
        line = next((line for line in heard if all(part in line for part in parts)), None)
        return _LIBRDKAFKA_PREFIX.sub("", line) if line else None

    if line := said("mechanism handshake failed"):
        return f"the broker does not offer kafka.sasl_mechanism = {properties.get('sasl.mechanism')} ({line})"
    if line := said("SASL authentication error"):
        return (
            f"the broker refused the credentials of user {properties.get('sasl.username')!r}: "
            f"check kafka.sasl_username and kafka.sasl_password ({line})"
        )
    if said("certificate verify failed"):
        ca = properties.get("ssl.ca.location") or "the system's CA certificates"
        return (
            "the broker's TLS certificate is not signed by a CA of kafka.ssl_ca_location "
            f"({ca}), or does not name the address connected to"
        )
    if said("connecting to a PLAINTEXT broker listener"):
        return f"kafka.security_protocol is {protocol}, but the broker's listener speaks PLAINTEXT"
    if sum("Disconnected" in line and "APIVERSION_QUERY" in line for line in heard) >= 2:
        return (
            f"the broker closed every connection at its first request: its listener does not speak "
            f"kafka.security_protocol = {protocol} (a TLS or SASL listener?)"
        )
    return None


def cluster_metadata(kafka: Kafka, topic: str | None = None, timeout: float = 15) -> ClusterMetadata:
    """The cluster's metadata (of `topic` alone, if given). Where librdkafka says why it cannot
    connect (credentials refused, a certificate not trusted, a listener of another protocol), the
    KafkaUnavailableError names the setting at once instead of after `timeout`; a broker that does
    not answer yet is waited for."""
    heard = _Heard()
    logger = logging.Logger("meterline.librdkafka")
    logger.addHandler(heard)
    probe = {"socket.timeout.ms": 5000, "logger": logger, "error_cb": heard.error}
    client = AdminClient(settings(kafka, probe))  # type: ignore[arg-type]  # a logger, as in admin()
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.list_topics(topic, timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        except KafkaException as exc:
            client.poll(0)  # serves error_cb
            why = diagnose(heard.lines, kafka)
            if why:
                raise KafkaUnavailableError(f"Kafka at {kafka} refused the connection: {why}") from exc
            if time.monotonic() >= deadline:
                last = heard.lines[-1] if heard.lines else exc.args[0].str()
                raise KafkaUnavailableError(
                    f"Kafka at {kafka} did not answer within {timeout:.0f} s: {last}"
                ) from exc


def broker_answers(bootstrap: Kafka, timeout: float = 2.0) -> bool:
    """True when a broker at `bootstrap` answers a metadata request."""
    try:
        # Quiet: while a broker starts, refused connections are expected, not worth a log line.
        metadata = admin(bootstrap, log_level=0).list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(metadata.brokers)


@dataclass(frozen=True)
class TopicResult:
    name: str
    partitions: int
    created: bool


def ensure_topics(
    bootstrap: Kafka, names: Iterable[str], partitions: int, replication_factor: int = 1, timeout: float = 30
) -> list[TopicResult]:
    """Create the topics that do not exist yet; returns each topic's partition count. Idempotent."""
    client = admin(bootstrap)
    names = list(names)
    futures = client.create_topics(
        [NewTopic(name, partitions, replication_factor) for name in names], request_timeout=timeout
    )
    created: dict[str, bool] = {}
    for name, future in futures.items():
        try:
            future.result()
            created[name] = True
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise KafkaUnavailableError(f"cannot create topic {name!r}: {exc.args[0].str()}") from exc
            created[name] = False
    counts = wait_for_partitions(bootstrap, names, timeout)
    return [TopicResult(n, counts[n], created[n]) for n in names]


def wait_for_partitions(kafka: Kafka, names: list[str], timeout: float = 30) -> dict[str, int]:
    """Topic creation is asynchronous: wait until every topic has its partitions in the metadata."""
    client = admin(kafka)
    deadline = time.monotonic() + timeout
    while True:
        metadata = client.list_topics(timeout=timeout)
        counts = {n: len(metadata.topics[n].partitions) for n in names if n in metadata.topics}
        if all(counts.get(n) for n in names):
            return counts
        if time.monotonic() > deadline:
            missing = [n for n in names if not counts.get(n)]
            raise KafkaUnavailableError(f"topics {missing} did not appear within {timeout:.0f}s")
        time.sleep(0.1)


def partition_count(bootstrap: Kafka, topic: str, timeout: float = 15) -> int:
    metadata = cluster_metadata(bootstrap, topic, timeout)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise KafkaUnavailableError(f"topic {topic!r} is not usable (run `meterline dev up`?)")
    return len(found.partitions)


def group_consumer(bootstrap: Kafka, group_id: str, extra: Mapping[str, object] | None = None) -> Consumer:
    """A member of `group_id` that commits explicitly (offset store off, no auto commit), starting
    at the earliest offset when the group has none; `extra` settings over these. A group join waits
    half the session timeout on tansu (DESIGN §7), hence 6 s."""
    return Consumer(
        settings(
            bootstrap,
            {
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1000,
                **(extra or {}),
            },
        )
    )


def consumer_from_beginning(bootstrap: Kafka, topic: str, group_id: str) -> Consumer:
    """A consumer assigned every partition of `topic` from its first offset; it commits nothing."""
    consumer = Consumer(settings(bootstrap, {"group.id": group_id, "enable.auto.commit": False}))
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    return consumer


def take(consumer: Consumer, most: int, timeout: float) -> list[Message]:
    """Up to `most` of the messages the consumer has fetched, at once; when it has none, the first
    to arrive within `timeout`. consume(most, timeout) alone waits out its timeout unless `most`
    arrive: a reader of packed records (hundreds to a partition) waited most of its calls out."""
    return consumer.consume(most, timeout=0) or consumer.consume(1, timeout=timeout)


def at_end(consumer: Consumer) -> bool:
    """True when the consumer's position is at the high watermark of every assigned partition. Only
    a hint on tansu, whose watermark can lag a batch (DESIGN §7): callers also wait for quiet."""
    for tp in consumer.assignment():
        _, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
        position = consumer.position([tp])[0].offset
        if position < high and not (position < 0 and high == 0):
            return False
    return True


def read_ends(bootstrap: Kafka, topics: Iterable[str], quiet_s: float = 1.0) -> dict[tuple[str, int], int]:
    """The offset after the last record of every non-empty partition of `topics`, found by reading
    them to the end and waiting for quiet (never by the high watermark alone)."""
    ends: dict[tuple[str, int], int] = {}
    for topic in topics:
        consumer = consumer_from_beginning(bootstrap, topic, f"meterline-ends-{uuid.uuid4().hex[:8]}")
        quiet_since = time.monotonic()
        try:
            while True:
                messages = consumer.consume(10_000, timeout=0.2)
                for message in messages:
                    partition, offset = message.partition(), message.offset()
                    if not message.error() and partition is not None and offset is not None:
                        ends[(topic, partition)] = offset + 1
                if messages:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > quiet_s and at_end(consumer):
                    break
        finally:
            consumer.close()
    return ends


def committed_reaches(bootstrap: Kafka, group_id: str, ends: Mapping[tuple[str, int], int]) -> bool:
    """Whether `group_id` has committed at least `ends` (topic, partition -> offset) everywhere."""
    consumer = Consumer(settings(bootstrap, {"group.id": group_id, "enable.auto.commit": False}))
    try:
        committed = consumer.committed([TopicPartition(t, p) for t, p in ends], timeout=10)
    finally:
        consumer.close()
    return all(tp.offset >= ends[(tp.topic, tp.partition)] for tp in committed)


class Assignment:
    """The partitions a sink's consumer holds, logged on every change and exported as
    meterline_sink_partitions: a sink that holds none while its topics have data is stuck, and
    nothing else would show it (its lag is 0: it has nothing pending)."""

    def __init__(self, sink: str) -> None:
        self.sink = sink
        self.held: set[tuple[str, int]] = set()
        metrics.SINK_PARTITIONS.labels(sink).set(0)

    def assigned(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.held |= {(tp.topic, tp.partition) for tp in partitions}
        self._changed("assigned", partitions)

    def revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.held -= {(tp.topic, tp.partition) for tp in partitions}
        self._changed("revoked", partitions)

    def _changed(self, what: str, partitions: list[TopicPartition]) -> None:
        metrics.SINK_PARTITIONS.labels(self.sink).set(len(self.held))
        log.info(
            "sink %s: %s %s; holds %d partitions",
            self.sink,
            what,
            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing",
            len(self.held),
        )
