"""`meterline sink clickhouse` against the broker and a real ClickHouse engine: exact totals through
SIGKILLs and an unavailable target, and the migrations it relies on.

The target is the embedded engine (chdb) always, and a ClickHouse server too when CLICKHOUSE_DSN
names one (http://...) or a Docker engine answers (testcontainers); otherwise the server runs are
skipped with that reason. The embedded engine allows one process per directory, so the outcome is
read once the sink has stopped.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from core.config import Config
from core.kafka import read_ends
from meterline.produce import produce_workload
from meterline.workload import Expected
from sinks.clickhouse import queries
from sinks.clickhouse.client import connect
from sinks.clickhouse.migrate import DowngradeError, available, migrate
from tests.conftest import _docker_answers
from tests.pipeline import PacedProducer, SinkProcess, Workers, wait_until_exact, workload

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


def test_a_workload_through_stream_and_sink_is_exact_in_clickhouse(
    config: Config, workers: Workers, sink: SinkProcess, clickhouse_dsn: str
) -> None:
    spec = workload(30_000, seed=21)
    _, expected = produce_workload(config, config.kafka.bootstrap, spec)
    dead = run_pipeline(config, workers, expected.to_json(spec))
    sink.start()
    sink.wait_caught_up(config.kafka.bootstrap, read_ends(config.kafka.bootstrap, config.topics.all()))
    sink.stop()
    assert_exact(config, clickhouse_dsn, expected, dead)
    # The README's analysts' queries are these, and they answer on this data.
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for title, sql in queries.ALL.items():
        assert f"```sql\n{sql}\n```" in readme, (
            f"the README's {title!r} query differs from sinks/clickhouse/queries.py"
        )
        assert query(config, clickhouse_dsn, sql), f"{title!r} returned no rows"


def test_sigkill_the_sink_three_times_mid_run_changes_no_total(
    config: Config, workers: Workers, sink: SinkProcess, clickhouse_dsn: str
) -> None:
    rng = random.Random()
    workers.start("w1")
    sink.start()
    producing = PacedProducer(config, workload(100_000, seed=22), seconds=25)
    producing.start()
    workers.wait_processing("w1")
    for _ in range(3):
        time.sleep(rng.uniform(2, 7))
        sink.kill()
        sink.start()
    document = producing.finish()
    dead = sum(wait_until_exact(config, document, workers, timeout=240).dlq_found.values())
    workers.stop_all()
    sink.wait_caught_up(config.kafka.bootstrap, read_ends(config.kafka.bootstrap, config.topics.all()))
    sink.stop()
    assert_exact(config, clickhouse_dsn, producing.expected, dead)


def test_an_unavailable_target_delays_rows_but_loses_and_doubles_none(
    config: Config, workers: Workers, sink: SinkProcess, clickhouse_dsn: str, tmp_path: Path
) -> None:
    if not clickhouse_dsn.startswith("chdb://"):
        pytest.skip("made unavailable by holding the embedded engine's directory")
    spec = workload(20_000, seed=23)
    _, expected = produce_workload(config, config.kafka.bootstrap, spec)
    dead = run_pipeline(config, workers, expected.to_json(spec))
    # Another process holds the directory: the sink's inserts fail until it lets go.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import clickhouse_connect, sys, time; c = clickhouse_connect.get_client(dsn=sys.argv[1]); "
            "c.query('SELECT 1'); print('holding', flush=True); time.sleep(float(sys.argv[2]))",
            clickhouse_dsn,
            "8",
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
    sink.start()
    assert holder.wait(timeout=60) == 0
    sink.wait_caught_up(config.kafka.bootstrap, read_ends(config.kafka.bootstrap, config.topics.all()))
    sink.stop()
    assert "held by process" in sink.logs() and "retrying the insert" in sink.logs()
    assert_exact(config, clickhouse_dsn, expected, dead)


def test_migrations_are_idempotent_and_refuse_a_downgrade(
    config: Config, clickhouse_dsn: str, tmp_path: Path
) -> None:
    fresh(config, clickhouse_dsn)
    client = connect(config, clickhouse_dsn)
    try:
        again = migrate(client, 30)
        assert again.applied == [] and again.current == len(available())
        assert "toIntervalDay(30)" in str(client.command("SHOW CREATE TABLE usage_events"))
        client.insert(
            "schema_migrations", [[99, "from_the_future", "x"]], column_names=["version", "name", "checksum"]
        )
        with pytest.raises(DowngradeError, match="schema version 99, newer than this meterline knows"):
            migrate(client, 30)
    finally:
        client.close()


def test_a_second_process_on_the_embedded_directory_is_told_who_holds_it(
    config: Config, tmp_path: Path
) -> None:
    dsn = f"chdb://{tmp_path / 'clickhouse'}"
    holder = connect(config, dsn)
    try:
        holder.query("SELECT 1")
        result = subprocess.run(
            [sys.executable, "-m", "meterline.cli", "sql", "SELECT 1"],
            env={**os.environ, "CLICKHOUSE_DSN": dsn, "METERLINE__DEV__STATE_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
        )
    finally:
        holder.close()
    assert result.returncode == 1
    assert f"held by process {os.getpid()}" in result.stderr and "Traceback" not in result.stderr
    assert "one process per data directory" in result.stderr


def test_sql_is_read_only_and_prints_csv(config: Config, tmp_path: Path) -> None:
    dsn = f"chdb://{tmp_path / 'clickhouse'}"
    fresh(config, dsn)
    env = {**os.environ, "CLICKHOUSE_DSN": dsn, "METERLINE__DEV__STATE_DIR": str(tmp_path)}

    def sql(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meterline.cli", "sql", *args], env=env, capture_output=True, text=True
        )

    shown = sql(
        "SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name", "--format", "csv"
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == "name" and "usage_windows" in shown.stdout.splitlines()
    refused = sql("DROP TABLE usage_windows")
    assert refused.returncode == 1 and "readonly" in refused.stderr.lower()
    missing = sql("SELECT * FROM no_such_table")
    assert missing.returncode == 1 and "no_such_table" in missing.stderr and "Traceback" not in missing.stderr
