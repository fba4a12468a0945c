"""streams.buckets: items taken out by when they fall due, earliest first."""

from __future__ import annotations

from meterline.streams.buckets import Buckets


def test_items_come_out_by_time_then_in_the_order_added_and_only_once_due() -> None:
    buckets: Buckets[str] = Buckets()
    for time, item in ((300, "c"), (100, "b"), (100, "a"), (200, "d")):
        buckets.add(time, item)
    assert not buckets.due(99)
    assert buckets.due(100)
    assert list(buckets.pop_due(200)) == [(100, ["b", "a"]), (200, ["d"])]
    assert not buckets.due(299)
    assert list(buckets.pop_due(299)) == []
    assert list(buckets.pop_due(10_000)) == [(300, ["c"])]
    assert not buckets.due(10_000)


def test_an_item_added_again_at_a_time_taken_out_falls_due_again() -> None:
    """What the processor does with a window a later record's state holds (streams.processor step 1)."""
    buckets: Buckets[str] = Buckets()
    buckets.add(100, "a")
    taken = list(buckets.pop_due(100))
    buckets.add(100, "a")
    assert taken == [(100, ["a"])]
    assert list(buckets.pop_due(100)) == [(100, ["a"])]
