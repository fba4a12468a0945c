"""meterline's configuration: one TOML file plus environment overrides, loaded into the frozen
values of core.config, validated. Every problem is reported at once, each with its field, value and why.

Precedence: the built-in defaults (meterline/default.toml), then the file (`--config`,
$METERLINE_CONFIG, ./meterline.toml, or /etc/meterline/meterline.toml), then the environment.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meterline.config_alerts import build_alerts
from meterline.config_checks import (
    EnvValue,
    Section,
)
from meterline.config_ratecard import build_meters, build_plans, legacy_levels, plan_history
from meterline.config_sections import SECTIONS
from meterline.core.config import (
    BillingConfig,
    Config,
    ConfigError,
    ConfigProblem,
    levels_of,
)

DEFAULT_FILE = Path(__file__).with_name("default.toml")
SYSTEM_FILE = Path("/etc/meterline/meterline.toml")

# Well-known variables, and the key each overrides.
ENV_ALIASES = {
    "KAFKA_BOOTSTRAP": ("kafka", "bootstrap"),
    "KAFKA_SECURITY_PROTOCOL": ("kafka", "security_protocol"),
    "KAFKA_SASL_MECHANISM": ("kafka", "sasl_mechanism"),
    "KAFKA_SASL_USERNAME": ("kafka", "sasl_username"),
    "KAFKA_SASL_PASSWORD": ("kafka", "sasl_password"),
    "KAFKA_SSL_CA_LOCATION": ("kafka", "ssl_ca_location"),
    "SCHEMA_REGISTRY_URL": ("kafka", "schema_registry_url"),
    "CLICKHOUSE_DSN": ("clickhouse", "dsn"),
    "CLICKHOUSE_PASSWORD": ("clickhouse", "password"),
    "STRIPE_WEBHOOK_SECRET": ("stripe", "webhook_secret"),
    "STRIPE_API_KEY": ("stripe", "api_key"),
    "STRIPE_API_BASE": ("stripe", "api_base"),
}
ENV_PREFIX = "METERLINE__"


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate; raises ConfigError listing every problem."""
    env = os.environ if env is None else env
    path = path or _default_path(env)
    raw = tomllib.loads(DEFAULT_FILE.read_text())
    problems: list[ConfigProblem] = []
    source = "built-in defaults"
    if path is not None:
        source = str(path)
        try:
            user = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError([ConfigProblem("--config", str(path), "no such file")], source) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                [ConfigProblem("--config", str(path), f"not valid TOML: {exc}")], source
            ) from None
        if "meters" in user:  # a file that declares meters replaces the example meters...
            raw.pop("meters")
        if "meters" in user or "plans" in user:  # ...and the example plans, which price them
            raw.pop("plans")
        _merge(raw, user)
    overridden = _apply_env(raw, env, problems)
    config = _build(raw, problems, source)
    if problems:
        named = [_naming_its_variable(problem, overridden) for problem in problems]
        raise ConfigError(named, f"{source} and the environment" if overridden else source)
    return config


def _naming_its_variable(problem: ConfigProblem, overridden: Mapping[str, str]) -> ConfigProblem:
    variable = overridden.get(problem.field)
    return dataclasses.replace(problem, why=f"{problem.why} (set by {variable})") if variable else problem


def _default_path(env: Mapping[str, str]) -> Path | None:
    """$METERLINE_CONFIG (which must exist), else the first of ./meterline.toml and
    /etc/meterline/meterline.toml that does (a container's optional ConfigMap), else none."""
    if env.get("METERLINE_CONFIG"):
        return Path(env["METERLINE_CONFIG"])
    return next((path for path in (Path("meterline.toml"), SYSTEM_FILE) if path.exists()), None)


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _apply_env(raw: dict[str, Any], env: Mapping[str, str], problems: list[ConfigProblem]) -> dict[str, str]:
    """Put the environment's overrides into `raw`; returns each overridden field's variable."""
    overridden: dict[str, str] = {}
    for name, (section, key) in ENV_ALIASES.items():
        if name in env:
            raw.setdefault(section, {})[key] = EnvValue(env[name])
            overridden[f"{section}.{key}"] = name
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if len(path) < 2 or not all(path):
            problems.append(ConfigProblem(name, text, "expected METERLINE__<SECTION>__<KEY>"))
            continue
        table = raw
        for part in path[:-1]:
            table = table.setdefault(part, {})
        table[path[-1]] = EnvValue(text)  # typed by the field that reads it
        overridden[".".join(path)] = name
    return overridden


def _build(raw: dict[str, Any], problems: list[ConfigProblem], source: str) -> Config:
    """Every section by its own builder (config_sections, config_ratecard, config_alerts), each
    reporting its problems into `problems`."""
    known_sections = {
        "billing",
        "plans",
        "kafka",
        "topics",
        "windows",
        "stream",
        "producer",
        "clickhouse",
        "stripe",
        "dev",
        "run",
        "meters",
        "alerts",
        "notices",
        "ingest",
    }
    for name in sorted(set(raw) - known_sections):
        problems.append(
            ConfigProblem(name, raw[name], f"unknown section (known: {', '.join(sorted(known_sections))})")
        )

    built: dict[str, Any] = {}
    for name, builder in SECTIONS.items():
        section = Section(raw, name, problems)
        built[name] = builder(section)
        section.finish()
    meters = build_meters(raw.get("meters", {}), problems)
    if built["stripe"].mode == "usage_records":
        problems += legacy_levels(meters)
    plans = build_plans(raw.get("plans", {}), meters, problems)
    s = Section(raw, "billing", problems)
    billing = BillingConfig(
        default_plan=s.get(
            "default_plan",
            str,
            "standard" if "standard" in plans else "",
            lambda v: None if not v or v in plans else f"no plan {v!r} in [plans]",
        ),
        customers=s.get(
            "customers",
            dict,
            {},
            lambda v: next(
                (f"{c} is on plan {n!r}, which [plans] lacks" for c, n in v.items() if n not in plans), None
            ),
        ),
        history=plan_history(s, s.get("history", dict, {}), plans),
    )
    s.finish()
    alerts = build_alerts(raw, plans, levels_of(meters.values()), problems)
    return Config(**built, meters=meters, plans=plans, billing=billing, alerts=alerts, source=source)
