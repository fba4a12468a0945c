"""`meterline webhooks` as a process of its own, and the Stripe fake's test endpoints."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from meterline.core.config import Config
from meterline.devstack import FAKE_WEBHOOK_SECRET
from tests.support.pipeline import free_port, start_meterline


def post(base: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{base}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=20) as answer:
        result: dict[str, Any] = json.loads(answer.read())
    return result


def start_webhooks(
    config: Config, base: str, dsn: str, tmp_path: Path, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    """`meterline webhooks` on a free port, listening, with the fake's endpoint pointed at it."""
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": config.kafka.bootstrap,
        "CLICKHOUSE_DSN": dsn,
        "METERLINE__DEV__STATE_DIR": str(tmp_path),
        "METERLINE__STRIPE__API_BASE": base,
        "METERLINE__TOPICS__EVENTS": config.topics.events,
        "METERLINE__TOPICS__WEBHOOKS": config.topics.webhooks,
        "METERLINE__TOPICS__NOTICES": config.topics.notices,
        **(extra_env or {}),
    }
    log_path = tmp_path / "webhooks.log"
    process = start_meterline(["webhooks", "--port", str(port), "--group", "test-webhooks"], env, log_path)
    deadline = time.monotonic() + 60
    while b"listening on" not in log_path.read_bytes():
        assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.2)
    post(
        base,
        "/_fake/webhook_endpoint",
        {"url": f"http://127.0.0.1:{port}/webhooks/stripe", "secret": FAKE_WEBHOOK_SECRET},
    )
    return process, log_path
