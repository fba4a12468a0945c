"""`meterline sink clickhouse` against the broker and a real ClickHouse engine: exact totals through
SIGKILLs and an unavailable target, and the migrations it relies on.

The target is the embedded engine (chdb) always, and a ClickHouse server too when CLICKHOUSE_DSN
names one (http://...) or a Docker engine answers (testcontainers); otherwise the server runs are
skipped with that reason. The embedded engine allows one process per directory, so the outcome is
read once the sink has stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meterline.core.config import Config
from meterline.core.kafka import read_ends
from meterline.produce import produce_workload
from meterline.schemas.codecs import AGGREGATE_ROW_BINARY
from meterline.schemas.records import WindowAggregate
from meterline.schemas.serde import AvroSerde
from meterline.sinks.clickhouse import queries
from meterline.sinks.clickhouse.client import connect
from meterline.sinks.clickhouse.migrate import DowngradeError, available, migrate
from meterline.sinks.clickhouse.rows import AGGREGATE_COLUMNS
from tests.support.clickhouse_sink import assert_exact, fresh, query, run_pipeline
from tests.support.pipeline import SinkProcess, Workers, workload


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
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for title, sql in queries.ALL.items():
        assert f"```sql\n{sql}\n```" in readme, (
            f"the README's {title!r} query differs from sinks/clickhouse/queries.py"
        )
        assert query(config, clickhouse_dsn, sql), f"{title!r} returned no rows"


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


def test_the_row_binary_rows_of_aggregates_are_the_tables_columns_and_read_back_as_sent(
    config: Config, clickhouse_dsn: str
) -> None:
    """The sink inserts the compiled reader's RowBinary rows as they are: their types are pinned
    here to the table's, and a row read back is the aggregate that was sent."""
    fresh(config, clickhouse_dsn)
    serde = AvroSerde()
    sent = [
        WindowAggregate(
            "cust-é", "api_calls", 1_780_000_000_000, 1_780_000_060_000, 3, 2**62, -5, 7, 2, 1_780_000_070_123
        ),
        WindowAggregate("c" * 300, "egress_bytes", 0, 60_000, 65_535, 0, 0, 2**64 - 1 >> 1, 2**31 - 1, 0),
    ]
    client = connect(config, clickhouse_dsn)
    try:
        types = dict(
            client.query(
                "SELECT name, type FROM system.columns "
                "WHERE database = currentDatabase() AND table = 'usage_window_revisions'"
            ).result_rows
        )
        assert {name: types[name] for name, _ in AGGREGATE_ROW_BINARY} == dict(AGGREGATE_ROW_BINARY)
        rows = b"".join(serde.decode_aggregate_row_binary(serde.encode_aggregate(a)) for a in sent)
        client.raw_insert("usage_window_revisions", list(AGGREGATE_COLUMNS), rows, fmt="RowBinary")
        columns = ", ".join(
            f"toUnixTimestamp64Milli({c})" if "DateTime" in t else c for c, t in AGGREGATE_ROW_BINARY
        )
        back = client.query(f"SELECT {columns} FROM usage_window_revisions FINAL ORDER BY meter").result_rows
    finally:
        client.close()
    assert [WindowAggregate(*row) for row in back] == sent


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
