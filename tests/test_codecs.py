"""The hand-written codecs write and read fastavro's bytes exactly, or are not used."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from fastavro import schemaless_writer
from hypothesis import given
from hypothesis import strategies as st

from schemas.catalog import USAGE_EVENT, USAGE_EVENT_BATCH, WINDOW_AGGREGATE, SchemaCatalog
from schemas.codecs import (
    AGGREGATE_LAYOUT,
    LAYOUT,
    AggregateDecoder,
    AggregateEncoder,
    EventEncoder,
    encode_long,
    layout_of,
)
from schemas.errors import MalformedRecordError
from schemas.records import UsageEvent, WindowAggregate
from schemas.serde import AvroSerde, aggregate_to_avro, event_to_avro
from tests.test_serde import EVENT, events

CATALOG = SchemaCatalog()
EVENT_SCHEMA = CATALOG.latest(USAGE_EVENT)
BATCH_SCHEMA = CATALOG.latest(USAGE_EVENT_BATCH)
AGGREGATE_SCHEMA = CATALOG.latest(WINDOW_AGGREGATE)


def fastavro_bytes(parsed: dict, datum: dict) -> bytes:
    buffer = io.BytesIO()
    schemaless_writer(buffer, parsed, datum)
    return buffer.getvalue()


@given(events)
def test_an_event_is_written_byte_for_byte_as_fastavro_writes_it(event: UsageEvent) -> None:
    encoder = EventEncoder()
    expected = fastavro_bytes(EVENT_SCHEMA.parsed, event_to_avro(event))
    assert encoder.encode(event) == expected
    assert encoder.encode(event) == expected  # again, from the string cache


@given(
    st.integers(min_value=2**34 - 3, max_value=2**41 + 3)
    | st.sampled_from([2**34 - 1, 2**34, 2**41 - 1, 2**41])
)
def test_timestamps_of_this_century_take_the_unrolled_path_and_the_same_bytes(timestamp: int) -> None:
    event = UsageEvent("e", "c", "m", 1, "u", timestamp, "s", {"status": "200"})
    assert EventEncoder().encode(event) == fastavro_bytes(EVENT_SCHEMA.parsed, event_to_avro(event))


@given(st.lists(events, max_size=20))
def test_a_batch_is_written_byte_for_byte_as_fastavro_writes_it(batch: list[UsageEvent]) -> None:
    serde = AvroSerde(CATALOG)
    header = serde.encode_batch([])[:10]
    expected = fastavro_bytes(BATCH_SCHEMA.parsed, {"events": [event_to_avro(e) for e in batch]})
    assert serde.encode_batch([serde.batch_item(e) for e in batch]) == header + expected
    assert serde.decode_usage(serde.encode_batch([serde.batch_item(e) for e in batch])).events == batch


def test_the_layout_is_the_current_schema_and_nothing_else() -> None:
    """A new UsageEvent version must fail here first: the encoder would have to learn it."""
    assert layout_of(EVENT_SCHEMA.definition) == LAYOUT
    v2 = SchemaCatalog(Path(__file__).parent / "data" / "evolution_v2").latest(USAGE_EVENT)
    assert layout_of(v2.definition) != LAYOUT


def test_another_layout_falls_back_to_fastavro() -> None:
    v2_catalog = SchemaCatalog(Path(__file__).parent / "data" / "evolution_v2")
    serde = AvroSerde(v2_catalog)
    name, datum = serde.decode(serde.encode_event(EVENT))
    assert name == USAGE_EVENT and datum == event_to_avro(EVENT) | {"region": "unknown"}


def test_a_long_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode_long(2**63)
    assert encode_long(-1) == b"\x01" and encode_long(1) == b"\x02" and encode_long(64) == b"\x80\x01"


longs = st.integers(min_value=-(2**63), max_value=2**63 - 1)
ints = st.integers(min_value=-(2**31), max_value=2**31 - 1)
aggregates = st.builds(
    WindowAggregate,
    customer_id=st.text(max_size=20),
    meter=st.text(max_size=20),
    window_start=longs | st.integers(min_value=2**34, max_value=2**41),
    window_end=longs,
    source_partition=ints,
    value=longs,
    delta=longs,
    event_count=longs,
    revision=ints,
    closed_at=longs | st.integers(min_value=2**34, max_value=2**41),
)


@given(aggregates)
def test_an_aggregate_is_written_byte_for_byte_as_fastavro_writes_it(aggregate: WindowAggregate) -> None:
    encoder = AggregateEncoder()
    expected = fastavro_bytes(AGGREGATE_SCHEMA.parsed, aggregate_to_avro(aggregate))
    assert encoder.encode(aggregate) == expected
    assert encoder.encode(aggregate) == expected  # again, from the string cache
    serde = AvroSerde(CATALOG)
    assert serde.decode_aggregate(serde.encode_aggregate(aggregate)) == aggregate


def test_an_aggregate_int_field_out_of_range_is_refused() -> None:
    """fastavro writes it as a long, which a strict reader rejects; the encoder says so instead."""
    aggregate = WindowAggregate("c", "m", 0, 60_000, 2**31, 1, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="32-bit int"):
        AggregateEncoder().encode(aggregate)


def test_the_aggregate_layout_is_the_current_schema() -> None:
    """A new WindowAggregate version must fail here first: the encoder would have to learn it."""
    assert layout_of(AGGREGATE_SCHEMA.definition) == AGGREGATE_LAYOUT


@given(aggregates)
def test_an_aggregate_is_read_as_fastavro_reads_it(aggregate: WindowAggregate) -> None:
    body = fastavro_bytes(AGGREGATE_SCHEMA.parsed, aggregate_to_avro(aggregate))
    assert AggregateDecoder().decode(b"header" + body, 6) == aggregate


@given(aggregates, st.data())
def test_a_cut_or_padded_aggregate_is_malformed(aggregate: WindowAggregate, data: st.DataObject) -> None:
    serde = AvroSerde(CATALOG)
    encoded = serde.encode_aggregate(aggregate)
    cut = data.draw(st.integers(min_value=11, max_value=len(encoded) - 1))
    for broken in (encoded[:cut], encoded + b"\x00"):
        with pytest.raises(MalformedRecordError):
            serde.decode_aggregate(broken)
