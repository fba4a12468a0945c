"""The Stripe sink's ledger, `stripe_reports` in ClickHouse: what was reported, how it ended,
with attempts, the last error and Stripe's request id. Rows are appended; the latest per identity
wins (ReplacingMergeTree on updated_at), so reads use FINAL.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from schemas.records import AggregateIdentity, WindowAggregate
from sinks.stripe.report import Outcome, Status, identifier

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


class Ledger:
    def __init__(self, client: Client, mode: str) -> None:
        self.client = client
        self.mode = mode
        self._last_version = 0

    def statuses(self, identities: Iterable[AggregateIdentity]) -> dict[AggregateIdentity, Status]:
        """The current status of each identity the ledger knows."""
        wanted = list(identities)
        if not wanted:
            return {}
        rows = self.client.query(
            "SELECT customer_id, meter, toUnixTimestamp64Milli(window_start), source_partition, revision, "
            "toString(status) FROM stripe_reports FINAL WHERE "
            "(customer_id, meter, toUnixTimestamp64Milli(window_start), source_partition, revision) "
            "IN %(wanted)s",
            parameters={"wanted": [tuple(i) for i in wanted]},
        ).result_rows
        return {AggregateIdentity(c, m, int(w), int(p), int(r)): Status(s) for c, m, w, p, r, s in rows}

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

    def record(
        self,
        entries: Sequence[tuple[WindowAggregate, str, str, Outcome]],
        held: Sequence[Consumed | None] | None = None,
    ) -> None:
        """Append (aggregate, Stripe customer, Stripe event name, outcome) rows; `held`, row by row,
        the record a row keeps (waiting ones, and pending ones taken up from the ledger)."""
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
                a.delta,
                str(outcome.status),
                outcome.attempts,
                outcome.error_code,
                outcome.last_error[:1000],
                outcome.request_id,
                now,
            ]
            for a, stripe_customer, event_name, outcome in entries
        ]
        columns = list(COLUMNS)
        if held is not None:
            rows = [
                [*row, base64.b64encode(h.value).decode(), h.partition, h.offset] if h else [*row, "", -1, -1]
                for row, h in zip(rows, held, strict=True)
            ]
            columns += HELD_COLUMNS
        self.client.insert("stripe_reports", rows, column_names=columns)
