"""Both wire formats round-trip; schemas evolve; unknown schemas and bad bytes are typed errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterline.schemas.catalog import USAGE_EVENT, SchemaCatalog
from meterline.schemas.errors import MalformedRecordError, RejectReason, UnknownSchemaError
from meterline.schemas.records import UsageEvent, WindowAggregate
from meterline.schemas.serde import AvroSerde, event_to_avro
from tests.support.events import EVENT, events

DATA = Path(__file__).parent / "data"


def registry_serde(name: str, catalog: SchemaCatalog | None = None) -> AvroSerde:
    return AvroSerde.from_registry_url(f"mock://{name}", catalog)


def same_registry(serde: AvroSerde, catalog: SchemaCatalog | None = None) -> AvroSerde:
    """Another reader of the registry `serde` writes to (mock registries are per client)."""
    return AvroSerde(catalog, serde.registry)


@given(st.lists(events, min_size=1, max_size=20))
def test_single_object_encoding_round_trips_events_and_batches(batch: list[UsageEvent]) -> None:
    serde = AvroSerde()
    single = serde.decode_usage(serde.encode_event(batch[0]))
    assert single.events == [batch[0]] and not single.is_batch
    packed = serde.decode_usage(serde.encode_batch([serde.batch_item(e) for e in batch]))
    assert packed.events == batch and packed.is_batch


def test_single_object_header_is_magic_plus_little_endian_crc64_fingerprint() -> None:
    serde = AvroSerde()
    data = serde.encode_event(EVENT)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == serde.catalog.latest(USAGE_EVENT).fingerprint
    # The Avro specification's own vector: the canonical form "int" has fingerprint 0x7275d51a3f395c8f.
    from meterline.schemas.catalog import fingerprint_of

    assert fingerprint_of({"type": "int"}) == bytes.fromhex("8f5c393f1ad57572")


def test_confluent_framing_round_trips_and_names_a_registry_id() -> None:
    serde = registry_serde("framing")
    data = serde.encode_event(EVENT)
    assert data[0] == 0 and len(data) > 5
    assert serde.decode_usage(data).events == [EVENT]
    batch = serde.encode_batch([serde.batch_item(EVENT)] * 3)
    assert serde.decode_usage(batch).events == [EVENT] * 3
    # Another reader of the same registry reads it too, knowing nothing but the id.
    assert same_registry(serde).decode_usage(data).events == [EVENT]


def test_a_registry_reader_registers_nothing_and_reads_by_the_ids_it_finds() -> None:
    """Readers may hold read-only credentials: reading looks schemas up, never registers them."""
    writer = registry_serde("reader-registers-nothing")
    event = writer.encode_event(EVENT)
    assert writer.registry is not None and writer.registry.get_subjects() == ["meterline.UsageEvent"]
    reader = same_registry(writer)
    assert reader.decode_usage(event).events == [EVENT]  # the compiled reader: its id is known
    with pytest.raises(UnknownSchemaError):  # looks up WindowAggregate's id: not registered
        reader.decode_aggregate(event)
    assert writer.registry.get_subjects() == ["meterline.UsageEvent"]
    # A batch written later, once its schema is registered, is read as well (through fastavro).
    batch = writer.encode_batch([writer.batch_item(EVENT)])
    assert reader.decode_usage(batch).events == [EVENT]


def test_a_registry_reader_also_reads_single_object_records() -> None:
    assert registry_serde("mixed").decode_usage(AvroSerde().encode_event(EVENT)).events == [EVENT]


def test_window_aggregate_round_trips_in_both_framings() -> None:
    aggregate = WindowAggregate("cust-1", "api_calls", 60_000, 120_000, 3, 500, 20, 7, 1, 130_000)
    for serde in (AvroSerde(), registry_serde("aggregates")):
        decoded = serde.decode_aggregate(serde.encode_aggregate(aggregate))
        assert decoded == aggregate
        assert decoded.identity == ("cust-1", "api_calls", 60_000, 3, 1)


def test_unknown_fingerprint_is_a_typed_error_with_the_dlq_reason() -> None:
    with pytest.raises(UnknownSchemaError, match="unknown schema fingerprint ffffffffffffffff") as caught:
        AvroSerde().decode(b"\xc3\x01" + b"\xff" * 8 + b"\x02")
    assert caught.value.reason is RejectReason.UNKNOWN_SCHEMA


def test_unknown_registry_id_is_a_typed_error() -> None:
    with pytest.raises(UnknownSchemaError, match="schema id 4242 is unknown to the registry"):
        registry_serde("empty").decode(b"\x00" + (4242).to_bytes(4, "big") + b"\x02")


def test_registry_framing_without_a_registry_is_a_typed_error() -> None:
    data = registry_serde("elsewhere").encode_event(EVENT)
    with pytest.raises(UnknownSchemaError, match="no registry is configured"):
        AvroSerde().decode(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"event_id": "json"}', "not a meterline record: first bytes 7b22"),
        (b"", "first bytes empty"),
        (b"\xc3\x01\x00", "shorter than its 10-byte header"),
    ],
)
def test_bytes_that_are_not_a_record_are_malformed(data: bytes, message: str) -> None:
    with pytest.raises(MalformedRecordError, match=message) as caught:
        AvroSerde().decode(data)
    assert caught.value.reason is RejectReason.MALFORMED


def test_truncated_and_padded_bodies_are_malformed() -> None:
    data = AvroSerde().encode_event(EVENT)
    with pytest.raises(MalformedRecordError, match="does not decode"):
        AvroSerde().decode(data[:-3])
    with pytest.raises(MalformedRecordError, match="trailing bytes"):
        AvroSerde().decode(data + b"\x00")


# -- evolution: v2 adds `region` with a default -------------------------------------------------

V1 = SchemaCatalog(DATA / "evolution_v1")
V2 = SchemaCatalog(DATA / "evolution_v2")


def test_v2_reader_reads_v1_records_with_the_default() -> None:
    v1_bytes = AvroSerde(V1).encode(USAGE_EVENT, event_to_avro(EVENT))
    for reader in (AvroSerde(V2), registry_serde("evo-a", V2)):
        name, datum = reader.decode(v1_bytes)
        assert name == USAGE_EVENT
        assert datum["region"] == "unknown"
        assert {k: v for k, v in datum.items() if k != "region"} == event_to_avro(EVENT)


def test_v2_records_through_a_registry_are_readable_by_a_v1_reader() -> None:
    writer = registry_serde("evo-b", V2)
    v2_bytes = writer.encode(USAGE_EVENT, event_to_avro(EVENT) | {"region": "eu"})
    name, datum = same_registry(writer, V1).decode(v2_bytes)
    assert (name, datum) == (USAGE_EVENT, event_to_avro(EVENT))
    name, datum = same_registry(writer, V2).decode(v2_bytes)
    assert datum["region"] == "eu"


def test_v2_single_object_records_are_unknown_to_a_v1_reader() -> None:
    """Without a registry a v1 reader cannot know v2's writer schema: a typed error, not a guess."""
    v2_bytes = AvroSerde(V2).encode(USAGE_EVENT, event_to_avro(EVENT) | {"region": "eu"})
    with pytest.raises(UnknownSchemaError):
        AvroSerde(V1).decode(v2_bytes)


def test_every_version_stays_readable_in_the_catalog() -> None:
    versions = {(v.name, v.version) for v in V2.versions()}
    assert versions == {(USAGE_EVENT, 1), (USAGE_EVENT, 2)}
    assert V2.latest(USAGE_EVENT).version == 2
    assert V2.get(USAGE_EVENT, 1).fingerprint == V1.get(USAGE_EVENT, 1).fingerprint
