"""Secrets stay secret: with every secret meterline takes planted in its environment, nothing a
command prints (its output, its --json, its errors, librdkafka's and clickhouse-connect's logs)
contains one. A full `meterline run`'s logs, text and JSON, are grepped the same way in
tests/integration/test_run.py and tests/crash/test_run_sigkill.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PLANTED = {
    "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
    "KAFKA_SASL_USERNAME": "meterline",
    "KAFKA_SASL_PASSWORD": "planted-sasl-password-5e0c91",
    "STRIPE_API_KEY": "sk_test_planted7b3e8d20a1",
    "STRIPE_WEBHOOK_SECRET": "whsec_planted2c9f4a61e0",
    "CLICKHOUSE_PASSWORD": "planted-clickhouse-password-8a1d",
    "METERLINE__RUN__DASHBOARD_TOKEN": "planted-dashboard-token-4f6a2c",
    "METERLINE__RUN__DASHBOARD_USER": "operator",
    "METERLINE__RUN__DASHBOARD_PASSWORD": "planted-dashboard-password-0d7e",
    "METERLINE__ALERTS__SIGNING_SECRET": "planted-alerts-signing-secret-93c2",
}
# In the DSN too, where an operator may well put it.
DSN_PASSWORD = "planted-dsn-password-61b9"
SECRETS = [v for k, v in PLANTED.items() if "PASSWORD" in k or "KEY" in k or "SECRET" in k or "TOKEN" in k]
SECRETS.append(DSN_PASSWORD)


def meterline(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("KAFKA_", "STRIPE_", "CLICKHOUSE_", "METERLINE"))
        },
        **PLANTED,
        "METERLINE__DEV__STATE_DIR": str(tmp_path / "state"),
        "KAFKA_BOOTSTRAP": "127.0.0.1:1",  # nothing listens: every client fails, and says so
        "STRIPE_API_BASE": "http://127.0.0.1:1",
        "CLICKHOUSE_DSN": f"http://default:{DSN_PASSWORD}@127.0.0.1:1",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "meterline.cli", *args],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_secret_free(done: subprocess.CompletedProcess[str], *more: str) -> None:
    printed = done.stdout + done.stderr
    assert [s for s in (*SECRETS, *more) if s in printed] == [], printed


def test_config_check_shows_that_secrets_are_set_never_what_they_are(tmp_path: Path) -> None:
    text = meterline(tmp_path, "config", "check")
    assert text.returncode == 0, text.stderr
    assert "***" in text.stdout
    assert_secret_free(text)
    document = meterline(tmp_path, "config", "check", "--json")
    assert json.loads(document.stdout)["kafka"]["sasl.password"] == "***"
    assert_secret_free(document)


def test_a_configuration_error_names_the_field_not_the_secret(tmp_path: Path) -> None:
    wrong = {
        "STRIPE_WEBHOOK_SECRET": "not-whsec-planted2c9f4a61e0",  # refused: no whsec_ prefix
        "METERLINE__RUN__DASHBOARD_TOKEN": "planted-short",  # refused: too short
        "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",  # now the SASL password is refused too
    }
    for args in (
        ("config", "check"),
        ("config", "check", "--json"),
        ("reconcile", "--period", "2026-11", "--json"),
    ):
        done = meterline(tmp_path, *args, **wrong)
        assert done.returncode != 0
        printed = done.stdout + done.stderr
        for field in ("stripe.webhook_secret", "run.dashboard_token", "kafka.sasl_password"):
            assert field in printed, printed
        assert_secret_free(done, wrong["STRIPE_WEBHOOK_SECRET"], wrong["METERLINE__RUN__DASHBOARD_TOKEN"])


def test_failures_to_reach_each_service_keep_the_secrets(tmp_path: Path) -> None:
    """Kafka with SASL, ClickHouse with a password in its DSN and beside it, Stripe with a key:
    none answers, and every error and every client library's log line stays secret-free."""
    for args in (
        ("topics", "ensure", "--json"),
        ("reconcile", "--period", "2026-11", "--json", "--give-up-after", "1"),
        ("invoice", "preview", "--customer", "cust-1", "--period", "2026-11", "--json"),
        ("sql", "SELECT 1 AS one"),
    ):
        done = meterline(tmp_path, *args)
        assert done.returncode != 0, args
        assert "127.0.0.1:1" in done.stdout + done.stderr, args  # it said where it failed
        assert_secret_free(done)
