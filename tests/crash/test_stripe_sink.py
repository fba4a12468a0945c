"""The Stripe sink through Stripe's faults (429s, 500s, timeouts, lost answers) and SIGKILLs: every
total exact, no identifier reported twice."""

from __future__ import annotations

import random
import time

from meterline.core.config import Config
from meterline.core.kafka import read_ends
from meterline.sinks.stripe.fake import FakeStripe, Faults
from meterline.workload import customer_ids
from tests.support.pipeline import SinkProcess, Workers, small_workload
from tests.support.stripe import (
    set_up_stripe,
)
from tests.support.stripe_sink import (
    assert_reported_exactly,
    stream_aggregates,
)


def test_faults_and_sigkills_change_no_total_and_report_no_identifier_twice(
    config: Config,
    workers: Workers,
    stripe_fake: tuple[FakeStripe, str],
    stripe_sink: SinkProcess,
    ledger_dsn: str,
) -> None:
    fake, base = stripe_fake
    spec = small_workload(seed=32)
    meters = set_up_stripe(config, base, customer_ids(spec))
    expected = stream_aggregates(config, workers, spec)
    # 10% 500s, 5% 500s after the work was done (saved under the key, as Stripe saves them), 5%
    # answers dropped after the work was done, 5% answers later than the sink's 1 s timeout, and a
    # rate limit below the sink's own: 429 bursts.
    fake.faults = Faults(
        rate_limit_per_second=150,
        error_rate=0.1,
        execution_error_rate=0.05,
        drop_rate=0.05,
        slow_rate=0.05,
        slow_seconds=1.5,
    )
    rng = random.Random()
    stripe_sink.start()
    for _ in range(3):
        time.sleep(rng.uniform(1.5, 5))
        stripe_sink.kill()
        stripe_sink.start()
    stripe_sink.wait_caught_up(
        config.kafka.bootstrap, read_ends(config.kafka.bootstrap, [config.topics.aggregates])
    )
    stripe_sink.stop()
    fake.faults = Faults()
    assert "retry" in stripe_sink.logs()  # the faults were met
    assert_reported_exactly(config, fake, base, meters, spec, expected, ledger_dsn)
