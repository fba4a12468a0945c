"""The hand-written codecs write and read fastavro's bytes exactly, or are not used."""

from __future__ import annotations

import dataclasses
import io
import re
import struct
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from fastavro import schemaless_writer
from hypothesis import given
from hypothesis import strategies as st

from meterline.schemas import codecs
from meterline.schemas._readers import new_aggregate, read_aggregate, read_aggregate_row_binary, read_events
from meterline.schemas._writers import write_aggregate
from meterline.schemas.catalog import USAGE_EVENT, USAGE_EVENT_BATCH, WINDOW_AGGREGATE, SchemaCatalog
from meterline.schemas.codecs import (
    AGGREGATE_LAYOUT,
    LAYOUT,
    AggregateEncoder,
    EventEncoder,
    encode_long,
    layout_of,
)
from meterline.schemas.datums import aggregate_to_avro, event_to_avro
from meterline.schemas.errors import MalformedRecordError
from meterline.schemas.records import UsageEvent, WindowAggregate
from meterline.schemas.serde import AvroSerde, DecodedUsage
from meterline.sinks.clickhouse.rows import AGGREGATE_COLUMNS, REVISION_COLUMNS
from tests.support.events import EVENT, events

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
    assert write_aggregate(aggregate) == expected
    serde = AvroSerde(CATALOG)
    assert serde.decode_aggregate(serde.encode_aggregate(aggregate)) == aggregate


@pytest.mark.parametrize("write", [AggregateEncoder().encode, write_aggregate], ids=["python", "compiled"])
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        # fastavro writes an int out of range as a long, which a strict reader rejects: refused here.
        ({"source_partition": 2**31}, "2147483648 does not fit Avro's 32-bit int"),
        ({"revision": -(2**31) - 1}, "-2147483649 does not fit Avro's 32-bit int"),
        ({"value": 2**63}, "9223372036854775808 does not fit Avro's 64-bit long"),
        ({"closed_at": -(2**63) - 1}, "-9223372036854775809 does not fit Avro's 64-bit long"),
    ],
)
def test_a_number_out_of_its_fields_range_is_refused_by_both_writers(
    write: Callable[[WindowAggregate], bytes], fields: dict[str, int], message: str
) -> None:
    aggregate = dataclasses.replace(WindowAggregate("c", "m", 0, 60_000, 3, 1, 1, 1, 0, 0), **fields)
    with pytest.raises(ValueError, match=re.escape(message)):
        write(aggregate)


def test_the_aggregate_layout_is_the_current_schema() -> None:
    """A new WindowAggregate version must fail here first: the encoder would have to learn it."""
    assert layout_of(AGGREGATE_SCHEMA.definition) == AGGREGATE_LAYOUT
    assert tuple(f.name for f in fields(WindowAggregate)) == tuple(name for name, _ in AGGREGATE_LAYOUT)
    # The ClickHouse sink inserts the decoded fields as they are, as these columns.
    assert sorted(AGGREGATE_COLUMNS) == sorted(REVISION_COLUMNS)


@given(aggregates)
def test_an_aggregate_is_read_as_fastavro_reads_it(aggregate: WindowAggregate) -> None:
    body = fastavro_bytes(AGGREGATE_SCHEMA.parsed, aggregate_to_avro(aggregate))
    for read in (read_aggregate, codecs.read_aggregate):
        assert WindowAggregate(*read(b"header" + body, 6)) == aggregate


@given(aggregates, st.data())
def test_the_python_aggregate_reader_reads_every_byte_string_as_the_compiled_one(
    aggregate: WindowAggregate, data: st.DataObject
) -> None:
    for damaged in whole_and_damaged(AvroSerde(CATALOG).encode_aggregate(aggregate), data):
        assert outcome_of(codecs.read_aggregate, damaged) == outcome_of(read_aggregate, damaged)


@given(aggregates)
def test_an_aggregate_becomes_the_row_binary_row_of_its_fields(aggregate: WindowAggregate) -> None:
    """RowBinary (https://clickhouse.com/docs/interfaces/formats/RowBinary): a String is its length
    as an unsigned LEB128 varint and its bytes, numbers are fixed-width little-endian."""
    body = fastavro_bytes(AGGREGATE_SCHEMA.parsed, aggregate_to_avro(aggregate))
    fits = (
        0 <= aggregate.source_partition <= 0xFFFF
        and aggregate.event_count >= 0
        and 0 <= aggregate.revision <= 0xFFFF_FFFF
    )
    for read in (read_aggregate_row_binary, codecs.read_aggregate_row_binary):
        if not fits:
            with pytest.raises(ValueError, match="does not fit"):
                read(b"header" + body, 6)
            continue
        row = read(b"header" + body, 6)
        customer, meter = aggregate.customer_id.encode(), aggregate.meter.encode()
        assert row[: 1 + len(customer)] == bytes([len(customer)]) + customer  # short: one length byte
        rest = row[1 + len(customer) :]
        assert rest[: 1 + len(meter)] == bytes([len(meter)]) + meter
        numbers = struct.unpack("<qqHqqQIq", rest[1 + len(meter) :])
        assert numbers == (
            aggregate.window_start,
            aggregate.window_end,
            aggregate.source_partition,
            aggregate.value,
            aggregate.delta,
            aggregate.event_count,
            aggregate.revision,
            aggregate.closed_at,
        )


