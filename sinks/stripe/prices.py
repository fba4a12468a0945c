"""A rate card price as a Stripe metered price: pure. Stripe amounts are in the currency's minor
unit (cents), as decimal strings; a price Stripe cannot bill exactly as meterline's invoice preview
computes it is refused with the reason, never approximated.

What Stripe can represent: a quantity divided by `per` only on a per-unit price, rounded up or
down to a whole unit (`transform_quantity`); tiers (graduated or volume) on the quantity as
reported; included + overage as two graduated tiers (the included ones at 0).
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any

from reconciler.pricing import MeterPrice, Plan

MINOR_UNITS = Decimal(100)


def lookup_key(plan: str, meter: str) -> str:
    return f"meterline_{plan}_{meter}"


def base_fee_lookup_key(plan: str) -> str:
    return f"meterline_{plan}_base"


def _cents(amount: Decimal) -> str:
    return format((amount * MINOR_UNITS).normalize(), "f")


def metered_price(plan: Plan, price: MeterPrice, meter_id: str, product: str) -> dict[str, Any] | str:
    """The params of `POST /v1/prices` for `price`, or why Stripe cannot bill it exactly."""
    params: dict[str, Any] = {
        "product": product,
        "currency": plan.currency,
        "lookup_key": lookup_key(plan.name, price.meter),
        "recurring": {"interval": "month", "usage_type": "metered", "meter": meter_id},
        "metadata": {"meterline_meter": price.meter, "meterline_plan": plan.name},
    }
    if price.per != 1:
        if price.tiers_mode is not None or price.included:
            return f"{price.meter}: Stripe divides quantities only on per-unit prices (no tiers or included)"
        if price.decimals or price.rounding == "half_up":
            return f"{price.meter}: Stripe rounds a divided quantity up or down to whole units only"
        params["transform_quantity"] = {"divide_by": int(price.per), "round": price.rounding}
    if price.tiers_mode is not None:
        params["billing_scheme"] = "tiered"
        params["tiers_mode"] = price.tiers_mode
        params["tiers"] = [
            {
                "up_to": "inf" if t.up_to is None else int(t.up_to),
                "unit_amount_decimal": _cents(t.unit_price),
                **({"flat_amount_decimal": _cents(t.flat_fee)} if t.flat_fee else {}),
            }
            for t in price.tiers
        ]
    elif price.included:
        params["billing_scheme"] = "tiered"
        params["tiers_mode"] = "graduated"
        params["tiers"] = [
            {"up_to": int(price.included), "unit_amount_decimal": "0"},
            {"up_to": "inf", "unit_amount_decimal": _cents(price.overage_price or Decimal(0))},
        ]
    else:
        params["unit_amount_decimal"] = _cents(price.overage_price or Decimal(0))
    params["metadata"]["meterline_fingerprint"] = fingerprint(params)
    return params


def base_fee_price(plan: Plan, product: str) -> dict[str, Any]:
    params: dict[str, Any] = {
        "product": product,
        "currency": plan.currency,
        "lookup_key": base_fee_lookup_key(plan.name),
        "unit_amount_decimal": _cents(plan.base_fee),
        "recurring": {"interval": "month", "usage_type": "licensed"},
        "metadata": {"meterline_plan": plan.name},
    }
    params["metadata"]["meterline_fingerprint"] = fingerprint(params)
    return params


def fingerprint(params: dict[str, Any]) -> str:
    """What identifies a price's terms: a changed rate card has another fingerprint."""
    terms = {k: v for k, v in params.items() if k != "metadata"}
    return hashlib.sha256(json.dumps(terms, sort_keys=True).encode()).hexdigest()[:16]
