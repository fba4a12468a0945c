"""Which plan billed a customer when: a billing period split at each plan change, each part
priced on the plan of its time, as Stripe bills a price change mid-period.

Where the plans come from: the `customer.subscription.*` webhooks (`stripe_subscription_items`),
whose items' prices `stripe sync` named `meterline_<plan>_<meter>`, a change taking effect when
its event was created; for a customer Stripe has told nothing of, the configuration's
`[billing] history` and its current plan.

How Stripe bills the part before a change ("Update prices mid-cycle",
https://docs.stripe.com/billing/subscriptions/usage-based/manage-billing-setup): with
`billing_mode=flexible`, removing a metered price "create[s] an invoice item that bills for
previously reported metered usage"; with classic billing mode "Usage from January 1 to January 16
isn't billed". Each part is priced on its own, its tiers and included units counted from zero, as
each price is its own line.

How Stripe bills the base fee (a licensed price, billed in advance) across a change, with its
default `proration_behavior=create_prorations` (https://docs.stripe.com/billing/subscriptions/prorations):
the period's base fee is the first plan's, and each change adds two lines, a credit for the
"Unused time on" the old plan and a charge for the "Remaining time on" the new one, each the fee
times the share of the period left, "calculate[d] down to the second based on the starting
timestamp of the billing period" (https://docs.stripe.com/billing/scripts/prorations). Stripe
puts the fee on the period's opening invoice and the prorations and usage on the next one; the
preview shows what the period costs, all of them. The pages do not say how a proration is rounded
to the minor unit: each is its own line, rounded half up as every line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from itertools import pairwise
from typing import TYPE_CHECKING

from meterline.core.ratecard import Plan
from meterline.reconciler.billing.periods import PeriodError
from meterline.reconciler.billing.pricing import Invoice, Line, currency_notes, invoice
from meterline.reconciler.billing.pricing import Part as LinePart
from meterline.sinks.clickhouse.usage_windows import customer_usage
from meterline.sinks.stripe.catalog.prices import lookup_key

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from meterline.core.config import Config

CHANGES_PAGE = "https://docs.stripe.com/billing/subscriptions/usage-based/manage-billing-setup"
PRORATIONS_PAGE = "https://docs.stripe.com/billing/subscriptions/prorations"


@dataclass(frozen=True)
class Change:
    at_ms: int
    """When the plan took effect (epoch ms); 0: since before anything meterline knows."""
    plan: str
    billing_mode: str
    """flexible, classic, or unknown (a change stated in the configuration)."""


@dataclass(frozen=True)
class Part:
    start_ms: int
    end_ms: int
    plan: Plan
    billed: bool
    """Whether Stripe bills this part's usage (classic billing mode drops the part before a change)."""
    note: str = ""


def changes_from_stripe(config: Config, client: Client, customer: str) -> list[Change]:
    """The plan each subscription event put the customer on, in time order, where it changed."""
    rows = client.query(
        "SELECT toUnixTimestamp(event_created) * 1000, groupArray(price_lookup_key), any(billing_mode) "
        "FROM stripe_subscription_items FINAL WHERE customer_id = %(customer)s "
        "GROUP BY subscription_id, event_created ORDER BY event_created",
        parameters={"customer": customer},
    ).result_rows
    changes: list[Change] = []
    for at_ms, keys, mode in rows:
        plan = _plan_of(config, list(keys))
        if plan is not None and (not changes or changes[-1].plan != plan):
            changes.append(Change(int(at_ms) if changes else 0, plan, str(mode)))
    return changes


def changes_from_config(config: Config, customer: str) -> list[Change]:
    history = config.billing.history.get(customer, ())
    current = config.plan_for(customer).name
    starts = [0] + [until for _, until in history]
    plans = [plan for plan, _ in history] + [current]
    return [Change(at, plan, "unknown") for at, plan in zip(starts, plans, strict=True)]


