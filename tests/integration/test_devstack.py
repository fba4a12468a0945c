"""`meterline dev up | status | down`: idempotent, on 127.0.0.1, clear errors."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from meterline.core.kafka import broker_answers
from tests.support.cli import meterline


def test_up_status_down_are_idempotent(tmp_path: Path) -> None:
    env = {"METERLINE__DEV__STATE_DIR": str(tmp_path / "state")}
    status = meterline("dev", "status", "--json", env=env)
    assert status.returncode == 1
    assert [s["state"] for s in json.loads(status.stdout)] == ["stopped", "stopped", "stopped"]
    try:
        first = meterline("dev", "up", "--json", env=env)
        assert first.returncode == 0, first.stderr
        services = json.loads(first.stdout)
        assert services["kafka"]["address"].startswith("127.0.0.1:")
        assert services["stripe"]["address"].startswith("http://127.0.0.1:")
        assert services["clickhouse"]["address"] == f"chdb://{tmp_path / 'state' / 'clickhouse'}"
        assert broker_answers(services["kafka"]["address"])

        again = meterline("dev", "up", "--json", env=env)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout) == services  # same processes, nothing restarted

        status = meterline("dev", "status", "--json", env=env)
        assert status.returncode == 0, status.stdout
        rows = {s["name"]: s for s in json.loads(status.stdout)}
        assert {n: (r["state"], r["answers"]) for n, r in rows.items()} == {
            "kafka": ("running", True),
            "clickhouse": ("embedded", True),
            "stripe": ("running", True),
        }
        log = meterline("dev", "up", env=env).stderr
        assert "kafka already running" in log and "stripe fake already running" in log
        assert "topic usage.events: 4 partitions" in log and "(created)" not in log
    finally:
        down = meterline("dev", "down", env=env)
    assert down.returncode == 0 and "stopped kafka" in down.stderr
    assert not broker_answers(services["kafka"]["address"], timeout=1)
    again = meterline("dev", "down", env=env)
    assert again.returncode == 0 and "nothing to stop" in again.stderr
    assert meterline("dev", "status", env=env).returncode == 1


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {"METERLINE__DEV__STATE_DIR": str(tmp_path), "METERLINE__DEV__KAFKA_PORT": str(port)}
        result = meterline("dev", "up", env=env)
    assert result.returncode == 1
    assert f"dev.kafka_port = {port}: port {port} on 127.0.0.1 is taken" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_broker_binary_is_a_clear_error(tmp_path: Path) -> None:
    env = {"METERLINE__DEV__STATE_DIR": str(tmp_path), "CALF_TANSU_BIN": str(tmp_path / "no-tansu")}
    result = meterline("dev", "up", env=env)
    assert result.returncode == 1
    assert "the tansu broker binary is missing" in result.stderr and "no-tansu" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_external_kafka_is_used_instead_of_starting_one(kafka_bootstrap: str, tmp_path: Path) -> None:
    env = {"METERLINE__DEV__STATE_DIR": str(tmp_path), "KAFKA_BOOTSTRAP": kafka_bootstrap}
    try:
        result = meterline("dev", "up", "--json", env=env)
        assert result.returncode == 0, result.stderr
        kafka = json.loads(result.stdout)["kafka"]
        assert kafka == {"name": "kafka", "address": kafka_bootstrap, "pid": None, "log": None}
    finally:
        meterline("dev", "down", env=env)
    assert broker_answers(kafka_bootstrap)  # down left the external broker alone
