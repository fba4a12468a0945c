"""The ClickHouse sink under test: its target (embedded, or a server when one is given), a sink
process, and exactness checks against the generator's totals."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from meterline.core.config import Config
from meterline.sinks.clickhouse.client import connect
from meterline.sinks.clickhouse.migrate import migrate
from meterline.workload import Expected
from tests.conftest import _docker_answers
from tests.support.pipeline import SinkProcess, Workers, wait_until_exact

DAY_MS = 86_400_000


@pytest.fixture(params=["embedded", "server"])
def clickhouse_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "embedded":
        yield f"chdb://{tmp_path / 'clickhouse'}"
        return
    given = os.environ.get("CLICKHOUSE_DSN", "")
    if given.startswith(("http://", "https://")):
        yield given  # tables are dropped first by `fresh`, so the server may be shared
        return
    if not _docker_answers():
        pytest.skip("no ClickHouse server: set CLICKHOUSE_DSN=http://... or run a Docker engine")
    from testcontainers.clickhouse import ClickHouseContainer

    # The HTTP port, which clickhouse-connect speaks (the container's default URL is the native one).
    with ClickHouseContainer("clickhouse/clickhouse-server:24.8", port=8123) as server:
        yield server.get_connection_url().replace("clickhouse://", "http://", 1)


def fresh(config: Config, dsn: str) -> None:
    """Migrated, empty tables (a server may hold an earlier run's)."""
    client = connect(config, dsn)
    try:
        if dsn.startswith("http"):
            for table in ("usage_windows_latest", "usage_hourly", "usage_daily"):
                client.command(f"DROP VIEW IF EXISTS {table}")
            for table in (
                "usage_window_revisions",
                "usage_windows",
                "usage_events",
                "dlq_events",
                "schema_migrations",
            ):
                client.command(f"DROP TABLE IF EXISTS {table}")
        migrate(client, config.clickhouse.raw_events_ttl_days)
    finally:
        client.close()


def query(config: Config, dsn: str, sql: str) -> list[tuple[Any, ...]]:
    client = connect(config, dsn)
    try:
        return list(client.query(sql).result_rows)
    finally:
        client.close()


@pytest.fixture
def sink(workers: Workers, clickhouse_dsn: str, config: Config, tmp_path: Path) -> Iterator[SinkProcess]:
    fresh(config, clickhouse_dsn)
    env = {
        **workers.env,
        "CLICKHOUSE_DSN": clickhouse_dsn,
        "METERLINE__CLICKHOUSE__BATCH_SECONDS": "0.5",
        "METERLINE__CLICKHOUSE__BATCH_ROWS": "3000",
    }
    process = SinkProcess("clickhouse", env, tmp_path, stop_timeout=60, catch_up_timeout=180)
    yield process
    if process.process is not None and process.process.poll() is None:
        process.process.kill()


def assert_exact(config: Config, dsn: str, expected: Expected, dlq_records: int) -> None:
    """Per window and per customer/day, FINAL totals equal the expected ones exactly; every
    revision of every window is there once."""
    windows = {
        (customer, meter, start): [value, count]
        for customer, meter, start, value, count in query(
            config,
            dsn,
            "SELECT customer_id, meter, toUnixTimestamp64Milli(window_start), sum(value), sum(event_count) "
            "FROM usage_windows FINAL GROUP BY customer_id, meter, window_start",
        )
    }
    assert windows == expected.totals
    daily: dict[tuple[str, str, str], int] = {}
    for (customer, meter, start), (value, _) in expected.totals.items():
        day = datetime.fromtimestamp(start / 1000, UTC).date().isoformat()
        daily[(customer, meter, day)] = daily.get((customer, meter, day), 0) + value
    assert {
        (c, m, d.isoformat()): q
        for c, m, d, q in query(config, dsn, "SELECT customer_id, meter, day, quantity FROM usage_daily")
    } == daily
    [(gaps, delta_mismatches)] = query(
        config,
        dsn,
        "SELECT countIf(revisions != max_revision + 1), countIf(deltas != latest) FROM ("
        "  SELECT count() AS revisions, max(revision) AS max_revision, sum(delta) AS deltas,"
        "         argMax(value, revision) AS latest"
        "  FROM usage_window_revisions FINAL GROUP BY customer_id, meter, window_start, source_partition)",
    )
    [(revision_rows, distinct)] = query(
        config,
        dsn,
        "SELECT count(), uniqExact(customer_id, meter, window_start, source_partition, revision) "
        "FROM usage_window_revisions FINAL",
    )
    assert revision_rows == distinct  # no duplicate row after FINAL
    assert gaps == 0 and delta_mismatches == 0  # revisions 0..n all there; their deltas sum to the value
    [(dead,)] = query(config, dsn, "SELECT count() FROM dlq_events FINAL")
    assert dead == dlq_records
    [(events,)] = query(config, dsn, "SELECT count() FROM usage_events FINAL")
    assert events == sum(count for _, count in expected.totals.values()) + expected.non_billable


def run_pipeline(config: Config, workers: Workers, document: dict[str, Any]) -> int:
    """The stream worker until its outputs are exact; returns the number of dead letters."""
    workers.start("w1")
    result = wait_until_exact(config, document, workers, timeout=180)
    workers.stop_all()
    return sum(result.dlq_found.values())
