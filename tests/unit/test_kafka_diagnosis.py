"""core.kafka.diagnose: what librdkafka 2.x said on a failed connection, as heard from Apache Kafka
4.1.1 with a SASL_SSL listener (tests/integration/test_kafka_security.py makes each mistake for
real), mapped to the setting to look at. A broker that is not up yet is not a diagnosis."""

from __future__ import annotations

import pytest

from meterline.core.kafka import Brokers, diagnose

SECURED = Brokers(
    "127.0.0.1:9093",
    {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "meterline",
        "ssl.ca.location": "/etc/kafka/ca.pem",
    },
)
PREFIX = (
    "FAIL [rdkafka#producer-1] [thrd:sasl_ssl://127.0.0.1:9093/bootstrap]: "
    "sasl_ssl://127.0.0.1:9093/bootstrap: "
)


@pytest.mark.parametrize(
    ("heard", "kafka", "named"),
    [
        (
            "SASL authentication error: Authentication failed during authentication due to invalid "
            "credentials with SASL mechanism SCRAM-SHA-512 (after 325ms in state AUTH_REQ)",
            SECURED,
            "refused the credentials of user 'meterline': check kafka.sasl_username and kafka.sasl_password",
        ),
        (
            "SASL SCRAM-SHA-256 mechanism handshake failed: Broker: Unsupported SASL mechanism: "
            "broker's supported mechanisms: SCRAM-SHA-512 (after 302ms in state AUTH_HANDSHAKE)",
            Brokers("b:9093", {**SECURED.properties, "sasl.mechanism": "SCRAM-SHA-256"}),
            "does not offer kafka.sasl_mechanism = SCRAM-SHA-256 (SASL SCRAM-SHA-256 mechanism",
        ),
        (
            "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker "
            "certificate could not be verified (after 12ms in state SSL_HANDSHAKE)",
            SECURED,
            "not signed by a CA of kafka.ssl_ca_location (/etc/kafka/ca.pem)",
        ),
        (
            "SSL handshake failed: Disconnected: SSL connection closed by peer: connecting to a "
            "PLAINTEXT broker listener? (after 5ms in state SSL_HANDSHAKE)",
            SECURED,
            "kafka.security_protocol is SASL_SSL, but the broker's listener speaks PLAINTEXT",
        ),
    ],
    ids=["credentials", "mechanism", "certificate", "TLS to a plaintext listener"],
)
def test_a_refusal_names_its_setting(heard: str, kafka: Brokers, named: str) -> None:
    why = diagnose([PREFIX + heard], kafka)
    assert why is not None and named in why
    assert "FAIL [rdkafka" not in why  # librdkafka's log prefix is left out


def test_plaintext_to_a_tls_listener_is_named_once_it_repeats() -> None:
    closed = (
        "FAIL [rdkafka#producer-6] [thrd:127.0.0.1:9093/bootstrap]: 127.0.0.1:9093/bootstrap: Disconnected: "
        "connection closed by peer: receive 0 after POLLIN (after 1ms in state APIVERSION_QUERY)"
    )
    assert diagnose([closed], "127.0.0.1:9093") is None  # once: a broker going down says the same
    why = diagnose([closed, closed], "127.0.0.1:9093")
    assert why is not None and "does not speak kafka.security_protocol = PLAINTEXT" in why


def test_a_broker_not_up_yet_is_waited_for_not_diagnosed() -> None:
    refused = PREFIX + "Connect to ipv4#127.0.0.1:9093 failed: Connection refused (after 0ms)"
    assert diagnose([refused, refused, "1/1 brokers are down"], SECURED) is None
    assert diagnose([], SECURED) is None
