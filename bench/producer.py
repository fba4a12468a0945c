"""Producer throughput on the local stack: `meterline generate` end to end (generation included),
the SDK alone on pre-built events, and plain confluent-kafka as the same-session baseline.

Run: .venv/bin/python bench/producer.py [--events 1000000] [--single-events 200000]
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

from harness import local_stack, report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--single-events", type=int, default=200_000)
    args = parser.parse_args()
    with local_stack("producer") as (config, bootstrap, _, _):
        rows = []
        start = int(time.time() * 1000) - DAY_MS

        def spec(events: int) -> WorkloadSpec:
            return WorkloadSpec(seed=1, events=events, customers=50, start_ms=start, span_ms=DAY_MS)

        rows.append(_baseline(bootstrap, args.single_events))
        cores = os.cpu_count() or 1
        runs = [(args.events, True, 1), (args.events, True, cores), (args.single_events, False, cores)]
        for events, packing, workers in runs:
            ensure_topics(bootstrap, [config.topics.events], config.kafka.partitions)
            result, _ = produce_workload(config, bootstrap, spec(events), packing=packing, workers=workers)
            rows.append(
                {
                    "what": f"meterline generate ({'packed' if packing else 'single-event'}, "
                    f"{workers} worker{'s' if workers > 1 else ''})",
                    "events": events,
                    "messages": result.messages,
                    "events/s": round(result.records_per_second),
                    "messages/s": round(result.messages_per_second),
                }
            )
        for events, packing in ((args.events // 2, True), (args.single_events, False)):
            rows.append(_sdk_only(config, bootstrap, spec(events), packing))
    report(rows)


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
