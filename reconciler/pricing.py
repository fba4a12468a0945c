"""The rate card's arithmetic: from a period's usage to invoice lines. Pure; money is Decimal.

A meter's price turns usage in the meter's base unit (calls, bytes, ms) into billed units (calls,
GB, seconds: `per` base units each), rounded by the declared rule to the declared decimals, then
prices them one of three ways:
- included + overage: the first `included` units at no charge, the rest at `overage_price`;
- graduated tiers: each tier prices the units that fall in it (plus its flat fee if reached);
- volume tiers: the tier the whole quantity falls in prices every unit (plus its flat fee).
Amounts are exact products; the invoice total is rounded once, half up, to the currency's minor
unit, so that no line's rounding compounds into another's ("why is it off by $0.01?").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Literal

Rounding = Literal["up", "down", "half_up"]
_ROUNDING = {"up": ROUND_CEILING, "down": ROUND_FLOOR, "half_up": ROUND_HALF_UP}
CENT = Decimal("0.01")


@dataclass(frozen=True)
class Tier:
    up_to: Decimal | None
    """The last billed unit of the tier (inclusive); None: no end."""
    unit_price: Decimal
    flat_fee: Decimal = Decimal(0)


@dataclass(frozen=True)
class MeterPrice:
    meter: str
    label: str
    """How the invoice names it: "API calls"."""
    billed_unit: str
    per: Decimal = Decimal(1)
    """Base units in one billed unit (1e9 bytes per GB)."""
    decimals: int = 0
    rounding: Rounding = "up"
    included: Decimal = Decimal(0)
    overage_price: Decimal | None = None
    tiers_mode: Literal["graduated", "volume"] | None = None
    tiers: tuple[Tier, ...] = ()


@dataclass(frozen=True)
class Plan:
    name: str
    currency: str
    base_fee: Decimal
    prices: Mapping[str, MeterPrice]


@dataclass(frozen=True)
class Line:
    description: str
    meter: str | None
    quantity: Decimal
    unit_price: Decimal | None
    amount: Decimal


@dataclass(frozen=True)
class Invoice:
    plan: str
    currency: str
    lines: tuple[Line, ...]
    total: Decimal
    """Sum of the lines, rounded half up to cents once."""


def billed_quantity(price: MeterPrice, base_units: int) -> Decimal:
    """Usage in billed units, rounded by the price's rule to its decimals."""
    exact = Decimal(base_units) / price.per
    step = Decimal(1).scaleb(-price.decimals)
    return exact.quantize(step, rounding=_ROUNDING[price.rounding])


def meter_lines(price: MeterPrice, base_units: int) -> list[Line]:
    quantity = billed_quantity(price, base_units)
    if price.tiers_mode is None:
        return _included_and_overage(price, quantity)
    if price.tiers_mode == "graduated":
        return _graduated(price, quantity)
    return _volume(price, quantity)


def invoice(plan: Plan, usage: Mapping[str, int]) -> Invoice:
    """The plan's lines for a period's usage (meter -> base units; missing meters used nothing)."""
    lines: list[Line] = []
    if plan.base_fee:
        lines.append(Line("Base fee", None, Decimal(1), plan.base_fee, plan.base_fee))
    for meter, price in plan.prices.items():
        lines.extend(meter_lines(price, usage.get(meter, 0)))
    total = sum((line.amount for line in lines), Decimal(0)).quantize(CENT, rounding=ROUND_HALF_UP)
    return Invoice(plan.name, plan.currency, tuple(lines), total)


def _included_and_overage(price: MeterPrice, quantity: Decimal) -> list[Line]:
    lines = []
    if price.included:
        lines.append(
            Line(
                f"Included {price.label}", price.meter, min(quantity, price.included), Decimal(0), Decimal(0)
            )
        )
    overage = max(quantity - price.included, Decimal(0))
    unit_price = price.overage_price or Decimal(0)
    label = f"Overage {price.label}" if price.included else price.label
    lines.append(Line(label, price.meter, overage, unit_price, overage * unit_price))
    return lines


def _graduated(price: MeterPrice, quantity: Decimal) -> list[Line]:
    lines = []
    floor = Decimal(0)
    for n, tier in enumerate(price.tiers, 1):
        if quantity <= floor and n > 1:
            break
        top = quantity if tier.up_to is None else min(quantity, tier.up_to)
        units = max(top - floor, Decimal(0))
        amount = units * tier.unit_price + (tier.flat_fee if units > 0 else Decimal(0))
        lines.append(
            Line(
                f"{price.label}, {_tier_range(floor, tier.up_to)}",
                price.meter,
                units,
                tier.unit_price,
                amount,
            )
        )
        if tier.up_to is None:
            break
        floor = tier.up_to
    return lines


def _volume(price: MeterPrice, quantity: Decimal) -> list[Line]:
    tier = next(t for t in price.tiers if t.up_to is None or quantity <= t.up_to)
    floor = _floor_of(price.tiers, tier)
    amount = quantity * tier.unit_price + (tier.flat_fee if quantity > 0 else Decimal(0))
    return [
        Line(
            f"{price.label}, all units at the {_tier_range(floor, tier.up_to)} rate",
            price.meter,
            quantity,
            tier.unit_price,
            amount,
        )
    ]


def _floor_of(tiers: Sequence[Tier], tier: Tier) -> Decimal:
    index = tiers.index(tier)
    return Decimal(0) if index == 0 else tiers[index - 1].up_to or Decimal(0)


def _tier_range(floor: Decimal, up_to: Decimal | None) -> str:
    return f"{floor + 1:,} and up" if up_to is None else f"{floor + 1:,} to {up_to:,}"


def money(amount: Decimal, currency: str) -> str:
    """$200.00; sub-cent unit prices keep their digits ($0.001)."""
    symbol = {"usd": "$", "eur": "€", "gbp": "£"}.get(currency.lower(), "")
    shown = amount.quantize(CENT) if amount == amount.quantize(CENT) else amount.normalize()
    text = f"{shown:,}"
    return f"{symbol}{text}" if symbol else f"{text} {currency.upper()}"


def quantity_text(quantity: Decimal) -> str:
    return f"{quantity.normalize():,}" if quantity != quantity.to_integral() else f"{int(quantity):,}"


def describe(invoice: Invoice) -> str:
    """One line of text in the seed's shape:
    "Included API calls 1,000,000 / Overage API calls 200,000 at $0.001 / Total $200.00"."""
    parts = []
    for line in invoice.lines:
        if line.meter is None:  # the base fee
            parts.append(f"{line.description} {money(line.amount, invoice.currency)}")
            continue
        text = f"{line.description} {quantity_text(line.quantity)}"
        if line.unit_price:
            text += f" at {money(line.unit_price, invoice.currency)}"
        parts.append(text)
    parts.append(f"Total {money(invoice.total, invoice.currency)}")
    return " / ".join(parts)
