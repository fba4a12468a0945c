"""Usage as CloudEvents 1.0 JSON, the HTTP ingest's wire format
(https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/formats/json-format.md), mapped to
UsageEvent:

| CloudEvents       | UsageEvent   |                                                              |
|-------------------|--------------|--------------------------------------------------------------|
| `id`              | `event_id`   | the dedup key: a retried request is counted once             |
| `source`          | `source`     | the producing service (a URI-reference)                      |
| `subject`         | `customer_id`| required                                                     |
| `type`            | `meter`      | its last dot-separated part (`com.acme.usage.api_calls`), |
|                   |              | unless `data.meter` names the meter                          |
| `time`            | `timestamp`  | RFC 3339, required (usage is billed by event time)           |
| `data.quantity`   | `quantity`   | a non-negative integer, in the meter's unit                  |
| `data.unit`       | `unit`       | optional: the meter's declared unit                          |
| `data.attributes` | `attributes` | optional: string values (what the billable rules match)      |

Pure: a document either maps or raises CloudEventError naming the field and the value; the
catalog's rules (declared meter, its unit, quantity >= 0) are checked after, as for the SDK.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from meterline.core.errors import MeterlineError
from meterline.schemas.records import UsageEvent

SPEC_VERSION = "1.0"
QUANTITY_MAX = 2**63 - 1
"""Avro's long: what a UsageEvent carries."""
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"


class CloudEventError(MeterlineError):
    def __init__(self, field: str, value: object, why: str) -> None:
        self.field, self.value, self.why = field, value, why
        super().__init__(f"{field}={value!r:.80}: {why}")


def _text(document: Mapping[str, Any], name: str, shown: str | None = None) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value:
        raise CloudEventError(shown or name, value, "a non-empty string is required")
    return value


def to_usage_event(document: Any, meter_units: Mapping[str, str]) -> UsageEvent:
    """The UsageEvent of one structured CloudEvent (see the module's table)."""
    if not isinstance(document, dict):
        raise CloudEventError("", document, "a CloudEvent is a JSON object")
    if document.get("specversion") != SPEC_VERSION:
        raise CloudEventError("specversion", document.get("specversion"), f"must be {SPEC_VERSION!r}")
    content_type = document.get("datacontenttype", "application/json")
    if content_type != "application/json":
        raise CloudEventError("datacontenttype", content_type, "usage data is application/json")
    data = document.get("data")
    if not isinstance(data, dict):
        raise CloudEventError("data", data, "an object with quantity (and unit, attributes, meter)")
    kind = _text(document, "type")
    meter = data.get("meter", kind.rsplit(".", 1)[-1])
    if not isinstance(meter, str):
        raise CloudEventError("data.meter", meter, "a string")
    quantity = data.get("quantity")
    if isinstance(quantity, float) and quantity.is_integer():
        quantity = int(quantity)  # JSON's integer: 3.0 is one (JSON Schema says so too)
    if (
        isinstance(quantity, bool)
        or not isinstance(quantity, int)
        or not -QUANTITY_MAX <= quantity <= QUANTITY_MAX
    ):
        raise CloudEventError("data.quantity", quantity, "an integer number of the meter's unit (a long)")
    unit = data.get("unit", meter_units.get(meter, ""))
    if not isinstance(unit, str):
        raise CloudEventError("data.unit", unit, "a string")
    attributes = data.get("attributes", {})
    if not isinstance(attributes, dict) or not all(isinstance(v, str) for v in attributes.values()):
        raise CloudEventError("data.attributes", attributes, "an object of string values")
    return UsageEvent(
        event_id=_text(document, "id"),
        customer_id=_text(document, "subject"),
        meter=meter,
        quantity=quantity,
        unit=unit,
        timestamp=_epoch_ms(_text(document, "time")),
        source=_text(document, "source"),
        attributes={str(k): v for k, v in attributes.items()},
    )


def from_usage_event(event: UsageEvent) -> dict[str, Any]:
    """The CloudEvent of a UsageEvent: the inverse of to_usage_event (what a producer in another
    language sends for the same usage)."""
    moment = _EPOCH + timedelta(milliseconds=event.timestamp)
    return {
        "specversion": SPEC_VERSION,
        "id": event.event_id,
        "source": event.source,
        "type": event.meter,
        "subject": event.customer_id,
        "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": {"quantity": event.quantity, "unit": event.unit, "attributes": dict(event.attributes)},
    }


def _epoch_ms(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CloudEventError("time", text, "an RFC 3339 timestamp, e.g. 2026-11-20T12:00:00Z") from None
    if moment.tzinfo is None:
        raise CloudEventError("time", text, "an RFC 3339 timestamp carries its offset (Z or +hh:mm)")
    return (moment - _EPOCH) // timedelta(milliseconds=1)  # exact: no float in between


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
