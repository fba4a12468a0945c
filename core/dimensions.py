"""A meter priced per attribute value (`dimensions = { model = ["gpt-4o", "gpt-4o-mini"] }`).

Each combination of declared values is a series: metered, stored, reported to Stripe and priced as
a meter of its own, named `<meter>.<value>[.<value>...]` (in the order the dimensions are declared).
Stripe's v1 prices each bill one meter, whose events carry no dimension a price could select by, so
a value is billed exactly only by a meter and a price of its own. Events still name the declared
meter and carry the values as attributes; the stream's judge turns each into its series
(streams.judge), so that windows, dedup, revisions and every sink key by the series, and a meter
without dimensions keeps its name, identity and history exactly. Pure.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace

from meterline.core.config import MeterConfig

VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
"""A declared value: what may follow a meter's name in a series, and in Stripe's names for it."""

MAX_SERIES = 20
"""The most series one meter may declare (its values' combinations): each is a price of every plan
that prices it, and a Stripe subscription holds at most 20 items, one per price (config_ratecard
checks each plan's count)."""


def series_name(meter: str, values: Sequence[str]) -> str:
    return ".".join((meter, *values))


def stripe_safe(name: str) -> str:
    """`name` with what is not a letter, digit, `_` or `-` as `_`: Stripe's pages do not say which
    characters its ids and event names take, so the safe side (letters, digits, `_`, `-`)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def expand(declared: Mapping[str, MeterConfig]) -> dict[str, MeterConfig]:
    """The meters billed: each declared meter without dimensions as it is, and a series per
    combination of a dimensioned meter's values."""
    billed: dict[str, MeterConfig] = {}
    for name, meter in declared.items():
        if not meter.dimensions:
            billed[name] = meter
            continue
        attributes = list(meter.dimensions)
        for values in itertools.product(*(meter.dimensions[a] for a in attributes)):
            series = series_name(name, values)
            billed[series] = replace(
                meter,
                name=series,
                stripe_event_name=stripe_safe("_".join((meter.stripe_event_name, *values))),
                dimensions={},
                declared=name,
                values=tuple(zip(attributes, values, strict=True)),
            )
    return billed


def declared_of(billed: Mapping[str, MeterConfig]) -> dict[str, MeterConfig]:
    """The meters as declared (what events name) from the meters billed: `expand` undone."""
    declared: dict[str, MeterConfig] = {}
    for name, meter in billed.items():
        if not meter.declared:
            declared[name] = meter
            continue
        known = declared.get(meter.declared)
        dimensions = {a: list(v) for a, v in known.dimensions.items()} if known else {}
        for attribute, value in meter.values:
            if value not in dimensions.setdefault(attribute, []):
                dimensions[attribute].append(value)
        declared[meter.declared] = replace(
            meter,
            name=meter.declared,
            dimensions={a: tuple(v) for a, v in dimensions.items()},
            declared="",
            values=(),
        )
    return declared
