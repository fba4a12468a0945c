"""The Avro bodies of the hot paths, written and read by hand: UsageEvent written by the producer
SDK, WindowAggregate written by the stream worker (one per window close) and read by the sinks.

fastavro spends ~3.3 µs per event of a batch in its generic per-field dispatch, after the caller
has built a dict per record; these write the same bytes in ~1-2 µs, mostly by caching the encoded
form of the strings that repeat from record to record (customer, meter, unit, source,
attributes). Each knows exactly one field layout (`LAYOUT`, `AGGREGATE_LAYOUT`); serde falls back
to fastavro for any other, so a new schema version can never be written with an old layout.
tests/unit/test_codecs.py pins them byte for byte to fastavro.

Both are read by the compiled schemas/_readers.pyx: read in Python, a batch's events cost as much
as with fastavro, and a WindowAggregate ~6.7 µs (fastavro: ~10, mostly per-call setup for a
50-byte record). Where it could not be compiled (an install without a C compiler: a product
service that only emits), `read_events` and `read_aggregate` below read them the same way in
Python, pinned to it by tests/unit/test_codecs.py.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from meterline.schemas.records import UsageEvent, WindowAggregate

LAYOUT = (
    ("event_id", "string"),
    ("customer_id", "string"),
    ("meter", "string"),
    ("quantity", "long"),
    ("unit", "string"),
    ("timestamp", "long"),
    ("source", "string"),
    ("attributes", ("map", "string")),
)
AGGREGATE_LAYOUT = (
    ("customer_id", "string"),
    ("meter", "string"),
    ("window_start", "long"),
    ("window_end", "long"),
    ("source_partition", "int"),
    ("value", "long"),
    ("delta", "long"),
    ("event_count", "long"),
    ("revision", "int"),
    ("closed_at", "long"),
)
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
_CACHED_STRINGS = 65_536  # per cache: enough for every customer of a busy service; cleared when exceeded


def layout_of(record: dict[str, Any]) -> tuple[Any, ...]:
    """The (name, type) of each field of an Avro record definition, logical types ignored."""

    def kind(node: Any) -> Any:
        if isinstance(node, str):
            return node
        if isinstance(node, dict) and node.get("type") == "map":
            return ("map", kind(node["values"]))
        if isinstance(node, dict) and isinstance(node.get("type"), str):
            return node["type"]
        return repr(node)  # unions, records, arrays: nothing this encoder writes

    return tuple((field["name"], kind(field["type"])) for field in record.get("fields", ()))


def encode_long(n: int) -> bytes:
    """Avro's long: zig-zag, then a little-endian base-128 varint."""
    if not _LONG_MIN <= n <= _LONG_MAX:
        raise ValueError(f"{n} does not fit Avro's 64-bit long")
    zigzag = (n << 1) ^ (n >> 63)
    out = bytearray()
    while zigzag > 0x7F:
        out.append(zigzag & 0x7F | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


_SMALL_LONGS = tuple(encode_long(n) for n in range(8192))  # lengths and typical quantities


def _long(n: int) -> bytes:
    return _SMALL_LONGS[n] if 0 <= n < 8192 else encode_long(n)


def _int(n: int) -> bytes:
    """Avro's int: a long's bytes, for values that fit 32 bits."""
    if not _INT_MIN <= n <= _INT_MAX:
        raise ValueError(f"{n} does not fit Avro's 32-bit int")
    return _long(n)


# Epoch milliseconds from 1970-07-18 to 2039-09-07 zig-zag to 36-42 bits, six varint bytes: written
# unrolled, they cost a third of the loop.
_SIX_BYTE_MS = range(1 << 34, 1 << 41)


def _six_byte_timestamp(ms: int) -> bytes:
    z = ms << 1
    return bytes(
        (
            z & 0x7F | 0x80,
            z >> 7 & 0x7F | 0x80,
            z >> 14 & 0x7F | 0x80,
            z >> 21 & 0x7F | 0x80,
            z >> 28 & 0x7F | 0x80,
            z >> 35,
        )
    )


def _timestamp(ms: int) -> bytes:
    return _six_byte_timestamp(ms) if ms in _SIX_BYTE_MS else encode_long(ms)


class _StringCache:
    def __init__(self) -> None:
        self._strings: dict[str, bytes] = {}

    def _string(self, text: str) -> bytes:
        encoded = self._strings.get(text)
        if encoded is None:
            raw = text.encode()
            encoded = _long(len(raw)) + raw
            if len(self._strings) >= _CACHED_STRINGS:
                self._strings.clear()
            self._strings[text] = encoded
        return encoded


class EventEncoder(_StringCache):
    """Writes UsageEvent bodies in LAYOUT. Not thread-safe alone; the SDK calls it under its lock."""

    def __init__(self) -> None:
        super().__init__()
        self._maps: dict[tuple[tuple[str, str], ...], bytes] = {}

    def encode(self, event: UsageEvent) -> bytes:
        # Cache hits inline (`get(...) or miss(...)`: an encoded string is never empty): a method
        # call per field would cost as much as the encoding it saves.
        strings = self._strings.get
        event_id = event.event_id.encode()
        timestamp = event.timestamp
        return b"".join(
            (
                _long(len(event_id)),
                event_id,
                strings(event.customer_id) or self._string(event.customer_id),
                strings(event.meter) or self._string(event.meter),
                _long(event.quantity),
                strings(event.unit) or self._string(event.unit),
                _six_byte_timestamp(timestamp) if timestamp in _SIX_BYTE_MS else encode_long(timestamp),
                strings(event.source) or self._string(event.source),
                self._maps.get(tuple(event.attributes.items())) or self._map(event.attributes),
            )
        )

    def _map(self, entries: dict[str, str]) -> bytes:
        # Attributes repeat (status=200): the whole encoded map is cached, keyed by its items.
        items = tuple(entries.items())
        parts = [_long(len(items))] if items else []
        for key, value in items:
            parts.append(self._string(key))
            parts.append(self._string(value))
        parts.append(b"\x00")
        encoded = b"".join(parts)
        if len(self._maps) >= _CACHED_STRINGS:
            self._maps.clear()
        self._maps[items] = encoded
        return encoded


class AggregateEncoder(_StringCache):
    """Writes WindowAggregate bodies in AGGREGATE_LAYOUT."""

    def encode(self, aggregate: WindowAggregate) -> bytes:
        strings = self._strings.get
        return b"".join(
            (
                strings(aggregate.customer_id) or self._string(aggregate.customer_id),
                strings(aggregate.meter) or self._string(aggregate.meter),
                _timestamp(aggregate.window_start),
                _timestamp(aggregate.window_end),
                _int(aggregate.source_partition),
                _long(aggregate.value),
                _long(aggregate.delta),
                _long(aggregate.event_count),
                _int(aggregate.revision),
                _timestamp(aggregate.closed_at),
            )
        )


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """An Avro long at `pos`: (value, the position after it), read as schemas/_readers.pyx
    reads it. ValueError when the bytes end inside it or it holds more than 64 bits."""
    zigzag = shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise ValueError("the record ends inside a long")
        byte = data[pos]
        pos += 1
        if shift == 63 and byte > 1:
            raise ValueError("an Avro long of more than 64 bits")
        zigzag |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (zigzag >> 1) ^ -(zigzag & 1), pos
        shift += 7


def array_body(items: Sequence[bytes]) -> bytes:
    """An Avro array of already encoded items: one block with its count, then the end marker."""
    if not items:
        return b"\x00"
    return _long(len(items)) + b"".join(items) + b"\x00"


def _read_string(data: bytes, pos: int) -> tuple[str, int]:
    length, pos = _read_long(data, pos)
    if length < 0 or length > len(data) - pos:
        raise ValueError(f"a string of {length} bytes where {len(data) - pos} remain")
    return data[pos : pos + length].decode(), pos + length


def _read_block_count(data: bytes, pos: int) -> tuple[int, int]:
    """An array or map block's item count; a negative count is followed by the block's size in
    bytes, which a reader may skip over (the Avro spec)."""
    count, pos = _read_long(data, pos)
    if count < 0:
        if count == _LONG_MIN:  # the most negative long has no positive
            raise ValueError("a block count of -2**63")
        _, pos = _read_long(data, pos)
        return -count, pos
    return count, pos


def _read_event(data: bytes, pos: int) -> tuple[UsageEvent, int]:
    event_id, pos = _read_string(data, pos)
    customer_id, pos = _read_string(data, pos)
    meter, pos = _read_string(data, pos)
    quantity, pos = _read_long(data, pos)
    unit, pos = _read_string(data, pos)
    timestamp, pos = _read_long(data, pos)
    source, pos = _read_string(data, pos)
    attributes = {}
    count, pos = _read_block_count(data, pos)
    while count:
        for _ in range(count):
            key, pos = _read_string(data, pos)
            attributes[key], pos = _read_string(data, pos)
        count, pos = _read_block_count(data, pos)
    return UsageEvent(event_id, customer_id, meter, quantity, unit, timestamp, source, attributes), pos


def read_events(data: bytes, pos: int, batch: bool) -> list[UsageEvent]:
    """schemas/_readers.pyx's `read_events` in Python, for installs without its compiled form:
    the events of a body in LAYOUT starting at `pos` and ending at the end of `data` (a
    UsageEventBatch's when `batch`, else one UsageEvent). ValueError when the bytes are not that."""
    if not 0 <= pos <= len(data):
        raise ValueError(f"position {pos} outside a record of {len(data)} bytes")
    events = []
    if batch:
        count, pos = _read_block_count(data, pos)
        while count:
            for _ in range(count):
                event, pos = _read_event(data, pos)
                events.append(event)
            count, pos = _read_block_count(data, pos)
    else:
        event, pos = _read_event(data, pos)
        events.append(event)
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} trailing bytes after the record")
    return events


