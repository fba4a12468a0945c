"""streams.batches: Faust's consumer commits what the agent processed, one batch message per
fetched batch of a partition. Faust's own offset bookkeeping (the real consumer, no broker)."""

from __future__ import annotations

import asyncio

import faust
from faust.types import TP

from meterline.streams.batches import BatchTransport


def test_one_commit_covers_every_batch_processed_before_it() -> None:
    """Each batch message stands at its last record's offset; Faust notes the records before it
    as a gap when the message arrives (Consumer._drain_messages) and the message's offset when it
    is acked. A commit then takes everything processed: before the fix the gap also held the
    message's own offset, and the duplicate let each commit move on by one batch only."""
    app = faust.App("test-batches", broker="kafka://127.0.0.1:1")

    async def unused(*_: object) -> None:
        raise AssertionError("no broker here")

    consumer = BatchTransport(app.conf.broker_consumer, app).create_consumer(
        callback=unused, on_partitions_revoked=unused, on_partitions_assigned=unused
    )
    tp = TP("usage.events", 0)
    last_offsets = [14 + 15 * n for n in range(8)]  # batches of 15 records from offset 0

    async def arrive_and_ack(offsets: list[int], previous: int | None) -> None:
        for offset in offsets:
            if previous is not None:  # as Consumer._drain_messages calls it
                await consumer._add_gap(tp, previous + 1, offset)
            previous = offset
            consumer._acked[tp].append(offset)  # as Consumer.ack records it
            consumer._acked_index[tp].add(offset)

    def commit() -> int | None:
        [offset] = consumer._filter_committable_offsets([tp]).values() or [None]
        if offset is not None:
            consumer._committed_offset[tp] = offset
        return offset

    asyncio.run(arrive_and_ack(last_offsets[:3], None))
    assert commit() == last_offsets[2] + 1
    asyncio.run(arrive_and_ack(last_offsets[3:], last_offsets[2]))
    assert commit() == last_offsets[-1] + 1
    assert commit() is None  # nothing left behind to commit later
    assert consumer._acked[tp] == [] and not consumer._gap[tp]
