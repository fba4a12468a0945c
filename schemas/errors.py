"""Errors of the schemas component: undecodable bytes, unknown schemas, invalid events, delivery."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from meterline.core.errors import MeterlineError


class RejectReason(StrEnum):
    """Why an event cannot be counted; the `error.code` header of `usage.events.dlq`."""

    MALFORMED = "malformed"
    UNKNOWN_SCHEMA = "unknown_schema"
    UNKNOWN_METER = "unknown_meter"
    UNIT_MISMATCH = "unit_mismatch"
    NEGATIVE_QUANTITY = "negative_quantity"
    LEVEL_TOO_HIGH = "level_too_high"
    UNKNOWN_DIMENSION_VALUE = "unknown_dimension_value"
    MISSING_FIELD = "missing_field"
    TOO_LATE = "too_late"
    TOO_FAR_FUTURE = "too_far_future"


class SchemaError(MeterlineError):
    """Bytes that cannot be turned into a known record."""

    reason: RejectReason = RejectReason.MALFORMED


class MalformedRecordError(SchemaError):
    """The bytes are not a record of any framing we read, or its body does not decode."""


class UnknownSchemaError(SchemaError):
    """The framing is valid but names a schema (fingerprint or registry id) we do not know."""

    reason = RejectReason.UNKNOWN_SCHEMA


@dataclass(frozen=True)
class InvalidEventError(MeterlineError):
    """A decodable event that breaks a rule of the meter catalog; names the field and its value."""

    reason: RejectReason
    field: str
    value: object
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.field}={self.value!r}: {self.detail}"


class TopicNotFoundError(MeterlineError):
    """The topic events are produced to does not exist on the broker."""


class BrokerUnreachableError(MeterlineError):
    """No broker answered: down, a wrong address, or a connection refused for its security."""
