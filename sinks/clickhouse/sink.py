"""`meterline sink clickhouse`: usage.aggregates (and dead letters, and accepted raw events where
enabled) into ClickHouse, each row exactly once after FINAL.

Per consumed partition the sink keeps a buffer of rows and the offsets they came from. A buffer is
flushed when it holds [clickhouse] batch_rows rows or its oldest row has waited batch_seconds, and
on shutdown. Flushing a partition's buffer, in this order:
1. Derive the insert's deduplication token from where the rows came from: group, topic,
   partition and offset range. A retried insert of the same range carries the same token, and
   ClickHouse drops it itself.
2. Insert the rows with that token. While ClickHouse is unavailable (refused, timed out, the chdb
   directory held by another process), retry with backoff, reconnecting each time; meanwhile the
   consumer is paused and polled, so the group keeps this member and its partitions.
3. Commit the offset after the range, synchronously: only rows that are in ClickHouse are ever
   committed past.
4. Empty the buffer.
A crash between 2 and 3 re-reads the range; the rows come again, maybe in other batches (so other
tokens), and collapse under FINAL: every table is a ReplacingMergeTree keyed by the rows' identity.
A revoked partition's buffer is dropped unflushed: its new owner reads it again from the commit.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from core import metrics
from core.config import Config
from core.kafka import Assignment, Kafka, group_consumer
from schemas.serde import AvroSerde
from sinks.clickhouse.client import ClickHouseError, ClickHouseUnavailableError, connect, unavailable
from sinks.clickhouse.rows import Route, Row, routes

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

log = logging.getLogger("meterline.sink.clickhouse")

_BACKOFF_FIRST, _BACKOFF_MAX = 0.2, 10.0


@dataclass
class Buffer:
    route: Route
    rows: list[Row] = field(default_factory=list)
    first_offset: int = -1
    last_offset: int = -1
    since: float = 0.0
    """time.monotonic() of its first record."""

    def add(self, offset: int, rows: list[Row]) -> None:
        if self.first_offset < 0:
            self.first_offset, self.since = offset, time.monotonic()
        self.last_offset = offset
        self.rows.extend(rows)


@dataclass
class SinkStats:
    records: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    inserts: int = 0
    retries: int = 0


@dataclass(frozen=True)
class Flushed:
    """What one flush put into ClickHouse: for progress and the latency benchmark."""

    table: str
    partition: int
    rows: int
    record_times_ms: list[int]
    visible_at: float
    """time.time() when the insert returned."""


class ClickHouseSink:
    def __init__(
        self,
        config: Config,
        bootstrap: Kafka,
        dsn: str | None = None,
        group_id: str = "meterline-sink-clickhouse",
        on_flushed: Callable[[Flushed], None] | None = None,
    ) -> None:
        self.config = config
        self.dsn = dsn or config.clickhouse.dsn
        self.group_id = group_id
        self.routes = routes(config, AvroSerde.from_registry_url(config.kafka.schema_registry_url))
        self.on_flushed = on_flushed
        self.stats = SinkStats()
        self._buffers: dict[tuple[str, int], Buffer] = {}
        self._record_times: dict[tuple[str, int], list[int]] = {}
        self._client: Client | None = None
        self._consumer = group_consumer(bootstrap, group_id)
        self._assignment = Assignment("clickhouse")
        metrics.SINK_LAG_SECONDS.labels("clickhouse").set_function(self.oldest_pending_seconds)

    def oldest_pending_seconds(self) -> float:
        """How long the oldest buffered record has waited for its insert and commit."""
        since = min((b.since for b in list(self._buffers.values())), default=None)
        return 0.0 if since is None else time.monotonic() - since

    def run(self, should_stop: Callable[[], bool]) -> None:
        self._consumer.subscribe(
            list(self.routes),
            on_assign=self._assignment.assigned,
            on_revoke=self._revoked,
            on_lost=self._revoked,
        )
        last_log = time.monotonic()
        try:
            while not should_stop():
                messages = self._consumer.consume(1000, timeout=0.2)
                for message in messages:
                    self._take(message)
                metrics.SINK_RECORDS.labels("clickhouse").inc(len(messages))
                self._flush_due()
                if time.monotonic() - last_log >= 10:
                    last_log = time.monotonic()
                    log.info("progress %s", vars(self.stats))
            self._flush_all()
        finally:
            self._consumer.close()
            if self._client is not None:
                self._client.close()
        log.info("stopped %s", vars(self.stats))

    # -- consuming -------------------------------------------------------------------------------

    def _take(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                return
            raise KafkaException(error)
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        buffer = self._buffers.get((topic, partition))
        if buffer is None:  # not setdefault: a Buffer built per record cost 7% of the sink's time
            buffer = self._buffers[(topic, partition)] = Buffer(self.routes[topic])
        buffer.add(offset, buffer.route.rows(message))
        if self.on_flushed is not None:
            self._record_times.setdefault((topic, partition), []).append(message.timestamp()[1])
        self.stats.records += 1

    def _flush_due(self) -> None:
        now = time.monotonic()
        limit_rows, limit_age = self.config.clickhouse.batch_rows, self.config.clickhouse.batch_seconds
        for key, buffer in list(self._buffers.items()):
            if len(buffer.rows) >= limit_rows or now - buffer.since >= limit_age:
                self._flush(key)

    def _flush_all(self) -> None:
        for key in list(self._buffers):
            self._flush(key)

    def _flush(self, key: tuple[str, int]) -> None:
        buffer = self._buffers.get(key)
        if buffer is None:
            return
        topic, partition = key
        started = time.monotonic()
        # 1. The token: where the rows came from, nothing else.
        token = f"{self.group_id}/{topic}/{partition}/{buffer.first_offset}-{buffer.last_offset}"
        # 2. Insert, retrying while ClickHouse is unavailable.
        if buffer.rows and not self._insert(key, buffer, token):
            return  # revoked while retrying: dropped, its new owner reads it again
        # 3. Commit past the range.
        try:
            self._consumer.commit(
                offsets=[TopicPartition(topic, partition, buffer.last_offset + 1)], asynchronous=False
            )
        except KafkaException as exc:
            # Not ours any more (a rebalance): the new owner re-reads from the last commit, and
            # the rows it inserts again collapse under FINAL.
            log.warning(
                "%s[%d]: commit after the insert failed (%s); the range will be read again",
                topic,
                partition,
                exc,
            )
        # 4. Empty the buffer (unless a rebalance replaced it while step 2 retried).
        if self._buffers.get(key) is buffer:
            del self._buffers[key]
        times = self._record_times.pop(key, [])
        metrics.SINK_FLUSH_SECONDS.labels("clickhouse").observe(time.monotonic() - started)
        if self.on_flushed is not None and buffer.rows:
            self.on_flushed(Flushed(buffer.route.table, partition, len(buffer.rows), times, time.time()))

    def _insert(self, key: tuple[str, int], buffer: Buffer, token: str) -> bool:
        """Insert until it succeeds (True) or the partition is revoked meanwhile (False)."""
        delay = _BACKOFF_FIRST
        paused: list[TopicPartition] = []
        try:
            while True:
                try:
                    self._insert_once(buffer, token)
                    return True
                except ClickHouseUnavailableError as exc:
                    self.stats.retries += 1
                    metrics.SINK_RETRIES.labels("clickhouse").inc()
                    self._client = None
                    wait = delay * random.uniform(0.5, 1.0)
                    log.warning("%s; retrying the insert of %s in %.1f s", exc, token, wait)
                    if not paused:
                        paused = self._consumer.assignment()
                        self._consumer.pause(paused)
                    deadline = time.monotonic() + wait
                    while time.monotonic() < deadline:
                        # Paused: returns nothing, but keeps this member in the group.
                        for message in self._consumer.consume(100, timeout=0.1):
                            self._take(message)
                    if self._buffers.get(key) is not buffer:
                        return False
                    delay = min(delay * 2, _BACKOFF_MAX)
        finally:
            if paused:
                self._consumer.resume([tp for tp in paused if tp in self._consumer.assignment()])

    def _insert_once(self, buffer: Buffer, token: str) -> None:
        if self._client is None:
            self._client = connect(self.config, self.dsn)
        try:
            self._client.insert(
                buffer.route.table,
                buffer.rows,
                column_names=list(buffer.route.columns),
                settings={"insert_deduplication_token": token},
            )
        except Exception as exc:
            if _is_unavailable(exc):
                raise unavailable(self.dsn, exc) from exc
            raise ClickHouseError(f"insert into {buffer.route.table} failed: {exc}") from exc
        self.stats.inserts += 1
        self.stats.rows[buffer.route.table] = self.stats.rows.get(buffer.route.table, 0) + len(buffer.rows)
        metrics.CLICKHOUSE_ROWS.labels(buffer.route.table).inc(len(buffer.rows))

    def _revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assignment.revoked(_consumer, partitions)
        for tp in partitions:
            if self._buffers.pop((tp.topic, tp.partition), None) is not None:
                log.info(
                    "%s[%d] revoked: its unflushed rows are left to its new owner", tp.topic, tp.partition
                )
            self._record_times.pop((tp.topic, tp.partition), None)


def _is_unavailable(exc: BaseException) -> bool:
    """Connection trouble, as opposed to an insert ClickHouse refuses (a missing table, bad data)."""
    from clickhouse_connect.driver.exceptions import OperationalError

    return isinstance(exc, OperationalError | ConnectionError | TimeoutError) or "Cannot lock file" in str(
        exc
    )
