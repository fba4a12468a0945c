"""Producer throughput on the local stack: `meterline generate` end to end (generation included),
the SDK alone on pre-built events, and plain confluent-kafka as the same-session baseline.

Run: .venv/bin/python bench/producer.py [--events 1000000] [--single-events 200000]
     [--brokers tansu,apache-kafka]
"""

from __future__ import annotations

import argparse
import os
import time

from confluent_kafka import Producer

from meterline.core.config import Config
from meterline.core.kafka import ensure_topics
from meterline.produce import make_producer, produce_workload
from meterline.streams.windows import DAY_MS
from meterline.workload import Expected, WorkloadSpec, generate

from harness import broker_stack, report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--single-events", type=int, default=200_000)
    parser.add_argument(
        "--brokers", default="tansu", help="comma-separated, tansu and/or apache-kafka: each runs every row"
    )
    args = parser.parse_args()
    rows = []
    for broker in args.brokers.split(","):
        with broker_stack(broker, "producer") as (config, bootstrap, _, _):
            found = _rows(config, bootstrap, args.events, args.single_events)
        rows += [{"broker": broker, **row} for row in found]
    report(rows)


def _rows(config: Config, bootstrap: str, events: int, single_events: int) -> list[dict[str, object]]:
    rows = []
    start = int(time.time() * 1000) - DAY_MS

    def spec(count: int) -> WorkloadSpec:
        return WorkloadSpec(seed=1, events=count, customers=50, start_ms=start, span_ms=DAY_MS)

    rows.append(_baseline(bootstrap, single_events))
    cores = os.cpu_count() or 1
    runs = [(events, True, 1), (events, True, cores), (single_events, False, cores)]
    for count, packing, workers in runs:
        ensure_topics(bootstrap, [config.topics.events], config.kafka.partitions)
        result, _ = produce_workload(config, bootstrap, spec(count), packing=packing, workers=workers)
        rows.append(
            {
                "what": f"meterline generate ({'packed' if packing else 'single-event'}, "
                f"{workers} worker{'s' if workers > 1 else ''})",
                "events": count,
                "messages": result.messages,
                "events/s": round(result.records_per_second),
                "messages/s": round(result.messages_per_second),
            }
        )
    for count, packing in ((events // 2, True), (single_events, False)):
        rows.append(_sdk_only(config, bootstrap, spec(count), packing))
    return rows


def _baseline(bootstrap: str, messages: int) -> dict[str, object]:
    """confluent-kafka alone, idempotent, 100-byte messages: what any Python producer can reach here."""
    ensure_topics(bootstrap, ["bench.baseline"], 4)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    payload = b"x" * 100
    started = time.perf_counter()
    for n in range(messages):
        while True:
            try:
                producer.produce("bench.baseline", payload, str(n % 50).encode())
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush()
    seconds = time.perf_counter() - started
    return {
        "what": "confluent-kafka alone (baseline)",
        "events": messages,
        "messages": messages,
        "events/s": round(messages / seconds),
        "messages/s": round(messages / seconds),
    }


def _sdk_only(config: Config, bootstrap: str, spec: WorkloadSpec, packing: bool) -> dict[str, object]:
    """UsageProducer.produce() on events built beforehand: the cost a product service pays."""
    events = [e.event for e in generate(spec, config.meters, 60_000, Expected(60_000)) if e.event is not None]
    producer = make_producer(config, bootstrap, packing=packing)
    started = time.perf_counter()
    for event in events:
        producer.produce(event)
    producer.close()
    seconds = time.perf_counter() - started
    return {
        "what": f"UsageProducer.produce ({'packed' if packing else 'single-event'})",
        "events": len(events),
        "messages": producer.messages_sent,
        "events/s": round(len(events) / seconds),
        "messages/s": round(producer.messages_sent / seconds),
    }


if __name__ == "__main__":
    main()