@given(aggregates, st.data())
def test_the_python_row_binary_reader_reads_every_byte_string_as_the_compiled_one(
    aggregate: WindowAggregate, data: st.DataObject
) -> None:
    for damaged in whole_and_damaged(AvroSerde(CATALOG).encode_aggregate(aggregate), data):
        assert outcome_of(codecs.read_aggregate_row_binary, damaged) == outcome_of(
            read_aggregate_row_binary, damaged
        )


def test_a_long_string_gets_a_varint_length_and_a_field_out_of_its_column_names_both() -> None:
    serde = AvroSerde(CATALOG)
    long_customer = WindowAggregate("c" * 300, "m", 0, 60_000, 3, 1, 1, 1, 0, 0)
    row = serde.decode_aggregate_row_binary(serde.encode_aggregate(long_customer))
    assert row[:2] == bytes([300 & 0x7F | 0x80, 300 >> 7]) and row[2:302] == b"c" * 300
    for aggregate, message in (
        (
            WindowAggregate("c", "m", 0, 60_000, 70_000, 1, 1, 1, 0, 0),
            "source_partition 70000 does not fit UInt16",
        ),
        (WindowAggregate("c", "m", 0, 60_000, 3, 1, 1, -1, 0, 0), "event_count -1 does not fit UInt64"),
        (WindowAggregate("c", "m", 0, 60_000, 3, 1, 1, 1, -2, 0), "revision -2 does not fit UInt32"),
    ):
        with pytest.raises(MalformedRecordError, match=message):
            serde.decode_aggregate_row_binary(serde.encode_aggregate(aggregate))


def test_an_aggregate_position_outside_the_record_is_malformed() -> None:
    for read in (read_aggregate, codecs.read_aggregate):
        with pytest.raises(ValueError, match="outside a record"):
            read(b"\x00", 5)


@given(aggregates, st.data())
def test_a_cut_or_padded_aggregate_is_malformed(aggregate: WindowAggregate, data: st.DataObject) -> None:
    serde = AvroSerde(CATALOG)
    encoded = serde.encode_aggregate(aggregate)
    cut = data.draw(st.integers(min_value=11, max_value=len(encoded) - 1))
    for broken in (encoded[:cut], encoded + b"\x00"):
        with pytest.raises(MalformedRecordError):
            serde.decode_aggregate(broken)


# -- the compiled event reader (schemas/_readers.pyx) -------------------------------------------


def fastavro_outcome(serde: AvroSerde, data: bytes) -> list[UsageEvent] | str:
    """What the fastavro path makes of `data`: its events, or "malformed"."""
    try:
        return serde.decode_usage_with_fastavro(data).events
    except MalformedRecordError:
        return "malformed"


def serde_batch_of(event: UsageEvent) -> bytes:
    serde = AvroSerde(CATALOG)
    return serde.encode_batch([serde.batch_item(event)])


def reader_outcome(serde: AvroSerde, data: bytes) -> list[UsageEvent] | str:
    try:
        return serde.decode_usage(data).events
    except MalformedRecordError:
        return "malformed"


@given(st.lists(events, max_size=20))
def test_events_written_by_fastavro_are_read_as_fastavro_reads_them(batch: list[UsageEvent]) -> None:
    serde = AvroSerde(CATALOG)
    batch_header, event_header = serde.encode_batch([])[:10], serde.encode_event(EVENT)[:10]
    body = fastavro_bytes(BATCH_SCHEMA.parsed, {"events": [event_to_avro(e) for e in batch]})
    assert read_events(batch_header + body, 10, True) == batch
    assert codecs.read_events(batch_header + body, 10, True) == batch
    assert serde.decode_usage(batch_header + body) == DecodedUsage(batch, is_batch=True)
    for event in batch:
        single = event_header + fastavro_bytes(EVENT_SCHEMA.parsed, event_to_avro(event))
        assert serde.decode_usage(single) == DecodedUsage([event], is_batch=False)


