"""The sinks, built from their parts: the consumer, the clients, the serde and, for Stripe, the
reporting mode `stripe.mode` names. Every command and `meterline run` builds a sink here; a test
that needs a part of its own builds the sink itself."""

from __future__ import annotations

from collections.abc import Callable

from meterline.core.config import Config
from meterline.core.kafka import Kafka, group_consumer, idempotent_producer
from meterline.schemas.serde import AvroSerde
from meterline.sinks.clickhouse.client import connect
from meterline.sinks.clickhouse.sink import CONSUMER_SETTINGS, ClickHouseSink, Flushed
from meterline.sinks.stripe.calls import caller_for
from meterline.sinks.stripe.customers import KnownCustomers
from meterline.sinks.stripe.directory import Directory
from meterline.sinks.stripe.ledger import Ledger
from meterline.sinks.stripe.modes import reporting_mode
from meterline.sinks.stripe.sink import StripeSink


def clickhouse_sink(
    config: Config,
    bootstrap: Kafka,
    dsn: str | None = None,
    group_id: str = "meterline-sink-clickhouse",
    on_flushed: Callable[[Flushed], None] | None = None,
) -> ClickHouseSink:
    target = dsn or config.clickhouse.dsn
    return ClickHouseSink(
        config,
        consumer=group_consumer(bootstrap, group_id, CONSUMER_SETTINGS),
        connect=lambda: connect(config, target),
        dsn=target,
        serde=AvroSerde.from_registry_url(config.kafka.schema_registry_url),
        group_id=group_id,
        on_flushed=on_flushed,
    )


def stripe_sink(
    config: Config, bootstrap: Kafka, dsn: str | None = None, group_id: str = "meterline-sink-stripe"
) -> StripeSink:
    client = connect(config, dsn)
    caller = caller_for(config)
    directory = Directory(config.stripe, caller, KnownCustomers(client).find)
    ledger = Ledger(client, config.stripe.mode)
    return StripeSink(
        config,
        consumer=group_consumer(bootstrap, group_id),
        dead_letters=idempotent_producer(bootstrap, {"linger.ms": 5}),
        client=client,
        caller=caller,
        directory=directory,
        ledger=ledger,
        reporting=reporting_mode(
            config.stripe.mode, caller, config.stripe.concurrency, directory, ledger, client
        ),
        serde=AvroSerde.from_registry_url(config.kafka.schema_registry_url),
        group_id=group_id,
    )
