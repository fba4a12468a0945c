"""ClickHouse at scale: the window, revision and ledger tables partitioned by month (migration 0011
rebuilds them in place, exactly, and can be run again after a crash), the analysts' rollups merged
partition by partition, and, with `clickhouse.cluster` set, every statement ON CLUSTER with
replicated tables. On the embedded engine; the cluster's SQL is checked as text, and run for real
where a ClickHouse cluster is given (CLICKHOUSE_DSN=http://... and METERLINE_TEST_CLICKHOUSE_CLUSTER)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from meterline.config import load_config
from meterline.sinks.clickhouse.client import connect
from meterline.sinks.clickhouse.migrate import available, for_cluster, migrate
from meterline.sinks.clickhouse.rows import REVISION_COLUMNS
from meterline.sinks.stripe.ledger import COLUMNS

OCT_20 = 1_792_454_400_000  # 2026-10-20T00:00:00Z
NOV_1 = 1_793_491_200_000  # 2026-11-01T00:00:00Z
MINUTE = 60_000
PARTITIONED = ("usage_window_revisions", "usage_windows", "stripe_reports")


def revision(start: int, value: int, revision: int = 0, customer: str = "cust-1") -> list[object]:
    return [customer, "api_calls", start, start + MINUTE, 0, revision, value, value, 1, start + MINUTE]


def ledger_row(start: int, status: str) -> list[object]:
    return [
        "cust-1",
        "api_calls",
        start,
        0,
        0,
        f"id-{start}",
        "meter_events",
        "cus_1",
        "api_calls",
        5,
        status,
    ]


LEDGER_COLUMNS = list(COLUMNS[:11])  # the identity, the report and its status


def totals(client: Any) -> dict[str, Any]:
    return {
        "windows": client.query(
            "SELECT toYYYYMM(window_start), sum(value), count() FROM usage_windows FINAL "
            "GROUP BY 1 ORDER BY 1"
        ).result_rows,
        "revisions": client.query("SELECT count() FROM usage_window_revisions FINAL").result_rows,
        "ledger": client.query(
            "SELECT status, count() FROM stripe_reports FINAL GROUP BY status ORDER BY status"
        ).result_rows,
        "daily": client.query("SELECT day, quantity FROM usage_daily ORDER BY day").result_rows,
    }


def at_version_10_with_data(tmp_path: Path) -> Any:
    client = connect(load_config(None, {}), f"chdb://{tmp_path / 'clickhouse'}")
    assert migrate(client, 400, available()[:10]).current == 10
    rows = [
        revision(OCT_20, 7),
        revision(NOV_1, 5),
        revision(NOV_1, 9, revision=1),
        revision(NOV_1 + MINUTE, 3),
    ]
    client.insert("usage_window_revisions", rows, column_names=list(REVISION_COLUMNS))
    ledger = [
        ledger_row(OCT_20, "confirmed"),
        ledger_row(NOV_1, "sent"),
        ledger_row(NOV_1 + MINUTE, "failed"),
    ]
    client.insert("stripe_reports", ledger, column_names=LEDGER_COLUMNS)
    return client


def partition_keys(client: Any) -> dict[str, str]:
    rows = client.query("SELECT name, partition_key FROM system.tables WHERE database = currentDatabase()")
    return {name: key for name, key in rows.result_rows if name in PARTITIONED}


def test_the_tables_are_rebuilt_partitioned_by_month_with_every_row(tmp_path: Path) -> None:
    client = at_version_10_with_data(tmp_path)
    try:
        before = totals(client)
        assert before["windows"] == [(202610, 7, 1), (202611, 12, 2)]
        assert migrate(client, 400).current == len(available())
        assert partition_keys(client) == {t: "toYYYYMM(window_start)" for t in PARTITIONED}
        assert totals(client) == before
        names = {n for (n,) in client.query("SHOW TABLES").result_rows}
        assert not any(n.endswith("_unpartitioned") for n in names)
        # The materialized view still derives the windows from the revisions.
        client.insert(
            "usage_window_revisions", [revision(NOV_1, 11, revision=2)], column_names=list(REVISION_COLUMNS)
        )
        assert totals(client)["windows"] == [(202610, 7, 1), (202611, 14, 2)]
        # A month's rollup reads that month's parts only: October's are skipped.
        november = "SELECT * FROM usage_daily WHERE day >= '2026-11-01' AND day < '2026-12-01'"
        plan = "\n".join(row[0] for row in client.query(f"EXPLAIN indexes = 1 {november}").result_rows)
        parts = dict(
            client.query(
                "SELECT partition, count() FROM system.parts WHERE table = 'usage_windows' AND active "
                "GROUP BY partition"
            ).result_rows
        )
        assert parts["202610"] >= 1 and f"Parts: {parts['202611']}/{sum(parts.values())}" in plan, plan
    finally:
        client.close()


def test_a_rebuild_cut_short_after_the_exchange_finishes_when_run_again(tmp_path: Path) -> None:
    """Crashed right after the revisions' exchange: the table is partitioned and empty, its old
    rows in the twin. migrate runs 0011 again, which copies them and goes on."""
    client = at_version_10_with_data(tmp_path)
    try:
        before = totals(client)
        [partitioning] = [m for m in available() if m.version == 11]
        first_steps = partitioning.statements(client)[:3]
        assert (
            first_steps[2]
            == "EXCHANGE TABLES usage_window_revisions AND usage_window_revisions_unpartitioned"
        )
        for statement in first_steps:
            client.command(statement)
        assert client.query("SELECT count() FROM usage_window_revisions").result_rows == [(0,)]
        migrate(client, 400)
        assert totals(client) == before
        assert partition_keys(client) == {t: "toYYYYMM(window_start)" for t in PARTITIONED}
    finally:
        client.close()


def test_on_a_cluster_every_statement_runs_on_every_node_with_replicated_tables() -> None:
    create = for_cluster(
        "CREATE TABLE IF NOT EXISTS usage_windows (a String) ENGINE = ReplacingMergeTree(r) ORDER BY a",
        "billing",
    )
    assert create == (
        "CREATE TABLE IF NOT EXISTS usage_windows ON CLUSTER 'billing' (a String) ENGINE = "
        "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', r) "
        "ORDER BY a"
    )
    assert for_cluster("INSERT INTO t SELECT * FROM u", "billing") == "INSERT INTO t SELECT * FROM u"
    assert (
        for_cluster("CREATE VIEW IF NOT EXISTS v AS SELECT 1", "")
        == "CREATE VIEW IF NOT EXISTS v AS SELECT 1"
    )
    for migration in available():
        if migration.kind != "sql":
            continue
        for statement in migration.statements(None):
            clustered = for_cluster(statement, "billing")
            if re.match(r"(CREATE|ALTER|DROP|EXCHANGE|RENAME)\b", statement):
                assert " ON CLUSTER 'billing'" in clustered, statement
            engines = re.findall(r"ENGINE = (\w+)", clustered)
            assert all(e.startswith("Replicated") for e in engines), clustered
    # 0011's statements (a database at version 10 would run these).
    sample = [
        "CREATE TABLE IF NOT EXISTS stripe_reports_unpartitioned AS stripe_reports ENGINE = "
        "ReplacingMergeTree(updated_at) PARTITION BY toYYYYMM(window_start) ORDER BY (customer_id)",
        "EXCHANGE TABLES stripe_reports AND stripe_reports_unpartitioned",
        "DROP TABLE IF EXISTS stripe_reports_unpartitioned",
    ]
    assert [for_cluster(s, "billing").count("ON CLUSTER") for s in sample] == [1, 1, 1]


@pytest.mark.skipif(
    not (
        os.environ.get("CLICKHOUSE_DSN", "").startswith("http")
        and os.environ.get("METERLINE_TEST_CLICKHOUSE_CLUSTER")
    ),
    reason="no ClickHouse cluster (CLICKHOUSE_DSN=http://... and METERLINE_TEST_CLICKHOUSE_CLUSTER=<name>)",
)
def test_migrations_run_on_a_real_cluster() -> None:
    config = load_config()
    client = connect(config)
    try:
        cluster = os.environ["METERLINE_TEST_CLICKHOUSE_CLUSTER"]
        assert migrate(client, 400, cluster=cluster).current == len(available())
        assert migrate(client, 400, cluster=cluster).applied == []
        engines = dict(
            client.query(
                "SELECT name, engine FROM system.tables WHERE database = currentDatabase()"
            ).result_rows
        )
        assert engines["usage_windows"] == "ReplicatedReplacingMergeTree"
    finally:
        client.close()
