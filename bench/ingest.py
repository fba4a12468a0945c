"""HTTP ingest throughput on the local stack: batches of 100 CloudEvents posted by concurrent
clients to `meterline ingest` (its own process), beside the SDK producing the same events
directly in the same session (the ratio is the figure; absolute rates on a shared machine are
noise), with the p50/p99 latency of one request under that load.

Run: .venv/bin/python bench/ingest.py [--events 200000] [--clients 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from meterline.core.config import Config
from meterline.core.kafka import ensure_topics
from meterline.produce import make_producer
from meterline.schemas.cloudevents import BATCH, from_usage_event
from meterline.schemas.ingest import key_digest
from meterline.schemas.records import UsageEvent
from meterline.streams.windows import DAY_MS
from meterline.workload import Expected, WorkloadSpec, generate

from harness import local_stack, report

KEY = "bench-key"
BATCH_SIZE = 100


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with local_stack("ingest") as (config, bootstrap, state, _):
        start = int(time.time() * 1000) - DAY_MS
        spec = WorkloadSpec(seed=1, events=args.events, customers=50, start_ms=start, span_ms=DAY_MS)
        events = [
            e.event for e in generate(spec, config.meters, 60_000, Expected(60_000)) if e.event and e.valid
        ]
        rows: list[dict[str, Any]] = []
        ensure_topics(bootstrap, ["bench.sdk", "bench.http"], config.kafka.partitions)
        sdk_config = dataclasses.replace(
            config, topics=dataclasses.replace(config.topics, events="bench.sdk")
        )
        rows.append(_sdk(sdk_config, bootstrap, events))
        rows.append(_http(bootstrap, state, events, args.clients))
    rows[1]["vs SDK"] = f"{rows[1]['events/s'] / rows[0]['events/s']:.2f}x"
    report(rows)


def _sdk(config: Config, bootstrap: str, events: list[UsageEvent]) -> dict[str, Any]:
    producer = make_producer(config, bootstrap)
    started = time.perf_counter()
    for event in events:
        producer.produce(event)
    producer.close()
    seconds = time.perf_counter() - started
    return {
        "what": "UsageProducer.produce (packed), the same events",
        "events": len(events),
        "events/s": round(len(events) / seconds),
        "p50 ms": "",
        "p99 ms": "",
    }


def _http(bootstrap: str, state: Path, events: list[UsageEvent], clients: int) -> dict[str, Any]:
    port = _free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": bootstrap,
        "METERLINE__DEV__STATE_DIR": str(state),
        "METERLINE__TOPICS__EVENTS": "bench.http",
        "METERLINE__INGEST__KEYS__BENCH": key_digest(KEY),
        "METERLINE__INGEST__REQUESTS_PER_SECOND": "1000000",
    }
    log = open(state / "ingest.log", "wb")  # noqa: SIM115 (open for the process's life)
    role = subprocess.Popen(
        [sys.executable, "-m", "meterline.cli", "ingest", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        _wait_listening(port)
        bodies = [
            json.dumps([from_usage_event(e) for e in events[i : i + BATCH_SIZE]]).encode()
            for i in range(0, len(events), BATCH_SIZE)
        ]
        latencies: list[float] = []
        lock = threading.Lock()
        shares = [bodies[n::clients] for n in range(clients)]

        def client(share: list[bytes]) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            headers = {"Content-Type": BATCH, "Authorization": f"Bearer {KEY}"}
            for body in share:
                sent = time.perf_counter()
                connection.request("POST", "/v1/events", body, headers)
                answer = connection.getresponse()
                answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"ingest answered {answer.status}")
                with lock:
                    latencies.append(time.perf_counter() - sent)

        threads = [threading.Thread(target=client, args=(share,)) for share in shares]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
    finally:
        role.terminate()
        role.wait(timeout=60)
        log.close()
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "what": f"meterline ingest, batches of {BATCH_SIZE}, {clients} clients",
        "events": len(events),
        "events/s": round(len(events) / seconds),
        "p50 ms": round(cuts[49] * 1000, 1),
        "p99 ms": round(cuts[98] * 1000, 1),
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/openapi.json")
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("meterline ingest did not listen")


if __name__ == "__main__":
    main()
