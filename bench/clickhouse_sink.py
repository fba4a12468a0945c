"""ClickHouse sink throughput and latency on the local stack (tansu + the embedded engine, chdb).

Rows:
- baseline: clickhouse-connect inserting the same rows into the same table in the sink's batch
  size, no Kafka (the ceiling the sink can approach); beside it the same rows as the sink now
  sends them, RowBinary bytes through raw_insert;
- floor: the sink's consumer (its settings, CONSUMER_SETTINGS) reading the backlog, nothing done
  per message (what the sink pays before any work of its own);
- the sink (ClickHouseSink, in this process) draining a backlog of aggregates already on
  usage.aggregates: rows/s from its first insert to the commit that covers the backlog. The
  baseline and the drain run in alternating pairs (--pairs), each into a fresh engine directory,
  and the last row divides the median drain by the median baseline: one pair's ratio moved from
  0.42x to 0.60x between runs of the same code, the baseline alone between 178k and 280k rows/s;
- the sink keeping up with aggregates produced at a steady rate: latency from each aggregate's
  Kafka timestamp (when the stream app sent it, i.e. when its window closed) to the return of
  the insert that made it visible, median and p99, with the default batch_seconds.

Run: .venv/bin/python bench/clickhouse_sink.py [--rows 500000] [--pairs 3] [--rate 2000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from confluent_kafka import Producer

from meterline.compose import clickhouse_sink
from meterline.core.config import Config
from meterline.core.kafka import committed_reaches, group_consumer, read_ends
from meterline.schemas.records import WindowAggregate
from meterline.schemas.serde import AvroSerde
from meterline.sinks.clickhouse.client import connect
from meterline.sinks.clickhouse.migrate import migrate
from meterline.sinks.clickhouse.rows import AGGREGATE_COLUMNS, REVISION_COLUMNS
from meterline.sinks.clickhouse.sink import CONSUMER_SETTINGS, Flushed
from meterline.topics import isolated_topics

from harness import local_stack, report

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

MINUTE_MS = 60_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--rate", type=int, default=2_000, help="aggregates/s in the latency run")
    parser.add_argument("--seconds", type=int, default=20, help="length of the latency run")
    parser.add_argument("--pairs", type=int, default=3, help="alternating baseline and drain runs")
    args = parser.parse_args()
    with local_stack("sink", {"METERLINE__CLICKHOUSE__RAW_EVENTS": "false"}) as (base, bootstrap, state, _):
        rows: list[dict[str, object]] = []
        # Each row its own fresh engine directory: the merges ClickHouse runs in the background
        # after a row's inserts would otherwise take CPU from the next row.
        client = _fresh(base, state / "baseline-row-binary")
        rows.append(_baseline_row_binary(client, args.rows, base.clickhouse.batch_rows))
        client.close()

        backlog = isolated_topics(base, bootstrap, "backlog")
        _produce(backlog, bootstrap, _aggregates(args.rows, seed=1))
        rows.append(_consume_floor(backlog, bootstrap, args.rows))
        baselines, drains = [], []
        for pair in range(args.pairs):
            client = _fresh(base, state / f"baseline-{pair}")
            baselines.append(_baseline(client, args.rows, base.clickhouse.batch_rows))
            client.close()
            _fresh(base, state / f"drain-{pair}").close()
            # The same backlog each time, read from its start by a new group.
            drains.append(_drain(backlog, bootstrap, f"chdb://{state / f'drain-{pair}'}", args.rows))
            rows += [baselines[-1], drains[-1]]
        rows.append(_ratio(drains, baselines, args.rows))

        live = isolated_topics(base, bootstrap, "live")
        _fresh(base, state / "live").close()
        rows.append(_latency(live, bootstrap, f"chdb://{state / 'live'}", args.rate, args.seconds))
    report(rows)


def _fresh(config: Config, directory: Path) -> Client:
    """A client of a new, migrated embedded engine in `directory`."""
    client = connect(config, f"chdb://{directory}")
    migrate(client, config.clickhouse.raw_events_ttl_days)
    return client


def _aggregates(count: int, seed: int) -> list[WindowAggregate]:
    """`count` distinct window revisions: 200 customers x 3 meters, consecutive minutes."""
    start = (int(time.time() * 1000) - 30 * 86_400_000) // MINUTE_MS * MINUTE_MS
    meters = ("api_calls", "egress_bytes", "compute_ms")
    made = []
    for n in range(count):
        window = start + (n // 600) * MINUTE_MS  # 600 = 200 customers x 3 meters
        value = (n * 7919 + seed) % 10_000
        made.append(
            WindowAggregate(
                f"cust-{n % 200:04d}",
                meters[n % 3],
                window,
                window + MINUTE_MS,
                n % 4,
                value,
                value,
                1 + n % 50,
                0,
                window + 90_000,
            )
        )
    return made


def _produce(config: Config, bootstrap: str, aggregates: list[WindowAggregate]) -> None:
    serde = AvroSerde()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True})
    for aggregate in aggregates:
        while True:
            try:
                producer.produce(
                    config.topics.aggregates, serde.encode_aggregate(aggregate), aggregate.customer_id
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush()


def _baseline(client: Client, count: int, batch: int) -> dict[str, object]:
    data = [[getattr(a, column) for column in REVISION_COLUMNS] for a in _aggregates(count, seed=2)]
    started = time.perf_counter()
    for first in range(0, count, batch):
        client.insert(
            "usage_window_revisions", data[first : first + batch], column_names=list(REVISION_COLUMNS)
        )
    seconds = time.perf_counter() - started
    return _throughput(
        f"baseline: clickhouse-connect inserts into chdb, {batch:,} rows each", count, count / seconds
    )


def _baseline_row_binary(client: Client, count: int, batch: int) -> dict[str, object]:
    serde = AvroSerde()
    data = [serde.decode_aggregate_row_binary(serde.encode_aggregate(a)) for a in _aggregates(count, seed=4)]
    started = time.perf_counter()
    for first in range(0, count, batch):
        client.raw_insert(
            "usage_window_revisions",
            list(AGGREGATE_COLUMNS),
            b"".join(data[first : first + batch]),
            fmt="RowBinary",
        )
    seconds = time.perf_counter() - started
    return _throughput(
        f"the same as RowBinary rows through raw_insert, {batch:,} rows each", count, count / seconds
    )


def _consume_floor(config: Config, bootstrap: str, count: int) -> dict[str, object]:
    consumer = group_consumer(bootstrap, f"floor-{uuid.uuid4().hex[:6]}", CONSUMER_SETTINGS)
    consumer.subscribe([config.topics.aggregates])
    seen, started = 0, 0.0
    try:
        while seen < count:
            messages = consumer.consume(1000, timeout=1.0)
            if messages and not started:
                started = time.perf_counter()
            seen += sum(1 for m in messages if m.error() is None)
    finally:
        consumer.close()
    rate = seen / (time.perf_counter() - started)
    return _throughput(
        "floor: the sink's consumer alone reading the backlog, nothing per message", seen, rate
    )


class SinkThread(threading.Thread):
    """The sink running in this process, recording what each flush made visible."""

    def __init__(self, config: Config, bootstrap: str, dsn: str) -> None:
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.flushed: list[Flushed] = []
        self.stopping = threading.Event()
        self.sink = clickhouse_sink(
            config,
            bootstrap,
            dsn=dsn,
            group_id=f"bench-sink-{uuid.uuid4().hex[:6]}",
            on_flushed=self.flushed.append,
        )

    def run(self) -> None:
        self.sink.run(self.stopping.is_set)

    def stop_when_committed(self, ends: dict[tuple[str, int], int]) -> None:
        while not committed_reaches(self.bootstrap, self.sink.group_id, ends):
            time.sleep(1.0)  # each check is a new consumer: not too often, it shares the GIL
        self.stopping.set()
        self.join()


def _drain(config: Config, bootstrap: str, dsn: str, count: int) -> dict[str, object]:
    ends = read_ends(bootstrap, [config.topics.aggregates])
    sink = SinkThread(config, bootstrap, dsn)
    sink.start()
    sink.stop_when_committed(ends)
    flushed = sink.flushed
    first_insert = min(f.visible_at for f in flushed)
    last_insert = max(f.visible_at for f in flushed)
    first_rows = min(flushed, key=lambda f: f.visible_at).rows
    rate = (count - first_rows) / (last_insert - first_insert)
    return _throughput("meterline sink clickhouse, draining a backlog of aggregates", count, rate)


def _throughput(what: str, rows: int, rate: float) -> dict[str, object]:
    """A row of the report that measures rows/s, not latency."""
    return {
        "what": what,
        "rows": rows,
        "rows/s": round(rate),
        "latency median ms": None,
        "latency p99 ms": None,
    }


def _ratio(
    drains: list[dict[str, object]], baselines: list[dict[str, object]], count: int
) -> dict[str, object]:
    drain = statistics.median(_rate(row) for row in drains)
    baseline = statistics.median(_rate(row) for row in baselines)
    return _throughput(
        f"median drain / median baseline of {len(drains)} pairs: {drain / baseline:.2f}x", count, drain
    )


def _rate(row: dict[str, object]) -> int:
    rate = row["rows/s"]
    assert isinstance(rate, int), row
    return rate


def _latency(config: Config, bootstrap: str, dsn: str, rate: int, seconds: int) -> dict[str, object]:
    sink = SinkThread(config, bootstrap, dsn)
    sink.start()
    time.sleep(8)  # joined the group
    serde = AvroSerde()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    aggregates = _aggregates(rate * seconds, seed=3)
    started = time.monotonic()
    for n, aggregate in enumerate(aggregates):
        producer.produce(config.topics.aggregates, serde.encode_aggregate(aggregate), aggregate.customer_id)
        producer.poll(0)
        if n % 100 == 0:
            time.sleep(max(0.0, started + n / rate - time.monotonic()))
    producer.flush()
    sink.stop_when_committed(read_ends(bootstrap, [config.topics.aggregates]))
    latencies = sorted(f.visible_at * 1000 - t for f in sink.flushed for t in f.record_times_ms)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    return {
        "what": f"meterline sink clickhouse, {rate:,} aggregates/s arriving (batch_seconds "
        f"{config.clickhouse.batch_seconds:g})",
        "rows": len(latencies),
        "rows/s": None,
        "latency median ms": round(statistics.median(latencies)),
        "latency p99 ms": round(p99),
    }


if __name__ == "__main__":
    main()
