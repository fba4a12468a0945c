"""The window, revision and ledger tables partitioned by the month of window_start, and the
analysts' rollups merged partition by partition: a query on a month reads that month's parts
only, and FINAL never merges across months (rows of one key always share a partition, as the
partition key is a function of the sorting key).

A table cannot be partitioned in place. Each one not yet partitioned is rebuilt: an empty
partitioned twin is created as the table, the two are exchanged (atomic), and the rows are copied
from the old table, now the twin, which is then dropped. A row written meanwhile lands in one or
the other, and ends up in the table either way; rows copied twice collapse under FINAL, as every
table is a ReplacingMergeTree of the row's identity. usage_windows, which the materialized view
derives from the revisions, is rebuilt from them. Run again after a crash, it goes on from where
the database is: this module returns the statements still to run (sinks/clickhouse/migrate.py).
"""

from __future__ import annotations

from typing import Any

REVISIONS, WINDOWS, LEDGER = "usage_window_revisions", "usage_windows", "stripe_reports"
ENGINES = {
    REVISIONS: "ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(window_start) "
    "ORDER BY (customer_id, meter, window_start, source_partition, revision) "
    "SETTINGS non_replicated_deduplication_window = 10000",
    WINDOWS: "ENGINE = ReplacingMergeTree(revision) PARTITION BY toYYYYMM(window_start) "
    "ORDER BY (customer_id, meter, window_start, source_partition)",
    LEDGER: "ENGINE = ReplacingMergeTree(updated_at) PARTITION BY toYYYYMM(window_start) "
    "ORDER BY (customer_id, meter, window_start, source_partition, revision)",
}
WINDOW_COLUMNS = (
    "customer_id, meter, window_start, window_end, source_partition, revision, value, event_count, closed_at"
)
ROLLUPS = {
    "usage_hourly": ("toStartOfHour(window_start)", "hour"),
    "usage_daily": ("toDate(window_start)", "day"),
}


def statements(client: Any) -> list[str]:
    tables = dict(
        client.query(
            "SELECT name, partition_key FROM system.tables WHERE database = currentDatabase()"
        ).result_rows
    )
    steps: list[str] = []
    for table, engine in ENGINES.items():  # the revisions first: usage_windows is rebuilt from them
        twin = f"{table}_unpartitioned"
        if not tables.get(table):
            steps += [
                f"DROP TABLE IF EXISTS {twin}",  # an empty twin left by a crash before the exchange
                f"CREATE TABLE IF NOT EXISTS {twin} AS {table} {engine}",
                f"EXCHANGE TABLES {table} AND {twin}",
            ]
        elif twin not in tables:
            continue  # partitioned, and its old rows copied
        if table == WINDOWS:
            steps.append(f"INSERT INTO {WINDOWS} SELECT {WINDOW_COLUMNS} FROM {REVISIONS}")
        else:
            steps.append(f"INSERT INTO {table} SELECT * FROM {twin}")
        steps.append(f"DROP TABLE IF EXISTS {twin}")
    for view, (bucket, name) in ROLLUPS.items():
        steps += [
            f"DROP VIEW IF EXISTS {view}",
            f"CREATE VIEW IF NOT EXISTS {view} AS SELECT customer_id, meter, {bucket} AS {name}, "
            "sum(value) AS quantity, sum(event_count) AS events, countIf(revision > 0) AS corrected_windows "
            f"FROM {WINDOWS} FINAL GROUP BY customer_id, meter, {name} "
            "SETTINGS do_not_merge_across_partitions_select_final = 1",
        ]
    return steps
