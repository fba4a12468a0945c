"""`meterline sink clickhouse`: usage.aggregates (and dead letters, and accepted raw events where
enabled) into ClickHouse, each row exactly once after FINAL.

Per consumed partition the sink keeps a buffer of rows and the offsets they came from. A buffer is
flushed when it holds [clickhouse] batch_rows rows or its oldest row has waited batch_seconds, and
on shutdown. Flushing a partition's buffer, in this order:
1. Take the buffer out (the partition's next records start a new one) and derive the insert's
   deduplication token from where its rows came from: group, topic, partition and offset range. A
   retried insert of the same range carries the same token, and ClickHouse drops it itself.
2. Finish the flush before it (steps 4 and 5): one insert is in flight at a time, so flushes end
   in the order they began and a partition's commits only move forward.
3. Start the insert with that token on the insert thread, and go back to consuming: the next
   batch is read while ClickHouse writes this one (chdb and librdkafka release the GIL: +18% on
   a drain measured apart, BENCHMARKS.md; against a server across a network an insert is mostly
   waiting).
4. Finishing it: wait for the insert. If ClickHouse was unavailable (refused, timed out, the chdb
   directory held by another process), retry with backoff, reconnecting each time; meanwhile the
   consumer is paused and polled, so the group keeps this member and its partitions.
5. Commit the offset after the range, synchronously: only rows that are in ClickHouse are ever
   committed past.
A crash between 3 and 5 re-reads the range; the rows come again, maybe in other batches (so other
tokens), and collapse under FINAL: every table is a ReplacingMergeTree keyed by the rows' identity.
On a revoke the flush in flight is finished first (what is done is committed); the revoked
partitions' buffers are dropped unflushed: their new owner reads them again from the commit.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from meterline.core import metrics
from meterline.core.config import Config
from meterline.core.kafka import Assignment
from meterline.schemas.serde import AvroSerde
from meterline.sinks import consume
from meterline.sinks.clickhouse.client import ClickHouseError, ClickHouseUnavailableError, unavailable
from meterline.sinks.clickhouse.rows import Route, Row, routes

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

log = logging.getLogger("meterline.sink.clickhouse")

_BACKOFF_FIRST, _BACKOFF_MAX = 0.2, 10.0

CONSUMER_SETTINGS = {
    # librdkafka fetches ahead until this many records wait (100,000 by default; the bytes stay
    # bounded by queued.max.messages.kbytes, 64 MiB): a bare consumer of a backlog of aggregates
    # read ~240,000 records/s with the default and ~900,000 with this (BENCHMARKS.md).
    "queued.min.messages": 500_000,
}


@dataclass
class Buffer:
    route: Route
    rows: list[Row] = field(default_factory=list)
    first_offset: int = -1
    last_offset: int = -1
    since: float = 0.0
    """time.monotonic() of its first record."""

    def add(self, first_offset: int, last_offset: int, rows: Sequence[Row]) -> None:
        """The rows of the records from `first_offset` to `last_offset`."""
        if self.first_offset < 0:
            self.first_offset, self.since = first_offset, time.monotonic()
        self.last_offset = last_offset
        self.rows.extend(rows)


@dataclass
class SinkStats:
    records: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    inserts: int = 0
    retries: int = 0


@dataclass(frozen=True)
class InFlight:
    """A flush whose insert was started (step 3) and is not finished yet (steps 4 and 5)."""

    key: tuple[str, int]
    buffer: Buffer
    token: str
    record_times_ms: list[int]
    started: float
    """time.monotonic() when the flush began."""
    insert: Future[None] | None
    """None: the buffer had no rows, there is only the commit."""


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
    """Run by sinks.consume; the composition root (meterline.compose) builds its parts."""

    name = "clickhouse"
    most, wait_s = 1000, 0.2

    def __init__(
        self,
        config: Config,
        *,
        consumer: Consumer,
        connect: Callable[[], Client],
        dsn: str,
        serde: AvroSerde,
        group_id: str,
        on_flushed: Callable[[Flushed], None] | None = None,
    ) -> None:
        """`connect` makes a client, again after ClickHouse was unavailable; `dsn` names it in
        errors; `group_id` is the consumer's group, part of every insert's token."""
        self.config = config
        self.dsn = dsn
        self.group_id = group_id
        self.routes = routes(config, serde)
        self.topics = list(self.routes)
        self.on_flushed = on_flushed
        self.stats = SinkStats()
        self._connect = connect
        self._buffers: dict[tuple[str, int], Buffer] = {}
        self._record_times: dict[tuple[str, int], list[int]] = {}
        self._client: Client | None = None
        self._inserter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse-insert")
        self._in_flight: InFlight | None = None
        self._consumer = consumer
        self._assignment = Assignment(self.name)

    def oldest_pending_seconds(self) -> float:
        """How long the oldest buffered record has waited for its insert and commit."""
        flight = self._in_flight
        waiting = [b.since for b in list(self._buffers.values())] + ([flight.buffer.since] if flight else [])
        since = min(waiting, default=None)
        return 0.0 if since is None else time.monotonic() - since

    def run(self, should_stop: Callable[[], bool]) -> None:
        consume.run(self._consumer, self, should_stop)

    def take(self, messages: list[Message]) -> None:
        self._take(messages)
        self._finish_inserted()
        self._flush_due()

    def finish(self) -> None:
        self._flush_all()
        self._finish_in_flight()

    def close(self) -> None:
        self._inserter.shutdown(wait=True)  # the client is not closed under an insert
        if self._client is not None:
            self._client.close()

    def progress(self) -> str:
        return str(vars(self.stats))

    def assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assignment.assigned(consumer, partitions)

    # -- consuming -------------------------------------------------------------------------------

    def _take(self, messages: list[Message]) -> None:
        """Add the records' rows to their partitions' buffers, a run of consecutive records of one
        partition at a time (consume hands out a partition's records together): this runs for every
        row the sink inserts, and what is paid per run is not paid per row."""
        run: list[Message] = []
        run_of: tuple[str | None, int | None] = ("", -1)
        for message in messages:
            of = (message.topic(), message.partition())
            if of != run_of:
                self._take_run(run)
                run, run_of = [], of
            run.append(message)
        self._take_run(run)

    def _take_run(self, run: list[Message]) -> None:
        if not run:
            return
        topic, partition = run[0].topic(), run[0].partition()
        first, last = run[0].offset(), run[-1].offset()
        assert topic is not None and partition is not None and first is not None and last is not None
        buffer = self._buffers.get((topic, partition))
        if buffer is None:  # not setdefault: a Buffer built per record cost 7% of the sink's time
            buffer = self._buffers[(topic, partition)] = Buffer(self.routes[topic])
        buffer.add(first, last, buffer.route.rows(run))
        if self.on_flushed is not None:
            self._record_times.setdefault((topic, partition), []).extend(m.timestamp()[1] for m in run)
        self.stats.records += len(run)

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
        # 1. Take the buffer out; the token: where its rows came from, nothing else.
        buffer = self._buffers.pop(key, None)
        if buffer is None:
            return
        topic, partition = key
        token = f"{self.group_id}/{topic}/{partition}/{buffer.first_offset}-{buffer.last_offset}"
        times = self._record_times.pop(key, [])
        # 2. Finish the flush before it.
        self._finish_in_flight()
        if key not in self._assignment.held:
            return  # revoked while that one retried: the new owner reads these rows again
        # 3. Start the insert; consuming goes on meanwhile.
        insert = self._inserter.submit(self._insert_once, buffer, token) if buffer.rows else None
        self._in_flight = InFlight(key, buffer, token, times, time.monotonic(), insert)

    def _finish_inserted(self) -> None:
        """Commit the flush in flight as soon as its insert is done, not at the next flush."""
        flight = self._in_flight
        if flight is not None and (flight.insert is None or flight.insert.done()):
            self._finish_in_flight()

    def _finish_in_flight(self, retry: bool = True) -> None:
        """Steps 4 and 5 of the flush in flight. Without `retry` (its partition is being revoked) an
        insert ClickHouse could not take is left to the partition's next owner."""
        flight, self._in_flight = self._in_flight, None
        if flight is None:
            return
        topic, partition = flight.key
        # 4. Wait for the insert; while ClickHouse is unavailable, insert again.
        if flight.insert is not None:
            try:
                flight.insert.result()
            except ClickHouseUnavailableError as exc:
                if not retry or not self._insert_until_done(flight, exc):
                    log.info(
                        "%s[%d]: the insert of %s is left to the partition's new owner",
                        *flight.key,
                        flight.token,
                    )
                    return
        # 5. Commit past the range.
        try:
            self._consumer.commit(
                offsets=[TopicPartition(topic, partition, flight.buffer.last_offset + 1)], asynchronous=False
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
        metrics.SINK_FLUSH_SECONDS.labels("clickhouse").observe(time.monotonic() - flight.started)
        if self.on_flushed is not None and flight.buffer.rows:
            rows = len(flight.buffer.rows)
            self.on_flushed(
                Flushed(flight.buffer.route.table, partition, rows, flight.record_times_ms, time.time())
            )

    def _insert_until_done(self, flight: InFlight, failure: ClickHouseUnavailableError) -> bool:
        """Insert again until it succeeds (True) or the partition is revoked meanwhile (False)."""
        delay = _BACKOFF_FIRST
        paused: list[TopicPartition] = []
        try:
            while True:
                self.stats.retries += 1
                metrics.SINK_RETRIES.labels("clickhouse").inc()
                self._client = None
                wait = delay * random.uniform(0.5, 1.0)
                log.warning("%s; retrying the insert of %s in %.1f s", failure, flight.token, wait)
                if not paused:
                    paused = self._consumer.assignment()
                    self._consumer.pause(paused)
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline:
                    # Paused: returns nothing, but keeps this member in the group.
                    self._take(consume.usable(self._consumer.consume(100, timeout=0.1)))
                if flight.key not in self._assignment.held:
                    return False
                delay = min(delay * 2, _BACKOFF_MAX)
                try:
                    self._insert_once(flight.buffer, flight.token)
                    return True
                except ClickHouseUnavailableError as exc:
                    failure = exc
        finally:
            if paused:
                self._consumer.resume([tp for tp in paused if tp in self._consumer.assignment()])

    def _insert_once(self, buffer: Buffer, token: str) -> None:
        if self._client is None:
            self._client = self._connect()
        route, settings = buffer.route, {"insert_deduplication_token": token}
        try:
            if route.row_format is None:
                self._client.insert(
                    route.table, buffer.rows, column_names=list(route.columns), settings=settings
                )
            else:
                self._client.raw_insert(
                    route.table,
                    list(route.columns),
                    b"".join(buffer.rows),  # type: ignore[arg-type]  # bytes rows, by row_format
                    settings=settings,
                    fmt=route.row_format,
                )
        except Exception as exc:
            if _is_unavailable(exc):
                raise unavailable(self.dsn, exc) from exc
            raise ClickHouseError(f"insert into {buffer.route.table} failed: {exc}") from exc
        self.stats.inserts += 1
        self.stats.rows[buffer.route.table] = self.stats.rows.get(buffer.route.table, 0) + len(buffer.rows)
        metrics.CLICKHOUSE_ROWS.labels(buffer.route.table).inc(len(buffer.rows))

    def revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        if self._in_flight is not None and self._in_flight.key in revoked:
            self._finish_in_flight(retry=False)  # commit what is done before the partition goes
        self._assignment.revoked(consumer, partitions)
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
