"""Reading Stripe's webhook events: pure, so that they are fuzzed without I/O
(tests/unit/test_fuzz.py). Whatever the bytes, each either reads or raises Malformed: a record that
crashed the consumer would stop the role at the same offset after every restart."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import stripe

from meterline.sinks.stripe.customers import KnownCustomer


class Malformed(ValueError):
    """An event whose content meterline cannot read: logged and recorded, not retried."""


DATETIME_MAX = 2**32 - 1
"""ClickHouse's DateTime holds epoch seconds up to here; a larger one would fail the insert."""


def envelope(payload: bytes) -> tuple[str, str, dict[str, Any]]:
    """(id, type, the JSON object) of a record on stripe.webhooks."""
    try:
        raw = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested beyond Python's stack
        raise Malformed(f"not JSON: {type(exc).__name__}") from None
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("id"), str)
        or not isinstance(raw.get("type"), str)
    ):
        raise Malformed("not a Stripe event: a JSON object with a string id and type")
    return raw["id"], raw["type"], raw


def snapshot(payload: bytes) -> dict[str, Any]:
    """A snapshot event as stripe-python parses it, as a dict."""
    try:
        document: dict[str, Any] = stripe.Webhook.construct_event_without_verification(payload).to_dict()
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise Malformed(f"stripe-python cannot read it: {type(exc).__name__}: {exc}") from None
    return document


def created_of(raw: dict[str, Any]) -> int:
    """Epoch seconds: a snapshot event's `created` is one, a thin event's is RFC 3339."""
    created = raw.get("created", 0)
    if isinstance(created, str):
        try:
            created = int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
        except ValueError:
            raise Malformed(f"created {created!r}: neither epoch seconds nor RFC 3339") from None
    return epoch_of(created, "created")


INVOICE_COLUMNS = (
    "invoice_id",
    "stripe_customer",
    "status",
    "period_start",
    "period_end",
    "lines",
    "event_created",
)
SUBSCRIPTION_COLUMNS = (
    "subscription_id",
    "stripe_customer",
    "status",
    "current_period_start",
    "current_period_end",
    "event_created",
)

SUBSCRIPTION_ITEM_COLUMNS = (
    "subscription_id",
    "item_id",
    "stripe_customer",
    "customer_id",
    "status",
    "price_id",
    "price_lookup_key",
    "current_period_start",
    "current_period_end",
    "event_created",
    "billing_mode",
)


CUSTOMER_EVENTS = ("customer.created", "customer.updated", "customer.deleted")


def known_customer(event: dict[str, Any], metadata_key: str) -> KnownCustomer:
    """customer.created/updated/deleted -> the meterline customer its Stripe customer bills: the
    metadata key's value, none once deleted (https://docs.stripe.com/api/events/types)."""
    customer = object_of(object_of(event, "data"), "object")
    ours = text_of(object_of(customer, "metadata"), metadata_key)
    if event.get("type") == "customer.deleted" or customer.get("deleted") is True:
        ours = ""
    return KnownCustomer(
        text_of(customer, "id", required=True),
        ours,
        "webhook",
        epoch_of(event.get("created", 0), "created") * 1000,
    )


def invoice_row(event: dict[str, Any]) -> list[Any]:
    """invoice.finalized -> its row of stripe_invoices."""
    invoice = object_of(object_of(event, "data"), "object")
    lines = object_of(invoice, "lines").get("data", [])
    if not isinstance(lines, list):
        raise Malformed(f"invoice lines.data {lines!r:.80}: not a list")
    return [
        text_of(invoice, "id", required=True),
        text_of(invoice, "customer"),
        text_of(invoice, "status") or "open",
        epoch_of(invoice.get("period_start", 0), "period_start"),
        epoch_of(invoice.get("period_end", 0), "period_end"),
        json.dumps(lines),
        epoch_of(event.get("created", 0), "created"),
    ]


PAYMENT_OUTCOMES = {"invoice.paid": "paid", "invoice.payment_failed": "failed"}
"""Stripe's payment events of an invoice ("the invoice is successfully paid", "a payment for an
invoice failed": https://docs.stripe.com/billing/subscriptions/webhooks). A failed invoice is
retried by Stripe's dunning and may be paid later: each event is its own row, and the billing
review reads an invoice's latest."""
PAYMENT_COLUMNS = (
    "event_id",
    "invoice_id",
    "stripe_customer",
    "outcome",
    "amount_due",
    "amount_paid",
    "currency",
    "attempt_count",
    "period_start",
    "period_end",
    "event_created",
)


