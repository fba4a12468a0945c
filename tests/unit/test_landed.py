"""sinks.stripe.landed's rule, pure: what Stripe's total of a window says of its reports whose
answers were lost once Stripe may have forgotten their identifiers (issue 35, item 5)."""

from __future__ import annotations

import pytest

from meterline.sinks.stripe.landed import Landing, landing


@pytest.mark.parametrize(
    ("stripe_total", "settled", "pending", "verdict"),
    [
        (7, 0, [7], Landing.LANDED),  # the lost report is in Stripe's total
        (0, 0, [7], Landing.NOT_LANDED),  # it is not: send it
        (12, 5, [7], Landing.LANDED),  # another partition's settled 5 beside it
        (5, 5, [7], Landing.NOT_LANDED),
        (3, 0, [7], Landing.UNDECIDED),  # neither: on-call decides
        (10, 0, [7, 3], Landing.LANDED),  # both of a window's lost revisions
        (7, 0, [7, 3], Landing.UNDECIDED),  # one of two: which cannot be told
        (0, 0, [5, -5], Landing.NOT_LANDED),  # sending both again adds nothing either way
        (-3, 0, [-3], Landing.LANDED),  # a negative correction
    ],
)
def test_what_stripe_s_total_says_of_a_window_s_lost_reports(
    stripe_total: int, settled: int, pending: list[int], verdict: Landing
) -> None:
    assert landing(stripe_total, settled, pending) is verdict
