"""Usage alerts: which thresholds a customer's usage of a meter has crossed in a billing period, and
each crossing's identity. Pure: `meterline alerts` (reconciler.alerts.role) feeds it the periods'
exact totals and raises what it returns once.

An alert's id is derived from (customer, meter, period start, threshold) only, so however often the
usage is looked at, and whatever restarts, replays or duplicate aggregates happen, a crossing has
one id: the record on `usage.alerts` and the webhook to the product carry it, and a repeat of
either is recognisable as one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass
from decimal import Decimal

from meterline.core.config import AlertRule
from meterline.core.ratecard import Plan
from meterline.reconciler.billing.invoice_text import quantity_text
from meterline.reconciler.billing.periods import projected_usage
from meterline.reconciler.billing.pricing import billed_quantity, meter_line

PROJECTION_FROM = Decimal("0.1")
"""The projection is judged only once this share of the period has passed: a first day's burst
projects nothing a customer should be warned about."""


@dataclass(frozen=True)
class Alert:
    id: str
    customer_id: str
    meter: str
    period_start: int
    period_end: int
    """Epoch ms: the billing period the usage is in."""
    threshold: str
    """What was crossed, in words: "80% of 1,000,000 included", "spend $100.00", "projected overage"."""
    limit: Decimal
    """The threshold in billed units (included shares, projection) or money (spend)."""
    observed: Decimal
    """Usage in billed units, spend, or projected usage when it was seen crossed."""
    raised_at: int
    """Epoch ms."""

    def payload(self) -> bytes:
        """The alert as the topic keeps it and the webhook sends it."""
        document = {"type": "usage.alert", **asdict(self)}
        return json.dumps(document, default=str, sort_keys=True, separators=(",", ":")).encode()


def alert_id(customer: str, meter: str, period_start: int, threshold: str) -> str:
    digest = hashlib.sha256("\x00".join([customer, meter, str(period_start), threshold]).encode())
    return f"mla_{digest.hexdigest()[:32]}"


def crossed(
    rule: AlertRule,
    plan: Plan,
    customer: str,
    period: tuple[int, int],
    used: int,
    now_ms: int,
) -> list[Alert]:
    """The thresholds of `rule` that `used` base units of its meter, so far in `period` (epoch ms),
    have reached; the caller raises those it has not raised before."""
    price = plan.prices[rule.meter]
    start, end = period
    quantity = billed_quantity(price, used)
    found: list[tuple[str, Decimal, Decimal]] = []
    for share in rule.included_shares:
        limit = price.included * share
        if quantity >= limit:
            found.append(
                (
                    f"{quantity_text(share * 100)}% of {quantity_text(price.included)} included",
                    limit,
                    quantity,
                )
            )
    if rule.spend:
        spent = meter_line(price, used, plan.currency).amount
        found += [(f"spend {plan.currency.format(a)}", a, spent) for a in rule.spend if spent >= a]
    elapsed = Decimal(now_ms - start) / (end - start) if end > start else Decimal(0)
    if rule.projected_overage and PROJECTION_FROM <= elapsed < 1:
        projected = billed_quantity(
            price, projected_usage({rule.meter: used}, start, end, now_ms)[rule.meter]
        )
        if projected > price.included:
            found.append(("projected overage", price.included, projected))
    return [
        Alert(
            alert_id(customer, rule.meter, start, text),
            customer,
            rule.meter,
            start,
            end,
            text,
            limit,
            seen,
            now_ms,
        )
        for text, limit, seen in found
    ]


SIGNATURE_HEADER = "Meterline-Signature"


def signature(secret: str, timestamp_s: int, payload: bytes) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.payload">`: Stripe's scheme
    (https://docs.stripe.com/webhooks#verify-manually), so that a product that verifies Stripe's
    webhooks verifies these the same way, and refuses a replay past its tolerance."""
    mac = hmac.new(secret.encode(), f"{timestamp_s}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp_s},v1={mac}"
