"""`meterline ingest` SIGKILLed three times while a product service posts batches, retrying what
was not answered: every event answered accepted is on usage.events, and every batch was accepted
in the end."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

from meterline.core.config import Config
from meterline.schemas.serde import AvroSerde
from tests.support.ingest import cloud_event, post, start_ingest, stop
from tests.support.kafka import read_messages
from tests.support.pipeline import free_port

BATCHES, PER_BATCH = 60, 100


class Service:
    """A product service: batch after batch, each sent again until it is answered 200."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.acknowledged: set[str] = set()
        self.retries = 0
        self.thread = threading.Thread(target=self._send_all, daemon=True)

    def _send_all(self) -> None:
        for b in range(BATCHES):
            batch = [cloud_event(b * PER_BATCH + n) for n in range(PER_BATCH)]
            while True:
                try:
                    status, _, answer = post(self.url, batch)
                except OSError:  # the role is down: connection refused or reset
                    status, answer = 0, {}
                if status == 200:
                    self.acknowledged.update(r["id"] for r in answer["results"] if r["status"] == "accepted")
                    break
                self.retries += 1
                time.sleep(0.2)
            time.sleep(0.05)


def test_a_sigkilled_ingest_loses_nothing_it_acknowledged(config: Config, tmp_path: Path) -> None:
    rng = random.Random()
    port = free_port()
    process, url = start_ingest(config.kafka.bootstrap, config.topics.events, tmp_path, "ingest-0", port=port)
    service = Service(url)
    service.thread.start()
    for n in range(1, 4):
        time.sleep(rng.uniform(1.0, 3.0))
        process.kill()
        process.wait(timeout=30)
        process, _ = start_ingest(
            config.kafka.bootstrap, config.topics.events, tmp_path, f"ingest-{n}", port=port
        )
    service.thread.join(timeout=240)
    assert not service.thread.is_alive()
    stop(process)

    serde = AvroSerde()
    on_topic = {
        event.event_id
        for message in read_messages(config.kafka.bootstrap, config.topics.events, 1)
        for event in serde.decode_usage(message.value() or b"").events
    }
    assert service.acknowledged <= on_topic  # nothing acknowledged is lost
    assert service.acknowledged == {f"evt-{n}" for n in range(BATCHES * PER_BATCH)}  # every batch, in the end
    assert service.retries > 0  # the kills landed while it was sending
