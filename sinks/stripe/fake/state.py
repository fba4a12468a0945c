"""What the Stripe fake knows and the rules it applies, without HTTP: the objects meterline uses
(customers, products, prices, meters, subscriptions), meter events and their summaries, legacy
usage records. sinks.stripe.fake.server serves it; tests/integration/test_stripe_fake.py pins each
rule to Stripe's documented behaviour.

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

from dataclasses import dataclass

from meterline.sinks.stripe.fake.catalog import Catalog
from meterline.sinks.stripe.fake.customers import Customers
from meterline.sinks.stripe.fake.meters import Meters
from meterline.sinks.stripe.fake.subscriptions import Subscriptions


@dataclass
class FakeStripeState(Customers, Catalog, Meters, Subscriptions):
    """All objects, under one lock: the server is threaded. Each endpoint's rules are in the module
    of its resource."""
