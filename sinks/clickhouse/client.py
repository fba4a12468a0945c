"""One way to reach ClickHouse for every command: clickhouse-connect, by DSN (DESIGN §5).

`chdb:///abs/path` is the embedded engine in this process; only one process at a time may hold a
data directory, so opening one that is held fails with `ClickHouseBusyError` naming the holder.
`http(s)://host:8123` is a server; the password comes from [clickhouse] password, never the DSN
that gets logged.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

from meterline.core.config import Config
from meterline.core.errors import MeterlineError

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


class ClickHouseError(MeterlineError):
    pass


class ClickHouseUnavailableError(ClickHouseError):
    """The target cannot be reached now (refused, timed out, directory held): worth retrying."""


class ClickHouseBusyError(ClickHouseUnavailableError):
    """Another process holds the embedded engine's data directory."""


def connect(config: Config, dsn: str | None = None) -> Client:
    """A client for the configured target (or `dsn`)."""
    import clickhouse_connect

    target = dsn or config.clickhouse.dsn
    if not target:  # the composition root resolves the local stack's (meterline.devstack.resolve)
        raise ClickHouseUnavailableError("no ClickHouse: set CLICKHOUSE_DSN, or use the local stack")
    if target.startswith("chdb://") and importlib.util.find_spec("chdb") is None:
        raise ClickHouseUnavailableError(
            "the embedded ClickHouse (chdb) is not installed: `pip install 'meterline[embedded]'`, "
            "or set CLICKHOUSE_DSN to a ClickHouse server"
        )
    try:
        if target.startswith("chdb://"):
            return clickhouse_connect.get_client(dsn=target)
        return clickhouse_connect.get_client(
            dsn=target,
            password=config.clickhouse.password.reveal(),
            connect_timeout=5,
            # One client serves every thread of `meterline run` (the API, reconcile, alerts,
            # notices): with the session id clickhouse-connect generates by default, a server
            # refuses a query while another of the same session runs (SESSION_IS_LOCKED).
            # meterline keeps no session state (no temporary tables, no SET).
            autogenerate_session_id=False,
        )
    except Exception as exc:  # clickhouse-connect raises several types for an unreachable target
        raise unavailable(target, exc) from exc


def unavailable(dsn: str, exc: BaseException) -> ClickHouseUnavailableError:
    """The error to raise for `exc`, met while reaching `dsn`."""
    if dsn.startswith("chdb://"):
        directory = Path(dsn.removeprefix("chdb://"))
        # chdb reports a held directory only on stderr ("Cannot lock file"); the exception just
        # says the engine failed to start. The status file names the holder.
        if _holder(directory) is not None:
            return ClickHouseBusyError(busy_message(directory))
    return ClickHouseUnavailableError(f"ClickHouse at {redact_dsn(dsn)} is unavailable: {exc}")


def busy_message(directory: Path) -> str:
    holder = _holder(directory)
    who = f"process {holder}" if holder else "another process"
    return (
        f"the embedded ClickHouse at {directory} is held by {who}; the embedded engine allows one "
        "process per data directory. Stop that process (or run your query through it), or point "
        "CLICKHOUSE_DSN at a ClickHouse server."
    )


def _holder(directory: Path) -> str | None:
    """`PID (command line)` of another live process holding `directory`, from the status file
    ClickHouse writes there, or None."""
    try:
        lines = (directory / "status").read_text().splitlines()
    except OSError:
        return None
    pid = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("PID:")), None)
    if pid is None or not pid.isdigit() or int(pid) == os.getpid() or not Path(f"/proc/{pid}").exists():
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return pid
    return f"{pid} ({command})" if command else pid


def redact_dsn(dsn: str) -> str:
    """Hide a password embedded in a DSN (scheme://user:password@host)."""
    if "@" in dsn and "://" in dsn:
        scheme, rest = dsn.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return dsn
