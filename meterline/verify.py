"""Check what the stream app emitted against the exact expected totals of `meterline generate`.

Reads `usage.aggregates` and `usage.events.dlq` from the beginning. Aggregates are taken once per
identity, as every sink does (DESIGN §3); two aggregates with one identity and different contents
are an error in themselves. Per (customer, meter, window) the deltas of all revisions, summed over
source partitions, must equal the expected value, and the revisions must run 0..n without a gap.
DLQ records are counted by reason, once per source record (partition, offset, index in batch).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer

from meterline.core.config import Config
from meterline.core.kafka import Kafka, at_end, consumer_from_beginning
from meterline.schemas import dead_letters
from meterline.schemas.records import AggregateIdentity, WindowAggregate
from meterline.schemas.serde import AvroSerde

WindowId = tuple[str, str, int]


@dataclass
class Emitted:
    aggregates: dict[AggregateIdentity, WindowAggregate] = field(default_factory=dict)
    messages: int = 0
    conflicts: list[tuple[WindowAggregate, WindowAggregate]] = field(default_factory=list)
    dlq: dict[tuple[int, int, int], str] = field(default_factory=dict)
    """(source partition, offset, index or -1) -> reason."""
    dlq_messages: int = 0

    def totals(self) -> dict[WindowId, int]:
        totals: Counter[WindowId] = Counter()
        for identity, aggregate in self.aggregates.items():
            totals[(identity.customer_id, identity.meter, identity.window_start)] += aggregate.delta
        return dict(totals)

    def revision_gaps(self) -> list[tuple[str, str, int, int]]:
        """(customer, meter, window_start, partition) whose revisions are not 0..n."""
        seen: dict[tuple[str, str, int, int], set[int]] = {}
        for i in self.aggregates:
            seen.setdefault((i.customer_id, i.meter, i.window_start, i.source_partition), set()).add(
                i.revision
            )
        return sorted(k for k, revisions in seen.items() if revisions != set(range(len(revisions))))

    def dlq_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(self.dlq.values()).items()))


def read_emitted(config: Config, bootstrap: Kafka, serde: AvroSerde, quiet_s: float = 2.0) -> Emitted:
    """Everything on the aggregates and DLQ topics now: read until both are quiet and at their end."""
    emitted = Emitted()
    aggregates = consumer_from_beginning(bootstrap, config.topics.aggregates, "meterline-verify")
    dlq = consumer_from_beginning(bootstrap, config.topics.events_dlq, "meterline-verify")
    try:
        _drain(aggregates, quiet_s, lambda m: _add_aggregate(emitted, serde.decode_aggregate(m.value())))
        _drain(dlq, quiet_s, lambda m: _add_dead_letter(emitted, m.headers() or []))
    finally:
        aggregates.close()
        dlq.close()
    return emitted


def _drain(consumer: Consumer, quiet_s: float, handle: Any) -> None:
    last = time.monotonic()
    while True:
        messages = consumer.consume(10_000, timeout=0.2)
        if messages:
            last = time.monotonic()
            for message in messages:
                if not message.error():
                    handle(message)
        elif time.monotonic() - last > quiet_s and at_end(consumer):
            return


def _add_aggregate(emitted: Emitted, aggregate: WindowAggregate) -> None:
    emitted.messages += 1
    first = emitted.aggregates.setdefault(aggregate.identity, aggregate)
    if first != aggregate:
        emitted.conflicts.append((first, aggregate))


def _add_dead_letter(emitted: Emitted, headers: list[tuple[str, bytes]]) -> None:
    emitted.dlq_messages += 1
    letter = dead_letters.read(headers)
    source = (letter.partition, letter.offset, -1 if letter.index is None else letter.index)
    emitted.dlq[source] = letter.code


@dataclass(frozen=True)
class Verification:
    windows_expected: int
    windows_matching: int
    mismatches: list[dict[str, Any]]
    conflicts: int
    revision_gaps: int
    dlq_expected: dict[str, int]
    dlq_found: dict[str, int]

    @property
    def ok(self) -> bool:
        return (
            not self.mismatches
            and not self.conflicts
            and not self.revision_gaps
            and self.dlq_expected == self.dlq_found
        )


def verify(expected: dict[str, Any], emitted: Emitted) -> Verification:
    """Compare with the document `meterline generate` writes (expected.json)."""
    want = {(t["customer_id"], t["meter"], t["window_start"]): t["value"] for t in expected["totals"]}
    got = emitted.totals()
    mismatches = [
        {
            "customer_id": c,
            "meter": m,
            "window_start": w,
            "expected": want.get((c, m, w), 0),
            "emitted": got.get((c, m, w), 0),
        }
        for (c, m, w) in sorted(want.keys() | got.keys())
        if want.get((c, m, w), 0) != got.get((c, m, w), 0)
    ]
    return Verification(
        windows_expected=len(want),
        windows_matching=sum(1 for k, v in want.items() if got.get(k, 0) == v),
        mismatches=mismatches,
        conflicts=len(emitted.conflicts),
        revision_gaps=len(emitted.revision_gaps()),
        dlq_expected=dict(sorted(expected["records"]["rejected"].items())),
        dlq_found=emitted.dlq_by_reason(),
    )
