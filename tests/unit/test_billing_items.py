"""Which subscription item bills a legacy window: the one whose billing had begun at its time."""

from __future__ import annotations

from meterline.sinks.stripe.directory import BillingItem, billing_from, item_at

START, CREATED, CHANGED = 1_000, 5_000, 9_000


def test_an_item_made_with_a_backdated_subscription_bills_from_its_start() -> None:
    subscription = {"start_date": START, "created": CREATED}
    assert billing_from(subscription, {"created": CREATED}) == START
    assert billing_from(subscription, {}) == START  # an item without `created` is taken as the first


def test_an_item_added_later_bills_from_its_creation() -> None:
    assert billing_from({"start_date": START, "created": CREATED}, {"created": CHANGED}) == CHANGED


def test_a_window_goes_to_the_last_item_begun_at_its_time() -> None:
    old, new = BillingItem("si_old", START), BillingItem("si_new", CHANGED)
    assert item_at([old, new], CHANGED - 1) == old
    assert item_at([new, old], CHANGED) == new
    assert item_at([new], CHANGED - 1) is None  # the item of its time was removed
    assert item_at([], CHANGED) is None
