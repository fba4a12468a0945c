"""`meterline generate`: reproducible, and its expected outcome is exactly what reaches the topic."""

from __future__ import annotations

import json
import time
from bisect import bisect_right
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from meterline.config import load_config
from meterline.core.config import Config
from meterline.inspect import summarize_events_topic
from meterline.produce import produce_workload
from meterline.schemas.partitioner import partition_for
from meterline.schemas.serde import AvroSerde
from meterline.schemas.validation import check_event
from meterline.streams.windows import DAY_MS
from meterline.workload import Emission, Expected, WorkloadSpec, generate
from tests.support.apache_kafka import on_apache_kafka  # noqa: F401  (this module runs on Apache Kafka)
from tests.support.cli import meterline
from tests.support.kafka import read_messages

START = (int(time.time() * 1000) - 2 * DAY_MS) // 60_000 * 60_000
SPEC = WorkloadSpec(
    seed=7,
    events=20_000,
    customers=6,
    start_ms=START,
    span_ms=DAY_MS,
    duplicate_rate=0.03,
    out_of_order_rate=0.05,
    late_rate=0.02,
    malformed_rate=0.02,
)


def run(spec: WorkloadSpec, config: Config) -> tuple[list[Emission], Expected]:
    expected = Expected(config.windows.size_ms)
    return list(generate(spec, config.meters, config.windows.size_ms, expected)), expected


def test_the_same_spec_yields_the_same_records_and_totals() -> None:
    config = load_config(None, {})
    first, first_expected = run(SPEC, config)
    second, second_expected = run(SPEC, config)
    assert first == second
    assert first_expected.to_json(SPEC) == second_expected.to_json(SPEC)
    other, _ = run(WorkloadSpec(**{**SPEC.__dict__, "seed": 8}), config)
    assert other != first


