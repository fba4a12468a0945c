"""Re-deriving the window totals of a time range from usage.events with the stream app's own code
(streams.judge, streams.processor), one process per core: what `meterline replay` compares with
ClickHouse and Stripe (reconciler.checks.replay).

Which records: an event is accepted only when its record's timestamp lies within the maximum
lateness after it and the clock skew before it (DESIGN §4), so every event of a window in [from,
to) sits in a record stamped at or after `from - skew`. Each partition is read from the offset of
that time (offsets_for_times; reading earlier records costs time, not exactness) to its end. The
end is a marker replay appends to every partition as its processes start: a tick (the empty batch
the stream app itself sends into quiet partitions, so the stream app takes it as one) carrying the
header `meterline.replay.end` with this run's id. Neither the high watermark (tansu's counts
batches, not records) nor offsets_for_times for a stop (tansu answers 0 for a time after its last
record) is trusted. Records stamped after `to + lateness` cannot count into the range (their events
for it are too late), so reading them costs time only; the events of other windows are set aside
(they move the partition's event time, as in the stream app, but fold into nothing), so a replay
holds the ids of the range's windows alone. A `unique_count` window counts the values first seen
in its month, which events of the month outside the range may have been first to bring: for
those meters replay reads from the first month's start and keeps the events of every month the
range touches, reporting the range's windows alone. A `time_weighted` meter is not re-derived:
its windows accrue a level that may have been set before the oldest event the topic keeps (replay
says so, and repairs none of them). The partitions are re-derived in parallel
processes: there is no state to commit, so nothing but decoding and folding is paid per event.

Its own module, importing only what a re-deriving process needs: each process starts by importing
the module of the function it runs, and reconciler.checks.replay's (Stripe's client, ClickHouse's queries)
took a second of a 4.8 s replay of 20 minutes of live traffic (bench/replay.py, issue 18).
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from meterline.core import collector
from meterline.core.config import Config
from meterline.core.errors import MeterlineError
from meterline.core.kafka import Kafka, idempotent_producer, partition_count, settings, take
from meterline.core.months import calendar_month
from meterline.schemas.records import UsageEvent, WindowAggregate
from meterline.schemas.serde import AvroSerde
from meterline.streams.judge import Judge, Verdict
from meterline.streams.processor import PartitionProcessor, rules_from
from meterline.streams.state import UnsavedStore
from meterline.streams.windows import combine

WindowId = tuple[str, str, int]  # customer, meter, window_start
PartitionWindow = tuple[str, str, int, int]  # + source partition
END_HEADER = "meterline.replay.end"
MARKER_TIMEOUT_S = 600.0


class ReplayError(MeterlineError):
    pass


@dataclass(frozen=True)
class PartitionResult:
    partition: int
    records: int
    events: int
    totals: dict[WindowId, tuple[int, int]]  # -> value, event_count


@dataclass
class Rederived:
    records: int = 0
    events: int = 0
    seconds: float = 0.0
    by_partition: dict[PartitionWindow, tuple[int, int]] = field(default_factory=dict)
    levels: Mapping[str, str] = field(default_factory=dict)
    """The `max` and `last` meters (Config.levels): a window's partials make its value by their
    highest, not their sum."""

    def windows(self) -> dict[WindowId, int]:
        return by_window(self.by_partition, self.levels)


def by_window(
    partials: Mapping[PartitionWindow, tuple[int, Any]], levels: Mapping[str, str]
) -> dict[WindowId, int]:
    """Each window's value from its source partitions' partials (value, anything): their highest
    for a meter of `levels`, else their sum (streams.windows.combine); windows of nothing left out."""
    values: dict[WindowId, list[int]] = {}
    for (customer, meter, start, _), (value, _) in partials.items():
        values.setdefault((customer, meter, start), []).append(value)
    windows = {key: combine(levels.get(key[1], "sum"), v) for key, v in values.items()}
    return {key: value for key, value in windows.items() if value}


def rederive(
    config: Config,
    bootstrap: Kafka,
    start_ms: int,
    end_ms: int,
    customer: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Rederived:
    """The totals of the windows starting in [start, end), per source partition."""
    partitions = range(partition_count(bootstrap, config.topics.events))
    started = time.monotonic()
    marker = uuid.uuid4().hex.encode()
    jobs = [(config, bootstrap, p, start_ms, end_ms, customer, marker) for p in partitions]
    result = Rederived(levels=config.levels)
    # A process per core, each taking partitions in turn: more processes only pay more start-up
    # (imports) on the same cores (4.4 s against 4.0 s for a day of usage, 2 cores, 4 partitions).
    workers = max(1, min(len(jobs), multiprocessing.cpu_count()))
    with multiprocessing.get_context("spawn").Pool(workers, collector.tune_for_long_lived_state) as pool:
        parts = pool.imap_unordered(_rederive_partition, jobs)
        # While the processes start and read: an idempotent producer's first delivery waits for its
        # producer id (half a second on tansu), and a process reads until it meets the marker.
        _mark_ends(config, bootstrap, partitions, marker)
        for done, part in enumerate(parts, 1):
            result.records += part.records
            result.events += part.events
            for (c, m, w), totals in part.totals.items():
                result.by_partition[(c, m, w, part.partition)] = totals
            if progress:
                progress(done, len(jobs))
    result.seconds = time.monotonic() - started
    return result


def _mark_ends(config: Config, bootstrap: Kafka, partitions: Iterable[int], marker: bytes) -> None:
    """Append the end marker `marker` to every partition."""
    tick = AvroSerde.from_registry_url(config.kafka.schema_registry_url).encode_batch([])
    producer = idempotent_producer(bootstrap)
    for partition in partitions:
        producer.produce(config.topics.events, tick, partition=partition, headers=[(END_HEADER, marker)])
    if producer.flush(30) > 0:
        raise ReplayError("the end markers were not delivered to usage.events")


def _rederive_partition(job: tuple[Config, Kafka, int, int, int, str | None, bytes]) -> PartitionResult:
    config, bootstrap, partition, start_ms, end_ms, customer, marker = job
    serde = AvroSerde.from_registry_url(config.kafka.schema_registry_url)
    tick_bytes = serde.encode_batch([])
    judge = Judge(config, serde)
    processor = PartitionProcessor(partition, rules_from(config), UnsavedStore())
    consumer = Consumer(
        settings(
            bootstrap,
            {
                "group.id": f"meterline-replay-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.max.bytes": 52_428_800,
            },
        )
    )
    # The totals are those of the revisions the processor emits, as the stream app's are, the latest
    # of a window winning: not what its state holds at the end, which has forgotten the windows
    # the watermark left more than the maximum lateness behind (a range long past, read to now).
    totals: dict[WindowId, tuple[int, int]] = {}

    in_range = event_times(start_ms, end_ms, config.windows.size_ms)
    sighted = sighting_times(start_ms, end_ms) if config.unique_attributes else range(0)
    accruing = not_rederived(config)

    def fold(aggregates: list[WindowAggregate]) -> None:
        for a in aggregates:  # the range's windows: the rest were set aside or only sight values
            if a.window_start in in_range:
                totals[(a.customer_id, a.meter, a.window_start)] = (a.value, a.event_count)

    records = events = 0
    deadline = time.monotonic() + MARKER_TIMEOUT_S
    try:
        first = _first_offset(consumer, config, partition, sighted.start if sighted else start_ms)
        consumer.assign([TopicPartition(config.topics.events, partition, first)])
        last_offset, last_time = first - 1, 0
        reading = True
        while reading:
            if time.monotonic() > deadline:
                raise ReplayError(
                    f"partition {partition}: the end marker did not come back in {MARKER_TIMEOUT_S:.0f} s"
                )
            for message in take(consumer, 5_000, timeout=0.2):
                offset = message.offset()
                if message.error() or offset is None:
                    continue
                value = message.value() or b""
                if value == tick_bytes and (END_HEADER, marker) in (message.headers() or []):
                    reading = False
                    break
                record_time = message.timestamp()[1]
                verdict = judge(value, record_time, processor.held_from(offset))
                if verdict.billable:
                    set_aside(verdict, in_range, customer, config.unique_attributes, sighted, accruing)
                fold(processor.process(offset, record_time, verdict))
                records += 1
                events += verdict.events
                last_offset, last_time = offset, max(last_time, record_time)
    finally:
        consumer.close()
    # A last tick closes every open window, as wall clock would have.
    tick = judge(serde.encode_batch([]), last_time + 365 * 86_400_000)
    fold(processor.process(last_offset + 1, last_time + 365 * 86_400_000, tick))
    return PartitionResult(partition, records, events, totals)


def not_rederived(config: Config) -> dict[str, str]:
    """meter -> why replay does not re-derive it: a `time_weighted` meter's hour accrues the level
    carried into it, which an event older than the topic keeps may have set."""
    return {
        name: "time_weighted: its hours accrue a level that may have been set before the oldest event "
        f"{config.topics.events} keeps"
        for name, meter in config.meters.items()
        if meter.aggregation == "time_weighted"
    }


def event_times(start_ms: int, end_ms: int, size_ms: int) -> range:
    """The event times of the windows that start in [start, end)."""
    return range(-(-start_ms // size_ms) * size_ms, -(-end_ms // size_ms) * size_ms)


def sighting_times(start_ms: int, end_ms: int) -> range:
    """The event times of the calendar months that [start, end) touches: the events a
    `unique_count` meter's windows in the range may owe their first sightings to."""
    return range(calendar_month(start_ms)[0], calendar_month(max(start_ms, end_ms - 1))[1])


