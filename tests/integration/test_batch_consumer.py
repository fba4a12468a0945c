"""streams.batches against the broker: the consumer Faust's worker runs fetches as the module says."""

from __future__ import annotations

import asyncio

import faust

from meterline.streams.batches import FETCH_MAX_WAIT_MS, BatchTransport
from tests.support.apache_kafka import on_apache_kafka  # noqa: F401  (this module runs on Apache Kafka)


def test_the_broker_holds_a_fetch_with_nothing_new_only_briefly(kafka_bootstrap: str) -> None:
    """Faust builds its worker's aiokafka consumer with a 1,500 ms fetch wait: a backlog's next
    records waited that long behind a fetch for partitions with nothing new (BENCHMARKS.md, issue
    18). The wait reaches the fetcher the consumer starts."""
    app = faust.App("test-batch-consumer", broker=f"kafka://{kafka_bootstrap}")

    async def unused(*_: object) -> None:
        raise AssertionError("not called: nothing is assigned")

    faust_consumer = BatchTransport(app.conf.broker_consumer, app).create_consumer(
        callback=unused, on_partitions_revoked=unused, on_partitions_assigned=unused
    )

    async def started_fetch_wait() -> int:
        # aiokafka's consumer is made inside a running loop, as in Faust's consumer thread.
        thread = faust_consumer._new_consumer_thread()
        consumer = thread._create_worker_consumer(faust_consumer.transport)
        await consumer.start()
        try:
            return int(consumer._fetcher._fetch_max_wait_ms)
        finally:
            await consumer.stop()

    assert asyncio.run(started_fetch_wait()) == FETCH_MAX_WAIT_MS
