"""`meterline stream` against the broker: exact totals and an exact DLQ, through SIGKILLs and a rebalance.

Each worker is a real `meterline stream` process (Faust at_least_once, memory store recovered
from the changelog). The outcome is read back from usage.aggregates and usage.events.dlq and
compared with the expected totals of the workload, exactly.
"""

from __future__ import annotations

import dataclasses
import random
import time

from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from meterline.core.config import Config
from meterline.core.kafka import admin
from meterline.produce import produce_workload
from meterline.schemas.serde import AvroSerde
from tests.support.kafka import committed_behind, compacted_away, read_messages
from tests.support.pipeline import PacedProducer, Workers, wait_until_exact, workload


def test_a_workload_with_every_kind_of_trouble_comes_out_exact(config: Config, workers: Workers) -> None:
    """Run the way Faust users run an app, `faust -A meterline.run worker -l info` (the module's
    `app`, built from the configuration); the other tests run `meterline stream`."""
    spec = workload(30_000, seed=11)
    _, expected = produce_workload(config, config.kafka.bootstrap, spec)
    document = expected.to_json(spec)
    workers.start_faust("w1")
    result = wait_until_exact(config, document, workers, timeout=120)
    assert result.windows_matching == result.windows_expected > 1_000
    assert sum(result.dlq_found.values()) == sum(document["records"]["rejected"].values()) > 0
    assert document["records"]["accepted"] + sum(result.dlq_found.values()) == 30_000

    dead = read_messages(config.kafka.bootstrap, config.topics.events_dlq, sum(result.dlq_found.values()))
    headers = [dict(m.headers() or []) for m in dead]
    assert all(h["source.topic"] == config.topics.events.encode() and h["error.detail"] for h in headers)
    malformed = [m for m, h in zip(dead, headers, strict=True) if h["error.code"] == b"malformed"]
    assert malformed and all(m.value() == b'{"event_id": "json-instead-of-avro"}' for m in malformed)
    # A bad event of a good batch is dead-lettered alone, with its place in the batch.
    alone = [m for m, h in zip(dead, headers, strict=True) if "source.index" in h]
    assert alone and all(len(AvroSerde().decode_usage(m.value()).events) == 1 for m in alone)


def test_sigkill_three_times_mid_run_changes_no_total(config: Config, workers: Workers) -> None:
    rng = random.Random()
    workers.start("w1")
    producing = PacedProducer(config, workload(200_000, seed=12), seconds=30)
    producing.start()
    workers.wait_processing("w1")
    for _ in range(3):
        time.sleep(rng.uniform(2, 8))
        workers.kill("w1")
        workers.start("w1")
    wait_until_exact(config, producing.finish(), workers, timeout=240)


def test_a_worker_recovering_from_a_changelog_the_broker_compacted_stays_exact(
    config: Config, workers: Workers
) -> None:
    """Apache Kafka's log cleaner compacts the state changelog for real while the workload runs (it
    rolls a segment every 100 ms and cleans whatever is dirty): a worker SIGKILLed after that
    recovers from what compaction kept, each window's and each event id's latest record, and takes
    the rest of the workload (late events and duplicates of compacted windows among it) exactly."""
    state = f"{workers.env['METERLINE__STREAM__APP_ID']}-state"
    compacting = {
        "cleanup.policy": "compact",
        "segment.ms": "100",
        "min.cleanable.dirty.ratio": "0.01",
        "min.compaction.lag.ms": "0",
    }
    client = admin(config.kafka.bootstrap)
    [created] = client.create_topics([NewTopic(state, 4, 1, config=compacting)]).values()
    created.result(timeout=30)
    workers.start("w1")
    producing = PacedProducer(config, workload(200_000, seed=15), seconds=40)
    producing.start()
    workers.wait_processing("w1")
    deadline = time.monotonic() + 60
    while (removed := compacted_away(config.kafka.bootstrap, state)) == 0:
        assert time.monotonic() < deadline and producing.is_alive(), "the changelog was not compacted"
        time.sleep(1)
    workers.kill("w1")
    workers.start("w1")  # a memory store: everything it knows comes from the compacted changelog
    wait_until_exact(config, producing.finish(), workers, timeout=240)
    assert removed > 0


