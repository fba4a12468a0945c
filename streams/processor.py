"""The exact aggregation of one source partition: dedup, event-time tumbling windows, closing,
corrections. Pure: it reads and writes state through a `Store` and returns what to emit; the Faust
app (streams.app), replay and the property tests drive it alike.

How a record at offset `o` is processed:
0. If the partition clock's `last_offset >= o`, the record was fully applied before a crash: skip it.
1. Each billable event goes to its window (customer, meter, window_start). A window whose
   `last_offset >= o` was saved by this record or a later one before a crash (the store writes
   behind, so a crash can leave some windows ahead of the clock): it already holds what this
   record did to it, so the record neither counts into it, nor closes it, nor forgets it.
2. An event id already in the window's dedup set is a duplicate: not counted. A closed window's
   set is kept for the dedup horizon past the later of its end and its last close (by default
   as long as the window itself: streams.windows.forget_dedup_at); judged when the window is next
   needed, so no write is made when it expires (streams.state). A window reopened after its ids
   went starts a new set: what it counted before is forgotten, what it counts from then on is not.
   An event older than what the partition holds (`held_from`) never gets here: the judge
   dead-letters it as too late, as its window is gone.
   A `unique_count` event counts one into its window when its value is new to its period (the UTC
   calendar month): the first sighting is stored with the event and its window (streams.state),
   and a later event of that value counts nothing. Sightings are stored before the windows that
   counted them, so after a crash a stored sighting whose event is the one processed again was
   made by it, its window lost: it counts again there, once. A `last` window holds the quantity of
   its latest event by time (the event id deciding a tie), whatever order they arrive in. A
   `time_weighted` window is a UTC hour (streams.accrual): it keeps its level events and the level
   carried into it, and holds their accrual.
3. The partition's watermark becomes the highest event time seen.
4. Open windows close when `window_end + grace <= watermark`; on an empty batch (a tick, sent
   by the app into a quiet partition) also when `window_end + grace <= the tick's timestamp`.
   Each close emits the next revision: revision 0 first, then one per late correction, with
   `delta` = value - the previous revision's value. A time_weighted window's close hands its
   level to the hour after it: that hour is opened when there was none and the level is not 0,
   and opened again when it was closed with another level carried into it, to close in its turn;
   so a held level closes a window every hour, and a late event revises each hour after it until
   the next level event. The later hour is stamped with `o` too: a crash that kept one kept the
   other (the store writes later hours first, streams.state.PartitionStore).
5. Every window saved (touched, closed, forgotten) is stamped with `o`, then the partition clock.
   The store writes them behind, the clock last (streams.state.PartitionStore), so that the
   stored clock marks records whose writes are all stored.

Every decision depends on the records alone (their events, offsets and timestamps; wall clock
enters only as the timestamp of a tick record), so a replay decides exactly as the first run did
and re-emits identical aggregates. What a crash may have lost in flight is re-emitted by `recover`.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, cast

from meterline.core.config import Config
from meterline.core.months import calendar_month
from meterline.schemas.records import UsageEvent, WindowAggregate
from meterline.schemas.serde import new_aggregate
from meterline.streams.accrual import SLICE_MS, Change, level_at_end, with_carried, with_change
from meterline.streams.buckets import Buckets
from meterline.streams.judge import Verdict
from meterline.streams.state import (
    PartitionClock,
    Revision,
    Sighting,
    SightingKey,
    WindowKey,
    WindowState,
    new_revision,
    new_window_key,
)
from meterline.streams.windows import (
    DAY_MS,
    closing_limit,
    earliest_held,
    fold,
    forget_dedup_at,
    forget_window_at,
    later,
    window_start,
)

Touched = dict[tuple[str, str, int], WindowState]
"""The windows a record changed, by (customer, meter, window_start)."""


class Store(Protocol):
    """A partition's saved state (streams.state.PartitionStore: a local store and a changelog
    topic, written behind)."""

    def load_window(self, key: WindowKey) -> WindowState | None: ...

    def save_window(self, state: WindowState, ids_until: int | None = None) -> None:
        """`ids_until`: for a closed window holding ids, the watermark at which they expire. The
        store keeps them until its clock is past it, and may let them go then."""

    def drop_window(self, key: WindowKey) -> None: ...

    def save_clock(self, clock: PartitionClock) -> None: ...

    def first_sighting(self, key: SightingKey) -> Sighting | None:
        """The event that first brought a `unique_count` value into its period, and its window."""

    def save_sighting(self, key: SightingKey, sighting: Sighting) -> None: ...

    def forget_sightings(self, period_start: int) -> None:
        """Let the period's sightings go: no event can be accepted for it any more."""

    def sighting_periods(self) -> set[int]:
        """The periods with sightings stored, on recovery."""


