"""Everything the stream worker writes, through one confluent-kafka producer: the state changelog,
aggregates, dead letters and ticks.

Why not Faust's producer: its buffer hands messages to aiokafka one at a time through the event
loop, and a worker writes about four messages per window (BENCHMARKS.md), so Faust's sends were
the worker's ceiling. librdkafka batches in C. Exactness needs one thing of it: everything sent
for a record is delivered before Faust commits that record's offset. `flush()` is therefore run
inside the producer flush Faust awaits before every commit (streams.app), and a delivery failure
stops the worker before anything commits. The state stores it writes through are streams.stores.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from confluent_kafka import KafkaError, Message

from meterline.core.kafka import Kafka, idempotent_producer

log = logging.getLogger("meterline.stream")


class Output:
    def __init__(self, bootstrap: Kafka) -> None:
        self.bootstrap = bootstrap
        self._producer = idempotent_producer(
            bootstrap,
            {
                "linger.ms": 5,
                "queue.buffering.max.messages": 1_000_000,
                # A worker sends several messages per window: a Python callback for each delivered
                # one cost more than the send. Failures still come back, and stop the worker.
                "delivery.report.only.error": True,
                # One callback for every send, set once: passed with each send it cost 0.5 µs of
                # the 2.3 each send took (measured).
                "on_delivery": self._delivered,
                # Keyed messages (aggregates, dead letters) land where Kafka's Java client would put them.
                "partitioner": "murmur2_random",
            },
        )
        self._failure: str | None = None

    def send(self, topic: str, key: bytes | None, value: bytes | None, **kwargs: Any) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, **kwargs)
                return
            except BufferError:  # librdkafka's queue is full: let deliveries drain it
                self._producer.poll(0.05)

    def poll(self) -> None:
        self._producer.poll(0)

    def flush(self) -> None:
        """Block until everything sent so far is delivered; stop the worker if anything was not."""
        self._producer.flush()
        if self._failure is not None:
            # Nothing may commit past a record whose output is lost: exit before Faust commits;
            # the records are processed again on restart.
            log.critical("stopping: a write was not delivered: %s", self._failure)
            os._exit(71)

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is not None and self._failure is None:
            self._failure = f"{message.topic()}[{message.partition()}]: {error}"
