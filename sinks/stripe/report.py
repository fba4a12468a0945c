"""What the Stripe sink reports for one window revision, and how it ended: pure values.

The identifier Stripe dedups on and the Idempotency-Key come from the aggregate identity alone
(DESIGN §3), so every retry, replay or restart sends the same ones.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from meterline.core.config import StripeConfig
from meterline.schemas.records import AggregateIdentity, WindowAggregate

MAX_PAST_S = 35 * 86_400  # Stripe refuses meter events older than 35 days
PAST_MARGIN_S = 3_600  # refuse an hour early: the call may be retried for a while
_IDENTIFIER_MAX = 100  # Stripe's limit
HOUR_MS = 3_600_000


class Status(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    WAITING = "waiting_for_customer"
    """Its Stripe customer is not known yet: the ledger holds the revision until it is (or until
    its horizon, `customer_wait_until`), so its offset may be committed meanwhile."""

    @property
    def done(self) -> bool:
        """Whether the sink is done with it: never reported again."""
        return self not in (Status.PENDING, Status.WAITING)


class Reason(StrEnum):
    """Why a revision is not billed through Stripe (usage.stripe.dlq's error.code)."""

    UNKNOWN_CUSTOMER = "unknown_customer"
    UNKNOWN_METER = "unknown_meter"
    NO_SUBSCRIPTION_ITEM = "no_subscription_item"
    NO_ITEM_AT_WINDOW_TIME = "no_item_at_window_time"
    TIMESTAMP_TOO_OLD = "timestamp_too_old"
    INVALID_VALUE = "invalid_value"
    CANNOT_LOWER_USAGE = "cannot_lower_usage"
    REFUSED = "refused_by_stripe"


def identifier(identity: AggregateIdentity) -> str:
    """Readable when it fits Stripe's 100 characters (support can search for it), hashed when not."""
    readable = "ml:" + ":".join(str(part) for part in identity)
    if len(readable) <= _IDENTIFIER_MAX:
        return readable
    digest = hashlib.sha256(readable.encode()).hexdigest()[:40]
    return f"ml:{digest}"


def idempotency_key(identity: AggregateIdentity, mode: str) -> str:
    return f"meterline:{mode}:{identifier(identity)}"


STREAM_BATCH = 100
"""Stripe's limit of meter events per meter_event_stream call."""


def stream_batch_key(identifiers: Sequence[str]) -> str:
    """The idempotency key of one meter_event_stream call: the same batch gets the same key on
    every retry (Stripe also dedups each event of it on its identifier)."""
    digest = hashlib.sha256("\n".join(identifiers).encode()).hexdigest()[:32]
    return f"meterline:stream:{digest}"


@dataclass(frozen=True)
class Report:
    aggregate: WindowAggregate
    stripe_customer: str
    stripe_event_name: str
    subscription_item: str | None = None  # usage_records mode
    sets_total: bool = False
    """usage_records mode: `action=set` to the window's total at its timestamp instead of an
    increment by the delta (how a negative correction lowers usage)."""
    contribution: int | None = None
    """A level's revision (`max`, `last`): what it moves its period's answer by as reported
    (sinks.stripe.levels)."""

    @property
    def identifier(self) -> str:
        return identifier(self.aggregate.identity)

    @property
    def value(self) -> int:
        """What Stripe adds: the revision's delta (revision 0's delta is its whole value), or a
        level's contribution; with `sets_total`, what Stripe sets the window's timestamp to: its
        total."""
        if self.contribution is not None:
            return self.contribution
        return self.aggregate.value if self.sets_total else self.aggregate.delta

    @property
    def timestamp(self) -> int:
        """Seconds: the window's start, so the usage lands in the billing period it belongs to."""
        return self.aggregate.window_start // 1000


@dataclass(frozen=True)
class Outcome:
    status: Status
    attempts: int = 0
    error_code: str = ""
    last_error: str = ""
    request_id: str = ""


def customer_wait_until(window_start_ms: int, window_end_ms: int, stripe: StripeConfig) -> int:
    """Epoch ms until which a window waits for its Stripe customer to be known. With
    `customer_wait_hours`, that long after the window's end; with 0, until its invoice can no longer
    take it: the invoice of a period is finalized `invoice_grace_hours` after the period ends, and
    usage reported later is not on it
    (https://docs.stripe.com/billing/subscriptions/usage-based/configure-grace-period). A customer
    Stripe has not named has no billing period meterline could know: the UTC calendar month the
    window starts in stands for it."""
    if stripe.customer_wait_hours:
        return window_end_ms + stripe.customer_wait_hours * HOUR_MS
    start = datetime.fromtimestamp(window_start_ms / 1000, UTC)
    month_end = datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)
    return int(month_end.timestamp()) * 1000 + stripe.invoice_grace_hours * HOUR_MS


def customer_unknown(aggregate: WindowAggregate, stripe: StripeConfig, now_ms: int) -> Outcome:
    """What becomes of a revision whose customer Stripe does not know yet (search lags a new one
    by up to an hour): it waits until its horizon (`customer_wait_until`), then it is refused."""
    until = customer_wait_until(aggregate.window_start, aggregate.window_end, stripe)
    at = f"{datetime.fromtimestamp(until / 1000, UTC):%Y-%m-%d %H:%M} UTC"
    where = (
        "stripe.customers, a customer.created webhook, `meterline stripe customers --import`, or "
        f"metadata {stripe.customer_metadata_key}"
    )
    if now_ms >= until:
        detail = f"no Stripe customer for {aggregate.customer_id!r} by {at}, when its invoice could no "
        detail += f"longer take the window ({where})"
        return Outcome(Status.FAILED, 0, str(Reason.UNKNOWN_CUSTOMER), detail)
    detail = f"no Stripe customer for {aggregate.customer_id!r} yet ({where}); waits until {at}"
    return Outcome(Status.WAITING, 0, str(Status.WAITING), detail)


def too_old(aggregate: WindowAggregate, now_s: float | None = None) -> bool:
    """Whether Stripe would refuse the window's timestamp (checked before the call)."""
    now = time.time() if now_s is None else now_s
    return aggregate.window_start // 1000 < now - MAX_PAST_S + PAST_MARGIN_S
