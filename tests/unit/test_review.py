"""The billing review's arithmetic (reconciler/review/figures.py), without I/O."""

from __future__ import annotations

from decimal import Decimal

from meterline.config import load_config
from meterline.reconciler.review.figures import (
    Fit,
    Latency,
    MonthReview,
    Payments,
    Review,
    crossing_day,
    fits,
    months_ending,
    payments,
)

STANDARD = load_config(None, {}).plans["standard"]  # 1,000,000 API calls included
CALLS = STANDARD.prices["api_calls"]


def test_months_ending_count_back_across_a_year() -> None:
    assert months_ending("2026-02", 3) == ["2025-12", "2026-01", "2026-02"]
    assert months_ending("2026-11", 1) == ["2026-11"]


def test_an_invoice_counts_by_its_latest_outcome_and_a_failing_one_is_named() -> None:
    found = payments([("in_1", "cust-a", "paid"), ("in_2", "cust-b", "failed"), ("in_3", "cust-c", "paid")])
    assert found == Payments(paid=2, failed=1, failing=(("cust-b", "in_2"),))
    assert found.success_percent == Decimal("66.7")
    assert payments([]).success_percent is None


def test_overage_begins_the_day_the_month_s_usage_exceeds_the_included_quantity() -> None:
    assert crossing_day([(3, 500_000), (2, 500_000), (9, 1)], CALLS) == 9  # exactly 1,000,000 is included
    assert crossing_day([(2, 600_000), (3, 500_000)], CALLS) == 3
    assert crossing_day([(1, 999_999)], CALLS) is None
    # A level: a peak crosses on its highest day, a latest level on a day it stands above
    levels = [(1, 600_000), (2, 1_200_000), (3, 500_000)]
    assert [crossing_day(levels, CALLS, kind) for kind in ("sum", "max", "last")] == [2, 2, 2]
    assert crossing_day([(1, 600_000), (2, 700_000)], CALLS, "max") is None  # the sum would cross


def test_a_plan_s_fit_lists_who_crossed_when_and_who_stayed_far_below() -> None:
    daily = {
        ("cust-a", "api_calls"): [(2, 600_000), (3, 500_000)],
        ("cust-b", "api_calls"): [(1, 400_000)],
        ("cust-c", "api_calls"): [(5, 249_999)],
        ("cust-c", "egress_bytes"): [(5, 10**12)],  # no included quantity: not a fit question
    }
    plans = dict.fromkeys(("cust-a", "cust-b", "cust-c"), STANDARD)
    assert fits(plans, daily) == (
        Fit("standard", "api_calls", Decimal(1_000_000), 3, (("cust-a", 3),), ("cust-c",)),
    )


def test_early_every_month_means_by_day_ten_in_each_month_reviewed() -> None:
    def month(crossed: tuple[tuple[str, int], ...]) -> MonthReview:
        fit = Fit("standard", "api_calls", Decimal(1_000_000), 3, crossed, ())
        return MonthReview("m", Payments(0, 0, ()), Latency(0, (), ()), None, (fit,), (), {})

    review = Review((month((("cust-a", 3), ("cust-b", 20))), month((("cust-a", 10), ("cust-b", 8)))))
    assert review.early_every_month == (("standard", "api_calls", "cust-a"),)
    assert Review(()).early_every_month == ()
