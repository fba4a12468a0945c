"""The base fee across a plan change, as Stripe prorates it by default
(https://docs.stripe.com/billing/subscriptions/prorations): the first plan's fee, a credit for the
unused time on it and a charge for the remaining time on the new plan, "down to the second based
on the starting timestamp of the billing period" (https://docs.stripe.com/billing/scripts/prorations).
The pages do not say how a proration rounds to the cent: each is its own line, rounded half up as
every line. Pure; no I/O."""

from __future__ import annotations

from decimal import Decimal as D

from meterline.core.currencies import currency
from meterline.core.ratecard import MeterPrice, Plan
from meterline.reconciler.billing.plan_history import Part, invoice_over

NOV_1 = 1_793_491_200_000  # 2026-11-01T00:00:00Z
DAY = 86_400_000
CALLS = MeterPrice("api_calls", "API calls", "call", overage_price=D("0.001"))


def plan(name: str, fee: str) -> Plan:
    return Plan(name, currency("usd"), D(fee), {"api_calls": CALLS})


def test_stripe_s_example_an_upgrade_from_10_to_20_dollars_halfway_bills_5_more() -> None:
    """The page's table: "Unused time on original 10 USD plan (credit) -5 USD", "Remaining time on
    new 20 USD plan (debit) +10 USD"."""
    split = [
        Part(NOV_1, NOV_1 + 15 * DAY, plan("basic", "10"), True),
        Part(NOV_1 + 15 * DAY, NOV_1 + 30 * DAY, plan("pro", "20"), True),
    ]
    bill = invoice_over(split, [{"api_calls": 1000}, {"api_calls": 2000}])
    fees = [(line.description, line.amount) for line in bill.lines if line.meter is None]
    assert fees == [
        ("Base fee (basic, 2026-11-01 00:00 to 2026-11-16 00:00)", D("10.00")),
        ("Unused time on basic after 2026-11-16 00:00", D("-5.00")),
        ("Remaining time on pro after 2026-11-16 00:00", D("10.00")),
    ]
    assert bill.total == D("15.00") + D("1.00") + D("2.00")
    assert "create_prorations" in bill.notes[0]


def test_each_proration_is_its_own_line_rounded_to_the_cent() -> None:
    """$29 to $49 with 20 of 30 days left: -$19.3333... bills -$19.33 and $32.6666... bills $32.67;
    a downgrade the same day credits more than it charges."""
    change = NOV_1 + 10 * DAY
    up = [
        Part(NOV_1, change, plan("starter", "29"), True),
        Part(change, NOV_1 + 30 * DAY, plan("growth", "49"), True),
    ]
    lines = [line for line in invoice_over(up, [{}, {}]).lines if line.meter is None]
    assert [line.amount for line in lines] == [D("29.00"), D("-19.33"), D("32.67")]
    assert lines[1].parts[0].description == "1,728,000 of 2,592,000 seconds of the period at $29.00"
    down = [
        Part(NOV_1, change, plan("growth", "49"), True),
        Part(change, NOV_1 + 30 * DAY, plan("starter", "29"), True),
    ]
    assert sum((line.amount for line in invoice_over(down, [{}, {}]).lines), D(0)) == D("49.00") - D(
        "32.67"
    ) + D("19.33")


def test_a_period_with_no_change_has_no_proration() -> None:
    bill = invoice_over([Part(NOV_1, NOV_1 + 30 * DAY, plan("basic", "10"), True)], [{"api_calls": 5}])
    assert [(line.description, line.amount) for line in bill.lines] == [
        ("Base fee", D("10.00")),
        ("API calls", D("0.01")),
    ]
    assert bill.notes == ()
