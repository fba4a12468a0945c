"""Both wire formats of DESIGN §3, told apart by their first bytes.

- Avro single-object encoding: 0xC3 0x01, the 8-byte CRC-64-AVRO fingerprint, the Avro body.
  Used when no Schema Registry is configured; the fingerprint names a version in schemas/avro.
- Confluent Schema Registry framing: 0x00, a 4-byte big-endian schema id, the Avro body. Subjects
  follow the record-name strategy (`meterline.UsageEvent`), because events and batches share a topic.

Either way the writer schema is resolved to this code's newest version of the same record.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

from fastavro import schemaless_reader, schemaless_writer

from meterline.schemas.catalog import (
    USAGE_EVENT,
    USAGE_EVENT_BATCH,
    WINDOW_AGGREGATE,
    SchemaCatalog,
    SchemaVersion,
    fingerprint_of,
    parse_for_ints,
)
from meterline.schemas.codecs import (
    AGGREGATE_LAYOUT,
    LAYOUT,
    AggregateEncoder,
    EventEncoder,
    array_body,
    layout_of,
    row_binary_aggregate,
)
from meterline.schemas.datums import aggregate_from_avro, aggregate_to_avro, event_from_avro, event_to_avro
from meterline.schemas.errors import MalformedRecordError, UnknownSchemaError
from meterline.schemas.records import UsageEvent, WindowAggregate

try:
    from meterline.schemas._readers import new_aggregate as new_aggregate  # the stream app's too
    from meterline.schemas._readers import read_aggregate, read_aggregate_row_binary, read_events

    READERS = "compiled"
except ImportError:  # installed without a C compiler (the lean SDK): the same readers in Python
    from meterline.schemas.codecs import read_aggregate, read_aggregate_row_binary, read_events

    new_aggregate = WindowAggregate
    READERS = "python"

try:
    from meterline.schemas._writers import write_aggregate as compiled_write_aggregate

    WRITERS = "compiled"
except ImportError:  # as above: AggregateEncoder writes the same bytes in Python
    WRITERS = "python"

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
_SCHEMA_ID = struct.Struct(">I")


class Framing(StrEnum):
    SINGLE_OBJECT = "single_object"
    CONFLUENT = "confluent"


@dataclass(frozen=True)
class _Writer:
    """A writer schema as found on the wire, and the reader schema it resolves to."""

    name: str
    writer: dict[str, Any]
    reader: dict[str, Any] | None  # None when writer and reader are the same version


class DecodedUsage(NamedTuple):
    """A NamedTuple, not a frozen dataclass: one is built per record, and on single-event records
    a frozen dataclass's __init__ cost about a microsecond more."""

    events: list[UsageEvent]
    is_batch: bool


