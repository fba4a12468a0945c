"""An invoice as people and machines read it: the preview, quote, dispute report and dashboard all
print it from here, so that each shows the same lines, breakdown and cents."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from meterline.core.currencies import Currency
from meterline.reconciler.billing.pricing import Invoice, Line

NOT_BILLED_BY_STRIPE = "not billed through Stripe"


def quantity_text(quantity: Decimal) -> str:
    return f"{quantity.normalize():,f}" if quantity != quantity.to_integral() else f"{int(quantity):,}"


def describe(invoice: Invoice) -> str:
    """One line of text in the seed's shape:
    "Included API calls 1,000,000 / Overage API calls 200,000 at $0.001 / Total $200.00"."""
    parts = []
    for line in invoice.lines:
        if line.meter is None:  # the base fee
            parts.append(f"{line.description} {invoice.currency.format(line.amount)}")
            continue
        for part in line.parts:
            text = f"{part.description} {quantity_text(part.quantity)}"
            if part.unit_price:
                text += f" at {invoice.currency.format(part.unit_price)}"
            parts.append(text)
    parts.append(f"Total {invoice.currency.format(invoice.total)}")
    return " / ".join(parts)


def rows(invoice: Invoice) -> list[dict[str, str]]:
    """The table: each Stripe line with its rounded amount, its breakdown indented beneath it with
    exact amounts (so that a cent of rounding can be seen), then the total."""
    table = []
    for line in invoice.lines:
        unit_price = line.unit_price
        table.append(
            {
                "line": line.description + ("" if line.billed_by_stripe else f" ({NOT_BILLED_BY_STRIPE})"),
                "quantity": quantity_text(line.quantity),
                "unit price": "" if unit_price is None else invoice.currency.format(unit_price),
                "amount": invoice.currency.format(line.amount),
            }
        )
        if len(line.parts) > 1 or line.exact_amount != line.amount:
            table.extend(
                {
                    "line": f"  {part.description}",
                    "quantity": quantity_text(part.quantity),
                    "unit price": invoice.currency.format(part.unit_price),
                    "amount": invoice.currency.format(part.amount),
                }
                for part in line.parts
            )
    if invoice.stripe_total != invoice.total:
        table.append(_total_row("Billed through Stripe", invoice.stripe_total, invoice.currency))
    table.append(_total_row("Total", invoice.total, invoice.currency))
    return table


def to_json(invoice: Invoice) -> dict[str, Any]:
    """Exact decimal strings, minor units and every part, for machines."""
    unit = invoice.currency
    return {
        "plan": invoice.plan,
        "currency": invoice.currency.code,
        "lines": [_line_json(line, unit.to_minor(line.amount)) for line in invoice.lines],
        "total": str(invoice.total),
        "total_minor_units": int(unit.to_minor(invoice.total)),
        "stripe_total": str(invoice.stripe_total),
        "notes": list(invoice.notes),
    }


def _line_json(line: Line, minor: Decimal) -> dict[str, Any]:
    return {
        "description": line.description,
        "meter": line.meter,
        "quantity": str(line.quantity),
        "unit_price": None if line.unit_price is None else str(line.unit_price),
        "exact_amount": str(line.exact_amount),
        "amount": str(line.amount),
        "amount_minor_units": int(minor),
        "billed_by_stripe": line.billed_by_stripe,
        "parts": [
            {
                "description": p.description,
                "quantity": str(p.quantity),
                "unit_price": str(p.unit_price),
                "amount": str(p.amount),
            }
            for p in line.parts
        ],
    }


def _total_row(label: str, amount: Decimal, unit: Currency) -> dict[str, str]:
    return {"line": label, "quantity": "", "unit price": "", "amount": unit.format(amount)}
