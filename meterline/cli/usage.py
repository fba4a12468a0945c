"""`meterline emit | generate | verify | inspect | demo`: usage in, and what became of it."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meterline import devstack, inspect, progress
from meterline.cli.common import (
    attribute,
    iso,
    load,
    timestamp,
    workload_arguments,
)
from meterline.core.config import Config
from meterline.core.dimensions import declared_of
from meterline.core.errors import MeterlineError
from meterline.schemas.records import UsageEvent
from meterline.streams.windows import DAY_MS
from meterline.table import render
from meterline.workload import Expected, WorkloadSpec

if TYPE_CHECKING:
    pass


def register(commands: Any) -> None:
    """Add this group's commands to the `meterline` parser."""
    emit = commands.add_parser("emit", help="send one usage event")
    emit.add_argument("--customer", required=True)
    emit.add_argument("--meter", required=True)
    emit.add_argument("--quantity", type=int, required=True)
    emit.add_argument("--unit", help="default: the meter's unit")
    emit.add_argument("--timestamp", type=timestamp, help="ISO 8601 or epoch ms (default: now)")
    emit.add_argument("--event-id", help="the dedup key (default: a new UUID)")
    emit.add_argument("--source", default="meterline-cli")
    emit.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE", type=attribute)
    emit.add_argument("--json", action="store_true")
    emit.set_defaults(run=_emit)

    generate = commands.add_parser("generate", help="produce a reproducible synthetic workload")
    workload_arguments(generate)
    generate.add_argument(
        "--expected", type=Path, default=Path("expected.json"), help="where the exact totals go"
    )
    generate.add_argument(
        "--single", action="store_true", help="one event per message instead of packed batches"
    )
    generate.add_argument("--dry-run", action="store_true", help="write the expected totals only")
    generate.add_argument("--json", action="store_true")
    generate.set_defaults(run=_generate)

    verify = commands.add_parser(
        "verify", help="compare usage.aggregates and the DLQ with the expected totals of `generate`"
    )
    verify.add_argument("--expected", type=Path, default=Path("expected.json"))
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(run=_verify)

    inspect = commands.add_parser("inspect", help="what reached the events topic, judged as the stream will")
    inspect.add_argument("--expect-messages", type=int, help="stop after this many messages")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(run=_inspect)

    demo = commands.add_parser("demo", help="the whole story on the embedded stack")
    workload_arguments(demo, events=60_000, customers=5, span=None, workers=False)
    demo.add_argument(
        "--keep",
        action="store_true",
        help="leave the local stack and `meterline run` (the dashboard) running",
    )
    demo.set_defaults(run=_demo)


def _emit(args: argparse.Namespace) -> int:
    from meterline.produce import make_producer
    from meterline.schemas.delivery import DeliveryReport
    from meterline.schemas.validation import MeterRules, check_event, check_timing

    config = load(args)
    meter = declared_of(config.meters).get(args.meter)
    event = UsageEvent(
        event_id=args.event_id or str(uuid.uuid4()),
        customer_id=args.customer,
        meter=args.meter,
        quantity=args.quantity,
        unit=args.unit or (meter.unit if meter else ""),
        timestamp=args.timestamp or int(time.time() * 1000),
        source=args.source,
        attributes=dict(args.attr),
    )
    # Judged before the broker is asked anything, as the stream will judge it (its record is
    # stamped now): a mistake is named even where Kafka is down.
    now_ms = int(time.time() * 1000)
    invalid = (
        check_event(event, config.meter_units)
        or MeterRules.of(declared_of(config.meters).values()).check(event)
        or check_timing(
            event.timestamp,
            now_ms,
            config.windows.max_lateness_ms,
            config.windows.max_clock_skew_ms,
        )
    )
    if invalid is not None:
        print(f"error: not sent: {invalid}", file=sys.stderr)
        return 1
    reports: list[DeliveryReport] = []
    with make_producer(
        config, devstack.kafka_brokers(config), packing=False, on_delivery=reports.append
    ) as producer:
        producer.produce(event)
    report = reports[0]
    if report.error is not None:
        print(f"error: not delivered: {report.error}", file=sys.stderr)
        return 1
    result = {
        "event_id": event.event_id,
        "topic": config.topics.events,
        "partition": report.partition,
        "offset": report.offset,
    }
    print(json.dumps(result) if args.json else render([result]))
    return 0


