"""Reading a topic back in tests: every message, by exact count (never by high watermark alone)."""

from __future__ import annotations

import time

from confluent_kafka import Message

from core.kafka import consumer_from_beginning


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
