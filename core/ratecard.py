"""The rate card's types: plans, their metered prices and tiers, as the configuration declares
them. Their arithmetic (billed quantities, lines, invoices) is reconciler.billing.pricing's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from meterline.core.currencies import Currency

Rounding = Literal["up", "down", "half_up"]


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
    billed_by_stripe: bool = True
    """False: priced here (preview, dashboard) but invoiced some other way, never through Stripe."""


@dataclass(frozen=True)
class Plan:
    name: str
    currency: Currency
    base_fee: Decimal
    prices: Mapping[str, MeterPrice]


def terms(price: MeterPrice, currency: Currency, usage_unit: str) -> str:
    """How a price bills, in words, as `config check` shows the rate card: "500000 call included,
    then 0.001 usd per call"; "graduated: up to 1000 at 0.01 usd, then at 0.005 usd per 1K tokens
    (1000 token each)". Quantities are in the billed unit. Pure."""
    code, unit = currency.code, price.billed_unit
    if price.tiers:
        steps = [
            (f"up to {t.up_to:f}" if t.up_to is not None else "then")
            + f" at {t.unit_price:f} {code}"
            + (f" + {t.flat_fee:f} {code} flat" if t.flat_fee else "")
            for t in price.tiers
        ]
        text = f"{price.tiers_mode}: {', '.join(steps)} per {unit}"
    else:
        text = f"{price.overage_price or 0:f} {code} per {unit}"
    if price.per != 1:
        text += f" ({price.per:f} {usage_unit} each)"
    if price.included:
        text = f"{price.included:f} {unit} included, then {text}"
    if not price.billed_by_stripe:
        text += "; not billed through Stripe"
    return text
