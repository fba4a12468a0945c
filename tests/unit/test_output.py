"""streams.output: a write the broker never takes stops the worker before Faust can commit past it."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_an_undelivered_write_stops_the_worker_at_the_next_flush() -> None:
    """Output.flush runs before every commit (streams.app): if a send since the last flush failed,
    the worker exits 71 there, and the records that caused it are processed again on restart. The
    failure reaches it through the delivery callback the producer is configured with. No broker
    listens on port 1, so the write times out after message.timeout.ms."""
    script = textwrap.dedent(
        """
        import logging
        from meterline.core.kafka import Brokers
        from meterline.streams.output import Output

        logging.basicConfig(level=logging.CRITICAL)
        output = Output(Brokers("127.0.0.1:1", {"message.timeout.ms": "300"}))
        output.send("usage.aggregates", b"cus_1", b"an aggregate")
        output.flush()
        print("flushed")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 71, done.stderr
    assert "flushed" not in done.stdout
    assert "a write was not delivered: usage.aggregates[" in done.stderr
    assert "Message timed out" in done.stderr
