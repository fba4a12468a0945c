"""What each consumed Kafka record becomes in ClickHouse: pure functions, one per table.

A route names the table, its columns, and the function that turns records into rows: a run of
consecutive records of one partition at a time, so that what is paid per call is paid per run (the
sink reads ~100,000 aggregates a second). The sink (sinks.clickhouse.sink) only buffers, inserts and
commits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message

from meterline.core.config import Config
from meterline.schemas import dead_letters
from meterline.schemas.codecs import AGGREGATE_ROW_BINARY
from meterline.schemas.errors import SchemaError
from meterline.schemas.serde import AvroSerde
from meterline.streams.judge import Judge

Row = Sequence[Any]


@dataclass(frozen=True)
class Route:
    table: str
    columns: Sequence[str]
    rows: Callable[[list[Message]], Sequence[Row]]
    """The rows of a run of records, in their order."""
    row_format: str | None = None
    """None: rows are Python values, which clickhouse-connect serializes; else the ClickHouse
    format the rows already are (bytes each), inserted as they are."""


REVISION_COLUMNS = (
    "customer_id",
    "meter",
    "window_start",
    "window_end",
    "source_partition",
    "revision",
    "value",
    "delta",
    "event_count",
    "closed_at",
)

# What the sink inserts: an aggregate's fields in AGGREGATE_LAYOUT's order (the same columns as
# REVISION_COLUMNS), as the RowBinary row the compiled reader makes of its bytes: clickhouse-connect
# serializing Python values in Python was a third of the sink's time (BENCHMARKS.md).
AGGREGATE_COLUMNS = tuple(name for name, _ in AGGREGATE_ROW_BINARY)

EVENT_COLUMNS = (
    "event_id",
    "customer_id",
    "meter",
    "quantity",
    "unit",
    "timestamp",
    "source",
    "attributes",
    "billable",
    "source_partition",
    "source_offset",
)

DLQ_COLUMNS = (
    "source_topic",
    "source_partition",
    "source_offset",
    "source_index",
    "error_code",
    "error_detail",
    "customer_id",
    "meter",
    "key",
    "value",
    "dlq_partition",
    "dlq_offset",
    "received_at",
)


def routes(config: Config, serde: AvroSerde) -> dict[str, Route]:
    """Topic -> route, for the topics the sink consumes under `config`."""
    chosen = {
        config.topics.aggregates: Route(
            "usage_window_revisions", AGGREGATE_COLUMNS, aggregate_rows(serde), row_format="RowBinary"
        ),
        config.topics.events_dlq: Route("dlq_events", DLQ_COLUMNS, dlq_rows(serde)),
    }
    if config.clickhouse.raw_events:
        chosen[config.topics.events] = Route("usage_events", EVENT_COLUMNS, event_rows(Judge(config, serde)))
    return chosen


def aggregate_rows(serde: AvroSerde) -> Callable[[list[Message]], Sequence[Row]]:
    decode = serde.decode_aggregates_row_binary

    def rows(records: list[Message]) -> Sequence[Row]:
        values = [value for record in records if (value := record.value()) is not None]
        if len(values) < len(records):
            for record in records:
                _value(record)  # raises at the first without one, naming it
        return decode(values)

    return rows


def event_rows(judge: Judge) -> Callable[[list[Message]], list[Row]]:
    """The accepted events of usage.events records, judged as the stream app judges them (their
    rejections are dlq_events' business, ticks have none)."""

    def rows(records: list[Message]) -> list[Row]:
        return [row for record in records for row in _event_rows(judge, record)]

    return rows


def _event_rows(judge: Judge, record: Message) -> list[Row]:
    verdict = judge(_value(record), record.timestamp()[1])
    partition, offset = record.partition(), record.offset()
    return [
        [
            e.event_id,
            e.customer_id,
            e.meter,
            e.quantity,
            e.unit,
            e.timestamp,
            e.source,
            e.attributes,
            billable,
            partition,
            offset,
        ]
        for events, billable in ((verdict.billable, True), (verdict.non_billable, False))
        for e in events
    ]


def dlq_rows(serde: AvroSerde) -> Callable[[list[Message]], list[Row]]:
    def rows(records: list[Message]) -> list[Row]:
        return [_dlq_row(serde, record) for record in records]

    return rows


def _dlq_row(serde: AvroSerde, record: Message) -> Row:
    letter = dead_letters.read(record.headers())
    value = record.value() or b""
    customer_id = meter = ""
    try:  # a rejected event of a batch is re-encoded alone: say whose it was
        events = serde.decode_usage(value).events
        if len(events) == 1:
            customer_id, meter = events[0].customer_id, events[0].meter
    except SchemaError:
        pass  # undecodable: that is why it is here
    return [
        letter.topic,
        letter.partition,
        letter.offset,
        -1 if letter.index is None else letter.index,
        letter.code,
        letter.detail,
        customer_id,
        meter,
        record.key() or b"",
        value,
        record.partition(),
        record.offset(),
        record.timestamp()[1],
    ]


def _value(record: Message) -> bytes:
    value = record.value()
    if value is None:
        raise ValueError(f"partition {record.partition()} offset {record.offset()}: a record without a value")
    return value
