"""The topics meterline uses, as code: what each must be, how an existing one is checked, and
`meterline topics ensure`, which creates what is missing and reports every mismatch at once.

Why the settings matter for exactness:
- `<app_id>-state`, the stream's state changelog, is compacted and partitioned exactly like
  `usage.events` (partition p holds the state of partition p). A closed window must survive in it
  for the whole lateness horizon: deleted after the broker's default 7 days, a late event after a
  rebuild would restart at revision 0 and collide with an identity already billed.
- `usage.events` (and the topics downstream of it) are kept at least the lateness horizon plus the
  replay margin, so that `replay` can re-derive any total Stripe still accepts corrections for. A
  shorter retention is a warning: nothing is lost yet, but replay promises less.
- Partition counts cannot be changed in place: a customer's key would move to another partition,
  and with it its windows' state. A mismatch is an error to resolve by hand.
- With replicas (replication factor 2 or more), a record acknowledged with `acks=all` must be on
  more than the leader: `min.insync.replicas` at least 2 where there are 3 or more replicas (a
  lower one is a warning: one disk then holds an acknowledged record), never more than the replicas
  (every write would fail: an error). `unclean.leader.election.enable` must be false: an unclean
  election makes a replica that missed acknowledged records the leader, and they are gone.
  The broker reports each topic's effective value (its own default where the topic sets none).
Brokers that do not report a setting (tansu reports only what a topic was created with) are said
so once; that setting goes unchecked.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ConfigResource, NewTopic, ResourceType  # type: ignore[attr-defined]

from meterline.core.config import Config, TopicsConfig
from meterline.core.errors import MeterlineError
from meterline.core.kafka import Kafka, admin, cluster_metadata, wait_for_partitions
from meterline.streams.windows import DAY_MS

log = logging.getLogger("meterline.topics")

Level = Literal["error", "warning", "unreported"]
FOREVER = -1  # retention.ms -1: never deleted


class TopicsError(MeterlineError):
    pass


@dataclass(frozen=True)
class TopicSpec:
    name: str
    purpose: str
    partitions: int
    replication_factor: int
    settings: Mapping[str, str]
    """Created with these (and `created_with`'s durability settings); each is checked exactly,
    except retention.ms (see min_retention_ms) and min.insync.replicas (a range)."""
    min_retention_ms: int | None = None
    """retention.ms must be at least this (or -1, forever); shorter is a warning."""

    @property
    def created_with(self) -> dict[str, str]:
        """`settings`, and with replicas what an acknowledged record needs to survive a broker."""
        if self.replication_factor < 2:
            return dict(self.settings)
        return {
            **self.settings,
            "min.insync.replicas": str(durable_min_insync(self.replication_factor)),
            "unclean.leader.election.enable": "false",
        }


@dataclass(frozen=True)
class Observed:
    """A topic as the broker reports it; a setting missing from `settings` was not reported."""

    partitions: int
    replication_factor: int
    settings: Mapping[str, str]


@dataclass(frozen=True)
class Finding:
    topic: str
    setting: str
    expected: str
    actual: str
    level: Level
    why: str = ""

    def __str__(self) -> str:
        if self.level == "unreported":
            return f"{self.topic}: {self.setting} not reported by the broker (expected {self.expected})"
        text = f"{self.topic}: {self.setting} is {self.actual}, expected {self.expected}"
        return f"{text} ({self.why})" if self.why else text


@dataclass(frozen=True)
class TopicState:
    spec: TopicSpec
    action: Literal["created", "exists", "would create", "missing"]
    findings: tuple[Finding, ...] = ()


@dataclass
class Report:
    topics: list[TopicState] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for t in self.topics for f in t.findings if f.level == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors and all(t.action != "missing" for t in self.topics)


def durable_min_insync(replication_factor: int) -> int:
    """The min.insync.replicas meterline creates topics with: 2 where there are 3 replicas or more
    (one broker may be down and writes go on, on two copies), 1 with fewer."""
    return 2 if replication_factor >= 3 else 1


def retained_ms(config: Config) -> int:
    """How long raw usage must stay readable: the lateness horizon plus the replay margin."""
    return (config.windows.max_lateness_days + config.kafka.replay_margin_days) * DAY_MS


def topic_specs(config: Config, events_partitions: int | None = None) -> list[TopicSpec]:
    """Every topic meterline uses. The state changelog takes `usage.events`' partition count as the
    broker reports it (`events_partitions`) where the topic exists, else the configured one."""
    partitions, replicas = config.kafka.partitions, config.kafka.replication_factor
    kept = retained_ms(config)
    retained = {"cleanup.policy": "delete", "retention.ms": str(kept)}
    names = config.topics

    def spec(name: str, purpose: str, settings: Mapping[str, str], keep: int | None = kept) -> TopicSpec:
        return TopicSpec(name, purpose, partitions, replicas, settings, keep)

    return [
        spec(names.events, "raw usage events, replayable", retained),
        spec(names.events_dlq, "events the stream refused, with the reason", retained),
        spec(names.aggregates, "closed windows and their revisions", retained),
        spec(names.stripe_dlq, "revisions Stripe refused", retained),
        spec(names.webhooks, "verified Stripe events", {"cleanup.policy": "delete"}, None),
        spec(names.alerts, "usage alerts, one record per alert id", {"cleanup.policy": "compact"}, None),
        spec(
            names.notices,
            "invoice-ready notices, one record per invoice",
            {"cleanup.policy": "compact"},
            None,
        ),
        TopicSpec(
            config.stream.state_topic,
            "the stream's state changelog (partition p: the state of usage.events partition p)",
            events_partitions or partitions,
            replicas,
            {"cleanup.policy": "compact"},
        ),
    ]


def check(spec: TopicSpec, observed: Observed) -> list[Finding]:
    """Every way an existing topic differs from its spec. Pure."""
    found = []
    if observed.partitions != spec.partitions:
        why = "partitions cannot change in place: keys and their state would move; recreate the topic"
        found.append(
            Finding(spec.name, "partitions", str(spec.partitions), str(observed.partitions), "error", why)
        )
    if observed.replication_factor < spec.replication_factor:
        found.append(
            Finding(
                spec.name,
                "replication factor",
                str(spec.replication_factor),
                str(observed.replication_factor),
                "error",
                "kafka.replication_factor",
            )
        )
    for setting, expected in spec.created_with.items():
        actual = observed.settings.get(setting)
        if actual is None:
            found.append(Finding(spec.name, setting, expected, "", "unreported"))
        elif setting == "min.insync.replicas":
            found += _check_min_insync(spec, int(actual))
        elif setting == "retention.ms":
            kept = int(actual)
            if spec.min_retention_ms is not None and kept != FOREVER and kept < spec.min_retention_ms:
                why = (
                    f"replay and late corrections need {spec.min_retention_ms // DAY_MS} days "
                    f"(the lateness horizon plus the replay margin); the broker keeps {kept / DAY_MS:g}"
                )
                found.append(Finding(spec.name, setting, f"at least {expected}", actual, "warning", why))
        elif actual != expected:
            found.append(Finding(spec.name, setting, expected, actual, "error"))
    return found


def _check_min_insync(spec: TopicSpec, actual: int) -> list[Finding]:
    wanted = durable_min_insync(spec.replication_factor)
    if actual > spec.replication_factor:
        why = f"more than the {spec.replication_factor} replicas: every acks=all write would be refused"
        return [Finding(spec.name, "min.insync.replicas", f"{wanted}", str(actual), "error", why)]
    if actual < wanted:
        why = "an acknowledged record may be on one broker only, and lost with it"
        return [Finding(spec.name, "min.insync.replicas", f"at least {wanted}", str(actual), "warning", why)]
    return []


def describe(kafka: Kafka, names: Iterable[str], timeout: float = 15) -> dict[str, Observed]:
    """The topics of `names` that exist, as the broker reports them."""
    metadata = cluster_metadata(kafka, timeout=timeout)
    client = admin(kafka)
    present = [n for n in names if n in metadata.topics and not metadata.topics[n].error]
    if not present:
        return {}
    futures = client.describe_configs([ConfigResource(ResourceType.TOPIC, n) for n in present])
    reported: dict[str, dict[str, str]] = {}
    for resource, future in futures.items():
        try:
            entries = future.result(timeout=timeout)
        except KafkaException:
            entries = {}  # a broker that cannot describe configs reports nothing: unchecked
        reported[resource.name] = {k: str(e.value) for k, e in entries.items() if e.value is not None}
    observed = {}
    for name in present:
        partitions = metadata.topics[name].partitions
        replicas = min((len(p.replicas) for p in partitions.values()), default=0)
        observed[name] = Observed(len(partitions), replicas, reported.get(name, {}))
    return observed


def ensure(
    kafka: Kafka, specs: list[TopicSpec], *, dry_run: bool = False, create: Collection[str] | None = None
) -> Report:
    """Create the topics of `specs` that are missing (those named in `create`; all by default)
    with their settings, and check the others. Idempotent; `dry_run` changes nothing."""
    observed = describe(kafka, [s.name for s in specs])
    missing = [s for s in specs if s.name not in observed]
    creatable = [s for s in missing if create is None or s.name in create]
    if creatable and not dry_run:
        _create(kafka, creatable)
    report = Report()
    for spec in specs:
        if spec.name in observed:
            report.topics.append(TopicState(spec, "exists", tuple(check(spec, observed[spec.name]))))
        elif spec in creatable:
            report.topics.append(TopicState(spec, "would create" if dry_run else "created"))
        else:
            report.topics.append(TopicState(spec, "missing"))
    return report


def require(kafka: Kafka, specs: list[TopicSpec], role: str, *, create: Collection[str] = ()) -> None:
    """What a role checks at start: every topic it uses exists as specified (those in `create`, its
    own, are created if missing). Raises TopicsError naming every problem; warnings and unreported
    settings are logged once."""
    report = ensure(kafka, specs, create=create)
    findings = [f for t in report.topics for f in t.findings]
    for finding in findings:
        if finding.level == "warning":
            log.warning("%s", finding)
    unreported = sorted({f.setting for f in findings if f.level == "unreported"})
    if unreported:
        log.info("the broker does not report %s of meterline's topics: not checked", ", ".join(unreported))
    problems = [str(f) for f in report.errors] + [
        f"{t.spec.name}: missing ({t.spec.purpose})" for t in report.topics if t.action == "missing"
    ]
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise TopicsError(
            f"{role} cannot start: {len(problems)} topic problem(s):\n{lines}\n"
            "run `meterline topics ensure` (it creates what is missing and reports the rest)"
        )


def isolated_topics(config: Config, bootstrap: str, label: str = "", partitions: int | None = None) -> Config:
    """A copy of `config` on `bootstrap` whose topics carry a suffix of their own, created there
    with their settings (compacted alerts and notices, retention): tests and benchmarks that share
    one broker do not see each other's records, and a broker that reports settings finds them right."""
    suffix = f"{label}-{uuid.uuid4().hex[:8]}" if label else uuid.uuid4().hex[:10]
    topics = TopicsConfig(
        **{f.name: f"{getattr(config.topics, f.name)}.{suffix}" for f in dataclasses.fields(TopicsConfig)}
    )
    count = partitions or config.kafka.partitions
    kafka = dataclasses.replace(config.kafka, bootstrap=bootstrap, partitions=count)
    isolated = dataclasses.replace(config, topics=topics, kafka=kafka)
    report = ensure(bootstrap, [s for s in topic_specs(isolated) if s.name in topics.all()])
    if report.errors:
        raise TopicsError("; ".join(str(f) for f in report.errors))
    return isolated


def role_topics(config: Config, role: str) -> list[str]:
    """The topics a role reads or writes."""
    t = config.topics
    return {
        "stream": [t.events, t.events_dlq, t.aggregates, config.stream.state_topic],
        # The dead letters always, and the raw events when they are stored.
        "sink-clickhouse": [t.aggregates, t.events_dlq]
        + ([t.events] if config.clickhouse.raw_events else []),
        "sink-stripe": [t.aggregates, t.stripe_dlq],
        # invoice.created ticks every usage.events partition; invoice.finalized leaves a notice
        "webhooks": [t.webhooks, t.events, t.notices],
        "reconcile": [],  # ClickHouse and Stripe only
        "alerts": [t.alerts],
        "ingest": [t.events],
    }[role]


def specs_for(kafka: Kafka, config: Config, names: Collection[str] | None = None) -> list[TopicSpec]:
    """The specs of `names` (all by default), the state changelog partitioned like usage.events
    as the broker has it."""
    events = describe(kafka, [config.topics.events]).get(config.topics.events)
    specs = topic_specs(config, events.partitions if events else None)
    return [s for s in specs if names is None or s.name in names]


def require_for_role(kafka: Kafka, config: Config, role: str) -> None:
    """A role's check at start; the stream creates its own state changelog if it is missing."""
    names = role_topics(config, role)
    if not names:
        return
    own = [config.stream.state_topic] if role == "stream" else []
    require(kafka, specs_for(kafka, config, names), role, create=own)


def _create(kafka: Kafka, specs: list[TopicSpec]) -> None:
    client = admin(kafka)  # held until the futures resolve: a collected client cancels them
    futures = client.create_topics(
        [NewTopic(s.name, s.partitions, s.replication_factor, config=s.created_with) for s in specs],
        request_timeout=30,
    )
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            # Created meanwhile by another process (two workers starting at once): checked next time.
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicsError(f"cannot create topic {name!r}: {exc.args[0].str()}") from exc
    wait_for_partitions(kafka, [s.name for s in specs])