@given(st.lists(events, min_size=1, max_size=5), st.data())
def test_damaged_bytes_fail_or_read_exactly_as_fastavro_reads_them(
    batch: list[UsageEvent], data: st.DataObject
) -> None:
    """Cut, a byte replaced or a byte inserted: the reader and fastavro agree on every outcome, and
    nothing but MalformedRecordError escapes. One difference is deliberate: a varint of more than
    64 bits, which fastavro wraps into some number, is malformed to the reader."""
    serde = AvroSerde(CATALOG)
    encoded = serde.encode_batch([serde.batch_item(e) for e in batch])
    at = data.draw(st.integers(min_value=10, max_value=len(encoded) - 1))
    byte = bytes([data.draw(st.integers(min_value=0, max_value=255))])
    for damaged in (
        encoded[:at],
        encoded[:at] + byte + encoded[at + 1 :],
        encoded[:at] + byte + encoded[at:],
    ):
        outcome = reader_outcome(serde, damaged)
        # Ten bytes of varint whose last carries more than bit 63 (or goes on) hold more than 64 bits.
        may_hold_overlong_varint = re.search(rb"[\x80-\xff]{9}[\x02-\xff]", damaged) is not None
        assert outcome == fastavro_outcome(serde, damaged) or (
            may_hold_overlong_varint and outcome == "malformed"
        )


def test_blocks_with_a_byte_size_are_read_as_fastavro_reads_them() -> None:
    """Avro lets a writer give a negative block count followed by the block's size in bytes."""
    serde = AvroSerde(CATALOG)
    event = serde.batch_item(EVENT)
    sized_attributes = event.replace(b"\x02\x0cstatus\x06200\x00", b"\x01\x16\x0cstatus\x06200\x00")
    assert sized_attributes != event
    sized_batch = (
        serde.encode_batch([])[:10] + encode_long(-2) + encode_long(len(event) * 2) + event * 2 + b"\x00"
    )
    for data in (sized_batch, serde.encode_batch([sized_attributes])):
        assert reader_outcome(serde, data) == fastavro_outcome(serde, data)
        assert reader_outcome(serde, data) in ([EVENT, EVENT], [EVENT])


def test_the_compiled_codecs_are_what_the_serde_uses_here() -> None:
    """./run.sh builds them; an install without a C compiler falls back to schemas.codecs."""
    from meterline.schemas import serde

    assert serde.READERS == "compiled" and serde.read_events is read_events
    assert serde.read_aggregate is read_aggregate
    assert serde.read_aggregate_row_binary is read_aggregate_row_binary
    assert serde.new_aggregate is new_aggregate
    assert AvroSerde(CATALOG)._write_aggregate is write_aggregate


def test_an_aggregate_built_without_its_init_is_the_record_its_init_builds() -> None:
    """schemas._readers.new_aggregate sets the fields itself (the frozen dataclass's __init__ cost
    ~3.4 µs at every close): equal, hashed alike, as frozen, every field where __init__ puts it."""
    values = ("cust-1", "api_calls", 60_000, 120_000, 3, 17, 5, 4, 2, 130_000)
    built, initialised = new_aggregate(*values), WindowAggregate(*values)
    assert type(built) is WindowAggregate and built == initialised and hash(built) == hash(initialised)
    assert dataclasses.astuple(built) == values
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.value = 18  # type: ignore[misc]


BOTH_EVENT_READERS = pytest.mark.parametrize(
    "read", [read_events, codecs.read_events], ids=["compiled", "python"]
)


@BOTH_EVENT_READERS
def test_an_overlong_varint_or_a_bad_position_is_malformed(read: Callable[..., list[UsageEvent]]) -> None:
    with pytest.raises(ValueError, match="more than 64 bits"):
        read(b"\xff" * 12, 0, True)
    with pytest.raises(ValueError, match="more than 64 bits"):  # ten bytes, bit 64 set in the last
        read(b"\x80" * 9 + b"\x02", 0, True)
    with pytest.raises(ValueError, match="outside a record"):
        read(b"\x00", 5, True)
    with pytest.raises(ValueError, match="a block count of -2\\*\\*63"):
        read(b"\xff" * 9 + b"\x01", 0, True)
    assert read(b"\x00", 0, True) == []


def test_an_overlong_quantity_is_malformed_though_fastavro_wraps_it() -> None:
    overlong_quantity = serde_batch_of(EVENT).replace(
        b"\xf2\xc0\x01", b"\xf2\xc0\x81" + b"\x80" * 8 + b"\x00"
    )
    assert fastavro_outcome(AvroSerde(CATALOG), overlong_quantity) != "malformed"  # fastavro wraps it
    assert reader_outcome(AvroSerde(CATALOG), overlong_quantity) == "malformed"


