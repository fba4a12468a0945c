"""`meterline run` SIGKILLed and restarted mid-workload: every window exact in ClickHouse and
every total exact in Stripe, and nothing it printed holds a secret."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meterline.core.config import Config
from meterline.sinks.stripe.fake import FakeStripe
from meterline.workload import customer_ids
from tests.support.pipeline import (
    PacedProducer,
    RunProcess,
    Workers,
    workload,
)
from tests.support.run import assert_no_secret_in, run_environment, wait_until_settled
from tests.support.stripe import set_up_stripe


@pytest.fixture
def run(workers: Workers, stripe_fake: tuple[FakeStripe, str], tmp_path: Path) -> Iterator[RunProcess]:
    """A `meterline run` for this test (not started), killed after it if still running."""
    process = RunProcess(run_environment(workers, stripe_fake[1]), tmp_path)
    yield process
    process.kill_if_running()


def test_run_survives_sigkills_with_every_total_exact(
    config: Config, stripe_fake: tuple[FakeStripe, str], run: RunProcess
) -> None:
    _, base = stripe_fake
    spec = workload(events=30_000, seed=71)
    meters = set_up_stripe(config, base, customer_ids(spec))
    run.start()
    run.url()
    producer = PacedProducer(config, spec, seconds=25)
    producer.start()
    rng = random.Random()
    for _ in range(3):
        time.sleep(rng.uniform(2, 8))  # anywhere: mid-batch, mid-insert, mid-Stripe-call
        run.kill()
        run.start()
    producer.finish()
    run.url(timeout=120)
    wait_until_settled(run, base, meters, spec, producer.expected, timeout=300)
    assert run.starts == 4
    assert run.stop() == 0, run.logs()
    assert not run.run_file.exists()  # a clean stop withdraws its address
    assert_no_secret_in(run.logs(whole=True))