def test_expected_totals_recount_from_the_records() -> None:
    """An independent recount: first occurrence of each valid event_id, billable ones only."""
    config = load_config(None, {})
    emissions, expected = run(SPEC, config)
    counted: set[str] = set()
    seen_users: set[tuple[str, int, str]] = set()
    totals: Counter[tuple[str, str, int]] = Counter()
    levels: dict[str, list[tuple[int, str, int]]] = {}
    rejected = 0
    for emission in emissions:
        event = emission.event
        if event is None or check_event(event, config.meter_units) or not emission.valid:
            rejected += 1
            continue
        if event.event_id in counted:
            continue
        counted.add(event.event_id)
        # The default config's only billable rule: api_calls count 2xx responses only.
        if event.meter != "api_calls" or event.attributes["status"].startswith("2"):
            # The default config's meter priced per model: each model a meter of its own.
            meter = f"tokens.{event.attributes['model']}" if event.meter == "tokens" else event.meter
            window = (event.customer_id, meter, event.timestamp // 60_000 * 60_000)
            if event.meter == "storage":  # GB held, from each event to the next: accrued below
                levels.setdefault(event.customer_id, []).append(
                    (event.timestamp, event.event_id, event.quantity)
                )
            elif event.meter == "seats":  # the default config's peak meter: a window's highest seat count
                totals[window] = max(totals[window], event.quantity)
            elif event.meter == "active_users":  # a user counts in the window it is first seen in its month
                month = datetime.fromtimestamp(event.timestamp / 1000, UTC).replace(
                    day=1, hour=0, minute=0, second=0, microsecond=0
                )
                sighting = (event.customer_id, int(month.timestamp() * 1000), event.attributes["user"])
                totals[window] += sighting not in seen_users
                seen_users.add(sighting)
            else:
                totals[window] += event.quantity
    # Storage: each second of an hour adds the level of the latest event stamped before it ends.
    for customer, changes in levels.items():
        changes.sort()
        stamps = [t for t, _, _ in changes]
        first = changes[0][0] // 1000 * 1000
        for second in range(first, changes[-1][0] + 1, 1000):
            latest = bisect_right(stamps, second + 999) - 1
            totals[(customer, "storage", second // 3_600_000 * 3_600_000)] += changes[latest][2]
    assert totals == Counter({k: v[0] for k, v in expected.totals.items()})
    assert sum(v for (_, m, _), v in totals.items() if m == "storage") > 0
    assert (
        0
        < sum(v for (_, m, _), v in totals.items() if m == "active_users")
        < len([k for k in totals if k[1] == "active_users"])
    )  # users come again: fewer first sightings than windows
    assert rejected == sum(expected.rejected.values())
    assert abs(rejected - 0.02 * 20_000) < 80  # the malformed rate, give or take chance
    assert set(expected.rejected) == {
        "malformed",
        "unknown_schema",
        "missing_field",
        "negative_quantity",
        "unknown_meter",
        "unit_mismatch",
        "too_late",
        "too_far_future",
        "unknown_dimension_value",  # a model tokens are not priced by (a meter with dimensions)
    }
    assert expected.produced == 20_000 and expected.duplicates > 0 and expected.late > 0


def _partition(emission: Emission, partitions: int) -> int:
    key = emission.event.customer_id.encode() if emission.event is not None else emission.key
    return partition_for(key, partitions)


def test_workers_splitting_the_partitions_produce_exactly_what_one_generator_would() -> None:
    config = load_config(None, {})
    whole, whole_expected = run(SPEC, config)
    merged = Expected(config.windows.size_ms)
    per_partition: dict[int, list[Emission]] = {}
    for share in range(3):
        expected = Expected(config.windows.size_ms)
        emissions = list(
            generate(
                SPEC,
                config.meters,
                config.windows.size_ms,
                expected,
                lambda customer, share=share: partition_for(customer.encode(), 4) % 3 == share,
            )
        )
        assert {_partition(e, 4) % 3 for e in emissions} <= {share}
        for emission in emissions:
            per_partition.setdefault(_partition(emission, 4), []).append(emission)
        merged.add(expected)
    for partition, emissions in per_partition.items():
        assert emissions == [e for e in whole if _partition(e, 4) == partition]
    assert sum(map(len, per_partition.values())) == len(whole)
    assert merged.to_json(SPEC) == whole_expected.to_json(SPEC)


def test_what_reaches_the_topic_is_exactly_the_expected_outcome(config: Config) -> None:
    result, expected = produce_workload(config, config.kafka.bootstrap, SPEC, workers=2)
    assert result.records == 20_000 and result.packed and result.messages < 2_000
    summary = summarize_events_topic(
        config, config.kafka.bootstrap, AvroSerde(), expect_messages=result.messages
    )
    wanted = expected.to_json(SPEC)
    assert summary.messages == result.messages
    assert summary.records == wanted["records"]["produced"] == 20_000
    assert dict(summary.rejected) == wanted["records"]["rejected"]
    assert summary.duplicates == wanted["records"]["duplicates"]
    assert summary.non_billable == wanted["records"]["non_billable"]
    assert {(t["customer_id"], t["meter"]): t["value"] for t in wanted["totals_by_customer_meter"]} == dict(
        summary.billable_totals
    )


def test_generate_and_emit_commands(config: Config, tmp_path: Path) -> None:
    env = {
        "KAFKA_BOOTSTRAP": config.kafka.bootstrap,
        **{f"METERLINE__TOPICS__{k.upper()}": v for k, v in config.topics.__dict__.items()},
    }
    out = tmp_path / "expected.json"
    result = meterline(
        "generate",
        "--events",
        "5000",
        "--customers",
        "3",
        "--seed",
        "3",
        "--single",
        "--malformed",
        "0.01",
        "--expected",
        str(out),
        "--json",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["result"]["records"] == 5000 and report["result"]["messages"] == 5000
    document = json.loads(out.read_text())
    assert document["records"]["produced"] == 5000
    windows: dict[tuple[str, str], list[int]] = {}
    for t in document["totals"]:
        windows.setdefault((t["customer_id"], t["meter"]), []).append(t["value"])
    # Over the span: a peak meter's highest window (seats), every other meter's windows summed.
    assert {(t["customer_id"], t["meter"]): t["value"] for t in document["totals_by_customer_meter"]} == {
        pair: max(values) if pair[1] == "seats" else sum(values) for pair, values in windows.items()
    }

    emitted = meterline(
        "emit",
        "--customer",
        "cust-9",
        "--meter",
        "api_calls",
        "--quantity",
        "42",
        "--attr",
        "status=200",
        "--event-id",
        "cli-1",
        "--json",
        env=env,
    )
    assert emitted.returncode == 0, emitted.stderr
    where = json.loads(emitted.stdout)
    messages = read_messages(config.kafka.bootstrap, config.topics.events, 5001)
    [message] = [m for m in messages if m.partition() == where["partition"] and m.offset() == where["offset"]]
    [event] = AvroSerde().decode_usage(message.value()).events
    assert (event.event_id, event.customer_id, event.quantity, event.unit, event.attributes) == (
        "cli-1",
        "cust-9",
        42,
        "call",
        {"status": "200"},
    )

    refused = meterline("emit", "--customer", "c", "--meter", "api_calls", "--quantity", "-3", env=env)
    assert refused.returncode == 1
    assert "negative_quantity: quantity=-3" in refused.stderr