def whole_and_damaged(encoded: bytes, data: st.DataObject) -> tuple[bytes, ...]:
    """A record whole, cut after its 10-byte header, with a byte replaced and with one inserted."""
    at = data.draw(st.integers(min_value=10, max_value=len(encoded)))
    byte = bytes([data.draw(st.integers(min_value=0, max_value=255))])
    return encoded, encoded[:at], encoded[:at] + byte + encoded[at + 1 :], encoded[:at] + byte + encoded[at:]


def outcome_of(read: Callable[..., Any], data: bytes) -> Any:
    """What `read` makes of the body after a 10-byte header: its result, or its error and message."""
    try:
        return read(data, 10, True) if read in (read_events, codecs.read_events) else read(data, 10)
    except ValueError as exc:
        return type(exc), str(exc)


@given(st.lists(events, min_size=1, max_size=5), st.data())
def test_the_python_reader_reads_every_byte_string_as_the_compiled_one(
    batch: list[UsageEvent], data: st.DataObject
) -> None:
    """The fallback of installs without a C compiler: the same events, or the same error and message,
    on a batch cut, with a byte replaced or a byte inserted."""
    serde = AvroSerde(CATALOG)
    for damaged in whole_and_damaged(serde.encode_batch([serde.batch_item(e) for e in batch]), data):
        assert outcome_of(codecs.read_events, damaged) == outcome_of(read_events, damaged)


def read_one(event: UsageEvent) -> UsageEvent:
    """`event` through the compiled reader, alone in a batch."""
    (read,) = read_events(serde_batch_of(event), 10, True)
    return read


def test_an_event_read_into_its_slots_is_the_record_its_init_builds() -> None:
    """schemas._readers stores an event's fields straight into UsageEvent's slots: the same record,
    every field where __init__ puts it, as frozen."""
    read = read_one(EVENT)
    assert type(read) is UsageEvent and read == EVENT
    assert dataclasses.astuple(read) == dataclasses.astuple(EVENT)
    assert [getattr(read, f.name) for f in fields(UsageEvent)] == [
        getattr(EVENT, f.name) for f in fields(UsageEvent)
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        read.quantity = 1  # type: ignore[misc]


def test_recurring_strings_are_read_once_and_handed_out_again_and_the_rest_each_time() -> None:
    """The compiled reader keeps one str per recurring value (schemas/_readers.pyx, _recurring_string):
    a customer, meter, unit, source and attribute of one record are the very objects of the next;
    event ids, and strings longer than the table's 48 bytes, are new each time."""
    first, second = read_one(EVENT), read_one(dataclasses.replace(EVENT, event_id="e-2"))
    assert first == EVENT and second == dataclasses.replace(EVENT, event_id="e-2")
    for name in ("customer_id", "meter", "unit", "source"):
        assert getattr(first, name) is getattr(second, name)
    ((key, value),), ((key_again, value_again),) = first.attributes.items(), second.attributes.items()
    assert key is key_again and value is value_again
    assert read_one(EVENT).event_id is not first.event_id
    longest, too_long = "c" * 48, "c" * 49
    assert read_one(dataclasses.replace(EVENT, customer_id=longest)).customer_id is (
        read_one(dataclasses.replace(EVENT, customer_id=longest)).customer_id
    )
    once, again = (read_one(dataclasses.replace(EVENT, customer_id=too_long)) for _ in range(2))
    assert once.customer_id == again.customer_id == too_long and once.customer_id is not again.customer_id


def test_more_distinct_strings_than_the_table_holds_are_each_read_as_fastavro_reads_them() -> None:
    """20,000 customers through a table of 4,096 slots, twice over: slots taken, replaced and found
    again, and every string right."""
    serde = AvroSerde(CATALOG)
    batch = [
        dataclasses.replace(EVENT, customer_id=f"customer-{n}", meter=f"m{n % 7}") for n in range(20_000)
    ]
    encoded = serde.encode_batch([serde.batch_item(e) for e in batch])
    for _ in range(2):
        assert read_events(encoded, 10, True) == batch == serde.decode_usage_with_fastavro(encoded).events


def test_bad_utf8_in_a_recurring_string_is_malformed_and_leaves_the_table_right() -> None:
    good = serde_batch_of(EVENT)
    bad = good.replace(b"cust-1", b"cust-\xff")
    assert bad != good
    with pytest.raises(UnicodeDecodeError):
        read_events(bad, 10, True)
    assert read_events(good, 10, True) == [EVENT]
