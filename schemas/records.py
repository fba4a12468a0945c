"""The records that cross meterline's topics, as frozen value types.

A leaf module: it imports nothing else of the project. Times are integer epoch milliseconds
(the Avro schemas annotate them as timestamp-millis; the bytes are the same).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class UsageEvent:
    event_id: str
    customer_id: str
    meter: str
    quantity: int
    unit: str
    timestamp: int
    source: str
    attributes: dict[str, str] = field(default_factory=dict)


class AggregateIdentity(NamedTuple):
    """What every sink derives its idempotency key from, and nothing else (DESIGN §3)."""

    customer_id: str
    meter: str
    window_start: int
    source_partition: int
    revision: int


@dataclass(frozen=True, slots=True)
class WindowAggregate:
    customer_id: str
    meter: str
    window_start: int
    window_end: int
    source_partition: int
    value: int
    delta: int
    event_count: int
    revision: int
    closed_at: int

    @property
    def identity(self) -> AggregateIdentity:
        return AggregateIdentity(
            self.customer_id, self.meter, self.window_start, self.source_partition, self.revision
        )
