"""meterline's configuration as values: every section, frozen. Loading, merging and validating
them is the composition root's (meterline.config); components receive these."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Literal

from meterline.core.errors import MeterlineError
from meterline.core.http import Limits, is_loopback
from meterline.core.ratecard import Plan


class Secret:
    """A value that is never printed: repr and str show only whether it is set."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__


@dataclass(frozen=True)
class ConfigProblem:
    field: str
    value: object
    why: str

    @property
    def shown_value(self) -> str:
        return "***" if isinstance(self.value, Secret) else repr(self.value)

    def __str__(self) -> str:
        return f"{self.field} = {self.shown_value}: {self.why}"


class ConfigError(MeterlineError):
    def __init__(self, problems: list[ConfigProblem], source: str) -> None:
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{len(problems)} problem(s) in the configuration ({source}):\n{lines}")


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap: str
    schema_registry_url: str
    partitions: int
    replication_factor: int
    replay_margin_days: int
    """How long past the lateness horizon usage.events stays readable for `replay`."""
    security_protocol: str
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, as librdkafka names them."""
    sasl_mechanism: str
    sasl_username: str
    sasl_password: Secret
    ssl_ca_location: str
    ssl_certificate_location: str
    ssl_key_location: str
    ssl_key_password: Secret


@dataclass(frozen=True)
class TopicsConfig:
    events: str
    events_dlq: str
    aggregates: str
    stripe_dlq: str
    webhooks: str
    alerts: str
    notices: str

    def all(self) -> list[str]:
        return [getattr(self, f.name) for f in fields(self)]


@dataclass(frozen=True)
class WindowsConfig:
    size_minutes: int
    grace_seconds: int
    idle_timeout_seconds: int
    max_lateness_days: int
    max_clock_skew_seconds: int
    dedup_horizon_days: int
    """How long a closed window keeps the event ids it counted, past its end or its last close
    (DESIGN §4): by default the lateness horizon, so that no duplicate it accepts is counted twice."""

    @property
    def size_ms(self) -> int:
        return self.size_minutes * 60_000

    @property
    def max_lateness_ms(self) -> int:
        return int(timedelta(days=self.max_lateness_days).total_seconds()) * 1000

    @property
    def max_clock_skew_ms(self) -> int:
        return self.max_clock_skew_seconds * 1000

    @property
    def dedup_horizon_ms(self) -> int:
        return int(timedelta(days=self.dedup_horizon_days).total_seconds()) * 1000


@dataclass(frozen=True)
class StreamConfig:
    app_id: str
    """Faust's application id: the consumer group and the prefix of the state's changelog topic."""
    processing_guarantee: Literal["at_least_once"]
    store: str
    """Where window and dedup state lives between changelog writes: rocksdb:// or memory://."""
    commit_interval_seconds: float
    """How often offsets are committed: more often means less to process again after a crash."""

    @property
    def state_topic(self) -> str:
        """The changelog of the workers' state: partition p holds the state of usage.events' partition p."""
        return f"{self.app_id}-state"


@dataclass(frozen=True)
class ProducerConfig:
    packing: bool
    batch_max_events: int
    batch_max_bytes: int
    linger_ms: int


@dataclass(frozen=True)
class ClickHouseConfig:
    dsn: str
    password: Secret
    raw_events: bool
    """Whether the sink also stores accepted raw events (usage_events) for audit and disputes."""
    raw_events_ttl_days: int
    batch_rows: int
    """The sink inserts a partition's buffer when it holds this many rows..."""
    batch_seconds: float
    """...or when its oldest row has waited this long."""
    cluster: str
    """A ClickHouse cluster: migrations run ON CLUSTER, with replicated tables. Empty: one server."""


