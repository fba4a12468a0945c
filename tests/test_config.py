"""Configuration: defaults, overrides, every problem reported at once, secrets never printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meterline.config import ConfigError, Secret, load_config


def meterline(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("METERLINE", "KAFKA_", "STRIPE_", "CLICKHOUSE_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "meterline.cli", *args],
        capture_output=True,
        text=True,
        env=clean | (env or {}),
        cwd=cwd,
        timeout=120,
    )


def test_the_defaults_are_valid() -> None:
    config = load_config(None, {})
    assert config.windows.size_ms == 60_000
    assert config.meters["api_calls"].billable == {"status": ("2??",)}
    assert config.meter_units == {"api_calls": "call", "egress_bytes": "byte", "compute_ms": "millisecond"}


def test_three_mistakes_are_all_reported_by_config_check(tmp_path: Path) -> None:
    path = tmp_path / "meterline.toml"
    path.write_text(
        "[windows]\nsize_minutes = 3\n\n[kafka]\npartitions = 0\n\n"
        '[meters.api_calls]\nunit = "call"\naggregation = "average"\n'
    )
    result = meterline("--config", str(path), "config", "check")
    assert result.returncode == 1
    assert "3 problem(s)" in result.stderr
    assert "kafka.partitions = 0: must be at least 1" in result.stderr
    assert "windows.size_minutes = 3: must be 1 or 5" in result.stderr
    assert "meters.api_calls.aggregation = 'average': must be sum or count" in result.stderr
    as_json = json.loads(meterline("--config", str(path), "config", "check", "--json").stdout)
    assert [p["field"] for p in as_json["problems"]] == [
        "kafka.partitions",
        "windows.size_minutes",
        "meters.api_calls.aggregation",
    ]


def test_config_check_passes_on_the_defaults_and_lists_meters() -> None:
    result = meterline("config", "check")
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout and "api_calls" in result.stdout


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text("[windows]\nsize_minutes = 1\n")
    config = load_config(path, {"METERLINE__WINDOWS__SIZE_MINUTES": "5", "KAFKA_BOOTSTRAP": "10.0.0.1:9092"})
    assert config.windows.size_minutes == 5
    assert config.kafka.bootstrap == "10.0.0.1:9092"


def test_unknown_keys_sections_and_types_are_named() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            None,
            {
                "METERLINE__WINDOWS__SIZE_MINUTE": "5",
                "METERLINE__KAFKA__PARTITIONS": "many",
                "METERLINE__COLOUR__RED": "1",
            },
        )
    text = str(caught.value)
    assert "windows.size_minute = 5: unknown key" in text
    assert "kafka.partitions = 'many': must be an integer" in text
    assert "colour = {'red': 1}: unknown section" in text


def test_secrets_are_never_printed(tmp_path: Path) -> None:
    secret = "sk_live_do_not_print_me"
    config = load_config(None, {"STRIPE_API_KEY": secret, "CLICKHOUSE_PASSWORD": "hunter2"})
    assert config.stripe.api_key.reveal() == secret
    assert secret not in repr(config) and "hunter2" not in repr(config)
    assert repr(Secret(secret)) == "Secret('***')"
    bad = meterline("config", "check", env={"STRIPE_API_KEY": "pk_live_wrong_kind_of_key"})
    assert bad.returncode == 1
    assert "stripe.api_key = ***: a Stripe secret key starts with" in bad.stderr
    assert "pk_live_wrong_kind_of_key" not in bad.stderr + bad.stdout


def test_plan_mistakes_are_config_errors_reported_together() -> None:
    raw_env = {
        "METERLINE__PLANS__STANDARD__PRICES__API_CALLS__UNIT": "second",  # the meter counts calls
        "METERLINE__PLANS__STANDARD__PRICES__API_CALLS__OVERAGE_PRICE": "0.1",  # a float, not "0.1"
        "METERLINE__BILLING__CUSTOMERS": '{ "cust-1" = "gold" }',
    }
    with pytest.raises(ConfigError) as error:
        load_config(None, raw_env)
    fields = {p.field: p.why for p in error.value.problems}
    assert "unit mismatch" in fields["plans.standard.prices.api_calls.unit"]
    assert "string" in fields["plans.standard.prices.api_calls.overage_price"]
    assert "gold" in fields["billing.customers"]


def test_the_default_plan_is_the_seed_s_rate_card() -> None:
    from decimal import Decimal

    config = load_config(None, {})
    price = config.plan_for("anyone").prices["api_calls"]
    assert (price.included, price.overage_price, price.billed_unit) == (
        Decimal(1_000_000),
        Decimal("0.001"),
        "call",
    )
