"""The ClickHouse sink's flush order with its insert overlapped (sinks/clickhouse/sink.py): a
counting fake consumer and a fake client whose insert the test holds, so that what is committed
while an insert is in flight, after it, or on a revoke is seen step by step. The same sink runs
against the broker and the engine in tests/integration and tests/crash."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from meterline.config import load_config
from meterline.core.config import Config
from meterline.schemas.serde import AvroSerde
from meterline.sinks.clickhouse.sink import ClickHouseSink
from tests.support.records import window_aggregate


class FakeMessage:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes | None) -> None:
        self._topic, self._partition, self._offset, self._value = topic, partition, offset, value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_780_000_000_000 + self._offset)


class FakeConsumer:
    """Counts commits; consume returns nothing (the test hands records to the sink itself)."""

    def __init__(self, assigned: list[TopicPartition]) -> None:
        self.commits: list[tuple[str, int, int]] = []
        self.assigned = assigned

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert not asynchronous
        self.commits += [(tp.topic, tp.partition, tp.offset) for tp in offsets]

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        return []

    def assignment(self) -> list[TopicPartition]:
        return list(self.assigned)

    def pause(self, partitions: list[TopicPartition]) -> None:
        pass

    def resume(self, partitions: list[TopicPartition]) -> None:
        pass


class HeldClient:
    """A client whose inserts wait for `release` and then fail with each of `failures` in turn."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.attempts: list[str] = []
        self.inserted: list[str] = []
        self.failures: list[Exception] = []

    def raw_insert(
        self, table: str, columns: list[str], data: bytes, settings: dict[str, str], fmt: str
    ) -> None:
        assert self.release.wait(10), "the test never released the insert"
        self.attempts.append(settings["insert_deduplication_token"])
        if self.failures:
            raise self.failures.pop(0)
        self.inserted.append(settings["insert_deduplication_token"])


@pytest.fixture
def config() -> Config:
    return load_config(None, {})


class Parts:
    """The fake consumer and client a sink is built with; `connects` counts the clients made."""

    def __init__(self, config: Config) -> None:
        self.partitions = [TopicPartition(config.topics.aggregates, p) for p in (0, 1)]
        self.consumer = FakeConsumer(self.partitions)
        self.client = HeldClient()
        self.connects = 0

    def connect(self) -> HeldClient:
        self.connects += 1  # the same fake again after a failure: its remaining failures carry over
        return self.client


@pytest.fixture
def parts(config: Config) -> Parts:
    return Parts(config)


@pytest.fixture
def sink(config: Config, parts: Parts) -> Iterator[ClickHouseSink]:
    sink = ClickHouseSink(
        config,
        consumer=parts.consumer,  # type: ignore[arg-type]
        connect=parts.connect,  # type: ignore[arg-type]
        dsn="chdb:///nowhere",
        serde=AvroSerde(),
        group_id="g",
    )
    sink.assigned(parts.consumer, parts.partitions)  # type: ignore[arg-type]
    yield sink
    sink._inserter.shutdown(wait=False, cancel_futures=True)


def records(config: Config, partition: int, offsets: range) -> list[Any]:
    serde = AvroSerde()
    return [
        FakeMessage(
            config.topics.aggregates,
            partition,
            offset,
            serde.encode_aggregate(
                window_aggregate("c", "api_calls", offset * 60_000, partition=partition, closed_at=0)
            ),
        )
        for offset in offsets
    ]


def held(parts: Parts, failures: list[Exception] | None = None) -> tuple[HeldClient, FakeConsumer]:
    """The sink's client, failing with each of `failures` in turn, and its consumer."""
    parts.client.failures = list(failures or [])
    return parts.client, parts.consumer


def finish(sink: ClickHouseSink) -> None:
    flight = sink._in_flight
    assert flight is not None and flight.insert is not None
    flight.insert.exception(timeout=10)  # done, whichever way
    sink._finish_inserted()


def test_a_range_is_committed_only_after_its_insert_and_in_the_order_flushed(
    config: Config, sink: ClickHouseSink, parts: Parts
) -> None:
    client, consumer = held(parts)
    topic = config.topics.aggregates
    sink._take(records(config, 0, range(0, 3)))
    sink._flush((topic, 0))
    sink._take(records(config, 0, range(3, 5)))  # consumed while the insert is held
    sink._finish_inserted()
    assert consumer.commits == [] and client.inserted == []
    client.release.set()
    finish(sink)
    assert client.inserted == [f"g/{topic}/0/0-2"] and consumer.commits == [(topic, 0, 3)]
    sink._flush((topic, 0))
    finish(sink)
    assert consumer.commits == [(topic, 0, 3), (topic, 0, 5)]


