"""The rules every usage event must pass before it can be counted, shared by the producer SDK (which
refuses the event) and the stream app (which dead-letters it). Pure: no I/O."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meterline.schemas.errors import InvalidEventError, RejectReason
from meterline.schemas.records import UsageEvent

if TYPE_CHECKING:  # the SDK imports this module: never the configuration's dependencies
    from meterline.core.config import MeterConfig

_REQUIRED_TEXT = ("event_id", "customer_id", "meter", "unit", "source")

BillableRule = Callable[[Mapping[str, str]], bool]
"""Whether an event is billable, by its attributes (streams.billable.BillableFilter)."""


def check_event(event: UsageEvent, meter_units: Mapping[str, str]) -> InvalidEventError | None:
    """Return why `event` cannot be counted, or None. `meter_units` maps each declared meter to its unit.

    Returns rather than raises: the stream app calls this for every event on its hot path, where
    the valid case is one expression (a third of the cost of the checks one by one).
    """
    if (
        event.event_id
        and event.customer_id
        and event.meter
        and event.unit
        and event.source
        and event.timestamp > 0
        and event.quantity >= 0
        and meter_units.get(event.meter) == event.unit
    ):
        return None
    return _why_invalid(event, meter_units)


def _why_invalid(event: UsageEvent, meter_units: Mapping[str, str]) -> InvalidEventError | None:
    """The first rule `event` breaks, in the order the SDK reports them: an unknown meter before an
    empty unit, which only a declared meter could have told."""
    for name in _REQUIRED_TEXT:
        if name == "unit" and event.meter not in meter_units:
            return _unknown_meter(event, meter_units)
        if not getattr(event, name):
            return InvalidEventError(
                RejectReason.MISSING_FIELD, name, getattr(event, name), "must not be empty"
            )
    if event.timestamp <= 0:
        return InvalidEventError(
            RejectReason.MISSING_FIELD, "timestamp", event.timestamp, "must be epoch milliseconds after 1970"
        )
    if event.quantity < 0:
        return InvalidEventError(
            RejectReason.NEGATIVE_QUANTITY, "quantity", event.quantity, "usage is never negative"
        )
    unit = meter_units.get(event.meter)
    if unit is None:
        return _unknown_meter(event, meter_units)
    if event.unit != unit:
        return InvalidEventError(
            RejectReason.UNIT_MISMATCH, "unit", event.unit, f"meter {event.meter!r} is counted in {unit!r}"
        )
    return None


MAX_LEVEL = (10**15 - 1) // 3600
"""The highest level a `time_weighted` meter takes, 277,777,777,777: an hour of it in level-seconds
is a 15-digit number, the most a Stripe meter event value holds (streams.accrual)."""


@dataclass(frozen=True)
class MeterRules:
    """What some meters ask of their events beyond a unit: a `unique_count` meter the attribute it
    counts distinct values of; a `time_weighted` meter a level it can accrue and report."""

    unique_by: Mapping[str, str] = field(default_factory=dict)
    """meter -> the attribute whose distinct values it counts."""
    time_weighted: frozenset[str] = frozenset()
    dimensions: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    """meter -> attribute -> the values it may take (core.dimensions)."""

    @classmethod
    def of(cls, meters: Iterable[MeterConfig]) -> MeterRules:
        """The rules of the meters as declared (Config.declared_meters): what events name."""
        meters = list(meters)
        return cls(
            {meter.name: meter.unique_by for meter in meters if meter.unique_by},
            frozenset(meter.name for meter in meters if meter.aggregation == "time_weighted"),
            {meter.name: meter.dimensions for meter in meters if meter.dimensions},
        )

    def __bool__(self) -> bool:
        return bool(self.unique_by or self.time_weighted or self.dimensions)

    def check(self, event: UsageEvent) -> InvalidEventError | None:
        """Why the event's meter cannot count it, or None."""
        for attribute, values in self.dimensions.get(event.meter, {}).items():
            value = event.attributes.get(attribute)
            if not value:
                return InvalidEventError(
                    RejectReason.MISSING_FIELD,
                    f"attributes.{attribute}",
                    "",
                    f"meter {event.meter!r} is priced per {attribute}: each of its events carries one",
                )
            if value not in values:
                return InvalidEventError(
                    RejectReason.UNKNOWN_DIMENSION_VALUE,
                    f"attributes.{attribute}",
                    value,
                    f"meter {event.meter!r} prices the {attribute}s {', '.join(values)}: declare another in "
                    f"meters.{event.meter}.dimensions (and price it) before it is sent",
                )
        name = self.unique_by.get(event.meter)
        if name is not None and not event.attributes.get(name):
            return InvalidEventError(
                RejectReason.MISSING_FIELD,
                f"attributes.{name}",
                event.attributes.get(name, ""),
                f"meter {event.meter!r} counts the distinct values of this attribute: each of its events "
                "carries one",
            )
        if event.meter in self.time_weighted and event.quantity > MAX_LEVEL:
            return InvalidEventError(
                RejectReason.LEVEL_TOO_HIGH,
                "quantity",
                event.quantity,
                f"meter {event.meter!r} accrues its level by the second, and an hour of a level above "
                f"{MAX_LEVEL:,} is more than a Stripe meter value's 15 digits: report it in a larger unit",
            )
        return None


