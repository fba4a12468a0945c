"""Apache Kafka 4.x in KRaft mode, started from its jars on Maven Central (no Docker, no download at
test time): for what only the real broker shows, which tansu cannot (DESIGN §7: transactions,
compaction, SASL/TLS, a broker killed mid-run).

`./run.sh test` copies the jars once (tests/support/kafka-jars/pom.xml) into
.venv/apache-kafka-<version> and sets METERLINE_REQUIRE_APACHE_KAFKA=1, so that a missing jar fails
the tests that need the broker instead of skipping them. Every node is a combined broker and
controller on 127.0.0.1 (one for most lanes, three for failover), formatted with a fresh cluster id,
its data under the test's directory, its log in `<node>/broker.log`.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meterline.core.kafka import Brokers, admin
from tests.support.pipeline import free_port

ROOT = Path(__file__).resolve().parents[2]
POM = Path(__file__).with_name("kafka-jars") / "pom.xml"
VERSION = re.search(r"<kafka.version>(.+)</kafka.version>", POM.read_text())[1]  # type: ignore[index]
JARS = Path(os.environ.get("METERLINE_APACHE_KAFKA_JARS", ROOT / ".venv" / f"apache-kafka-{VERSION}"))
HEAP = "-Xmx512m"


def missing() -> str | None:
    """Why Apache Kafka cannot start here, or None when it can."""
    if not shutil.which("java"):
        return "no java on PATH (Apache Kafka's broker is a JVM program)"
    if not (JARS / f"kafka_2.13-{VERSION}.jar").exists():
        return f"no Apache Kafka jars in {JARS} (./run.sh test copies them with Maven)"
    return None


def require() -> None:
    """Skip the test with the reason where Apache Kafka cannot start here; fail it when the run
    requires the broker (METERLINE_REQUIRE_APACHE_KAFKA=1, set by ./run.sh test)."""
    reason = missing()
    if reason and os.environ.get("METERLINE_REQUIRE_APACHE_KAFKA"):
        pytest.fail(f"Apache Kafka is required here: {reason}")
    if reason:
        pytest.skip(reason)


@dataclass(frozen=True)
class Secured:
    """SASL_SSL with SCRAM-SHA-512 on the client listener, the brokers talking to each other the same
    way: a CA made for the test signs a certificate for 127.0.0.1 and localhost."""

    directory: Path
    users: Mapping[str, str]  # name: password, created at format time (the broker's own among them)
    broker_user: str = "broker"

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def keystore(self) -> Path:
        return self.directory / "broker.pem"

    def client(self, bootstrap: str, user: str) -> Brokers:
        """librdkafka's properties for `user` on this cluster."""
        return Brokers(
            bootstrap,
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": "SCRAM-SHA-512",
                "sasl.username": user,
                "sasl.password": self.users[user],
                "ssl.ca.location": str(self.ca_file),
            },
        )


