"""`meterline replay` on a real run (stream app, both sinks): zero difference over the whole range;
a corrupted ClickHouse window is found, `--repair` fixes it in ClickHouse and leaves Stripe exact,
and a second `--repair` changes nothing; a meter event Stripe refused after accepting it is found
by Stripe's own totals and repaired once."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from meterline.compose import clickhouse_sink, stripe_sink
from meterline.core.config import Config
from meterline.core.kafka import read_ends, settings
from meterline.produce import produce_workload
from meterline.reconciler.checks.rederive import rederive
from meterline.schemas.records import UsageEvent
from meterline.schemas.serde import AvroSerde
from meterline.sinks.clickhouse.client import connect
from meterline.sinks.clickhouse.rows import REVISION_COLUMNS
from meterline.sinks.stripe.fake import FakeStripe
from meterline.streams.windows import DAY_MS
from meterline.workload import customer_ids
from tests.support.apache_kafka import on_apache_kafka  # noqa: F401  (this module runs on Apache Kafka)
from tests.support.clickhouse_sink import fresh
from tests.support.pipeline import Workers, small_workload, wait_until_exact
from tests.support.sinks import run_sink
from tests.support.stripe import set_up_stripe


@dataclasses.dataclass(frozen=True)
class Replays:
    """Both sinks and `meterline replay --json` over one range, on one ClickHouse and the fake."""

    config: Config
    stripe_config: Config
    dsn: str
    env: dict[str, str]
    window: list[str]

    def sinks_catch_up(self) -> None:
        ends = read_ends(self.config.kafka.bootstrap, [self.config.topics.aggregates])
        run_sink(
            clickhouse_sink(
                self.config, self.config.kafka.bootstrap, dsn=self.dsn, group_id="test-replay-ch"
            ),
            self.config.kafka.bootstrap,
            ends,
        )
        run_sink(
            stripe_sink(
                self.stripe_config, self.config.kafka.bootstrap, dsn=self.dsn, group_id="test-replay-stripe"
            ),
            self.config.kafka.bootstrap,
            ends,
        )

    def replay(self, *extra: str) -> tuple[int, dict[str, Any]]:
        done = subprocess.run(
            [sys.executable, "-m", "meterline.cli", "replay", *self.window, "--json", *extra],
            env=self.env,
            capture_output=True,
            text=True,
        )
        assert done.stdout.startswith("{"), done.stderr
        return done.returncode, json.loads(done.stdout)

    def repair_converges(self) -> None:
        """One --repair emits one repair; once the sinks took it, a second changes nothing."""
        code, repaired = self.replay("--repair")
        assert code == 0 and repaired["repairs emitted"] == 1
        self.sinks_catch_up()
        code, after = self.replay("--repair")
        assert (code, after["ClickHouse differs"], after["Stripe differs"], after["repairs emitted"]) == (
            0,
            0,
            0,
            0,
        )


def _replays(config: Config, base: str, dsn: str, tmp_path: Path, starts: list[int]) -> Replays:
    stripe_config = dataclasses.replace(
        config,
        stripe=dataclasses.replace(config.stripe, api_base=base, requests_per_second=1000, concurrency=8),
    )
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": config.kafka.bootstrap,
        "CLICKHOUSE_DSN": dsn,
        "METERLINE__STRIPE__API_BASE": base,
        "METERLINE__STRIPE__SUMMARIES_SETTLE_SECONDS": "0",  # the fake aggregates synchronously
        "METERLINE__DEV__STATE_DIR": str(tmp_path),
        **{
            f"METERLINE__TOPICS__{f.name.upper()}": getattr(config.topics, f.name)
            for f in dataclasses.fields(config.topics)
        },
    }
    window = ["--from", str(min(starts)), "--to", str(max(starts) + 60_000)]
    return Replays(config, stripe_config, dsn, env, window)


def _corrupt(config: Config, dsn: str, key: tuple[str, str, int], value: int, count: int) -> None:
    """A revision of the window nobody emitted, with its total 1,000 too high."""
    customer, meter, start = key
    client = connect(config, dsn)
    try:
        [(partition, revision)] = client.query(
            "SELECT source_partition, revision FROM usage_windows FINAL WHERE customer_id = %(c)s "
            "AND meter = %(m)s AND window_start = fromUnixTimestamp64Milli(%(w)s, 'UTC')",
            parameters={"c": customer, "m": meter, "w": start},
        ).result_rows
        wrong = [
            customer,
            meter,
            start,
            start + 60_000,
            partition,
            revision + 1,
            value + 1000,
            1000,
            count,
            start,
        ]
        client.insert("usage_window_revisions", [wrong], column_names=list(REVISION_COLUMNS))
    finally:
        client.close()


def test_replay_finds_a_corrupted_window_and_repair_converges_both_sinks(
    config: Config, workers: Workers, stripe_fake: tuple[FakeStripe, str], tmp_path: Path
) -> None:
    fake, base = stripe_fake
    dsn = f"chdb://{tmp_path / 'clickhouse'}"
    fresh(config, dsn)
    spec = small_workload(seed=41, events=8_000)
    set_up_stripe(config, base, customer_ids(spec))
    _, expected = produce_workload(config, config.kafka.bootstrap, spec)
    workers.start("w1")
    wait_until_exact(config, expected.to_json(spec), workers, timeout=180)
    workers.stop_all()
    run = _replays(config, base, dsn, tmp_path, [start for _, _, start in expected.totals])
    run.sinks_catch_up()

    code, clean = run.replay()
    assert code == 0 and clean["ClickHouse differs"] == 0 and clean["Stripe differs"] == 0, clean
    # A time_weighted meter is not re-derived: its hours accrue levels set before what the topic keeps.
    assert list(clean["not_rederived"]) == ["storage"]
    rederived = {k: v for k, v in expected.totals.items() if k[1] != "storage"}
    assert clean["windows"] == len([v for v, _ in rederived.values() if v])
    assert clean["events"] >= spec.events * 0.9  # the workload's records, dead letters included

    key, (value, count) = sorted(rederived.items())[len(rederived) // 2]
    _corrupt(config, dsn, key, value, count)
    code, found = run.replay()
    assert code == 1 and found["ClickHouse differs"] == 1 and found["Stripe differs"] == 0
    [difference] = found["clickhouse"]
    assert (difference["customer"], difference["meter"], difference["difference"]) == (*key[:2], -1000)
    run.repair_converges()
    sent = sorted(e.identifier for e in fake.state.meter_events)
    assert len(sent) == len(set(sent))

    # Stripe refuses a meter event it had accepted (asynchronously, as it may: the error report
    # names samples only, and this one none), so the ledger still says sent. The repair compares
    # Stripe's own totals and sends what Stripe lacks, once (an API calls window: a meter whose range
    # total replay compares, where a level's is its month's and storage is not re-derived).
    [refused] = [e for e in fake.state.meter_events if e.value and e.event_name == "api_calls"][:1]
    fake.state.meter_events.remove(refused)
    code, short = run.replay()
    assert code == 1 and short["Stripe differs"] == 1 and short["ClickHouse differs"] == 0
    run.repair_converges()
    [resent] = [
        e
        for e in fake.state.meter_events
        if (e.customer, e.event_name, e.timestamp)
        == (refused.customer, refused.event_name, refused.timestamp)
        and e.identifier != refused.identifier
    ]
    assert resent.value == refused.value


def test_replaying_an_old_range_keeps_its_windows_while_the_topic_goes_on_for_months(config: Config) -> None:
    """On-call replays a month long past: the records after it move the watermark months on, past
    the point where the stream app forgets a window (the maximum lateness and a day). The range's
    totals are those the stream app emitted for it, not what is left in state at the end."""
    serde = AvroSerde()
    producer = Producer(settings(config.kafka.bootstrap, {"enable.idempotence": True}))
    now = int(time.time() * 1000)
    old = now - 90 * DAY_MS
    quantities = {"cust-a": (3, 4), "cust-b": (5,)}

    def send(customer: str, at: int, quantity: int, n: int) -> None:
        event = UsageEvent(f"{customer}-{at}-{n}", customer, "egress_bytes", quantity, "byte", at, "t", {})
        producer.produce(
            config.topics.events,
            serde.encode_batch([serde.batch_item(event)]),
            key=customer.encode(),
            timestamp=at + 1_000,
        )

    for customer, amounts in quantities.items():
        for n, quantity in enumerate(amounts):
            send(customer, old + 10_000, quantity, n)
        # Months later: the old window closes and, far past the maximum lateness, the stream app
        # forgets it, its ids with it.
        send(customer, now - 2 * 3_600_000, 1, 0)
        send(customer, now - 60_000, 1, 0)
    assert producer.flush(30) == 0

    rederived = rederive(config, config.kafka.bootstrap, old - DAY_MS, old + DAY_MS)
    start = old + 10_000 - (old + 10_000) % config.windows.size_ms
    assert rederived.windows() == {
        ("cust-a", "egress_bytes", start): 7,
        ("cust-b", "egress_bytes", start): 5,
    }


def test_a_repair_from_stripe_s_totals_is_stable_once_applied() -> None:
    """Pure: a window two partitions reported (10 and 5), of which Stripe holds only 5 (it refused
    partition 0's event after accepting it). The repair sends Stripe the 10 it lacks, on the lowest
    partition; once the sinks applied it, the same comparison repairs nothing."""
    from meterline.reconciler.checks.rederive import Rederived
    from meterline.reconciler.checks.replay import repairs

    window = ("cust-1", "api_calls", 1_793_491_200_000)
    rederived = Rederived(by_partition={(*window, 0): (10, 3), (*window, 1): (5, 2)})
    stored = {(*window, 0): (10, 0), (*window, 1): (5, 0)}
    reported = {(*window, 0): (10, 0, 0), (*window, 1): (5, 0, 0)}
    [fix] = repairs(rederived, stored, reported, 60_000, {window: 5})
    assert (fix.source_partition, fix.value, fix.delta, fix.revision) == (0, 10, 10, 1)
    applied = {**reported, (*window, 0): (10 + fix.delta, 1, 0)}
    assert repairs(rederived, {**stored, (*window, 0): (10, 1)}, applied, 60_000, {window: 15}) == []
    assert repairs(rederived, stored, reported, 60_000) == []  # the ledger alone sees nothing wrong


def test_a_peak_window_is_repaired_by_its_value_alone() -> None:
    """Pure: a `max` meter's ledger holds contributions to the month's peak (sinks.stripe.levels), not
    window values: a window stored right is not repaired whatever was sent for it, one stored wrong
    gets the revision that sets its value, and its partials make a window by their highest."""
    from meterline.reconciler.checks.rederive import Rederived
    from meterline.reconciler.checks.replay import clickhouse_differences, repairs

    window = ("cust-1", "seats", 1_793_491_200_000)
    rederived = Rederived(by_partition={(*window, 0): (12, 3), (*window, 1): (9, 1)}, levels={"seats": "max"})
    assert rederived.windows() == {window: 12}
    stored = {(*window, 0): (12, 0), (*window, 1): (9, 0)}
    contributed = {(*window, 0): (0, 0, 0), (*window, 1): (0, 0, 0)}  # an earlier window set the peak
    assert repairs(rederived, stored, contributed, 60_000) == []
    assert clickhouse_differences(rederived, stored) == []
    [fix] = repairs(rederived, {**stored, (*window, 0): (10, 0)}, contributed, 60_000)
    assert (fix.source_partition, fix.value, fix.delta, fix.revision) == (0, 12, 2, 1)
