"""What the Stripe fake knows and the rules it applies, without HTTP: the objects meterline uses
(customers, products, prices, meters, subscriptions), meter events and their summaries, legacy
usage records. sinks.stripe.fake serves it; tests/integration/test_stripe_fake.py pins each rule to Stripe's
documented behaviour.

Rules kept from Stripe (docs.stripe.com, API 2026-10-28):
- a meter event's `identifier` is unique over a rolling 24 hours: a second one is refused with
  `duplicate_meter_event`; its `timestamp` must lie within the past 35 days and at most 5 minutes
  ahead; its value (a string in the payload) must be a whole number here (DESIGN §3);
- meter events are processed asynchronously: an event for an unknown customer or without an active
  meter is accepted and lands in the meter's error reports instead of its summaries;
- event summaries take minute-aligned `start_time`/`end_time` and group by `hour` or `day` (UTC),
  with bounds aligned to the hour or the UTC day then;
- subscriptions bill in monthly periods kept on each item (API 2025-03-31.basil and later) or on
  the subscription (earlier versions);
- legacy usage records exist only for API versions before 2025-03-31.basil, take a timestamp
  inside the item's current period and not in the future, and are summarized per period.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from core.months import add_months, monthly_period

DAY_S = 86_400
IDENTIFIER_WINDOW_S = DAY_S
MAX_PAST_S = 35 * DAY_S
MAX_FUTURE_S = 5 * 60
USAGE_RECORDS_REMOVED_IN = "2025-03-31"  # basil: the legacy usage records API is gone from there on


class StripeError(Exception):
    """An error response: HTTP status, Stripe's error type, code, message and param."""

    def __init__(
        self, status: int, type_: str, message: str, code: str | None = None, param: str | None = None
    ):
        super().__init__(message)
        self.status, self.type, self.code, self.param = status, type_, code, param

    def body(self) -> dict[str, Any]:
        """Stripe's error object (https://docs.stripe.com/api/errors): `doc_url`, "a URL to more
        information about the error code reported", wherever a code is; v1 and v2 alike."""
        error: dict[str, Any] = {"type": self.type, "message": str(self)}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            error["param"] = self.param
        return {"error": error}


def invalid(message: str, code: str | None = None, param: str | None = None) -> StripeError:
    return StripeError(400, "invalid_request_error", message, code, param)


def missing(kind: str, object_id: str, param: str = "id") -> StripeError:
    return StripeError(
        404, "invalid_request_error", f"No such {kind}: '{object_id}'", "resource_missing", param
    )


def _check_price_terms(params: Mapping[str, Any]) -> None:
    """What Stripe refuses of a price's terms, each from its page:
    - "Quantity transformation isn't compatible with tiered pricing"; `round` is up or down
      (https://docs.stripe.com/billing/subscriptions/usage-based/transform-quantities);
    - `unit_amount_decimal` "accepts decimals up to 12 decimal places"
      (https://stripe.com/docs/billing/subscriptions/decimal-amounts); `flat_amount_decimal`
      represents an integer of minor units (API reference, price tiers)."""
    transform = params.get("transform_quantity")
    if transform and params.get("billing_scheme") == "tiered":
        raise invalid(
            "Quantity transformation isn't compatible with tiered pricing.", param="transform_quantity"
        )
    if transform and transform.get("round") not in ("up", "down"):
        raise invalid(
            "Invalid transform_quantity[round]: must be up or down.", param="transform_quantity[round]"
        )
    amounts = [("unit_amount_decimal", params.get("unit_amount_decimal"))]
    for n, tier in enumerate(params.get("tiers") or []):
        amounts.append((f"tiers[{n}][unit_amount_decimal]", tier.get("unit_amount_decimal")))
        flat = tier.get("flat_amount_decimal")
        if flat is not None and Decimal(str(flat)) != Decimal(str(flat)).to_integral_value():
            raise invalid(
                f"Invalid decimal: {flat}; must be an integer.", param=f"tiers[{n}][flat_amount_decimal]"
            )
    for name, value in amounts:
        if value is not None and -Decimal(str(value)).normalize().as_tuple().exponent > 12:  # type: ignore[operator]
            raise invalid(f"Invalid decimal: {value}; at most 12 decimal places.", param=name)


