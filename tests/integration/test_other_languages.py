"""Usage from Java and Go services, produced the way the README's recipe has them produce it:
Confluent's Avro serializer (magic byte 0, the 4-byte schema id, the Avro body) with the subject
`meterline.UsageEvent` (RecordNameStrategy), the customer id as a UTF-8 string key, and the Java
client's default partitioner (murmur2; a Go client sets librdkafka's `partitioner: murmur2_random`,
which picks the same partitions). The workload's bytes are made by confluent-kafka's own
AvroSerializer and StringSerializer, the serializers of the same family, sent through librdkafka
(which confluent-kafka-go wraps) configured as the Go recipe says, and pinned to the wire format
the Java serializer writes. The stream app, its registry a separate process's, counts them exactly.
The partitioner is checked against the Java client itself: a KafkaProducer (kafka-clients from
Maven Central) sends 10,000 customer ids to Apache Kafka."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import shutil
import struct
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient, record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext, StringSerializer
from fastavro import schemaless_writer

from meterline.core.config import Config
from meterline.core.kafka import ensure_topics
from meterline.schemas.catalog import USAGE_EVENT, SchemaCatalog
from meterline.schemas.datums import event_to_avro
from meterline.schemas.partitioner import partition_for
from meterline.schemas.records import UsageEvent
from meterline.workload import Emission, Expected, generate
from tests.support import apache_kafka as kraft
from tests.support.apache_kafka import on_apache_kafka  # noqa: F401  (this module runs on Apache Kafka)
from tests.support.pipeline import counted_by_one_worker, small_workload
from tests.support.schema_registry import Registry, serve_registry

SCHEMA = SchemaCatalog().latest(USAGE_EVENT)
ROOT = Path(__file__).resolve().parents[2]
JAVA = ROOT / "tests" / "support" / "java"
GO_RECIPE = ROOT / "examples" / "go"


@pytest.fixture
def registry() -> Iterator[tuple[Registry, str]]:
    with serve_registry() as served:
        yield served


def confluent_serializer(url: str) -> AvroSerializer:
    """As a Java service's KafkaAvroSerializer is configured by the recipe: auto-registering the
    schema of schemas/avro under its record name."""
    return AvroSerializer(
        SchemaRegistryClient({"url": url}),
        SCHEMA.schema_json,
        lambda event, _ctx: event_to_avro(event),
        {"auto.register.schemas": True, "subject.name.strategy": record_subject_name_strategy},
    )


def wire_format(schema_id: int, event: UsageEvent) -> bytes:
    """What Confluent's serializers write, from the wire-format spec rather than a serializer."""
    body = io.BytesIO()
    schemaless_writer(body, SCHEMA.parsed, event_to_avro(event))
    return b"\x00" + struct.pack(">I", schema_id) + body.getvalue()