class AvroSerde:
    """Encodes and decodes meterline's records; one per process, it caches schema lookups."""

    def __init__(self, catalog: SchemaCatalog | None = None, registry: SchemaRegistryClient | None = None):
        self.catalog = catalog or SchemaCatalog()
        self.registry = registry
        self.framing = Framing.CONFLUENT if registry is not None else Framing.SINGLE_OBJECT
        self._headers: dict[str, bytes] = {}
        self._writers: dict[bytes, _Writer] = {}

    @classmethod
    def from_registry_url(cls, url: str, catalog: SchemaCatalog | None = None) -> AvroSerde:
        """A serde for `url`, or for single-object encoding when `url` is empty."""
        if not url:
            return cls(catalog)
        from confluent_kafka.schema_registry import SchemaRegistryClient

        return cls(catalog, SchemaRegistryClient.new_client({"url": url}))

    # -- encoding --------------------------------------------------------------------------------

    def encode(self, name: str, datum: dict[str, Any]) -> bytes:
        """Encode `datum` with this code's newest version of record `name`."""
        schema = self.catalog.latest(name)
        buffer = io.BytesIO()
        buffer.write(self._header(schema))
        schemaless_writer(buffer, schema.parsed, datum)
        return buffer.getvalue()

    def encode_event(self, event: UsageEvent) -> bytes:
        """One event as one message."""
        return self._header(self.catalog.latest(USAGE_EVENT)) + self._write_event(event)

    def batch_item(self, event: UsageEvent) -> bytes:
        """The Avro body of `event` as an item of a UsageEventBatch; its length is exactly what it
        adds to the batch, which is how the SDK bounds a batch's size."""
        return self._write_batch_item(event)

    def encode_batch(self, items: Sequence[bytes]) -> bytes:
        """One UsageEventBatch message of items made by `batch_item`."""
        return self._header(self.catalog.latest(USAGE_EVENT_BATCH)) + array_body(items)

    def encode_aggregate(self, aggregate: WindowAggregate) -> bytes:
        return self._header(self.catalog.latest(WINDOW_AGGREGATE)) + self._write_aggregate(aggregate)

    @cached_property
    def _write_event(self) -> Callable[[UsageEvent], bytes]:
        return _event_writer(self.catalog.latest(USAGE_EVENT).definition)

    @cached_property
    def _write_batch_item(self) -> Callable[[UsageEvent], bytes]:
        # The batch's one field is an array of events of the version the batch references.
        batch = self.catalog.latest(USAGE_EVENT_BATCH).definition
        return _event_writer(batch["fields"][0]["type"]["items"])

    @cached_property
    def _write_aggregate(self) -> Callable[[WindowAggregate], bytes]:
        schema = self.catalog.latest(WINDOW_AGGREGATE)
        if layout_of(schema.definition) == AGGREGATE_LAYOUT:
            return compiled_write_aggregate if WRITERS == "compiled" else AggregateEncoder().encode

        def write(aggregate: WindowAggregate) -> bytes:
            buffer = io.BytesIO()
            schemaless_writer(buffer, schema.parsed, aggregate_to_avro(aggregate))
            return buffer.getvalue()

        return write

    def _header(self, schema: SchemaVersion) -> bytes:
        header = self._headers.get(schema.name)
        if header is None:
            if self.registry is None:
                header = SINGLE_OBJECT_MAGIC + schema.fingerprint
            else:
                from confluent_kafka.schema_registry import Schema

                schema_id = self.registry.register_schema(schema.name, Schema(schema.schema_json, "AVRO"))
                header = CONFLUENT_MAGIC + _SCHEMA_ID.pack(schema_id)
            self._headers[schema.name] = header
        return header

    def _known_header(self, schema: SchemaVersion) -> bytes | None:
        """The header of records of `schema` as this code writes them, found without writing
        anything (a reader may hold read-only registry credentials): by fingerprint, or the id the
        registry has for it; None when the registry has none yet."""
        if self.registry is None or schema.name in self._headers:
            return self._header(schema)
        from confluent_kafka.schema_registry import Schema
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            registered = self.registry.lookup_schema(schema.name, Schema(schema.schema_json, "AVRO"))
        except SchemaRegistryError:
            return None
        if registered.schema_id is None:
            return None
        return CONFLUENT_MAGIC + _SCHEMA_ID.pack(registered.schema_id)

    # -- decoding --------------------------------------------------------------------------------

    def decode(self, data: bytes) -> tuple[str, Any]:
        """Return (record name, datum) resolved to this code's newest version of that record."""
        if data[:2] == SINGLE_OBJECT_MAGIC:
            header_len = 10
        elif data[:1] == CONFLUENT_MAGIC:
            header_len = 5
        else:
            raise MalformedRecordError(
                f"not a meterline record: first bytes {data[:2].hex() or 'empty'}, expected c301 "
                "(Avro single-object encoding) or 00 (Schema Registry framing)"
            )
        if len(data) < header_len:
            raise MalformedRecordError(
                f"record of {len(data)} bytes is shorter than its {header_len}-byte header"
            )
        writer = self._writer(data[:header_len])
        buffer = io.BytesIO(data)
        buffer.seek(header_len)
        try:
            datum = schemaless_reader(buffer, writer.writer, writer.reader)
        except Exception as exc:  # fastavro raises many types for bad bytes
            raise MalformedRecordError(f"{writer.name} body does not decode: {exc!r}") from exc
        if buffer.tell() != len(data):
            raise MalformedRecordError(
                f"{writer.name} body has {len(data) - buffer.tell()} trailing bytes after the record"
            )
        return writer.name, datum

    def decode_usage(self, data: bytes) -> DecodedUsage:
        """Decode a UsageEvent or a UsageEventBatch message into events."""
        header_len = _own_header_length(data)
        is_batch = self._usage_headers.get(data[:header_len])
        if is_batch is not None:  # this code's own versions: read by the compiled reader
            try:
                # Built by tuple.__new__: namedtuple's own __new__ is a Python lambda, once a record.
                return tuple.__new__(DecodedUsage, (read_events(data, header_len, is_batch), is_batch))
            except ValueError as exc:
                name = USAGE_EVENT_BATCH if is_batch else USAGE_EVENT
                raise MalformedRecordError(f"{name} body does not decode: {exc!r}") from exc
        return self.decode_usage_with_fastavro(data)

    def decode_usage_with_fastavro(self, data: bytes) -> DecodedUsage:
        """`decode_usage` through fastavro, for any writer version: the path the compiled reader is
        measured and pinned against (bench/stream.py, tests/unit/test_codecs.py)."""
        name, datum = self.decode(data)
        if name == USAGE_EVENT:
            return DecodedUsage([event_from_avro(datum)], is_batch=False)
        if name == USAGE_EVENT_BATCH:
            return DecodedUsage([event_from_avro(item) for item in datum["events"]], is_batch=True)
        raise UnknownSchemaError(f"expected a usage event or batch on this topic, got a {name}")

    def decode_aggregate(self, data: bytes) -> WindowAggregate:
        return new_aggregate(*self.decode_aggregate_fields(data))

    def decode_aggregate_fields(self, data: bytes) -> tuple[Any, ...]:
        """An aggregate's fields in AGGREGATE_LAYOUT's order (WindowAggregate's), without building
        the record."""
        body = self._own_aggregate_body(data)
        if body is not None:  # this code's own version: the compiled reader
            try:
                return read_aggregate(data, body)
            except ValueError as exc:
                raise MalformedRecordError(f"{WINDOW_AGGREGATE} body does not decode: {exc!r}") from exc
        name, datum = self.decode(data)
        if name != WINDOW_AGGREGATE:
            raise UnknownSchemaError(f"expected a {WINDOW_AGGREGATE}, got a {name}")
        return astuple(aggregate_from_avro(datum))

    def decode_aggregate_row_binary(self, data: bytes) -> bytes:
        """An aggregate as the RowBinary row the ClickHouse sink inserts (codecs.AGGREGATE_ROW_BINARY),
        without a Python object per field."""
        return self.decode_aggregates_row_binary([data])[0]

    def decode_aggregates_row_binary(self, values: list[bytes]) -> list[bytes]:
        """`decode_aggregate_row_binary` of each of `values`, the header looked up once (the sink
        reads ~100,000 aggregates a second, a run of a partition's records at a time)."""
        header = self._aggregate_header
        body = -1 if header is None else len(header)
        try:
            return [
                read_aggregate_row_binary(data, body)  # this code's own version: the compiled reader
                if header is not None and data.startswith(header)
                else row_binary_aggregate(self.decode_aggregate_fields(data))
                for data in values
            ]
        except ValueError as exc:
            raise MalformedRecordError(f"{WINDOW_AGGREGATE} does not make a row: {exc!r}") from exc

    def _own_aggregate_body(self, data: bytes) -> int | None:
        """Where the body of `data` starts when it is an aggregate written in AGGREGATE_LAYOUT by this
        code's newest version (what the compiled readers read); None otherwise."""
        header = self._aggregate_header
        return len(header) if header is not None and data.startswith(header) else None

    @cached_property
    def _aggregate_header(self) -> bytes | None:
        """The header of aggregates written in AGGREGATE_LAYOUT by this code's newest version."""
        schema = self.catalog.latest(WINDOW_AGGREGATE)
        if layout_of(schema.definition) != AGGREGATE_LAYOUT:
            return None
        return self._known_header(schema)

    @cached_property
    def _usage_headers(self) -> dict[bytes, bool]:
        """header -> is_batch, for the newest UsageEvent and UsageEventBatch when their events are
        in LAYOUT, the one layout schemas._readers reads."""
        event = self.catalog.latest(USAGE_EVENT)
        batch = self.catalog.latest(USAGE_EVENT_BATCH)
        headers = {}
        for schema, its_events, is_batch in (
            (event, event.definition, False),
            (batch, batch.definition["fields"][0]["type"]["items"], True),
        ):
            header = self._known_header(schema) if layout_of(its_events) == LAYOUT else None
            if header is not None:
                headers[header] = is_batch
        return headers

    def _writer(self, header: bytes) -> _Writer:
        writer = self._writers.get(header)
        if writer is None:
            writer = self._lookup_writer(header)
            self._writers[header] = writer
        return writer

    def _lookup_writer(self, header: bytes) -> _Writer:
        if header[:2] == SINGLE_OBJECT_MAGIC:
            version = self.catalog.by_fingerprint(header[2:])
            return self._resolve(version.name, version.parsed)
        (schema_id,) = _SCHEMA_ID.unpack(header[1:])
        if self.registry is None:
            raise UnknownSchemaError(
                f"record framed for a Schema Registry (schema id {schema_id}) but no registry is configured"
            )
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            registered = self.registry.get_schema(schema_id)
        except SchemaRegistryError as exc:
            raise UnknownSchemaError(f"schema id {schema_id} is unknown to the registry: {exc}") from exc
        definition = json.loads(registered.schema_str or "{}")
        known = self.catalog.find(fingerprint_of(definition))
        if known is not None:
            return self._resolve(known.name, known.parsed)
        # A version this code does not have (a newer writer): resolve it to our newest one.
        name = f"{definition.get('namespace', '')}.{definition.get('name', '')}".lstrip(".")
        return self._resolve(name, parse_for_ints(definition))

    def _resolve(self, name: str, writer: dict[str, Any]) -> _Writer:
        reader = self.catalog.latest(name).parsed
        return _Writer(name, writer, None if reader is writer else reader)


def _own_header_length(data: bytes) -> int:
    """The header length of `data` framed as this code frames records (DESIGN §3), unchecked: the
    header is then compared with this code's own."""
    return 10 if data[:2] == SINGLE_OBJECT_MAGIC else 5


def _event_writer(definition: dict[str, Any]) -> Callable[[UsageEvent], bytes]:
    """The fastest writer of `definition`'s bytes: the hand-written encoder where it knows the
    layout, fastavro otherwise (as for aggregates, AvroSerde._write_aggregate)."""
    if layout_of(definition) == LAYOUT:
        return EventEncoder().encode
    parsed = parse_for_ints(definition)

    def write(event: UsageEvent) -> bytes:
        buffer = io.BytesIO()
        schemaless_writer(buffer, parsed, event_to_avro(event))
        return buffer.getvalue()

    return write
