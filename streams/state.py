"""What the stream app remembers, per source partition, and how it is stored.

One `WindowState` per (customer, meter, window_start) and one `PartitionClock` per partition.
Every entry remembers the last input offset folded into it, so that processing a record again
after a crash changes nothing (DESIGN §4). A window keeps the event ids it counted (its dedup
set) until the retention after its close has passed, and the revisions it emitted, so that a
correction knows its number and delta and a lost emission can be sent again, identically.

Entries are stored as pickled tuples of builtins: fast, and stable across Python versions.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

_FORMAT = 1


class WindowKey(NamedTuple):
    customer_id: str
    meter: str
    window_start: int


class Revision(NamedTuple):
    revision: int
    value: int
    event_count: int
    closed_offset: int
    """The input offset whose processing closed it."""
    closed_at: int
    """That record's timestamp (ms): the same when the close is replayed."""
    watermark: int
    """The partition's watermark then: the dedup retention runs from it."""


@dataclass(slots=True)
class WindowState:
    key: WindowKey
    value: int = 0
    event_count: int = 0
    last_offset: int = -1
    event_ids: set[str] | None = field(default_factory=set)
    """None once the dedup retention after the close has passed."""
    revisions: list[Revision] = field(default_factory=list)
    open: bool = True

    def encode(self) -> bytes:
        # The ids as the set they are: sorting 330 of them (a live window) tripled the cost of
        # every write-behind, and nothing needs the bytes stable. Entries that hold a list (older
        # writers) decode alike.
        revisions = [tuple(r) for r in self.revisions]
        row = (
            _FORMAT,
            tuple(self.key),
            self.value,
            self.event_count,
            self.last_offset,
            self.event_ids,
            revisions,
            self.open,
        )
        return pickle.dumps(row, protocol=5)

    @classmethod
    def decode(cls, data: bytes) -> WindowState:
        fmt, key, value, count, last_offset, ids, revisions, is_open = pickle.loads(data)
        if fmt != _FORMAT:
            raise ValueError(f"window state format {fmt} is not {_FORMAT}")
        return cls(
            WindowKey(*key),
            value,
            count,
            last_offset,
            ids if ids is None or type(ids) is set else set(ids),
            [Revision(*r) for r in revisions],
            is_open,
        )


@dataclass(slots=True)
class PartitionClock:
    watermark: int = -1
    """The highest event time of a valid event seen on the partition."""
    last_offset: int = -1
    """The last input offset fully processed."""

    def encode(self) -> bytes:
        return pickle.dumps((_FORMAT, self.watermark, self.last_offset), protocol=5)

    @classmethod
    def decode(cls, data: bytes) -> PartitionClock:
        fmt, watermark, last_offset = pickle.loads(data)
        if fmt != _FORMAT:
            raise ValueError(f"partition clock format {fmt} is not {_FORMAT}")
        return cls(watermark, last_offset)


def window_store_key(partition: int, key: WindowKey) -> bytes:
    """The store key of a window (a pickled tuple: a quarter of json's cost, and as unambiguous)."""
    return pickle.dumps((partition, "w", *key), protocol=5)


def clock_store_key(partition: int) -> bytes:
    return pickle.dumps((partition, "clock"), protocol=5)


def is_clock_key(data: bytes) -> bool:
    return bool(pickle.loads(data)[1] == "clock")


class Entries(Protocol):
    """Stored entries by key: streams.output's local stores, and LocalState around them."""

    def get(self, key: bytes) -> bytes | None: ...

    def items(self) -> Iterable[tuple[bytes, bytes]]: ...

    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        """Apply `changes` in their order; None deletes."""


class UnsavedStore:
    """A partition's state in memory only, nothing encoded: for replay, which commits nothing and
    so has nothing to recover."""

    def __init__(self) -> None:
        self._windows: dict[WindowKey, WindowState] = {}

    def load_window(self, key: WindowKey) -> WindowState | None:
        return self._windows.get(key)

    def save_window(self, state: WindowState) -> None:
        self._windows[state.key] = state

    def drop_window(self, key: WindowKey) -> None:
        self._windows.pop(key, None)

    def save_clock(self, clock: PartitionClock) -> None:
        pass  # the processor holds its clock; nothing reads it back


class PartitionStore:
    """One partition's state entries, written behind: saves stay in memory until `write_behind()`,
    which the app calls before every commit (streams.app), so a window touched by many records in a
    commit interval is encoded and sent to the changelog once. The entries are
    streams.output.LocalState (a local store written through to the changelog topic).

    Exactness holds as with writes in record order: `write_behind()` writes every changed window
    (each stamped with the last offset folded into it) and the clock last, and Faust commits only
    offsets processed before it ran. A crash mid-way leaves windows stamped ahead of the clock,
    which processing skips by their stamps (streams.processor step 1)."""

    def __init__(self, entries: Entries, partition: int) -> None:
        self._entries = entries
        self._partition = partition
        self._changed: dict[WindowKey, WindowState | None] = {}  # None: dropped
        self._clock: PartitionClock | None = None

    def load_window(self, key: WindowKey) -> WindowState | None:
        if key in self._changed:
            return self._changed[key]
        raw = self._entries.get(window_store_key(self._partition, key))
        return None if raw is None else WindowState.decode(raw)

    def save_window(self, state: WindowState) -> None:
        self._changed[state.key] = state

    def drop_window(self, key: WindowKey) -> None:
        self._changed[key] = None

    def save_clock(self, clock: PartitionClock) -> None:
        self._clock = clock

    def write_behind(self) -> int:
        """Write what changed since the last call, the clock last; returns the number of writes."""
        partition = self._partition
        changes = {
            window_store_key(partition, key): None if state is None else state.encode()
            for key, state in self._changed.items()
        }
        if self._clock is not None:
            changes[clock_store_key(partition)] = self._clock.encode()
        self._entries.write(changes)
        self._changed.clear()
        self._clock = None
        return len(changes)

    def saved_state(self) -> tuple[list[WindowState], PartitionClock | None]:
        """What the entries hold (on recovery, before anything changed)."""
        windows, clock = [], None
        for key, value in self._entries.items():
            if is_clock_key(key):
                clock = PartitionClock.decode(value)
            else:
                windows.append(WindowState.decode(value))
        return windows, clock
