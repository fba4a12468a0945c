"""The producer SDK product services use to emit usage.

What it guarantees:
- an event is validated before it is accepted (InvalidEventError names the field and the value);
- the partition is Kafka's Java-client murmur2 of customer_id, so every producer agrees;
- events bound for one partition are packed into one UsageEventBatch message, bounded by count,
  bytes and linger time (DESIGN §3: one event per message caps a stream worker near 9k events/s);
- idempotence is always on (it is not a setting): broker retries never duplicate a message;
- every event of a message the broker did not take is reported: to `on_delivery` if given, else
  raised by `flush()`/`close()` as DeliveryFailedError. Nothing is swallowed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from meterline.schemas.delivery import DeliveryFailedError, DeliveryReport
from meterline.schemas.errors import BrokerUnreachableError, TopicNotFoundError
from meterline.schemas.partitioner import partition_for
from meterline.schemas.records import UsageEvent
from meterline.schemas.serde import AvroSerde
from meterline.schemas.validation import MeterRules, require_valid

# The header (at most 10 bytes), the array's block count (a varint, at most 10) and its end marker.
_BATCH_OVERHEAD = 21


@dataclass(frozen=True)
class PackingPolicy:
    """When a partition's pending batch is sent: whichever bound is reached first."""

    enabled: bool = True
    max_events: int = 1000
    max_bytes: int = 512 * 1024
    linger_ms: int = 50


@dataclass
class _PendingBatch:
    opened_at: float
    events: list[UsageEvent] = field(default_factory=list)
    items: list[bytes] = field(default_factory=list)
    size: int = _BATCH_OVERHEAD


METADATA_TIMEOUT_S = 15.0
"""How long the producer waits for the brokers' first answer (the topic's partitions) at start."""


