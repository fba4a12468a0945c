"""Running the pipeline's processes in tests: stream workers, a paced producer, and waiting for
the outputs to be exact."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from meterline.core.config import Config
from meterline.core.kafka import committed_reaches
from meterline.produce import make_producer, send
from meterline.schemas.serde import AvroSerde
from meterline.verify import Verification, read_emitted, verify
from meterline.workload import Expected, WorkloadSpec, generate

HOUR_MS = 3_600_000


def workload(
    events: int, seed: int, customers: int = 12, hours: int = 6, late_rate: float = 0.01
) -> WorkloadSpec:
    """The last `hours` of usage, ending a minute ago, with every kind of disorder mixed in."""
    now = int(time.time() * 1000)
    return WorkloadSpec(
        seed=seed,
        events=events,
        customers=customers,
        start_ms=now - hours * HOUR_MS,
        span_ms=hours * HOUR_MS - 60_000,
        duplicate_rate=0.03,
        out_of_order_rate=0.05,
        late_rate=late_rate,
        malformed_rate=0.01,
    )


def small_workload(seed: int, events: int = 6_000) -> WorkloadSpec:
    """Few windows (3 customers, 2 hours): a Stripe call each, at a test's pace."""
    return workload(events, seed, customers=3, hours=2, late_rate=0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_meterline(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`meterline <args>` in its own process, stdout and stderr into `log_path`."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "meterline.cli", *args], env=env, stdout=log, stderr=subprocess.STDOUT
        )


class Workers:
    """`meterline stream` processes of one consumer group, started and killed at will."""

    def __init__(self, config: Config, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": config.kafka.bootstrap,
            "SCHEMA_REGISTRY_URL": config.kafka.schema_registry_url,
            "METERLINE__DEV__STATE_DIR": str(tmp_path / "state"),
            "METERLINE__STREAM__APP_ID": f"test-stream-{uuid.uuid4().hex[:8]}",
            "METERLINE__STREAM__STORE": "memory://",
            "PYTHONUNBUFFERED": "1",  # the logs are read while the worker runs
            "METERLINE__WINDOWS__IDLE_TIMEOUT_SECONDS": "2",
            **{
                f"METERLINE__TOPICS__{f.name.upper()}": getattr(config.topics, f.name)
                for f in dataclasses.fields(config.topics)
            },
        }
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.log_of: dict[str, Path] = {}
        self.starts = 0

    def wait_processing(self, name: str, timeout: float = 60) -> None:
        """Until the worker has processed a record (its first record of a partition is logged)."""
        deadline = time.monotonic() + timeout
        while b"recovered" not in self.log_of[name].read_bytes():
            assert time.monotonic() < deadline, f"{name} processed nothing within {timeout}s:\n{self.logs()}"
            time.sleep(0.2)

    def start(self, name: str) -> None:
        self.starts += 1
        self.log_of[name] = self.tmp_path / f"{name}-{self.starts}.log"
        self.running[name] = start_meterline(
            ["stream", "--data-dir", str(self.tmp_path / name)], self.env, self.log_of[name]
        )

    def start_faust(self, name: str) -> None:
        """A worker started the Faust way, `faust -A meterline.run worker -l info`, its state under
        the default data dir of its app id."""
        self.starts += 1
        self.log_of[name] = self.tmp_path / f"{name}-{self.starts}.log"
        faust = str(Path(sys.executable).with_name("faust"))
        with open(self.log_of[name], "wb") as log:
            self.running[name] = subprocess.Popen(
                [faust, "-A", "meterline.run", "worker", "-l", "info"],
                env=self.env,
                cwd=self.tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self, name: str) -> None:
        process = self.running.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for process in self.running.values():
            process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.running.clear()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.tmp_path.glob("*.log")))


def counted_by_one_worker(
    config: Config, expected: dict, tmp_path: Path, timeout: float = 180
) -> Verification:
    """What is on usage.events, counted by one `meterline stream` worker started for it (stopped
    afterwards), once its outputs are exactly `expected` (Expected.to_json)."""
    workers = Workers(config, tmp_path)
    workers.start("w1")
    try:
        return wait_until_exact(config, expected, workers, timeout=timeout)
    finally:
        workers.stop_all()


