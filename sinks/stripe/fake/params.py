"""What each endpoint of the Stripe fake accepts, so that it refuses what Stripe refuses: an unknown
parameter (400 `parameter_unknown`, "Received unknown parameter: ..."), an integer that is not one
(`parameter_invalid_integer`), a boolean that is not one, a string over its length
(https://docs.stripe.com/error-codes). Facts from Stripe's OpenAPI specification 2025-09-30.clover,
as stripe-mock v0.197.0 bundles it (tests/integration/test_stripe_mock.py checks this table against
it): the top-level parameters of each endpoint, with their JSON type and maximum length. Legacy
usage records are gone from that specification; theirs are from
https://docs.stripe.com/api/usage_records/create (2024-06-20).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from meterline.sinks.stripe.fake.errors import invalid

SPEC_VERSION = "2025-09-30.clover"
Param = tuple[str, int | None]
"""JSON type ('' where the specification allows several), maximum length (strings)."""

ACCEPTED: dict[tuple[str, str], dict[str, Param]] = {
    ("POST", r"/v1/customers"): {
        "address": ("", None),
        "balance": ("integer", None),
        "business_name": ("", None),
        "cash_balance": ("object", None),
        "description": ("string", 5000),
        "email": ("string", 512),
        "expand": ("array", None),
        "individual_name": ("", None),
        "invoice_prefix": ("string", 5000),
        "invoice_settings": ("object", None),
        "metadata": ("", None),
        "name": ("string", 256),
        "next_invoice_sequence": ("integer", None),
        "payment_method": ("string", 5000),
        "phone": ("string", 20),
        "preferred_locales": ("array", None),
        "shipping": ("", None),
        "source": ("string", 5000),
        "tax": ("object", None),
        "tax_exempt": ("string", None),
        "tax_id_data": ("array", None),
        "test_clock": ("string", 5000),
    },
    ("GET", r"/v1/customers"): {
        "created": ("", None),
        "email": ("string", 512),
        "ending_before": ("string", 5000),
        "expand": ("array", None),
        "limit": ("integer", None),
        "starting_after": ("string", 5000),
        "test_clock": ("string", 5000),
    },
    ("GET", r"/v1/customers/search"): {
        "expand": ("array", None),
        "limit": ("integer", None),
        "page": ("string", 5000),
        "query": ("string", 5000),
    },
    ("GET", r"/v1/customers/([^/]+)"): {"expand": ("array", None)},
    ("POST", r"/v1/products"): {
        "active": ("boolean", None),
        "default_price_data": ("object", None),
        "description": ("string", 40000),
        "expand": ("array", None),
        "id": ("string", 5000),
        "images": ("array", None),
        "marketing_features": ("array", None),
        "metadata": ("object", None),
        "name": ("string", 5000),
        "package_dimensions": ("object", None),
        "shippable": ("boolean", None),
        "statement_descriptor": ("string", 22),
        "tax_code": ("string", None),
        "unit_label": ("string", 12),
        "url": ("string", 5000),
    },
    ("GET", r"/v1/products/([^/]+)"): {"expand": ("array", None)},
    ("POST", r"/v1/prices"): {
        "active": ("boolean", None),
        "billing_scheme": ("string", None),
        "currency": ("string", None),
        "currency_options": ("object", None),
        "custom_unit_amount": ("object", None),
        "expand": ("array", None),
        "lookup_key": ("string", 200),
        "metadata": ("object", None),
        "nickname": ("string", 5000),
        "product": ("string", 5000),
        "product_data": ("object", None),
        "recurring": ("object", None),
        "tax_behavior": ("string", None),
        "tiers": ("array", None),
        "tiers_mode": ("string", None),
        "transfer_lookup_key": ("boolean", None),
        "transform_quantity": ("object", None),
        "unit_amount": ("integer", None),
        "unit_amount_decimal": ("string", None),
    },
    ("GET", r"/v1/prices"): {
        "active": ("boolean", None),
        "created": ("", None),
        "currency": ("string", None),
        "ending_before": ("string", 5000),
        "expand": ("array", None),
        "limit": ("integer", None),
        "lookup_keys": ("array", None),
        "product": ("string", 5000),
        "recurring": ("object", None),
        "starting_after": ("string", 5000),
        "type": ("string", None),
    },
    ("POST", r"/v1/billing/meters"): {
        "customer_mapping": ("object", None),
        "default_aggregation": ("object", None),
        "display_name": ("string", 250),
        "event_name": ("string", 100),
        "event_time_window": ("string", None),
        "expand": ("array", None),
        "value_settings": ("object", None),
    },
    ("GET", r"/v1/billing/meters"): {
        "ending_before": ("string", 5000),
        "expand": ("array", None),
        "limit": ("integer", None),
        "starting_after": ("string", 5000),
        "status": ("string", None),
    },
    ("GET", r"/v1/billing/meters/([^/]+)"): {"expand": ("array", None)},
    ("GET", r"/v1/billing/meters/([^/]+)/event_summaries"): {
        "customer": ("string", 5000),
        "end_time": ("integer", None),
        "ending_before": ("string", 5000),
        "expand": ("array", None),
        "limit": ("integer", None),
        "start_time": ("integer", None),
        "starting_after": ("string", 5000),
        "value_grouping_window": ("string", None),
    },
    ("POST", r"/v1/subscriptions"): {
        "add_invoice_items": ("array", None),
        "application_fee_percent": ("", None),
        "automatic_tax": ("object", None),
        "backdate_start_date": ("integer", None),
        "billing_cycle_anchor": ("integer", None),
        "billing_cycle_anchor_config": ("object", None),
        "billing_mode": ("object", None),
        "billing_thresholds": ("", None),
        "cancel_at": ("", None),
        "cancel_at_period_end": ("boolean", None),
        "collection_method": ("string", None),
        "currency": ("string", None),
        "customer": ("string", 5000),
        "days_until_due": ("integer", None),
        "default_payment_method": ("string", 5000),
        "default_source": ("string", 5000),
        "default_tax_rates": ("", None),
        "description": ("string", 500),
        "discounts": ("", None),
        "expand": ("array", None),
        "invoice_settings": ("object", None),
        "items": ("array", None),
        "metadata": ("", None),
        "off_session": ("boolean", None),
        "on_behalf_of": ("", None),
        "payment_behavior": ("string", None),
        "payment_settings": ("object", None),
        "pending_invoice_item_interval": ("", None),
        "proration_behavior": ("string", None),
        "transfer_data": ("object", None),
        "trial_end": ("", None),
        "trial_from_plan": ("boolean", None),
        "trial_period_days": ("integer", None),
        "trial_settings": ("object", None),
    },
    ("GET", r"/v1/subscriptions"): {
        "automatic_tax": ("object", None),
        "collection_method": ("string", None),
        "created": ("", None),
        "current_period_end": ("", None),
        "current_period_start": ("", None),
        "customer": ("string", 5000),
        "ending_before": ("string", 5000),
        "expand": ("array", None),
        "limit": ("integer", None),
        "price": ("string", 5000),
        "starting_after": ("string", 5000),
        "status": ("string", None),
        "test_clock": ("string", 5000),
    },
    ("POST", r"/v1/billing/meter_events"): {
        "event_name": ("string", 100),
        "expand": ("array", None),
        "identifier": ("string", 100),
        "payload": ("object", None),
        "timestamp": ("integer", None),
    },
    ("POST", r"/v1/subscription_items"): {
        "billing_thresholds": ("", None),
        "discounts": ("", None),
        "expand": ("array", None),
        "metadata": ("object", None),
        "payment_behavior": ("string", None),
        "price": ("string", 5000),
        "price_data": ("object", None),
        "proration_behavior": ("string", None),
        "proration_date": ("integer", None),
        "quantity": ("integer", None),
        "subscription": ("string", 5000),
        "tax_rates": ("", None),
    },
    ("DELETE", r"/v1/subscription_items/([^/]+)"): {
        "clear_usage": ("boolean", None),
        "proration_behavior": ("string", None),
        "proration_date": ("integer", None),
    },
}
LEGACY: dict[tuple[str, str], dict[str, Param]] = {
    ("POST", r"/v1/subscription_items/([^/]+)/usage_records"): {
        "action": ("string", None),
        "expand": ("array", None),
        "quantity": ("integer", None),
        "timestamp": ("", None),  # an integer, or "now"
    },
    ("GET", r"/v1/subscription_items/([^/]+)/usage_record_summaries"): {
        "ending_before": ("string", None),
        "expand": ("array", None),
        "limit": ("integer", None),
        "starting_after": ("string", None),
    },
}
_INTEGER = re.compile(r"^-?\d+$")


def check_params(verb: str, route: str, params: Mapping[str, Any]) -> None:
    """Raise Stripe's error for the first parameter Stripe would refuse; v1 routes only."""
    accepted = ACCEPTED.get((verb, route)) or LEGACY.get((verb, route))
    if accepted is None:
        return
    for name, value in params.items():
        if name not in accepted:
            raise invalid(f"Received unknown parameter: {name}", "parameter_unknown", name)
        kind, longest = accepted[name]
        if kind == "integer" and not (isinstance(value, str) and _INTEGER.match(value)):
            raise invalid(f"Invalid integer: {value}", "parameter_invalid_integer", name)
        if kind == "boolean" and value not in ("true", "false"):
            raise invalid(f"Invalid boolean: {value}", param=name)
        if kind == "string" and not isinstance(value, str):
            raise invalid(f"Invalid string: {value!r:.40}", param=name)
        if kind == "string" and longest is not None and len(value) > longest:
            raise invalid(
                f"Invalid string: {value[:40]}...; must be at most {longest} characters", param=name
            )
