"""Stripe's side of a test: set up meters and customers in the fake, read its totals back as the
reconciler does (meter event summaries per customer and meter)."""

from __future__ import annotations

import threading
import time
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING

import stripe

from meterline.core.config import Config
from meterline.sinks.stripe.calls import Caller, RateLimiter
from meterline.sinks.stripe.catalog.sync import product_id, sync
from meterline.sinks.stripe.customers import KnownCustomer, KnownCustomers
from meterline.sinks.stripe.directory import metadata
from meterline.sinks.stripe.fake import FakeStripe, make_server
from meterline.sinks.stripe.webhooks.events import SUBSCRIPTION_ITEM_COLUMNS

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

KEY = "sk_test_meterline_fake"
LEGACY_VERSION = "2024-06-20"
"""A Stripe-Version before 2025-03-31.basil, as stripe.legacy_api_version: legacy usage-based prices
(metered, no meter) and usage records exist only there."""


SEARCH_LAG_SECONDS = 2.0
"""Tests' fake finds a new customer by search this long after it was made, as Stripe lags ("Under
normal operating conditions, data is searchable in less than a minute":
https://docs.stripe.com/api/customers/search): nothing may rely on finding one at once."""


def serve_fake(seed: int) -> tuple[FakeStripe, ThreadingHTTPServer, str]:
    """The Stripe fake on a free loopback port, in this process (its state is inspected directly):
    the fake, its server (shut it down after) and its base address."""
    fake = FakeStripe(seed=seed, search_lag_seconds=SEARCH_LAG_SECONDS)
    server = make_server(fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return fake, server, f"http://127.0.0.1:{server.server_address[1]}"


def stripe_api(base: str) -> stripe.StripeClient:
    return stripe.StripeClient(KEY, base_addresses={"api": base}, max_network_retries=0)


def set_up_stripe(config: Config, base: str, customers: list[str]) -> dict[str, str]:
    """`stripe sync` (meters and products), and a Stripe customer per meterline customer (found by
    the sink through their metadata). Returns meter name -> Stripe meter id."""
    api = stripe_api(base)
    changes = sync(config, Caller(base, KEY, 5, RateLimiter(1000), "2024-06-20"))
    assert {c.action for c in changes if c.kind != "price"} == {"created"}
    meters = {
        name: next(c.stripe_id for c in changes if c.kind == "meter" and c.name == meter.stripe_event_name)
        for name, meter in config.meters.items()
    }
    for customer in customers:
        api.v1.customers.create({"metadata": {"meterline_customer_id": customer}})
    return meters


def stripe_customers(base: str) -> dict[str, str]:
    """meterline id -> Stripe customer id, from the list of customers, which has no lag: "For
    read-after-write flows that require immediate data availability, use the various list APIs"
    (https://docs.stripe.com/search#data-freshness)."""
    listed = stripe_api(base).v1.customers.list({"limit": 100})
    named = {c.id: metadata(c).get("meterline_customer_id") for c in listed.auto_paging_iter()}
    return {ours: theirs for theirs, ours in named.items() if ours}


def know_customers(client: Client, base: str) -> None:
    """Every customer of the fake into the map of customers known without search, as the
    customer.created webhooks put them (sinks.stripe.customers)."""
    KnownCustomers(client).record(
        [KnownCustomer(theirs, ours, "webhook", 0) for ours, theirs in stripe_customers(base).items()]
    )


def stripe_totals(
    base: str, meters: dict[str, str], customers: list[str], span: tuple[int, int]
) -> dict[tuple[str, str], int]:
    """Per (meterline customer, meter): Stripe's aggregated value over `span` (epoch ms)."""
    api = stripe_api(base)
    start, end = span[0] // 60_000 * 60, (span[1] // 60_000 + 1) * 60
    totals = {}
    stripe_ids = stripe_customers(base)
    for customer in customers:
        for meter, meter_id in meters.items():
            summaries = api.v1.billing.meters.event_summaries.list(
                meter_id, {"customer": stripe_ids[customer], "start_time": start, "end_time": end}
            )
            value = sum(s.aggregated_value for s in summaries.auto_paging_iter())
            if value:
                totals[(customer, meter)] = int(value)
    return totals


def record_subscription_item(
    client: Client,
    customer: str,
    period: tuple[int, int],
    event_created: int,
    subscription: str = "sub_1",
    lookup_key: str = "",
    billing_mode: str = "classic",
    stripe_customer: str = "",
) -> None:
    """A row of `stripe_subscription_items` as the webhook consumer writes it from a
    customer.subscription.* event (epoch seconds); the Stripe customer is cus_<customer> unless given."""
    client.insert(
        "stripe_subscription_items",
        [
            [
                subscription,
                f"si_{subscription}_{event_created}",
                stripe_customer or f"cus_{customer}",
                customer,
                "active",
                f"price_{lookup_key}",
                lookup_key,
                period[0],
                period[1],
                event_created,
                billing_mode,
            ]
        ],
        column_names=list(SUBSCRIPTION_ITEM_COLUMNS),
    )


def subscribe(
    config: Config, base: str, customers: list[str], started: int | None = None
) -> dict[tuple[str, str], str]:
    """Legacy accounts: a metered price per meter (lookup key meterline_<meter>, on the products
    `stripe sync` made) and a subscription per customer, started at `started` (epoch s; default a
    week before the fake's clock). Returns (customer, meter) -> item id."""
    api = stripe_api(base)
    prices = {
        name: api.v1.prices.create(
            {
                "product": product_id(name),
                "currency": "usd",
                "unit_amount_decimal": "0.1",
                "lookup_key": f"meterline_{name}",
                "recurring": {"interval": "month", "usage_type": "metered"},
            },
            {"stripe_version": LEGACY_VERSION},
        ).id
        for name in config.meters
    }
    items = {}
    stripe_ids = stripe_customers(base)
    for customer in customers:
        # A week ago by default: a usage record's timestamp must lie in the item's current period
        # (https://stripe.com/docs/api/usage_records/create), and the workloads' windows do.
        subscription = api.v1.subscriptions.create(
            {
                "customer": stripe_ids[customer],
                "items": [{"price": price} for price in prices.values()],
                "backdate_start_date": int(time.time()) - 7 * 86_400 if started is None else started,
            }
        )
        for item in subscription["items"]["data"]:
            meter = next(name for name, price in prices.items() if price == item["price"]["id"])
            items[(customer, meter)] = item["id"]
    return items