def payment_row(event: dict[str, Any]) -> list[Any]:
    """invoice.paid or invoice.payment_failed -> its row of stripe_invoice_payments (the invoice's
    fields: https://docs.stripe.com/api/invoices/object)."""
    invoice = object_of(object_of(event, "data"), "object")
    outcome = PAYMENT_OUTCOMES.get(text_of(event, "type"))
    if outcome is None:
        raise Malformed(f"type {event.get('type')!r:.80}: not an invoice payment event")
    return [
        text_of(event, "id", required=True),
        text_of(invoice, "id", required=True),
        text_of(invoice, "customer"),
        outcome,
        _count(invoice, "amount_due", INT64_MAX),
        _count(invoice, "amount_paid", INT64_MAX),
        text_of(invoice, "currency"),
        _count(invoice, "attempt_count", UINT32_MAX),
        epoch_of(invoice.get("period_start", 0), "period_start"),
        epoch_of(invoice.get("period_end", 0), "period_end"),
        epoch_of(event.get("created", 0), "created"),
    ]


INT64_MAX, UINT32_MAX = 2**63 - 1, 2**32 - 1


def _count(owner: dict[str, Any], key: str, most: int) -> int:
    """A non-negative integer its column holds (amounts are in the minor unit)."""
    value = owner.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise Malformed(f"{key} {value!r:.80}: not a count (0 to {most})")
    return value


def subscription_rows(event: dict[str, Any], meterline_customer: str) -> tuple[list[list[Any]], list[Any]]:
    """customer.subscription.* -> (its items' rows, its own row). Since API 2025-03-31.basil the
    period is on the items; before, on the subscription: both are read."""
    subscription = object_of(object_of(event, "data"), "object")
    items = object_of(subscription, "items").get("data", [])
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise Malformed(f"subscription items.data {items!r:.80}: not a list of objects")
    created = epoch_of(event.get("created", 0), "created")
    customer = text_of(subscription, "customer")
    status = text_of(subscription, "status")
    billing_mode = object_of(subscription, "billing_mode") if subscription.get("billing_mode") else {}

    def period(owner: dict[str, Any], edge: str) -> int:
        value = owner.get(f"current_period_{edge}")
        if value is None and owner is not subscription:
            return period(subscription, edge)
        return epoch_of(value, f"current_period_{edge}")

    periods = [(period(item, "start"), period(item, "end")) for item in items]
    if not periods:  # no items: only the pre-basil shape has a period of its own
        periods = [(period(subscription, "start"), period(subscription, "end"))]
    subscription_id = text_of(subscription, "id", required=True)
    item_rows = [
        [
            subscription_id,
            text_of(item, "id", required=True),
            customer,
            meterline_customer,
            status,
            text_of(object_of(item, "price"), "id"),
            text_of(object_of(item, "price"), "lookup_key"),
            start,
            end,
            created,
            text_of(billing_mode, "type") or "classic",
        ]
        for item, (start, end) in zip(items, periods, strict=False)
    ]
    own = [
        subscription_id,
        customer,
        status,
        min(start for start, _ in periods),
        max(end for _, end in periods),
        created,
    ]
    return item_rows, own


def meter_errors(event: dict[str, Any]) -> tuple[int, list[str], dict[str, tuple[str, str]]]:
    """v1.billing.meter.error_report_triggered, fetched -> (how many Stripe refused, the error
    codes, identifier -> (code, message) of the samples)."""
    reason = object_of(object_of(event, "data"), "reason")
    error_types = reason.get("error_types", [])
    if not isinstance(error_types, list) or not all(isinstance(t, dict) for t in error_types):
        raise Malformed(f"error_types {error_types!r:.80}: not a list of objects")
    samples: dict[str, tuple[str, str]] = {}
    codes: set[str] = set()
    for error_type in error_types:
        code = text_of(error_type, "code", required=True)
        codes.add(code)
        sampled = error_type.get("sample_errors", [])
        if not isinstance(sampled, list) or not all(isinstance(x, dict) for x in sampled):
            raise Malformed(f"sample_errors {sampled!r:.80}: not a list of objects")
        for sample in sampled:
            identifier = text_of(object_of(sample, "request"), "identifier", required=True)
            samples[identifier] = (code, text_of(sample, "error_message"))
    count = reason.get("error_count", len(samples))
    if not isinstance(count, int):
        raise Malformed(f"error_count {count!r:.80}: not an integer")
    return (
        count,
        sorted({code for code, _ in samples.values()} | {str(t["code"]) for t in error_types}),
        samples,
    )


def object_of(owner: dict[str, Any], key: str) -> dict[str, Any]:
    value = owner.get(key, {})
    if not isinstance(value, dict):
        raise Malformed(f"{key} {value!r:.80}: not an object")
    return value


def text_of(owner: dict[str, Any], key: str, required: bool = False) -> str:
    value = owner.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise Malformed(f"{key} {value!r:.80}: not a string")
    return value


def epoch_of(value: Any, what: str) -> int:
    """Epoch seconds a DateTime column can hold."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= DATETIME_MAX:
        raise Malformed(f"{what} {value!r:.80}: not epoch seconds (0 to {DATETIME_MAX})")
    return value
