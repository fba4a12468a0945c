"""The producer SDK against a real broker: validation, partitioning, packing bounds, delivery failures."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from meterline import devstack
from meterline.core.config import Config
from meterline.core.kafka import ensure_topics
from meterline.schemas import producer as producer_module
from meterline.schemas.delivery import DeliveryFailedError, DeliveryReport
from meterline.schemas.errors import BrokerUnreachableError, InvalidEventError, RejectReason
from meterline.schemas.partitioner import murmur2, partition_for
from meterline.schemas.producer import PackingPolicy, UsageProducer
from meterline.schemas.records import UsageEvent
from meterline.schemas.serde import AvroSerde
from tests.conftest import broker_config
from tests.support.apache_kafka import on_apache_kafka  # noqa: F401  (this module runs on Apache Kafka)
from tests.support.kafka import read_messages
from tests.support.pipeline import free_port

UNITS = {"api_calls": "call", "egress_bytes": "byte"}
NOW = int(time.time() * 1000)


def event(n: int, customer: str = "cust-1", **changes: object) -> UsageEvent:
    fields: dict[str, object] = {
        "event_id": f"e-{n}",
        "customer_id": customer,
        "meter": "api_calls",
        "quantity": n,
        "unit": "call",
        "timestamp": NOW,
        "source": "test",
        "attributes": {"status": "200"},
    }
    return UsageEvent(**(fields | changes))  # type: ignore[arg-type]


def producer(config: Config, **kwargs: object) -> UsageProducer:
    return UsageProducer(config.kafka.bootstrap, config.topics.events, UNITS, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "reason", "field", "value"),
    [
        ({"event_id": ""}, RejectReason.MISSING_FIELD, "event_id", ""),
        ({"customer_id": ""}, RejectReason.MISSING_FIELD, "customer_id", ""),
        ({"meter": ""}, RejectReason.MISSING_FIELD, "meter", ""),
        ({"unit": ""}, RejectReason.MISSING_FIELD, "unit", ""),
        ({"source": ""}, RejectReason.MISSING_FIELD, "source", ""),
        ({"timestamp": 0}, RejectReason.MISSING_FIELD, "timestamp", 0),
        ({"quantity": -1}, RejectReason.NEGATIVE_QUANTITY, "quantity", -1),
        ({"meter": "gpu_hours"}, RejectReason.UNKNOWN_METER, "meter", "gpu_hours"),
        ({"unit": "calls"}, RejectReason.UNIT_MISMATCH, "unit", "calls"),
    ],
)
def test_invalid_events_are_refused_naming_field_and_value(
    config: Config, changes: dict[str, object], reason: RejectReason, field: str, value: object
) -> None:
    with producer(config) as sdk:
        with pytest.raises(InvalidEventError) as caught:
            sdk.produce(event(1, **changes))
        sdk.produce(event(2))
    assert (caught.value.reason, caught.value.field, caught.value.value) == (reason, field, value)
    assert repr(value) in str(caught.value) and field in str(caught.value)
    # Only the valid event reached the topic.
    messages = read_messages(config.kafka.bootstrap, config.topics.events, 1)
    assert [e.event_id for m in messages for e in AvroSerde().decode_usage(m.value()).events] == ["e-2"]


def test_murmur2_matches_the_java_client() -> None:
    # Kafka's own UtilsTest vectors.
    assert murmur2(b"21") == -973932308
    assert murmur2(b"foobar") == -790332482
    assert murmur2(b"a-little-bit-long-string") == -985981536
    assert murmur2(b"a-little-bit-longer-string") == -1486304829
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == -58897971
    assert murmur2(b"abc") == 479470107


def test_partitions_agree_with_librdkafkas_murmur2_partitioner(config: Config) -> None:
    """A plain producer with partitioner=murmur2_random puts each key where the SDK computes it."""
    from confluent_kafka import Producer

    plain = Producer({"bootstrap.servers": config.kafka.bootstrap, "partitioner": "murmur2_random"})
    delivered: dict[str, int] = {}
    customers = [f"customer-{n}" for n in range(40)]
    for customer in customers:
        plain.produce(
            config.topics.events,
            b"x",
            customer.encode(),
            on_delivery=lambda err, msg: delivered.__setitem__(msg.key().decode(), msg.partition()),
        )
    assert plain.flush(30) == 0
    assert delivered == {c: partition_for(c.encode(), 4) for c in customers}
    assert len(set(delivered.values())) == 4


def test_packed_batches_hold_one_partitions_events_bounded_by_count(config: Config) -> None:
    customers = [f"customer-{n}" for n in range(12)]
    with producer(config, packing=PackingPolicy(max_events=7, linger_ms=60_000)) as sdk:
        for n in range(300):
            sdk.produce(event(n, customers[n % len(customers)]))
    sent = sdk.messages_sent  # after close: every pending batch has been sent
    messages = read_messages(config.kafka.bootstrap, config.topics.events, sent)
    serde = AvroSerde()
    seen = []
    for message in messages:
        decoded = serde.decode_usage(message.value())
        assert decoded.is_batch and 1 <= len(decoded.events) <= 7
        assert {partition_for(e.customer_id.encode(), 4) for e in decoded.events} == {message.partition()}
        seen += [e.event_id for e in decoded.events]
    assert sorted(seen) == sorted(f"e-{n}" for n in range(300))


def test_packed_batches_are_bounded_by_bytes(config: Config) -> None:
    big = {"note": "x" * 900}
    with producer(config, packing=PackingPolicy(max_events=1000, max_bytes=4096, linger_ms=60_000)) as sdk:
        for n in range(50):
            sdk.produce(event(n, attributes=big))
    sent = sdk.messages_sent  # after close: every pending batch has been sent
    messages = read_messages(config.kafka.bootstrap, config.topics.events, sent)
    assert len(messages) == sent and sent >= 50 * 900 // 4096
    assert all(len(m.value()) <= 4096 for m in messages)
    assert sum(len(AvroSerde().decode_usage(m.value()).events) for m in messages) == 50


def test_linger_sends_a_partial_batch_without_flush(config: Config) -> None:
    sdk = producer(config, packing=PackingPolicy(max_events=1000, linger_ms=100))
    try:
        sdk.produce(event(1))
        messages = read_messages(config.kafka.bootstrap, config.topics.events, 1, timeout=10)
        assert [AvroSerde().decode_usage(m.value()).events[0].event_id for m in messages] == ["e-1"]
    finally:
        sdk.close()


def test_single_event_messages_are_keyed_by_customer(config: Config) -> None:
    with producer(config, packing=PackingPolicy(enabled=False)) as sdk:
        for n in range(10):
            sdk.produce(event(n, f"c{n}"))
    messages = read_messages(config.kafka.bootstrap, config.topics.events, 10)
    assert len(messages) == 10
    for message in messages:
        decoded = AvroSerde().decode_usage(message.value())
        assert not decoded.is_batch
        assert message.key() == decoded.events[0].customer_id.encode()
        assert message.partition() == partition_for(message.key(), 4)


def _own_broker(tmp_path: Path) -> tuple[Config, str]:
    config = broker_config(tmp_path)
    services = devstack.up(config, log=lambda _line: None)
    return config, services["kafka"].address


@pytest.mark.parametrize("packing", [True, False])
def test_every_event_of_an_undelivered_message_is_reported(tmp_path: Path, packing: bool) -> None:
    """Stop the broker under the producer: flush raises, listing every event that did not land."""
    config, bootstrap = _own_broker(tmp_path)
    try:
        ensure_topics(bootstrap, ["events"], 2)
        sdk = UsageProducer(
            bootstrap,
            "events",
            UNITS,
            packing=PackingPolicy(enabled=packing),
            kafka_config={"message.timeout.ms": 3000},
        )
        devstack.down(config, log=lambda _line: None)
        for n in range(25):
            sdk.produce(event(n, f"c{n % 5}"))
        with pytest.raises(DeliveryFailedError) as caught:
            sdk.flush()
        failed = sorted(e.event_id for report in caught.value.failed for e in report.events)
        assert failed == sorted(f"e-{n}" for n in range(25))
        assert all(report.error is not None for report in caught.value.failed)
        assert sdk.events_failed == 25 and sdk.events_delivered == 0
        sdk.close()
    finally:
        devstack.down(config, log=lambda _line: None)


def test_a_delivery_callback_gets_the_failures_instead(tmp_path: Path) -> None:
    config, bootstrap = _own_broker(tmp_path)
    reports: list[DeliveryReport] = []
    try:
        ensure_topics(bootstrap, ["events"], 2)
        sdk = UsageProducer(
            bootstrap, "events", UNITS, on_delivery=reports.append, kafka_config={"message.timeout.ms": 3000}
        )
        sdk.produce(event(1))
        sdk.flush()
        devstack.down(config, log=lambda _line: None)
        for n in range(2, 12):
            sdk.produce(event(n))
        sdk.close()  # does not raise: the callback owns the failures
    finally:
        devstack.down(config, log=lambda _line: None)
    delivered = [e.event_id for r in reports if r.error is None for e in r.events]
    failed = sorted(e.event_id for r in reports if r.error is not None for e in r.events)
    assert delivered == ["e-1"]
    assert failed == sorted(f"e-{n}" for n in range(2, 12))


def test_no_broker_is_named_as_such_not_as_a_missing_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing listening, the SDK said TopicNotFoundError (issue 40): the brokers are what is
    missing, and the error says where it looked and what to check."""
    monkeypatch.setattr(producer_module, "METADATA_TIMEOUT_S", 1.0)
    nowhere = f"127.0.0.1:{free_port()}"
    with pytest.raises(BrokerUnreachableError) as caught:
        UsageProducer(nowhere, "usage.events", {"api_calls": "call"})
    assert f"no Kafka broker at {nowhere} answered within 1 s" in str(caught.value)
    assert "security.protocol" in str(caught.value)
