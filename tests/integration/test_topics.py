"""Topics as code: `meterline topics ensure` creates every topic with its settings and checks the
ones that exist, every mismatch at once; a stream worker refuses a state changelog that is not
compacted or not partitioned like usage.events. The checks are pure; the command and the worker
run against Apache Kafka, which reports every topic setting's effective value (tansu, the embedded
broker, reports only those a topic was created with: the others are said to be unchecked). The
replicated settings are exercised on three brokers in tests/crash/test_broker_failover.py."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from meterline.config import load_config
from meterline.core.config import TopicsConfig
from meterline.core.kafka import admin, ensure_topics, wait_for_partitions
from meterline.topics import Observed, check, retained_ms, topic_specs
from tests.support.apache_kafka import on_apache_kafka  # noqa: F401  (this module runs on Apache Kafka)

DAY_MS = 86_400_000


def spec_named(suffix: str):  # type: ignore[no-untyped-def]
    config = load_config(None, {})
    return next(s for s in topic_specs(config) if s.name.endswith(suffix))


def test_the_state_changelog_is_compacted_and_partitioned_like_usage_events() -> None:
    config = load_config(None, {})
    specs = {s.name: s for s in topic_specs(config, events_partitions=6)}
    state = specs["meterline-stream-state"]
    assert (state.partitions, dict(state.settings)) == (6, {"cleanup.policy": "compact"})
    events = specs["usage.events"]
    assert events.partitions == 4 and events.settings["cleanup.policy"] == "delete"
    # 35 days of lateness plus 7 of replay margin.
    assert int(events.settings["retention.ms"]) == retained_ms(config) == 42 * DAY_MS


def test_every_mismatch_of_an_existing_topic_is_reported_at_once() -> None:
    state = spec_named("-state")
    found = check(state, Observed(partitions=3, replication_factor=1, settings={"cleanup.policy": "delete"}))
    assert [(f.setting, f.level) for f in found] == [("partitions", "error"), ("cleanup.policy", "error")]
    assert "cleanup.policy is delete, expected compact" in str(found[1])
    assert check(state, Observed(4, 1, {"cleanup.policy": "compact"})) == []


def test_a_retention_shorter_than_replay_promises_is_a_warning_and_forever_is_fine() -> None:
    events = spec_named("usage.events")
    week = Observed(4, 1, {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)})
    [finding] = check(events, week)
    assert finding.level == "warning" and "need 42 days" in str(finding) and "keeps 7" in str(finding)
    assert check(events, Observed(4, 1, {"cleanup.policy": "delete", "retention.ms": "-1"})) == []


def test_a_setting_the_broker_does_not_report_is_unchecked_not_passed() -> None:
    found = check(spec_named("-state"), Observed(4, 1, {}))
    assert [(f.setting, f.level) for f in found] == [("cleanup.policy", "unreported")]


def _env(kafka_bootstrap: str, tmp_path: Path, suffix: str) -> dict[str, str]:
    names = [f.name for f in dataclasses.fields(TopicsConfig)]
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "METERLINE__DEV__STATE_DIR": str(tmp_path),
        "METERLINE__STREAM__APP_ID": f"topics-{suffix}",
        "METERLINE__STREAM__STORE": "memory://",
        **{f"METERLINE__TOPICS__{n.upper()}": f"{n}.{suffix}" for n in names},
    }


def _meterline(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterline.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.integration
def test_topics_ensure_creates_every_topic_once_and_a_second_run_changes_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    env = _env(kafka_bootstrap, tmp_path, suffix)
    dry = json.loads(_meterline(env, "topics", "ensure", "--dry-run", "--json").stdout)
    assert {t["action"] for t in dry["topics"]} == {"would create"}
    assert f"events.{suffix}" not in admin(kafka_bootstrap).list_topics(timeout=10).topics
    first = _meterline(env, "topics", "ensure", "--json")
    assert first.returncode == 0, first.stderr
    created = json.loads(first.stdout)
    assert [(t["topic"], t["action"]) for t in created["topics"]] == [
        (f"events.{suffix}", "created"),
        (f"events_dlq.{suffix}", "created"),
        (f"aggregates.{suffix}", "created"),
        (f"stripe_dlq.{suffix}", "created"),
        (f"webhooks.{suffix}", "created"),
        (f"alerts.{suffix}", "created"),
        (f"notices.{suffix}", "created"),
        (f"topics-{suffix}-state", "created"),
    ]
    again = _meterline(env, "topics", "ensure", "--json")
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert {t["action"] for t in second["topics"]} == {"exists"}
    # Apache Kafka reports every setting checked (none unreported): compacted state, 42 days of raw usage.
    assert all(t["findings"] == [] for t in second["topics"]), second
    table = _meterline(env, "topics", "ensure").stdout
    assert f"topics-{suffix}-state" in table and "cleanup.policy=compact" in table


@pytest.mark.integration
@pytest.mark.parametrize(
    ("partitions", "policy", "refusal"),
    [
        (4, "delete", "cleanup.policy is delete, expected compact"),
        (2, "compact", "partitions is 2, expected 4"),
    ],
)
def test_a_stream_worker_refuses_a_state_changelog_created_wrongly(
    kafka_bootstrap: str, tmp_path: Path, partitions: int, policy: str, refusal: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    env = _env(kafka_bootstrap, tmp_path, suffix)
    ensure_topics(kafka_bootstrap, [f"{n}.{suffix}" for n in ("events", "events_dlq", "aggregates")], 4)
    state = f"topics-{suffix}-state"
    client = admin(kafka_bootstrap)
    [created] = client.create_topics(
        [NewTopic(state, partitions, 1, config={"cleanup.policy": policy})]
    ).values()
    created.result(timeout=30)
    wait_for_partitions(kafka_bootstrap, [state])
    refused = _meterline(env, "stream", "--data-dir", str(tmp_path / "w"), timeout=60)
    assert refused.returncode == 1
    assert "stream cannot start" in refused.stderr and refusal in refused.stderr, refused.stderr
    assert "meterline topics ensure" in refused.stderr
    checked = _meterline(env, "topics", "ensure", "--json")
    assert checked.returncode == 1 and refusal in checked.stdout


def test_replicated_topics_need_two_in_sync_copies_and_no_unclean_election() -> None:
    config = load_config(None, {"METERLINE__KAFKA__REPLICATION_FACTOR": "3"})
    events = next(s for s in topic_specs(config) if s.name == "usage.events")
    assert events.created_with["min.insync.replicas"] == "2"
    assert events.created_with["unclean.leader.election.enable"] == "false"
    sound = {**events.created_with}
    assert check(events, Observed(4, 3, sound)) == []
    one_copy = check(events, Observed(4, 3, {**sound, "min.insync.replicas": "1"}))
    assert [(f.setting, f.level) for f in one_copy] == [("min.insync.replicas", "warning")]
    assert "lost with it" in str(one_copy[0])
    unwritable = check(events, Observed(4, 3, {**sound, "min.insync.replicas": "4"}))
    assert [(f.setting, f.level) for f in unwritable] == [("min.insync.replicas", "error")]
    assert "every acks=all write would be refused" in str(unwritable[0])
    unclean = check(events, Observed(4, 3, {**sound, "unclean.leader.election.enable": "true"}))
    assert [(f.setting, f.level) for f in unclean] == [("unclean.leader.election.enable", "error")]
    # One broker: nothing to elect from, no durability settings to ask for.
    single = next(s for s in topic_specs(load_config(None, {})) if s.name == "usage.events")
    assert "min.insync.replicas" not in single.created_with
