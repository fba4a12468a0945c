"""What the stream app remembers, per source partition, and how it is stored.

One `WindowState` per (customer, meter, window_start) and one `PartitionClock` per partition.
Every entry remembers the last input offset folded into it, so that processing a record again
after a crash changes nothing (DESIGN §4). A window keeps the event ids it counted (its dedup
set) for the dedup horizon (streams.windows.forget_dedup_at), and the revisions it emitted, so
that a correction knows its number and delta and a lost emission can be sent again, identically.

An open window's entry holds its ids. A closed window's ids go into an ids chunk, shared by the
windows closed in one write-behind whose ids expire in the same five minutes, and its entry holds
the chunk's key: when their horizon has passed the chunk is deleted whole, where rewriting each
window without its ids cost a second write per window (BENCHMARKS.md, issue 18). A bucket's chunks
are named by the store that wrote them and a number, so that the store remembers how many each
writer made there, not every key (ids live the whole lateness horizon: issue 34). Expiry itself is
the processor's decision (streams.processor): the store deletes a chunk only once its clock is
past every id in it, so a chunk is there for as long as the processor may ask for it.

A `unique_count` meter's windows count the values first seen in their period (streams.processor):
each first sighting is an entry of its own, (customer, meter, period start, value) -> the event
that made it and its window, read from the local store when a value comes again (RocksDB: on disk,
not in memory, however many distinct values a month holds). A period's sightings are deleted once
no event can be accepted for it any more.

Entries are stored as pickled tuples of builtins: fast, and stable across Python versions.
"""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple, Protocol, cast

from meterline.streams.accrual import Change
from meterline.streams.buckets import Buckets

_WINDOW_FORMAT = 4
"""4: a `time_weighted` window's level changes and carried level. 3: a `last` window's latest
event. 2: a closed window's ids in a chunk. Format 1 entries (ids always inline), 2 and 3 still
decode."""
_CLOCK_FORMAT = 1
_CHUNK_FORMAT = 1

IDS_BUCKET_MS = 5 * 60_000
"""The span of dedup deadlines whose ids share chunks: a chunk goes at most this long after its
first id could."""

IDS_PER_CHUNK = 250
"""About this many ids per chunk (a window's ids are never split): a late event that reopens a
closed window decodes one chunk, ~10 KB. 2,000 measured alike in the worker (BENCHMARKS.md)."""


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
    """The partition's watermark then: the dedup horizon runs from it (or from the window's end)."""


SightingKey = tuple[str, str, int, str]
"""customer, meter, the period's start (epoch ms), the value of the meter's `unique_by` attribute."""
Sighting = tuple[str, int]
"""The event that first brought a value into its period, and that event's window start."""


# A NamedTuple from a tuple of its fields without the Python `__new__` namedtuple gives it (a
# lambda): a window key is made for every window opened, a revision for every close.
new_window_key = cast(Callable[[tuple[str, str, int]], WindowKey], partial(tuple.__new__, WindowKey))
new_revision = cast(
    Callable[[tuple[int, int, int, int, int, int]], Revision], partial(tuple.__new__, Revision)
)