def wait_until_exact(config: Config, expected: dict, workers: Workers, timeout: float) -> Verification:
    """Poll the outputs until they match, then check they stay so: a total that first matches
    and then moves on (a late double count) fails too."""
    deadline = time.monotonic() + timeout
    serde = AvroSerde.from_registry_url(config.kafka.schema_registry_url)
    result = verify(expected, read_emitted(config, config.kafka.bootstrap, serde, quiet_s=0.5))
    while not result.ok and time.monotonic() < deadline:
        time.sleep(2)
        result = verify(expected, read_emitted(config, config.kafka.bootstrap, serde, quiet_s=0.5))
    assert result.ok, (
        result.mismatches[:5],
        result.conflicts,
        result.revision_gaps,
        result.dlq_found,
        workers.logs(),
    )
    time.sleep(4)
    again = verify(expected, read_emitted(config, config.kafka.bootstrap, serde))
    assert again.ok and again == result, again.mismatches[:5]
    return result


class PacedProducer(threading.Thread):
    """Produces a workload over `seconds` while the test kills workers: every kill lands mid-run."""

    def __init__(
        self, config: Config, spec: WorkloadSpec, seconds: float, packing: bool | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.config, self.spec, self.seconds, self.packing = config, spec, seconds, packing
        self.expected = Expected(config.windows.size_ms)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            producer = make_producer(self.config, self.config.kafka.bootstrap, packing=self.packing)
            started = time.monotonic()
            emissions = generate(self.spec, self.config.meters, self.config.windows.size_ms, self.expected)
            for n, emission in enumerate(emissions):
                send(producer, emission)
                if n % 2_000 == 0:  # keep to the schedule
                    time.sleep(max(0.0, started + self.seconds * n / self.spec.events - time.monotonic()))
            producer.close()
        except BaseException as exc:  # surfaced by finish()
            self.error = exc

    def finish(self) -> dict:
        self.join()
        assert self.error is None, self.error
        return self.expected.to_json(self.spec)


class SinkProcess:
    """A `meterline sink <kind>` process of its own consumer group, started, killed and stopped at will."""

    def __init__(
        self, kind: str, env: dict[str, str], tmp_path: Path, stop_timeout: float, catch_up_timeout: float
    ) -> None:
        self.kind, self.env, self.tmp_path = kind, env, tmp_path
        self.stop_timeout, self.catch_up_timeout = stop_timeout, catch_up_timeout
        self.group = f"test-sink-{kind}-{uuid.uuid4().hex[:8]}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.process = start_meterline(
            ["sink", self.kind, "--group", self.group],
            self.env,
            self.tmp_path / f"sink-{self.kind}-{self.starts}.log",
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            assert self.process.wait(timeout=self.stop_timeout) == 0, self.logs()

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-4000:]
            for p in sorted(self.tmp_path.glob(f"sink-{self.kind}-*.log"))
        )

    def wait_caught_up(self, bootstrap: str, ends: dict[tuple[str, int], int]) -> None:
        """Until the sink's commits reach `ends` (core.kafka.read_ends)."""
        deadline = time.monotonic() + self.catch_up_timeout
        while not committed_reaches(bootstrap, self.group, ends):
            assert self.process is None or self.process.poll() is None, self.logs()
            assert time.monotonic() < deadline, (ends, self.logs())
            time.sleep(0.5)


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """(status, body), error statuses included; an unreachable server raises URLError."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), timeout=10
        ) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class RunProcess:
    """A `meterline run` process (all roles in one), started, killed and stopped at will; commands
    started beside it with the same environment run inside it (meterline.forward)."""

    def __init__(self, env: dict[str, str], tmp_path: Path, *args: str) -> None:
        self.env, self.tmp_path, self.args = env, tmp_path, args
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def run_file(self) -> Path:
        return Path(self.env["METERLINE__DEV__STATE_DIR"]) / "run.json"

    def start(self) -> None:
        self.starts += 1
        self.process = start_meterline(
            ["run", *self.args], self.env, self.tmp_path / f"run-{self.starts}.log"
        )

    def url(self, timeout: float = 60) -> str:
        """Its HTTP address, once it has announced it and answers /readyz."""
        import json
        import urllib.error

        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, self.logs()
            assert time.monotonic() < deadline, f"not ready within {timeout} s:\n{self.logs()}"
            try:
                announced = json.loads(self.run_file.read_text())
                if announced["pid"] == self.process.pid:
                    url = str(announced["url"])
                    if http_get(f"{url}/readyz")[0] == 200:
                        return url
            except (OSError, ValueError, urllib.error.URLError):
                pass
            time.sleep(0.5)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def kill_if_running(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()

    def stop(self) -> int:
        """SIGTERM; its exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=180)

    def command(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meterline.cli", *args],
            env=self.env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def logs(self, whole: bool = False) -> str:
        """What every start printed (the end of each, unless `whole`)."""
        return "\n".join(
            p.read_text(errors="replace")[0 if whole else -6000 :]
            for p in sorted(self.tmp_path.glob("run-*.log"))
        )
