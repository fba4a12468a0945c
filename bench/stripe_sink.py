"""Stripe sink throughput against the Stripe fake, per reporting mode, and Stripe calls per 1M
usage events.

The same backlog of aggregates (distinct window revisions for 200 customers x 3 meters) is reported
by `StripeSink` (in this process; the fake runs in its own, as `meterline dev up` starts it) in
`meter_events` mode (one call per revision) and in
`meter_event_stream` mode (v2 sessions, 100 revisions per call). The sink's own rate limit is
lifted so that the figure is the sink's and the fake's, not a configured cap: real Stripe allows
100 requests/s in live mode (25 in test mode), which is what makes the stream mode matter.

Calls per 1M usage events: a sink makes one call per window revision (or per 100), so it depends
on how many windows the events fill. Counted with `meterline generate`'s own bookkeeping (no
Kafka) for the stream benchmark's two workloads: one day of usage and 20 minutes of live traffic.

Run: .venv/bin/python bench/stripe_sink.py [--revisions 6000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import threading
import time
import urllib.request
import uuid
from typing import Literal

from confluent_kafka import Producer

from meterline.compose import stripe_sink
from meterline.core.config import Config
from meterline.core.kafka import committed_reaches, read_ends
from meterline.schemas.records import WindowAggregate
from meterline.schemas.serde import AvroSerde
from meterline.sinks.clickhouse.client import connect
from meterline.sinks.clickhouse.migrate import migrate
from meterline.sinks.stripe.calls import caller_for
from meterline.sinks.stripe.catalog.sync import sync
from meterline.streams.windows import DAY_MS
from meterline.table import render
from meterline.topics import isolated_topics
from meterline.workload import Expected, WorkloadSpec, generate

from harness import local_stack, machine

MINUTE_MS = 60_000
CUSTOMERS = 200


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--revisions", type=int, default=6_000)
    args = parser.parse_args()
    env = {"METERLINE__STRIPE__REQUESTS_PER_SECOND": "10000", "METERLINE__STRIPE__CONCURRENCY": "8"}
    with local_stack("stripe", env) as (base, bootstrap, state, services):
        fake = services["stripe"].address
        _set_up(fake, base)
        rows: list[dict[str, object]] = []
        modes: tuple[tuple[int, Literal["meter_events", "meter_event_stream"]], ...] = (
            (1, "meter_events"),
            (2, "meter_event_stream"),
        )
        for days_ago, mode in modes:
            config = isolated_topics(
                dataclasses.replace(base, stripe=dataclasses.replace(base.stripe, mode=mode)), bootstrap
            )
            _produce(config, bootstrap, args.revisions, days_ago)  # other windows: other identifiers
            rows.append(_run(config, bootstrap, fake, f"chdb://{state / f'ledger-{mode}'}", args.revisions))
    calls = _calls_per_million(base)
    print(machine())
    print(render(rows))
    print(render(calls))
    print(json.dumps({"modes": rows, "calls_per_million_events": calls}))


def _set_up(fake: str, config: Config) -> None:
    caller = caller_for(config)
    sync(config, caller)
    for n in range(CUSTOMERS):
        caller.client.v1.customers.create({"metadata": {"meterline_customer_id": f"cust-{n:04d}"}})


def _stats(fake: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{fake}/_fake/stats") as response:
        stats: dict[str, int] = json.loads(response.read())
    return stats


def _produce(config: Config, bootstrap: str, count: int, days_ago: int) -> None:
    serde = AvroSerde()
    start = (int(time.time() * 1000) - days_ago * DAY_MS) // MINUTE_MS * MINUTE_MS
    meters = list(config.meters)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for n in range(count):
        window = start + (n // (CUSTOMERS * len(meters))) * MINUTE_MS
        customer = f"cust-{n % CUSTOMERS:04d}"
        value = 1 + n % 997
        aggregate = WindowAggregate(
            customer,
            meters[n % len(meters)],
            window,
            window + MINUTE_MS,
            0,
            value,
            value,
            1,
            0,
            window + 70_000,
        )
        producer.produce(config.topics.aggregates, serde.encode_aggregate(aggregate), customer.encode())
        producer.poll(0)
    producer.flush()


def _run(config: Config, bootstrap: str, fake: str, dsn: str, count: int) -> dict[str, object]:
    client = connect(config, dsn)
    migrate(client, config.clickhouse.raw_events_ttl_days)
    client.close()
    ends = read_ends(bootstrap, [config.topics.aggregates])
    stopping = threading.Event()
    group_id = f"bench-stripe-{uuid.uuid4().hex[:6]}"
    sink = stripe_sink(config, bootstrap, dsn=dsn, group_id=group_id)
    before = _stats(fake)
    thread = threading.Thread(target=sink.run, args=(stopping.is_set,), daemon=True)
    started = time.monotonic()
    thread.start()
    while not committed_reaches(bootstrap, group_id, ends):
        time.sleep(0.5)
    seconds = time.monotonic() - started
    stopping.set()
    thread.join()
    after = _stats(fake)
    reported = after["meter_events"] - before["meter_events"]
    assert reported == count and after["error_reports"] == 0, (reported, count, after, vars(sink.stats))
    calls = after["calls"] - before["calls"]
    return {
        "mode": config.stripe.mode,
        "revisions": count,
        "seconds": round(seconds, 1),
        "revisions/s": round(count / seconds),
        "Stripe calls": calls,
        "calls per 1,000 revisions": round(calls / count * 1000, 1),
    }


def _calls_per_million(config: Config) -> list[dict[str, object]]:
    now = int(time.time() * 1000)
    rows = []
    for label, span in (("one day of usage", DAY_MS), ("20 minutes of live traffic", 21 * MINUTE_MS)):
        spec = WorkloadSpec(
            seed=1,
            events=1_000_000,
            customers=50,
            start_ms=now - span,
            span_ms=span - MINUTE_MS,
            duplicate_rate=0.01,
            out_of_order_rate=0.02,
            late_rate=0.001,
        )
        expected = Expected(config.windows.size_ms)
        for _ in generate(spec, config.meters, config.windows.size_ms, expected):
            pass
        windows = len(expected.totals)
        # Each window is reported once, plus once per correction; late events make corrections.
        revisions = windows + expected.late
        rows.append(
            {
                "1M usage events": label,
                "windows": windows,
                "revisions (at most)": revisions,
                "calls, meter_events": revisions,
                "calls, meter_event_stream": -(-revisions // 100) + 1,  # + its session
            }
        )
    return rows


if __name__ == "__main__":
    main()
