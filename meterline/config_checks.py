"""Reading one table of the configuration (`Section`) and the checks its values go through:
each problem recorded with its field, value and why, never stopping at the first."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from meterline.core.config import ConfigProblem, Secret
from meterline.core.currencies import UnknownCurrency, currency


class EnvValue(str):
    """An override's text as the environment gave it: typed by the field that reads it
    (Section.get), not by how it looks."""

    def typed(self, kind: type | tuple[type, ...]) -> Any:
        """The text as the field's kind: TOML value syntax where it gives that kind (`5`, `true`,
        `["a"]`, `"quoted"`), else the text itself for a string field (`123456` as a password)."""
        try:
            parsed = tomllib.loads(f"v = {self}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = None
        wanted = kind if isinstance(kind, tuple) else (kind,)
        if (
            parsed is not None
            and isinstance(parsed, wanted)
            and (bool in wanted or not isinstance(parsed, bool))
        ):
            return parsed
        return str(self) if str in wanted or parsed is None else parsed


class Section:
    """Reads one table, recording type errors and unknown keys instead of stopping at the first."""

    def __init__(self, raw: Mapping[str, Any], name: str, problems: list[ConfigProblem]) -> None:
        self.name = name
        self.problems = problems
        table = raw.get(name, {})
        if isinstance(table, EnvValue):  # a whole table from one variable: `{ unit = "call" }`
            table = table.typed(dict)
        if not isinstance(table, dict):
            self.problem("", table, "must be a table")
            table = {}
        self.table: dict[str, Any] = table
        self.seen: set[str] = set()

    def problem(self, key: str, value: object, why: str) -> None:
        self.problems.append(ConfigProblem(f"{self.name}.{key}".rstrip("."), value, why))

    def get(
        self,
        key: str,
        kind: type | tuple[type, ...],
        fallback: Any,
        check: Callable[[Any], str | None] | None = None,
        *,
        secret: bool = False,
    ) -> Any:
        self.seen.add(key)
        value = self.table.get(key, fallback)
        if isinstance(value, EnvValue):
            value = value.typed(kind)
        shown = Secret(str(value)) if secret else value
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if not ok:
            wanted = {int: "an integer", (int, float): "a number"}.get(
                kind
            ) or f"a {getattr(kind, '__name__', kind)}"
            self.problem(key, shown, f"must be {wanted}")
            return fallback
        why = check(value) if check else None
        if why:
            self.problem(key, shown, why)
        return value

    def finish(self) -> None:
        for key in sorted(set(self.table) - self.seen):
            self.problem(key, self.table[key], f"unknown key (known: {', '.join(sorted(self.seen))})")


def long_enough(value: str) -> str | None:
    return None if not value or len(value) >= 16 else "at least 16 characters, or empty"


def one_of(*choices: str) -> Callable[[str], str | None]:
    shown = ", ".join(c or '""' for c in choices)
    return lambda v: None if v in choices else f"must be one of {shown}"


def file_check(path: str) -> str | None:
    return None if not path or Path(path).is_file() else "no such file"


def at_least(low: int) -> Callable[[int], str | None]:
    return lambda v: None if v >= low else f"must be at least {low}"


def between(low: float, high: float, why: str = "") -> Callable[[float], str | None]:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}{why}"


def pattern_check(pattern: re.Pattern[str], what: str) -> Callable[[str], str | None]:
    return lambda v: None if pattern.match(v) else f"must be {what}"


def url_check(*schemes: str) -> Callable[[str], str | None]:
    return lambda v: (
        None if not v or v.startswith(schemes) else f"must be empty or start with {' or '.join(schemes)}"
    )


def dsn_check(dsn: str) -> str | None:
    if not dsn or dsn.startswith(("http://", "https://")):
        return None
    if dsn.startswith("chdb://"):
        return None if dsn.startswith("chdb:///") else "chdb DSNs take an absolute path: chdb:///abs/path"
    return "must be empty (embedded), chdb:///abs/path or http(s)://host:8123"


def stripe_key_check(key: str) -> str | None:
    if not key or key.startswith(("sk_test_", "sk_live_", "rk_test_", "rk_live_")):
        return None
    return "a Stripe secret key starts with sk_test_, sk_live_, rk_test_ or rk_live_"


def money(s: Section, key: str, fallback: str) -> Decimal:
    """Money is written as a string ("0.001"), so that no float rounding reaches an invoice."""
    text = s.get(key, (str, int, float), fallback, money_check)
    return decimal(text) or Decimal(0)


def money_check(value: object) -> str | None:
    if isinstance(value, float):
        return f'write money as a string ("{value}"): a float cannot hold it exactly'
    amount = decimal(value)
    return None if amount is not None and amount >= 0 else 'a non-negative amount as a string, e.g. "0.001"'


def decimal(value: object) -> Decimal | None:
    try:
        return Decimal(str(value)) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    except ArithmeticError:
        return None


def unit_check(unit: str) -> Callable[[str], str | None]:
    return lambda v: (
        None
        if v == unit
        else f"unit mismatch: the meter counts in {unit!r}; a price in another unit bills wrong amounts"
    )


def currency_check(code: str) -> str | None:
    try:
        found = currency(code)
    except UnknownCurrency as exc:
        return str(exc)
    return None if found.code == code else f"write it in lowercase, as Stripe does: {found.code!r}"