def parts(config: Config, changes: Sequence[Change], start_ms: int, end_ms: int) -> list[Part]:
    """[start, end) split at every change inside it, each part on its plan."""
    inside = [c for c in changes if start_ms < c.at_ms < end_ms]
    before = [c for c in changes if c.at_ms <= start_ms]
    first = before[-1] if before else changes[0]
    bounds = [start_ms] + [c.at_ms for c in inside] + [end_ms]
    plans = [first, *inside]
    split = []
    for n, (change, low, high) in enumerate(zip(plans, bounds, bounds[1:], strict=False)):
        last = n == len(plans) - 1
        following = None if last else plans[n + 1]
        billed, note = True, ""
        if following is not None and following.billing_mode == "classic":
            billed = False
            note = (
                "not billed by Stripe: classic billing mode drops usage before a price change "
                f"({CHANGES_PAGE})"
            )
        elif following is not None and following.billing_mode == "unknown":
            note = "billed if the subscription's billing mode is flexible; classic would not bill it"
        split.append(Part(low, high, config.plans[change.plan], billed, note))
    return split


def invoice_over(split: Sequence[Part], usages: Sequence[Mapping[str, int]]) -> Invoice:
    """The invoice of a period split into parts (`usages[n]`: part n's usage): the first plan's base
    fee, each part's metered lines, named by their plan and time when there is more than one part
    and marked not billed where Stripe drops them, and the base fee's prorations at each change."""
    last = split[-1]
    if any(part.plan.currency != last.plan.currency for part in split):
        raise PeriodError("the plans of the period bill in different currencies: a subscription has one")
    lines: list[Line] = []
    notes = []
    for n, (part, usage) in enumerate(zip(split, usages, strict=True)):
        for line in invoice(part.plan, usage).lines:
            if line.meter is None and n != 0:
                continue  # the base fee, billed in advance: the first plan's; then prorations
            named = line.description
            if len(split) > 1:
                named += f" ({part.plan.name}, {_when(part.start_ms)} to {_when(part.end_ms)})"
            lines.append(
                replace(line, description=named, billed_by_stripe=line.billed_by_stripe and part.billed)
            )
        if part.note:
            notes.append(f"{part.plan.name}, {_when(part.start_ms)} to {_when(part.end_ms)}: {part.note}")
    lines += prorations(split)
    if len(split) > 1:
        notes.append(
            "base fee: the first plan's, with Stripe's prorations at each change (proration_behavior="
            f"create_prorations, Stripe's default; none would leave only the first fee) ({PRORATIONS_PAGE})"
        )
    plan = " then ".join(dict.fromkeys(part.plan.name for part in split))
    return Invoice(plan, last.plan.currency, tuple(lines), (*notes, *currency_notes(last.plan.currency)))


def prorations(split: Sequence[Part]) -> list[Line]:
    """At each change of plan: the old base fee's credit for the time left in the period, and the
    new one's charge for it, prorated to the second as Stripe does."""
    start_s, end_s = split[0].start_ms // 1000, split[-1].end_ms // 1000
    lines = []
    for old, new in pairwise(split):
        if old.plan.name == new.plan.name:
            continue
        left_s = end_s - new.start_ms // 1000
        share = Decimal(left_s) / Decimal(end_s - start_s)
        after = _when(new.start_ms)
        for description, fee in (
            (f"Unused time on {old.plan.name} after {after}", -old.plan.base_fee),
            (f"Remaining time on {new.plan.name} after {after}", new.plan.base_fee),
        ):
            if not fee:
                continue
            unit = new.plan.currency
            exact = fee * share
            basis = LinePart(
                f"{left_s:,} of {end_s - start_s:,} seconds of the period at {unit.format(abs(fee))}",
                share,
                fee,
                exact,
            )
            lines.append(Line(description, None, Decimal(1), (basis,), exact, unit.round(exact)))
    return lines


def period_invoice(
    config: Config, client: Client, customer: str, start_ms: int, end_ms: int
) -> tuple[list[Part], list[dict[str, int]], Invoice]:
    """The customer's invoice for [start, end): the parts of its plans (Stripe's subscription
    events, else the configuration), each part's usage from ClickHouse, and the invoice over them."""
    changes = changes_from_stripe(config, client, customer) or changes_from_config(config, customer)
    split = parts(config, changes, start_ms, end_ms)
    usages = [
        customer_usage(client, customer, part.start_ms, part.end_ms, levels=config.levels) for part in split
    ]
    return split, usages, invoice_over(split, usages)


def _plan_of(config: Config, lookup_keys: list[str]) -> str | None:
    for name, plan in config.plans.items():
        if any(lookup_key(name, meter) in lookup_keys for meter in plan.prices):
            return name
    return None


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")
