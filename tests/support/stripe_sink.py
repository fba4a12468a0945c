"""The Stripe sink under test: its ledger, a sink process, aggregates streamed or produced, and
exactness checks against Stripe's totals."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from confluent_kafka import Producer

from meterline.core.config import Config
from meterline.produce import produce_workload
from meterline.schemas.records import WindowAggregate
from meterline.schemas.serde import AvroSerde
from meterline.sinks.clickhouse.client import connect
from meterline.sinks.clickhouse.migrate import migrate
from meterline.sinks.stripe.fake import FakeStripe
from meterline.workload import Expected, WorkloadSpec, customer_ids
from tests.support.pipeline import SinkProcess, Workers, wait_until_exact
from tests.support.stripe import (
    know_customers,
    stripe_totals,
)

HOUR_MS = 3_600_000


@pytest.fixture
def ledger_dsn(config: Config, tmp_path: Path) -> str:
    dsn = f"chdb://{tmp_path / 'clickhouse'}"
    client = connect(config, dsn)
    try:
        migrate(client, config.clickhouse.raw_events_ttl_days)
    finally:
        client.close()
    return dsn


@pytest.fixture
def stripe_sink(
    workers: Workers, stripe_fake: tuple[FakeStripe, str], ledger_dsn: str, tmp_path: Path
) -> Iterator[SinkProcess]:
    env = {
        **workers.env,
        "CLICKHOUSE_DSN": ledger_dsn,
        "METERLINE__STRIPE__API_BASE": stripe_fake[1],
        "METERLINE__STRIPE__REQUESTS_PER_SECOND": "400",
        "METERLINE__STRIPE__CONCURRENCY": "8",
        "METERLINE__STRIPE__TIMEOUT_SECONDS": "1",
    }
    process = SinkProcess("stripe", env, tmp_path, stop_timeout=120, catch_up_timeout=300)
    yield process
    if process.process is not None and process.process.poll() is None:
        process.process.kill()


def know_customers_at(config: Config, dsn: str, base: str) -> None:
    """The fake's customers known to the sink at `dsn` without search: for tests that pin the fake's
    clock before the customers' creation, where its search would never catch up."""
    client = connect(config, dsn)
    try:
        know_customers(client, base)
    finally:
        client.close()


class LedgerRow(NamedTuple):
    """A row of the Stripe sink's ledger (stripe_reports), as the tests read it."""

    customer_id: str
    meter: str
    window_start: int
    source_partition: int
    revision: int
    status: str
    error_code: str
    identifier: str
    attempts: int


def ledger(config: Config, dsn: str) -> list[LedgerRow]:
    client = connect(config, dsn)
    try:
        rows = client.query(
            "SELECT customer_id, meter, toUnixTimestamp64Milli(window_start), source_partition, revision, "
            "toString(status), error_code, identifier, attempts FROM stripe_reports FINAL"
        ).result_rows
    finally:
        client.close()
    return [LedgerRow(*row) for row in rows]


def stream_aggregates(config: Config, workers: Workers, spec: WorkloadSpec) -> Expected:
    """Produce the workload and run a stream worker until usage.aggregates is exact."""
    _, expected = produce_workload(config, config.kafka.bootstrap, spec)
    workers.start("w1")
    wait_until_exact(config, expected.to_json(spec), workers, timeout=180)
    workers.stop_all()
    return expected


def assert_reported_exactly(
    config: Config,
    fake: FakeStripe,
    base: str,
    meters: dict[str, str],
    spec: WorkloadSpec,
    expected: Expected,
    dsn: str,
) -> None:
    """Stripe's meters hold what the workload expects of them. Each is a `sum` meter, whose value
    is "the sum of all usage values for the billing period"
    (https://docs.stripe.com/billing/subscriptions/usage-based/recording-usage): an adding meter is
    fed its windows, a `unique_count` meter its first sightings (the month's distinct values, added
    up), a `max` meter the contributions to its month's peak (Expected.at_stripe)."""
    starts = [start for _, _, start in expected.totals]  # late events reach before the span's start
    span = (min(starts), max(starts) + 60_000)
    assert stripe_totals(base, meters, customer_ids(spec), span) == expected.at_stripe()
    accepted = [e.identifier for e in fake.state.meter_events]
    assert len(accepted) == len(set(accepted))  # no identifier reported twice
    rows = ledger(config, dsn)
    assert {r.status for r in rows} == {"sent"}, Counter(r.status for r in rows)
    assert sorted(r.identifier for r in rows) == sorted(
        accepted
    )  # every revision once, each with its identifier


def produce_aggregates(config: Config, aggregates: list[WindowAggregate]) -> None:
    """Onto usage.aggregates, keyed by customer, as the stream app writes them."""
    serde = AvroSerde()
    producer = Producer({"bootstrap.servers": config.kafka.bootstrap})
    for a in aggregates:
        producer.produce(config.topics.aggregates, serde.encode_aggregate(a), a.customer_id.encode())
    producer.flush()


def legacy_config(config: Config, base: str) -> Config:
    """The configuration of a legacy account (usage records) on the fake at `base`."""
    return dataclasses.replace(
        config,
        stripe=dataclasses.replace(
            config.stripe, api_base=base, mode="usage_records", requests_per_second=100
        ),
    )
