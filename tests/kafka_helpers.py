"""Reading a topic back in tests: every message, by exact count (never by high watermark alone)."""

from __future__ import annotations

import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition


def read_messages(bootstrap: str, topic: str, count: int, timeout: float = 60.0) -> list[Message]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "tests-read", "enable.auto.commit": False}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        messages: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(messages) < count and time.monotonic() < deadline:
            messages += [m for m in consumer.consume(1000, timeout=0.2) if not m.error()]
        # One more short read: more than `count` messages is a failure the caller must see.
        messages += [m for m in consumer.consume(1000, timeout=0.5) if not m.error()]
        return messages
    finally:
        consumer.close()
