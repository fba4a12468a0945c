"""`meterline stripe sync`: the Stripe objects the configured meters need, created when missing.

Per meter: a billing meter for its `stripe_event_name` (sum of the reported deltas) and a product
with the deterministic id `meterline_<meter>`. Idempotent: what exists is found (meters by event
name, products by id) and left alone; `dry_run` only says what would be created. Prices belong to
plans and are created with them (the rate card).
"""

from __future__ import annotations

from dataclasses import dataclass

import stripe

from meterline.config import Config
from sinks.stripe.calls import Caller
from sinks.stripe.directory import price_lookup_key


@dataclass(frozen=True)
class Change:
    kind: str
    name: str
    action: str  # "exists", "created", "would create"
    stripe_id: str


def sync(config: Config, caller: Caller, dry_run: bool = False) -> list[Change]:
    client = caller.client
    listed, _ = caller.retrying(lambda: client.v1.billing.meters.list({"status": "active", "limit": 100}))
    meters = {m.event_name: m.id for m in listed.auto_paging_iter()}
    changes = []
    for name, meter in sorted(config.meters.items()):
        event_name = meter.stripe_event_name
        if event_name in meters:
            changes.append(Change("meter", event_name, "exists", meters[event_name]))
        elif dry_run:
            changes.append(Change("meter", event_name, "would create", ""))
        else:
            params = {
                "display_name": name,
                "event_name": event_name,
                "default_aggregation": {"formula": "sum"},
            }
            created, _ = caller.retrying(lambda p=params: client.v1.billing.meters.create(p))  # type: ignore[misc]
            changes.append(Change("meter", event_name, "created", created.id))
        product_id = price_lookup_key(name)
        try:
            caller.retrying(lambda p=product_id: client.v1.products.retrieve(p))  # type: ignore[misc]
            changes.append(Change("product", product_id, "exists", product_id))
        except stripe.InvalidRequestError as exc:
            if exc.code != "resource_missing":
                raise
            if dry_run:
                changes.append(Change("product", product_id, "would create", ""))
            else:
                params = {
                    "id": product_id,
                    "name": f"{name} ({meter.unit})",
                    "metadata": {"meterline_meter": name},
                }
                caller.retrying(lambda p=params: client.v1.products.create(p))  # type: ignore[misc]
                changes.append(Change("product", product_id, "created", product_id))
    return changes