@dataclass(frozen=True)
class WindowRules:
    size_ms: int
    grace_ms: int
    keep_ids_ms: int
    """How long past the later of its end and its last close a closed window keeps its event ids:
    the dedup horizon plus the clock skew and a day of margin, as `forget_after_ms` (capped by it)."""
    forget_after_ms: int
    """How long past its end a closed window is kept for corrections: the maximum lateness plus the
    clock skew and a day of margin, after which no event can be accepted for it."""
    aggregations: Mapping[str, str]
    """meter -> its aggregation: `sum`, `count`, `max` (streams.windows.fold), `last`, `unique_count`."""
    unique_by: Mapping[str, str] = field(default_factory=dict)
    """meter -> the attribute a `unique_count` meter counts distinct values of."""

    def size_of(self, meter: str) -> int:
        """A meter's window: an hour for a `time_weighted` meter (streams.accrual), else `size_ms`."""
        return SLICE_MS if self.aggregations[meter] == "time_weighted" else self.size_ms


@dataclass
class ProcessorStats:
    records: int = 0
    ticks: int = 0
    counted: int = 0
    duplicates: int = 0
    replayed_records: int = 0
    """Records skipped because they were fully applied before a crash."""
    replayed_events: int = 0
    """Events skipped because their window was saved by their record before a crash."""
    undeduplicated: int = 0
    """Events that reopened a window whose dedup set had expired (a horizon shorter than the
    lateness horizon): counted, as the configured horizon bounds dedup."""
    windows_closed: int = 0
    corrections: int = 0
    reemitted: int = 0