@dataclass(slots=True)
class WindowState:
    key: WindowKey
    value: int = 0
    event_count: int = 0
    last_offset: int = -1
    event_ids: set[str] | None = field(default_factory=set)
    """None for a closed window whose ids are in a chunk not read yet, or went with its horizon."""
    revisions: list[Revision] = field(default_factory=list)
    open: bool = True
    latest: tuple[int, str] | None = None
    """A `last` window's latest event so far (its time, its id): the one whose quantity it holds."""
    changes: list[Change] | None = None
    """A `time_weighted` window's level events in order of (time, id); None for other windows."""
    carried: int = 0
    """A `time_weighted` window's level at its start: the level the hour before handed on."""

    @property
    def accrues(self) -> bool:
        """Whether this is a `time_weighted` window (streams.accrual)."""
        return self.changes is not None

    def encode(self, ids_at: bytes | None = None) -> bytes:
        """The entry; `ids_at`, the key of the chunk holding the ids of a closed window, in their place."""
        # The ids as the set they are: sorting 330 of them (a live window) tripled the cost of
        # every write-behind, and nothing needs the bytes stable.
        revisions = [tuple(r) for r in self.revisions]
        ids = self.event_ids if ids_at is None else ids_at
        row = (
            _WINDOW_FORMAT,
            tuple(self.key),
            self.value,
            self.event_count,
            self.last_offset,
            ids,
            revisions,
            self.open,
            self.latest,
            self.changes,
            self.carried,
        )
        return pickle.dumps(row, protocol=5)

    @classmethod
    def decode(cls, data: bytes) -> tuple[WindowState, bytes | None]:
        """The window, and the key of the chunk holding its ids (None where the entry holds them:
        an open window, format 1, or a window without ids). Format 1 entries may hold the ids as a
        sorted list."""
        fmt, key, value, count, last_offset, ids, revisions, is_open, *later = pickle.loads(data)
        if fmt not in (1, 2, 3, _WINDOW_FORMAT):
            raise ValueError(f"window state format {fmt} is not 1, 2, 3 or {_WINDOW_FORMAT}")
        latest = later[0] if later else None
        changes, carried = (later[1], later[2]) if fmt == _WINDOW_FORMAT else (None, 0)
        ids_at = ids if type(ids) is bytes else None
        if ids_at is not None or ids is None:
            ids = None
        elif type(ids) is not set:
            ids = set(ids)
        state = cls(
            WindowKey(*key),
            value,
            count,
            last_offset,
            ids,
            [Revision(*r) for r in revisions],
            is_open,
            None if latest is None else (latest[0], latest[1]),
            None if changes is None else [(t, i, q) for t, i, q in changes],
            carried,
        )
        return state, ids_at


@dataclass(slots=True)
class PartitionClock:
    watermark: int = -1
    """The highest event time of a valid event seen on the partition."""
    last_offset: int = -1
    """The last input offset fully processed."""

    def encode(self) -> bytes:
        return pickle.dumps((_CLOCK_FORMAT, self.watermark, self.last_offset), protocol=5)

    @classmethod
    def decode(cls, data: bytes) -> PartitionClock:
        fmt, watermark, last_offset = pickle.loads(data)
        if fmt != _CLOCK_FORMAT:
            raise ValueError(f"partition clock format {fmt} is not {_CLOCK_FORMAT}")
        return cls(watermark, last_offset)


def window_store_key(partition: int, key: WindowKey) -> bytes:
    """The store key of a window (a pickled tuple: a quarter of json's cost, and as unambiguous)."""
    return pickle.dumps((partition, "w", *key), protocol=5)


def sighting_store_key(partition: int, key: SightingKey) -> bytes:
    return pickle.dumps((partition, "u", *key), protocol=5)


def clock_store_key(partition: int) -> bytes:
    return pickle.dumps((partition, "clock"), protocol=5)


def ids_chunk_key(partition: int, bucket: int, writer: str, number: int) -> bytes:
    """The store key of an ids chunk: its bucket (IDS_BUCKET_MS of dedup deadlines), the store
    that wrote it (a name no other has, even one that processed the same records before a crash)
    and its number among that store's chunks of the bucket, from 0: a bucket's chunks are named by
    how many each writer made, so that no list of their keys is held (a 35-day horizon would hold
    one per chunk, issue 34)."""
    return pickle.dumps((partition, "i", bucket, writer, number), protocol=5)


def store_key_parts(data: bytes) -> tuple[Any, ...]:
    """The tuple a store key was made of: (partition, "w", customer, meter, window_start),
    (partition, "i", bucket, writer, number), (partition, "i", bucket, name) before issue 34,
    (partition, "u", customer, meter, period_start, value), or (partition, "clock")."""
    return tuple(pickle.loads(data))


