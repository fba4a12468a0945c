"""The rate card's arithmetic, table-driven: included + overage, hybrid, graduated and volume tiers,
tier edges, rounding of fractional units, zero usage; each invoice line rounded to the currency's
minor unit as Stripe rounds it; and, for random rate cards Stripe can bill, the same cents as a
reference computation of Stripe's documented line rules. Exact Decimal amounts; no I/O."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterline.config import load_config
from meterline.core.config import ConfigError
from meterline.core.currencies import UnknownCurrency, currency
from meterline.core.ratecard import MeterPrice, Plan, Tier
from meterline.reconciler.billing.invoice_text import describe, rows
from meterline.reconciler.billing.pricing import billed_quantity, invoice, meter_line
from meterline.sinks.stripe.catalog.prices import base_fee_terms, stripe_terms
from meterline.sinks.stripe.invoice_rules import line_amount, line_quantity

API = MeterPrice("api_calls", "API calls", "call", included=D(1_000_000), overage_price=D("0.001"))
GRADUATED = MeterPrice(
    "api_calls",
    "API calls",
    "call",
    tiers_mode="graduated",
    tiers=(Tier(D(100), D(10)), Tier(D(1000), D(8)), Tier(None, D(5), D(20))),
)
VOLUME = MeterPrice(
    "api_calls",
    "API calls",
    "call",
    tiers_mode="volume",
    tiers=(Tier(D(100), D(10)), Tier(D(1000), D(8)), Tier(None, D(5), D(20))),
)
EGRESS = MeterPrice(
    "egress_bytes", "egress", "GB", per=D(10**9), decimals=2, rounding="up", overage_price=D("0.09")
)


USD = currency("usd")


def plan(*prices: MeterPrice, base_fee: str = "0", currency_code: str = "usd") -> Plan:
    return Plan("test", currency(currency_code), D(base_fee), {p.meter: p for p in prices})


def test_the_seed_example_bills_exactly_200_dollars_of_overage() -> None:
    bill = invoice(plan(API), {"api_calls": 1_200_000})
    [line] = bill.lines
    assert (line.description, line.quantity, line.amount) == ("API calls", D(1_200_000), D("200.00"))
    assert [(p.description, p.quantity, p.amount) for p in line.parts] == [
        ("Included API calls", D(1_000_000), D(0)),
        ("Overage API calls", D(200_000), D("200.000")),
    ]
    assert bill.total == D("200.00")
    assert (
        describe(bill) == "Included API calls 1,000,000 / Overage API calls 200,000 at $0.001 / Total $200.00"
    )


@pytest.mark.parametrize(
    ("calls", "overage", "total"),
    [
        (0, 0, "0.00"),  # zero usage: the included part at 0, no overage
        (999_999, 0, "0.00"),
        (1_000_000, 0, "0.00"),  # exactly the included quantity
        (1_000_001, 1, "0.00"),  # $0.001: the line rounds to no cent
        (1_000_005, 5, "0.01"),  # $0.005 rounds half up
        (3_500_000, 2_500_000, "2500.00"),
    ],
)
def test_included_and_overage(calls: int, overage: int, total: str) -> None:
    [line] = invoice(plan(API), {"api_calls": calls}).lines
    assert line.parts[-1].quantity == overage and line.amount == D(total)
    assert line.parts[0].quantity == min(calls, 1_000_000)


def test_the_seed_s_hybrid_plan_adds_its_29_dollar_base_fee_as_its_own_line() -> None:
    hybrid = MeterPrice("api_calls", "API calls", "call", included=D(500_000), overage_price=D("0.001"))
    bill = invoice(plan(hybrid, base_fee="29"), {"api_calls": 700_000})
    assert [(line.description, line.amount) for line in bill.lines] == [
        ("Base fee", D("29.00")),
        ("API calls", D("200.00")),
    ]
    assert bill.total == D("229.00")
    assert describe(bill).startswith(
        "Base fee $29.00 / Included API calls 500,000 / Overage API calls 200,000"
    )


def test_the_seed_s_tiers_100_at_10_dollars_then_900_at_8() -> None:
    tiers = MeterPrice(
        "api_calls",
        "API calls",
        "call",
        tiers_mode="graduated",
        tiers=(Tier(D(100), D(10)), Tier(None, D(8))),
    )
    [line] = invoice(plan(tiers), {"api_calls": 1000}).lines
    assert [(p.quantity, p.amount) for p in line.parts] == [(100, D(1000)), (900, D(7200))]
    assert line.amount == D("8200.00")


@pytest.mark.parametrize(
    ("units", "amount"),
    [
        (0, D(0)),
        (1, D(10)),
        (100, D(1000)),  # exactly at the first edge: all in tier 1
        (101, D(1008)),  # one unit into tier 2
        (1000, D(1000 + 900 * 8)),  # exactly at the second edge
        (1001, D(1000 + 900 * 8 + 5 + 20)),  # into the last tier: its flat fee applies
    ],
)
def test_graduated_tiers_price_each_tier_s_units(units: int, amount: D) -> None:
    line = meter_line(GRADUATED, units, USD)
    assert line.amount == amount and sum(p.amount for p in line.parts) == amount
    assert sum(p.quantity for p in line.parts) == units


@pytest.mark.parametrize(
    ("units", "unit_price", "amount"),
    [
        (0, D(10), D(0)),
        (100, D(10), D(1000)),  # at the edge: still tier 1
        (101, D(8), D(808)),  # every unit at tier 2's price
        (1000, D(8), D(8000)),
        (1001, D(5), D(5005 + 20)),
    ],
)
def test_volume_tiers_price_every_unit_at_one_tier(units: int, unit_price: D, amount: D) -> None:
    line = meter_line(VOLUME, units, USD)
    assert (line.unit_price, line.amount, line.quantity) == (unit_price, amount, units)


@pytest.mark.parametrize(
    ("rounding", "bytes_", "gb"),
    [
        ("up", 1_234_000_001, D("1.24")),
        ("down", 1_239_999_999, D("1.23")),
        ("half_up", 1_235_000_000, D("1.24")),
        ("half_up", 1_234_999_999, D("1.23")),
        ("up", 0, D("0.00")),
    ],
)
def test_fractional_units_round_by_the_declared_rule(rounding: str, bytes_: int, gb: D) -> None:
    price = MeterPrice("egress_bytes", "egress", "GB", per=D(10**9), decimals=2, rounding=rounding)  # type: ignore[arg-type]
    assert billed_quantity(price, bytes_) == gb


# -- per-line rounding: https://stripe.com/docs/billing/subscriptions/decimal-amounts, "Rounding occurs
# on the line item level of your invoices ... each will be rounded before summing up the total" -------


def test_stripe_s_own_example_0_05_cents_times_30_bills_2_cents() -> None:
    price = MeterPrice("storage_mb", "storage", "MB", overage_price=D("0.0005"))  # 0.05 cents a MB
    assert meter_line(price, 30, USD).amount == D("0.02")


def test_three_meters_at_half_a_cent_each_bill_three_cents_not_two() -> None:
    meters = [MeterPrice(m, m, "call", overage_price=D("0.005")) for m in ("a", "b", "c")]
    bill = invoice(plan(*meters), {"a": 1, "b": 1, "c": 1})
    assert [line.amount for line in bill.lines] == [D("0.01")] * 3
    assert bill.total == D("0.03")  # the total rounded once would be $0.02


def test_a_base_fee_of_29_995_plus_half_a_cent_of_usage_bills_30_01() -> None:
    usage = MeterPrice("api_calls", "API calls", "call", overage_price=D("0.005"))
    bill = invoice(plan(usage, base_fee="29.995"), {"api_calls": 1})
    assert [line.amount for line in bill.lines] == [D("30.00"), D("0.01")]
    assert bill.total == D("30.01")  # once: $30.00
    assert rows(bill)[-1] == {"line": "Total", "quantity": "", "unit price": "", "amount": "$30.01"}


def test_a_line_s_exact_amount_stays_visible_beside_its_cents() -> None:
    [line] = invoice(plan(EGRESS), {"egress_bytes": 1_234_000_001}).lines  # 1.24 GB at $0.09
    assert (line.exact_amount, line.amount) == (D("0.1116"), D("0.11"))
    assert [r["amount"] for r in rows(invoice(plan(EGRESS), {"egress_bytes": 1_234_000_001}))] == [
        "$0.11",
        "$0.1116",
        "$0.11",
    ]


# -- currencies: https://docs.stripe.com/currencies ----------------------------------------------------


@pytest.mark.parametrize(
    ("code", "exponent", "amount", "rounded", "shown"),
    [
        ("usd", 2, "200.005", "200.01", "$200.01"),
        ("jpy", 0, "1200.5", "1201", "¥1,201"),  # zero-decimal: whole yen
        ("krw", 0, "0.4", "0", "0 KRW"),
        ("kwd", 3, "1.2345", "1.235", "1.235 KWD"),  # three-decimal: fils
        ("isk", 2, "10.005", "10.01", "10.01 ISK"),  # two-decimal in the API (the page's special case)
    ],
)
def test_each_currency_rounds_to_its_own_minor_unit(
    code: str, exponent: int, amount: str, rounded: str, shown: str
) -> None:
    unit = currency(code)
    assert unit.exponent == exponent
    assert unit.round(D(amount)) == D(rounded)
    assert unit.format(unit.round(D(amount))) == shown


def test_a_yen_plan_is_billed_in_whole_yen() -> None:
    per_call = MeterPrice("api_calls", "API calls", "call", overage_price=D("0.15"))
    bill = invoice(plan(per_call, base_fee="3000", currency_code="jpy"), {"api_calls": 10_003})
    assert [line.amount for line in bill.lines] == [D(3000), D(1500)]  # 1,500.45 yen: 1,500
    assert stripe_terms(plan(per_call, currency_code="jpy"), per_call) == {"unit_amount_decimal": "0.15"}
    assert base_fee_terms(plan(per_call, base_fee="3000", currency_code="jpy")) == {
        "unit_amount_decimal": "3000"
    }


def test_a_three_decimal_currency_s_invoice_says_what_stripe_does_not_document() -> None:
    """https://docs.stripe.com/currencies: three-decimal amounts in payments must end in 0 ("round
    amounts to the nearest ten"); how an invoice gets there is not documented. The lines are exact
    to the fils, and the invoice says the charge may differ."""
    per_call = MeterPrice("api_calls", "API calls", "call", overage_price=D("0.0015"))
    bill = invoice(plan(per_call, currency_code="kwd"), {"api_calls": 3})  # 0.0045 KWD
    assert bill.total == D("0.005") and "up to 0.005" in bill.notes[0]
    assert invoice(plan(per_call), {"api_calls": 3}).notes == ()


def test_a_currency_stripe_does_not_list_is_refused() -> None:
    with pytest.raises(UnknownCurrency, match="'xyz': not one of Stripe's currencies"):
        currency("xyz")


# -- what Stripe can bill: sinks/stripe/catalog/prices.py ------------------------------------------


def test_billed_units_with_decimals_become_a_quantity_transform_and_a_per_hundredth_amount() -> None:
    # https://docs.stripe.com/billing/subscriptions/usage-based/transform-quantities: divide, round up or down
    assert stripe_terms(plan(EGRESS), EGRESS) == {
        "transform_quantity": {"divide_by": 10_000_000, "round": "up"},
        "unit_amount_decimal": "0.09",  # cents per hundredth of a GB
    }


@pytest.mark.parametrize(
    ("price", "why"),
    [
        (  # https://docs.stripe.com/billing/subscriptions/usage-based/transform-quantities
            MeterPrice("c", "c", "s", per=D(1000), tiers_mode="graduated", tiers=(Tier(None, D(1)),)),
            "not compatible with tiered pricing",
        ),
        (MeterPrice("c", "c", "s", per=D(1000), included=D(5), overage_price=D(1)), "not compatible"),
        (MeterPrice("c", "c", "s", per=D(1000), rounding="half_up", overage_price=D(1)), "not half up"),
        (MeterPrice("c", "c", "GB", per=D(30), decimals=2, overage_price=D(1)), "nor divides it"),
        (  # https://stripe.com/docs/billing/subscriptions/decimal-amounts: "up to 12 decimal places"
            MeterPrice("c", "c", "call", overage_price=D("0.000000000000001")),  # 13 decimals of a cent
            "more than the 12 decimals",
        ),
        (  # the API's flat_amount_decimal "represents an integer in the minor units"
            MeterPrice("c", "c", "call", tiers_mode="volume", tiers=(Tier(None, D(1), D("0.005")),)),
            "whole number of minor units",
        ),
        (
            MeterPrice("c", "c", "call", included=D(5), tiers_mode="graduated", tiers=(Tier(None, D(1)),)),
            "included and tiers",
        ),
    ],
)
def test_a_price_stripe_cannot_bill_exactly_is_refused_with_the_reason(price: MeterPrice, why: str) -> None:
    terms = stripe_terms(plan(price), price)
    assert isinstance(terms, str) and why in terms


# -- the property: meterline's invoice is the invoice Stripe's documented line rules give -------------------

amounts = st.builds(lambda n, e: D(n).scaleb(-e), st.integers(0, 10**6), st.integers(0, 6))


@st.composite
def billable_prices(draw: st.DrawFn, name: str) -> MeterPrice:
    kind = draw(st.sampled_from(["per_unit", "included", "graduated", "volume"]))
    if kind == "per_unit":
        decimals = draw(st.integers(0, 3))
        divide_by = draw(st.sampled_from([1, 10, 1000, 10**6]))
        rounding = draw(st.sampled_from(["up", "down"] + (["half_up"] if divide_by == 1 else [])))
        # per a whole multiple of 10^decimals, or one of its divisors (per 4, 2 decimals: issue 35)
        divisors = [d for d in (2, 4, 5, 8, 20, 25, 40, 125) if 10**decimals % d == 0]
        per = draw(st.sampled_from([divide_by * 10**decimals, *divisors]))
        return MeterPrice(
            name,
            name,
            "unit",
            per=D(per),
            decimals=decimals,
            rounding=rounding,
            overage_price=draw(amounts),
        )
    if kind == "included":
        return MeterPrice(
            name, name, "unit", included=D(draw(st.integers(0, 10**7))), overage_price=draw(amounts)
        )
    edges = sorted(draw(st.sets(st.integers(1, 10**7), max_size=3)))
    flat_fees = st.builds(lambda n: D(n).scaleb(-2), st.integers(0, 10**5))  # whole cents (usd, eur)
    tiers = tuple(
        Tier(None if up_to is None else D(up_to), draw(amounts), draw(flat_fees)) for up_to in [*edges, None]
    )
    return MeterPrice(name, name, "unit", tiers_mode=kind, tiers=tiers)  # type: ignore[arg-type]


@given(
    code=st.sampled_from(["usd", "eur"]),
    base_fee=amounts,
    prices=st.lists(st.sampled_from("abcd"), min_size=1, max_size=4, unique=True).flatmap(
        lambda names: st.tuples(*(billable_prices(n) for n in names))
    ),
    usage=st.lists(st.one_of(st.just(0), st.integers(0, 10**11)), min_size=4, max_size=4),
)
@settings(max_examples=settings().max_examples * 4, deadline=None)  # 400; quick: 40
def test_random_usage_on_random_billable_cards_bills_what_stripe_s_line_rules_bill(
    code: str, base_fee: D, prices: tuple[MeterPrice, ...], usage: list[int]
) -> None:
    card = plan(*prices, base_fee=str(base_fee), currency_code=code)
    used = {p.meter: usage[n] for n, p in enumerate(prices)}
    bill = invoice(card, used)
    unit = currency(code)
    expected: list[int] = []
    if base_fee:
        fee = base_fee_terms(card)
        assert isinstance(fee, dict)
        expected.append(line_amount(fee, D(1)))
    for price in prices:
        terms = stripe_terms(card, price)
        assert isinstance(terms, dict), terms
        expected.append(line_amount(terms, line_quantity(terms, used[price.meter])))
    assert [int(unit.to_minor(line.amount)) for line in bill.lines] == expected
    assert unit.to_minor(bill.total) == sum(expected)


# -- issue 35, item 6: where the independent check and Stripe's rules disagreed with meterline ---------------

FIRST_TIER_FEE = (Tier(D(1000), D(0), D(200)), Tier(None, D("0.001")))


@pytest.mark.parametrize("mode", ["graduated", "volume"])
def test_no_usage_bills_the_first_tier_s_flat_fee(mode: str) -> None:
    """A base fee carried as the first tier's flat fee is billed at zero usage. Stripe's tables start
    the first tier at "First unit 0" (https://docs.stripe.com/billing/subscriptions/usage-based/pricing-models),
    a volume price "bills at the tier corresponding to the amount of usage at the end of the period"
    (https://docs.stripe.com/subscriptions/pricing-models/tiered-pricing), and `flat_amount` is "the
    flat billing amount for an entire tier, regardless of the number of units in the tier" (API
    reference, price tiers). No page shows an invoice at zero usage: the worked examples decide,
    and Stripe test mode has to confirm it (the closing note of issue 35 gives the request)."""
    price = MeterPrice("api_calls", "API calls", "call", tiers_mode=mode, tiers=FIRST_TIER_FEE)  # type: ignore[arg-type]
    card = plan(price)
    terms = stripe_terms(card, price)
    assert isinstance(terms, dict)
    # at 1,001, graduated: 1,000 in the first tier and one at $0.001; volume: all at $0.001
    after = "200.00" if mode == "graduated" else "1.00"
    for calls, total in ((0, "200.00"), (1000, "200.00"), (1001, after)):
        bill = invoice(card, {"api_calls": calls})
        assert bill.total == D(total), (calls, bill.total)
        assert int(currency("usd").to_minor(bill.total)) == line_amount(terms, line_quantity(terms, calls))


def test_a_tier_up_to_0_is_refused_by_config_check() -> None:
    """A first tier `up_to = 0` held no usage and its flat fee was never billed; no usage is the
    first tier's (above), so such a tier is a mistake: refused with where and why."""
    with pytest.raises(ConfigError) as caught:
        load_config(
            None,
            {
                "METERLINE__PLANS__STANDARD__PRICES__API_CALLS__TIERS_MODE": "graduated",
                "METERLINE__PLANS__STANDARD__PRICES__API_CALLS__TIERS": (
                    '[{up_to = 0, unit_price = "0", flat_fee = "200"}, {unit_price = "0.001"}]'
                ),
            },
        )
    [problem] = [p for p in caught.value.problems if p.field.endswith("tiers[0].up_to")]
    assert problem.value == 0 and problem.why.startswith("must be above 0")


def test_a_per_that_divides_10_to_the_decimals_is_billed_per_base_unit_exactly() -> None:
    """per = 4 with 2 decimals: a base unit is exactly 0.25 of a billed unit, so the billed quantity
    never needs rounding, and Stripe bills the base units at the price over 4 (no quantity transform,
    whose `divide_by` is a whole number: https://docs.stripe.com/billing/subscriptions/usage-based/transform-quantities)."""
    price = MeterPrice("c", "c", "batch", per=D(4), decimals=2, overage_price=D("0.02"))
    card = plan(price)
    terms = stripe_terms(card, price)
    assert terms == {"unit_amount_decimal": "0.5"}  # half a cent a base unit
    for units, total in ((1, "0.01"), (3, "0.02"), (4, "0.02"), (1001, "5.01")):  # 0.005, 0.015, 0.02, 5.005
        bill = invoice(card, {"c": units})
        assert bill.total == D(total), units
        assert int(currency("usd").to_minor(bill.total)) == line_amount(terms, line_quantity(terms, units))


def test_an_isk_invoice_says_stripe_charges_whole_kronur() -> None:
    """ISK is two-decimal in Stripe's API but "charged amounts must be evenly divisible by 100"
    (https://support.stripe.com/questions/deprecation-of-fractional-isk-charges-and-refunds): the
    lines are exact to the eyrir, and the invoice says the charge may differ, as for KWD."""
    per_call = MeterPrice("api_calls", "API calls", "call", overage_price=D("0.15"))
    bill = invoice(plan(per_call, currency_code="isk"), {"api_calls": 3})
    assert bill.total == D("0.45") and "charged in whole units" in bill.notes[0]
    assert "up to 0.50" in bill.notes[0]
    assert currency("isk").charge_step == 100 and currency("kwd").charge_step == 10