def produce_as_java_and_go_do(config: Config, url: str, emissions: Iterable[Emission]) -> bytes:
    """Every emission through librdkafka configured as the Go recipe says, serialized as the Java
    recipe says; asserts each message landed where the Java client would put it. Returns the first
    event's message value."""
    serialize, key_of = confluent_serializer(url), StringSerializer("utf_8")
    topic = config.topics.events
    producer = Producer(
        {
            "bootstrap.servers": config.kafka.bootstrap,
            "partitioner": "murmur2_random",  # the Go recipe; the Java client's default for keyed records
            "enable.idempotence": True,
            "acks": "all",
        }
    )
    partitions = len(producer.list_topics(topic, timeout=15).topics[topic].partitions)
    misplaced: list[tuple[bytes, int]] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        assert error is None, error
        if message.partition() != partition_for(message.key() or b"", partitions):
            misplaced.append((message.key() or b"", message.partition()))

    first = b""
    for emission in emissions:
        if emission.event is None:  # bytes that are no event at all: sent as they are
            producer.produce(topic, emission.raw, emission.key, on_delivery=delivered)
            continue
        value = serialize(emission.event, SerializationContext(topic, MessageField.VALUE))
        first = first or value
        key = key_of(emission.event.customer_id, SerializationContext(topic, MessageField.KEY))
        producer.produce(topic, value, key, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert misplaced == [], "librdkafka's murmur2_random placed keys where the Java client would not"
    return first


def test_events_from_java_and_go_producers_are_counted_exactly(
    registry: tuple[Registry, str], config: Config, tmp_path: Path
) -> None:
    served, url = registry
    config = dataclasses.replace(config, kafka=dataclasses.replace(config.kafka, schema_registry_url=url))
    spec = small_workload(seed=77, events=4_000)  # duplicates, late, out of order, invalid and malformed
    expected = Expected(config.windows.size_ms)
    emissions = list(generate(spec, config.meters, config.windows.size_ms, expected))
    first = produce_as_java_and_go_do(config, url, emissions)
    assert served.subjects == {"meterline.UsageEvent": [1]}
    first_event = next(e.event for e in emissions if e.event is not None)
    assert first == wire_format(1, first_event)

    result = counted_by_one_worker(config, expected.to_json(spec), tmp_path)
    assert result.windows_matching == result.windows_expected > 0
    assert result.dlq_found == result.dlq_expected and sum(result.dlq_found.values()) > 0


def test_the_java_clients_default_partitioner_picks_the_sdks_partition(
    apache_kafka: kraft.Cluster, tmp_path: Path
) -> None:
    """A real Java KafkaProducer (kafka-clients 4.x from Maven Central, tests/support/java) sends
    10,000 customer ids, ASCII and not, keyed as the Java recipe keys them: the broker puts each in
    the partition meterline's SDK and HTTP ingest pick (schemas.partitioner)."""
    topic, partitions = f"partitions-{uuid.uuid4().hex[:8]}", 12
    ensure_topics(apache_kafka.bootstrap, [topic], partitions)
    ids = [f"cust-{n}" for n in range(9_990)] + [f"kunde-{c}" for c in "äöüßéñ中文日本"]
    answered = subprocess.run(
        ["java", "-cp", f"{kraft.JARS}/*", str(JAVA / "PartitionOf.java"), apache_kafka.bootstrap, topic],
        input="\n".join(ids).encode(),
        capture_output=True,
        timeout=300,
        check=True,
    )
    lines = [line.split(" ", 1) for line in answered.stdout.decode().splitlines()]
    java = {customer: int(partition) for partition, customer in lines}
    assert len(java) == 10_000
    assert java == {i: partition_for(i.encode(), partitions) for i in ids}
    assert len(set(java.values())) == partitions  # every partition taken: the ids are spread


def test_the_go_recipe_runs_as_a_go_program_and_is_counted_exactly(
    registry: tuple[Registry, str], config: Config, tmp_path: Path
) -> None:
    """examples/go, the README's Go recipe (franz-go and hamba/avro from Go's module proxy), built
    and fed a workload (duplicates, late, out of order, invalid and malformed records): it registers
    the schema under the record name, puts every record in the SDK's partition, and the stream app
    counts every window exactly."""
    if not shutil.which("go"):
        if os.environ.get("METERLINE_REQUIRE_GO"):
            pytest.fail("Go is required here (METERLINE_REQUIRE_GO=1) and is not on PATH")
        pytest.skip("no Go toolchain on PATH: the Go recipe is not built")
    served, url = registry
    config = dataclasses.replace(config, kafka=dataclasses.replace(config.kafka, schema_registry_url=url))
    program = tmp_path / "go-recipe"
    subprocess.run(["go", "build", "-o", str(program), "."], cwd=GO_RECIPE, check=True, timeout=600)

    spec = small_workload(seed=78, events=4_000)
    expected = Expected(config.windows.size_ms)
    emissions = list(generate(spec, config.meters, config.windows.size_ms, expected))
    lines = [json_line(emission) for emission in emissions]
    sent = subprocess.run(
        [
            str(program),
            "-brokers",
            config.kafka.bootstrap,
            "-registry",
            url,
            "-topic",
            config.topics.events,
            "-schema",
            str(ROOT / "schemas" / "avro" / "usage_event.v1.avsc"),
        ],
        input="\n".join(lines).encode(),
        capture_output=True,
        timeout=300,
    )
    assert sent.returncode == 0, sent.stderr.decode()
    acknowledged = [line.split(" ", 1) for line in sent.stdout.decode().splitlines()]
    assert len(acknowledged) == len(emissions)
    partitions = config.kafka.partitions
    keyed = [(int(p), key) for p, key in acknowledged if key]
    assert all(p == partition_for(key.encode(), partitions) for p, key in keyed)
    assert served.subjects == {"meterline.UsageEvent": [1]}

    result = counted_by_one_worker(config, expected.to_json(spec), tmp_path)
    assert result.windows_matching == result.windows_expected > 0
    assert result.dlq_found == result.dlq_expected and sum(result.dlq_found.values()) > 0


def json_line(emission: Emission) -> str:
    """An emission as the Go program reads it: the event's fields, or raw bytes and a key."""
    if emission.event is None:
        raw, key = base64.b64encode(emission.raw or b""), base64.b64encode(emission.key)
        return json.dumps({"raw": raw.decode(), "key": key.decode()})
    return json.dumps(dataclasses.asdict(emission.event))
