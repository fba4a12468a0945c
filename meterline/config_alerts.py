"""The [alerts] section: where alerts go, and the thresholds per plan and meter, checked against
the rate card (a share of the included quantity needs a price that includes some)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from meterline.config_checks import Section, at_least, decimal, url_check
from meterline.core.config import AlertRule, AlertsConfig, ConfigProblem, Secret
from meterline.core.ratecard import Plan

_SHARE = re.compile(r"(\d+(?:\.\d+)?)%")
RULE_KEYS = ("included", "spend", "projected_overage")


def build_alerts(
    raw: Mapping[str, Any],
    plans: Mapping[str, Plan],
    levels: Mapping[str, str],
    problems: list[ConfigProblem],
) -> AlertsConfig:
    """`levels`: the `max` and `last` meters, whose answer does not grow with time (nothing to
    project)."""
    s = Section(raw, "alerts", problems)
    alerts = AlertsConfig(
        every_seconds=s.get("every_seconds", int, 60, at_least(1)),
        endpoint=s.get("endpoint", str, "", url_check("http://", "https://")),
        signing_secret=Secret(s.get("signing_secret", str, "", secret=True)),
        rules=(),
    )
    if alerts.endpoint and not alerts.signing_secret:
        s.problem(
            "signing_secret", alerts.signing_secret, "an endpoint needs a secret to sign its webhooks with"
        )
    rules = []
    for plan_name, meters in sorted(s.get("rules", dict, {}).items()):
        plan = plans.get(plan_name)
        if plan is None or not isinstance(meters, dict):
            s.problem(
                f"rules.{plan_name}",
                meters,
                f"no plan {plan_name!r} in [plans]" if plan is None else "a table",
            )
            continue
        for meter, rule in sorted(meters.items()):
            found = _rule(s, f"rules.{plan_name}.{meter}", plan, meter, rule, levels.get(meter))
            if found is not None:
                rules.append(found)
    s.finish()
    return AlertsConfig(alerts.every_seconds, alerts.endpoint, alerts.signing_secret, tuple(rules))


def _rule(s: Section, where: str, plan: Plan, meter: str, rule: Any, level: str | None) -> AlertRule | None:
    price = plan.prices.get(meter)
    if price is None or not isinstance(rule, dict):
        s.problem(
            where, rule, f"plan {plan.name!r} prices no meter {meter!r}" if price is None else "a table"
        )
        return None
    for key in sorted(set(rule) - set(RULE_KEYS)):
        s.problem(f"{where}.{key}", rule[key], f"unknown key (known: {', '.join(RULE_KEYS)})")
    shares = [
        _share(s, f"{where}.included", text)
        for text in _list(s, f"{where}.included", rule.get("included", []))
    ]
    spend = [_amount(s, f"{where}.spend", text) for text in _list(s, f"{where}.spend", rule.get("spend", []))]
    projected = rule.get("projected_overage", False)
    if not isinstance(projected, bool):
        s.problem(f"{where}.projected_overage", projected, "must be true or false")
        projected = False
    if projected and level:
        what = "peak" if level == "max" else "latest level"
        s.problem(
            f"{where}.projected_overage",
            projected,
            f"{meter} bills its {what}, which the rate so far does not project: alert on included shares",
        )
        projected = False
    if (shares or projected) and not price.included:
        s.problem(where, rule, f"{meter} on plan {plan.name!r} includes nothing: no share of it to cross")
    return AlertRule(
        plan.name,
        meter,
        tuple(sorted(x for x in shares if x is not None)),
        tuple(sorted(x for x in spend if x is not None)),
        projected,
    )


def _list(s: Section, where: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        s.problem(where, value, "a list")
        return []
    return value


def _share(s: Section, where: str, text: Any) -> Decimal | None:
    match = _SHARE.fullmatch(text) if isinstance(text, str) else None
    if match is None or not Decimal(match[1]):
        s.problem(where, text, 'a share of the included quantity written as a percentage, e.g. "80%"')
        return None
    return Decimal(match[1]) / 100


def _amount(s: Section, where: str, text: Any) -> Decimal | None:
    amount = decimal(text) if isinstance(text, str) else None
    if amount is None or amount <= 0:
        s.problem(where, text, 'an amount of the plan\'s currency as a string, e.g. "100.00"')
        return None
    return amount
