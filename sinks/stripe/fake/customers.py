"""Customers: created, retrieved, and searched with the lag Stripe's search has."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meterline.sinks.stripe.fake.errors import invalid, missing, new_id
from meterline.sinks.stripe.fake.objects import Objects


class Customers(Objects):
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
