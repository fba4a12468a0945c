"""Judging one record of `usage.events`: what in it can be counted, and why the rest cannot.

Pure and shared: the stream app, `meterline inspect` and replay all judge with this, so that they
decide alike. A record that does not decode is rejected whole; a bad event inside a good batch is
rejected alone, with its index (DESIGN §3). Time rules use the record's own timestamp, never the
wall clock (DESIGN §4).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from meterline.core.config import Config
from meterline.core.dimensions import declared_of, series_name
from meterline.schemas.errors import InvalidEventError, RejectReason, SchemaError
from meterline.schemas.records import UsageEvent
from meterline.schemas.serde import AvroSerde
from meterline.schemas.validation import (
    BillableRule,
    MeterRules,
    check_event,
    check_timing,
    timing_bounds,
)
from meterline.streams.billable import BillableFilter

try:
    from meterline.schemas._readers import triage
except ImportError:  # installed without a C compiler: the same in Python
    from meterline.schemas.validation import triage


@dataclass(frozen=True)
class Rejection:
    reason: RejectReason
    detail: str
    index: int | None
    """The event's position in its batch; None for a single-event record or an undecodable one."""
    event: UsageEvent | None
    """The decoded event, when the record decoded."""


@dataclass(slots=True)
class Verdict:
    billable: list[UsageEvent] = field(default_factory=list)
    non_billable: list[UsageEvent] = field(default_factory=list)
    """Valid, but the meter's rule excludes them: counted as such, never billed."""
    rejections: list[Rejection] = field(default_factory=list)
    is_batch: bool = False
    events: int = 0
    """Events decoded (0 for an undecodable record)."""
    gone: int = 0
    """Rejections that depend on the partition's state, not on the record alone: events within
    their record's lateness whose window the partition no longer holds (Judge's `held_from`)."""

    @property
    def is_tick(self) -> bool:
        """An empty batch: nothing to count, only the passing of time (see streams.processor)."""
        return self.is_batch and self.events == 0


class Judge:
    """The rules of one configuration, compiled once."""

    def __init__(self, config: Config, serde: AvroSerde) -> None:
        self._serde = serde
        self._units = dict(config.meter_units)
        declared = declared_of(config.meters)  # what events name
        self._meter_rules = MeterRules.of(declared.values())
        rules = {name: BillableFilter(meter.billable) for name, meter in declared.items()}
        # meter -> its dimensions' attributes: its events are counted as their series (core.dimensions)
        self._dimensioned = {name: tuple(m.dimensions) for name, m in declared.items() if m.dimensions}
        # None for a meter whose every event is billable: no call per event (most meters have no rules)
        self._filters: dict[str, BillableRule | None] = {
            name: None if rule.accepts_all else rule for name, rule in rules.items()
        }
        self._lateness_ms = config.windows.max_lateness_ms
        self._skew_ms = config.windows.max_clock_skew_ms

    def __call__(self, value: bytes, record_time: int, held_from: int | None = None) -> Verdict:
        """`held_from`: the earliest event time whose window the partition still holds
        (PartitionProcessor.held_from); an event before it is too late whatever its record says."""
        verdict = Verdict()
        try:
            decoded = self._serde.decode_usage(value)
        except SchemaError as exc:
            verdict.rejections.append(Rejection(exc.reason, str(exc), None, None))
            return verdict
        verdict.is_batch = decoded.is_batch
        verdict.events = len(decoded.events)
        units, lateness, skew = self._units, self._lateness_ms, self._skew_ms
        earliest, latest = timing_bounds(record_time, lateness, skew)
        if held_from is not None and held_from > earliest:
            earliest = held_from
        events = decoded.events
        for index in triage(
            events, units, self._filters, earliest, latest, verdict.billable, verdict.non_billable
        ):
            event = events[index]
            error = check_event(event, units) or check_timing(event.timestamp, record_time, lateness, skew)
            if error is None:
                error = _window_gone(event.timestamp, held_from)
                assert error is not None, "triage rejects only what the checks here reject"
                verdict.gone += 1
            verdict.rejections.append(
                Rejection(error.reason, str(error), index if decoded.is_batch else None, event)
            )
        if self._meter_rules and (verdict.billable or verdict.non_billable):
            self._reject_by_meter_rules(verdict, events, decoded.is_batch)
            if self._dimensioned:
                verdict.billable = [self._as_series(e) for e in verdict.billable]
                verdict.non_billable = [self._as_series(e) for e in verdict.non_billable]
        return verdict

    def _as_series(self, event: UsageEvent) -> UsageEvent:
        """An event of a meter with dimensions as an event of the series its values name: windows,
        dedup and every sink key by the series (core.dimensions)."""
        attributes = self._dimensioned.get(event.meter)
        if attributes is None:
            return event
        return replace(event, meter=series_name(event.meter, [event.attributes[a] for a in attributes]))

    def _reject_by_meter_rules(self, verdict: Verdict, events: list[UsageEvent], is_batch: bool) -> None:
        """An event of a `unique_count` meter without the attribute it counts, or of a
        `time_weighted` meter with a level it cannot report, is a dead letter, as one in another
        unit is, billable or not (schemas.validation.MeterRules)."""
        missing = {
            id(event): error
            for event in (*verdict.billable, *verdict.non_billable)
            if (error := self._meter_rules.check(event)) is not None
        }
        if not missing:
            return
        verdict.billable = [event for event in verdict.billable if id(event) not in missing]
        verdict.non_billable = [event for event in verdict.non_billable if id(event) not in missing]
        for index, event in enumerate(events):
            error = missing.get(id(event))
            if error is not None:
                verdict.rejections.append(
                    Rejection(error.reason, str(error), index if is_batch else None, event)
                )
        verdict.rejections.sort(key=lambda rejection: rejection.index or 0)  # in the batch's order


def _window_gone(event_time: int, held_from: int | None) -> InvalidEventError | None:
    """Within its record's lateness, yet before what the partition holds: its window's total and
    ids went once the partition's event time passed it by the lateness horizon (streams.windows
    .earliest_held), so counting it would start the window again at revision 0."""
    if held_from is None or event_time >= held_from:
        return None
    return InvalidEventError(
        RejectReason.TOO_LATE,
        "timestamp",
        event_time,
        f"before {held_from}, the earliest this partition still holds: its event time has moved past "
        "this window by more than the lateness horizon, and the window's total and ids are gone",
    )