@dataclass(frozen=True)
class StripeConfig:
    api_key: Secret
    api_base: str
    mode: Literal["meter_events", "meter_event_stream", "usage_records"]
    customers: Mapping[str, str]
    """meterline customer id -> Stripe customer id; others are looked up by metadata, cached."""
    customer_metadata_key: str
    requests_per_second: float
    concurrency: int
    timeout_seconds: float
    legacy_api_version: str
    """The Stripe-Version sent with legacy usage records (they are gone from 2025-03-31.basil on)."""
    webhook_secret: Secret
    """The endpoint's signing secret (whsec_...); the local fake signs with FAKE_WEBHOOK_SECRET."""
    webhook_port: int
    webhook_tolerance_seconds: int
    summaries_settle_seconds: int
    """How long after its last report a window's meter event summary is taken as final: Stripe
    aggregates asynchronously ("an eventually consistent view") and does not say how long it takes."""
    resend_check_after_hours: int
    """A report still pending this long after its revision closed is resent only if Stripe's totals
    show it did not land: Stripe remembers an identifier "within a rolling period of at least 24
    hours" (sinks.stripe.landed)."""
    invoice_grace_hours: int
    """The account's invoice finalization grace period: usage may still be reported for a period
    this long after it ends (Stripe's default 1 hour, at most 72:
    https://docs.stripe.com/billing/subscriptions/usage-based/configure-grace-period)."""
    search_again_seconds: int
    """A customer search found nothing for is searched again after this long (Stripe's search lags
    a new customer by "less than a minute" normally)."""
    customer_wait_hours: int
    """How long a window waits for its Stripe customer to be known, from the window's end; 0: until
    its invoice can no longer take it (the end of its UTC month plus `invoice_grace_hours`)."""


@dataclass(frozen=True)
class DevConfig:
    state_dir: Path
    kafka_port: int
    stripe_port: int


@dataclass(frozen=True)
class RunConfig:
    host: str
    """Where every HTTP server of meterline listens (API, dashboard, metrics, webhooks)."""
    port: int
    """`meterline run`'s HTTP API, dashboard and metrics."""
    reconcile_every_minutes: int
    """`meterline run` reconciles the current period this often (0: never)."""
    allowed_hosts: tuple[str, ...]
    """Host names the dashboard is reached by besides the address it listens on (a proxy's name):
    any other Host header is refused, against DNS rebinding."""
    dashboard_token: Secret
    """Accepted as `Authorization: Bearer <token>` on the dashboard and its JSON."""
    dashboard_user: str
    dashboard_password: Secret
    """Basic auth on the dashboard and its JSON, for a browser. Beyond loopback, `run` needs this
    or the token."""
    limits: Limits
    """Bounds of every HTTP server: body size, time to send a request, connections at once."""

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def dashboard_protected(self) -> bool:
        return bool(self.dashboard_token or self.dashboard_password)


Aggregation = Literal["sum", "count", "max", "last", "unique_count", "time_weighted"]
AGGREGATIONS: tuple[Aggregation, ...] = ("sum", "count", "max", "last", "unique_count", "time_weighted")
"""How a meter's events make its period's answer (streams.windows.fold and period_answer): `sum`
of the quantities, `count` of the events, `max`: the highest quantity reported (peak seats),
`last`: the quantity of the period's latest event (seats at the period's end), `unique_count`: the
distinct values of the attribute `unique_by` (monthly active users), `time_weighted`: each event
sets a level (GB stored) that accrues level-seconds until the next (GB-months). A unique_count
window holds the values first seen in its period within it, a time_weighted window its hour's
accrual, so their windows add up."""

LEVELS = ("max", "last")
"""The aggregations of a level (seats, storage held): the period's answer is one window's value,
its highest or its latest, not the sum of its windows."""

Reset = Literal["calendar_month"]
RESETS: tuple[Reset, ...] = ("calendar_month",)
"""Where a meter's period starts afresh: the UTC calendar month."""


@dataclass(frozen=True)
class MeterConfig:
    name: str
    unit: str
    aggregation: Aggregation
    stripe_event_name: str
    billable: Mapping[str, tuple[str, ...]]
    """attribute -> glob patterns; an event is billable when every attribute matches one pattern."""
    reset: Reset = "calendar_month"
    unique_by: str = ""
    """For `unique_count`: the attribute whose distinct values are counted; required on its events."""
    dimensions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """As declared: attribute -> the values it may take, each combination billed as a meter of its
    own (a series: core.dimensions); required on its events."""
    declared: str = ""
    """A series: the meter its events name."""
    values: tuple[tuple[str, str], ...] = ()
    """A series: (attribute, value) of each of its declared meter's dimensions."""

    @property
    def usage_unit(self) -> str:
        """The unit of the meter's usage, which its prices are written in: its events' unit, or
        for a time_weighted meter their level accrued by the second ("GB-second")."""
        return f"{self.unit}-second" if self.aggregation == "time_weighted" else self.unit

    @property
    def level(self) -> bool:
        """Whether the period's answer is one window's value (LEVELS), not the sum of its windows'
        values (sum, count, and unique_count, whose windows hold first sightings)."""
        return self.aggregation in LEVELS


