"""The Stripe sink's ledger, `stripe_reports` in ClickHouse: what was reported, how it ended,
with attempts, the last error and Stripe's request id. Rows are appended; the latest per identity
wins (ReplacingMergeTree on updated_at), so reads use FINAL. Every read and write of the table is
here: the sink's (`Ledger`), and what replay, reconcile, the dispute report and the webhook role
read of it or mark in it (the functions below).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from meterline.core.months import calendar_month
from meterline.schemas.records import AggregateIdentity, WindowAggregate
from meterline.sinks.clickhouse.queries import in_span, narrowed
from meterline.sinks.stripe.report import Outcome, Status, identifier

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

COLUMNS = (
    "customer_id",
    "meter",
    "window_start",
    "source_partition",
    "revision",
    "identifier",
    "mode",
    "stripe_customer",
    "stripe_event_name",
    "value",
    "status",
    "attempts",
    "error_code",
    "last_error",
    "stripe_request_id",
    "updated_at",
)


HELD_COLUMNS = ("held_record", "held_partition", "held_offset")
HELD = (
    "(status = 'waiting_for_customer' OR (status = 'pending' AND held_record != '')) "
    "AND window_start >= now64(3) - INTERVAL 40 DAY"
)
"""The revisions the ledger holds the record of: those waiting, and those taken up since whose report
is in flight (a crash then leaves them pending, and they are taken up again). None waits past 35
days (Stripe's limit), so a look reads the last two months' partitions only."""


class Entry(NamedTuple):
    """A ledger row to append."""

    aggregate: WindowAggregate
    stripe_customer: str
    stripe_event_name: str
    outcome: Outcome
    value: int | None = None
    """What Stripe was sent for the revision (a level's contribution); None: its delta."""


@dataclass(frozen=True)
class Consumed:
    """A record of usage.aggregates as the sink consumed it (a waiting revision's is held in the
    ledger)."""

    value: bytes
    partition: int
    offset: int


@dataclass(frozen=True)
class Waiting:
    waiting: int
    """Revisions waiting for Stripe to know the customer."""
    held: int
    """Those and the ones taken up whose reports are in flight."""
    earliest_window_start: int
    """Epoch ms: its horizon comes first (sinks.stripe.report.customer_wait_until)."""


class Reported(NamedTuple):
    """What a (customer, meter, month) has reported to Stripe so far."""

    total: int
    latest_window: int
    """The start of the latest window reported (epoch ms); -1 for none."""


class Ledger:
    def __init__(self, client: Client, mode: str) -> None:
        self.client = client
        self.mode = mode
        self._last_version = 0

    def statuses(self, identities: Iterable[AggregateIdentity]) -> dict[AggregateIdentity, Status]:
        """The current status of each identity the ledger knows."""
        return {i: Status(s) for i, s in self._of_each(identities, "toString(status)").items()}

    def values(self, identities: Iterable[AggregateIdentity]) -> dict[AggregateIdentity, int]:
        """What the ledger says each of these revisions sends (or sent) to Stripe."""
        return {i: int(v) for i, v in self._of_each(identities, "value").items()}

    def _of_each(self, identities: Iterable[AggregateIdentity], column: str) -> dict[AggregateIdentity, Any]:
        """`column` of the current row of each identity the ledger knows."""
        wanted = [tuple(i) for i in identities]
        if not wanted:
            return {}
        rows = self.client.query(
            f"SELECT customer_id, meter, toUnixTimestamp64Milli(window_start), source_partition, revision, "
            f"{column} FROM stripe_reports FINAL WHERE "
            "(customer_id, meter, toUnixTimestamp64Milli(window_start), source_partition, revision) "
            "IN %(wanted)s",
            parameters={"wanted": wanted},
        ).result_rows
        return {AggregateIdentity(c, m, int(w), int(p), int(r)): v for c, m, w, p, r, v in rows}

    def other_partitions_reported(self, aggregate: WindowAggregate) -> list[int]:
        """The source partitions other than the aggregate's whose revisions of the same window
        (customer, meter, window start) reached Stripe."""
        rows = self.client.query(
            "SELECT DISTINCT source_partition FROM stripe_reports FINAL WHERE customer_id = %(customer)s "
            "AND meter = %(meter)s AND toUnixTimestamp64Milli(window_start) = %(window)s "
            "AND source_partition != %(partition)s AND status IN ('sent', 'confirmed') ORDER BY 1",
            parameters={
                "customer": aggregate.customer_id,
                "meter": aggregate.meter,
                "window": aggregate.window_start,
                "partition": aggregate.source_partition,
            },
        ).result_rows
        return [int(p) for (p,) in rows]

    def window_reports(self, customer: str, meter: str, window_start: int) -> list[tuple[Status, int]]:
        """The status and value of every revision of a window the ledger holds, all partitions."""
        rows = self.client.query(
            "SELECT toString(status), value FROM stripe_reports FINAL WHERE customer_id = %(customer)s "
            "AND meter = %(meter)s AND toUnixTimestamp64Milli(window_start) = %(window)s",
            parameters={"customer": customer, "meter": meter, "window": window_start},
        ).result_rows
        return [(Status(status), int(value)) for status, value in rows]

    def waiting(self) -> dict[str, Waiting]:
        """The customers whose revisions the ledger holds (`HELD`)."""
        rows = self.client.query(
            "SELECT customer_id, countIf(status = 'waiting_for_customer'), count(), "
            f"toUnixTimestamp64Milli(min(window_start)) FROM stripe_reports FINAL WHERE {HELD} "
            "GROUP BY customer_id"
        ).result_rows
        return {str(c): Waiting(int(w), int(n), int(earliest)) for c, w, n, earliest in rows}

    def held(self, customers: Iterable[str]) -> list[Consumed]:
        """The records the held revisions of these customers came as, in offset order."""
        wanted = sorted(set(customers))
        if not wanted:
            return []
        rows = self.client.query(
            "SELECT held_record, held_partition, held_offset FROM stripe_reports FINAL "
            f"WHERE {HELD} AND customer_id IN %(wanted)s "
            "ORDER BY held_partition, held_offset",
            parameters={"wanted": wanted},
        ).result_rows
        return [Consumed(base64.b64decode(record), int(p), int(o)) for record, p, o in rows]

    def reported_by_month(
        self, months: Collection[tuple[str, str, int]]
    ) -> dict[tuple[str, str, int], Reported]:
        """(customer, meter, UTC month start in epoch ms) -> the sum of what was sent, or is being
        sent, over windows starting in that month, and the latest of those windows: every
        partition, every revision not refused or waiting. One query for all of them."""
        if not months:
            return {}
        yyyymm = {(c, m, _yyyymm(start)): (c, m, start) for c, m, start in months}
        starts = [start for _, _, start in months]
        rows = self.client.query(
            "SELECT customer_id, meter, toYYYYMM(window_start) AS month, sum(value), "
            "toUnixTimestamp64Milli(max(window_start)) "
            "FROM stripe_reports FINAL WHERE status IN ('pending', 'sent', 'confirmed') "
            f"AND (customer_id, meter) IN %(pairs)s AND {in_span()} GROUP BY customer_id, meter, month",
            parameters={
                "pairs": sorted({(c, m) for c, m, _ in months}),
                "start": min(starts),
                "end": calendar_month(max(starts))[1],
            },
        ).result_rows
        found = {
            (str(c), str(m), int(month)): Reported(int(total), int(latest))
            for c, m, month, total, latest in rows
        }
        return {wanted: found.get(key, Reported(0, -1)) for key, wanted in yyyymm.items()}

    def record(
        self,
        entries: Sequence[Entry | tuple[WindowAggregate, str, str, Outcome]],
        held: Sequence[Consumed | None] | None = None,
    ) -> None:
        """Append rows, one per entry; `held`, row by row, the record a row keeps (waiting ones, and
        pending ones taken up from the ledger)."""
        if not entries:
            return
        # A later write must win even within the same millisecond: versions only grow.
        now = self._last_version = max(int(time.time() * 1000), self._last_version + 1)
        rows = [
            [
                a.customer_id,
                a.meter,
                a.window_start,
                a.source_partition,
                a.revision,
                identifier(a.identity),
                self.mode,
                stripe_customer,
                event_name,
                a.delta if value is None else value,
                str(outcome.status),
                outcome.attempts,
                outcome.error_code,
                outcome.last_error[:1000],
                outcome.request_id,
                now,
            ]
            for a, stripe_customer, event_name, outcome, value in map(lambda e: Entry(*e), entries)
        ]
        columns = list(COLUMNS)
        if held is not None:
            rows = [
                [*row, base64.b64encode(h.value).decode(), h.partition, h.offset] if h else [*row, "", -1, -1]
                for row, h in zip(rows, held, strict=True)
            ]
            columns += HELD_COLUMNS
        self.client.insert("stripe_reports", rows, column_names=columns)


def _yyyymm(epoch_ms: int) -> int:
    """The UTC month of `epoch_ms` as ClickHouse's toYYYYMM names it."""
    when = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return when.year * 100 + when.month


def reported_windows(
    client: Client, start_ms: int, end_ms: int, customer: str | None
) -> dict[tuple[str, str, int, int], tuple[int, int, int]]:
    """What was reported per window and source partition: (deltas sent, highest revision, when the
    last report settled in epoch ms)."""
    rows = client.query(
        "SELECT customer_id, meter, toUnixTimestamp64Milli(window_start), source_partition, "
        "sum(value), max(revision), max(toUnixTimestamp64Milli(updated_at)) "
        f"FROM stripe_reports FINAL WHERE status IN ('sent', 'confirmed') AND {in_span()}"
        f"{narrowed(customer, None)} GROUP BY customer_id, meter, window_start, source_partition",
        parameters={"start": start_ms, "end": end_ms, "customer": customer},
    ).result_rows
    return {(str(c), str(m), int(w), int(p)): (int(v), int(r), int(u)) for c, m, w, p, v, r, u in rows}


def not_reported(
    client: Client, start_ms: int, end_ms: int, customer: str | None = None, meter: str | None = None
) -> list[tuple[str, str, str, int, int]]:
    """(customer, meter, reason, value, revisions) of what was refused (`failed`, by its code) or
    still waits for its customer, over windows in [start, end)."""
    rows = client.query(
        "SELECT customer_id, meter, error_code, sum(value), count() FROM stripe_reports FINAL "
        f"WHERE status IN ('failed', 'waiting_for_customer') AND {in_span()}{narrowed(customer, meter)} "
        "GROUP BY customer_id, meter, error_code ORDER BY customer_id, meter, error_code",
        parameters={"start": start_ms, "end": end_ms, "customer": customer, "meter": meter},
    ).result_rows
    return [(str(c), str(m), str(r), int(v), int(n)) for c, m, r, v, n in rows]


def reports_of(
    client: Client, customer: str, start_ms: int, end_ms: int
) -> list[tuple[str, int, int, int, str, str, str]]:
    """Every report of the customer's windows in [start, end), in window and revision order:
    (meter, window start, revision, value, identifier, status, Stripe request id)."""
    rows = client.query(
        "SELECT meter, toUnixTimestamp64Milli(window_start), revision, value, identifier, "
        f"toString(status), stripe_request_id FROM stripe_reports FINAL WHERE customer_id = %(customer)s "
        f"AND {in_span()} ORDER BY meter, window_start, revision",
        parameters={"customer": customer, "start": start_ms, "end": end_ms},
    ).result_rows
    return [(str(m), int(w), int(r), int(v), str(i), str(s), str(q)) for m, w, r, v, i, s, q in rows]


def mark_refused(client: Client, refused: Mapping[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """identifier -> (Stripe's code, message) of reports Stripe refused after accepting them: their
    rows become `failed` with it. Returns the rows as now written (identifiers the ledger lacks are
    left out)."""
    if not refused:
        return []
    rows = client.query(
        f"SELECT {', '.join(COLUMNS)} FROM stripe_reports FINAL WHERE identifier IN %(ids)s",
        parameters={"ids": tuple(refused)},
    ).result_rows
    now = int(time.time() * 1000)
    updated = []
    for row in rows:
        record = dict(zip(COLUMNS, row, strict=True))
        code, message = refused[record["identifier"]]
        record.update(status="failed", error_code=code, last_error=message[:1000], updated_at=now)
        updated.append(record)
    if updated:
        client.insert(
            "stripe_reports", [[r[c] for c in COLUMNS] for r in updated], column_names=list(COLUMNS)
        )
    return updated
