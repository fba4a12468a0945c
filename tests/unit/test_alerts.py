"""Usage alerts without I/O: which thresholds a month's usage crosses, each crossing's identity,
the webhook's signature, and the [alerts] section's mistakes reported together."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
import stripe

from meterline.config import load_config
from meterline.core.config import AlertRule, ConfigError
from meterline.reconciler.alerts.rules import PROJECTION_FROM, alert_id, crossed, signature

STANDARD = load_config(None, {}).plans["standard"]  # 1,000,000 API calls included, then $0.001
DAY = 86_400_000
PERIOD = (0, 30 * DAY)
RULE = AlertRule("standard", "api_calls", (Decimal("0.8"), Decimal(1)), (Decimal("10.00"),), True)


def thresholds(used: int, now_ms: int = PERIOD[1] - 1) -> list[str]:
    return [a.threshold for a in crossed(RULE, STANDARD, "cust-1", PERIOD, used, now_ms)]


def test_each_threshold_is_crossed_where_its_rule_says() -> None:
    assert thresholds(799_999) == []
    assert thresholds(800_000) == ["80% of 1,000,000 included"]
    assert thresholds(1_000_000) == ["80% of 1,000,000 included", "100% of 1,000,000 included"]
    # The spend is the meter's line as Stripe bills it: $9.995 of overage rounds half up to $10.00.
    assert "spend $10.00" not in thresholds(1_009_994) and "spend $10.00" in thresholds(1_009_995)


def test_a_projected_overage_is_judged_from_a_tenth_of_the_period_on() -> None:
    tenth = int(PERIOD[1] * PROJECTION_FROM)
    assert "projected overage" not in thresholds(200_000, tenth - 1)  # a first days' burst: too early
    assert "projected overage" in thresholds(200_000, tenth)  # 2,000,000 at this rate
    assert "projected overage" not in thresholds(90_000, tenth)  # 900,000 at this rate


def test_a_crossing_has_one_id_whatever_was_observed_and_when() -> None:
    early = crossed(RULE, STANDARD, "cust-1", PERIOD, 800_000, DAY)[0]
    late = crossed(RULE, STANDARD, "cust-1", PERIOD, 900_000, 20 * DAY)[0]
    assert early.id == late.id == alert_id("cust-1", "api_calls", 0, "80% of 1,000,000 included")
    assert early.payload() != late.payload()  # what was seen differs; the identity does not
    assert alert_id("cust-1", "api_calls", 30 * DAY, early.threshold) != early.id  # the next period's


def test_the_signature_verifies_with_stripe_python_as_stripe_s_own_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The product verifies alerts the way it verifies Stripe's webhooks (https://docs.stripe.com/webhooks)."""
    monkeypatch.setattr("stripe._webhook.time", SimpleNamespace(time=lambda: 1_796_000_100))
    payload = b'{"id":"mla_1"}'
    header = signature("whsec_product", 1_796_000_000, payload)
    stripe.WebhookSignature.verify_header(payload.decode(), header, "whsec_product", 300)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(payload.decode(), header, "whsec_other", 300)


def test_the_alert_rules_mistakes_are_reported_together(tmp_path: Path) -> None:
    path = tmp_path / "meterline.toml"
    path.write_text(
        '[alerts]\nendpoint = "https://product.example/alerts"\n\n'
        '[alerts.rules.standard.egress_bytes]\nincluded = ["80%"]\n\n'
        '[alerts.rules.standard.api_calls]\nincluded = ["eighty"]\nspend = ["-1"]\nlater = true\n\n'
        "[alerts.rules.gold.api_calls]\nincluded = []\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path, {})
    assert sorted(p.field for p in raised.value.problems) == [
        "alerts.rules.gold",
        "alerts.rules.standard.api_calls.included",
        "alerts.rules.standard.api_calls.later",
        "alerts.rules.standard.api_calls.spend",
        "alerts.rules.standard.egress_bytes",
        "alerts.signing_secret",
    ]


def test_a_level_has_no_rate_to_project(tmp_path: Path) -> None:
    """A `max` or `last` meter's answer does not grow with time: projected_overage is refused for
    it, shares of what it includes are not."""
    path = tmp_path / "meterline.toml"
    path.write_text('[alerts.rules.standard.api_calls]\nincluded = ["80%"]\nprojected_overage = true\n')
    assert load_config(path, {}).alerts.rules[0].projected_overage
    with pytest.raises(ConfigError) as raised:
        load_config(path, {"METERLINE__METERS__API_CALLS__AGGREGATION": "max"})
    [problem] = raised.value.problems
    assert problem.field == "alerts.rules.standard.api_calls.projected_overage"
    assert problem.why.startswith("api_calls bills its peak")
    with pytest.raises(ConfigError) as raised:
        load_config(path, {"METERLINE__METERS__API_CALLS__AGGREGATION": "last"})
    assert raised.value.problems[0].why.startswith("api_calls bills its latest level")
