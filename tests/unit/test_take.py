"""core.kafka.take: what a consumer has fetched, without waiting out a timeout for more.

confluent-kafka's Consumer.consume(n, timeout) returns once n messages are there or the timeout has
passed (librdkafka's rd_kafka_consume_batch_queue): a reader of a partition of packed records,
hundreds of them, waited out nearly every call. A stub consumer stands in for librdkafka here,
answering as consume does: what is queued, up to n, once n are there or the timeout passed."""

from __future__ import annotations

from meterline.core.kafka import take


class QueuedConsumer:
    """Answers consume(n, timeout) as librdkafka does, from a queue that a wait (timeout > 0) fills
    with `arriving`; records every call's timeout."""

    def __init__(self, queued: list[str], arriving: list[str]) -> None:
        self.queued, self.arriving = queued, arriving
        self.waits: list[float] = []

    def consume(self, num_messages: int, timeout: float) -> list[str]:
        self.waits.append(timeout)
        if timeout > 0 and len(self.queued) < num_messages:  # waited out, or until enough came
            self.queued += self.arriving
            self.arriving = []
        taken, self.queued = self.queued[:num_messages], self.queued[num_messages:]
        return taken


def test_what_is_queued_is_taken_without_waiting() -> None:
    consumer = QueuedConsumer(["a", "b", "c"], arriving=["d"])
    assert take(consumer, 5_000, timeout=0.2) == ["a", "b", "c"]  # type: ignore[arg-type]
    assert consumer.waits == [0]


def test_at_most_the_number_asked_for() -> None:
    consumer = QueuedConsumer(["a", "b", "c"], arriving=[])
    assert take(consumer, 2, timeout=0.2) == ["a", "b"]  # type: ignore[arg-type]
    assert take(consumer, 2, timeout=0.2) == ["c"]  # type: ignore[arg-type]
    assert consumer.waits == [0, 0]


def test_with_nothing_queued_it_waits_for_the_first_to_arrive_only() -> None:
    consumer = QueuedConsumer([], arriving=["a", "b"])
    assert take(consumer, 5_000, timeout=0.2) == ["a"]  # type: ignore[arg-type]
    assert consumer.waits == [0, 0.2]
    assert take(consumer, 5_000, timeout=0.2) == ["b"]  # type: ignore[arg-type]


def test_nothing_arriving_within_the_timeout_is_an_empty_answer() -> None:
    consumer = QueuedConsumer([], arriving=[])
    assert take(consumer, 5_000, timeout=0.2) == []  # type: ignore[arg-type]
