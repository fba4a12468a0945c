"""Who is who at Stripe: a meterline customer's Stripe customer, and (legacy usage records) the
subscription item that bills a meter. Configured mappings win; others are looked up and cached
(customers for good, subscription items for a few minutes, as plans change, and afresh after a
subscription event about their customer): customers by their
metadata (`stripe.customer_metadata_key`), subscription items of an active, trialing or past-due
subscription by their price's metadata `meterline_meter` (as `meterline stripe sync` creates
prices) or, for prices made by hand, its lookup key `meterline_<meter>`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from core.config import StripeConfig
from sinks.stripe.calls import Caller

NEGATIVE_TTL_S = 60.0  # an unknown customer is looked up again after this long (it may be created)
ITEM_TTL_S = 300.0  # a subscription item found is looked up again after this long (plans change)
BILLING_STATUSES = ("active", "trialing", "past_due")
"""Subscriptions whose metered items Stripe bills (a trial bills its usage at the trial's end too)."""


class Directory:
    def __init__(self, config: StripeConfig, caller: Caller) -> None:
        self.config = config
        self.caller = caller
        self._customers: dict[str, tuple[str | None, float]] = {}
        self._items: dict[tuple[str, str], tuple[str | None, float]] = {}
        self._lock = threading.Lock()

    def customer(self, customer_id: str) -> str | None:
        configured = self.config.customers.get(customer_id)
        if configured:
            return configured
        return self._cached(self._customers, customer_id, lambda: self._search_customer(customer_id))

    def subscription_item(self, stripe_customer: str, meter: str) -> str | None:
        return self._cached(
            self._items,
            (stripe_customer, meter),
            lambda: self._find_item(stripe_customer, meter),
            ITEM_TTL_S,
        )

    def forget_items(self, stripe_customers: Iterable[str]) -> None:
        """Drop the cached subscription items of these customers: their subscriptions changed (a
        subscription event said so), so they are looked up again before the TTL runs out."""
        changed = set(stripe_customers)
        with self._lock:
            for key in [key for key in self._items if key[0] in changed]:
                del self._items[key]

    def _cached(
        self,
        cache: dict[Any, tuple[str | None, float]],
        key: Any,
        look_up: Any,
        found_ttl_s: float = float("inf"),
    ) -> str | None:
        with self._lock:
            hit = cache.get(key)
        if hit is not None:
            age = time.monotonic() - hit[1]
            if age < (found_ttl_s if hit[0] is not None else NEGATIVE_TTL_S):
                return hit[0]
        found: str | None = look_up()
        with self._lock:
            cache[key] = (found, time.monotonic())
        return found

    def _search_customer(self, customer_id: str) -> str | None:
        query = f"metadata['{self.config.customer_metadata_key}']:'{customer_id}'"
        result, _ = self.caller.retrying(lambda: self.caller.client.v1.customers.search({"query": query}))
        return str(result.data[0].id) if result.data else None

    def _find_item(self, stripe_customer: str, meter: str) -> str | None:
        listed, _ = self.caller.retrying(
            lambda: self.caller.client.v1.subscriptions.list({"customer": stripe_customer})
        )
        for subscription in listed.data:
            if subscription["status"] not in BILLING_STATUSES:
                continue
            for item in subscription["items"]["data"]:
                price = item["price"]
                if (
                    metadata(price).get("meterline_meter") == meter
                    or getattr(price, "lookup_key", None) == f"meterline_{meter}"
                ):
                    return str(item["id"])
        return None


def metadata(stripe_object: Any) -> dict[str, str]:
    """A Stripe object's metadata as a dict (a StripeObject has no .get)."""
    found = getattr(stripe_object, "metadata", None)
    if found is None:
        return {}
    return dict(found.to_dict()) if hasattr(found, "to_dict") else dict(found)