def levels_of(meters: Iterable[MeterConfig]) -> dict[str, str]:
    """meter -> `max` or `last`, for the meters whose period answer is one window's value, not the
    sum of their windows."""
    return {meter.name: meter.aggregation for meter in meters if meter.level}


@dataclass(frozen=True)
class BillingConfig:
    default_plan: str
    customers: Mapping[str, str]
    """meterline customer id -> plan name; everyone else is on default_plan."""
    history: Mapping[str, tuple[tuple[str, int], ...]]
    """meterline customer id -> its earlier plans, each with the instant it ended (epoch ms), in
    order; for customers whose plan changes meterline has not heard of from Stripe."""


@dataclass(frozen=True)
class AlertRule:
    """When a customer of `plan` is told about its usage of `meter` in a billing period."""

    plan: str
    meter: str
    included_shares: tuple[Decimal, ...] = ()
    """Shares of the included quantity (0.8, 1): raised once the period's usage reaches each."""
    spend: tuple[Decimal, ...] = ()
    """Amounts of the meter's line so far, in the plan's currency: raised once it reaches each."""
    projected_overage: bool = False
    """Raised once usage at the rate so far would exceed the included quantity by the period's end."""


@dataclass(frozen=True)
class AlertsConfig:
    every_seconds: int
    """How often `meterline alerts` (and `run`) looks at the periods' usage."""
    endpoint: str
    """The product's URL for a signed webhook per alert (empty: the topic, a metric and a log line)."""
    signing_secret: Secret
    """HMAC-SHA256 key of the webhook's `Meterline-Signature`."""
    rules: tuple[AlertRule, ...]


@dataclass(frozen=True)
class NoticesConfig:
    """Invoice-ready notices: one per invoice Stripe finalizes, kept on the notices topic and, with
    an SMTP server, mailed to the invoice's customer_email."""

    smtp_host: str
    """Empty: the topic only."""
    smtp_port: int
    smtp_username: str
    smtp_password: Secret
    smtp_starttls: bool
    sender: str
    dashboard_url: str
    """Where customers see their usage (the notice links <dashboard_url>/customers/<id>)."""


@dataclass(frozen=True)
class IngestConfig:
    """`meterline ingest`: usage over HTTP as CloudEvents (schemas.ingest)."""

    port: int
    keys: Mapping[str, str]
    """Source name -> the SHA-256 (hex) of its API key: keys are stored hashed, never as given."""
    max_events_per_request: int
    requests_per_second: float
    """Per key; a burst of twice as many is let through, then 429 with Retry-After."""


@dataclass(frozen=True)
class Config:
    kafka: KafkaConfig
    topics: TopicsConfig
    windows: WindowsConfig
    stream: StreamConfig
    producer: ProducerConfig
    clickhouse: ClickHouseConfig
    stripe: StripeConfig
    dev: DevConfig
    run: RunConfig
    meters: Mapping[str, MeterConfig]
    plans: Mapping[str, Plan]
    billing: BillingConfig
    alerts: AlertsConfig
    notices: NoticesConfig
    ingest: IngestConfig
    source: str

    def plan_for(self, customer_id: str) -> Plan:
        name = self.billing.customers.get(customer_id, self.billing.default_plan)
        if not name:
            raise ConfigError(
                [ConfigProblem("billing.default_plan", "", f"no plan for {customer_id!r}: declare [plans]")],
                self.source,
            )
        return self.plans[name]

    @property
    def meter_units(self) -> dict[str, str]:
        """The units of the meters as events name them: a meter with dimensions is in `meters` as a
        series per value (core.dimensions.declared_of), which its events name by the meter's name."""
        return {meter.declared or name: meter.unit for name, meter in self.meters.items()}

    @property
    def unique_attributes(self) -> dict[str, str]:
        """meter -> the attribute its events must carry: the `unique_count` meters' `unique_by`."""
        return {name: meter.unique_by for name, meter in self.meters.items() if meter.unique_by}

    @property
    def levels(self) -> dict[str, str]:
        """meter -> `max` or `last` (levels_of): what every query of usage_windows is told."""
        return levels_of(self.meters.values())
