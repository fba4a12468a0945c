"""A synthetic, reproducible usage workload and the exact totals a correct pipeline derives from it.

The same spec (seed included) always yields the same records in the same order. Alongside the
good events it can mix in what real producers send: retried duplicates (same event_id), events out
of order within the grace period, late events for windows that have closed, and records that must
be dead-lettered (undecodable bytes, unknown schema, each validation failure, too late, too far
in the future). `expected` holds what must come out: per (customer, meter, window) the billable
total and event count, and per reason the number of rejected records.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple

from meterline.core.config import MeterConfig, levels_of
from meterline.core.dimensions import declared_of, series_name
from meterline.core.months import calendar_month
from meterline.schemas.errors import RejectReason
from meterline.schemas.records import UsageEvent
from meterline.streams.accrual import SLICE_MS, Change, accrued, level_at_end
from meterline.streams.billable import BillableFilter
from meterline.streams.windows import DAY_MS, fold, later, period_answer, window_start

_DUPLICATE_HORIZON_MS = 5 * 60_000  # a retry arrives soon after its original, well inside dedup retention
_OUT_OF_ORDER_MS = 5_000  # displacement inside the grace period
_LATE_MS = (10 * 60_000, 60 * 60_000)  # behind the stream by 10 to 60 minutes: a correction
_INVALID = (
    RejectReason.MALFORMED,
    RejectReason.UNKNOWN_SCHEMA,
    RejectReason.MISSING_FIELD,
    RejectReason.NEGATIVE_QUANTITY,
    RejectReason.UNKNOWN_METER,
    RejectReason.UNIT_MISMATCH,
    RejectReason.TOO_LATE,
    RejectReason.TOO_FAR_FUTURE,
)
_STATUSES_BILLABLE = ("200", "201", "204")
_STATUSES_NOT_BILLABLE = ("400", "404", "429", "500", "503")


@dataclass(frozen=True)
class WorkloadSpec:
    seed: int
    events: int
    customers: int
    start_ms: int
    span_ms: int
    duplicate_rate: float = 0.0
    out_of_order_rate: float = 0.0
    late_rate: float = 0.0
    malformed_rate: float = 0.0
    non_billable_rate: float = 0.05

    def problems(self) -> list[str]:
        found = []
        if self.events < 1:
            found.append(f"events = {self.events}: must be at least 1")
        if self.customers < 1:
            found.append(f"customers = {self.customers}: must be at least 1")
        if self.span_ms < 1:
            found.append(f"span = {self.span_ms} ms: must be positive")
        for name in (
            "duplicate_rate",
            "out_of_order_rate",
            "late_rate",
            "malformed_rate",
            "non_billable_rate",
        ):
            rate = getattr(self, name)
            if not 0 <= rate <= 1:
                found.append(f"{name} = {rate}: must be between 0 and 1")
        if self.duplicate_rate + self.late_rate + self.malformed_rate + self.out_of_order_rate > 1:
            found.append("duplicate_rate + out_of_order_rate + late_rate + malformed_rate must not exceed 1")
        return found


class Emission(NamedTuple):
    """One record to produce: a usage event (valid or deliberately not), or raw bytes.
    A NamedTuple, not a frozen dataclass: one is built per record and a frozen dataclass's
    __init__ costs about a microsecond more, on a path measured in microseconds."""

    event: UsageEvent | None
    raw: bytes | None = None
    key: bytes = b""
    valid: bool = True


@dataclass
class Expected:
    """What a correct pipeline must derive from the workload."""

    window_ms: int
    totals: dict[tuple[str, str, int], list[int]] = field(default_factory=dict)  # -> [value, event_count]
    produced: int = 0
    duplicates: int = 0
    non_billable: int = 0
    out_of_order: int = 0
    late: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    levels: dict[str, str] = field(default_factory=dict)
    """The `max` and `last` meters (set by `generate`): a customer's answer over a month is its
    highest window, or its latest window's value."""
    latest: dict[tuple[str, str, int], tuple[int, str]] = field(default_factory=dict)
    """A `last` meter's windows: the latest event so far (time, id), whose quantity it holds."""
    sighted: set[tuple[str, str, int, str]] = field(default_factory=set)
    """(customer, meter, month start, value): the values of `unique_count` meters seen so far. A
    unique_count window's expected value is the values first seen in its month within it, in the
    order the events are produced: the order the stream meets a customer's events in."""

    @property
    def accepted(self) -> int:
        return self.produced - sum(self.rejected.values())

    def add(self, share: Expected) -> None:
        """Fold in what a worker that generated other customers expects (their windows are disjoint)."""
        overlap = self.totals.keys() & share.totals.keys()
        if overlap:
            raise ValueError(f"shares overlap in {len(overlap)} windows, e.g. {min(overlap)}")
        self.totals.update(share.totals)
        self.levels |= share.levels
        self.latest |= share.latest
        self.sighted |= share.sighted
        self.produced += share.produced
        self.duplicates += share.duplicates
        self.non_billable += share.non_billable
        self.out_of_order += share.out_of_order
        self.late += share.late
        self.rejected.update(share.rejected)

    def at_stripe(self) -> dict[tuple[str, str], int]:
        """What Stripe's meters hold per customer and meter over the span: the windows' sum (for a
        unique_count meter, its first sightings: each month's distinct values), or for a level
        each UTC month's answer (its peak, its latest window's value), summed over the months the
        span touches (the contributions of a month add up to its answer: sinks.stripe.levels).
        Pairs of nothing left out."""
        totals: Counter[tuple[str, str]] = Counter()
        monthly: dict[tuple[str, str, int], dict[int, int]] = {}
        for (customer, meter, start), (value, _) in self.totals.items():
            if meter in self.levels:
                monthly.setdefault((customer, meter, calendar_month(start)[0]), {})[start] = value
            else:
                totals[(customer, meter)] += value
        for (customer, meter, _), windows in monthly.items():
            totals[(customer, meter)] += period_answer(self.levels[meter], windows)
        return {pair: total for pair, total in totals.items() if total}

    def to_json(self, spec: WorkloadSpec) -> dict[str, Any]:
        windows: dict[tuple[str, str], dict[int, int]] = {}
        for (customer, meter, start), (value, _) in self.totals.items():
            windows.setdefault((customer, meter), {})[start] = value
        per_customer_meter = {
            pair: period_answer(self.levels.get(pair[1], "sum"), values) for pair, values in windows.items()
        }
        return {
            "spec": asdict(spec),
            "window_ms": self.window_ms,
            "records": {
                "produced": self.produced,
                "accepted": self.accepted,
                "rejected": dict(sorted(self.rejected.items())),
                "duplicates": self.duplicates,
                "non_billable": self.non_billable,
                "out_of_order": self.out_of_order,
                "late": self.late,
            },
            "totals_by_customer_meter": [
                {"customer_id": c, "meter": m, "value": v} for (c, m), v in sorted(per_customer_meter.items())
            ],
            "totals": [
                {"customer_id": c, "meter": m, "window_start": w, "value": v, "event_count": n}
                for (c, m, w), (v, n) in sorted(self.totals.items())
            ],
        }


