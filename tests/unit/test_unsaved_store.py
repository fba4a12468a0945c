"""streams.state.UnsavedStore, replay's store: a closed window's ids are let go once the clock's
watermark reaches their deadline, so a replay of a long range holds the ids of the dedup retention
only. What is counted does not depend on it (the processor judges expiry from the watermark
itself, tests/unit/test_processor.py); what is held does."""

from __future__ import annotations

from meterline.streams.state import PartitionClock, UnsavedStore, WindowKey, WindowState


def closed(customer: str, ids: set[str]) -> WindowState:
    return WindowState(WindowKey(customer, "api_calls", 0), event_ids=set(ids), open=False)


def test_ids_are_let_go_when_the_watermark_reaches_their_deadline_not_before() -> None:
    store = UnsavedStore()
    first, second = closed("c1", {"a"}), closed("c2", {"b"})
    store.save_window(first, ids_until=100)
    store.save_window(second, ids_until=100)
    store.save_clock(PartitionClock(watermark=99))
    assert first.event_ids == {"a"} and second.event_ids == {"b"}
    store.save_clock(PartitionClock(watermark=100))
    assert first.event_ids is None and second.event_ids is None
    assert store.load_window(first.key) is first


def test_a_window_closed_again_keeps_its_ids_until_its_new_deadline() -> None:
    store = UnsavedStore()
    window = closed("c1", {"a"})
    store.save_window(window, ids_until=100)
    window.event_ids = {"a", "late"}  # a correction reopened and closed it again
    store.save_window(window, ids_until=200)
    store.save_clock(PartitionClock(watermark=150))
    assert window.event_ids == {"a", "late"}
    store.save_clock(PartitionClock(watermark=200))
    assert window.event_ids is None


def test_an_open_window_keeps_its_ids() -> None:
    store = UnsavedStore()
    window = closed("c1", {"a"})
    store.save_window(window, ids_until=100)
    window.open = True  # reopened by a late event, not closed yet
    store.save_clock(PartitionClock(watermark=100))
    assert window.event_ids == {"a"}


def test_a_window_saved_twice_with_one_deadline_is_let_go_once() -> None:
    store = UnsavedStore()
    window = closed("c1", {"a"})
    store.save_window(window, ids_until=100)
    store.save_window(window, ids_until=100)  # closed, then touched by the same record
    store.save_clock(PartitionClock(watermark=100))
    assert window.event_ids is None