def set_aside(
    verdict: Verdict,
    in_range: range,
    customer: str | None,
    unique_meters: Collection[str] = (),
    sighted: range = range(0),
    skipped: Collection[str] = (),
) -> None:
    """Move the billable events of windows outside the range (or of other customers) to the
    non-billable: they still move the partition's event time, as the stream app's do, but fold into
    no window, and no window holds their ids, which dedup keeps for the whole lateness horizon
    (replay reads from the range to the end of the topic). Events of `unique_meters` in `sighted`
    (sighting_times) stay: they decide which values are first seen in the range's windows. Events
    of `skipped` meters (not_rederived) fold into nothing."""
    kept: list[UsageEvent] = []
    aside: list[UsageEvent] = []
    for event in verdict.billable:
        wanted = (
            customer in (None, event.customer_id)
            and event.meter not in skipped
            and (event.timestamp in in_range or (event.meter in unique_meters and event.timestamp in sighted))
        )
        (kept if wanted else aside).append(event)
    if aside:
        verdict.billable = kept
        verdict.non_billable.extend(aside)


def _first_offset(consumer: Consumer, config: Config, partition: int, start_ms: int) -> int:
    since = max(0, start_ms - config.windows.max_clock_skew_ms)
    [found] = consumer.offsets_for_times([TopicPartition(config.topics.events, partition, since)], timeout=10)
    return max(int(found.offset), 0)  # -1: none that late, yet the end marker is: from the start
