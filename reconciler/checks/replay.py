"""`meterline replay`: re-derive the window totals of a time range from usage.events with the stream
app's own code (reconciler.checks.rederive: which records, and how), compare them with ClickHouse and
Stripe, and with `repair` emit correcting revisions so that both sinks converge.

The repair of a window (per source partition, as its identity is) is its next revision:
`value` = the re-derived total (what ClickHouse keeps, latest revision wins) and `delta` = that
total minus what Stripe was sent for the window (the ledger's sent and confirmed rows), so that
Stripe, which adds deltas, converges too. Stripe may refuse a meter event after accepting it, and
its error report names only samples: where Stripe's own total of an hour differs from the
ledger's, the hour's settled windows are read from Stripe one by one, and what the ledger counts
as sent but Stripe does not have goes into the delta (`stripe_windows`). Its identity and contents
depend only on what is stored, so running it again before the sinks caught up re-emits the same
revision, which both sinks keep once; once they have, a second run finds nothing to repair.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meterline.core.config import Config
from meterline.core.kafka import Kafka, idempotent_producer
from meterline.reconciler.checks.compare import Difference, compare
from meterline.reconciler.checks.rederive import PartitionWindow, Rederived, ReplayError, WindowId, by_window
from meterline.schemas.records import WindowAggregate
from meterline.schemas.serde import AvroSerde
from meterline.sinks.stripe.totals import TotalsReader
from meterline.streams.windows import window_end

if TYPE_CHECKING:
    pass

HOUR_MS = 3_600_000


# -- comparing and repairing -----------------------------------------------------------------------


def stripe_windows(
    totals: TotalsReader,
    reported: dict[PartitionWindow, tuple[int, int, int]],
    rederived: Rederived,
    window_ms: int,
    settled_before_ms: int,
) -> dict[WindowId, int]:
    """Stripe's own total of every window whose hour Stripe and the ledger disagree on, where the
    window's reports are old enough for Stripe's summary to be final. Stripe can refuse a meter
    event after accepting it (a meter error report names only samples), so the ledger's "sent" is
    not proof: an hour whose Stripe total differs is read window by window."""
    ledger: dict[WindowId, tuple[int, int]] = {}  # window -> (sent, last settled)
    for (c, m, w, _), (sent, _, settled) in reported.items():
        before = ledger.get((c, m, w), (0, 0))
        ledger[(c, m, w)] = (before[0] + sent, max(before[1], settled))
    windows = set(ledger) | set(rederived.windows())
    by_pair: dict[tuple[str, str], dict[int, list[int]]] = {}
    for customer, meter, start in windows:
        by_pair.setdefault((customer, meter), {}).setdefault(start // HOUR_MS * HOUR_MS, []).append(start)
    found: dict[WindowId, int] = {}
    for (customer, meter), hours in by_pair.items():
        first, last = min(hours), max(hours) + HOUR_MS
        theirs = totals.by_hour(customer, meter, first, last)
        for hour, starts in hours.items():
            ours = sum(ledger.get((customer, meter, w), (0, 0))[0] for w in starts)
            if theirs.get(hour, 0) == ours:
                continue
            for w in starts:
                if ledger.get((customer, meter, w), (0, 0))[1] < settled_before_ms:
                    found[(customer, meter, w)] = totals.total(customer, meter, w, window_end(w, window_ms))
    return found


def clickhouse_differences(
    rederived: Rederived, stored: dict[PartitionWindow, tuple[int, int]]
) -> list[Difference[WindowId]]:
    ours = by_window(stored, rederived.levels)
    return [d for d in compare(ours, rederived.windows()) if d.drift]


def repairs(
    rederived: Rederived,
    stored: dict[PartitionWindow, tuple[int, int]],
    reported: dict[PartitionWindow, tuple[int, int, int]],
    window_ms: int,
    stripe_totals: dict[WindowId, int] | None = None,
) -> list[WindowAggregate]:
    """The next revision of every (window, partition) whose stored total is not the re-derived
    one, or whose delta for Stripe is not zero. The delta is the re-derived total less what the
    ledger says was sent; where Stripe's own total of the window is known (`stripe_totals`), what
    the ledger counts as sent but Stripe does not have is added to the window's lowest partition,
    so that Stripe, which adds deltas, reaches the re-derived total. Stable: once the sinks applied
    it, the same inputs give no repair."""
    keys = sorted(set(rederived.by_partition) | set(stored) | set(reported))
    sent_by_window: dict[WindowId, int] = {}
    for (c, m, w, _), (v, _, _) in reported.items():
        sent_by_window[(c, m, w)] = sent_by_window.get((c, m, w), 0) + v
    # Sent by the ledger's account, not in Stripe's total.
    missing = {
        window: sent_by_window.get(window, 0) - theirs for window, theirs in (stripe_totals or {}).items()
    }
    fixes = []
    for key in keys:
        customer, meter, window_start, partition = key
        value, count = rederived.by_partition.get(key, (0, 0))
        stored_value, stored_revision = stored.get(key, (0, -1))
        sent, reported_revision, _ = reported.get(key, (0, -1, 0))
        if meter in rederived.levels:  # Stripe has the month's level, not the window's (sinks.stripe.levels)
            delta = value - stored_value
            if delta == 0:
                continue
        else:
            delta = value - sent + missing.pop((customer, meter, window_start), 0)  # once, on the first
            if stored_value == value and delta == 0:
                continue
        fixes.append(
            WindowAggregate(
                customer_id=customer,
                meter=meter,
                window_start=window_start,
                window_end=window_end(window_start, window_ms),
                source_partition=partition,
                value=value,
                delta=delta,
                event_count=count,
                revision=max(stored_revision, reported_revision) + 1,
                closed_at=window_end(window_start, window_ms),  # deterministic: the same on every run
            )
        )
    return fixes


def stripe_differences(
    rederived: Rederived, totals: TotalsReader, start_ms: int, end_ms: int
) -> list[Difference[tuple[str, str]]]:
    """Per customer and meter of the range, Stripe's own total against the re-derived one: the
    pairs that differ. Not the levels (`max`, `last`): what Stripe sums over a range is not the
    range's level (contributions to a month's answer); reconcile compares their months."""
    pairs: dict[tuple[str, str], int] = {}
    for (customer, meter, _), value in rederived.windows().items():
        if meter not in rederived.levels:
            pairs[(customer, meter)] = pairs.get((customer, meter), 0) + value
    theirs = {pair: totals.total(*pair, start_ms, end_ms) for pair in pairs}
    return [d for d in compare({k: v for k, v in theirs.items() if v}, pairs) if d.drift]


def plan_repairs(
    config: Config,
    totals: TotalsReader,
    rederived: Rederived,
    stored: dict[PartitionWindow, tuple[int, int]],
    reported: dict[PartitionWindow, tuple[int, int, int]],
    now_ms: int,
) -> list[WindowAggregate]:
    """`repairs`, with Stripe's own totals of the windows it disagrees on (meter events only: usage
    record summaries are per billing period, not per window)."""
    known = (
        stripe_windows(
            totals,
            reported,
            rederived,
            config.windows.size_ms,
            now_ms - config.stripe.summaries_settle_seconds * 1000,
        )
        if totals.per_window
        else {}
    )
    return repairs(rederived, stored, reported, config.windows.size_ms, known)


def emit_repairs(config: Config, bootstrap: Kafka, fixes: list[WindowAggregate]) -> None:
    """The correcting revisions onto usage.aggregates, keyed as the stream keys them: both sinks
    take them like any revision."""
    serde = AvroSerde.from_registry_url(config.kafka.schema_registry_url)
    producer = idempotent_producer(bootstrap, {"partitioner": "murmur2_random"})
    for fix in fixes:
        producer.produce(config.topics.aggregates, serde.encode_aggregate(fix), fix.customer_id.encode())
    if producer.flush(60):
        raise ReplayError("the correcting revisions were not all delivered: run the repair again")
