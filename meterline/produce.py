"""Producing usage from the command line: one event (`emit`) or a whole workload (`generate`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from meterline.config import Config
from meterline.workload import Expected, WorkloadSpec, generate
from schemas.producer import PackingPolicy, UsageProducer
from schemas.serde import AvroSerde


def make_producer(
    config: Config, bootstrap: str, *, packing: bool | None = None, **kwargs: object
) -> UsageProducer:
    policy = PackingPolicy(
        enabled=config.producer.packing if packing is None else packing,
        max_events=config.producer.batch_max_events,
        max_bytes=config.producer.batch_max_bytes,
        linger_ms=config.producer.linger_ms,
    )
    return UsageProducer(
        bootstrap,
        config.topics.events,
        config.meter_units,
        serde=AvroSerde.from_registry_url(config.kafka.schema_registry_url),
        packing=policy,
        **kwargs,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class ProduceResult:
    records: int
    messages: int
    seconds: float
    packed: bool

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    @property
    def messages_per_second(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


def produce_workload(
    config: Config,
    bootstrap: str,
    spec: WorkloadSpec,
    *,
    packing: bool | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[ProduceResult, Expected]:
    """Produce the workload and wait until the broker acknowledged every message (raises
    DeliveryFailedError otherwise). Returns the throughput and the exact expected outcome."""
    expected = Expected(config.windows.size_ms)
    producer = make_producer(config, bootstrap, packing=packing)
    started = time.perf_counter()
    last_progress = started
    produced = 0
    try:
        for emission in generate(spec, config.meters, config.windows.size_ms, expected):
            if emission.raw is not None:
                producer.produce_raw(emission.key, emission.raw)
            elif emission.valid:
                assert emission.event is not None
                producer.produce(emission.event)
            else:
                assert emission.event is not None
                producer.produce_unvalidated(emission.event)
            produced += 1
            if progress is not None and produced % 10_000 == 0:
                now = time.perf_counter()
                if now - last_progress >= 1:
                    last_progress = now
                    progress(produced, now - started)
    finally:
        producer.close()
    seconds = time.perf_counter() - started
    packed = config.producer.packing if packing is None else packing
    return ProduceResult(produced, producer.messages_sent, seconds, packed), expected
