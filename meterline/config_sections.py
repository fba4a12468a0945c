"""The builders of the configuration's plain sections ([kafka], [topics], [windows], [stream],
[producer], [clickhouse], [stripe], [notices], [ingest], [dev], [run]), one function each: every
field read with its type, default and check, problems reported into the section (config_checks)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from meterline.config_checks import (
    Section,
    at_least,
    between,
    dsn_check,
    file_check,
    long_enough,
    one_of,
    pattern_check,
    stripe_key_check,
    url_check,
)
from meterline.core.config import (
    ClickHouseConfig,
    DevConfig,
    IngestConfig,
    KafkaConfig,
    NoticesConfig,
    ProducerConfig,
    RunConfig,
    Secret,
    StreamConfig,
    StripeConfig,
    TopicsConfig,
    WindowsConfig,
)
from meterline.core.http import Limits

TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
MAX_MESSAGE_BYTES = 1_000_000  # Kafka's default message.max.bytes is 1 MiB; keep batches below it
STRIPE_LATENESS_LIMIT_DAYS = 35
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _check_kafka_security(s: Section, kafka: KafkaConfig) -> None:
    """The credentials the protocol needs, and none it would ignore (a password left for a
    PLAINTEXT listener is a mistake worth naming, not a setting to drop silently)."""
    sasl = kafka.security_protocol.startswith("SASL_")
    tls = kafka.security_protocol.endswith("SSL")
    if sasl:
        for key, value in (
            ("sasl_mechanism", kafka.sasl_mechanism),
            ("sasl_username", kafka.sasl_username),
            ("sasl_password", kafka.sasl_password),
        ):
            if not value:
                s.problem(key, "", f"required with security_protocol = {kafka.security_protocol}")
    else:
        for key, value in (
            ("sasl_mechanism", kafka.sasl_mechanism),
            ("sasl_username", kafka.sasl_username),
            ("sasl_password", kafka.sasl_password),
        ):
            if value:
                s.problem(key, value, "only used with security_protocol SASL_PLAINTEXT or SASL_SSL")
    tls_files = ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location", "ssl_key_password")
    for key in tls_files:
        value = getattr(kafka, key)
        if value and not tls:
            s.problem(key, value, "only used with security_protocol SSL or SASL_SSL")
    if bool(kafka.ssl_certificate_location) != bool(kafka.ssl_key_location):
        s.problem(
            "ssl_key_location",
            kafka.ssl_key_location,
            "a client certificate needs its key, and a key its certificate",
        )


def _kafka(s: Section) -> KafkaConfig:
    kafka = KafkaConfig(
        bootstrap=s.get("bootstrap", str, ""),
        schema_registry_url=s.get(
            "schema_registry_url", str, "", url_check("http://", "https://", "mock://")
        ),
        partitions=s.get("partitions", int, 4, at_least(1)),
        replication_factor=s.get("replication_factor", int, 1, at_least(1)),
        replay_margin_days=s.get("replay_margin_days", int, 7, between(0, 3650)),
        # Case-insensitive, as Kafka's own clients take it (`sasl_ssl` in librdkafka's docs).
        security_protocol=s.get(
            "security_protocol", str, "PLAINTEXT", lambda v: one_of(*SECURITY_PROTOCOLS)(v.upper())
        ).upper(),
        sasl_mechanism=s.get("sasl_mechanism", str, "", one_of("", *SASL_MECHANISMS)),
        sasl_username=s.get("sasl_username", str, ""),
        sasl_password=Secret(s.get("sasl_password", str, "", secret=True)),
        ssl_ca_location=s.get("ssl_ca_location", str, "", file_check),
        ssl_certificate_location=s.get("ssl_certificate_location", str, "", file_check),
        ssl_key_location=s.get("ssl_key_location", str, "", file_check),
        ssl_key_password=Secret(s.get("ssl_key_password", str, "", secret=True)),
    )
    _check_kafka_security(s, kafka)
    return kafka


def _topics(s: Section) -> TopicsConfig:
    topic_check = pattern_check(TOPIC_NAME, "a Kafka topic name: letters, digits, '.', '_', '-'")
    topics = TopicsConfig(**{f.name: s.get(f.name, str, "", topic_check) for f in fields(TopicsConfig)})
    names = topics.all()
    for f in fields(TopicsConfig):
        if names.count(getattr(topics, f.name)) > 1:
            s.problem(f.name, getattr(topics, f.name), "two topics must not share a name")
    return topics


def _windows(s: Section) -> WindowsConfig:
    max_lateness_days = s.get(
        "max_lateness_days",
        int,
        35,
        between(1, STRIPE_LATENESS_LIMIT_DAYS, " (Stripe refuses usage older than 35 days)"),
    )
    if "dedup_retention_seconds" in s.table:
        s.seen.add("dedup_retention_seconds")
        s.problem(
            "dedup_retention_seconds",
            s.table["dedup_retention_seconds"],
            "replaced by windows.dedup_horizon_days: whole days, at least 1 (Stripe remembers an "
            "identifier 24 hours); left out, the lateness horizon",
        )
    windows = WindowsConfig(
        size_minutes=s.get("size_minutes", int, 1, lambda v: None if v in (1, 5) else "must be 1 or 5"),
        grace_seconds=s.get("grace_seconds", int, 10, between(0, 3600)),
        idle_timeout_seconds=s.get("idle_timeout_seconds", int, 30, between(1, 86_400)),
        max_lateness_days=max_lateness_days,
        max_clock_skew_seconds=s.get(
            "max_clock_skew_seconds",
            int,
            300,
            between(0, 300, " (Stripe refuses usage more than 5 minutes ahead)"),
        ),
        dedup_horizon_days=s.get(
            "dedup_horizon_days",
            int,
            max_lateness_days,
            between(
                1,
                max_lateness_days,
                " (at least Stripe's 24 hours of identifier dedup; longer than windows.max_lateness_days"
                " holds ids no event can use)",
            ),
        ),
    )
    return windows


def dedup_promise(windows: WindowsConfig) -> str:
    """What the dedup horizon promises, and with a shorter one what it gives up, in a sentence
    (`config check` prints it)."""
    if windows.dedup_horizon_days >= windows.max_lateness_days:
        return (
            f"event ids are held {windows.dedup_horizon_days} days, the lateness horizon: no duplicate "
            "is ever counted twice, and an event for a window the stream no longer holds is "
            "dead-lettered as too_late"
        )
    return (
        f"event ids are held {windows.dedup_horizon_days} days past a window's end or last close "
        f"(plus a day of margin), less than the {windows.max_lateness_days}-day lateness horizon: a "
        "duplicate arriving after that in its partition's event time (a batch re-sent after an "
        "outage, a backfill) is counted again"
    )


def _guarantee_problem(value: str) -> str | None:
    if value == "exactly_once":
        # Measured on Apache Kafka 4.1.1 (README, "The stream app"; tests/crash/test_stream.py).
        return (
            "not supported: Faust's transactions cover its own offset commits, not meterline's "
            "writes (exactness comes from idempotent state and outputs either way), and after a "
            "rebalance they fenced the surviving worker's producer and stopped it; use at_least_once"
        )
    return None if value == "at_least_once" else "must be at_least_once"


def _stream(s: Section) -> StreamConfig:
    stream = StreamConfig(
        app_id=s.get("app_id", str, "meterline-stream", pattern_check(TOPIC_NAME, "usable in a topic name")),
        processing_guarantee=s.get(
            "processing_guarantee",
            str,
            "at_least_once",
            _guarantee_problem,
        ),
        store=s.get(
            "store",
            str,
            "rocksdb://",
            lambda v: None if v in ("rocksdb://", "memory://") else "must be rocksdb:// or memory://",
        ),
        commit_interval_seconds=float(
            s.get(
                "commit_interval_seconds",
                (int, float),
                2.8,
                lambda v: None if 0.1 <= v <= 60 else "must be between 0.1 and 60",
            )
        ),
    )
    return stream


def _producer(s: Section) -> ProducerConfig:
    producer = ProducerConfig(
        packing=s.get("packing", bool, True),
        batch_max_events=s.get("batch_max_events", int, 1000, between(1, 100_000)),
        batch_max_bytes=s.get(
            "batch_max_bytes",
            int,
            524_288,
            between(1024, MAX_MESSAGE_BYTES, " (Kafka's default message size limit)"),
        ),
        linger_ms=s.get("linger_ms", int, 50, between(0, 60_000)),
    )
    return producer


def _clickhouse(s: Section) -> ClickHouseConfig:
    clickhouse = ClickHouseConfig(
        dsn=s.get("dsn", str, "", dsn_check),
        password=Secret(s.get("password", str, "", secret=True)),
        raw_events=s.get("raw_events", bool, True),
        raw_events_ttl_days=s.get("raw_events_ttl_days", int, 400, between(1, 36_500)),
        cluster=s.get("cluster", str, "", pattern_check(re.compile(r"^[A-Za-z0-9_.-]*$"), "a cluster name")),
        batch_rows=s.get("batch_rows", int, 20_000, between(1, 1_000_000)),
        batch_seconds=float(
            s.get(
                "batch_seconds",
                (int, float),
                1.0,
                lambda v: None if 0 < v <= 600 else "must be more than 0 and at most 600",
            )
        ),
    )
    return clickhouse


def _stripe(s: Section) -> StripeConfig:
    modes = ("meter_events", "meter_event_stream", "usage_records")
    stripe = StripeConfig(
        api_key=Secret(s.get("api_key", str, "", stripe_key_check, secret=True)),
        api_base=s.get("api_base", str, "", url_check("http://", "https://")),
        mode=s.get(
            "mode",
            str,
            "meter_events",
            lambda v: None if v in modes else f"must be one of {', '.join(modes)}",
        ),
        customers=s.get(
            "customers",
            dict,
            {},
            lambda v: (
                None
                if all(isinstance(c, str) and c.startswith("cus_") for c in v.values())
                else "values must be Stripe customer ids (cus_...)"
            ),
        ),
        customer_metadata_key=s.get("customer_metadata_key", str, "meterline_customer_id"),
        requests_per_second=float(
            s.get(
                "requests_per_second",
                (int, float),
                20,
                lambda v: (
                    None if 0 < v <= 10_000 else "must be more than 0 (Stripe allows 25/s in test mode)"
                ),
            )
        ),
        concurrency=s.get("concurrency", int, 4, between(1, 64)),
        timeout_seconds=float(
            s.get(
                "timeout_seconds", (int, float), 10, lambda v: None if 0 < v <= 120 else "must be in (0, 120]"
            )
        ),
        legacy_api_version=s.get(
            "legacy_api_version",
            str,
            "2024-06-20",
            lambda v: (
                None if v < "2025-03-31" else "usage records need a Stripe-Version before 2025-03-31.basil"
            ),
        ),
        webhook_secret=Secret(
            s.get(
                "webhook_secret",
                str,
                "",
                lambda v: None if not v or v.startswith("whsec_") else "a webhook secret starts with whsec_",
                secret=True,
            )
        ),
        webhook_port=s.get("webhook_port", int, 8787, between(0, 65535)),
        webhook_tolerance_seconds=s.get("webhook_tolerance_seconds", int, 300, between(1, 3600)),
        summaries_settle_seconds=s.get("summaries_settle_seconds", int, 3600, between(0, 86_400)),
        resend_check_after_hours=s.get(
            "resend_check_after_hours",
            int,
            23,
            between(
                1,
                23,
                " (Stripe remembers an identifier at least 24 hours: resending later could add it twice)",
            ),
        ),
        search_again_seconds=s.get("search_again_seconds", int, 60, between(1, 3600)),
        invoice_grace_hours=s.get("invoice_grace_hours", int, 1, between(0, 72, " (Stripe's limit)")),
        customer_wait_hours=s.get(
            "customer_wait_hours",
            int,
            0,
            between(0, 34 * 24, " (Stripe takes no meter event older than 35 days)"),
        ),
    )
    return stripe


def _notices(s: Section) -> NoticesConfig:
    return NoticesConfig(
        smtp_host=s.get("smtp_host", str, ""),
        smtp_port=s.get("smtp_port", int, 25, between(1, 65535)),
        smtp_username=s.get("smtp_username", str, ""),
        smtp_password=Secret(s.get("smtp_password", str, "", secret=True)),
        smtp_starttls=s.get("smtp_starttls", bool, False),
        sender=s.get("sender", str, "billing@localhost"),
        dashboard_url=s.get("dashboard_url", str, "", url_check("http://", "https://")),
    )


def _ingest(s: Section) -> IngestConfig:
    sha256 = re.compile(r"[0-9a-f]{64}")
    keys = s.get("keys", dict, {})
    for source, digest in keys.items():
        if not isinstance(digest, str) or not sha256.fullmatch(digest):
            s.problem(f"keys.{source}", digest, "the SHA-256 of the key, 64 lowercase hex digits (sha256sum)")
    return IngestConfig(
        port=s.get("port", int, 8791, between(0, 65535)),
        keys={str(k): str(v) for k, v in keys.items()},
        max_events_per_request=s.get("max_events_per_request", int, 1000, between(1, 100_000)),
        requests_per_second=s.get("requests_per_second", (int, float), 100, between(0.1, 1e6)),
    )


def _dev(s: Section) -> DevConfig:
    dev = DevConfig(
        state_dir=Path(s.get("state_dir", str, ".meterline", lambda v: None if v else "must not be empty")),
        kafka_port=s.get("kafka_port", int, 0, between(0, 65535)),
        stripe_port=s.get("stripe_port", int, 0, between(0, 65535)),
    )
    return dev


def _run(s: Section) -> RunConfig:
    run = RunConfig(
        host=s.get("host", str, "127.0.0.1", lambda v: None if v else "must not be empty"),
        port=s.get("port", int, 8790, between(0, 65535)),
        reconcile_every_minutes=s.get("reconcile_every_minutes", int, 60, between(0, 7 * 24 * 60)),
        allowed_hosts=tuple(
            s.get(
                "allowed_hosts",
                list,
                [],
                lambda v: None if all(isinstance(h, str) and h for h in v) else "must be host names",
            )
        ),
        dashboard_token=Secret(s.get("dashboard_token", str, "", long_enough, secret=True)),
        dashboard_user=s.get("dashboard_user", str, ""),
        dashboard_password=Secret(s.get("dashboard_password", str, "", long_enough, secret=True)),
        limits=Limits(
            max_body_bytes=s.get("max_body_bytes", int, Limits.max_body_bytes, between(1024, 1 << 30)),
            read_timeout_s=s.get(
                "read_timeout_seconds", (int, float), Limits.read_timeout_s, between(0.1, 3600)
            ),
            max_connections=s.get("max_connections", int, Limits.max_connections, between(1, 10_000)),
        ),
    )
    if bool(run.dashboard_user) != bool(run.dashboard_password):
        s.problem(
            "dashboard_password", run.dashboard_password, "dashboard_user and dashboard_password go together"
        )
    return run


SECTIONS: dict[str, Callable[[Section], Any]] = {
    "notices": _notices,
    "ingest": _ingest,
    "kafka": _kafka,
    "topics": _topics,
    "windows": _windows,
    "stream": _stream,
    "producer": _producer,
    "clickhouse": _clickhouse,
    "stripe": _stripe,
    "dev": _dev,
    "run": _run,
}