def test_a_flush_waits_for_the_one_in_flight_before_it_starts(
    config: Config, sink: ClickHouseSink, parts: Parts
) -> None:
    client, consumer = held(parts)
    topic = config.topics.aggregates
    sink._take(records(config, 0, range(0, 2)) + records(config, 1, range(0, 4)))
    sink._flush((topic, 0))
    threading.Timer(0.2, client.release.set).start()
    sink._flush((topic, 1))  # blocks until partition 0's insert returns, then commits it
    assert consumer.commits == [(topic, 0, 2)]
    finish(sink)
    assert consumer.commits == [(topic, 0, 2), (topic, 1, 4)]
    assert client.inserted == [f"g/{topic}/0/0-1", f"g/{topic}/1/0-3"]


def test_an_unavailable_target_is_retried_with_the_same_token_before_the_commit(
    config: Config, sink: ClickHouseSink, parts: Parts
) -> None:
    client, consumer = held(parts, [ConnectionRefusedError("refused"), ConnectionRefusedError("refused")])
    client.release.set()
    topic = config.topics.aggregates
    sink._take(records(config, 0, range(0, 3)))
    sink._flush((topic, 0))
    finish(sink)
    assert sink.stats.retries == 2 and parts.connects == 3  # the first client, then one per retry
    assert client.attempts == [f"g/{topic}/0/0-2"] * 3
    assert client.inserted == [f"g/{topic}/0/0-2"] and consumer.commits == [(topic, 0, 3)]


def test_a_revoke_commits_the_flush_in_flight_of_its_partition_and_drops_its_buffer(
    config: Config, sink: ClickHouseSink, parts: Parts
) -> None:
    client, consumer = held(parts)
    topic = config.topics.aggregates
    sink._take(records(config, 0, range(0, 3)))
    sink._flush((topic, 0))
    sink._take(records(config, 0, range(3, 6)))
    threading.Timer(0.2, client.release.set).start()
    sink.revoked(consumer, [TopicPartition(topic, 0)])  # type: ignore[arg-type]
    assert consumer.commits == [(topic, 0, 3)] and sink._in_flight is None
    assert (topic, 0) not in sink._buffers  # offsets 3-5: left to the partition's next owner


def test_a_revoke_leaves_an_insert_the_target_refused_uncommitted(
    config: Config, sink: ClickHouseSink, parts: Parts
) -> None:
    client, consumer = held(parts, [ConnectionRefusedError("refused")])
    client.release.set()
    topic = config.topics.aggregates
    sink._take(records(config, 1, range(0, 3)))
    sink._flush((topic, 1))
    sink.revoked(consumer, [TopicPartition(topic, 1)])  # type: ignore[arg-type]
    assert consumer.commits == [] and client.inserted == [] and sink._in_flight is None


def test_records_of_partitions_interleaved_go_to_their_buffers_in_order(
    config: Config, sink: ClickHouseSink
) -> None:
    """The sink takes a run of one partition's records at a time: runs broken by other partitions'
    records still add up to each partition's rows in offset order, with the range they came from."""
    topic, serde = config.topics.aggregates, AvroSerde()
    zero, one = records(config, 0, range(0, 4)), records(config, 1, range(0, 3))
    sink._take([zero[0], zero[1], one[0], zero[2], one[1], one[2], zero[3]])
    for partition, sent in ((0, zero), (1, one)):
        buffer = sink._buffers[(topic, partition)]
        assert (buffer.first_offset, buffer.last_offset) == (0, len(sent) - 1)
        assert buffer.rows == [serde.decode_aggregate_row_binary(m.value()) for m in sent]
    assert sink.stats.records == 7


def test_an_aggregate_record_without_a_value_is_an_error_naming_it(
    config: Config, sink: ClickHouseSink
) -> None:
    taken = records(config, 0, range(0, 3))
    taken[1]._value = None
    with pytest.raises(ValueError, match="partition 0 offset 1: a record without a value"):
        sink._take(taken)
