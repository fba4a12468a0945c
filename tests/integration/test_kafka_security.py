"""Any Kafka: the configured security becomes librdkafka's properties for every confluent-kafka
client and the matching credentials for Faust's (aiokafka), secrets never printed. Property names
are librdkafka's (https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md).

The real connections are to Apache Kafka 4.x (tests/support/apache_kafka.py) with a SASL_SSL
listener (SCRAM-SHA-512) and a certificate signed by a CA made in the test. (tansu, the embedded
broker, serves PLAINTEXT only as meterline starts it: its `--authentication` needs users created
over an authenticated connection, which its memory storage cannot keep.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import faust
import pytest

from meterline.config import load_config
from meterline.core.config import ConfigError
from meterline.core.kafka import admin, security_properties, settings
from meterline.devstack import kafka_brokers
from meterline.produce import produce_workload
from meterline.sinks.stripe.fake import FakeStripe
from meterline.streams.app import faust_credentials
from meterline.workload import customer_ids
from tests.support import apache_kafka as kraft
from tests.support.pipeline import RunProcess, Workers, small_workload
from tests.support.run import assert_no_secret_in, run_environment, wait_until_settled
from tests.support.stripe import set_up_stripe


def _pem_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate and its key, for a CA file and a client certificate."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meterline-test")])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "ca.pem", tmp_path / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_plaintext_is_the_default_and_faust_gets_no_credentials() -> None:
    config = load_config(None, {})
    assert security_properties(config.kafka) == {"security.protocol": "PLAINTEXT"}
    assert faust_credentials(config.kafka) is None


def test_sasl_plain_over_tls_as_confluent_cloud_asks() -> None:
    config = load_config(
        None,
        {
            "KAFKA_BOOTSTRAP": "pkc-1.example:9092",
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": "API_KEY",
            "KAFKA_SASL_PASSWORD": "api-secret-1",
        },
    )
    brokers = kafka_brokers(config)
    client = settings(brokers, {"group.id": "g"})
    assert {k: client[k] for k in ("bootstrap.servers", "security.protocol", "sasl.mechanism")} == {
        "bootstrap.servers": "pkc-1.example:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
    }
    assert (client["sasl.username"], client["sasl.password"], client["group.id"]) == (
        "API_KEY",
        "api-secret-1",
        "g",
    )
    # Printed, logged or pickled into a report: the secret stays hidden.
    assert "api-secret-1" not in repr(brokers) + str(brokers) + json.dumps(brokers.redacted())
    assert brokers.redacted()["sasl.password"] == "***"
    credentials = faust_credentials(config.kafka)
    assert isinstance(credentials, faust.SASLCredentials)
    assert (str(credentials.protocol), credentials.mechanism.value) == ("AuthProtocol.SASL_SSL", "PLAIN")
    assert (credentials.username, credentials.password) == ("API_KEY", "api-secret-1")


def test_sasl_scram_from_the_environment_for_both_clients() -> None:
    config = load_config(
        None,
        {
            "KAFKA_BOOTSTRAP": "b-1.msk.example:9096",
            "METERLINE__KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "METERLINE__KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
            "METERLINE__KAFKA__SASL_USERNAME": "meterline",
            "METERLINE__KAFKA__SASL_PASSWORD": "scram-secret",
        },
    )
    assert security_properties(config.kafka)["sasl.mechanism"] == "SCRAM-SHA-512"
    credentials = faust_credentials(config.kafka)
    assert isinstance(credentials, faust.SASLCredentials) and credentials.ssl_context is None
    assert (str(credentials.protocol), credentials.mechanism.value) == (
        "AuthProtocol.SASL_PLAINTEXT",
        "SCRAM-SHA-512",
    )


def test_the_protocol_is_taken_in_any_case_as_kafkas_clients_take_it() -> None:
    """librdkafka's CONFIGURATION.md writes `sasl_ssl`; the Java client upper-cases it too."""
    env = {"KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "KAFKA_SASL_MECHANISM": "PLAIN"}
    config = load_config(None, {**env, "KAFKA_SASL_USERNAME": "key", "KAFKA_SASL_PASSWORD": "secret-1"})
    assert config.kafka.security_protocol == "SASL_SSL"
    assert security_properties(config.kafka)["security.protocol"] == "SASL_SSL"
    with pytest.raises(ConfigError) as refused:
        load_config(None, {"KAFKA_SECURITY_PROTOCOL": "tls"})
    [problem] = refused.value.problems
    assert problem.field == "kafka.security_protocol" and "must be one of" in problem.why


def test_mutual_tls_names_the_ca_certificate_and_key_files(tmp_path: Path) -> None:
    ca, key = _pem_pair(tmp_path)
    config = load_config(
        None,
        {
            "KAFKA_BOOTSTRAP": "kafka.internal:9093",
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CA_LOCATION": str(ca),
            "METERLINE__KAFKA__SSL_CERTIFICATE_LOCATION": str(ca),
            "METERLINE__KAFKA__SSL_KEY_LOCATION": str(key),
        },
    )
    assert security_properties(config.kafka) == {
        "security.protocol": "SSL",
        "ssl.ca.location": str(ca),
        "ssl.certificate.location": str(ca),
        "ssl.key.location": str(key),
    }
    credentials = faust_credentials(config.kafka)
    assert isinstance(credentials, faust.SSLCredentials) and str(credentials.protocol) == "AuthProtocol.SSL"
    # librdkafka accepts the properties as they are (it would refuse an unknown one at creation).
    admin(kafka_brokers(config))


def test_security_mistakes_are_config_errors_reported_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(
            None,
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "GSSAPI",
                "METERLINE__KAFKA__SSL_CERTIFICATE_LOCATION": str(_pem_pair(tmp_path)[0]),
                "KAFKA_SSL_CA_LOCATION": str(tmp_path / "missing.pem"),
            },
        )
    problems = {(p.field, p.why) for p in refused.value.problems}
    assert {  # each names the variable that set it (an override is its own problem's source)
        (
            "kafka.sasl_mechanism",
            'must be one of "", PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 (set by KAFKA_SASL_MECHANISM)',
        ),
        ("kafka.sasl_username", "required with security_protocol = SASL_SSL"),
        ("kafka.sasl_password", "required with security_protocol = SASL_SSL"),
        ("kafka.ssl_ca_location", "no such file (set by KAFKA_SSL_CA_LOCATION)"),
        ("kafka.ssl_key_location", "a client certificate needs its key, and a key its certificate"),
    } <= problems
    with pytest.raises(ConfigError) as ignored:
        load_config(None, {"KAFKA_SASL_PASSWORD": "left-over"})
    [problem] = ignored.value.problems
    assert problem.field == "kafka.sasl_password" and "left-over" not in str(ignored.value)