def generate(
    spec: WorkloadSpec,
    meters: Mapping[str, MeterConfig],
    window_ms: int,
    expected: Expected,
    owns: Callable[[str], bool] | None = None,
) -> Iterator[Emission]:
    """Yield the workload's records in produce order, filling `expected` as it goes.

    A `time_weighted` meter's events come before the last whole hour of the span ends, and the
    workload's last records set each customer's level to 0 in its last second, after all of
    theirs: so the hours that accrue end with the span's last whole hour, which closes on its own,
    and the expected accrual of each is known.

    With `owns`, only the records of customers it accepts are built, yielded and counted, while every
    random draw still happens: workers that split the customers between them (by partition) produce
    together exactly the records, in each partition the same order, that one generator would.
    """
    rng = random.Random(spec.seed)
    customers = customer_ids(spec)
    owned = [owns is None or owns(c) for c in customers]
    # Events name the meters as declared; a meter with dimensions is counted per series (core.dimensions).
    meter_list = sorted(declared_of(meters).values(), key=lambda m: m.name)
    expected.levels |= levels_of(meters.values())
    dimensioned = {m.name: tuple(m.dimensions) for m in meter_list if m.dimensions}
    # A meter priced per value gets events of a value it does not price too.
    priced_per_value = next((m for m in meter_list if m.dimensions), meter_list[0])
    invalid = _INVALID + ((RejectReason.UNKNOWN_DIMENSION_VALUE,) if dimensioned else ())
    filters = {m.name: BillableFilter(m.billable) for m in meter_list}
    is_billable: dict[tuple[str, str], bool] = {}  # (meter, status) -> the filter's verdict, memoised
    recent: deque[tuple[int, int, int]] = deque(maxlen=64)  # (index, timestamp, bits) of recent events
    step = spec.span_ms / spec.events
    dup_edge = spec.duplicate_rate
    ooo_edge = dup_edge + spec.out_of_order_rate
    late_edge = ooo_edge + spec.late_rate
    bad_edge = late_edge + spec.malformed_rate
    totals = expected.totals

    build = _event_builder(spec, customers, meter_list)
    levels_end = window_start(spec.start_ms + spec.span_ms, SLICE_MS)
    held: dict[tuple[str, str], list[Change]] = {}  # a time_weighted meter's level events

    # The last records empty each customer's time_weighted levels (`generate`'s docstring).
    emptied = [
        (c, m) for m in meters.values() if m.aggregation == "time_weighted" for c in range(len(customers))
    ]
    emptied = emptied[: spec.events]
    for i in range(spec.events - len(emptied)):
        now = spec.start_ms + int(i * step)
        roll = rng.random()
        if roll < dup_edge:
            original = _recent_original(recent, now, rng)
            if original is not None:
                if owned[(original[2] >> 8) % len(customers)]:
                    expected.produced += 1
                    expected.duplicates += 1
                    yield Emission(build(*original))
                continue
        if bad_edge > roll >= late_edge:
            reason = invalid[i % len(invalid)]
            customer_index = rng.randrange(len(customers))
            if owned[customer_index]:
                expected.produced += 1
                expected.rejected[reason] += 1
                wrong = priced_per_value if reason is RejectReason.UNKNOWN_DIMENSION_VALUE else meter_list[0]
                yield _invalid(reason, i, spec, customers[customer_index], wrong)
            continue
        timestamp = now
        if ooo_edge > roll >= dup_edge:
            timestamp -= rng.randrange(1, _OUT_OF_ORDER_MS)
            kind = "out_of_order"
        elif late_edge > roll >= ooo_edge:
            timestamp -= rng.randrange(*_LATE_MS)
            kind = "late"
        else:
            kind = ""
        bits = rng.getrandbits(64)
        recent.append((i, timestamp, bits))
        if not owned[(bits >> 8) % len(customers)]:
            continue
        event = build(i, timestamp, bits)
        expected.produced += 1
        if kind == "out_of_order":
            expected.out_of_order += 1
        elif kind == "late":
            expected.late += 1
        verdict_key = (event.meter, event.attributes["status"])
        verdict = is_billable.get(verdict_key)
        if verdict is None:
            verdict = is_billable[verdict_key] = filters[event.meter](event.attributes)
        by = dimensioned.get(event.meter)
        series = event.meter if by is None else series_name(event.meter, [event.attributes[a] for a in by])
        meter = meters[series]
        if verdict and meter.aggregation == "time_weighted":
            held.setdefault((event.customer_id, series), []).append(
                (event.timestamp, event.event_id, event.quantity)
            )
        elif verdict:
            key = (event.customer_id, series, window_start(timestamp, window_ms))
            total = totals.setdefault(key, [0, 0])
            if meter.unique_by:
                sighting = (
                    event.customer_id,
                    series,
                    calendar_month(timestamp)[0],
                    event.attributes[meter.unique_by],
                )
                if sighting not in expected.sighted:
                    expected.sighted.add(sighting)
                    total[0] += 1
            elif meter.aggregation == "last":
                if later(at := (timestamp, event.event_id), expected.latest.get(key)):
                    expected.latest[key] = at
                    total[0] = event.quantity
            else:
                total[0] = fold(meter.aggregation, total[0], event.quantity)
            total[1] += 1
        else:
            expected.non_billable += 1
        yield Emission(event)
    for customer_index, emptying in emptied:
        if not owned[customer_index]:
            continue
        customer = customers[customer_index]
        empty = UsageEvent(
            f"ev-{spec.seed}-{emptying.name}-end-{customer}",
            customer,
            emptying.declared or emptying.name,
            0,
            emptying.unit,
            levels_end - 1000,
            "generator",
            {"status": _STATUSES_BILLABLE[0], **dict(emptying.values)},
        )
        expected.produced += 1
        changes = held.setdefault((customer, emptying.name), [])
        changes.append((empty.timestamp, empty.event_id, 0))
        totals.update(_hours_accrued(customer, emptying.name, changes))
        yield Emission(empty)