def ids_bucket(ids_until: int) -> int:
    return ids_until // IDS_BUCKET_MS


def ids_bucket_expired(bucket: int, watermark: int) -> bool:
    """True once every deadline in the bucket is at or before the watermark."""
    return (bucket + 1) * IDS_BUCKET_MS - 1 <= watermark


class Entries(Protocol):
    """Stored entries by key: streams.stores' local stores, and LocalState around them."""

    def get(self, key: bytes) -> bytes | None: ...

    def items(self) -> Iterable[tuple[bytes, bytes]]: ...

    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        """Apply `changes` in their order; None deletes."""


class UnsavedStore:
    """A partition's state in memory only, nothing encoded: for replay, which commits nothing and
    so has nothing to recover. A closed window's ids are let go when the clock passes their
    deadline, as PartitionStore deletes their chunk."""

    def __init__(self) -> None:
        self._windows: dict[WindowKey, WindowState] = {}
        self._ids_until: dict[WindowKey, int] = {}
        self._expiring: Buckets[WindowKey] = Buckets()  # the closed windows by when their ids expire
        self._sightings: dict[int, dict[tuple[str, str, str], Sighting]] = {}  # by period start

    def load_window(self, key: WindowKey) -> WindowState | None:
        return self._windows.get(key)

    def save_window(self, state: WindowState, ids_until: int | None = None) -> None:
        self._windows[state.key] = state
        if ids_until is not None:
            self._ids_until[state.key] = ids_until
            self._expiring.add(ids_until, state.key)

    def drop_window(self, key: WindowKey) -> None:
        self._windows.pop(key, None)

    def first_sighting(self, key: SightingKey) -> Sighting | None:
        return self._sightings.get(key[2], {}).get((key[0], key[1], key[3]))

    def save_sighting(self, key: SightingKey, sighting: Sighting) -> None:
        self._sightings.setdefault(key[2], {})[(key[0], key[1], key[3])] = sighting

    def forget_sightings(self, period_start: int) -> None:
        self._sightings.pop(period_start, None)

    def sighting_periods(self) -> set[int]:
        return set(self._sightings)

    def save_clock(self, clock: PartitionClock) -> None:
        # The processor holds its clock; nothing reads it back. Its watermark lets ids go.
        for until, keys in self._expiring.pop_due(clock.watermark):
            for key in keys:
                if self._ids_until.get(key) != until:
                    continue  # closed again since (its ids expire later), or listed twice
                del self._ids_until[key]
                state = self._windows.get(key)
                if state is not None and not state.open:
                    state.event_ids = None


