"""What became of produced messages: a report per message, and the error listing the failed ones."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaError

from meterline.core.errors import MeterlineError
from meterline.schemas.records import UsageEvent


@dataclass(frozen=True)
class DeliveryReport:
    """The fate of one Kafka message and every event inside it."""

    events: tuple[UsageEvent, ...]
    error: KafkaError | None
    partition: int
    offset: int | None


class DeliveryFailedError(MeterlineError):
    """Messages the broker did not acknowledge; every event inside them is listed."""

    def __init__(self, failed: list[DeliveryReport]) -> None:
        self.failed = failed
        events = sum(len(report.events) for report in failed)
        first = failed[0].error if failed else None
        super().__init__(f"{events} event(s) in {len(failed)} message(s) were not delivered: {first}")