@dataclass
class PartitionProcessor:
    partition: int
    rules: WindowRules
    store: Store
    clock: PartitionClock = field(default_factory=PartitionClock)
    stats: ProcessorStats = field(default_factory=ProcessorStats)
    # keyed by WindowKey, looked up also by plain (customer, meter, window_start) tuples
    _open: dict[tuple[str, str, int], WindowState] = field(default_factory=dict)
    # The open windows by the end they close at
    _closing: Buckets[WindowKey] = field(default_factory=Buckets)
    # The closed windows to forget, by window end: every window of one end has the same deadline
    # (streams.windows.forget_window_at), so the index costs a closed window one list slot holding
    # its series, a tuple shared through `_series` (issue 18 item 5: an entry of its own, with its
    # own strings, was ~300 bytes, 65 MB a day on sparse usage). Not a Buckets keyed by deadline:
    # that needs a (start, series) tuple per window; keyed by end, the end and the series' meter
    # name the window and each window adds only its shared series.
    _forgetting: dict[int, list[tuple[str, str]]] = field(default_factory=dict)
    _forget_at: list[tuple[int, int]] = field(default_factory=list)  # heap of (deadline, end)
    _series: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)  # one tuple each
    # (customer, meter) -> the latest window_start of any window saved for it: a window after it is
    # new, known without asking the store (on sparse usage most windows are)
    _newest: dict[tuple[str, str], int] = field(default_factory=dict)
    # The periods with first sightings, by when they may go: heap of (deadline, period start)
    _sighting_deadlines: list[tuple[int, int]] = field(default_factory=list)
    _sighting_periods: set[int] = field(default_factory=set)
    _month: tuple[int, int] = (0, 0)  # the calendar month of the last unique_count event

    def recover(
        self, windows: Iterable[WindowState], clock: PartitionClock | None, first_offset: int
    ) -> list[WindowAggregate]:
        """Load the partition's saved state before processing from `first_offset` (the committed
        offset) and return the revisions closed at or after it: their emission may have been lost
        in flight, so they are sent again, identical to the first time. A closed window stored
        with its ids inline (format 1) is saved again, its ids moved to a chunk or let go."""
        self.clock = clock or PartitionClock()
        for period in self.store.sighting_periods():
            self._note_sighting_period(period)
        again: list[WindowAggregate] = []
        for state in windows:
            if state.open:
                if state.event_ids is None:  # reopened after its ids went, saved before issue 34
                    state.event_ids = set()
                self._track_open(state)
            else:
                self._note_stored(state.key)
                self._track_closed(state)
                if state.event_ids is not None:
                    if self._ids_expired(state):
                        state.event_ids = None
                    self._save_closed(state)
            again.extend(
                self._aggregate(state.key, r, state)
                for r in state.revisions
                if r.closed_offset >= first_offset
            )
        self.stats.reemitted += len(again)
        return again

    def process(self, offset: int, record_time: int, verdict: Verdict) -> list[WindowAggregate]:
        """Fold one judged record in; return the revisions it closes."""
        self.stats.records += 1
        if offset <= self.clock.last_offset:
            self.stats.replayed_records += 1
            return []
        size = self.rules.size_ms
        aggregations = self.rules.aggregations
        open_windows, newest = self._open, self._newest
        touched: Touched = {}
        counted = 0
        latest_event_time = (
            max((e.timestamp for e in verdict.non_billable), default=-1) if verdict.non_billable else -1
        )
        for event in verdict.billable:
            timestamp = event.timestamp
            if timestamp > latest_event_time:
                latest_event_time = timestamp
            aggregation = aggregations[event.meter]
            accrues = aggregation == "time_weighted"
            # A plain tuple is cheaper to build than a WindowKey and finds it in the dicts (equal,
            # same hash); the WindowKey is made only for a window not in memory.
            slot = (event.customer_id, event.meter, window_start(timestamp, SLICE_MS if accrues else size))
            state = touched.get(slot)
            first_touch = state is None
            if state is None:
                state = open_windows.get(slot)
                if state is None:
                    key = new_window_key(slot)
                    if slot[2] <= newest.get(slot[:2], -1):
                        state = self.store.load_window(key)
                    if state is None:
                        state = WindowState(key, changes=[] if accrues else None)
            if state.last_offset >= offset:
                self.stats.replayed_events += 1
                continue
            ids = state.event_ids
            if ids is None or (not state.open and self._ids_expired(state)):
                # Reopened past its dedup horizon: the ids it counted are gone; this event and
                # the ones after it are remembered again (issue 34: None here counted every retry).
                ids = state.event_ids = set()
                self.stats.undeduplicated += 1
            elif event.event_id in ids:
                self.stats.duplicates += 1
                continue
            ids.add(event.event_id)
            if accrues:
                self._set_level(state, (timestamp, event.event_id, event.quantity))
            elif aggregation == "unique_count":
                state.value += self._first_sighting(event, slot[2])
            elif aggregation == "last":
                if later(at := (timestamp, event.event_id), state.latest):
                    state.latest, state.value = at, event.quantity
            else:
                state.value = fold(aggregation, state.value, event.quantity)
            state.event_count += 1
            counted += 1
            if first_touch:
                touched[state.key] = state
                if not state.open or state.key not in open_windows:
                    state.open = True
                    self._track_open(state)
        self.stats.counted += counted
        if latest_event_time > self.clock.watermark:
            self.clock.watermark = latest_event_time
        # Most records close nothing and age nothing: the heaps' tops say so without a call.
        is_tick = verdict.is_tick
        self.stats.ticks += is_tick
        limit = closing_limit(self.clock.watermark, self.rules.grace_ms, record_time if is_tick else None)
        closed = self._close_due(offset, record_time, limit, touched) if self._closing.due(limit) else []
        save = self.store.save_window
        for state in touched.values():
            state.last_offset = offset
            if state.open:
                save(state)
            else:
                self._save_closed(state)
        for state, _ in closed:
            if state.key not in touched:
                state.last_offset = offset
                self._save_closed(state)
        if self._forget_at and self._forget_at[0][0] <= self.clock.watermark:
            self._forget(touched, offset)
        while self._sighting_deadlines and self._sighting_deadlines[0][0] <= self.clock.watermark:
            period = heapq.heappop(self._sighting_deadlines)[1]
            self._sighting_periods.discard(period)
            self.store.forget_sightings(period)
        self.clock.last_offset = offset
        self.store.save_clock(self.clock)
        return [aggregate for _, aggregate in closed] if closed else []

    def held_from(self, offset: int) -> int | None:
        """The earliest event time the record at `offset` may count at: older windows are gone
        (streams.windows.earliest_held). None for a record applied before a crash: judged by its
        own timestamp alone, as the dead letters of this rule were delivered before the clock that
        skips it (streams.app.StreamRuntime.write_behind)."""
        if offset <= self.clock.last_offset:
            return None
        return earliest_held(self.clock.watermark, self.rules.forget_after_ms, self.rules.size_ms)

    def due_for_tick(self, now_ms: int) -> bool:
        """True when an open window would close if a tick stamped `now_ms` arrived."""
        return self._closing.due(closing_limit(now_ms, self.rules.grace_ms))

    @property
    def open_windows(self) -> int:
        return len(self._open)

    # -- internals -------------------------------------------------------------------------------

    def _note_stored(self, key: WindowKey) -> None:
        """Keep `_newest` covering `key`: every window is opened (or recovered) before it is saved."""
        if key.window_start > self._newest.get(key[:2], -1):
            self._newest[key[:2]] = key.window_start

    def _track_open(self, state: WindowState) -> None:
        self._open[state.key] = state
        self._note_stored(state.key)
        self._closing.add(self._end_of(state.key), state.key)

    def _end_of(self, key: WindowKey) -> int:
        return key.window_start + self.rules.size_of(key.meter)

    def _set_level(self, state: WindowState, change: Change) -> None:
        """A time_weighted event in its hour (step 2): the hour's accrual with its level."""
        end = state.key.window_start + SLICE_MS
        state.value = with_change(state.value, state.carried, cast(list[Change], state.changes), change, end)

    def _carry(self, state: WindowState, offset: int, touched: Touched) -> None:
        """Hand a closed time_weighted hour's level to the hour after it (step 4)."""
        level = level_at_end(state.carried, cast(list[Change], state.changes))
        slot = (state.key.customer_id, state.key.meter, state.key.window_start + SLICE_MS)
        following = touched.get(slot) or self._open.get(slot)
        if following is None and slot[2] <= self._newest.get(slot[:2], -1):
            following = self.store.load_window(new_window_key(slot))
        if following is None:
            if level == 0:
                return  # nothing held: no hour to accrue
            following = WindowState(new_window_key(slot), changes=[])
        if following.carried == level or following.last_offset >= offset:  # step 1
            return
        changes = cast(list[Change], following.changes)
        following.value = with_carried(
            following.value, following.carried, level, changes, slot[2], slot[2] + SLICE_MS
        )
        following.carried = level
        if not following.open or following.key not in self._open:
            following.open = True
            if following.event_ids is None:  # its ids went: it counts afresh (step 2)
                following.event_ids = set()
            self._track_open(following)
        touched[following.key] = following

    def _first_sighting(self, event: UsageEvent, window: int) -> bool:
        """Whether the event's `unique_by` value is new to its period (step 2)."""
        start, end = self._month
        if not start <= event.timestamp < end:
            start, end = self._month = calendar_month(event.timestamp)
        key = (event.customer_id, event.meter, start, event.attributes[self.rules.unique_by[event.meter]])
        first = self.store.first_sighting(key)
        if first is None:
            self.store.save_sighting(key, (event.event_id, window))
            self._note_sighting_period(start)
            return True
        return first == (event.event_id, window)

    def _note_sighting_period(self, start: int) -> None:
        """Let the period's sightings go when its last window goes (streams.windows.forget_window_at)."""
        if start not in self._sighting_periods:
            self._sighting_periods.add(start)
            _, end = calendar_month(start)
            heapq.heappush(
                self._sighting_deadlines, (forget_window_at(end, self.rules.forget_after_ms), start)
            )

    def _dedup_deadline(self, state: WindowState) -> int:
        return forget_dedup_at(
            self._end_of(state.key),
            state.revisions[-1].watermark,
            self.rules.keep_ids_ms,
            self.rules.forget_after_ms,
        )

    def _ids_expired(self, state: WindowState) -> bool:
        """A closed window's ids are gone once the watermark reached their deadline: judged by the
        watermark before the record, as a replay judges it."""
        return self._dedup_deadline(state) <= self.clock.watermark

    def _track_closed(self, state: WindowState) -> None:
        series = state.key[:2]
        series = self._series.setdefault(series, series)
        end = self._end_of(state.key)
        pending = self._forgetting.get(end)
        if pending is None:
            pending = self._forgetting[end] = []
            heapq.heappush(self._forget_at, (forget_window_at(end, self.rules.forget_after_ms), end))
        pending.append(series)

    def _save_closed(self, state: WindowState) -> None:
        ids_until = None if state.event_ids is None else self._dedup_deadline(state)
        if ids_until is not None and ids_until <= self.clock.watermark:
            # Past them as it closes (its end passed the horizon within this record): nothing to
            # keep, and no chunk for the store to write where it deletes the expired ones.
            state.event_ids = ids_until = None
        self.store.save_window(state, ids_until)

    def _close_due(
        self, offset: int, record_time: int, limit: int, touched: Touched
    ) -> list[tuple[WindowState, WindowAggregate]]:
        closed = []
        ahead = []
        for end, keys in self._closing.pop_due(limit):
            # in key order, as a heap of (end, key) closed them: the emissions' order is unchanged
            for key in sorted(keys):
                state = self._open.get(key)
                if state is None:  # a second entry of a window already closed
                    continue
                if state.last_offset >= offset:  # step 1: a later record's state, closed by a later record
                    ahead.append((end, key))
                    continue
                del self._open[key]
                state.open = False
                previous = state.revisions[-1].revision if state.revisions else -1
                revision = new_revision(
                    (previous + 1, state.value, state.event_count, offset, record_time, self.clock.watermark)
                )
                state.revisions.append(revision)
                self.stats.windows_closed += 1
                self.stats.corrections += revision.revision > 0
                self._track_closed(state)
                closed.append((state, self._aggregate(key, revision, state)))
                if state.accrues:  # the hour after it opens, due in this loop when its end is
                    self._carry(state, offset, touched)
        for end, key in ahead:
            self._closing.add(end, key)
        return closed

    def _forget(self, touched: Mapping[tuple[str, str, int], WindowState], offset: int) -> None:
        """Past the maximum lateness a closed window is dropped: no event can reopen it. Judged by
        the watermark, so a replay forgets alike."""
        watermark = self.clock.watermark
        ahead: dict[tuple[int, int], list[tuple[str, str]]] = {}
        while self._forget_at and self._forget_at[0][0] <= watermark:
            deadline, end = heapq.heappop(self._forget_at)
            for series in self._forgetting.pop(end):
                slot = (*series, end - self.rules.size_of(series[1]))
                if slot in self._open or slot in touched:
                    continue  # reopened by a correction: forgotten when it closes again
                key = new_window_key(slot)
                state = self.store.load_window(key)
                if state is None or state.open:
                    continue  # dropped already (a window closed twice is listed twice)
                if state.last_offset >= offset:  # step 1: a later record's state, dropped by a later record
                    ahead.setdefault((deadline, end), []).append(series)
                    continue
                self.store.drop_window(key)
        for entry, pending in ahead.items():
            self._forgetting[entry[1]] = pending
            heapq.heappush(self._forget_at, entry)

    def _aggregate(self, key: WindowKey, revision: Revision, state: WindowState) -> WindowAggregate:
        # Revisions are appended one per close, numbered from 0: revision n is at index n.
        previous = state.revisions[revision.revision - 1].value if revision.revision else 0
        return new_aggregate(
            key.customer_id,
            key.meter,
            key.window_start,
            self._end_of(key),
            self.partition,
            revision.value,
            revision.value - previous,
            revision.event_count,
            revision.revision,
            revision.closed_at,
        )


def rules_from(config: Config) -> WindowRules:
    w = config.windows
    # One margin past both horizons (clocks that disagree, and a day): with the default dedup
    # horizon, the lateness horizon, ids live exactly as long as their window.
    margin = w.max_clock_skew_ms + DAY_MS
    return WindowRules(
        size_ms=w.size_ms,
        grace_ms=w.grace_seconds * 1000,
        keep_ids_ms=w.dedup_horizon_ms + margin,
        forget_after_ms=w.max_lateness_ms + margin,
        aggregations={name: meter.aggregation for name, meter in config.meters.items()},
        unique_by=config.unique_attributes,
    )
