"""Faust's Kafka transport, handing the agent one message per fetched batch of a partition.

Faust spends ~110 µs of its own on every message it delivers (an Event, a task hop, an ack, the
offset bookkeeping) before the agent's code runs: on single-event Kafka records (what a Java or
Go producer with Confluent's serializer sends) that cost was the worker's ceiling. Here the
consumer turns each partition's fetched records into one `BatchMessage`, carrying the records and
standing at the offset of the last one, so Faust's cost is paid once per batch.

Offsets stay Faust's: a batch message skips from one batch's last offset to the next one's, and
Faust's consumer records the skipped offsets as a gap (the mechanism it has for compacted topics
and transaction markers), so acking the batch message commits past its last record and nothing
before the batch is fully processed. Assignment, rebalances, seeks and recovery are untouched. A
batch processed twice after a crash is harmless: the processor skips records by their offsets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ConsumerMessage

FETCH_MAX_WAIT_MS = 100
"""How long the broker may hold a fetch that finds nothing new (Faust sets 1,500 ms). aiokafka has
one fetch in flight per broker, for the partitions whose fetched records are all handed out: while
the agent works through one partition's backlog, the fetch in flight is often for partitions with
nothing new, which the broker holds for this long, and the backlog's next records wait behind it.
At 1,500 ms the worker stood idle 20-40% of the time on live traffic (BENCHMARKS.md, issue 18).
Caught up, the cost is ten empty fetches a second."""


class BatchMessage(ConsumerMessage):
    """One partition's fetched records as one Faust message, at the last record's offset."""

    __slots__ = ("records",)

    def __init__(self, tp: TP, records: Sequence[ConsumerRecord[bytes, bytes]], generation_id: int) -> None:
        last = records[-1]
        super().__init__(
            tp.topic,
            tp.partition,
            last.offset,
            last.timestamp / 1000.0,
            last.timestamp_type,
            None,
            None,
            b"",
            None,
            serialized_key_size=0,
            serialized_value_size=sum(r.serialized_value_size for r in records),
            tp=tp,
            generation_id=generation_id,
        )
        self.records = records


class BatchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Faust passes no setting for it; the consumer hands it to its fetcher when it starts.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class BatchConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Mapping[TP, list[Any]]:
        fetched = await super()._getmany(active_partitions, timeout)
        # One item per partition: the list of its records, made a message by _to_message.
        return {tp: [records] for tp, records in fetched.items() if records}

    def _to_message(self, tp: TP, record: Any) -> ConsumerMessage:
        return BatchMessage(tp, record, self.app.consumer_generation_id)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        # Faust marks offset_from..offset_to as skipped, offset_to included: that is the batch
        # message's own offset, acked again once processed. The duplicate in the acked offsets
        # ends the consecutive run a commit takes (robinhood/faust#625), so each commit moved a
        # partition on by one batch only: commits fell far behind processing (30 s on a backlog of
        # 1M events, BENCHMARKS.md), and the acked offsets (an int per record) grew with them. The
        # gap stops before the message.
        await super()._add_gap(tp, offset_from, offset_to - 1)


class BatchTransport(faust_aiokafka.Transport):
    Consumer: ClassVar[type[BatchConsumer]] = BatchConsumer
