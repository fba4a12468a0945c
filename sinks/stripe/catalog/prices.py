"""A rate card price as a Stripe price: pure. Stripe takes amounts in the currency's minor unit
(cents; whole yen) as decimal strings; a price Stripe cannot bill exactly as meterline's invoice
computes it is refused with the reason, never approximated.

How billed units reach Stripe: Stripe counts whole units, so a price billed with `decimals` counts
hundredths (for 2) of the billed unit. Stripe divides the reported base units by
`per / 10^decimals` and rounds up or down (`transform_quantity`), and the unit amount is per
hundredth. Egress at $0.09 per GB, 2 decimals, rounded up: divide_by 10,000,000 bytes, round up,
0.09 cents each. Where `per` divides 10^decimals instead (per 4 with 2 decimals), a base unit is a
whole number of hundredths and nothing is ever rounded: Stripe counts the base units, at the
price of one billed unit over `per`.

What Stripe cannot represent, each with its page:
- a quantity transform together with tiers or an included quantity (included units are a free
  first tier): "Quantity transformation isn't compatible with tiered pricing"
  (https://docs.stripe.com/billing/subscriptions/usage-based/transform-quantities);
- half-up rounding of a divided quantity: `transform_quantity.round` is `up` or `down` (same page);
- more than 12 decimals of a minor unit in a unit amount, and a flat amount that is not a whole
  number of minor units (https://stripe.com/docs/billing/subscriptions/decimal-amounts; the API's
  `flat_amount_decimal` "represents an integer in the minor units");
- `per` that neither is a whole multiple of 10^decimals nor divides it: `divide_by` is a whole
  number, and a quotient with more decimals than declared would need rounding Stripe cannot do;
- included together with tiers: two pricings of the same units.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any

from meterline.core.currencies import Currency
from meterline.core.ratecard import MeterPrice, Plan

MAX_UNIT_AMOUNT_DECIMALS = 12


def lookup_key(plan: str, meter: str) -> str:
    return f"meterline_{plan}_{meter}"


def base_fee_lookup_key(plan: str) -> str:
    return f"meterline_{plan}_base"


def stripe_terms(plan: Plan, price: MeterPrice) -> dict[str, Any] | str:
    """How Stripe prices `price` (billing scheme, amounts in minor units, quantity transform), or
    why it cannot bill it exactly."""
    unit = plan.currency
    scale = Decimal(10) ** price.decimals
    divide_by = price.per / scale
    if divide_by >= 1 and divide_by == divide_by.to_integral_value():
        stripe_units = scale  # per billed unit: Stripe counts hundredths (2 decimals) of it
    elif scale % price.per == 0:
        divide_by, stripe_units = Decimal(1), price.per  # Stripe counts the base units
    else:
        return (
            f"per = {price.per} neither is a whole multiple of 10^decimals ({scale}) nor divides "
            "it: Stripe divides the reported quantity by a whole number (transform_quantity.divide_by)"
        )
    if price.included and price.tiers_mode is not None:
        return "included and tiers price the same units twice: use a free first tier instead"
    terms: dict[str, Any] = {}
    if divide_by > 1:
        if price.tiers_mode is not None or price.included:
            return (
                "Stripe's quantity transform (per > 1) is not compatible with tiered pricing, and "
                "included units are a free first tier: price the meter in its base unit instead"
            )
        if price.rounding == "half_up":
            return "Stripe rounds a divided quantity up or down only (transform_quantity.round), not half up"
        terms["transform_quantity"] = {"divide_by": int(divide_by), "round": price.rounding}
    try:
        if price.tiers_mode is not None:
            terms["billing_scheme"] = "tiered"
            terms["tiers_mode"] = price.tiers_mode
            terms["tiers"] = [
                {
                    "up_to": "inf"
                    if t.up_to is None
                    else _whole(t.up_to * stripe_units, f"tier up_to {t.up_to}"),
                    "unit_amount_decimal": _unit_amount(unit, t.unit_price, stripe_units),
                    **({"flat_amount_decimal": _flat_amount(unit, t.flat_fee)} if t.flat_fee else {}),
                }
                for t in price.tiers
            ]
        elif price.included:
            terms["billing_scheme"] = "tiered"
            terms["tiers_mode"] = "graduated"
            terms["tiers"] = [
                {
                    "up_to": _whole(price.included * stripe_units, "included"),
                    "unit_amount_decimal": "0",
                },
                {
                    "up_to": "inf",
                    "unit_amount_decimal": _unit_amount(unit, _overage(price), stripe_units),
                },
            ]
        else:
            terms["unit_amount_decimal"] = _unit_amount(unit, _overage(price), stripe_units)
    except _Unrepresentable as exc:
        return str(exc)
    return terms


def metered_price(
    plan: Plan, price: MeterPrice, meter_id: str, product: str, legacy: bool = False
) -> dict[str, Any] | str:
    """The params of `POST /v1/prices` for `price`, or why Stripe cannot bill it exactly. `legacy`:
    a price legacy usage records can bill, without a meter ("a price with a usage_type of metered
    without a specified meter", which only a Stripe-Version before 2025-03-31.basil creates:
    https://docs.stripe.com/changelog/basil/2025-03-31/deprecate-legacy-usage-based-billing)."""
    terms = stripe_terms(plan, price)
    if isinstance(terms, str):
        return terms
    recurring = (
        {"interval": "month", "usage_type": "metered", "aggregate_usage": "sum"}
        if legacy
        else {"interval": "month", "usage_type": "metered", "meter": meter_id}
    )
    params: dict[str, Any] = {
        "product": product,
        "currency": plan.currency.code,
        "lookup_key": lookup_key(plan.name, price.meter),
        "recurring": recurring,
        "metadata": {"meterline_meter": price.meter, "meterline_plan": plan.name},
        **terms,
    }
    params["metadata"]["meterline_fingerprint"] = fingerprint(params)
    return params


def base_fee_terms(plan: Plan) -> dict[str, Any] | str:
    try:
        return {"unit_amount_decimal": _unit_amount(plan.currency, plan.base_fee, Decimal(1))}
    except _Unrepresentable as exc:
        return f"base fee: {exc}"


def base_fee_price(plan: Plan, product: str) -> dict[str, Any] | str:
    terms = base_fee_terms(plan)
    if isinstance(terms, str):
        return terms
    params: dict[str, Any] = {
        "product": product,
        "currency": plan.currency.code,
        "lookup_key": base_fee_lookup_key(plan.name),
        "recurring": {"interval": "month", "usage_type": "licensed"},
        "metadata": {"meterline_plan": plan.name},
        **terms,
    }
    params["metadata"]["meterline_fingerprint"] = fingerprint(params)
    return params


def fingerprint(params: dict[str, Any]) -> str:
    """What identifies a price's terms: a changed rate card has another fingerprint."""
    terms = {k: v for k, v in params.items() if k != "metadata"}
    return hashlib.sha256(json.dumps(terms, sort_keys=True).encode()).hexdigest()[:16]


class _Unrepresentable(ValueError):
    pass


def _overage(price: MeterPrice) -> Decimal:
    return price.overage_price or Decimal(0)


def _unit_amount(unit: Currency, amount: Decimal, scale: Decimal) -> str:
    """An amount per billed unit as minor units per Stripe unit (a 1/scale of a billed unit)."""
    minor = (unit.to_minor(amount) / scale).normalize()
    if -minor.as_tuple().exponent > MAX_UNIT_AMOUNT_DECIMALS:  # type: ignore[operator]
        raise _Unrepresentable(
            f"unit price {amount} {unit.code} is {minor:f} minor units per Stripe unit: more than the "
            f"{MAX_UNIT_AMOUNT_DECIMALS} decimals Stripe's unit_amount_decimal takes"
        )
    return format(minor, "f")


def _flat_amount(unit: Currency, amount: Decimal) -> str:
    minor = unit.to_minor(amount)
    if minor != minor.to_integral_value():
        raise _Unrepresentable(
            f"flat fee {amount} {unit.code} is {minor.normalize():f} minor units: Stripe's "
            "flat_amount_decimal is a whole number of minor units"
        )
    return format(minor.normalize(), "f")


def _whole(quantity: Decimal, what: str) -> int:
    if quantity != quantity.to_integral_value():
        raise _Unrepresentable(f"{what} is {quantity} Stripe units: Stripe's tiers end at whole units")
    return int(quantity)