def test_config_check_shows_the_security_and_never_the_password() -> None:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": "pkc-1.example:9092",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": "API_KEY",
        "KAFKA_SASL_PASSWORD": "api-secret-2",
    }
    for extra in ([], ["--json"]):
        shown = subprocess.run(
            [sys.executable, "-m", "meterline.cli", "config", "check", *extra],
            env=env,
            capture_output=True,
            text=True,
        )
        assert shown.returncode == 0, shown.stderr
        assert "SASL_SSL" in shown.stdout and "API_KEY" in shown.stdout
        assert "api-secret-2" not in shown.stdout + shown.stderr


def _secured_env(cluster: kraft.Cluster, security: kraft.Secured, tmp_path: Path) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP": cluster.bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "meterline",
        "KAFKA_SASL_PASSWORD": security.users["meterline"],
        "KAFKA_SSL_CA_LOCATION": str(security.ca_file),
        "METERLINE__DEV__STATE_DIR": str(tmp_path / "state"),
    }


@pytest.mark.integration
def test_every_role_and_the_sdk_reach_a_secured_apache_kafka(
    tmp_path: Path, stripe_fake: tuple[FakeStripe, str]
) -> None:
    """SASL_SSL with SCRAM-SHA-512 on Apache Kafka, the brokers' certificate signed by a CA made
    here: `topics ensure`, the SDK and `meterline run` (the stream's Faust worker, both sinks, the
    webhooks, the alerts and the ingest) connect, and a workload comes out exact in ClickHouse and
    Stripe."""
    kraft.require()
    security = kraft.secured(tmp_path / "tls", {"meterline": "scram-secret-5e0c2a"})
    with kraft.cluster(tmp_path / "kafka", security=security) as cluster:
        env = _secured_env(cluster, security, tmp_path)
        ensured = subprocess.run(
            [sys.executable, "-m", "meterline.cli", "topics", "ensure", "--json"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ensured.returncode == 0, ensured.stderr
        assert {t["action"] for t in json.loads(ensured.stdout)["topics"]} == {"created"}

        config = load_config(None, env)
        _, base = stripe_fake
        spec = small_workload(seed=91, events=3_000)
        meters = set_up_stripe(config, base, customer_ids(spec))
        run = RunProcess({**run_environment(Workers(config, tmp_path), base), **env}, tmp_path)
        try:
            run.start()
            run.url(timeout=120)
            _, expected = produce_workload(config, kafka_brokers(config), spec)  # the SDK
            wait_until_settled(run, base, meters, spec, expected, timeout=240)
            assert run.stop() == 0, run.logs()
            assert_no_secret_in(run.logs(whole=True))
            assert security.users["meterline"] not in run.logs(whole=True)
        finally:
            run.kill_if_running()


def _mistaken(env: dict[str, str], mistake: str, tmp_path: Path) -> dict[str, str]:
    if mistake == "wrong password":
        return {**env, "KAFKA_SASL_PASSWORD": "not-the-password"}
    if mistake == "unknown CA":
        return {**env, "KAFKA_SSL_CA_LOCATION": str(kraft.make_ca(tmp_path / "other", "another CA")[0])}
    plaintext = {k: v for k, v in env.items() if not k.startswith(("KAFKA_SASL_", "KAFKA_SSL_"))}
    return {**plaintext, "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}


@pytest.mark.integration
@pytest.mark.parametrize(
    ("mistake", "named"),
    [
        ("wrong password", "check kafka.sasl_username and kafka.sasl_password"),
        ("unknown CA", "not signed by a CA of kafka.ssl_ca_location"),
        ("plaintext to TLS", "its listener does not speak kafka.security_protocol = PLAINTEXT"),
    ],
)
def test_a_connection_mistake_fails_fast_naming_the_setting(tmp_path: Path, mistake: str, named: str) -> None:
    """Every role, `topics ensure` and `meterline emit` stop at once with the setting to look at
    (core.kafka.diagnose), not after the connection timeout with a transport failure."""
    kraft.require()
    security = kraft.secured(tmp_path / "tls", {"meterline": "scram-secret-81d4"})
    with kraft.cluster(tmp_path / "kafka", security=security) as cluster:
        env = _mistaken({**os.environ, **_secured_env(cluster, security, tmp_path)}, mistake, tmp_path)
        commands = [
            ["topics", "ensure"],
            ["stream", "--data-dir", str(tmp_path / "w")],
            ["sink", "stripe"],
            ["emit", "--customer", "cust-1", "--meter", "api_calls", "--quantity", "1"],
        ]
        for command in commands:
            refused = subprocess.run(
                [sys.executable, "-m", "meterline.cli", *command],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert refused.returncode == 1, (command, refused.stderr)
            assert "refused the connection" in refused.stderr and named in refused.stderr, refused.stderr
            assert "scram-secret-81d4" not in refused.stdout + refused.stderr
