"""Monthly billing periods as Stripe runs them, counted from their anchor: no I/O."""

from __future__ import annotations

from datetime import UTC, datetime

from meterline.core.months import add_months, anchor_of, monthly_period


def at(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def test_periods_anchored_on_the_31st_keep_it_after_a_short_month() -> None:
    """A subscription started on Jan 31 renews on the last day of shorter months and on the 31st
    again after them (Stripe's billing cycle anchor), never drifting to the 28th."""
    anchor = at("2027-01-31T09:00:00")
    assert monthly_period(anchor, at("2027-02-10T00:00:00")) == (anchor, at("2027-02-28T09:00:00"))
    assert monthly_period(anchor, at("2027-03-15T00:00:00")) == (
        at("2027-02-28T09:00:00"),
        at("2027-03-31T09:00:00"),
    )
    assert monthly_period(anchor, at("2027-04-01T00:00:00")) == (
        at("2027-03-31T09:00:00"),
        at("2027-04-30T09:00:00"),
    )
    assert monthly_period(anchor, at("2026-12-31T09:00:00")) == (at("2026-12-31T09:00:00"), anchor)
    assert add_months(anchor, 1) == at("2027-02-28T09:00:00") and add_months(anchor, 2) == at(
        "2027-03-31T09:00:00"
    )


def test_a_period_names_its_anchor_by_the_boundary_that_was_not_clamped() -> None:
    short = (at("2027-02-28T09:00:00"), at("2027-03-31T09:00:00"))
    assert anchor_of(*short) == short[1]
    assert monthly_period(anchor_of(*short), short[0] - 1) == (at("2027-01-31T09:00:00"), short[0])
    plain = (at("2026-11-15T00:00:00"), at("2026-12-15T00:00:00"))
    assert anchor_of(*plain) == plain[0]
    first_of_month = (at("2026-12-01T00:00:00"), at("2027-01-01T00:00:00"))  # the 1st is no clamped day
    assert anchor_of(*first_of_month) == first_of_month[0]
