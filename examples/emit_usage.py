"""A product service emitting usage with meterline's producer SDK alone (`pip install meterline`:
confluent-kafka and fastavro, no C compiler, no meterline configuration).

    KAFKA_BOOTSTRAP=127.0.0.1:9092 python examples/emit_usage.py cust-42 req-1 req-2

emits one `api_calls` event per request id given, for that customer. What the SDK needs is the
brokers, the Schema Registry if the pipeline uses one (SCHEMA_REGISTRY_URL, else Avro single-object
encoding) and the units of the meters this service emits: `produce` refuses an event whose unit is
not its meter's, naming the field and the value, before anything is sent.
"""

from __future__ import annotations

import os
import sys
import time

from meterline.schemas.producer import UsageProducer
from meterline.schemas.records import UsageEvent

METER_UNITS = {"api_calls": "call"}  # the meters this service emits, as in the pipeline's config


def main(customer_id: str, request_ids: list[str]) -> None:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    topic = os.environ.get("USAGE_TOPIC", "usage.events")
    registry_url = os.environ.get("SCHEMA_REGISTRY_URL", "")
    with UsageProducer(bootstrap, topic, METER_UNITS, registry_url=registry_url) as producer:
        for request_id in request_ids:
            producer.produce(
                UsageEvent(
                    event_id=request_id,  # the dedup key: a retried request is counted once
                    customer_id=customer_id,
                    meter="api_calls",
                    quantity=1,
                    unit="call",
                    timestamp=int(time.time() * 1000),
                    source="api-gateway",
                    attributes={"status": "200"},
                )
            )
    # Leaving the block flushed: every event is on the broker, or DeliveryFailedError was raised.
    print(f"{len(request_ids)} events emitted for {customer_id}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
