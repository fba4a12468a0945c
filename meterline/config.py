"""meterline's configuration: one TOML file plus environment overrides, loaded into the frozen
values of core.config, validated. Every problem is reported at once, each with its field, value and why.

Precedence: the built-in defaults (meterline/default.toml), then the file (`--config`,
$METERLINE_CONFIG, ./meterline.toml, or /etc/meterline/meterline.toml), then the environment.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import fields
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, cast

from core.config import (
    BillingConfig,
    ClickHouseConfig,
    Config,
    ConfigError,
    ConfigProblem,
    DevConfig,
    KafkaConfig,
    MeterConfig,
    ProducerConfig,
    RunConfig,
    Secret,
    StreamConfig,
    StripeConfig,
    TopicsConfig,
    WindowsConfig,
)
from core.currencies import UnknownCurrency, currency
from core.http import Limits
from core.ratecard import MeterPrice, Plan, Rounding, Tier
from sinks.stripe.prices import base_fee_terms, stripe_terms

DEFAULT_FILE = Path(__file__).with_name("default.toml")
SYSTEM_FILE = Path("/etc/meterline/meterline.toml")
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_METER_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_MAX_MESSAGE_BYTES = 1_000_000  # Kafka's default message.max.bytes is 1 MiB; keep batches below it
STRIPE_LATENESS_LIMIT_DAYS = 35

# Well-known variables, and the key each overrides.
ENV_ALIASES = {
    "KAFKA_BOOTSTRAP": ("kafka", "bootstrap"),
    "KAFKA_SECURITY_PROTOCOL": ("kafka", "security_protocol"),
    "KAFKA_SASL_MECHANISM": ("kafka", "sasl_mechanism"),
    "KAFKA_SASL_USERNAME": ("kafka", "sasl_username"),
    "KAFKA_SASL_PASSWORD": ("kafka", "sasl_password"),
    "KAFKA_SSL_CA_LOCATION": ("kafka", "ssl_ca_location"),
    "SCHEMA_REGISTRY_URL": ("kafka", "schema_registry_url"),
    "CLICKHOUSE_DSN": ("clickhouse", "dsn"),
    "CLICKHOUSE_PASSWORD": ("clickhouse", "password"),
    "STRIPE_WEBHOOK_SECRET": ("stripe", "webhook_secret"),
    "STRIPE_API_KEY": ("stripe", "api_key"),
    "STRIPE_API_BASE": ("stripe", "api_base"),
}
ENV_PREFIX = "METERLINE__"


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate; raises ConfigError listing every problem."""
    env = os.environ if env is None else env
    path = path or _default_path(env)
    raw = tomllib.loads(DEFAULT_FILE.read_text())
    problems: list[ConfigProblem] = []
    source = "built-in defaults"
    if path is not None:
        source = str(path)
        try:
            user = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError([ConfigProblem("--config", str(path), "no such file")], source) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                [ConfigProblem("--config", str(path), f"not valid TOML: {exc}")], source
            ) from None
        if "meters" in user:  # a file that declares meters replaces the example meters...
            raw.pop("meters")
        if "meters" in user or "plans" in user:  # ...and the example plans, which price them
            raw.pop("plans")
        _merge(raw, user)
    _apply_env(raw, env, problems)
    config = _build(raw, problems, source)
    if problems:
        raise ConfigError(problems, source)
    return config


def _default_path(env: Mapping[str, str]) -> Path | None:
    """$METERLINE_CONFIG (which must exist), else the first of ./meterline.toml and
    /etc/meterline/meterline.toml that does (a container's optional ConfigMap), else none."""
    if env.get("METERLINE_CONFIG"):
        return Path(env["METERLINE_CONFIG"])
    return next((path for path in (Path("meterline.toml"), SYSTEM_FILE) if path.exists()), None)


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _apply_env(raw: dict[str, Any], env: Mapping[str, str], problems: list[ConfigProblem]) -> None:
    for name, (section, key) in ENV_ALIASES.items():
        if name in env:
            raw.setdefault(section, {})[key] = env[name]
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if len(path) < 2 or not all(path):
            problems.append(ConfigProblem(name, text, "expected METERLINE__<SECTION>__<KEY>"))
            continue
        table = raw
        for part in path[:-1]:
            table = table.setdefault(part, {})
        table[path[-1]] = _parse_env_value(text)