def read_aggregate(data: bytes, pos: int) -> tuple[str, str, int, int, int, int, int, int, int, int]:
    """schemas/_readers.pyx's `read_aggregate` in Python: the fields of a WindowAggregate body in
    AGGREGATE_LAYOUT starting at `pos` and ending at the end of `data`, in that layout's order.
    ValueError when the bytes are not one."""
    if not 0 <= pos <= len(data):
        raise ValueError(f"position {pos} outside a record of {len(data)} bytes")
    customer_id, pos = _read_string(data, pos)
    meter, pos = _read_string(data, pos)
    numbers = []
    for _ in range(8):
        number, pos = _read_long(data, pos)
        numbers.append(number)
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} trailing bytes after the record")
    window_start, window_end, partition, value, delta, count, revision, closed_at = numbers
    if not (_INT_MIN <= partition <= _INT_MAX and _INT_MIN <= revision <= _INT_MAX):
        raise ValueError("an int field out of Avro's 32-bit range")
    return customer_id, meter, window_start, window_end, partition, value, delta, count, revision, closed_at


# What the ClickHouse sink inserts per aggregate: a RowBinary row of usage_window_revisions, its
# columns in AGGREGATE_LAYOUT's order with these types (pinned to the table's by
# tests/integration/test_clickhouse_sink.py). RowBinary writes a LowCardinality(String) as a String,
# a DateTime64(3) as its Int64 milliseconds; numbers are little-endian.
AGGREGATE_ROW_BINARY = (
    ("customer_id", "String"),
    ("meter", "LowCardinality(String)"),
    ("window_start", "DateTime64(3, 'UTC')"),
    ("window_end", "DateTime64(3, 'UTC')"),
    ("source_partition", "UInt16"),
    ("value", "Int64"),
    ("delta", "Int64"),
    ("event_count", "UInt64"),
    ("revision", "UInt32"),
    ("closed_at", "DateTime64(3, 'UTC')"),
)
_ROW_BINARY_NUMBERS = struct.Struct("<qqHqqQIq")