def _spec(args: argparse.Namespace) -> WorkloadSpec:
    start = args.start if args.start is not None else int(time.time() * 1000) - args.span
    spec = WorkloadSpec(
        seed=args.seed,
        events=args.events,
        customers=args.customers,
        start_ms=start,
        span_ms=args.span,
        duplicate_rate=args.duplicates,
        out_of_order_rate=args.out_of_order,
        late_rate=args.late,
        malformed_rate=args.malformed,
        non_billable_rate=args.non_billable,
    )
    problems = spec.problems()
    if problems:
        raise MeterlineError("invalid workload:\n" + "\n".join(f"  - {p}" for p in problems))
    return spec


def _check_span_is_current(spec: WorkloadSpec, config: Config) -> None:
    """Good events must not be judged too late or too far ahead when they are produced now."""
    now = int(time.time() * 1000)
    oldest_allowed = now - (config.windows.max_lateness_days - 1) * DAY_MS
    if spec.start_ms - 3_600_000 < oldest_allowed:
        raise MeterlineError(
            f"--start {iso(spec.start_ms)}: late events reach an hour before it, older than "
            f"{config.windows.max_lateness_days - 1} days; they would be rejected as too_late"
        )
    if spec.start_ms + spec.span_ms > now:
        raise MeterlineError(f"--start + --span ends at {iso(spec.start_ms + spec.span_ms)}, in the future")


def _generate(args: argparse.Namespace) -> int:
    from meterline.produce import produce_workload
    from meterline.workload import generate

    config = load(args)
    spec = _spec(args)
    if args.dry_run:
        expected = Expected(config.windows.size_ms)
        for _ in generate(spec, config.meters, config.windows.size_ms, expected):
            pass
        _write_expected(args.expected, expected.to_json(spec))
        print(f"expected totals of {spec.events:,} records written to {args.expected}")
        return 0
    _check_span_is_current(spec, config)
    result, expected = produce_workload(
        config,
        devstack.kafka_brokers(config),
        spec,
        packing=False if args.single else None,
        workers=args.workers,
        progress=None if args.json else progress.rate("produced", spec.events),
    )
    document = expected.to_json(spec)
    _write_expected(args.expected, document)
    row = {
        "records": result.records,
        "messages": result.messages,
        "seconds": round(result.seconds, 2),
        "records/s": round(result.records_per_second),
        "messages/s": round(result.messages_per_second),
        "packed": result.packed,
    }
    if args.json:
        print(json.dumps({"result": row, "expected": str(args.expected), "records": document["records"]}))
    else:
        print(render([row]))
        outcomes = inspect.flat_records(document["records"])
        print(render([{"outcome": k, "records": v} for k, v in outcomes.items()]))
        print(f"expected totals of {len(document['totals']):,} windows written to {args.expected}")
    return 0


def _write_expected(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document))  # compact: indent would take the slow pure-Python encoder
    tmp.replace(path)


def _verify(args: argparse.Namespace) -> int:
    from meterline.schemas.serde import AvroSerde
    from meterline.verify import read_emitted, verify

    config = load(args)
    expected = json.loads(args.expected.read_text())
    serde = AvroSerde.from_registry_url(config.kafka.schema_registry_url)
    emitted = read_emitted(config, devstack.kafka_brokers(config), serde)
    result = verify(expected, emitted)
    summary = {
        "ok": result.ok,
        "windows expected": result.windows_expected,
        "windows exact": result.windows_matching,
        "aggregates read": emitted.messages,
        "identities": len(emitted.aggregates),
        "identity conflicts": result.conflicts,
        "revision gaps": result.revision_gaps,
    }
    if args.json:
        print(
            json.dumps(
                {
                    **summary,
                    "mismatches": result.mismatches,
                    "dlq_expected": result.dlq_expected,
                    "dlq_found": result.dlq_found,
                }
            )
        )
    else:
        print(render([summary]))
        reasons = sorted(result.dlq_expected.keys() | result.dlq_found.keys())
        print(
            render(
                [
                    {
                        "DLQ reason": r,
                        "expected": result.dlq_expected.get(r, 0),
                        "found": result.dlq_found.get(r, 0),
                    }
                    for r in reasons
                ]
            )
        )
        if result.mismatches:
            print(render(result.mismatches[:20]))
    return 0 if result.ok else 1


def _inspect(args: argparse.Namespace) -> int:
    config = load(args)
    document = inspect.summarize(config, args.expect_messages, quiet=args.json).document()
    print(json.dumps(document, indent=2) if args.json else inspect.describe(document))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from meterline.demo import demo

    config = load(args, resolve=False)  # the demo starts a stack of its own
    if args.span is None:  # a month of usage: this billing month so far
        now_ms = int(time.time() * 1000)
        if args.start is None:
            month_start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            args.start = int(month_start.timestamp() * 1000)
        args.span = max(60_000, now_ms - args.start - 60_000)
    spec = _spec(args)
    _check_span_is_current(spec, config)
    return demo(config, args.config, spec, args.keep)
