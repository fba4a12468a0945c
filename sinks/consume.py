"""The consume loop both sinks run (`meterline sink clickhouse`, `meterline sink stripe`).

What is the same for each is here: the subscription with the sink's assignment callbacks, a
consumer error raised and end-of-partition events skipped, the records counted, the lag gauge, a
progress line every 10 s, and the consumer closed however the run ends. What a sink does with the
records, and when it writes and commits, is its own (`Batches`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from meterline.core import metrics

PROGRESS_EVERY_S = 10.0


class Batches(Protocol):
    """A sink, as the loop drives it."""

    name: str
    """Its label in metrics and logs."""
    topics: list[str]
    most: int
    """Records asked for per poll."""
    wait_s: float
    """How long a poll waits for the first record."""

    def assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None: ...

    def revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None: ...

    def take(self, messages: list[Message]) -> None:
        """Each poll's records, and an empty list after a quiet poll: a sink also acts on time."""

    def finish(self) -> None:
        """At a requested stop: what the sink holds is written and committed."""

    def close(self) -> None:
        """However the run ended, after the consumer closed: the sink's own clients."""

    def progress(self) -> str: ...

    def oldest_pending_seconds(self) -> float:
        """How long the oldest record consumed and not yet committed has waited."""


def usable(messages: list[Message]) -> list[Message]:
    """The records among `messages`: end-of-partition events dropped, any other error raised."""
    records = []
    for message in messages:
        error = message.error()
        if error is None:
            records.append(message)
        elif error.code() != KafkaError._PARTITION_EOF:
            raise KafkaException(error)
    return records


def run(consumer: Consumer, sink: Batches, should_stop: Callable[[], bool]) -> None:
    log = logging.getLogger(f"meterline.sink.{sink.name}")  # the sink's own logger
    metrics.SINK_LAG_SECONDS.labels(sink.name).set_function(sink.oldest_pending_seconds)
    consumer.subscribe(sink.topics, on_assign=sink.assigned, on_revoke=sink.revoked, on_lost=sink.revoked)
    last_log = time.monotonic()
    try:
        while not should_stop():
            messages = usable(consumer.consume(sink.most, timeout=sink.wait_s))
            metrics.SINK_RECORDS.labels(sink.name).inc(len(messages))
            sink.take(messages)
            if time.monotonic() - last_log >= PROGRESS_EVERY_S:
                last_log = time.monotonic()
                log.info("progress %s", sink.progress())
        sink.finish()
    finally:
        consumer.close()
        sink.close()
    log.info("stopped %s", sink.progress())
