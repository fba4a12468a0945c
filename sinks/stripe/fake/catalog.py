"""Products and prices: what Stripe refuses of a price's terms, and a price as an API version and
its `expand` see it."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from meterline.sinks.stripe.fake.errors import invalid, missing, new_id
from meterline.sinks.stripe.fake.objects import USAGE_RECORDS_REMOVED_IN, Objects


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


class Catalog(Objects):
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
