"""The rate card's arithmetic: from a period's usage to Stripe's invoice lines. Pure; money is Decimal.

An invoice is a list of lines that are exactly Stripe's line items: one for the base fee's price
and one per metered price. A metered price turns usage in the meter's base unit (calls, bytes, ms)
into billed units (calls, GB, seconds: `per` base units each), rounded by the declared rule to the
declared decimals, then prices them one of three ways, whose rows are the line's breakdown:
- included + overage: the first `included` units at no charge, the rest at `overage_price`;
- graduated tiers: each tier prices the units that fall in it (plus its flat fee if reached);
- volume tiers: the tier the whole quantity falls in prices every unit (plus its flat fee).
No usage falls in the first tier, whose flat fee is billed then too: Stripe's tiers start at
"First unit 0" (https://docs.stripe.com/billing/subscriptions/usage-based/pricing-models), a
volume price "bills at the tier corresponding to the amount of usage at the end of the period"
(https://docs.stripe.com/subscriptions/pricing-models/tiered-pricing), and a tier's flat amount
is "for an entire tier, regardless of the number of units in the tier" (API reference, price
tiers). A base fee carried as the first tier's flat fee is billed whatever the usage.
A line's exact amount is rounded half up to the currency's minor unit, and the total is the sum of
the rounded lines: Stripe rounds "on the line item level of your invoices ... each will be rounded
before summing up the total" (https://stripe.com/docs/billing/subscriptions/decimal-amounts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal

from meterline.core.currencies import Currency
from meterline.core.ratecard import MeterPrice, Plan, Tier

_ROUNDING = {"up": ROUND_CEILING, "down": ROUND_FLOOR, "half_up": ROUND_HALF_UP}


@dataclass(frozen=True)
class Part:
    """One row of a line's breakdown (the included units, the overage, a tier), exact."""

    description: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal
    """quantity x unit_price, plus the tier's flat fee where it applies; not rounded."""


@dataclass(frozen=True)
class Line:
    """One Stripe invoice line item: the base fee's price, or one metered price."""

    description: str
    meter: str | None
    """None for the base fee."""
    quantity: Decimal
    parts: tuple[Part, ...]
    exact_amount: Decimal
    amount: Decimal
    """exact_amount rounded half up to the currency's minor unit: what the invoice shows."""
    billed_by_stripe: bool = True

    @property
    def unit_price(self) -> Decimal | None:
        """The line's one rate, when it has one (a base fee, a plain per-unit price)."""
        return self.parts[0].unit_price if len(self.parts) == 1 else None


@dataclass(frozen=True)
class Invoice:
    plan: str
    currency: Currency
    lines: tuple[Line, ...]
    notes: tuple[str, ...] = ()
    """What the reader must know beside the lines (a part of the period Stripe does not bill)."""

    @property
    def total(self) -> Decimal:
        """The sum of the rounded lines (exact: each is a whole number of minor units)."""
        return self.currency.round(sum((line.amount for line in self.lines), Decimal(0)))

    @property
    def stripe_total(self) -> Decimal:
        """What Stripe's invoice totals: the lines of prices billed through Stripe."""
        stripe_lines = (line.amount for line in self.lines if line.billed_by_stripe)
        return self.currency.round(sum(stripe_lines, Decimal(0)))


def billed_quantity(price: MeterPrice, base_units: int) -> Decimal:
    """Usage in billed units, rounded by the price's rule to its decimals."""
    exact = Decimal(base_units) / price.per
    step = Decimal(1).scaleb(-price.decimals)
    return exact.quantize(step, rounding=_ROUNDING[price.rounding])


def meter_parts(price: MeterPrice, quantity: Decimal) -> list[Part]:
    """The breakdown of `quantity` billed units on `price`."""
    if price.tiers_mode is None:
        return _included_and_overage(price, quantity)
    if price.tiers_mode == "graduated":
        return _graduated(price, quantity)
    return [_volume(price, quantity)]


