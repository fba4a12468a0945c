"""The ClickHouse sink SIGKILLed mid-run and its target unavailable: rows delayed, never lost nor
doubled."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meterline.core.config import Config
from meterline.core.kafka import read_ends
from meterline.produce import produce_workload
from tests.support.clickhouse_sink import assert_exact, run_pipeline
from tests.support.pipeline import PacedProducer, SinkProcess, Workers, wait_until_exact, workload


def test_sigkill_the_sink_three_times_mid_run_changes_no_total(
    config: Config, workers: Workers, sink: SinkProcess, clickhouse_dsn: str
) -> None:
    rng = random.Random()
    workers.start("w1")
    sink.start()
    producing = PacedProducer(config, workload(100_000, seed=22), seconds=25)
    producing.start()
    workers.wait_processing("w1")
    for _ in range(3):
        time.sleep(rng.uniform(2, 7))
        sink.kill()
        sink.start()
    document = producing.finish()
    dead = sum(wait_until_exact(config, document, workers, timeout=240).dlq_found.values())
    workers.stop_all()
    sink.wait_caught_up(config.kafka.bootstrap, read_ends(config.kafka.bootstrap, config.topics.all()))
    sink.stop()
    assert_exact(config, clickhouse_dsn, producing.expected, dead)


def test_an_unavailable_target_delays_rows_but_loses_and_doubles_none(
    config: Config, workers: Workers, sink: SinkProcess, clickhouse_dsn: str, tmp_path: Path
) -> None:
    if not clickhouse_dsn.startswith("chdb://"):
        pytest.skip("made unavailable by holding the embedded engine's directory")
    spec = workload(20_000, seed=23)
    _, expected = produce_workload(config, config.kafka.bootstrap, spec)
    dead = run_pipeline(config, workers, expected.to_json(spec))
    # Another process holds the directory: the sink's inserts fail until it lets go.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import clickhouse_connect, sys, time; c = clickhouse_connect.get_client(dsn=sys.argv[1]); "
            "c.query('SELECT 1'); print('holding', flush=True); time.sleep(float(sys.argv[2]))",
            clickhouse_dsn,
            "8",
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
    sink.start()
    assert holder.wait(timeout=60) == 0
    sink.wait_caught_up(config.kafka.bootstrap, read_ends(config.kafka.bootstrap, config.topics.all()))
    sink.stop()
    assert "held by process" in sink.logs() and "retrying the insert" in sink.logs()
    assert_exact(config, clickhouse_dsn, expected, dead)


def test_a_member_joining_mid_insert_and_the_first_killed_changes_no_total(
    config: Config, workers: Workers, sink: SinkProcess, clickhouse_dsn: str, tmp_path: Path
) -> None:
    """A rebalance while an insert is in flight: the first member finishes and commits the flush of a
    partition it gives up, drops that partition's buffer, and goes on with the rest; then it is
    SIGKILLed mid-run and the second member takes every partition. On the embedded engine the second
    cannot insert while the first holds the directory, so its partitions wait, paused, through the
    rebalance that follows the kill."""
    rng = random.Random()
    workers.start("w1")
    sink.start()
    producing = PacedProducer(config, workload(60_000, seed=24), seconds=20)
    producing.start()
    workers.wait_processing("w1")
    time.sleep(rng.uniform(1, 4))
    (tmp_path / "second").mkdir()
    second = SinkProcess("clickhouse", sink.env, tmp_path / "second", stop_timeout=60, catch_up_timeout=180)
    second.group = sink.group
    second.start()
    try:
        time.sleep(rng.uniform(5, 9))  # the join takes half the session timeout on tansu (DESIGN §7)
        sink.kill()
        document = producing.finish()
        dead = sum(wait_until_exact(config, document, workers, timeout=240).dlq_found.values())
        workers.stop_all()
        second.wait_caught_up(config.kafka.bootstrap, read_ends(config.kafka.bootstrap, config.topics.all()))
        second.stop()
    finally:
        if second.process is not None and second.process.poll() is None:
            second.process.kill()
    assert "sink clickhouse: revoked" in sink.logs(), "the second member's join revoked nothing"
    assert_exact(config, clickhouse_dsn, producing.expected, dead)
