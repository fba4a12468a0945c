"""Judging one record of `usage.events`: what in it can be counted, and why the rest cannot.

Pure and shared: the stream app, `meterline inspect` and replay all judge with this, so that they
decide alike. A record that does not decode is rejected whole; a bad event inside a good batch is
rejected alone, with its index (DESIGN §3). Time rules use the record's own timestamp, never the
wall clock (DESIGN §4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.config import Config
from schemas.errors import RejectReason, SchemaError
from schemas.records import UsageEvent
from schemas.serde import AvroSerde
from schemas.validation import BillableRule, check_event, check_timing, timing_bounds
from streams.billable import BillableFilter

try:
    from schemas._readers import triage
except ImportError:  # installed without a C compiler: the same in Python
    from schemas.validation import triage


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

    @property
    def is_tick(self) -> bool:
        """An empty batch: nothing to count, only the passing of time (see streams.processor)."""
        return self.is_batch and self.events == 0


class Judge:
    """The rules of one configuration, compiled once."""

    def __init__(self, config: Config, serde: AvroSerde) -> None:
        self._serde = serde
        self._units = dict(config.meter_units)
        rules = {name: BillableFilter(meter.billable) for name, meter in config.meters.items()}
        # None for a meter whose every event is billable: no call per event (most meters have no rules)
        self._filters: dict[str, BillableRule | None] = {
            name: None if rule.accepts_all else rule for name, rule in rules.items()
        }
        self._lateness_ms = config.windows.max_lateness_ms
        self._skew_ms = config.windows.max_clock_skew_ms

    def __call__(self, value: bytes, record_time: int) -> Verdict:
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
        events = decoded.events
        for index in triage(
            events, units, self._filters, earliest, latest, verdict.billable, verdict.non_billable
        ):
            event = events[index]
            error = check_event(event, units) or check_timing(event.timestamp, record_time, lateness, skew)
            assert error is not None, "triage rejects only what check_event or check_timing rejects"
            verdict.rejections.append(
                Rejection(error.reason, str(error), index if decoded.is_batch else None, event)
            )
        return verdict