def meter_line(price: MeterPrice, base_units: int, unit: Currency) -> Line:
    quantity = billed_quantity(price, base_units)
    parts = tuple(meter_parts(price, quantity))
    exact = sum((p.amount for p in parts), Decimal(0))
    return Line(
        price.label,
        price.meter,
        quantity,
        parts,
        exact,
        unit.round(exact),
        price.billed_by_stripe,
    )


def invoice(plan: Plan, usage: Mapping[str, int]) -> Invoice:
    """The plan's lines for a period's usage (meter -> base units; missing meters used nothing)."""
    lines: list[Line] = []
    if plan.base_fee:
        fee = Part("Base fee", Decimal(1), plan.base_fee, plan.base_fee)
        lines.append(
            Line(
                "Base fee",
                None,
                Decimal(1),
                (fee,),
                plan.base_fee,
                plan.currency.round(plan.base_fee),
            )
        )
    for meter, price in plan.prices.items():
        lines.append(meter_line(price, usage.get(meter, 0), plan.currency))
    return Invoice(plan.name, plan.currency, tuple(lines), currency_notes(plan.currency))


def currency_notes(unit: Currency) -> tuple[str, ...]:
    """What the lines cannot promise in this currency. Stripe charges some currencies only in
    coarser steps than their minor unit (core.currencies.Currency.charge_step): a three-decimal
    currency's payments must end in 0 ("Your integration must round amounts to the nearest ten",
    https://docs.stripe.com/currencies), an ISK charge must be whole krónur. Stripe does not say
    how it rounds an invoice to that: the lines are rounded to the minor unit, and the charge may
    differ from their sum by up to half a step."""
    if unit.charge_step == 1:
        return ()
    step = unit.from_minor(unit.charge_step)
    rule = (
        "a three-decimal currency: Stripe charges amounts whose last digit is 0 (https://docs.stripe.com/currencies)"
        if unit.exponent == 3
        else "two-decimal in Stripe's API but charged in whole units "
        "(https://support.stripe.com/questions/deprecation-of-fractional-isk-charges-and-refunds)"
    )
    return (
        f"{unit.code.upper()} is {rule} and Stripe does not document how it rounds an invoice to "
        f"that; the charge may differ from this total by up to {unit.round(step / 2)}",
    )


def _included_and_overage(price: MeterPrice, quantity: Decimal) -> list[Part]:
    parts = []
    if price.included:
        parts.append(Part(f"Included {price.label}", min(quantity, price.included), Decimal(0), Decimal(0)))
    overage = max(quantity - price.included, Decimal(0))
    unit_price = price.overage_price or Decimal(0)
    label = f"Overage {price.label}" if price.included else price.label
    parts.append(Part(label, overage, unit_price, overage * unit_price))
    return parts


def _graduated(price: MeterPrice, quantity: Decimal) -> list[Part]:
    parts = []
    floor = Decimal(0)
    for n, tier in enumerate(price.tiers, 1):
        if quantity <= floor and n > 1:
            break
        top = quantity if tier.up_to is None else min(quantity, tier.up_to)
        units = max(top - floor, Decimal(0))
        reached = units > 0 or n == 1  # no usage is in the first tier
        amount = units * tier.unit_price + (tier.flat_fee if reached else Decimal(0))
        parts.append(Part(f"{price.label}, {_tier_range(floor, tier.up_to)}", units, tier.unit_price, amount))
        if tier.up_to is None:
            break
        floor = tier.up_to
    return parts


def _volume(price: MeterPrice, quantity: Decimal) -> Part:
    tier = next(t for t in price.tiers if t.up_to is None or quantity <= t.up_to)
    floor = _floor_of(price.tiers, tier)
    amount = quantity * tier.unit_price + tier.flat_fee
    return Part(
        f"{price.label}, all units at the {_tier_range(floor, tier.up_to)} rate",
        quantity,
        tier.unit_price,
        amount,
    )


def _floor_of(tiers: Sequence[Tier], tier: Tier) -> Decimal:
    index = tiers.index(tier)
    return Decimal(0) if index == 0 else tiers[index - 1].up_to or Decimal(0)


def _tier_range(floor: Decimal, up_to: Decimal | None) -> str:
    return f"{floor + 1:,} and up" if up_to is None else f"{floor + 1:,} to {up_to:,}"
