"""How Stripe prices an invoice line, from its documented rules: the reference `reconciler/billing/pricing.py`
is tested against, and the demo's check of what Stripe would bill on Stripe's own prices and
totals. Written from Stripe's price object (minor units, `transform_quantity`, `tiers`), not from
meterline's rate card, so the two are independent.

- The quantity of a metered line is the sum of the meter's values in the period, divided by
  `transform_quantity.divide_by` and rounded `up` or `down` when the price has one
  (https://docs.stripe.com/billing/subscriptions/usage-based/transform-quantities).
- `per_unit`: quantity x `unit_amount_decimal`. `tiered`, graduated: each tier's units (from the
  previous `up_to` + 1 to its own `up_to`, inclusive) at its unit amount, plus its flat amount when
  units fall in it; volume: every unit at the tier the whole quantity falls in, plus its flat amount
  (https://docs.stripe.com/products-prices/pricing-models#tiered-pricing). A quantity of 0 falls in
  the first tier, whose first unit is 0 in Stripe's tables
  (https://docs.stripe.com/billing/subscriptions/usage-based/pricing-models), and `flat_amount` is
  "the flat billing amount for an entire tier, regardless of the number of units in the tier" (API
  reference): its flat amount is billed at no usage.
- The line is rounded to a whole minor unit, half up, before lines are summed ("Rounding occurs on
  the line item level ... 0.05 * 30 = 1.5, which is then rounded up to 2 cents ... each will be
  rounded before summing up the total",
  https://stripe.com/docs/billing/subscriptions/decimal-amounts).
Where the pages are silent (rounding inside a tiered line), the line is rounded once.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any


def line_quantity(price: Mapping[str, Any], usage: int) -> Decimal:
    transform = price.get("transform_quantity")
    if not transform:
        return Decimal(usage)
    rounding = ROUND_CEILING if transform["round"] == "up" else ROUND_FLOOR
    return (Decimal(usage) / Decimal(transform["divide_by"])).to_integral_value(rounding)


def line_amount(price: Mapping[str, Any], quantity: Decimal) -> int:
    """The line's amount in whole minor units."""
    if price.get("billing_scheme") == "tiered":
        exact = _tiered(price["tiers_mode"], price["tiers"], quantity)
    else:
        exact = quantity * Decimal(str(price["unit_amount_decimal"]))
    return int(exact.to_integral_value(ROUND_HALF_UP))


def _tiered(mode: str, tiers: list[Mapping[str, Any]], quantity: Decimal) -> Decimal:
    total, below = Decimal(0), Decimal(0)
    for n, tier in enumerate(tiers):
        top = None if tier["up_to"] in ("inf", None) else Decimal(tier["up_to"])
        unit = Decimal(str(tier.get("unit_amount_decimal") or 0))
        flat = Decimal(str(tier.get("flat_amount_decimal") or 0))
        if mode == "volume":
            if top is None or quantity <= top:
                return quantity * unit + flat
            continue
        units = (quantity if top is None else min(quantity, top)) - below
        if units <= 0 and n > 0:
            break
        total += units * unit + flat
        if top is None:
            break
        below = top
    return total
