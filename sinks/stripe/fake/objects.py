"""What the fake holds, under one lock (its server is threaded), and the limits its resources
share. Each resource's rules live in a module of their own (customers, catalog, meters,
subscriptions); sinks.stripe.fake.state.FakeStripeState is all of them."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

DAY_S = 86_400
IDENTIFIER_WINDOW_S = DAY_S
MAX_PAST_S = 35 * DAY_S
MAX_FUTURE_S = 5 * 60
MAX_VALUE_DIGITS = 15
"""A meter event's value has at most 15 significant digits from 2026-04-22.dahlia on (meterline's
API version is later); every digit of an integer counted, the stricter reading."""
USAGE_RECORDS_REMOVED_IN = "2025-03-31"  # basil: the legacy usage records API is gone from there on


@dataclass
class MeterEvent:
    event_name: str
    identifier: str
    customer: str
    value: int
    timestamp: int
    created: int


@dataclass
class Objects:
    """Every object the fake holds, each resource's in a field."""

    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    products: dict[str, dict[str, Any]] = field(default_factory=dict)
    prices: dict[str, dict[str, Any]] = field(default_factory=dict)
    meters: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    meter_events: list[MeterEvent] = field(default_factory=list)
    error_reports: list[dict[str, Any]] = field(default_factory=list)
    usage_records: dict[str, list[dict[str, Any]]] = field(
        default_factory=dict
    )  # subscription item -> records
    identifiers: dict[str, int] = field(default_factory=dict)  # identifier -> when it was first accepted
    search_lag_seconds: float = 0.0
    """How long a customer written is not yet found by search: "Under normal operating conditions,
    data is searchable in less than a minute ... can be up to an hour behind during outages"
    (https://docs.stripe.com/api/customers/search). Retrieving it by id has no lag."""
    written_at: dict[str, float] = field(default_factory=dict)  # customer -> clock() of its last write
    lock: threading.RLock = field(default_factory=threading.RLock)
    clock: Any = time.time  # tests move time

    def now(self) -> int:
        return int(self.clock())
