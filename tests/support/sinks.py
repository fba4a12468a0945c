"""A sink run in this process until its group has committed what it was given."""

from __future__ import annotations

import threading
import time

from meterline.core.kafka import committed_reaches
from meterline.sinks.clickhouse.sink import ClickHouseSink
from meterline.sinks.stripe.sink import StripeSink


def run_sink(sink: ClickHouseSink | StripeSink, bootstrap: str, ends: dict[tuple[str, int], int]) -> None:
    stopping = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stopping.is_set,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not committed_reaches(bootstrap, sink.group_id, ends):
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.3)
    stopping.set()
    thread.join(timeout=60)
