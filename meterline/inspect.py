"""What reached the events topic: messages, events, and how each event will be judged.

Reads every partition from the beginning and judges each record as the stream app does
(streams.judge: decoding, validation, timing against the record's own timestamp, billable filter),
then dedups by event_id per partition. The end of the topic is found by
message count when the caller knows it, else by a quiet period past the high watermark: tansu's
reported high watermark can lag the real end by a batch (DESIGN §7).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer

from meterline import devstack
from meterline.core.config import Config
from meterline.core.kafka import Kafka, at_end, consumer_from_beginning
from meterline.schemas.serde import AvroSerde
from meterline.streams.accrual import Change, accrued, takes_effect
from meterline.streams.judge import Judge
from meterline.streams.windows import fold, later
from meterline.table import render

_QUIET_S = 2.0


@dataclass
class TopicSummary:
    messages: int = 0
    batches: int = 0
    events: int = 0
    accepted: int = 0
    duplicates: int = 0
    non_billable: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    per_partition: Counter[int] = field(default_factory=Counter)
    billable_totals: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(customer, meter) -> the answer over everything read, by the meter's aggregation (a
    unique_count meter's: the distinct values read, whatever their months; a last meter's: the
    quantity of the latest event read; a time_weighted meter's: its level by the second from the
    first event read to the latest, in level-seconds)."""

    @property
    def records(self) -> int:
        """Events plus undecodable messages: what conservation is counted in."""
        return self.accepted + sum(self.rejected.values())

    def document(self) -> dict[str, Any]:
        """For --json, and in the shape of the generator's expectation (`records`, totals)."""
        return {
            "messages": self.messages,
            "batches": self.batches,
            "events": self.events,
            "records": {
                "produced": self.records,
                "accepted": self.accepted,
                "rejected": dict(sorted(self.rejected.items())),
                "duplicates": self.duplicates,
                "non_billable": self.non_billable,
            },
            "per_partition": {str(p): n for p, n in sorted(self.per_partition.items())},
            "totals_by_customer_meter": [
                {"customer_id": c, "meter": m, "value": v}
                for (c, m), v in sorted(self.billable_totals.items())
            ],
        }


def summarize(config: Config, expect_messages: int | None, quiet: bool = False) -> TopicSummary:
    """The configured events topic, summarized with progress on stderr (unless quiet)."""

    def progress(summary: TopicSummary) -> None:
        print(f"\r  read {summary.messages:,} messages, {summary.events:,} events", end="", file=sys.stderr)

    summary = summarize_events_topic(
        config,
        devstack.kafka_brokers(config),
        AvroSerde.from_registry_url(config.kafka.schema_registry_url),
        expect_messages=expect_messages,
        progress=None if quiet else progress,
    )
    if not quiet:
        print(file=sys.stderr)
    return summary


def describe(document: dict[str, Any]) -> str:
    """A summary's document as text: messages, outcomes, billable totals."""
    head = (
        f"{document['messages']:,} messages ({document['batches']:,} packed batches) holding "
        f"{document['events']:,} events; messages per partition: "
        + ", ".join(f"{p}: {n:,}" for p, n in document["per_partition"].items())
    )
    outcomes = render([{"outcome": k, "records": v} for k, v in flat_records(document["records"]).items()])
    totals = render(document["totals_by_customer_meter"])
    return f"{head}\n\n{outcomes}\n\nbillable usage by customer and meter:\n{totals}"


def flat_records(records: dict[str, Any]) -> dict[str, int]:
    """{"rejected": {reason: n}, ...} as one level: "rejected: reason"."""
    flat = {k: v for k, v in records.items() if k != "rejected"}
    flat.update({f"rejected: {k}": v for k, v in records["rejected"].items()})
    return flat


def summarize_events_topic(
    config: Config,
    bootstrap: Kafka,
    serde: AvroSerde,
    expect_messages: int | None = None,
    timeout: float = 120.0,
    progress: Callable[[TopicSummary], None] | None = None,
) -> TopicSummary:
    consumer = consumer_from_beginning(bootstrap, config.topics.events, "meterline-inspect")
    try:
        return _consume(config, consumer, serde, expect_messages, timeout, progress)
    finally:
        consumer.close()


def _consume(
    config: Config,
    consumer: Consumer,
    serde: AvroSerde,
    expect_messages: int | None,
    timeout: float,
    progress: Callable[[TopicSummary], None] | None,
) -> TopicSummary:
    summary = TopicSummary()
    judge = Judge(config, serde)
    seen: set[tuple[int, str]] = set()
    distinct: dict[tuple[str, str], set[str]] = {}
    latest: dict[tuple[str, str], tuple[int, str]] = {}
    held: dict[tuple[str, str], list[Change]] = {}  # a time_weighted meter's level events
    deadline = time.monotonic() + timeout
    last_message = time.monotonic()
    last_progress = 0.0
    while time.monotonic() < deadline:
        if expect_messages is not None and summary.messages >= expect_messages:
            break
        messages = consumer.consume(10_000, timeout=0.2)
        if not messages:
            if expect_messages is None and time.monotonic() - last_message > _QUIET_S and at_end(consumer):
                break
            continue
        last_message = time.monotonic()
        for message in messages:
            if message.error():
                continue
            summary.messages += 1
            partition: int = message.partition()  # type: ignore[assignment]  # set on consumed messages
            summary.per_partition[partition] += 1
            verdict = judge(message.value() or b"", message.timestamp()[1])
            summary.batches += verdict.is_batch
            summary.events += verdict.events
            for rejection in verdict.rejections:
                summary.rejected[rejection.reason] += 1
            for billable, events in ((True, verdict.billable), (False, verdict.non_billable)):
                for event in events:
                    summary.accepted += 1
                    if (partition, event.event_id) in seen:
                        summary.duplicates += 1
                        continue
                    seen.add((partition, event.event_id))
                    if billable:
                        pair = (event.customer_id, event.meter)
                        meter = config.meters[event.meter]
                        if meter.unique_by:  # the distinct values of what was read
                            values = distinct.setdefault(pair, set())
                            values.add(event.attributes[meter.unique_by])
                            summary.billable_totals[pair] = len(values)
                        elif meter.aggregation == "time_weighted":
                            held.setdefault(pair, []).append(
                                (event.timestamp, event.event_id, event.quantity)
                            )
                        elif meter.aggregation == "last":  # the latest event read
                            if later(at := (event.timestamp, event.event_id), latest.get(pair)):
                                latest[pair] = at
                                summary.billable_totals[pair] = event.quantity
                        else:
                            summary.billable_totals[pair] = fold(
                                meter.aggregation, summary.billable_totals[pair], event.quantity
                            )
                    else:
                        summary.non_billable += 1
        if progress is not None and time.monotonic() - last_progress > 1:
            last_progress = time.monotonic()
            progress(summary)
    for pair, changes in held.items():
        changes.sort()
        first, last = takes_effect(changes[0][0]), takes_effect(changes[-1][0])
        summary.billable_totals[pair] = accrued(0, changes, first, last)
    return summary