def _hours_accrued(customer: str, meter: str, changes: list[Change]) -> dict[tuple[str, str, int], list[int]]:
    """A time_weighted meter's windows from its level events: each hour from the first event's to
    the last's in which a level is held or set, with its accrual and its events (streams.accrual)."""
    changes.sort()
    windows: dict[tuple[str, str, int], list[int]] = {}
    level, at = 0, 0
    for hour in range(window_start(changes[0][0], SLICE_MS), changes[-1][0] + 1, SLICE_MS):
        within = []
        while at < len(changes) and changes[at][0] < hour + SLICE_MS:
            within.append(changes[at])
            at += 1
        if within or level:
            windows[(customer, meter, hour)] = [accrued(level, within, hour, hour + SLICE_MS), len(within)]
        level = level_at_end(level, within)
    return windows


def _event_builder(
    spec: WorkloadSpec, customers: list[str], meter_list: list[MeterConfig]
) -> Callable[[int, int, int], UsageEvent]:
    """The event of index i at `timestamp` from its 64 random `bits`."""
    non_billable_below = int(spec.non_billable_rate * 0x10000)
    # A level's events (max, last, time_weighted) report a level (seats, GB): small, larger for later
    # customers so that their levels differ; other meters' are amounts (calls, bytes, ms) of up to a
    # thousand. A unique_count meter's carry one of a few users, more for later customers, so most
    # come again.
    level = [meter.level or meter.aggregation == "time_weighted" for meter in meter_list]
    unique_by = [meter.unique_by for meter in meter_list]
    dimensions = [list(meter.dimensions.items()) for meter in meter_list]
    # A time_weighted meter's events come before the span's last whole hour ends (`generate`): a
    # later one is the next other meter's (or, where every meter is time_weighted, comes then).
    levels_before = window_start(spec.start_ms + spec.span_ms, SLICE_MS) - 2000
    accrues = [meter.aggregation == "time_weighted" for meter in meter_list]
    adding = [i for i, a in enumerate(accrues) if not a]
    instead = [
        min((j for j in adding if j > i), default=adding[0]) if adding else i for i in range(len(accrues))
    ]

    def build(i: int, timestamp: int, bits: int) -> UsageEvent:
        # Everything about an event follows from its index, time and one draw of 64 random bits,
        # sliced: several times cheaper than a draw per choice, and a duplicate can be rebuilt.
        choice = bits % len(meter_list)
        if accrues[choice] and timestamp > levels_before:
            choice = instead[choice]
        meter = meter_list[choice]
        customer = (bits >> 8) % len(customers)
        billable = (bits >> 40) & 0xFFFF >= non_billable_below
        statuses = _STATUSES_BILLABLE if billable else _STATUSES_NOT_BILLABLE
        attributes = {"status": statuses[(bits >> 56) % len(statuses)]}
        if unique_by[choice]:
            attributes[unique_by[choice]] = f"user-{(bits >> 16) % (4 + 3 * customer)}"
        for n, (attribute, values) in enumerate(dimensions[choice]):
            attributes[attribute] = values[(bits >> (20 + 4 * n)) % len(values)]
        return UsageEvent(
            f"ev-{spec.seed}-{i}",
            customers[customer],
            meter.name,
            1 + (bits >> 28) % (6 + 5 * customer if level[choice] else 999),
            meter.unit,
            min(timestamp, levels_before) if accrues[choice] else timestamp,
            "generator",
            attributes,
        )

    return build


