"""`meterline ingest` as a process of its own, and the requests a product service sends it."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meterline.schemas.cloudevents import BATCH
from meterline.schemas.ingest import key_digest
from tests.support.pipeline import free_port, start_meterline

KEY = "ml_test_key_7c2f90"
# The start of the hour an hour ago: what the door accepts today (within the lateness horizon,
# not ahead of the clock), so the events do not age out of the tests.
HOUR_AGO_MS = int((time.time() // 3600 - 1) * 3_600_000)
HOUR_AGO = datetime.fromtimestamp(HOUR_AGO_MS / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cloud_event(n: int, **data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"evt-{n}",
        "source": "//billing-svc",
        "type": "com.acme.usage.api_calls",
        "subject": f"cust-{n % 3}",
        "time": HOUR_AGO,
        "data": {"quantity": n, "attributes": {"status": "200"}, **data},
    }


def post(url: str, body: Any, content_type: str = BATCH, key: str = KEY) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, dict(answer.headers), json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, dict(refused.headers), json.loads(refused.read())


def start_ingest(
    bootstrap: str, topic: str, tmp_path: Path, name: str, rate: str = "1000", port: int | None = None
) -> tuple[Any, str]:
    """`meterline ingest` with one source's key, listening; returns it and its events URL."""
    port = port or free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": bootstrap,
        "METERLINE__DEV__STATE_DIR": str(tmp_path),
        "METERLINE__TOPICS__EVENTS": topic,
        "METERLINE__INGEST__KEYS__BILLING_SVC": key_digest(KEY),
        "METERLINE__INGEST__REQUESTS_PER_SECOND": rate,
    }
    log = tmp_path / f"{name}.log"
    process = start_meterline(["ingest", "--port", str(port)], env, log)
    deadline = time.monotonic() + 60
    while b"listening on" not in log.read_bytes():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    return process, f"http://127.0.0.1:{port}/v1/events"


def stop(process: Any) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
