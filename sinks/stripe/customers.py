"""Stripe customers meterline knows without searching: `stripe_customers` in ClickHouse, written
from the customer.created/updated/deleted webhooks and by `meterline stripe customers --import`.

Stripe's Search API is no way to find a customer just created: "Don't use search in read-after-write
flows where strict consistency is necessary. Under normal operating conditions, data is searchable
in less than a minute. Occasionally, propagation of new or updated data can be up to an hour behind
during outages" (https://docs.stripe.com/api/customers/search). The sink's directory asks this map
first; search is its fallback.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

COLUMNS = ("stripe_customer", "customer_id", "source", "updated_at")
STRIPE_CUSTOMER = re.compile(r"^cus_[A-Za-z0-9]+$")


@dataclass(frozen=True)
class KnownCustomer:
    stripe_customer: str
    customer_id: str
    """meterline's id (the metadata key's value); empty: the Stripe customer bills no one of ours."""
    source: str
    """webhook, import."""
    updated_at_ms: int


class KnownCustomers:
    def __init__(self, client: Client) -> None:
        self.client = client

    def find(self, customer_ids: Iterable[str]) -> dict[str, str]:
        """meterline id -> Stripe customer, for those known. Two Stripe customers claiming one id
        (a duplicate made by hand): the one updated last."""
        wanted = sorted(set(customer_ids))
        if not wanted:
            return {}
        rows = self.client.query(
            "SELECT customer_id, argMax(stripe_customer, updated_at) FROM stripe_customers FINAL "
            "WHERE customer_id IN %(wanted)s GROUP BY customer_id",
            parameters={"wanted": wanted},
        ).result_rows
        return {str(ours): str(theirs) for ours, theirs in rows}

    def count_by_source(self) -> dict[str, int]:
        """How many Stripe customers name one of ours, by where meterline learnt it."""
        rows = self.client.query(
            "SELECT source, count() FROM stripe_customers FINAL WHERE customer_id != '' GROUP BY source"
        ).result_rows
        return {str(source): int(n) for source, n in rows}

    def record(self, customers: Sequence[KnownCustomer]) -> None:
        if customers:
            self.client.insert(
                "stripe_customers",
                [[c.stripe_customer, c.customer_id, c.source, c.updated_at_ms] for c in customers],
                column_names=list(COLUMNS),
            )


class CustomersFileError(ValueError):
    """A customers file meterline cannot take: every problem, by line."""


def parse_import(text: str, now_ms: int | None = None) -> list[KnownCustomer]:
    """A CSV of `customer_id,stripe_customer` (a header line of those names is allowed). Every
    problem is reported at once, by line; nothing is taken from a file that has one."""
    at = int(time.time() * 1000) if now_ms is None else now_ms
    found: list[KnownCustomer] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(csv.reader(io.StringIO(text)), 1):
        cells = [cell.strip() for cell in row]
        if not any(cells) or (number == 1 and cells[:2] == ["customer_id", "stripe_customer"]):
            continue
        if len(cells) != 2 or not cells[0]:
            problems.append(f"line {number}: expected customer_id,stripe_customer, got {row!r}")
            continue
        ours, theirs = cells
        if not STRIPE_CUSTOMER.match(theirs):
            problems.append(f"line {number}: stripe_customer {theirs!r} is not a Stripe customer id (cus_…)")
        elif ours in seen:
            problems.append(f"line {number}: customer_id {ours!r} is already on line {seen[ours]}")
        else:
            seen[ours] = number
            found.append(KnownCustomer(theirs, ours, "import", at))
    if problems:
        raise CustomersFileError("\n".join(problems))
    return found