def make_ca(directory: Path, name: str = "meterline test CA") -> tuple[Path, Path]:
    """A CA certificate and key (PEM files) under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        _valid(
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _write_pem(directory, "ca", certificate, key)


def sign_server(directory: Path, ca_cert: Path, ca_key: Path) -> Path:
    """A server certificate for 127.0.0.1 and localhost signed by the CA, with its key, in one PEM
    file (Kafka's PEM keystore: the key, then the chain)."""
    issuer = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    issuer_key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    certificate = (
        _valid(
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    path = directory / "broker.pem"
    path.write_bytes(_key_bytes(key) + certificate.public_bytes(serialization.Encoding.PEM))
    return path


def _valid(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    # Fixed dates: the certificates do not depend on the day the tests run (until 2036).
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    return (
        builder.serial_number(int(uuid.uuid4().int >> 64))
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
    )


def _key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _write_pem(
    directory: Path, stem: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_key_bytes(key))
    return cert_path, key_path


def secured(directory: Path, users: Mapping[str, str]) -> Secured:
    """A CA, a broker certificate and SCRAM users (and the broker's own) under `directory`."""
    ca_cert, ca_key = make_ca(directory)
    sign_server(directory, ca_cert, ca_key)
    return Secured(directory, {"broker": uuid.uuid4().hex, **users})


@dataclass
class Node:
    node_id: int
    port: int  # the client listener
    controller_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.directory / "broker.log"


@dataclass
class Cluster:
    """KRaft nodes on loopback. Topic defaults make a single node usable (replication factor 1)
    and three nodes production-like (3 replicas, min.insync.replicas 2); the log cleaner runs
    every second so that compaction happens within a test."""

    directory: Path
    size: int = 1
    security: Secured | None = None
    settings: Mapping[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def client(self, user: str = "meterline") -> Brokers | str:
        """What a client passes as its Kafka: the address alone on PLAINTEXT."""
        return self.security.client(self.bootstrap, user) if self.security else self.bootstrap

    def start(self, timeout: float = 90) -> None:
        self.nodes = [
            Node(i, free_port(), free_port(), self.directory / f"node-{i}") for i in range(1, self.size + 1)
        ]
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        for node in self.nodes:
            node.directory.mkdir(parents=True)
            properties = node.directory / "server.properties"
            properties.write_text("".join(f"{k}={v}\n" for k, v in self._properties(node).items()))
            self._format(node, cluster_id, properties)
        for node in self.nodes:
            self.restart(node.node_id)
        self.wait_for_brokers(self.size, timeout)

    def restart(self, node_id: int) -> None:
        node = self.node(node_id)
        with open(node.log, "ab") as log:
            node.process = subprocess.Popen(
                _java("kafka.Kafka", str(node.directory / "server.properties")),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self, node_id: int) -> None:
        """SIGKILL: no controlled shutdown, no leadership handed over."""
        process = self.node(node_id).process
        if process and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        for node in self.nodes:
            self.kill(node.node_id)

    def node(self, node_id: int) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    def wait_for_brokers(self, count: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process and node.process.poll() is not None:
                    raise RuntimeError(f"Apache Kafka node {node.node_id} exited: see {node.log}")
            with contextlib.suppress(Exception):  # not answering yet
                seen = len(admin(self.client("broker")).list_topics(timeout=2).brokers)
                if seen >= count:
                    return
            time.sleep(0.3)
        raise TimeoutError(
            f"{seen} of {count} Apache Kafka brokers up after {timeout:.0f} s: see {self.directory}"
        )

    def _properties(self, node: Node) -> dict[str, str]:
        replicas = min(self.size, 3)
        found = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": ",".join(
                f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes
            ),
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(node.directory / "data"),
            "offsets.topic.replication.factor": str(replicas),
            "transaction.state.log.replication.factor": str(replicas),
            "transaction.state.log.min.isr": str(min(replicas, 2)),
            "default.replication.factor": str(replicas),
            "min.insync.replicas": str(min(replicas, 2)),
            "auto.create.topics.enable": "false",  # as in production: topics are made by `topics ensure`
            "group.initial.rebalance.delay.ms": "0",
            "log.cleaner.backoff.ms": "1000",
            "num.partitions": "1",
        }
        client = "SASL_SSL" if self.security else "PLAINTEXT"
        found |= {
            "listeners": f"{client}://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"{client}://127.0.0.1:{node.port}",
            "listener.security.protocol.map": f"{client}:{client},CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": client,
        }
        if self.security:
            password = self.security.users[self.security.broker_user]
            found |= {
                "sasl.enabled.mechanisms": "SCRAM-SHA-512",
                "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required "
                    f'username="{self.security.broker_user}" password="{password}";'
                ),
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(self.security.keystore),
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": str(self.security.ca_file),
            }
        return found | dict(self.settings)

    def _format(self, node: Node, cluster_id: str, properties: Path) -> None:
        scram = [
            arg
            for name, password in (self.security.users.items() if self.security else ())
            for arg in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")
        ]
        done = subprocess.run(
            _java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(properties), *scram),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"formatting Apache Kafka node {node.node_id} failed:\n{done.stdout}{done.stderr}"
            )


def _java(main: str, *args: str) -> list[str]:
    return ["java", HEAP, "-cp", f"{JARS}/*", main, *args]


@contextlib.contextmanager
def cluster(
    directory: Path, size: int = 1, security: Secured | None = None, **settings: str
) -> Iterator[Cluster]:
    """A started cluster, stopped afterwards. `settings` override server.properties (dots as `_`)."""
    running = Cluster(directory, size, security, {k.replace("_", "."): v for k, v in settings.items()})
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session", name="kafka_bootstrap")
def on_apache_kafka(request: pytest.FixtureRequest) -> str:
    """The session broker for a module or lane that imports this fixture: $KAFKA_BOOTSTRAP where
    given, else the session's Apache Kafka node (tests/conftest.py: `apache_kafka`)."""
    return os.environ.get("KAFKA_BOOTSTRAP") or request.getfixturevalue("apache_kafka").bootstrap