def test_a_rebalance_after_one_of_two_workers_is_killed_changes_no_total(
    config: Config, workers: Workers
) -> None:
    workers.start("w1")
    workers.start("w2")
    producing = PacedProducer(config, workload(200_000, seed=13), seconds=30)
    producing.start()
    # Killed only once it processes: a member that dies before its first join completes can
    # leave a tansu group stuck (DESIGN §7), which is the broker's limit, not the one tested here.
    workers.wait_processing("w2")
    time.sleep(random.uniform(2, 10))
    workers.kill("w2")  # w1 takes over w2's partitions and recovers their state from the changelog
    wait_until_exact(config, producing.finish(), workers, timeout=240)


def test_single_event_records_stay_exact_when_killed_mid_batch_and_rebalanced(
    config: Config, workers: Workers
) -> None:
    """Single-event messages (what producers other than meterline's SDK send) reach the agent a
    fetched batch of a partition at a time (streams.batches). A worker killed while it works through
    a backlog dies inside a batch, its partitions go to the other mid-way, and a second kill does it
    again: totals stay exact, and the group's commits reach the end of every partition, because a
    batch message commits past its last record through Faust's offset gaps."""
    rng = random.Random()
    workers.start("w1")
    workers.start("w2")
    producing = PacedProducer(config, workload(40_000, seed=14), seconds=20, packing=False)
    producing.start()
    # w1 restarted alone is behind by everything since its last commit: whole batches to do
    _kill_one_then_the_other(workers, rng)
    wait_until_exact(config, producing.finish(), workers, timeout=240)

    group, topic = workers.env["METERLINE__STREAM__APP_ID"], config.topics.events
    deadline = time.monotonic() + 60
    while any(committed_behind(config.kafka.bootstrap, group, topic, config.kafka.partitions).values()):
        assert time.monotonic() < deadline, "the commits never reached the end of the topic"
        time.sleep(1)
    logs = "\n".join(log.read_text(errors="replace") for log in workers.tmp_path.glob("*.log"))
    counters = [line for line in logs.splitlines() if "counters {" in line]
    batches_of_many = [line for line in counters if _counter(line, "records") > _counter(line, "batches") > 0]
    assert batches_of_many, "every batch held one record: the test did not exercise batches"


def test_a_latest_level_and_a_distinct_count_stay_exact_through_sigkills_and_a_rebalance(
    config: Config, workers: Workers
) -> None:
    """egress_bytes metered as a `last` meter here (a window holds its latest event's quantity, kept
    in the window's state), beside the default rate card's distinct count (active_users: first
    sightings in the state store), peak (seats), level held over time (storage: hours carried from
    one to the next) and tokens priced per model (a series each): a worker killed while its partner
    has its partitions, then the partner killed and restarted alone, and every window is exact."""
    last = dataclasses.replace(config.meters["egress_bytes"], aggregation="last")
    config = dataclasses.replace(config, meters={**config.meters, "egress_bytes": last})
    workers.env["METERLINE__METERS__EGRESS_BYTES__AGGREGATION"] = "last"
    rng = random.Random()
    workers.start("w1")
    workers.start("w2")
    producing = PacedProducer(config, workload(100_000, seed=15), seconds=25)
    producing.start()
    _kill_one_then_the_other(workers, rng)
    document = producing.finish()
    kinds = {
        "active_users",
        "egress_bytes",
        "seats",
        "storage",
        "tokens.small",
        "tokens.medium",
        "tokens.large",
    }
    assert kinds <= {t["meter"] for t in document["totals"]}
    wait_until_exact(config, document, workers, timeout=240)


def _kill_one_then_the_other(workers: Workers, rng: random.Random) -> None:
    """w2 killed while it processes (w1 takes its partitions over, their state from the changelog),
    then w1 killed and started again alone."""
    workers.wait_processing("w2")
    time.sleep(rng.uniform(2, 6))
    workers.kill("w2")
    time.sleep(rng.uniform(1, 4))
    workers.kill("w1")
    workers.start("w1")


def _counter(line: str, name: str) -> int:
    """A counter from the worker's `counters {...}` log line."""
    return int(line.split(f"'{name}': ")[1].split(",")[0])
