"""Reading a topic back in tests: every message, by exact count (never by high watermark alone)."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Message, TopicPartition

from meterline.core.kafka import consumer_from_beginning, settings


def read_messages(bootstrap: str, topic: str, count: int, timeout: float = 60.0) -> list[Message]:
    consumer = consumer_from_beginning(bootstrap, topic, "tests-read")
    try:
        messages: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(messages) < count and time.monotonic() < deadline:
            messages += [m for m in consumer.consume(1000, timeout=0.2) if not m.error()]
        # One more short read: more than `count` messages is a failure the caller must see.
        messages += [m for m in consumer.consume(1000, timeout=0.5) if not m.error()]
        return messages
    finally:
        consumer.close()


def committed_behind(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """For each partition, how many messages lie past `group`'s committed offset (0: all committed)."""
    consumer = Consumer(settings(bootstrap, {"group.id": group, "enable.auto.commit": False}))
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        committed = consumer.committed(tps, timeout=10)
        behind = {}
        for tp in committed:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
            behind[tp.partition] = high - max(tp.offset, 0)
        return behind
    finally:
        consumer.close()


def compacted_away(bootstrap: str, topic: str, timeout: float = 60.0) -> int:
    """How many offsets of `topic`, between each partition's first and last, hold no record any more:
    what the log cleaner removed (0 before it has run). Reads every partition to its end."""
    consumer = consumer_from_beginning(bootstrap, topic, "tests-compaction")
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions}
        seen = dict.fromkeys(partitions, 0)
        last = dict.fromkeys(partitions, -1)
        deadline = time.monotonic() + timeout

        def behind() -> bool:
            return any(last[p] < high - 1 for p, (_, high) in ends.items() if high)

        while behind() and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.2):
                partition, offset = message.partition() or 0, message.offset() or 0
                if not message.error() and offset < ends[partition][1]:
                    seen[partition] += 1
                    last[partition] = offset
        return sum(high - low - seen[p] for p, (low, high) in ends.items())
    finally:
        consumer.close()
