"""Producing usage from the command line: one event (`emit`) or a whole workload (`generate`)."""

from __future__ import annotations

import gc
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized

from meterline.core.config import Config
from meterline.core.dimensions import declared_of
from meterline.core.kafka import Kafka, brokers, client_properties, cluster_metadata, partition_count
from meterline.schemas.partitioner import partition_for
from meterline.schemas.producer import PackingPolicy, UsageProducer
from meterline.schemas.validation import MeterRules
from meterline.workload import Emission, Expected, WorkloadSpec, customer_ids, generate


def make_producer(
    config: Config, bootstrap: Kafka, *, packing: bool | None = None, **kwargs: object
) -> UsageProducer:
    """The SDK's producer for this configuration, once the cluster answers: a connection mistake
    (credentials, CA, protocol) is named at once (core.kafka.cluster_metadata)."""
    cluster_metadata(bootstrap, config.topics.events)
    policy = PackingPolicy(
        enabled=config.producer.packing if packing is None else packing,
        max_events=config.producer.batch_max_events,
        max_bytes=config.producer.batch_max_bytes,
        linger_ms=config.producer.linger_ms,
    )
    return UsageProducer(
        brokers(bootstrap).bootstrap,
        config.topics.events,
        config.meter_units,
        registry_url=config.kafka.schema_registry_url,
        packing=policy,
        kafka_config=client_properties(bootstrap),
        meter_rules=MeterRules.of(declared_of(config.meters).values()),
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
    bootstrap: Kafka,
    spec: WorkloadSpec,
    *,
    packing: bool | None = None,
    workers: int = 1,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[ProduceResult, Expected]:
    """Produce the workload and wait until the broker acknowledged every message (raises
    DeliveryFailedError otherwise). Returns the throughput and the exact expected outcome.

    With several workers, each is a process producing the customers of its share of the partitions:
    the records and their order within each partition do not depend on the number of workers."""
    packed = config.producer.packing if packing is None else packing
    started = time.perf_counter()
    if workers <= 1:
        outcome = _produce_share(config, bootstrap, spec, packed, None, progress)
    else:
        outcome = _produce_in_processes(config, bootstrap, spec, packed, workers, progress)
    records, messages, expected = outcome
    seconds = time.perf_counter() - started
    return ProduceResult(records, messages, seconds, packed), expected


def _produce_share(
    config: Config,
    bootstrap: Kafka,
    spec: WorkloadSpec,
    packed: bool,
    partitions: frozenset[int] | None,
    progress: Callable[[int, float], None] | None,
) -> tuple[int, int, Expected]:
    """Produce the records of the customers on `partitions` (all when None)."""
    expected = Expected(config.windows.size_ms)
    producer = make_producer(config, bootstrap, packing=packed)
    started = last_progress = time.perf_counter()
    produced = 0

    def owns(customer_id: str) -> bool:
        return partitions is None or producer.partition_of(customer_id) in partitions

    try:
        for emission in generate(spec, config.meters, config.windows.size_ms, expected, owns):
            send(producer, emission)
            produced += 1
            if progress is not None and produced % 10_000 == 0:
                now = time.perf_counter()
                if now - last_progress >= 1:
                    last_progress = now
                    progress(produced, now - started)
    finally:
        producer.close()
    return produced, producer.messages_sent, expected


def send(producer: UsageProducer, emission: Emission) -> None:
    """Produce one record of a workload: raw bytes as they are, invalid events unvalidated."""
    if emission.raw is not None:
        producer.produce_raw(emission.key, emission.raw)
    elif emission.event is None:
        raise ValueError("an emission carries an event or raw bytes")
    elif emission.valid:
        producer.produce(emission.event)
    else:
        producer.produce_unvalidated(emission.event)


_shared_counter: Synchronized[int] | None = None


def _worker_init(counter: Synchronized[int]) -> None:
    global _shared_counter
    _shared_counter = counter


def _worker(
    config: Config, bootstrap: Kafka, spec: WorkloadSpec, packed: bool, partitions: frozenset[int]
) -> tuple[int, int, Expected]:
    # Nothing built before this point is garbage; keep the collector from re-scanning it.
    gc.freeze()
    counter = _shared_counter
    reported = 0

    def count(produced: int, _seconds: float) -> None:
        nonlocal reported
        assert counter is not None
        with counter.get_lock():
            counter.value += produced - reported
        reported = produced

    return _produce_share(config, bootstrap, spec, packed, partitions, count)


def _produce_in_processes(
    config: Config,
    bootstrap: Kafka,
    spec: WorkloadSpec,
    packed: bool,
    workers: int,
    progress: Callable[[int, float], None] | None,
) -> tuple[int, int, Expected]:
    # Customers draw usage alike, so a partition's load is its number of customers.
    partitions = partition_count(bootstrap, config.topics.events)
    load = Counter(partition_for(c.encode(), partitions) for c in customer_ids(spec))
    shares = balanced_shares(load, workers)
    # spawn, not fork: the parent may already run librdkafka threads, which a fork would not copy.
    context = multiprocessing.get_context("spawn")
    counter = context.Value("q", 0)
    started = time.perf_counter()
    with context.Pool(len(shares), initializer=_worker_init, initargs=(counter,)) as pool:
        pending = pool.starmap_async(_worker, [(config, bootstrap, spec, packed, share) for share in shares])
        while not pending.ready():
            pending.wait(1)
            if progress is not None and not pending.ready():
                progress(counter.value, time.perf_counter() - started)
        outcomes = pending.get()
    expected = Expected(config.windows.size_ms)
    for _, _, share_expected in outcomes:
        expected.add(share_expected)
    return sum(o[0] for o in outcomes), sum(o[1] for o in outcomes), expected


def balanced_shares(load: Mapping[int, int], workers: int) -> list[frozenset[int]]:
    """Split partitions between at most `workers` shares of nearly equal load: the heaviest
    partition first, each to the lightest share so far. Empty shares are left out."""
    shares: list[tuple[int, set[int]]] = [(0, set()) for _ in range(workers)]
    for partition, weight in sorted(load.items(), key=lambda item: (-item[1], item[0])):
        lightest = min(range(workers), key=lambda n: shares[n][0])
        total, members = shares[lightest]
        members.add(partition)
        shares[lightest] = (total + weight, members)
    return [frozenset(members) for _, members in shares if members]
