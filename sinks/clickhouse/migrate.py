"""Versioned, idempotent schema migrations: sinks/clickhouse/migrations/NNNN_name.sql, applied in
order by `meterline migrate`.

`schema_migrations` records each version that ran, with a checksum of its SQL. Running twice
applies nothing the second time; a database migrated by a newer meterline (a version this code
does not have) is refused rather than used with a schema it does not know; an applied migration
whose file changed since is refused too (write a new migration instead). Every statement is
`IF NOT EXISTS`-safe, so a migration cut short by a crash is simply run again.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sinks.clickhouse.client import ClickHouseError

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

MIGRATIONS = Path(__file__).parent / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]

    def statements(self) -> list[str]:
        without_comments = "\n".join(
            line for line in self.sql.splitlines() if not line.lstrip().startswith("--")
        )
        return [s.strip() for s in without_comments.split(";") if s.strip()]


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
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise ClickHouseError(f"{path}: migration files are named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise ClickHouseError(f"{directory}: migration versions must run 1, 2, 3... without gaps: {versions}")
    return found


def migrate(
    client: Client, raw_events_ttl_days: int, migrations: Sequence[Migration] | None = None
) -> MigrationResult:
    """Bring the database to the newest version; then set the raw events' TTL from the config."""
    known = list(migrations if migrations is not None else available())
    client.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, checksum String, "
        "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = MergeTree ORDER BY version"
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
        for statement in migration.statements():
            client.command(statement)
        client.insert(
            "schema_migrations",
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
        )
        applied.append(migration)
    client.command(
        f"ALTER TABLE usage_events MODIFY TTL toDateTime(timestamp) + INTERVAL {int(raw_events_ttl_days)} DAY"
    )
    return MigrationResult(applied, newest)
