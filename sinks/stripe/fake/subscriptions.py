"""Subscriptions and their items, with monthly periods, and the legacy usage records on items."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meterline.core.months import add_months, monthly_period
from meterline.sinks.stripe.fake.errors import invalid, missing, new_id
from meterline.sinks.stripe.fake.objects import USAGE_RECORDS_REMOVED_IN, Objects


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


class Subscriptions(Objects):
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
