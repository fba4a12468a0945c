"""The Faust app: `usage.events` in, `usage.aggregates` and `usage.events.dlq` out.

Faust consumes, balances partitions between workers and commits offsets, handing the agent one
message per fetched batch of a partition (streams.batches: Faust's per-message cost was the
ceiling on single-event records); the decisions are streams.judge and streams.processor;
everything written goes through streams.output (one confluent-kafka producer: Faust's own sends
were the worker's ceiling too). Per record of a batch, in the agent:
1. judge the record; send what cannot be counted to the DLQ with the reason and its source;
2. fold the rest into the partition's processor, which saves the touched windows and the
   partition clock in memory (streams.state.PartitionStore);
3. send the revisions it closed to `usage.aggregates`, keyed by customer_id.
Before every commit Faust awaits its producer's flush, which first writes the saved state to the
local stores and the changelog, then flushes streams.output: what a record caused is delivered
before its offset is committed (at_least_once). After a crash or a
rebalance the first record of a partition rebuilds its state from the changelog and re-sends what
may have been lost (PartitionProcessor.recover). A timer sends an empty batch (a tick) into a
partition that has been quiet for the idle timeout while it has windows due, so that wall clock
closes them through a record, the same way on every replay.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from aiokafka.helpers import create_ssl_context
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from meterline.core.config import Config, KafkaConfig
from meterline.core.kafka import Kafka, brokers
from meterline.schemas.dead_letters import DeadLetter
from meterline.schemas.records import WindowAggregate
from meterline.schemas.serde import READERS, AvroSerde
from meterline.streams.batches import BatchMessage, BatchTransport
from meterline.streams.judge import Judge, Rejection, Verdict
from meterline.streams.output import Output
from meterline.streams.processor import PartitionProcessor, ProcessorStats, rules_from
from meterline.streams.state import PartitionStore
from meterline.streams.stores import LocalState, open_local_store, recover

log = logging.getLogger("meterline.stream")


def _raw() -> faust.Schema[bytes, bytes]:
    """Bytes in, bytes out: serde and streams.state encode, not Faust's codecs. A new schema for
    every user: Faust updates a schema it is given, and a table would turn a shared one to json."""
    return faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


@dataclass
class StreamCounters:
    """What the metrics endpoint will expose; also logged every few seconds."""

    batches: int = 0
    records: int = 0
    events: int = 0
    accepted: int = 0
    non_billable: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    aggregates_sent: int = 0
    dlq_sent: int = 0

    def snapshot(self, processors: Mapping[int, PartitionProcessor], now_ms: int) -> dict[str, Any]:
        totals = ProcessorStats()
        for processor in processors.values():
            for name, value in vars(processor.stats).items():
                setattr(totals, name, getattr(totals, name) + value)
        return {
            "batches": self.batches,
            "records": self.records,
            "events": self.events,
            "accepted": self.accepted,
            "non_billable": self.non_billable,
            "rejected": dict(self.rejected),
            "counted": totals.counted,
            "duplicates": totals.duplicates,
            "corrections": totals.corrections,
            "windows_closed": totals.windows_closed,
            "open_windows": sum(p.open_windows for p in processors.values()),
            "replayed_records": totals.replayed_records,
            "reemitted": totals.reemitted,
            "aggregates_sent": self.aggregates_sent,
            "dlq_sent": self.dlq_sent,
            "watermark_lag_ms": {
                p: now_ms - processor.clock.watermark
                for p, processor in sorted(processors.items())
                if processor.clock.watermark >= 0
            },
        }


class StreamRuntime:
    """The per-worker state around the processors: which partitions it owns, and the sends."""

    def __init__(self, config: Config, output: Output, data_dir: Path, serde: AvroSerde) -> None:
        self.config = config
        self.serde = serde
        self.judge = Judge(config, serde)
        self.rules = rules_from(config)
        self.output = output
        self.data_dir = data_dir
        self.state_topic = config.stream.state_topic
        self.processors: dict[int, PartitionProcessor] = {}
        self.stores: dict[int, PartitionStore] = {}
        self.assigned: set[int] = set()
        self.last_record: dict[int, float] = {}
        self.last_tick: dict[int, float] = {}
        self.counters = StreamCounters()
        self.tick = serde.encode_batch([])
        # Dead letters that depend on the state (Verdict.gone) are sent but not yet delivered: a
        # record the stored clock marks applied is never judged again, so they must be delivered
        # before the clock is written.
        self._state_letters_pending = False

    def handle(self, partition: int, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Process one fetched batch of a partition's records, in offset order."""
        self.last_record[partition] = time.monotonic()
        self.output.poll()
        self.counters.batches += 1
        processor = self.processors.get(partition)
        if processor is None:
            processor = self._recover(partition, records[0].offset)
        for record in records:
            verdict = self.judge(record.value, record.timestamp, processor.held_from(record.offset))
            self._count(verdict)
            for rejection in verdict.rejections:
                self._dead_letter(partition, record, rejection)
            self._state_letters_pending |= verdict.gone > 0
            closed = processor.process(record.offset, record.timestamp, verdict)
            if closed:
                self._send(closed)

    def write_behind(self, partitions: Iterable[int] | None = None) -> int:
        """Write the state saved since the last call to the local stores and the changelog (sent,
        not yet delivered: Output.flush does that). Runs on the event loop, between records, so
        that it writes whole records; returns the number of writes."""
        chosen = self.stores if partitions is None else [p for p in partitions if p in self.stores]
        if self._state_letters_pending:  # rare: an event for a window long gone
            self.output.flush()
            self._state_letters_pending = False
        return sum(self.stores[p].write_behind() for p in chosen)

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop the in-memory state of partitions this worker no longer owns (or owns anew), after
        writing what they saved."""
        partitions = list(partitions)
        if self.write_behind(partitions):
            self.output.flush()
        for partition in partitions:
            self.processors.pop(partition, None)
            self.stores.pop(partition, None)

    def quiet_partitions_due(self) -> list[int]:
        """Partitions to tick: quiet for the idle timeout and with windows due by wall clock, or
        not yet recovered since they were assigned (a tick makes the first record arrive)."""
        idle = self.config.windows.idle_timeout_seconds
        now = time.monotonic()
        now_ms = int(time.time() * 1000)
        due = []
        for partition in sorted(self.assigned):
            if now - max(self.last_record.get(partition, 0.0), self.last_tick.get(partition, 0.0)) < idle:
                continue
            processor = self.processors.get(partition)
            if processor is None or processor.due_for_tick(now_ms):
                due.append(partition)
                self.last_tick[partition] = now
        return due

    def _recover(self, partition: int, first_offset: int) -> PartitionProcessor:
        entries = open_local_store(self.config.stream.store, self.data_dir, partition)
        read = recover(self.output, self.state_topic, partition, entries)
        store = PartitionStore(LocalState(self.output, self.state_topic, partition, entries), partition)
        processor = PartitionProcessor(partition, self.rules, store)
        windows, clock = store.saved_state()
        log.info("partition %d: read %d changelog records", partition, read)
        again = processor.recover(windows, clock, first_offset)
        log.info(
            "partition %d: recovered %d windows (%d open), clock at offset %s; re-sending %d revisions "
            "closed at or after offset %d",
            partition,
            len(windows),
            processor.open_windows,
            clock.last_offset if clock else None,
            len(again),
            first_offset,
        )
        self.processors[partition] = processor
        self.stores[partition] = store
        self._send(again)
        return processor

    def snapshot(self) -> dict[str, Any]:
        """The counters now; safe from another thread (the metrics endpoint's)."""
        return self.counters.snapshot(dict(self.processors), int(time.time() * 1000))

    def _count(self, verdict: Verdict) -> None:
        c = self.counters
        c.records += 1
        c.events += verdict.events
        c.accepted += len(verdict.billable) + len(verdict.non_billable)
        c.non_billable += len(verdict.non_billable)
        for rejection in verdict.rejections:
            c.rejected[str(rejection.reason)] += 1

    def _dead_letter(
        self, partition: int, record: ConsumerRecord[bytes, bytes], rejection: Rejection
    ) -> None:
        value = record.value
        index = None
        if rejection.index is not None and rejection.event is not None:
            # One bad event of a good batch: the event alone, and where it sat in the batch.
            index, value = rejection.index, self.serde.encode_event(rejection.event)
        letter = DeadLetter(
            str(rejection.reason),
            rejection.detail,
            self.config.topics.events,
            partition,
            record.offset,
            index,
        )
        self.output.send(
            self.config.topics.events_dlq, record.key, value, headers=letter.headers(record.headers or ())
        )
        self.counters.dlq_sent += 1

    def _send(self, aggregates: list[WindowAggregate]) -> None:
        topic = self.config.topics.aggregates
        for aggregate in aggregates:
            self.output.send(topic, aggregate.customer_id.encode(), self.serde.encode_aggregate(aggregate))
        self.counters.aggregates_sent += len(aggregates)


def build_app(config: Config, bootstrap: Kafka, data_dir: Path) -> tuple[faust.App, StreamRuntime]:
    if READERS != "compiled":
        log.warning(
            "usage events are read in Python, about 14 times slower: schemas._readers was not "
            "compiled when meterline was installed (no C compiler?); reinstall where one is"
        )
    app = faust.App(
        config.stream.app_id,
        broker=f"kafka://{brokers(bootstrap).bootstrap}",
        broker_credentials=faust_credentials(config.kafka),
        store="memory://",  # Faust holds no state here: streams.stores keeps it
        processing_guarantee=config.stream.processing_guarantee,
        broker_commit_interval=config.stream.commit_interval_seconds,
        datadir=str(data_dir),
        topic_partitions=config.kafka.partitions,
        topic_replication_factor=config.kafka.replication_factor,
        # A group join waits half the session timeout on tansu (DESIGN §7).
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        consumer_auto_offset_reset="earliest",
        # Each message is a whole fetched batch of a partition (streams.batches, up to
        # consumer_max_fetch_size, 1 MiB): two waiting keep the agent busy, where Faust's default
        # buffer (4,096 messages) could hold gigabytes of records, and eight held ~40 MiB more
        # than the worker did before on single-event records (BENCHMARKS.md).
        stream_buffer_maxsize=2,
        web_enabled=False,
    )
    # Before anything reaches app.transport (app.topic does): one message per fetched batch.
    app.transport = BatchTransport(app.conf.broker_consumer, app)
    output = Output(bootstrap)
    serde = AvroSerde.from_registry_url(config.kafka.schema_registry_url)
    runtime = StreamRuntime(config, output, data_dir, serde)
    events = app.topic(config.topics.events, schema=_raw())

    _deliver_ours_before_commits(app, runtime, output)

    @app.agent(events, name="meterline-aggregate")
    async def aggregate(stream: Any) -> None:
        async for event in stream.events():
            batch: BatchMessage = event.message
            try:
                runtime.handle(batch.partition, batch.records)
            except Exception:
                # Bad input never gets here (it is judged and dead-lettered). A bug or a broken
                # store does, and Faust would ack the batch and go on without it. Stop hard
                # instead, before anything commits: the batch is processed again on restart.
                log.critical(
                    "stopping: partition %d offsets %d-%d could not be processed",
                    batch.partition,
                    batch.records[0].offset,
                    batch.offset,
                    exc_info=True,
                )
                os._exit(70)

    _add_timers_and_rebalance_hooks(app, runtime, output, config)
    return app, runtime


def _deliver_ours_before_commits(app: faust.App, runtime: StreamRuntime, output: Output) -> None:
    # Before every commit Faust awaits its producer's flush() (at_least_once, the only guarantee
    # meterline runs). Write the state behind and deliver our writes first. Faust chose the offsets
    # to commit before it called this, so records processed while the flush runs are neither in the
    # write nor in the commit.
    faust_producer = app.producer
    faust_flush = faust_producer.flush

    async def deliver_ours() -> None:
        runtime.write_behind()
        await asyncio.get_running_loop().run_in_executor(None, output.flush)

    async def flush_then_commit() -> None:
        await deliver_ours()
        await faust_flush()

    faust_producer.flush = flush_then_commit  # type: ignore[method-assign]


def _add_timers_and_rebalance_hooks(
    app: faust.App, runtime: StreamRuntime, output: Output, config: Config
) -> None:
    """Ticks into quiet partitions (their windows close by wall clock), the counters in the log,
    and the runtime told which partitions it holds."""

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]  # faust's timer decorator is untyped
    async def tick_quiet_partitions() -> None:
        for partition in runtime.quiet_partitions_due():
            output.send(config.topics.events, None, runtime.tick, partition=partition)

    @app.timer(interval=10.0)  # type: ignore[untyped-decorator]
    async def log_counters() -> None:
        log.info("counters %s", runtime.snapshot())

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust types the receiver loosely
    async def on_revoked(app: faust.App, revoked: set[TP], **_: Any) -> None:
        mine = {tp.partition for tp in revoked if tp.topic == config.topics.events}
        runtime.assigned -= mine
        runtime.forget(mine)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(app: faust.App, assigned: set[TP], **_: Any) -> None:
        mine = {tp.partition for tp in assigned if tp.topic == config.topics.events}
        runtime.assigned = mine
        runtime.forget(mine)  # recovered afresh at their first record


def faust_credentials(kafka: KafkaConfig) -> faust.auth.Credentials | None:
    """Faust's client (aiokafka) with the same security as every confluent-kafka client."""
    protocol = kafka.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol.endswith("SSL"):
        context = create_ssl_context(
            cafile=kafka.ssl_ca_location or None,
            certfile=kafka.ssl_certificate_location or None,
            keyfile=kafka.ssl_key_location or None,
            password=kafka.ssl_key_password.reveal() or None,
        )
    if protocol.startswith("SASL_"):
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.reveal(),
            mechanism=kafka.sasl_mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context)
