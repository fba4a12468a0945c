"""Who is who at Stripe: a meterline customer's Stripe customer, and (legacy usage records) the
subscription item that bills a meter. Configured mappings win; others are looked up and cached
(customers for good, subscription items for a few minutes, as plans change, and afresh after a
subscription event about their customer): customers in the map of those known from webhooks and
imports (sinks.stripe.customers), else searched by their metadata (`stripe.customer_metadata_key`;
a miss is searched again after `stripe.search_again_seconds`); subscription items of an active,
trialing or past-due subscription by their price's metadata `meterline_meter` (as `meterline
stripe sync` creates prices) or, for prices made by hand, its lookup key `meterline_<meter>`. A
window goes to the item that billed its meter at the window's time (`item_at`): after a plan
change, a late window from before it is not billed at the new item's price.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from meterline.core.config import StripeConfig
from meterline.sinks.stripe.calls import Caller

ITEM_TTL_S = 300.0  # a subscription item found is looked up again after this long (plans change)
Found = TypeVar("Found")
BILLING_STATUSES = ("active", "trialing", "past_due")
"""Subscriptions whose metered items Stripe bills (a trial bills its usage at the trial's end too)."""


@dataclass(frozen=True)
class BillingItem:
    """A subscription item whose price bills a meter, and since when (epoch s)."""

    id: str
    billing_from: int


def item_at(items: Sequence[BillingItem], timestamp_s: int) -> BillingItem | None:
    """The item that billed the meter at `timestamp_s`: the last to begin at or before it. None when
    the window precedes them all (the item of its time was removed, or no subscription billed it)."""
    began = [item for item in items if item.billing_from <= timestamp_s]
    return max(began, key=lambda item: item.billing_from) if began else None


def billing_from(subscription: Any, item: Any) -> int:
    """An item made with its subscription bills from the subscription's start, which a backdated
    subscription puts before both were created (https://docs.stripe.com/billing/subscriptions/backdating);
    an item added later (a plan change) from its own creation: `start_date` is when "the entire
    subscription starts as opposed to when the current plan configuration does"
    (https://docs.stripe.com/changelog/2019-10-17/replaces-subscription-start-field)."""
    start = int(subscription["start_date"])
    if "created" not in item or int(item["created"]) <= int(subscription["created"]):
        return start
    return int(item["created"])


Known = Callable[[Iterable[str]], dict[str, str]]
"""meterline ids -> the Stripe customers known for them without searching (KnownCustomers.find)."""


class Directory:
    def __init__(self, config: StripeConfig, caller: Caller, known: Known | None = None) -> None:
        self.config = config
        self.caller = caller
        self.known = known
        self._customers: dict[str, tuple[str | None, float]] = {}
        self._items: dict[tuple[str, str], tuple[tuple[BillingItem, ...] | None, float]] = {}
        self._lock = threading.Lock()

    def customer(self, customer_id: str) -> str | None:
        return self.customers([customer_id])[customer_id]

    def customers(self, customer_ids: Iterable[str]) -> dict[str, str | None]:
        """Each one's Stripe customer (None: not known yet). The known map is asked once for all
        those not found before, each time: a webhook may have named them since."""
        wanted = set(customer_ids)
        found: dict[str, str | None] = {c: self.config.customers.get(c) for c in wanted}
        with self._lock:
            for customer_id in wanted:
                hit = self._customers.get(customer_id)
                if found[customer_id] is None and hit is not None and hit[0] is not None:
                    found[customer_id] = hit[0]
        missing = [c for c, stripe_customer in found.items() if stripe_customer is None]
        if missing and self.known is not None:
            found.update(self.known(missing))
        for customer_id in [c for c, stripe_customer in found.items() if stripe_customer is None]:
            found[customer_id] = self._cached(
                self._customers, customer_id, functools.partial(self._search_customer, customer_id)
            )
        return found

    def subscription_items(self, stripe_customer: str, meter: str) -> tuple[BillingItem, ...]:
        """The customer's items pricing the meter (none: it has no subscription billing it)."""
        found = self._cached(
            self._items,
            (stripe_customer, meter),
            lambda: self._find_items(stripe_customer, meter),
            ITEM_TTL_S,
        )
        return found or ()

    def forget_items(self, stripe_customers: Iterable[str]) -> None:
        """Drop the cached subscription items of these customers: their subscriptions changed (a
        subscription event said so), so they are looked up again before the TTL runs out."""
        changed = set(stripe_customers)
        with self._lock:
            for key in [key for key in self._items if key[0] in changed]:
                del self._items[key]

    def _cached(
        self,
        cache: dict[Any, tuple[Found | None, float]],
        key: Any,
        look_up: Callable[[], Found | None],
        found_ttl_s: float = float("inf"),
    ) -> Found | None:
        with self._lock:
            hit = cache.get(key)
        if hit is not None:
            age = time.monotonic() - hit[1]
            if age < (found_ttl_s if hit[0] is not None else self.config.search_again_seconds):
                return hit[0]
        found = look_up()
        with self._lock:
            cache[key] = (found, time.monotonic())
        return found

    def _search_customer(self, customer_id: str) -> str | None:
        query = f"metadata['{self.config.customer_metadata_key}']:'{customer_id}'"
        result, _ = self.caller.retrying(lambda: self.caller.client.v1.customers.search({"query": query}))
        return str(result.data[0].id) if result.data else None

    def _find_items(self, stripe_customer: str, meter: str) -> tuple[BillingItem, ...] | None:
        listed, _ = self.caller.retrying(
            lambda: self.caller.client.v1.subscriptions.list({"customer": stripe_customer})
        )
        found = tuple(
            BillingItem(str(item["id"]), billing_from(subscription, item))
            for subscription in listed.auto_paging_iter()  # every page: a list answers 10 at a time
            if subscription["status"] in BILLING_STATUSES
            for item in subscription["items"]["data"]
            if metadata(item["price"]).get("meterline_meter") == meter
            or getattr(item["price"], "lookup_key", None) == f"meterline_{meter}"
        )
        return found or None  # None: cached as not found, looked up again sooner


def metadata(stripe_object: Any) -> dict[str, str]:
    """A Stripe object's metadata as a dict (a StripeObject has no .get)."""
    found = getattr(stripe_object, "metadata", None)
    if found is None:
        return {}
    return dict(found.to_dict()) if hasattr(found, "to_dict") else dict(found)
