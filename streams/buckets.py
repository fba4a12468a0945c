"""Items grouped by when they fall due, in order of that time: the processor's open windows by the
end they close at, replay's closed windows by when their ids expire.

Many items share a time (the windows of one minute close together; the windows one record closes
share their ids' deadline), so the heap holds each time once. A heap of (time, item) compared the
items themselves on every tie: window keys, 4% of the worker's time on single-event messages."""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Generic, TypeVar

Item = TypeVar("Item")


class Buckets(Generic[Item]):
    def __init__(self) -> None:
        self._items: dict[int, list[Item]] = {}
        self._times: list[int] = []  # heap of the keys of _items

    def add(self, time: int, item: Item) -> None:
        items = self._items.get(time)
        if items is None:
            items = self._items[time] = []
            heapq.heappush(self._times, time)
        items.append(item)

    def due(self, limit: int) -> bool:
        """Whether any item falls due at or before `limit`."""
        return bool(self._times) and self._times[0] <= limit

    def pop_due(self, limit: int) -> Iterator[tuple[int, list[Item]]]:
        """Take out the items due at or before `limit`, a time at a time, earliest first, each time's
        items in the order they were added. Items added meanwhile are taken too if due."""
        times = self._times
        while times and times[0] <= limit:
            time = heapq.heappop(times)
            yield time, self._items.pop(time)