def _parse_env_value(text: str) -> Any:
    """TOML value syntax where it parses (numbers, booleans, arrays), else the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


class _Section:
    """Reads one table, recording type errors and unknown keys instead of stopping at the first."""

    def __init__(self, raw: Mapping[str, Any], name: str, problems: list[ConfigProblem]) -> None:
        self.name = name
        self.problems = problems
        table = raw.get(name, {})
        if not isinstance(table, dict):
            self.problem("", table, "must be a table")
            table = {}
        self.table: dict[str, Any] = table
        self.seen: set[str] = set()

    def problem(self, key: str, value: object, why: str) -> None:
        self.problems.append(ConfigProblem(f"{self.name}.{key}".rstrip("."), value, why))

    def get(
        self,
        key: str,
        kind: type | tuple[type, ...],
        fallback: Any,
        check: Callable[[Any], str | None] | None = None,
        *,
        secret: bool = False,
    ) -> Any:
        self.seen.add(key)
        value = self.table.get(key, fallback)
        shown = Secret(str(value)) if secret else value
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if not ok:
            wanted = {int: "an integer", (int, float): "a number"}.get(
                kind
            ) or f"a {getattr(kind, '__name__', kind)}"
            self.problem(key, shown, f"must be {wanted}")
            return fallback
        why = check(value) if check else None
        if why:
            self.problem(key, shown, why)
        return value

    def finish(self) -> None:
        for key in sorted(set(self.table) - self.seen):
            self.problem(key, self.table[key], f"unknown key (known: {', '.join(sorted(self.seen))})")


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _long_enough(value: str) -> str | None:
    return None if not value or len(value) >= 16 else "at least 16 characters, or empty"


def _one_of(*choices: str) -> Callable[[str], str | None]:
    shown = ", ".join(c or '""' for c in choices)
    return lambda v: None if v in choices else f"must be one of {shown}"


def _file_check(path: str) -> str | None:
    return None if not path or Path(path).is_file() else "no such file"


def _check_kafka_security(s: _Section, kafka: KafkaConfig) -> None:
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


def _at_least(low: int) -> Callable[[int], str | None]:
    return lambda v: None if v >= low else f"must be at least {low}"


def _between(low: float, high: float, why: str = "") -> Callable[[float], str | None]:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}{why}"


def _build(raw: dict[str, Any], problems: list[ConfigProblem], source: str) -> Config:
    known_sections = {
        "billing",
        "plans",
        "kafka",
        "topics",
        "windows",
        "stream",
        "producer",
        "clickhouse",
        "stripe",
        "dev",
        "run",
        "meters",
    }
    for name in sorted(set(raw) - known_sections):
        problems.append(
            ConfigProblem(name, raw[name], f"unknown section (known: {', '.join(sorted(known_sections))})")
        )

    s = _Section(raw, "kafka", problems)
    kafka = KafkaConfig(
        bootstrap=s.get("bootstrap", str, ""),
        schema_registry_url=s.get(
            "schema_registry_url", str, "", _url_check("http://", "https://", "mock://")
        ),
        partitions=s.get("partitions", int, 4, _at_least(1)),
        replication_factor=s.get("replication_factor", int, 1, _at_least(1)),
        replay_margin_days=s.get("replay_margin_days", int, 7, _between(0, 3650)),
        security_protocol=s.get("security_protocol", str, "PLAINTEXT", _one_of(*SECURITY_PROTOCOLS)),
        sasl_mechanism=s.get("sasl_mechanism", str, "", _one_of("", *SASL_MECHANISMS)),
        sasl_username=s.get("sasl_username", str, ""),
        sasl_password=Secret(s.get("sasl_password", str, "", secret=True)),
        ssl_ca_location=s.get("ssl_ca_location", str, "", _file_check),
        ssl_certificate_location=s.get("ssl_certificate_location", str, "", _file_check),
        ssl_key_location=s.get("ssl_key_location", str, "", _file_check),
        ssl_key_password=Secret(s.get("ssl_key_password", str, "", secret=True)),
    )
    _check_kafka_security(s, kafka)
    s.finish()

    s = _Section(raw, "topics", problems)
    topic_check = _pattern_check(_TOPIC_NAME, "a Kafka topic name: letters, digits, '.', '_', '-'")
    topics = TopicsConfig(**{f.name: s.get(f.name, str, "", topic_check) for f in fields(TopicsConfig)})
    s.finish()
    names = topics.all()
    for f in fields(TopicsConfig):
        if names.count(getattr(topics, f.name)) > 1:
            s.problem(f.name, getattr(topics, f.name), "two topics must not share a name")

    s = _Section(raw, "windows", problems)
    windows = WindowsConfig(
        size_minutes=s.get("size_minutes", int, 1, lambda v: None if v in (1, 5) else "must be 1 or 5"),
        grace_seconds=s.get("grace_seconds", int, 10, _between(0, 3600)),
        idle_timeout_seconds=s.get("idle_timeout_seconds", int, 30, _between(1, 86_400)),
        max_lateness_days=s.get(
            "max_lateness_days",
            int,
            35,
            _between(1, STRIPE_LATENESS_LIMIT_DAYS, " (Stripe refuses usage older than 35 days)"),
        ),
        max_clock_skew_seconds=s.get(
            "max_clock_skew_seconds",
            int,
            300,
            _between(0, 300, " (Stripe refuses usage more than 5 minutes ahead)"),
        ),
        dedup_retention_seconds=s.get("dedup_retention_seconds", int, 3600, _at_least(0)),
    )
    s.finish()

    s = _Section(raw, "stream", problems)
    guarantees = ("at_least_once", "exactly_once")
    stream = StreamConfig(
        app_id=s.get(
            "app_id", str, "meterline-stream", _pattern_check(_TOPIC_NAME, "usable in a topic name")
        ),
        processing_guarantee=s.get(
            "processing_guarantee",
            str,
            "at_least_once",
            lambda v: None if v in guarantees else f"must be one of {', '.join(guarantees)}",
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
    s.finish()

    s = _Section(raw, "producer", problems)
    producer = ProducerConfig(
        packing=s.get("packing", bool, True),
        batch_max_events=s.get("batch_max_events", int, 1000, _between(1, 100_000)),
        batch_max_bytes=s.get(
            "batch_max_bytes",
            int,
            524_288,
            _between(1024, _MAX_MESSAGE_BYTES, " (Kafka's default message size limit)"),
        ),
        linger_ms=s.get("linger_ms", int, 50, _between(0, 60_000)),
    )
    s.finish()

    s = _Section(raw, "clickhouse", problems)
    clickhouse = ClickHouseConfig(
        dsn=s.get("dsn", str, "", _dsn_check),
        password=Secret(s.get("password", str, "", secret=True)),
        raw_events=s.get("raw_events", bool, True),
        raw_events_ttl_days=s.get("raw_events_ttl_days", int, 400, _between(1, 36_500)),
        cluster=s.get("cluster", str, "", _pattern_check(re.compile(r"^[A-Za-z0-9_.-]*$"), "a cluster name")),
        batch_rows=s.get("batch_rows", int, 20_000, _between(1, 1_000_000)),
        batch_seconds=float(
            s.get(
                "batch_seconds",
                (int, float),
                1.0,
                lambda v: None if 0 < v <= 600 else "must be more than 0 and at most 600",
            )
        ),
    )
    s.finish()

    s = _Section(raw, "stripe", problems)
    modes = ("meter_events", "meter_event_stream", "usage_records")
    stripe = StripeConfig(
        api_key=Secret(s.get("api_key", str, "", _stripe_key_check, secret=True)),
        api_base=s.get("api_base", str, "", _url_check("http://", "https://")),
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
        concurrency=s.get("concurrency", int, 4, _between(1, 64)),
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
        webhook_port=s.get("webhook_port", int, 8787, _between(0, 65535)),
        webhook_tolerance_seconds=s.get("webhook_tolerance_seconds", int, 300, _between(1, 3600)),
        summaries_settle_seconds=s.get("summaries_settle_seconds", int, 3600, _between(0, 86_400)),
    )
    s.finish()

    s = _Section(raw, "dev", problems)
    dev = DevConfig(
        state_dir=Path(s.get("state_dir", str, ".meterline", lambda v: None if v else "must not be empty")),
        kafka_port=s.get("kafka_port", int, 0, _between(0, 65535)),
        stripe_port=s.get("stripe_port", int, 0, _between(0, 65535)),
    )
    s.finish()

    s = _Section(raw, "run", problems)
    run = RunConfig(
        host=s.get("host", str, "127.0.0.1", lambda v: None if v else "must not be empty"),
        port=s.get("port", int, 8790, _between(0, 65535)),
        reconcile_every_minutes=s.get("reconcile_every_minutes", int, 60, _between(0, 7 * 24 * 60)),
        allowed_hosts=tuple(
            s.get(
                "allowed_hosts",
                list,
                [],
                lambda v: None if all(isinstance(h, str) and h for h in v) else "must be host names",
            )
        ),
        dashboard_token=Secret(s.get("dashboard_token", str, "", _long_enough, secret=True)),
        dashboard_user=s.get("dashboard_user", str, ""),
        dashboard_password=Secret(s.get("dashboard_password", str, "", _long_enough, secret=True)),
        limits=Limits(
            max_body_bytes=s.get("max_body_bytes", int, Limits.max_body_bytes, _between(1024, 1 << 30)),
            read_timeout_s=s.get(
                "read_timeout_seconds", (int, float), Limits.read_timeout_s, _between(0.1, 3600)
            ),
            max_connections=s.get("max_connections", int, Limits.max_connections, _between(1, 10_000)),
        ),
    )
    if bool(run.dashboard_user) != bool(run.dashboard_password):
        s.problem(
            "dashboard_password", run.dashboard_password, "dashboard_user and dashboard_password go together"
        )
    s.finish()

    meters = _build_meters(raw.get("meters", {}), problems)
    plans = _build_plans(raw.get("plans", {}), meters, problems)
    s = _Section(raw, "billing", problems)
    billing = BillingConfig(
        default_plan=s.get(
            "default_plan",
            str,
            "standard" if "standard" in plans else "",
            lambda v: None if not v or v in plans else f"no plan {v!r} in [plans]",
        ),
        customers=s.get(
            "customers",
            dict,
            {},
            lambda v: next(
                (f"{c} is on plan {n!r}, which [plans] lacks" for c, n in v.items() if n not in plans), None
            ),
        ),
        history=_plan_history(s, s.get("history", dict, {}), plans),
    )
    s.finish()
    return Config(
        kafka, topics, windows, stream, producer, clickhouse, stripe, dev, run, meters, plans, billing, source
    )


def _plan_history(
    s: _Section, raw: Mapping[str, Any], plans: Mapping[str, Plan]
) -> dict[str, tuple[tuple[str, int], ...]]:
    """`history = { "cust-42" = [{ plan = "starter", until = "2026-11-15T00:00:00Z" }] }`."""
    history = {}
    for customer, entries in raw.items():
        changes: list[tuple[str, int]] = []
        for n, entry in enumerate(entries if isinstance(entries, list) else [entries]):
            where = f"history.{customer}[{n}]"
            if not isinstance(entry, dict) or set(entry) != {"plan", "until"}:
                s.problem(
                    where, entry, 'each earlier plan is { plan = "starter", until = "2026-11-15T00:00:00Z" }'
                )
                continue
            until = _instant(entry["until"])
            if entry["plan"] not in plans:
                s.problem(where, entry["plan"], f"no plan {entry['plan']!r} in [plans]")
            elif until is None:
                s.problem(
                    where, entry["until"], "an instant in ISO 8601 with its zone, e.g. 2026-11-15T00:00:00Z"
                )
            elif changes and until <= changes[-1][1]:
                s.problem(
                    where, entry["until"], "earlier plans are listed in order, each ending after the last"
                )
            else:
                changes.append((str(entry["plan"]), until))
        history[str(customer)] = tuple(changes)
    return history


def _instant(value: object) -> int | None:
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return None if when.tzinfo is None else int(when.timestamp() * 1000)


def _build_plans(
    raw: Any, meters: Mapping[str, MeterConfig], problems: list[ConfigProblem]
) -> dict[str, Plan]:
    if not isinstance(raw, dict):
        problems.append(ConfigProblem("plans", raw, "must be tables [plans.<name>]"))
        return {}
    plans = {}
    for name, table in raw.items():
        s = _Section({name: table}, name, problems)
        s.name = f"plans.{name}"
        currency = s.get("currency", str, "usd", _currency_check)
        base_fee = _money(s, "base_fee", "0")
        prices_raw = s.get("prices", dict, {})
        s.finish()
        prices = {}
        for meter, price_table in prices_raw.items():
            p = _Section({meter: price_table}, meter, problems)
            p.name = f"plans.{name}.prices.{meter}"
            if meter not in meters:
                p.problem("", meter, f"no meter {meter!r} in [meters]")
            expected_unit = meters[meter].unit if meter in meters else ""
            p.get("unit", str, expected_unit, _unit_check(expected_unit))
            tiers_mode = p.get(
                "tiers_mode",
                str,
                "",
                lambda v: None if v in ("", "graduated", "volume") else "graduated or volume",
            )
            tiers = _tiers(p, p.get("tiers", list, []), bool(tiers_mode))
            prices[meter] = MeterPrice(
                meter=meter,
                label=p.get("label", str, meter.replace("_", " ")),
                billed_unit=p.get("billed_unit", str, expected_unit),
                per=Decimal(p.get("per", int, 1, _at_least(1))),
                decimals=p.get("decimals", int, 0, _between(0, 6)),
                rounding=cast(
                    Rounding,
                    p.get(
                        "rounding",
                        str,
                        "up",
                        lambda v: None if v in ("up", "down", "half_up") else "up, down or half_up",
                    ),
                ),
                included=Decimal(p.get("included", int, 0, _at_least(0))),
                overage_price=_money(p, "overage_price", "0") if not tiers_mode else None,
                tiers_mode=cast(Literal["graduated", "volume"] | None, tiers_mode or None),
                tiers=tiers,
                billed_by_stripe=p.get("billed_by_stripe", bool, True),
            )
            p.finish()
        plan = Plan(name, currency, base_fee, prices)
        if _currency_check(currency) is None:
            _check_billable(plan, problems)
        plans[name] = plan
    return plans


def _currency_check(code: str) -> str | None:
    try:
        found = currency(code)
    except UnknownCurrency as exc:
        return str(exc)
    return None if found.code == code else f"write it in lowercase, as Stripe does: {found.code!r}"


def _check_billable(plan: Plan, problems: list[ConfigProblem]) -> None:
    """Every price billed through Stripe must be one Stripe bills exactly as the preview computes it."""
    base_fee = base_fee_terms(plan)
    if plan.base_fee and isinstance(base_fee, str):
        problems.append(ConfigProblem(f"plans.{plan.name}.base_fee", str(plan.base_fee), base_fee))
    for meter, price in plan.prices.items():
        terms = stripe_terms(plan, price)
        if price.billed_by_stripe and isinstance(terms, str):
            problems.append(
                ConfigProblem(
                    f"plans.{plan.name}.prices.{meter}",
                    price.label,
                    f"Stripe cannot bill this price exactly: {terms} (or set billed_by_stripe = false "
                    "to price it here and invoice it some other way)",
                )
            )


def _unit_check(unit: str) -> Callable[[str], str | None]:
    return lambda v: (
        None
        if v == unit
        else f"unit mismatch: the meter counts in {unit!r}; a price in another unit bills wrong amounts"
    )


def _money(s: _Section, key: str, fallback: str) -> Decimal:
    """Money is written as a string ("0.001"), so that no float rounding reaches an invoice."""
    text = s.get(key, (str, int, float), fallback, _money_check)
    return _decimal(text) or Decimal(0)


def _money_check(value: object) -> str | None:
    if isinstance(value, float):
        return f'write money as a string ("{value}"): a float cannot hold it exactly'
    amount = _decimal(value)
    return None if amount is not None and amount >= 0 else 'a non-negative amount as a string, e.g. "0.001"'


def _decimal(value: object) -> Decimal | None:
    try:
        return Decimal(str(value)) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    except ArithmeticError:
        return None


def _tiers(p: _Section, raw: list[Any], wanted: bool) -> tuple[Tier, ...]:
    if not wanted:
        if raw:
            p.problem("tiers", raw, "tiers need tiers_mode = graduated or volume")
        return ()
    tiers = []
    for n, entry in enumerate(raw):
        if not isinstance(entry, dict) or "unit_price" not in entry:
            p.problem(
                f"tiers[{n}]", entry, 'each tier is { up_to = N, unit_price = "0.01" }; the last has no up_to'
            )
            continue
        up_to = entry.get("up_to")
        price, fee = _decimal(entry["unit_price"]), _decimal(entry.get("flat_fee", "0"))
        if price is None or fee is None:
            p.problem(f"tiers[{n}]", entry, "unit_price and flat_fee are amounts written as strings")
            continue
        tiers.append(Tier(None if up_to is None else Decimal(up_to), price, fee))
    edges = [t.up_to for t in tiers]
    if not tiers or edges[-1] is not None or None in edges[:-1] or edges[:-1] != sorted(set(edges[:-1])):  # type: ignore[type-var]
        p.problem("tiers", raw, "tiers rise strictly (up_to) and only the last one is open-ended")
    return tuple(tiers)


def _build_meters(raw: Any, problems: list[ConfigProblem]) -> dict[str, MeterConfig]:
    if not isinstance(raw, dict) or not raw:
        problems.append(ConfigProblem("meters", raw, "declare at least one meter as [meters.<name>]"))
        return {}
    meters: dict[str, MeterConfig] = {}
    for name, table in raw.items():
        if not _METER_NAME.match(name):
            problems.append(
                ConfigProblem(f"meters.{name}", name, "a meter name is lowercase letters, digits, '_'")
            )
        s = _Section({name: table}, name, problems)
        s.name = f"meters.{name}"
        unit = s.get("unit", str, "", lambda v: None if v else "every meter needs a unit (call, byte, ...)")
        aggregation = s.get(
            "aggregation", str, "sum", lambda v: None if v in ("sum", "count") else "must be sum or count"
        )
        event_name = s.get("stripe_event_name", str, name, lambda v: None if v else "must not be empty")
        billable = _billable(s.get("billable", dict, {}), s)
        s.finish()
        meters[name] = MeterConfig(
            name, unit, cast(Literal["sum", "count"], aggregation), event_name, billable
        )
    return meters


def _billable(table: dict[str, Any], s: _Section) -> dict[str, tuple[str, ...]]:
    rules: dict[str, tuple[str, ...]] = {}
    for attribute, patterns in table.items():
        if isinstance(patterns, str):
            patterns = [patterns]
        if (
            not isinstance(patterns, list)
            or not patterns
            or not all(isinstance(p, str) and p for p in patterns)
        ):
            s.problem(
                f"billable.{attribute}", patterns, 'must be a non-empty list of glob patterns, e.g. ["2??"]'
            )
            continue
        rules[attribute] = tuple(patterns)
    return rules


def _pattern_check(pattern: re.Pattern[str], what: str) -> Callable[[str], str | None]:
    return lambda v: None if pattern.match(v) else f"must be {what}"


def _url_check(*schemes: str) -> Callable[[str], str | None]:
    return lambda v: (
        None if not v or v.startswith(schemes) else f"must be empty or start with {' or '.join(schemes)}"
    )


def _dsn_check(dsn: str) -> str | None:
    if not dsn or dsn.startswith(("http://", "https://")):
        return None
    if dsn.startswith("chdb://"):
        return None if dsn.startswith("chdb:///") else "chdb DSNs take an absolute path: chdb:///abs/path"
    return "must be empty (embedded), chdb:///abs/path or http(s)://host:8123"


def _stripe_key_check(key: str) -> str | None:
    if not key or key.startswith(("sk_test_", "sk_live_", "rk_test_", "rk_live_")):
        return None
    return "a Stripe secret key starts with sk_test_, sk_live_, rk_test_ or rk_live_"
