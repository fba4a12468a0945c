"""The rate card in the configuration: [meters], [plans] and [billing] built and checked, each
price one Stripe can bill exactly."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, cast

from meterline.config_checks import (
    Section,
    at_least,
    between,
    currency_check,
    decimal,
    money,
    unit_check,
)
from meterline.core.config import AGGREGATIONS, RESETS, Aggregation, ConfigProblem, MeterConfig, Reset
from meterline.core.currencies import Currency, currency
from meterline.core.dimensions import MAX_SERIES, VALUE, declared_of, expand, stripe_safe
from meterline.core.ratecard import MeterPrice, Plan, Rounding, Tier
from meterline.sinks.stripe.catalog.prices import (
    base_fee_lookup_key,
    base_fee_terms,
    lookup_key,
    stripe_terms,
)


def plan_history(
    s: Section, raw: Mapping[str, Any], plans: Mapping[str, Plan]
) -> dict[str, tuple[tuple[str, int], ...]]:
    """`history = { "cust-42" = [{ plan = "starter", until = "2026-11-15T00:00:00Z" }] }`."""
    history = {}
    for customer, entries in raw.items():
        changes: list[tuple[str, int]] = []
        for n, entry in enumerate(entries if isinstance(entries, list) else [entries]):
            where = f"history.{customer}[{n}]"
            if not isinstance(entry, dict) or set(entry) != {"plan", "until"}:
                s.problem(
                    where, entry, 'each earlier plan is { plan = "starter", until = "2026-11-15T00:00:00Z" }'
                )
                continue
            until = _instant(entry["until"])
            if entry["plan"] not in plans:
                s.problem(where, entry["plan"], f"no plan {entry['plan']!r} in [plans]")
            elif until is None:
                s.problem(
                    where, entry["until"], "an instant in ISO 8601 with its zone, e.g. 2026-11-15T00:00:00Z"
                )
            elif changes and until <= changes[-1][1]:
                s.problem(
                    where, entry["until"], "earlier plans are listed in order, each ending after the last"
                )
            else:
                changes.append((str(entry["plan"]), until))
        history[str(customer)] = tuple(changes)
    return history


def _instant(value: object) -> int | None:
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return None if when.tzinfo is None else int(when.timestamp() * 1000)


def build_plans(
    raw: Any, meters: Mapping[str, MeterConfig], problems: list[ConfigProblem]
) -> dict[str, Plan]:
    if not isinstance(raw, dict):
        problems.append(ConfigProblem("plans", raw, "must be tables [plans.<name>]"))
        return {}
    plans = {}
    for name, table in raw.items():
        s = Section({name: table}, name, problems)
        s.name = f"plans.{name}"
        code = s.get("currency", str, "usd", currency_check)
        base_fee = money(s, "base_fee", "0")
        prices_raw = s.get("prices", dict, {})
        s.finish()
        prices = {}
        for meter, price_table in _per_value(prices_raw, meters, f"plans.{name}.prices", problems).items():
            p = Section({meter: price_table}, meter, problems)
            p.name = f"plans.{name}.prices.{meter}"
            if meter not in meters:
                p.problem("", meter, f"no meter {meter!r} in [meters]")
            expected_unit = meters[meter].usage_unit if meter in meters else ""
            # An unknown meter is one problem: its unit is not checked against a unit it lacks.
            p.get("unit", str, expected_unit, unit_check(expected_unit) if meter in meters else None)
            tiers_mode = p.get(
                "tiers_mode",
                str,
                "",
                lambda v: None if v in ("", "graduated", "volume") else "graduated or volume",
            )
            tiers = _tiers(p, p.get("tiers", list, []), bool(tiers_mode))
            prices[meter] = MeterPrice(
                meter=meter,
                label=p.get("label", str, meter.replace("_", " ")),
                billed_unit=p.get("billed_unit", str, expected_unit),
                per=Decimal(p.get("per", int, 1, at_least(1))),
                decimals=p.get("decimals", int, 0, between(0, 6)),
                rounding=cast(
                    Rounding,
                    p.get(
                        "rounding",
                        str,
                        "up",
                        lambda v: None if v in ("up", "down", "half_up") else "up, down or half_up",
                    ),
                ),
                included=Decimal(p.get("included", int, 0, at_least(0))),
                overage_price=money(p, "overage_price", "0") if not tiers_mode else None,
                tiers_mode=cast(Literal["graduated", "volume"] | None, tiers_mode or None),
                tiers=tiers,
                billed_by_stripe=p.get("billed_by_stripe", bool, True),
            )
            p.finish()
        valid = currency_check(code) is None  # else the load fails: the plan is only checked further
        plan = Plan(name, currency(code) if valid else Currency(code, 2), base_fee, prices)
        for key in [base_fee_lookup_key(name), *(lookup_key(name, meter) for meter in prices)]:
            if len(key) > STRIPE_LOOKUP_KEY_MAX:
                problems.append(
                    ConfigProblem(
                        f"plans.{name}",
                        name,
                        f"the price lookup key {key!r} is {len(key)} characters: Stripe takes at most "
                        f"{STRIPE_LOOKUP_KEY_MAX} (a shorter plan or meter name)",
                    )
                )
        if valid:
            _check_billable(plan, problems)
        plans[name] = plan
    return plans


def _check_billable(plan: Plan, problems: list[ConfigProblem]) -> None:
    """Every price billed through Stripe must be one Stripe bills exactly as the preview computes it."""
    base_fee = base_fee_terms(plan)
    if plan.base_fee and isinstance(base_fee, str):
        problems.append(ConfigProblem(f"plans.{plan.name}.base_fee", str(plan.base_fee), base_fee))
    for meter, price in plan.prices.items():
        terms = stripe_terms(plan, price)
        if price.billed_by_stripe and isinstance(terms, str):
            problems.append(
                ConfigProblem(
                    f"plans.{plan.name}.prices.{meter}",
                    price.label,
                    f"Stripe cannot bill this price exactly: {terms} (or set billed_by_stripe = false "
                    "to price it here and invoice it some other way)",
                )
            )
    items = bool(plan.base_fee) + sum(price.billed_by_stripe for price in plan.prices.values())
    if items > STRIPE_SUBSCRIPTION_ITEMS_MAX:
        problems.append(
            ConfigProblem(
                f"plans.{plan.name}.prices",
                f"{items} prices",
                f"a subscription holds at most {STRIPE_SUBSCRIPTION_ITEMS_MAX} items, one per price Stripe "
                "bills (the base fee, each meter, each value of a meter with dimensions): fewer values or "
                "meters, or billed_by_stripe = false on some",
            )
        )


STRIPE_SUBSCRIPTION_ITEMS_MAX = 20
"""Subscriptions take "A list of up to 20 subscription items, each with an attached price"
(https://docs.stripe.com/api/subscriptions/create)."""


def _per_value(
    prices: Mapping[str, Any], meters: Mapping[str, MeterConfig], where: str, problems: list[ConfigProblem]
) -> dict[str, Any]:
    """The price tables by meter billed: a meter with dimensions has a price per series (core
    .dimensions), its table's with what `values` says for that value (`values = { "gpt-4o" = {
    overage_price = "0.00003" } }`; several dimensions: "gpt-4o.eu")."""
    declared = declared_of(meters)
    tables: dict[str, Any] = {}
    for meter, table in prices.items():
        if meter in meters or meter not in declared or not isinstance(table, dict):
            tables[meter] = table
            continue
        series = {".".join(v for _, v in m.values): m.name for m in meters.values() if m.declared == meter}
        overrides = table.get("values", {})
        if not isinstance(overrides, dict):
            problems.append(
                ConfigProblem(f"{where}.{meter}.values", overrides, 'a table: { "gpt-4o" = { ... } }')
            )
            overrides = {}
        for value in sorted(set(overrides) - set(series)):
            problems.append(
                ConfigProblem(
                    f"{where}.{meter}.values.{value}",
                    value,
                    f"not a declared value of {meter} (declared: {', '.join(series)})",
                )
            )
        if "shared" in table:
            problems.append(
                ConfigProblem(
                    f"{where}.{meter}.shared",
                    table["shared"],
                    "Stripe bills each value on a meter and a price of its own, so an included quantity "
                    "or tiers cannot be shared across values: give each value its own",
                )
            )
        base = {k: v for k, v in table.items() if k not in ("values", "shared")}
        label = base.get("label", meter.replace("_", " "))
        for suffix, name in series.items():
            override = overrides.get(suffix, {})
            if not isinstance(override, dict):
                problems.append(
                    ConfigProblem(
                        f"{where}.{meter}.values.{suffix}",
                        override,
                        'the fields this value prices otherwise, e.g. { overage_price = "0.015" }',
                    )
                )
                override = {}
            tables[name] = {**base, "label": f"{label} {suffix}", **override}
    return tables


def _tiers(p: Section, raw: list[Any], wanted: bool) -> tuple[Tier, ...]:
    if not wanted:
        if raw:
            p.problem("tiers", raw, "tiers need tiers_mode = graduated or volume")
        return ()
    tiers = []
    for n, entry in enumerate(raw):
        if not isinstance(entry, dict) or "unit_price" not in entry:
            p.problem(
                f"tiers[{n}]", entry, 'each tier is { up_to = N, unit_price = "0.01" }; the last has no up_to'
            )
            continue
        up_to = entry.get("up_to")
        price, fee = decimal(entry["unit_price"]), decimal(entry.get("flat_fee", "0"))
        if price is None or fee is None:
            p.problem(f"tiers[{n}]", entry, "unit_price and flat_fee are amounts written as strings")
            continue
        if up_to is not None and Decimal(up_to) <= 0:
            # No usage already falls in the first tier (its flat fee billed at none:
            # reconciler.billing.pricing)
            p.problem(
                f"tiers[{n}].up_to",
                up_to,
                "must be above 0: a tier up to 0 holds no usage, and no usage is the first tier's "
                "(a fee billed whatever the usage goes in the first tier's flat_fee or the base fee)",
            )
            continue
        tiers.append(Tier(None if up_to is None else Decimal(up_to), price, fee))
    edges = [t.up_to for t in tiers]
    if not tiers or edges[-1] is not None or None in edges[:-1] or edges[:-1] != sorted(set(edges[:-1])):  # type: ignore[type-var]
        p.problem("tiers", raw, "tiers rise strictly (up_to) and only the last one is open-ended")
    return tuple(tiers)


STRIPE_EVENT_NAME_MAX = 100
"""A billing meter's `event_name`: maxLength 100 in Stripe's OpenAPI specification (issue 35)."""
STRIPE_LOOKUP_KEY_MAX = 200
"""A price's `lookup_key` "may be up to 200 characters" (https://docs.stripe.com/api/prices/object)."""


def _event_name_check(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if len(value) > STRIPE_EVENT_NAME_MAX:
        return f"is {len(value)} characters: Stripe's meter event names take at most {STRIPE_EVENT_NAME_MAX}"
    return None


def build_meters(raw: Any, problems: list[ConfigProblem]) -> dict[str, MeterConfig]:
    if not isinstance(raw, dict) or not raw:
        problems.append(ConfigProblem("meters", raw, "declare at least one meter as [meters.<name>]"))
        return {}
    meters: dict[str, MeterConfig] = {}
    for name, table in raw.items():
        if not _METER_NAME.match(name):
            problems.append(
                ConfigProblem(f"meters.{name}", name, "a meter name is lowercase letters, digits, '_'")
            )
        s = Section({name: table}, name, problems)
        s.name = f"meters.{name}"
        unit = s.get("unit", str, "", lambda v: None if v else "every meter needs a unit (call, byte, ...)")
        aggregation = s.get("aggregation", str, "sum", _aggregation_check)
        event_name = s.get("stripe_event_name", str, name, _event_name_check)
        billable = _billable(s.get("billable", dict, {}), s)
        reset = s.get("reset", str, "calendar_month", _reset_check)
        unique_by = s.get("unique_by", str, "")
        dimensions = _dimensions(s, s.get("dimensions", dict, {}))
        if aggregation == "unique_count" and not unique_by:
            problems.append(
                ConfigProblem(
                    f"meters.{name}.unique_by",
                    "",
                    "a unique_count meter names the attribute whose distinct values it counts "
                    '(unique_by = "user")',
                )
            )
        elif unique_by and aggregation != "unique_count":
            problems.append(
                ConfigProblem(
                    f"meters.{name}.unique_by",
                    unique_by,
                    f'only a unique_count meter counts distinct values; this one is "{aggregation}"',
                )
            )
        s.finish()
        meters[name] = MeterConfig(
            name,
            unit,
            cast(Aggregation, aggregation),
            event_name,
            billable,
            cast(Reset, reset),
            unique_by,
            dimensions,
        )
    billed = expand(meters)
    _one_stripe_meter_each(billed, problems)
    return billed


def _dimensions(s: Section, table: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """`dimensions = { model = ["gpt-4o", "gpt-4o-mini"] }`: each attribute with the values it may
    take (an event with another is a dead letter), at most MAX_SERIES combinations."""
    dimensions: dict[str, tuple[str, ...]] = {}
    for attribute, values in table.items():
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            s.problem(
                f"dimensions.{attribute}", values, 'the values it may take, e.g. ["gpt-4o", "gpt-4o-mini"]'
            )
            continue
        bad = [v for v in values if not VALUE.match(v)]
        if bad:
            s.problem(
                f"dimensions.{attribute}",
                bad[0],
                "a value is 1 to 40 letters, digits, '.', '_' or '-', starting with a letter or digit "
                "(it names the value's Stripe meter and price)",
            )
            continue
        if len(set(values)) != len(values) or len({stripe_safe(v) for v in values}) != len(values):
            s.problem(
                f"dimensions.{attribute}",
                values,
                "values must differ (also with '.' read as '_', as Stripe's names have it)",
            )
            continue
        dimensions[attribute] = tuple(values)
    combinations = 1
    for values in dimensions.values():
        combinations *= len(values)
    if combinations > MAX_SERIES:
        s.problem(
            "dimensions",
            table,
            f"{combinations} combinations of values: at most {MAX_SERIES}, each a Stripe meter and a "
            "price per plan",
        )
        return {}
    return dimensions


def _aggregation_check(value: str) -> str | None:
    return None if value in AGGREGATIONS else f"must be one of {', '.join(AGGREGATIONS)}"


def _reset_check(value: str) -> str | None:
    if value in RESETS:
        return None
    if value == "billing_period":
        return (
            'is not metered yet: periods are UTC calendar months (reset = "calendar_month"), which '
            "Stripe bills exactly when subscriptions renew on the 1st (billing_cycle_anchor)"
        )
    return f"must be one of {', '.join(RESETS)}"


def legacy_levels(meters: Mapping[str, MeterConfig]) -> list[ConfigProblem]:
    """A `last` meter's level falls as well as rises, and Stripe's legacy usage records take no
    negative quantity ("quantity: The usage quantity", a non-negative integer;
    https://stripe.com/docs/api/usage_records/create): its falls could not be billed. (A
    time_weighted hour that a late event lowers is set to its total at its own timestamp, as a
    `sum` window is: sinks.stripe.modes.UsageRecords.)"""
    return [
        ConfigProblem(
            f"meters.{meter.name}.aggregation",
            meter.aggregation,
            'stripe.mode = "usage_records" cannot lower usage by an increment, and a last meter\'s '
            'level falls: use stripe.mode = "meter_events" or "meter_event_stream"',
        )
        for meter in meters.values()
        if meter.aggregation == "last"
    ]


def _one_stripe_meter_each(meters: Mapping[str, MeterConfig], problems: list[ConfigProblem]) -> None:
    """Two meters reporting under one Stripe event name would bill into one Stripe meter: the
    customer would pay for each meter's usage at the other's price too."""
    by_event: dict[str, list[str]] = {}
    for meter in meters.values():
        by_event.setdefault(meter.stripe_event_name, []).append(meter.name)
    for event_name, names in by_event.items():
        if len(names) > 1:
            problems.append(
                ConfigProblem(
                    f"meters.{names[1]}.stripe_event_name",
                    event_name,
                    f"meters {' and '.join(names)} would report into one Stripe meter: each meter needs "
                    "its own stripe_event_name",
                )
            )


def _billable(table: dict[str, Any], s: Section) -> dict[str, tuple[str, ...]]:
    rules: dict[str, tuple[str, ...]] = {}
    for attribute, patterns in table.items():
        if isinstance(patterns, str):
            patterns = [patterns]
        if (
            not isinstance(patterns, list)
            or not patterns
            or not all(isinstance(p, str) and p for p in patterns)
        ):
            s.problem(
                f"billable.{attribute}", patterns, 'must be a non-empty list of glob patterns, e.g. ["2??"]'
            )
            continue
        rules[attribute] = tuple(patterns)
    return rules


_METER_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
