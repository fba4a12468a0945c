"""The consume loop both sinks run (sinks/consume.py), driven with a scripted consumer: what a sink
is handed, when it finishes, and that the consumer and the sink are closed however the run ends."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from meterline.sinks import consume


class Polled:
    """A message as consume returns it: a record, or an event carrying `error`."""

    def __init__(self, offset: int, error: KafkaError | None = None) -> None:
        self.offset, self._error = offset, error

    def error(self) -> KafkaError | None:
        return self._error


class ScriptedConsumer:
    """Each consume returns the next list of `polls`; then nothing."""

    def __init__(self, polls: list[list[Polled]]) -> None:
        self.polls = polls
        self.subscribed: list[str] = []
        self.closed = False

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        assert set(callbacks) == {"on_assign", "on_revoke", "on_lost"}
        self.subscribed = topics

    def consume(self, num_messages: int, timeout: float) -> list[Polled]:
        return self.polls.pop(0) if self.polls else []

    def close(self) -> None:
        self.closed = True


class RecordingSink:
    name, topics, most, wait_s = "test", ["usage.aggregates"], 10, 0.0

    def __init__(self, polls_until_stop: int, fail_on_take: bool = False) -> None:
        self.taken: list[list[int]] = []
        self.polls_until_stop = polls_until_stop
        self.fail_on_take = fail_on_take
        self.finished = self.closed = False

    def should_stop(self) -> bool:
        return len(self.taken) >= self.polls_until_stop

    def assigned(self, consumer: Any, partitions: list[TopicPartition]) -> None: ...

    def revoked(self, consumer: Any, partitions: list[TopicPartition]) -> None: ...

    def take(self, messages: list[Any]) -> None:
        if self.fail_on_take:
            raise RuntimeError("the sink failed")
        self.taken.append([m.offset for m in messages])

    def finish(self) -> None:
        self.finished = True

    def close(self) -> None:
        self.closed = True

    def progress(self) -> str:
        return "-"

    def oldest_pending_seconds(self) -> float:
        return 0.0


END_OF_PARTITION = KafkaError(KafkaError._PARTITION_EOF)


def test_the_sink_is_handed_the_records_of_each_poll_quiet_polls_too_then_finishes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = ScriptedConsumer([[Polled(0), Polled(-1, END_OF_PARTITION), Polled(1)], [], [Polled(2)]])
    sink = RecordingSink(polls_until_stop=3)
    with caplog.at_level(logging.INFO):
        consume.run(consumer, sink, sink.should_stop)  # type: ignore[arg-type]
    assert consumer.subscribed == ["usage.aggregates"]
    assert sink.taken == [[0, 1], [], [2]]
    assert sink.finished and sink.closed and consumer.closed
    assert ("meterline.sink.test", "stopped -") in [(r.name, r.getMessage()) for r in caplog.records]


def test_a_consumer_error_stops_the_run_unfinished_with_both_closed() -> None:
    broken = KafkaError(KafkaError._TRANSPORT)
    consumer = ScriptedConsumer([[Polled(0)], [Polled(1), Polled(-1, broken)]])
    sink = RecordingSink(polls_until_stop=5)
    with pytest.raises(KafkaException):
        consume.run(consumer, sink, sink.should_stop)  # type: ignore[arg-type]
    assert sink.taken == [[0]]  # the poll with the error is not handed over in part
    assert not sink.finished and sink.closed and consumer.closed


def test_a_failing_sink_still_closes_the_consumer() -> None:
    consumer = ScriptedConsumer([[Polled(0)]])
    sink = RecordingSink(polls_until_stop=1, fail_on_take=True)
    with pytest.raises(RuntimeError, match="the sink failed"):
        consume.run(consumer, sink, sink.should_stop)  # type: ignore[arg-type]
    assert not sink.finished and sink.closed and consumer.closed
