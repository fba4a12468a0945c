"""The rate card's arithmetic, table-driven: included + overage, hybrid, graduated and volume tiers,
tier edges, rounding of fractional units, zero usage. Exact Decimal amounts; no I/O."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from reconciler.pricing import MeterPrice, Plan, Tier, billed_quantity, describe, invoice, meter_lines

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


def plan(*prices: MeterPrice, base_fee: str = "0") -> Plan:
    return Plan("test", "usd", D(base_fee), {p.meter: p for p in prices})


def test_the_seed_example_bills_exactly_200_dollars_of_overage() -> None:
    bill = invoice(plan(API), {"api_calls": 1_200_000})
    assert [(line.description, line.quantity, line.amount) for line in bill.lines] == [
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
        (0, 0, "0.00"),  # zero usage: the included line at 0, no overage
        (999_999, 0, "0.00"),
        (1_000_000, 0, "0.00"),  # exactly the included quantity
        (1_000_001, 1, "0.00"),  # $0.001: rounds to the cent at the total only
        (1_000_005, 5, "0.01"),  # $0.005 rounds half up
        (3_500_000, 2_500_000, "2500.00"),
    ],
)
def test_included_and_overage(calls: int, overage: int, total: str) -> None:
    bill = invoice(plan(API), {"api_calls": calls})
    assert bill.lines[-1].quantity == overage and bill.total == D(total)
    assert bill.lines[0].quantity == min(calls, 1_000_000)


def test_a_hybrid_plan_adds_its_base_fee() -> None:
    hybrid = MeterPrice("api_calls", "API calls", "call", included=D(500_000), overage_price=D("0.001"))
    bill = invoice(plan(hybrid, base_fee="49.00"), {"api_calls": 700_000})
    assert bill.total == D("249.00")
    assert describe(bill).startswith(
        "Base fee $49.00 / Included API calls 500,000 / Overage API calls 200,000"
    )


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
    lines = meter_lines(GRADUATED, units)
    assert sum(line.amount for line in lines) == amount
    assert sum(line.quantity for line in lines) == units


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
    [line] = meter_lines(VOLUME, units)
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


def test_lines_are_exact_and_only_the_total_is_rounded() -> None:
    bill = invoice(plan(EGRESS), {"egress_bytes": 1_234_000_001})  # 1.24 GB at $0.09
    assert bill.lines[0].amount == D("0.1116") and bill.total == D("0.11")
