"""Versioned, idempotent schema migrations: sinks/clickhouse/migrations/NNNN_name.sql (or .py),
applied in order by `meterline migrate`.

`schema_migrations` records each version that ran, with a checksum of its file. Running twice
applies nothing the second time; a database migrated by a newer meterline (a version this code
does not have) is refused rather than used with a schema it does not know; an applied migration
whose file changed since is refused too (write a new migration instead). Every SQL statement is
`IF NOT EXISTS`-safe, so a migration cut short by a crash is simply run again. A migration that
must look before it acts (rebuilding a table) is a Python module whose `statements(client)`
returns the SQL still to run for the database as it is, so that it too can be run again.

With `clickhouse.cluster` set, every statement runs `ON CLUSTER` and every table is replicated
(`for_cluster`): a cluster of one shard and its replicas. Sharding (Distributed tables) is not
built.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meterline.sinks.clickhouse.client import ClickHouseError

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

MIGRATIONS = Path(__file__).parent / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sql|py)$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    source: str
    """The file's text: SQL, or a Python module defining statements(client)."""
    kind: str = "sql"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()[:16]

    def statements(self, client: Client) -> list[str]:
        if self.kind == "py":
            namespace: dict[str, Any] = {}
            exec(compile(self.source, f"{self.version:04d}_{self.name}.py", "exec"), namespace)
            found: list[str] = namespace["statements"](client)
            return found
        return sql_statements(self.source)


def sql_statements(sql: str) -> list[str]:
    without_comments = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in without_comments.split(";") if s.strip()]


_DDL = re.compile(
    r"^(CREATE (?:TABLE|VIEW|MATERIALIZED VIEW) IF NOT EXISTS \S+|ALTER TABLE \S+|DROP (?:TABLE|VIEW) "
    r"IF EXISTS \S+|EXCHANGE TABLES \S+ AND \S+|RENAME TABLE \S+ TO \S+)",
    re.IGNORECASE,
)
_ENGINE = re.compile(r"ENGINE = (ReplacingMergeTree|MergeTree)(?:\(([^)]*)\))?")


def for_cluster(statement: str, cluster: str) -> str:
    """The statement for every node of `cluster`: DDL `ON CLUSTER`, tables replicated (their data
    under /clickhouse/tables/{shard}/{database}/{table}, one replica per {replica} macro). INSERTs
    and SELECTs are unchanged: replication carries the rows."""
    if not cluster:
        return statement
    statement = _DDL.sub(lambda m: f"{m.group(1)} ON CLUSTER '{cluster}'", statement, count=1)

    def replicated(match: re.Match[str]) -> str:
        arguments = ["'/clickhouse/tables/{shard}/{database}/{table}'", "'{replica}'"]
        if match.group(2):
            arguments.append(match.group(2))
        return f"ENGINE = Replicated{match.group(1)}({', '.join(arguments)})"

    return _ENGINE.sub(replicated, statement)


@dataclass(frozen=True)
class MigrationResult:
    applied: list[Migration]
    current: int
    """The database's version afterwards."""


class DowngradeError(ClickHouseError):
    pass


class ChangedMigrationError(ClickHouseError):
    pass


def available(directory: Path = MIGRATIONS) -> list[Migration]:
    found = []
    for path in sorted([*directory.glob("*.sql"), *directory.glob("*.py")], key=lambda p: p.name):
        match = _NAME.match(path.name)
        if match is None:
            raise ClickHouseError(f"{path}: migration files are named NNNN_name.sql or NNNN_name.py")
        found.append(Migration(int(match[1]), match[2], path.read_text(), match[3]))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise ClickHouseError(f"{directory}: migration versions must run 1, 2, 3... without gaps: {versions}")
    return found


def migrate(
    client: Client,
    raw_events_ttl_days: int,
    migrations: Sequence[Migration] | None = None,
    cluster: str = "",
) -> MigrationResult:
    """Bring the database to the newest version; then set the raw events' TTL from the config."""
    known = list(migrations if migrations is not None else available())
    client.command(
        for_cluster(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, checksum String, "
            "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = MergeTree ORDER BY version",
            cluster,
        )
    )
    done = {
        int(version): checksum
        for version, checksum in client.query("SELECT version, checksum FROM schema_migrations").result_rows
    }
    newest = len(known)
    ahead = sorted(v for v in done if v > newest)
    if ahead:
        raise DowngradeError(
            f"the database is at schema version {max(done)}, newer than this meterline knows ({newest}): "
            "it was migrated by a newer release. Upgrade meterline; a downgrade is not supported."
        )
    for migration in known:
        if migration.version in done and done[migration.version] != migration.checksum:
            raise ChangedMigrationError(
                f"migration {migration.version:04d}_{migration.name} changed after it was applied "
                f"(checksum {done[migration.version]} then, {migration.checksum} now): add a new "
                "migration instead of editing an applied one"
            )
    applied = []
    for migration in known:
        if migration.version in done:
            continue
        for statement in migration.statements(client):
            client.command(for_cluster(statement, cluster))
        client.insert(
            "schema_migrations",
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
        )
        applied.append(migration)
    ttl = (
        f"ALTER TABLE usage_events MODIFY TTL toDateTime(timestamp) + INTERVAL {int(raw_events_ttl_days)} DAY"
    )
    client.command(for_cluster(ttl, cluster))
    return MigrationResult(applied, newest)
