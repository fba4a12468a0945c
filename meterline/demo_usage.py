"""The demo's month of usage, through both doors a product service has: the producer SDK to Kafka
for the first four fifths of the records, and `meterline ingest` (CloudEvents over HTTP, batches
of 100) for the valid events of the last fifth, as a service that does not speak Kafka sends them.

The split is by position in the stream, not by customer: a customer's records reach its partition
in the generator's order either way (the SDK is flushed before the first post, and a post is
answered only once the broker has its events), so lateness and dedup see what one producer would
have sent. Records HTTP cannot carry (the workload's deliberately broken ones) stay on Kafka,
where the stream dead-letters them with their reason; the ingest refuses such events at the door,
which the demo shows on two events of its own that are not part of the workload.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meterline import devstack
from meterline.core.config import Config
from meterline.core.dimensions import declared_of
from meterline.produce import make_producer, send
from meterline.schemas.cloudevents import BATCH, from_usage_event
from meterline.schemas.ingest import key_digest
from meterline.schemas.records import UsageEvent
from meterline.workload import Expected, WorkloadSpec, customer_ids, generate

HTTP_SHARE = 0.2
HTTP_BATCH = 100


@dataclass(frozen=True)
class Produced:
    sdk_records: int
    sdk_messages: int
    http_events: int
    http_requests: int
    seconds: float


@dataclass(frozen=True)
class Ingest:
    """`meterline ingest` started for the demo, with a key of its own."""

    process: subprocess.Popen[bytes]
    url: str
    key: str

    def post(self, documents: list[dict[str, Any]]) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url,
            json.dumps(documents).encode(),
            {"Content-Type": BATCH, "Authorization": f"Bearer {self.key}"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return dict(json.loads(answer.read()))
        except urllib.error.HTTPError as refused:
            raise RuntimeError(
                f"`meterline ingest` answered {refused.code}: {refused.read()!r:.300}"
            ) from None


def start_ingest(config: Config, config_path: Path | None) -> Ingest:
    key = secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "METERLINE__INGEST__KEYS__DEMO": key_digest(key),
        "METERLINE__INGEST__REQUESTS_PER_SECOND": "1000",
    }
    log_path = config.dev.state_dir / "ingest-demo.log"
    config_args = ["--config", str(config_path)] if config_path else []
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "meterline.cli", *config_args, "ingest"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 60
    while (listening := _listening_url(log_path)) is None:  # its port may be 0: read the one it took
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"`meterline ingest` did not come up: see {log_path}")
        time.sleep(0.2)
    return Ingest(process, listening, key)


def _listening_url(log_path: Path) -> str | None:
    found = re.search(rb"listening on (http://\S+)", log_path.read_bytes())
    return found[1].decode() if found else None


def produce(
    config: Config, ingest: Ingest, spec: WorkloadSpec, progress: Callable[[int, float], None]
) -> tuple[Produced, Expected]:
    """Every record of the workload, through the SDK or over HTTP; (what went where, the
    generator's exact expectation)."""
    expected = Expected(config.windows.size_ms)
    producer = make_producer(config, devstack.kafka_brokers(config))
    first_posted = int(spec.events * (1 - HTTP_SHARE))
    pending: list[UsageEvent] = []
    sent = posted = requests = 0
    started = time.perf_counter()
    try:
        emissions = generate(spec, config.meters, config.windows.size_ms, expected)
        for n, emission in enumerate(emissions):
            if n >= first_posted and emission.event is not None and emission.valid:
                if not pending and not posted:
                    producer.flush()  # what came before is on the broker before the first post
                pending.append(emission.event)
                if len(pending) == HTTP_BATCH:
                    posted, requests = posted + _post(ingest, pending), requests + 1
                    pending = []
            else:
                send(producer, emission)
                sent += 1
            if n % 10_000 == 0 and n:
                progress(n, time.perf_counter() - started)
        if pending:
            posted, requests = posted + _post(ingest, pending), requests + 1
    finally:
        producer.close()
    seconds = time.perf_counter() - started
    return Produced(sent, producer.messages_sent, posted, requests, seconds), expected


def _post(ingest: Ingest, events: list[UsageEvent]) -> int:
    answer = ingest.post([from_usage_event(event) for event in events])
    if answer["accepted"] != len(events):
        raise RuntimeError(f"`meterline ingest` did not accept every event: {answer['results'][:3]}")
    return len(events)


def refusals(config: Config, ingest: Ingest, spec: WorkloadSpec) -> list[dict[str, Any]]:
    """Two events that break the rules, not part of the workload: each answered with its reason."""
    customer, meter = customer_ids(spec)[0], min(declared_of(config.meters).values(), key=lambda m: m.name)
    broken = [
        UsageEvent(
            "demo-refused-1", customer, meter.name, 1, meter.unit + "s_typo", spec.start_ms, "demo", {}
        ),
        UsageEvent("demo-refused-2", customer, "no_such_meter", 1, meter.unit, spec.start_ms, "demo", {}),
    ]
    answer = ingest.post([from_usage_event(event) for event in broken])
    return [dict(result) for result in answer["results"]]


def stop_ingest(ingest: Ingest) -> None:
    ingest.process.terminate()
    ingest.process.wait(timeout=60)