class UsageProducer:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        meter_units: Mapping[str, str],
        *,
        registry_url: str = "",
        packing: PackingPolicy | None = None,
        on_delivery: Callable[[DeliveryReport], None] | None = None,
        kafka_config: Mapping[str, Any] | None = None,
        meter_rules: MeterRules | None = None,
    ) -> None:
        """What a service needs to emit: the brokers, the topic, its meters' units (what `produce`
        validates against) and the Schema Registry if one is used (empty: Avro single-object
        encoding, DESIGN §3). `on_delivery` runs on the thread that polls: the SDK's linger thread
        or the caller of flush(). `meter_rules` (MeterRules.of the meters as declared:
        core.dimensions): what some meters ask of their events beyond a unit, checked by `produce`
        too."""
        self.topic = topic
        self._meter_units = dict(meter_units)
        self._meter_rules = meter_rules or MeterRules()
        self._serde = AvroSerde.from_registry_url(registry_url)
        self._packing = packing or PackingPolicy()
        self._on_delivery = on_delivery
        self._bootstrap = bootstrap
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 5,
                **(kafka_config or {}),
                # What correctness depends on is not configurable.
                "enable.idempotence": True,
                "acks": "all",
            }
        )
        self._partitions = self._partition_count()
        self._partition_of: dict[str, int] = {}
        self._pending: dict[int, _PendingBatch] = {}
        self._failed: list[DeliveryReport] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.messages_sent = 0
        self.events_sent = 0
        self.events_delivered = 0
        self.events_failed = 0
        self._linger_thread = threading.Thread(target=self._linger_loop, name="meterline-linger", daemon=True)
        self._linger_thread.start()

    # -- the API ---------------------------------------------------------------------------------

    def produce(self, event: UsageEvent) -> None:
        """Validate `event` and queue it; raises InvalidEventError naming the field and value."""
        require_valid(event, self._meter_units, self._meter_rules)
        self._enqueue(event)

    def produce_unvalidated(self, event: UsageEvent) -> None:
        """Queue `event` without validation. For tools that produce invalid usage on purpose (the
        workload generator, DLQ drills); product services use produce()."""
        self._enqueue(event)

    def produce_raw(self, key: bytes, value: bytes) -> None:
        """Send pre-encoded bytes to the partition of `key`, unvalidated and unpacked."""
        self._send(partition_for(key, self._partitions), key, value, ())

    def flush(self, timeout: float | None = None) -> int:
        """Send every pending batch and wait for the broker; returns how many messages are still in
        flight after `timeout`. Raises DeliveryFailedError for what failed without an on_delivery."""
        with self._lock:
            for partition in list(self._pending):
                self._send_pending(partition)
        remaining: int = self._producer.flush(-1 if timeout is None else timeout)
        self._raise_failures()
        return remaining

    def close(self, timeout: float | None = None) -> None:
        """Flush, then stop the linger thread. Idempotent."""
        if self._closed.is_set():
            return
        try:
            self.flush(timeout)
        finally:
            self._closed.set()
            self._linger_thread.join()

    def __enter__(self) -> UsageProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def partitions(self) -> int:
        return self._partitions

    def partition_of(self, customer_id: str) -> int:
        partition = self._partition_of.get(customer_id)
        if partition is None:
            partition = partition_for(customer_id.encode(), self._partitions)
            self._partition_of[customer_id] = partition
        return partition

    # -- packing ---------------------------------------------------------------------------------

    def _enqueue(self, event: UsageEvent) -> None:
        partition = self.partition_of(event.customer_id)
        if not self._packing.enabled:
            self._send(partition, event.customer_id.encode(), self._serde.encode_event(event), (event,))
            return
        with self._lock:
            item = self._serde.batch_item(event)
            pending = self._pending.get(partition)
            if pending is not None and (
                len(pending.events) >= self._packing.max_events
                or pending.size + len(item) > self._packing.max_bytes
            ):
                self._send_pending(partition)
                pending = None
            if pending is None:
                pending = self._pending[partition] = _PendingBatch(time.monotonic())
            pending.events.append(event)
            pending.items.append(item)
            pending.size += len(item)

    def _send_pending(self, partition: int) -> None:
        """Caller holds the lock."""
        pending = self._pending.pop(partition)
        # Every customer in the batch hashes to this partition, so the first one is a valid key:
        # anything that re-partitions by key keeps the batch where it is.
        key = pending.events[0].customer_id.encode()
        self._send(partition, key, self._serde.encode_batch(pending.items), tuple(pending.events))

    def _linger_loop(self) -> None:
        interval = max(self._packing.linger_ms / 2000, 0.001)
        while not self._closed.wait(interval):
            deadline = time.monotonic() - self._packing.linger_ms / 1000
            with self._lock:
                for partition in [p for p, b in self._pending.items() if b.opened_at <= deadline]:
                    self._send_pending(partition)
            self._producer.poll(0)

    # -- sending and delivery ----------------------------------------------------------------------

    def _send(self, partition: int, key: bytes, value: bytes, events: tuple[UsageEvent, ...]) -> None:
        def delivered(error: KafkaError | None, message: Message) -> None:
            self._delivered(events, error, partition, message)

        while True:
            try:
                self._producer.produce(self.topic, value, key, partition=partition, on_delivery=delivered)
                break
            except BufferError:  # librdkafka's queue is full: serve callbacks until there is room
                self._producer.poll(0.05)
        self.messages_sent += 1
        self.events_sent += len(events)

    def _delivered(
        self, events: tuple[UsageEvent, ...], error: KafkaError | None, partition: int, message: Message
    ) -> None:
        report = DeliveryReport(events, error, partition, None if error else message.offset())
        if error is None:
            self.events_delivered += len(events)
        else:
            self.events_failed += len(events)
        if self._on_delivery is not None:
            self._on_delivery(report)
        elif error is not None:
            self._failed.append(report)

    def _raise_failures(self) -> None:
        if self._failed:
            failed, self._failed = self._failed, []
            raise DeliveryFailedError(failed)

    def _partition_count(self) -> int:
        try:
            metadata = self._producer.list_topics(self.topic, timeout=METADATA_TIMEOUT_S)
        except KafkaException as exc:
            # No answer at all is the brokers', not the topic's (the topic is not known either way).
            raise BrokerUnreachableError(
                f"no Kafka broker at {self._bootstrap} answered within {METADATA_TIMEOUT_S:g} s "
                f"({exc.args[0].str()}): is it up, is the address right, does its listener expect "
                "security (security.protocol, sasl.*, ssl.* in kafka_config)?"
            ) from exc
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            reason = topic.error if topic is not None else "not in the metadata"
            raise TopicNotFoundError(
                f"topic {self.topic!r} is not usable: {reason} (run `meterline dev up`?)"
            )
        return len(topic.partitions)
