"""The records as Avro datums (the dicts fastavro reads and writes), field by field as the schemas
in avro/ name them: for the paths that go through fastavro (a schema version the hand-written
codecs do not know), and for the tests that hold the codecs to fastavro and to other writers."""

from __future__ import annotations

from typing import Any

from meterline.schemas.records import UsageEvent, WindowAggregate


def event_to_avro(event: UsageEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "customer_id": event.customer_id,
        "meter": event.meter,
        "quantity": event.quantity,
        "unit": event.unit,
        "timestamp": event.timestamp,
        "source": event.source,
        "attributes": event.attributes,
    }


def event_from_avro(datum: dict[str, Any]) -> UsageEvent:
    return UsageEvent(
        datum["event_id"],
        datum["customer_id"],
        datum["meter"],
        datum["quantity"],
        datum["unit"],
        datum["timestamp"],
        datum["source"],
        datum["attributes"],
    )


def aggregate_to_avro(aggregate: WindowAggregate) -> dict[str, Any]:
    return {
        "customer_id": aggregate.customer_id,
        "meter": aggregate.meter,
        "window_start": aggregate.window_start,
        "window_end": aggregate.window_end,
        "source_partition": aggregate.source_partition,
        "value": aggregate.value,
        "delta": aggregate.delta,
        "event_count": aggregate.event_count,
        "revision": aggregate.revision,
        "closed_at": aggregate.closed_at,
    }


def aggregate_from_avro(datum: dict[str, Any]) -> WindowAggregate:
    return WindowAggregate(**{name: datum[name] for name in WindowAggregate.__slots__})