class PartitionStore:
    """One partition's state entries, written behind: saves stay in memory until `write_behind()`,
    which the app calls before every commit (streams.app), so a window touched by many records in a
    commit interval is encoded and sent to the changelog once. The entries are
    streams.stores.LocalState (a local store written through to the changelog topic).

    Exactness holds as with writes in record order: `write_behind()` writes the new ids chunks,
    then every changed window (each stamped with the last offset folded into it, a closed one
    pointing at its chunk; a time_weighted meter's later hours first), then the clock, then deletes
    the chunks the clock is past. Faust
    commits only offsets processed before it ran. A crash mid-way leaves windows stamped ahead of
    the clock, which processing skips by their stamps (streams.processor step 1); a window never
    points at a chunk not written; and a chunk is deleted only behind a clock past its ids, so
    no record processed again after a crash can ask for it."""

    def __init__(self, entries: Entries, partition: int) -> None:
        self._entries = entries
        self._partition = partition
        self._changed: dict[WindowKey, WindowState | None] = {}  # None: dropped
        # the closed windows in _changed holding ids: when their ids expire, and the ids
        self._closed_ids: dict[WindowKey, tuple[int, set[str]]] = {}
        self._clock: PartitionClock | None = None
        # bucket -> writer -> how many chunks it wrote there (their keys: ids_chunk_key)
        self._chunks: dict[int, dict[str, int]] = {}
        self._named_chunks: dict[int, list[bytes]] = {}  # bucket -> keys written before issue 34
        self._name = uuid.uuid4().hex  # this store as a writer of chunks
        self._last_chunk: tuple[bytes, dict[tuple[str, str, int], set[str]]] | None = None  # the last read
        self._sightings: dict[SightingKey, Sighting] = {}  # made since the last write
        self._stored_periods: set[int] = set()  # the periods with sightings in the entries, on recovery
        self._forget_requested: list[int] = []  # periods let go since the last write
        self._forget_next: list[int] = []  # periods let go before it: deleted by the next write

    def load_window(self, key: WindowKey) -> WindowState | None:
        if key in self._changed:
            return self._changed[key]
        raw = self._entries.get(window_store_key(self._partition, key))
        if raw is None:
            return None
        state, ids_at = WindowState.decode(raw)
        if ids_at is not None:
            state.event_ids = self._chunk_ids(ids_at, key)
        return state

    def save_window(self, state: WindowState, ids_until: int | None = None) -> None:
        """`ids_until`: for a closed window holding ids, the watermark at which they expire."""
        self._changed[state.key] = state
        if ids_until is not None and state.event_ids is not None:
            self._closed_ids[state.key] = (ids_until, state.event_ids)
        elif self._closed_ids:
            self._closed_ids.pop(state.key, None)

    def drop_window(self, key: WindowKey) -> None:
        self._changed[key] = None
        self._closed_ids.pop(key, None)

    def first_sighting(self, key: SightingKey) -> Sighting | None:
        made = self._sightings.get(key)
        if made is not None:
            return made
        raw = self._entries.get(sighting_store_key(self._partition, key))
        return None if raw is None else cast(Sighting, tuple(pickle.loads(raw)))

    def save_sighting(self, key: SightingKey, sighting: Sighting) -> None:
        self._sightings[key] = sighting

    def forget_sightings(self, period_start: int) -> None:
        self._forget_requested.append(period_start)

    def sighting_periods(self) -> set[int]:
        """The periods whose sightings the entries held on recovery (saved_state)."""
        return set(self._stored_periods)

    def save_clock(self, clock: PartitionClock) -> None:
        self._clock = clock

    def write_behind(self) -> int:
        """Write what changed since the last call (see the class); returns the number of writes."""
        partition = self._partition
        # Chunks stored before this call only: one written now goes after the windows pointing at
        # it, and the changes are a mapping, where its deletion would take the place of its writing.
        deleted = [] if self._clock is None else self._expired_chunks(self._clock.watermark)
        changes, chunk_of = self._new_chunks()
        for sighting_key, sighting in self._sightings.items():
            changes[sighting_store_key(partition, sighting_key)] = pickle.dumps(sighting, protocol=5)
        accruing = []
        for key, state in self._changed.items():
            if state is not None and state.accrues:
                accruing.append(state)
                continue
            changes[window_store_key(partition, key)] = (
                None if state is None else state.encode(chunk_of.get(key))
            )
        # A time_weighted window's close changes the hour after it (streams.processor): the later
        # hour is written first, so that a crash which kept the close kept its effect too.
        for state in sorted(accruing, key=lambda s: s.key.window_start, reverse=True):
            changes[window_store_key(partition, state.key)] = state.encode(chunk_of.get(state.key))
        if self._clock is not None:
            changes[clock_store_key(partition)] = self._clock.encode()
        if deleted:
            changes.update(dict.fromkeys(deleted))
            self._last_chunk = None
        if self._forget_next:
            changes.update(dict.fromkeys(self._stored_sightings(self._forget_next)))
        self._forget_next, self._forget_requested = self._forget_requested, []
        self._entries.write(changes)
        self._sightings.clear()
        self._changed.clear()
        self._closed_ids.clear()
        self._clock = None
        return len(changes)

    def saved_state(self) -> tuple[list[WindowState], PartitionClock | None]:
        """What the entries hold (on recovery, before anything changed). A closed window whose ids
        are in a chunk comes without them: the processor asks for them when it needs them."""
        windows, clock = [], None
        for key, value in self._entries.items():
            _, kind, *rest = store_key_parts(key)
            if kind == "clock":
                clock = PartitionClock.decode(value)
            elif kind == "i" and len(rest) == 3:
                bucket, writer, number = rest
                written = self._chunks.setdefault(bucket, {})
                written[writer] = max(written.get(writer, 0), number + 1)
            elif kind == "i":
                self._named_chunks.setdefault(rest[0], []).append(key)
            elif kind == "u":
                self._stored_periods.add(rest[2])
            else:
                windows.append(WindowState.decode(value)[0])
        return windows, clock

    def _stored_sightings(self, periods: list[int]) -> list[bytes]:
        """The keys of the stored sightings of `periods`: a scan of every entry, made once a
        period per partition, where an index of them would hold a key per distinct value."""
        wanted = set(periods)
        keys = []
        for key, _ in self._entries.items():
            _, kind, *rest = store_key_parts(key)
            if kind == "u" and rest[2] in wanted:
                keys.append(key)
        return keys

    def _new_chunks(self) -> tuple[dict[bytes, bytes | None], dict[tuple[str, str, int], bytes]]:
        """The chunks holding the ids of the windows closed since the last write, and each window's chunk."""
        by_bucket: dict[int, list[tuple[WindowKey, set[str]]]] = {}
        for key, (until, ids) in self._closed_ids.items():
            by_bucket.setdefault(ids_bucket(until), []).append((key, ids))
        changes: dict[bytes, bytes | None] = {}
        chunk_of: dict[tuple[str, str, int], bytes] = {}
        for bucket, windows in by_bucket.items():
            chunk: dict[tuple[str, str, int], set[str]] = {}
            size = 0
            for position, (key, ids) in enumerate(windows):
                chunk[key[:]] = ids  # a plain tuple: pickled without its class
                size += len(ids)
                if size >= IDS_PER_CHUNK or position == len(windows) - 1:
                    written = self._chunks.setdefault(bucket, {})
                    number = written.get(self._name, 0)
                    written[self._name] = number + 1
                    chunk_key = ids_chunk_key(self._partition, bucket, self._name, number)
                    changes[chunk_key] = pickle.dumps((_CHUNK_FORMAT, chunk), protocol=5)
                    chunk_of.update(dict.fromkeys(chunk, chunk_key))
                    chunk, size = {}, 0
        return changes, chunk_of

    def _expired_chunks(self, watermark: int) -> list[bytes]:
        """The keys of the chunks stored before this write whose bucket the watermark is past,
        forgotten here. A writer's chunks of a bucket are numbered from 0 and written in order,
        so a crash keeps a first few of them: deleting a key never written is harmless."""
        expired = [b for b in self._chunks if ids_bucket_expired(b, watermark)]
        keys = [
            ids_chunk_key(self._partition, bucket, writer, number)
            for bucket in expired
            for writer, count in self._chunks.pop(bucket).items()
            for number in range(count)
        ]
        named = [b for b in self._named_chunks if ids_bucket_expired(b, watermark)]
        return keys + [key for bucket in named for key in self._named_chunks.pop(bucket)]

    def _chunk_ids(self, chunk_key: bytes, key: WindowKey) -> set[str] | None:
        """The ids of `key` held in a chunk (a copy: the window may count more), or None once the
        chunk is deleted (their horizon has passed). The last chunk read stays decoded: late
        events come in runs."""
        if self._last_chunk is None or self._last_chunk[0] != chunk_key:
            raw = self._entries.get(chunk_key)
            if raw is None:
                return None
            fmt, chunk = pickle.loads(raw)
            if fmt != _CHUNK_FORMAT:
                raise ValueError(f"ids chunk format {fmt} is not {_CHUNK_FORMAT}")
            self._last_chunk = (chunk_key, chunk)
        return set(self._last_chunk[1][key])
