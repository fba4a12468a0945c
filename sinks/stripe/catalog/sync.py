"""`meterline stripe sync`: the Stripe objects the configured meters and plans need.

Per meter: a billing meter for its `stripe_event_name` (sum of the reported deltas) and a product
with the deterministic id `meterline_<meter>`. Per plan and meter: a metered price with the lookup
key `meterline_<plan>_<meter>` on the meter; in `usage_records` mode a legacy one without a meter,
which is all usage records can bill, its calls pinned to `stripe.legacy_api_version`
(sinks.stripe.catalog.prices; one Stripe cannot bill exactly is reported,
not created; one marked `billed_by_stripe = false` is skipped); per plan with a base fee, a
licensed price `meterline_<plan>_base` on the product `meterline_plan_<plan>`. Idempotent: what
exists is found (meters by event name, products by id, prices by lookup key) and left alone; a
price whose terms changed in the rate card is replaced (Stripe prices are immutable: a new one
takes over the lookup key). `dry_run` changes nothing.

An active meter found by its event name is used only if it bills as meterline reports: sum of the
values, the customer and the value under the payload keys meterline sends (sinks.stripe.calls).
Stripe allows one meter per event name and no change to a meter "aside from the display name"
(https://docs.stripe.com/billing/subscriptions/usage-based/meters/configure): one made otherwise
(by hand, `count` or `last`, other payload keys) would mis-bill or refuse every event, and only
asynchronously. It is refused by name with what differs, and its prices are not made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import stripe

from meterline.core.config import Config
from meterline.core.dimensions import stripe_safe
from meterline.sinks.stripe.calls import CUSTOMER_PAYLOAD_KEY, VALUE_PAYLOAD_KEY, Caller
from meterline.sinks.stripe.catalog.prices import (
    base_fee_lookup_key,
    base_fee_price,
    lookup_key,
    metered_price,
)
from meterline.sinks.stripe.directory import metadata


@dataclass(frozen=True)
class Change:
    kind: str
    name: str
    action: str  # "exists", "created", "would create", "replaced", "would replace", "not representable: ..."
    stripe_id: str


def sync(config: Config, caller: Caller, dry_run: bool = False) -> list[Change]:
    client = caller.client
    listed, _ = caller.retrying(lambda: client.v1.billing.meters.list({"status": "active", "limit": 100}))
    found = {m.event_name: m for m in listed.auto_paging_iter()}
    meters: dict[str, str] = {}  # event name -> the id of the meter meterline reports into
    refused_events: set[str] = set()
    changes: list[Change] = []
    for name, meter in sorted(config.meters.items()):
        event_name = meter.stripe_event_name
        if event_name in found:
            differences = meter_differences(found[event_name])
            if differences:
                refused_events.add(event_name)
                changes.append(
                    Change(
                        "meter",
                        event_name,
                        f"refused: {'; '.join(differences)}. A meter cannot be changed: deactivate it "
                        "in Stripe, or give this meter another stripe_event_name",
                        found[event_name].id,
                    )
                )
            else:
                meters[event_name] = found[event_name].id
                changes.append(Change("meter", event_name, "exists", found[event_name].id))
        elif dry_run:
            changes.append(Change("meter", event_name, "would create", ""))
        else:
            params = {
                "display_name": name,
                "event_name": event_name,
                "default_aggregation": {"formula": "sum"},
            }
            created, _ = caller.retrying(lambda p=params: client.v1.billing.meters.create(p))  # type: ignore[misc]
            meters[event_name] = created.id
            changes.append(Change("meter", event_name, "created", created.id))
        changes.append(
            _product(
                caller, product_id(name), f"{name} ({meter.usage_unit})", {"meterline_meter": name}, dry_run
            )
        )
    legacy = config.stripe.mode == "usage_records"  # its metered prices carry no meter
    for plan in sorted(config.plans.values(), key=lambda p: p.name):
        if plan.base_fee:
            product = f"meterline_plan_{plan.name}"
            changes.append(
                _product(caller, product, f"{plan.name} plan", {"meterline_plan": plan.name}, dry_run)
            )
            changes.append(
                _price(caller, base_fee_lookup_key(plan.name), base_fee_price(plan, product), dry_run)
            )
        for meter_name, price in sorted(plan.prices.items()):
            key = lookup_key(plan.name, meter_name)
            if not price.billed_by_stripe:
                changes.append(Change("price", key, "skipped: not billed through Stripe", ""))
                continue
            if config.meters[meter_name].stripe_event_name in refused_events:
                changes.append(Change("price", key, "refused: its meter is refused (above)", ""))
                continue
            terms = metered_price(
                plan,
                price,
                meters.get(config.meters[meter_name].stripe_event_name) or "",
                product_id(meter_name),
                legacy,
            )
            changes.append(_price(caller, key, terms, dry_run, caller.legacy_version if legacy else None))
    return changes


def meter_differences(meter: stripe.billing.Meter) -> list[str]:
    """How an existing Stripe meter differs from the one meterline reports into (none: usable)."""
    wanted = {
        "default_aggregation.formula": "sum",
        "customer_mapping.type": "by_id",
        "customer_mapping.event_payload_key": CUSTOMER_PAYLOAD_KEY,
        "value_settings.event_payload_key": VALUE_PAYLOAD_KEY,
    }
    shown = meter.to_dict()
    differences = []
    for path, value in wanted.items():
        group, field = path.split(".")
        actual = (shown.get(group) or {}).get(field)
        if actual != value:
            differences.append(f"{path} is {actual!r}, not {value!r}")
    return differences


def refused(changes: list[Change]) -> bool:
    """Whether `stripe sync` left something undone that billing needs (exit 1)."""
    return any(c.action.startswith(("refused", "not representable")) for c in changes)


def product_id(meter: str) -> str:
    """A meter's product: a series' name holds its values, which may hold '.' (core.dimensions)."""
    return f"meterline_{stripe_safe(meter)}"


def _product(caller: Caller, product: str, name: str, metadata: dict[str, str], dry_run: bool) -> Change:
    client = caller.client
    try:
        caller.retrying(lambda: client.v1.products.retrieve(product))
        return Change("product", product, "exists", product)
    except stripe.InvalidRequestError as exc:
        if exc.code != "resource_missing":
            raise
    if dry_run:
        return Change("product", product, "would create", "")
    caller.retrying(lambda: client.v1.products.create({"id": product, "name": name, "metadata": metadata}))
    return Change("product", product, "created", product)


def _price(
    caller: Caller, key: str, params: dict[str, Any] | str, dry_run: bool, stripe_version: str | None = None
) -> Change:
    """The price under lookup key `key`; `stripe_version`: the API version its calls are pinned to
    (a legacy usage-records price exists only before 2025-03-31.basil)."""
    if isinstance(params, str):  # config check refuses these; a rate card built in code may not
        return Change("price", key, f"not representable: {params}", "")
    client = caller.client
    options: dict[str, Any] = {"stripe_version": stripe_version} if stripe_version else {}
    listed, _ = caller.retrying(lambda: client.v1.prices.list({"lookup_keys": [key]}, options))  # type: ignore[arg-type]
    existing = listed.data[0] if listed.data else None
    if (
        existing is not None
        and metadata(existing).get("meterline_fingerprint") == params["metadata"]["meterline_fingerprint"]
    ):
        return Change("price", key, "exists", existing.id)
    if dry_run:
        return Change("price", key, "would replace" if existing else "would create", "")
    create: dict[str, Any] = {**params, **({"transfer_lookup_key": True} if existing else {})}
    created, _ = caller.retrying(lambda: client.v1.prices.create(create, options))  # type: ignore[arg-type]
    return Change("price", key, "replaced" if existing else "created", created.id)