def _tiers(raw: list[Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Tiers as a price returns them, typed (the API reference's `price_tier`): `up_to` an integer
    or null for the last ("inf" on the way in), the amounts as integers of minor units where whole,
    and as decimal strings."""
    if raw is None:
        return None

    def amounts(tier: Mapping[str, Any], name: str) -> dict[str, Any]:
        given = tier.get(f"{name}_decimal", tier.get(name))
        if given is None:
            return {name: None, f"{name}_decimal": None}
        exact = Decimal(str(given))
        whole = int(exact) if exact == exact.to_integral_value() else None
        return {name: whole, f"{name}_decimal": str(exact)}

    return [
        {
            **amounts(tier, "flat_amount"),
            **amounts(tier, "unit_amount"),
            "up_to": None if tier.get("up_to") in ("inf", None) else int(tier["up_to"]),
        }
        for tier in raw
    ]


def price_view(price: Mapping[str, Any], expand: list[str], prefix: str = "") -> dict[str, Any]:
    """A price as an answer shows it: `tiers` "is not included by default. To include it in the
    response, expand the `tiers` field" (https://docs.stripe.com/api/prices/object#price_object-tiers):
    `expand[]=tiers` on a price, `expand[]=data.tiers` on a list of them (`prefix` "data.")."""
    if f"{prefix}tiers" in expand:
        return dict(price)
    return {k: v for k, v in price.items() if k != "tiers"}


def _check_recurring(recurring: Mapping[str, Any], api_version: str | None) -> None:
    """Since 2025-03-31.basil "You can no longer create a price with a usage_type of metered
    without a specified meter", and `aggregate_usage` is gone from every endpoint
    (https://docs.stripe.com/changelog/basil/2025-03-31/deprecate-legacy-usage-based-billing)."""
    current = api_version is None or api_version >= USAGE_RECORDS_REMOVED_IN
    if current and recurring.get("usage_type") == "metered" and not recurring.get("meter"):
        raise invalid(
            "A metered price needs a meter (recurring[meter]) since 2025-03-31.basil; legacy "
            "usage-based prices are unavailable on this API version.",
            param="recurring[meter]",
        )
    if current and "aggregate_usage" in recurring:
        raise invalid(
            "Received unknown parameter: recurring[aggregate_usage]", param="recurring[aggregate_usage]"
        )


def _transform(raw: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if not raw else {"divide_by": int(raw["divide_by"]), "round": raw["round"]}


def subscription_shape(subscription: dict[str, Any], api_version: str | None) -> dict[str, Any]:
    """A subscription as an API version sees it: since 2025-03-31.basil the billing period is on
    each item (`items.data[].current_period_start/end`) and no longer on the subscription
    (https://docs.stripe.com/changelog/basil/2025-03-31/deprecate-subscription-current-period-start-and-end);
    before it, only on the subscription."""
    if api_version is None or api_version >= USAGE_RECORDS_REMOVED_IN:
        return subscription
    items = subscription["items"]["data"]
    legacy_items = [
        {k: v for k, v in item.items() if k not in ("current_period_start", "current_period_end")}
        for item in items
    ]
    first = items[0] if items else {}
    return {
        **subscription,
        "items": {**subscription["items"], "data": legacy_items},
        "current_period_start": first.get("current_period_start"),
        "current_period_end": first.get("current_period_end"),
    }


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass
class MeterEvent:
    event_name: str
    identifier: str
    customer: str
    value: int
    timestamp: int
    created: int


@dataclass
class FakeStripeState:
    """All objects, under one lock: the server is threaded."""

    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    products: dict[str, dict[str, Any]] = field(default_factory=dict)
    prices: dict[str, dict[str, Any]] = field(default_factory=dict)
    meters: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    meter_events: list[MeterEvent] = field(default_factory=list)
    error_reports: list[dict[str, Any]] = field(default_factory=list)
    usage_records: dict[str, list[dict[str, Any]]] = field(
        default_factory=dict
    )  # subscription item -> records
    identifiers: dict[str, int] = field(default_factory=dict)  # identifier -> when it was first accepted
    search_lag_seconds: float = 0.0
    """How long a customer written is not yet found by search: "Under normal operating conditions,
    data is searchable in less than a minute ... can be up to an hour behind during outages"
    (https://docs.stripe.com/api/customers/search). Retrieving it by id has no lag."""
    written_at: dict[str, float] = field(default_factory=dict)  # customer -> clock() of its last write
    lock: threading.RLock = field(default_factory=threading.RLock)
    clock: Any = time.time  # tests move time

    def now(self) -> int:
        return int(self.clock())

    # -- customers, products, prices, meters, subscriptions ---------------------------------------

    def create_customer(self, params: Mapping[str, Any]) -> dict[str, Any]:
        customer_id = new_id("cus")
        customer = {
            "id": customer_id,
            "object": "customer",
            "created": self.now(),
            "email": params.get("email"),
            "name": params.get("name"),
            "metadata": dict(params.get("metadata") or {}),
            "livemode": False,
        }
        with self.lock:
            self.customers[customer_id] = customer
            self.written_at[customer_id] = self.clock()
        return customer

    def customer(self, customer_id: str) -> dict[str, Any]:
        with self.lock:
            found = self.customers.get(customer_id)
        if found is None:
            raise missing("customer", customer_id)
        return found

    def search_customers(self, query: str) -> list[dict[str, Any]]:
        """Stripe's search syntax, the one clause meterline uses: metadata['key']:'value'. A
        customer is found `search_lag_seconds` after it was written."""
        import re

        match = re.fullmatch(r"\s*metadata\['([^']+)'\]\s*:\s*'([^']*)'\s*", query)
        if match is None:
            raise invalid(f"Unsupported search query: {query}", param="query")
        key, value = match.groups()
        indexed_before = self.clock() - self.search_lag_seconds
        with self.lock:
            return [
                c
                for c in self.customers.values()
                if c["metadata"].get(key) == value and self.written_at[c["id"]] <= indexed_before
            ]

    def create_product(self, params: Mapping[str, Any]) -> dict[str, Any]:
        if not params.get("name"):
            raise invalid("Missing required param: name.", "parameter_missing", "name")
        product = {
            "id": params.get("id") or new_id("prod"),
            "object": "product",
            "name": params["name"],
            "active": True,
            "metadata": dict(params.get("metadata") or {}),
            "created": self.now(),
            "updated": self.now(),
            "images": [],
            "marketing_features": [],
            "livemode": False,
        }
        with self.lock:
            if product["id"] in self.products:
                raise invalid(f"Product already exists: {product['id']}", "resource_already_exists", "id")
            self.products[product["id"]] = product
        return product

    def product(self, product_id: str) -> dict[str, Any]:
        with self.lock:
            found = self.products.get(product_id)
        if found is None:
            raise missing("product", product_id)
        return found

    def create_price(self, params: Mapping[str, Any], api_version: str | None = None) -> dict[str, Any]:
        """`api_version`: the request's Stripe-Version (None: the account's, a current one)."""
        product = params.get("product")
        with self.lock:
            if product not in self.products:
                raise missing("product", str(product), "product")
            lookup_key = params.get("lookup_key")
            if lookup_key and any(p.get("lookup_key") == lookup_key for p in self.prices.values()):
                if params.get("transfer_lookup_key") not in ("true", True):
                    raise invalid(
                        f"A price (`{lookup_key}`) already uses that lookup key.", "lookup_key_already_exists"
                    )
                for other in self.prices.values():
                    if other.get("lookup_key") == lookup_key:
                        other["lookup_key"] = None
            recurring = dict(params.get("recurring") or {})
            if recurring:
                recurring.setdefault("usage_type", "licensed")
                recurring["interval_count"] = int(recurring.get("interval_count", 1))
            _check_price_terms(params)
            _check_recurring(recurring, api_version)
            price = {
                "id": new_id("price"),
                "object": "price",
                "product": product,
                "currency": params.get("currency", "usd"),
                "unit_amount_decimal": params.get("unit_amount_decimal"),
                "billing_scheme": params.get("billing_scheme", "per_unit"),
                "tiers_mode": params.get("tiers_mode"),
                "tiers": _tiers(params.get("tiers")),
                "transform_quantity": _transform(params.get("transform_quantity")),
                "recurring": recurring or None,
                "lookup_key": lookup_key,
                "metadata": dict(params.get("metadata") or {}),
                "active": True,
                "created": self.now(),
                "livemode": False,
                "type": "recurring" if recurring else "one_time",
            }
            self.prices[price["id"]] = price
        return price

    def list_prices(self, lookup_keys: list[str]) -> list[dict[str, Any]]:
        with self.lock:
            return [p for p in self.prices.values() if not lookup_keys or p.get("lookup_key") in lookup_keys]

    def create_meter(self, params: Mapping[str, Any]) -> dict[str, Any]:
        for name in ("display_name", "event_name", "default_aggregation"):
            if not params.get(name):
                raise invalid(f"Missing required param: {name}.", "parameter_missing", name)
        formula = params["default_aggregation"].get("formula")
        if formula not in ("sum", "count", "last"):
            raise invalid(
                f"Invalid default_aggregation[formula]: {formula}", param="default_aggregation[formula]"
            )
        with self.lock:
            if any(
                m["event_name"] == params["event_name"] and m["status"] == "active"
                for m in self.meters.values()
            ):
                raise invalid(
                    f"An active meter with event_name `{params['event_name']}` already exists.",
                    param="event_name",
                )
            meter = {
                "id": new_id("mtr"),
                "object": "billing.meter",
                "display_name": params["display_name"],
                "event_name": params["event_name"],
                "status": "active",
                "default_aggregation": {"formula": formula},
                # Stripe's defaults, or the payload keys asked for ("Payload key overrides",
                # https://docs.stripe.com/billing/subscriptions/usage-based/meters/configure)
                "customer_mapping": {
                    "event_payload_key": (params.get("customer_mapping") or {}).get(
                        "event_payload_key", "stripe_customer_id"
                    ),
                    "type": "by_id",
                },
                "value_settings": {
                    "event_payload_key": (params.get("value_settings") or {}).get(
                        "event_payload_key", "value"
                    )
                },
                "event_time_window": None,
                "created": self.now(),
                "updated": self.now(),
                "status_transitions": {"deactivated_at": None},
                "livemode": False,
            }
            self.meters[meter["id"]] = meter
        return meter

    def meter(self, meter_id: str) -> dict[str, Any]:
        with self.lock:
            found = self.meters.get(meter_id)
        if found is None:
            raise missing("billing.meter", meter_id)
        return found

    def create_subscription(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Monthly periods from the start (`backdate_start_date` may put it in the past), kept on
        each item as Stripe keeps them since 2025-03-31.basil; `subscription_shape` serves the
        shape of the caller's API version."""
        customer = params.get("customer")
        items = params.get("items") or []
        with self.lock:
            if customer not in self.customers:
                raise missing("customer", str(customer), "customer")
            start = int(params.get("backdate_start_date") or self.now())
            period_start, period_end = monthly_period(start, self.now())
            subscription_id = new_id("sub")
            data = []
            currency = "usd"
            for item in items:
                price = self.prices.get(item.get("price"))
                if price is None:
                    raise missing("price", str(item.get("price")), "items[price]")
                currency = price["currency"]
                data.append(
                    {
                        "id": new_id("si"),
                        "object": "subscription_item",
                        "price": price,
                        "subscription": subscription_id,
                        "created": self.now(),
                        "current_period_start": period_start,
                        "current_period_end": period_end,
                        "discounts": [],
                        "metadata": {},
                    }
                )
            subscription = {
                "id": subscription_id,
                "object": "subscription",
                "customer": customer,
                "status": "trialing" if params.get("trial_period_days") else "active",
                "items": {"object": "list", "data": data, "has_more": False},
                "start_date": start,
                "metadata": dict(params.get("metadata") or {}),
                "created": self.now(),
                # the rest the specification requires, as a subscription of meterline's kind has it
                "billing_cycle_anchor": start,
                "automatic_tax": {"enabled": False, "liability": None, "disabled_reason": None},
                "billing_mode": {"type": "classic"},
                "cancel_at_period_end": False,
                "collection_method": "charge_automatically",
                "currency": currency,
                "discounts": [],
                "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
                "livemode": False,
            }
            self.subscriptions[subscription_id] = subscription
        return subscription

    def list_subscriptions(self, customer: str | None) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.subscriptions.values() if customer is None or s["customer"] == customer]

    def add_subscription_item(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """POST /v1/subscription_items: a price added to a subscription (a plan change), on the
        subscription's current period (https://docs.stripe.com/api/subscription_items/create)."""
        with self.lock:
            subscription = self.subscriptions.get(str(params.get("subscription")))
            if subscription is None:
                raise missing("subscription", str(params.get("subscription")), "subscription")
            price = self.prices.get(str(params.get("price")))
            if price is None:
                raise missing("price", str(params.get("price")), "price")
            period_start, period_end = monthly_period(subscription["start_date"], self.now())
            item = {
                "id": new_id("si"),
                "object": "subscription_item",
                "price": price,
                "subscription": subscription["id"],
                "created": self.now(),
                "current_period_start": period_start,
                "current_period_end": period_end,
                "discounts": [],
                "metadata": {},
            }
            subscription["items"]["data"].append(item)
        return item

    def delete_subscription_item(self, item_id: str, clear_usage: bool) -> dict[str, Any]:
        """DELETE /v1/subscription_items/{id}: the item leaves its subscription; the usage reported
        to it stays billed unless `clear_usage` ("Delete all usage for the given subscription
        item", https://docs.stripe.com/api/subscription_items/delete), and usage reported to it
        afterwards is refused as a missing item."""
        with self.lock:
            subscription, _ = self.subscription_item(item_id)
            items = subscription["items"]["data"]
            items[:] = [i for i in items if i["id"] != item_id]
            if clear_usage:
                self.usage_records.pop(item_id, None)
        return {"id": item_id, "object": "subscription_item", "deleted": True}

    def subscription_item(self, item_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """A subscription item and its subscription, or Stripe's resource_missing."""
        with self.lock:
            for subscription in self.subscriptions.values():
                for item in subscription["items"]["data"]:
                    if item["id"] == item_id:
                        return subscription, item
        raise missing("subscription_item", item_id)

    def item_period(self, item_id: str) -> tuple[int, int, int]:
        """(subscription start, current period start, end) of a subscription item, as of now."""
        subscription, _ = self.subscription_item(item_id)
        start = subscription["start_date"]
        return (start, *monthly_period(start, self.now()))

    # -- meter events ----------------------------------------------------------------------------

    def record_meter_event(self, params: Mapping[str, Any], timestamp: int | None) -> dict[str, Any]:
        """POST /v1/billing/meter_events and each event of a v2 stream (whose errors Stripe reports
        asynchronously; the v2 handler turns them into error reports)."""
        event_name = params.get("event_name")
        payload = params.get("payload")
        if not event_name:
            raise invalid("Missing required param: event_name.", "parameter_missing", "event_name")
        if not isinstance(payload, Mapping):
            raise invalid("Missing required param: payload.", "parameter_missing", "payload")
        now = self.now()
        when = now if timestamp is None else timestamp
        if when < now - MAX_PAST_S:
            raise invalid(
                "Timestamp must be within the past 35 calendar days.",
                "timestamp_too_far_in_past",
                "timestamp",
            )
        if when > now + MAX_FUTURE_S:
            raise invalid(
                "Timestamp must be at most 5 minutes in the future.", "timestamp_in_future", "timestamp"
            )
        with self.lock:
            active = [
                m for m in self.meters.values() if m["event_name"] == event_name and m["status"] == "active"
            ]
        # the meter's payload keys (one meter per event name); Stripe's defaults without one
        customer_key = active[0]["customer_mapping"]["event_payload_key"] if active else "stripe_customer_id"
        value_key = active[0]["value_settings"]["event_payload_key"] if active else "value"
        raw_value = str(payload.get(value_key, ""))
        if value_key in payload and not raw_value.lstrip("-").isdigit():
            raise invalid(
                f"Invalid value `{raw_value}` for payload[{value_key}]: must be a whole number.",
                "meter_event_invalid_value",
                f"payload[{value_key}]",
            )
        identifier = str(params.get("identifier") or new_id("mev"))
        with self.lock:
            first = self.identifiers.get(identifier)
            if first is not None and now - first < IDENTIFIER_WINDOW_S:
                raise invalid(
                    f"An event with identifier `{identifier}` was already reported in the last 24 hours.",
                    "duplicate_meter_event",
                    "identifier",
                )
            self.identifiers[identifier] = now
            customer = str(payload.get(customer_key, ""))
            problem = None
            if not active:
                problem = ("no_meter", f"No active meter for event_name `{event_name}`.")
            elif not customer:
                problem = (
                    "meter_event_no_customer_defined",
                    f"Customer mapping key {customer_key} not found in payload.",
                )
            elif value_key not in payload:
                problem = ("meter_event_value_not_found", f"Value key {value_key} not found in payload.")
            elif customer not in self.customers:
                problem = ("meter_event_customer_not_found", f"No such customer: '{customer}'")
            if problem is not None:
                self.error_reports.append(
                    {
                        "code": problem[0],
                        "message": problem[1],
                        "identifier": identifier,
                        "event_name": event_name,
                    }
                )
            else:
                self.meter_events.append(
                    MeterEvent(event_name, identifier, customer, int(raw_value), when, now)
                )
        return {
            "object": "billing.meter_event",
            "created": now,
            "event_name": event_name,
            "identifier": identifier,
            "livemode": False,
            "payload": {k: str(v) for k, v in payload.items()},
            "timestamp": when,
        }

    def event_summaries(
        self, meter_id: str, customer: str, start: int, end: int, grouping: str | None
    ) -> list[dict[str, Any]]:
        meter = self.meter(meter_id)
        if start % 60 or end % 60:
            raise invalid(
                "start_time and end_time must be aligned with minute boundaries.", param="start_time"
            )
        if end <= start:
            raise invalid("end_time must be after start_time.", param="end_time")
        if grouping not in (None, "hour", "day"):
            raise invalid(f"Invalid value_grouping_window: {grouping}", param="value_grouping_window")
        size = {"hour": 3_600, "day": DAY_S}.get(grouping or "", end - start)
        if grouping and (start % size or end % size):
            # "For hourly granularity, start and end times must align with hour boundaries ... For
            # daily granularity, start and end times must align with UTC day boundaries."
            raise invalid(
                f"start_time and end_time must be aligned with {grouping} boundaries for "
                f"value_grouping_window={grouping}.",
                param="start_time",
            )
        formula = meter["default_aggregation"]["formula"]
        buckets: dict[int, list[MeterEvent]] = {}
        with self.lock:
            for event in self.meter_events:
                if (
                    event.event_name == meter["event_name"]
                    and event.customer == customer
                    and start <= event.timestamp < end
                ):
                    bucket = start if grouping is None else event.timestamp - event.timestamp % size
                    buckets.setdefault(bucket, []).append(event)
        summaries = []
        for bucket_start in sorted(buckets):
            events = buckets[bucket_start]
            if formula == "sum":
                value = sum(e.value for e in events)
            elif formula == "count":
                value = len(events)
            else:
                value = max(events, key=lambda e: (e.timestamp, e.created)).value
            summaries.append(
                {
                    "id": f"mtrusg_{meter_id}_{customer}_{bucket_start}",
                    "object": "billing.meter_event_summary",
                    "aggregated_value": value,
                    "start_time": max(bucket_start, start),
                    "end_time": min(bucket_start + size, end),
                    "meter": meter_id,
                    "livemode": False,
                }
            )
        return summaries

    # -- legacy usage records --------------------------------------------------------------------

    def record_usage(
        self, item_id: str, params: Mapping[str, Any], api_version: str | None
    ) -> dict[str, Any]:
        if api_version is None or api_version >= USAGE_RECORDS_REMOVED_IN:
            raise invalid(
                "Usage records are not available in this API version: send a Stripe-Version before "
                f"{USAGE_RECORDS_REMOVED_IN}.basil, or use billing meters.",
                "api_version_unsupported",
            )
        quantity = str(params.get("quantity", ""))
        if not quantity.isdigit():
            raise invalid(f"Invalid integer: {quantity}", param="quantity")
        action = params.get("action", "increment")
        if action not in ("increment", "set"):
            raise invalid(f"Invalid action: {action}", param="action")
        _, item = self.subscription_item(item_id)
        price = item["price"]
        if (price.get("recurring") or {}).get("meter"):
            # Usage records bill "a price with a usage_type of metered without a specified meter"
            # (https://docs.stripe.com/changelog/basil/2025-03-31/deprecate-legacy-usage-based-billing)
            raise invalid(
                f"Usage records cannot be created for subscription item {item_id}: its price "
                f"{price['id']} is attached to a meter; report usage to the meter with meter events.",
                param="subscription_item",
            )
        timestamp = int(params.get("timestamp") or self.now())
        _, period_start, period_end = self.item_period(item_id)
        if not period_start <= timestamp < period_end or timestamp > self.now():
            # "This timestamp must be within the current billing period of the subscription of the
            # provided subscription_item, and must not be in the future."
            raise invalid(
                f"Cannot create the usage record with this timestamp because timestamps must be within "
                f"the subscription's current period ({period_start} to {period_end}) and not in the future.",
                param="timestamp",
            )
        with self.lock:
            record = {
                "id": new_id("mbur"),
                "object": "usage_record",
                "livemode": False,
                "quantity": int(quantity),
                "subscription_item": item_id,
                "timestamp": timestamp,
                "action": action,
            }
            self.usage_records.setdefault(item_id, []).append(record)
        return {k: v for k, v in record.items() if k != "action"}

    def usage_record_summaries(self, item_id: str) -> list[dict[str, Any]]:
        """One summary per billing period of the item, newest first: "Each object in the list
        provides usage information that's been summarized from multiple usage records and over a
        subscription billing period ... The first list item represents the most current usage
        period". Within a period, records at the same timestamp add up; `set` overwrites the
        quantity at its timestamp (https://stripe.com/docs/api/usage_records/create)."""
        start, current_start, _ = self.item_period(item_id)
        with self.lock:
            records = list(self.usage_records.get(item_id, []))
        periods, k = [], 0
        while add_months(start, k) <= current_start:  # each boundary counted from the start
            periods.append((add_months(start, k), add_months(start, k + 1)))
            k += 1
        summaries = []
        for period_start, period_end in reversed(periods):
            at: dict[int, int] = {}
            for record in records:  # in the order Stripe received them
                if period_start <= record["timestamp"] < period_end:
                    before = 0 if record["action"] == "set" else at.get(record["timestamp"], 0)
                    at[record["timestamp"]] = before + record["quantity"]
            summaries.append(
                {
                    "id": f"sis_{item_id}_{period_start}",
                    "object": "usage_record_summary",
                    "invoice": None,
                    "livemode": False,
                    "period": {"start": period_start, "end": period_end},
                    "subscription_item": item_id,
                    "total_usage": sum(at.values()),
                }
            )
        return summaries