def customer_ids(spec: WorkloadSpec) -> list[str]:
    return [f"cust-{n:04d}" for n in range(spec.customers)]


def _recent_original(
    recent: deque[tuple[int, int, int]], now: int, rng: random.Random
) -> tuple[int, int, int] | None:
    candidates = [r for r in recent if now - r[1] < _DUPLICATE_HORIZON_MS]
    return rng.choice(candidates) if candidates else None


def _invalid(reason: RejectReason, i: int, spec: WorkloadSpec, customer: str, meter: MeterConfig) -> Emission:
    event = UsageEvent(
        f"bad-{spec.seed}-{i}",
        customer,
        meter.name,
        1,
        meter.unit,
        spec.start_ms,
        "generator",
        {"status": "200"},
    )
    key = customer.encode()
    if reason is RejectReason.MALFORMED:
        # What a misconfigured producer sends: JSON instead of Avro.
        return Emission(None, raw=b'{"event_id": "json-instead-of-avro"}', key=key, valid=False)
    if reason is RejectReason.UNKNOWN_SCHEMA:
        return Emission(None, raw=b"\xc3\x01" + b"\xff" * 8 + b"\x02", key=key, valid=False)
    changes: dict[RejectReason, dict[str, Any]] = {
        RejectReason.MISSING_FIELD: {"event_id": ""},
        RejectReason.NEGATIVE_QUANTITY: {"quantity": -5},
        RejectReason.UNKNOWN_METER: {"meter": "no_such_meter"},
        RejectReason.UNIT_MISMATCH: {"unit": meter.unit + "s_typo"},
        # Judged against the Kafka record's timestamp (produce time, after start + span).
        RejectReason.TOO_LATE: {"timestamp": spec.start_ms - 40 * DAY_MS},
        RejectReason.TOO_FAR_FUTURE: {"timestamp": spec.start_ms + spec.span_ms + 3650 * DAY_MS},
        RejectReason.UNKNOWN_DIMENSION_VALUE: {
            "attributes": {"status": "200", **{a: "undeclared" for a in meter.dimensions}}
        },
    }
    return Emission(replace(event, **changes[reason]), valid=False)