def _unknown_meter(event: UsageEvent, meter_units: Mapping[str, str]) -> InvalidEventError:
    known = ", ".join(sorted(meter_units)) or "none"
    return InvalidEventError(
        RejectReason.UNKNOWN_METER, "meter", event.meter, f"not a declared meter (declared: {known})"
    )


def require_valid(event: UsageEvent, meter_units: Mapping[str, str], rules: MeterRules | None = None) -> None:
    """Raise InvalidEventError naming the field and value if `event` cannot be counted."""
    error = check_event(event, meter_units) or (rules.check(event) if rules else None)
    if error is not None:
        raise error


def timing_bounds(record_time: int, max_lateness_ms: int, max_skew_ms: int) -> tuple[int, int]:
    """The earliest and latest event times a record stamped `record_time` accepts, both included."""
    return record_time - max_lateness_ms, record_time + max_skew_ms


def check_timing(
    event_time: int, record_time: int, max_lateness_ms: int, max_skew_ms: int
) -> InvalidEventError | None:
    """Judge an event's time against its Kafka record's own timestamp, never the wall clock, so that a
    replay months later decides exactly as the live stream did (DESIGN §4)."""
    earliest, latest = timing_bounds(record_time, max_lateness_ms, max_skew_ms)
    if event_time < earliest:
        return InvalidEventError(
            RejectReason.TOO_LATE,
            "timestamp",
            event_time,
            f"more than {max_lateness_ms // 86_400_000} days before its record's timestamp {record_time}",
        )
    if event_time > latest:
        return InvalidEventError(
            RejectReason.TOO_FAR_FUTURE,
            "timestamp",
            event_time,
            f"more than {max_skew_ms // 1000} s after its record's timestamp {record_time}",
        )
    return None


def triage(
    events: Sequence[UsageEvent],
    meter_units: Mapping[str, str],
    filters: Mapping[str, BillableRule | None],
    earliest: int,
    latest: int,
    billable: list[UsageEvent],
    non_billable: list[UsageEvent],
) -> list[int]:
    """The first look at a record's events, on the stream app's hot path: each that passes
    check_event with a time in [earliest, latest] (timing_bounds) goes to `billable` or
    `non_billable` by its meter's filter (None: every event of the meter is billable); returned
    are the indices of the rest, for check_event and check_timing to say why. schemas._readers
    does the same compiled, where a C compiler was at install."""
    rejected = []
    for index, event in enumerate(events):
        if check_event(event, meter_units) is None and earliest <= event.timestamp <= latest:
            rule = filters[event.meter]
            if rule is None or rule(event.attributes):
                billable.append(event)
            else:
                non_billable.append(event)
        else:
            rejected.append(index)
    return rejected
