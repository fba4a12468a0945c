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
