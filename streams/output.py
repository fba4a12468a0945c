"""Everything the stream worker writes, through one confluent-kafka producer: the state changelog,
aggregates, dead letters and ticks.

Why not Faust's producer: its buffer hands messages to aiokafka one at a time through the event
loop, and a worker writes about four messages per window (BENCHMARKS.md), so Faust's sends were
the worker's ceiling. librdkafka batches in C. Exactness needs one thing of it: everything sent
for a record is delivered before Faust commits that record's offset. `flush()` is therefore run
inside the producer flush Faust awaits before every commit (streams.app), and a delivery failure
stops the worker before anything commits.

The state of a source partition lives in the same partition of the changelog topic (keyed by
streams.state's store keys, `None` deletes), and in a local store rebuilt from it on assignment.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition

from meterline.errors import MeterlineError

log = logging.getLogger("meterline.stream")

_MARKER_KEY = b"__meterline_recovery_marker__"


class Output:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "queue.buffering.max.messages": 1_000_000,
                # Keyed messages (aggregates, dead letters) land where Kafka's Java client would put them.
                "partitioner": "murmur2_random",
            }
        )
        self._failure: str | None = None

    def send(self, topic: str, key: bytes | None, value: bytes | None, **kwargs: Any) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=self._delivered, **kwargs)
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


class LocalState(MutableMapping[bytes, bytes]):
    """One source partition's state entries, written through to the changelog partition."""

    def __init__(
        self, output: Output, topic: str, partition: int, data: MutableMapping[bytes, bytes]
    ) -> None:
        self._output, self._topic, self._partition, self._data = output, topic, partition, data

    def __getitem__(self, key: bytes) -> bytes:
        return self._data[key]

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._data[key] = value
        self._output.send(self._topic, key, value, partition=self._partition)

    def __delitem__(self, key: bytes) -> None:
        del self._data[key]
        self._output.send(self._topic, key, None, partition=self._partition)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def open_local_store(store: str, data_dir: Path, partition: int) -> MutableMapping[bytes, bytes]:
    """An empty local store: a dict (memory://) or a RocksDB directory (rocksdb://), which the
    changelog then fills. Rebuilt on every assignment: the changelog is the truth."""
    if store == "memory://":
        return {}
    import shutil

    from rocksdict import Rdict

    path = data_dir / f"state-{partition}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return RocksEntries(Rdict(str(path)))


class RocksEntries(MutableMapping[bytes, bytes]):
    """rocksdict's Rdict as a mapping: it has [], del and keys(), but iterating it is not by key."""

    def __init__(self, db: Any) -> None:
        self._db = db

    def __getitem__(self, key: bytes) -> bytes:
        value: bytes = self._db[key]
        return value

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._db[key] = value

    def __delitem__(self, key: bytes) -> None:
        del self._db[key]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._db.keys())

    def __len__(self) -> int:
        return sum(1 for _ in self)


def recover(
    output: Output, topic: str, partition: int, into: MutableMapping[bytes, bytes], timeout: float = 600
) -> int:
    """Fill `into` from the changelog partition; returns the number of records read. The end is
    a marker this call writes first, not the high watermark, which tansu can report short."""
    marker = uuid.uuid4().hex.encode()
    output.send(topic, _MARKER_KEY, marker, partition=partition)
    output.flush()
    consumer = Consumer(
        {
            "bootstrap.servers": output.bootstrap,
            "group.id": f"recovery-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
    read = 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for message in consumer.consume(10_000, timeout=1.0):
                if message.error():
                    continue
                read += 1
                key = message.key()
                if key == _MARKER_KEY:
                    if message.value() == marker:
                        return read
                    continue
                assert key is not None
                value = message.value()
                if value is None:
                    into.pop(key, None)  # a deleted window
                else:
                    into[key] = value
    finally:
        consumer.close()
    raise RecoveryError(f"{topic}[{partition}]: the recovery marker did not come back within {timeout:.0f} s")


class RecoveryError(MeterlineError):
    pass
