"""The stream worker's state stores: the state of a source partition lives in the same partition
of the changelog topic (keyed by streams.state's store keys, `None` deletes), and in a local store
rebuilt from it on assignment (`recover`): a dict (memory://) or RocksDB (rocksdb://), all of a
worker's RocksDB stores within one memory budget. Writes go through to the changelog by
streams.output's producer (`LocalState`).
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from meterline.core.errors import MeterlineError
from meterline.core.kafka import settings, take
from meterline.streams.output import Output
from meterline.streams.state import Entries

if TYPE_CHECKING:
    from rocksdict import Cache, WriteBufferManager

_MARKER_KEY = b"__meterline_recovery_marker__"


class LocalState:
    """One source partition's state entries (streams.state.Entries): a local store, written
    through to the partition's changelog partition."""

    def __init__(self, output: Output, topic: str, partition: int, local: Entries) -> None:
        self._output, self._topic, self._partition, self._local = output, topic, partition, local

    def get(self, key: bytes) -> bytes | None:
        return self._local.get(key)

    def items(self) -> Iterable[tuple[bytes, bytes]]:
        return self._local.items()

    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        for key, value in changes.items():
            self._output.send(self._topic, key, value, partition=self._partition)
        self._local.write(changes)


class MemoryStore:
    """memory://: the entries in a dict."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def items(self) -> Iterable[tuple[bytes, bytes]]:
        return self._data.items()

    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        for key, value in changes.items():
            if value is None:
                self._data.pop(key, None)
            else:
                self._data[key] = value


ROCKSDB_MEMTABLES_BYTES = 32 << 20
"""What the partition stores of a worker hold in RocksDB's memtables together before flushing to
their files. RocksDB's default is up to two memtables of 64 MiB per store, so a worker's memory
grew with its partitions, and within that bound with everything it wrote: a store flushes nothing
before 64 MiB, so 200,000 single-event messages (128k windows) stayed in memory whole."""

ROCKSDB_BLOCK_CACHE_BYTES = 32 << 20
"""The cache of blocks read back from the stores' files, shared: RocksDB's default is one per store."""


@functools.cache
def _rocksdb_budget() -> tuple[WriteBufferManager, Cache]:
    """The memtable budget and block cache every RocksDB store of this process shares."""
    from rocksdict import Cache, WriteBufferManager

    return WriteBufferManager(ROCKSDB_MEMTABLES_BYTES, False), Cache(ROCKSDB_BLOCK_CACHE_BYTES)


class RocksStore:
    """rocksdb://: the entries in a RocksDB directory (rocksdict), off the Python heap, within the
    process's RocksDB memory budget. Each write is one batch without RocksDB's write-ahead log: the
    store is rebuilt from the changelog on every assignment, so its own durability buys nothing."""

    def __init__(self, path: Path) -> None:
        from rocksdict import BlockBasedOptions, Options, Rdict, WriteOptions

        memtables, cache = _rocksdb_budget()
        tables = BlockBasedOptions()
        tables.set_block_cache(cache)
        db_options = Options(raw_mode=True)
        db_options.set_write_buffer_manager(memtables)
        db_options.set_block_based_table_factory(tables)
        self._db = Rdict(str(path), db_options)
        options = WriteOptions()
        options.disable_wal = True  # type: ignore[method-assign, assignment]  # a property; the stubs say method
        self._db.set_write_options(options)

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(key)
        return value

    def items(self) -> Iterable[tuple[bytes, bytes]]:
        return cast(Iterable[tuple[bytes, bytes]], self._db.items())  # raw mode: bytes keys and values

    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        for key, value in changes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        self._db.write(batch)


def open_local_store(store: str, data_dir: Path, partition: int) -> Entries:
    """An empty local store, which the changelog then fills: a dict (memory://) or a RocksDB
    directory (rocksdb://). Rebuilt on every assignment: the changelog is the truth."""
    if store == "memory://":
        return MemoryStore()
    path = data_dir / f"state-{partition}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return RocksStore(path)


def recover(output: Output, topic: str, partition: int, into: Entries, timeout: float = 600) -> int:
    """Fill `into` from the changelog partition; returns the number of records read. The end is
    a marker this call writes first, not the high watermark, which tansu can report short."""
    marker = uuid.uuid4().hex.encode()
    output.send(topic, _MARKER_KEY, marker, partition=partition)
    output.flush()
    consumer = Consumer(
        settings(output.bootstrap, {"group.id": f"recovery-{uuid.uuid4().hex}", "enable.auto.commit": False})
    )
    read = 0
    deadline = time.monotonic() + timeout
    try:
        # The partition's leader known before the assignment: otherwise librdkafka finds none for
        # the start offset's query and retries it on a timer, half a second later. Only a head
        # start: with the broker away, the loop below waits for it as before.
        with contextlib.suppress(KafkaException):
            consumer.list_topics(topic, timeout=10)
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        while time.monotonic() < deadline:
            changes: dict[bytes, bytes | None] = {}
            # Not waiting while messages are there: the worker, which recovers at a partition's
            # first record, stands still meanwhile (a new changelog holds just the marker).
            for message in take(consumer, 10_000, timeout=0.1):
                if message.error():
                    continue
                read += 1
                key = message.key()
                if key == _MARKER_KEY:
                    if message.value() == marker:
                        into.write(changes)
                        return read
                    continue
                assert key is not None
                changes[key] = message.value()  # None: a deleted window
            into.write(changes)
    finally:
        consumer.close()
    raise RecoveryError(f"{topic}[{partition}]: the recovery marker did not come back within {timeout:.0f} s")


class RecoveryError(MeterlineError):
    pass