def row_binary_aggregate(fields: Sequence[Any]) -> bytes:
    """An aggregate's fields (in AGGREGATE_LAYOUT's order) as a RowBinary row of AGGREGATE_ROW_BINARY.
    ValueError when one does not fit its column's type."""
    customer_id, meter, window_start, window_end, partition, value, delta, count, revision, closed_at = fields
    if not 0 <= partition <= 0xFFFF:
        raise ValueError(f"source_partition {partition} does not fit UInt16")
    if count < 0:
        raise ValueError(f"event_count {count} does not fit UInt64")
    if not 0 <= revision <= 0xFFFF_FFFF:
        raise ValueError(f"revision {revision} does not fit UInt32")
    customer: bytes = customer_id.encode()
    meter_bytes: bytes = meter.encode()
    numbers = _ROW_BINARY_NUMBERS.pack(
        window_start, window_end, partition, value, delta, count, revision, closed_at
    )
    return _uleb128(len(customer)) + customer + _uleb128(len(meter_bytes)) + meter_bytes + numbers


def read_aggregate_row_binary(data: bytes, pos: int) -> bytes:
    """schemas/_readers.pyx's `read_aggregate_row_binary` in Python: the aggregate body starting at
    `pos` as its RowBinary row. ValueError as read_aggregate, or when a field does not fit."""
    return row_binary_aggregate(read_aggregate(data, pos))


def _uleb128(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
