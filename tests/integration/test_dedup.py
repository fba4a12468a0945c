"""Issue 34 through the roles, as a user meets it: `meterline emit`, a `meterline stream` worker and
the ClickHouse sink. A late event reopens a window whose ids the old one-hour retention had let
go, and its retry a moment later is billed once."""

from __future__ import annotations

import time
from pathlib import Path

from meterline.compose import clickhouse_sink
from meterline.core.config import Config
from meterline.core.kafka import read_ends
from meterline.schemas.serde import AvroSerde
from meterline.sinks.clickhouse.client import connect
from meterline.streams.windows import window_start
from tests.support.apache_kafka import on_apache_kafka  # noqa: F401  (this module runs on Apache Kafka)
from tests.support.cli import meterline
from tests.support.clickhouse_sink import fresh
from tests.support.kafka import read_messages
from tests.support.pipeline import HOUR_MS, Workers
from tests.support.sinks import run_sink

MINUTE_MS = 60_000


def test_a_retry_into_a_reopened_window_is_billed_once_through_the_roles(
    config: Config, workers: Workers, tmp_path: Path
) -> None:
    now = int(time.time() * 1000)  # the events are stamped relative to the records' own time
    window = window_start(now - 3 * HOUR_MS, config.windows.size_ms)

    def emit(event_id: str, quantity: int, timestamp: int) -> None:
        sent = meterline(
            "emit",
            "--customer",
            "cust-w",
            "--meter",
            "egress_bytes",
            "--quantity",
            str(quantity),
            "--timestamp",
            str(timestamp),
            "--event-id",
            event_id,
            env=workers.env,
        )
        assert sent.returncode == 0, sent.stderr

    emit("A", 10, window + 1_000)
    emit("B", 1, window + 70 * MINUTE_MS)  # closes the window
    emit("C", 1, now - 10 * MINUTE_MS)  # the watermark passes its close plus an hour
    emit("D", 5, window + 2_000)  # a correction reopens it
    emit("D", 5, window + 2_000)  # the retry, a moment later
    workers.start("w1")

    # One customer: its aggregates share a partition, in the order they were closed. The last is
    # C's window, closed by the tick of the quiet partition: everything before it is there then.
    last_window = window_start(now - 10 * MINUTE_MS, config.windows.size_ms)
    serde = AvroSerde()
    aggregates: list[tuple[int, int, int, int]] = []
    deadline = time.monotonic() + 60
    while last_window not in [a[0] for a in aggregates]:
        assert time.monotonic() < deadline, (aggregates, workers.logs())
        count = len(aggregates) + 1
        messages = read_messages(config.kafka.bootstrap, config.topics.aggregates, count, timeout=5)
        aggregates = sorted(
            (a.window_start, a.revision, a.value, a.delta)
            for a in (serde.decode_aggregate(m.value() or b"") for m in messages)
        )
    assert aggregates == [
        (window, 0, 10, 10),
        (window, 1, 15, 5),
        (window_start(window + 70 * MINUTE_MS, config.windows.size_ms), 0, 1, 1),
        (last_window, 0, 1, 1),
    ]

    dsn = f"chdb://{tmp_path / 'clickhouse'}"
    fresh(config, dsn)
    ends = read_ends(config.kafka.bootstrap, [config.topics.aggregates])
    run_sink(
        clickhouse_sink(config, config.kafka.bootstrap, dsn=dsn, group_id="test-dedup-ch"),
        config.kafka.bootstrap,
        ends,
    )
    client = connect(config, dsn)
    rows = client.query(
        "SELECT toUnixTimestamp64Milli(window_start), sum(value) FROM usage_windows FINAL "
        "WHERE customer_id = 'cust-w' GROUP BY window_start ORDER BY window_start"
    ).result_rows
    assert rows[0] == (window, 15)
    assert len(rows) == 3
