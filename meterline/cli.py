"""The `meterline` command: one entry point per role and tool. Thin: parse, call, print."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from core import logs
from core.config import Config, ConfigError
from core.errors import MeterlineError
from core.kafka import Brokers, idempotent_producer, security_properties
from meterline import __version__, devstack, forward, inspect, progress
from meterline.config import load_config
from meterline.table import render
from meterline.workload import Expected, WorkloadSpec
from schemas.records import UsageEvent
from streams.windows import DAY_MS

if TYPE_CHECKING:
    from reconciler.pricing import Invoice

CONFIG_HELP = "TOML file (default: $METERLINE_CONFIG, ./meterline.toml or /etc/meterline/meterline.toml)"
PERIOD_HELP = (
    "YYYY-MM (the UTC month), current, previous, or YYYY-MM-DD (the customer's Stripe billing "
    "period that day falls in)"
)


class UsageError(Exception):
    def __init__(self, usage: str, message: str) -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    """argparse's, raising instead of exiting, so that a command given --json gets its usage
    errors as JSON on stdout (exit 2 either way, as argparse's)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.format_usage(), message)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        if "--json" in argv:
            print(json.dumps({"ok": False, "error": str(exc), "kind": "UsageError"}))
        else:
            print(f"{exc.usage}meterline: error: {exc}", file=sys.stderr)
        return 2
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        if args.command in forward.COMMANDS:
            config = _load(args)
            running = forward.running(config) if config.clickhouse.dsn.startswith("chdb://") else None
            if running is not None:
                return forward.forward(running, argv)
        code: int = args.run(args)
        return code
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except MeterlineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="meterline", description="Usage metering between product and invoice.")
    parser.add_argument("--version", action="version", version=f"meterline {__version__}")
    parser.add_argument("--config", type=Path, help=CONFIG_HELP)
    commands = parser.add_subparsers(title="commands", dest="command")

    config = commands.add_parser("config", help="check the configuration").add_subparsers(title="config")
    check = config.add_parser("check", help="report every problem at once; exit 1 if any")
    check.add_argument("--json", action="store_true")
    check.set_defaults(run=_config_check)

    dev = commands.add_parser("dev", help="the local stack: tansu, chdb, Stripe fake").add_subparsers(
        title="dev"
    )
    for name, run, text in (
        ("up", _dev_up, "start what is not running; idempotent"),
        ("status", _dev_status, "what runs where; exit 1 unless everything answers"),
        ("down", _dev_down, "stop what `up` started; idempotent"),
    ):
        sub = dev.add_parser(name, help=text)
        sub.add_argument("--json", action="store_true")
        sub.set_defaults(run=run)

    topics = commands.add_parser("topics", help="meterline's Kafka topics, as code").add_subparsers(
        title="topics"
    )
    ensure = topics.add_parser(
        "ensure",
        help="create the missing topics with their settings, check the others; exit 1 on any mismatch",
    )
    ensure.add_argument("--dry-run", action="store_true", help="create nothing: say what would be")
    ensure.add_argument("--json", action="store_true")
    ensure.set_defaults(run=_topics_ensure)

    emit = commands.add_parser("emit", help="send one usage event")
    emit.add_argument("--customer", required=True)
    emit.add_argument("--meter", required=True)
    emit.add_argument("--quantity", type=int, required=True)
    emit.add_argument("--unit", help="default: the meter's unit")
    emit.add_argument("--timestamp", type=_timestamp, help="ISO 8601 or epoch ms (default: now)")
    emit.add_argument("--event-id", help="the dedup key (default: a new UUID)")
    emit.add_argument("--source", default="meterline-cli")
    emit.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE", type=_attribute)
    emit.add_argument("--json", action="store_true")
    emit.set_defaults(run=_emit)

    generate = commands.add_parser("generate", help="produce a reproducible synthetic workload")
    _workload_arguments(generate)
    generate.add_argument(
        "--expected", type=Path, default=Path("expected.json"), help="where the exact totals go"
    )
    generate.add_argument(
        "--single", action="store_true", help="one event per message instead of packed batches"
    )
    generate.add_argument("--dry-run", action="store_true", help="write the expected totals only")
    generate.add_argument("--json", action="store_true")
    generate.set_defaults(run=_generate)

    stream = commands.add_parser("stream", help="run a stream worker: usage.events -> usage.aggregates")
    stream.add_argument(
        "--data-dir",
        type=Path,
        help="where this worker keeps its state store (default: <state_dir>/stream/<app_id>); "
        "two workers on one machine need two; `dev up` clears <state_dir>/stream with a new broker",
    )
    _role_arguments(stream)
    stream.set_defaults(run=_stream)

    run_all = commands.add_parser(
        "run",
        help="every role in one process: stream app, both sinks, webhooks, scheduled reconcile, "
        "with the dashboard, metrics and an API on [run] port",
    )
    run_all.add_argument("--data-dir", type=Path, help="the stream app's state store (as for `stream`)")
    run_all.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run_all.add_argument("--log-format", default="text", choices=logs.FORMATS)
    run_all.set_defaults(run=_run)

    migrate = commands.add_parser("migrate", help="bring ClickHouse's tables to this version; idempotent")
    migrate.add_argument("--json", action="store_true")
    migrate.set_defaults(run=_migrate)

    sink = commands.add_parser("sink", help="run a sink").add_subparsers(title="sink")
    clickhouse = sink.add_parser(
        "clickhouse", help="usage.aggregates, dead letters and accepted raw events into ClickHouse"
    )
    clickhouse.add_argument("--group", default="meterline-sink-clickhouse", help="its Kafka consumer group")
    _role_arguments(clickhouse)
    clickhouse.set_defaults(run=_sink_clickhouse)

    stripe_sink = sink.add_parser("stripe", help="report usage.aggregates to Stripe once per window revision")
    stripe_sink.add_argument("--group", default="meterline-sink-stripe", help="its Kafka consumer group")
    _role_arguments(stripe_sink)
    stripe_sink.set_defaults(run=_sink_stripe)

    stripe_commands = commands.add_parser("stripe", help="Stripe's side of the rate card").add_subparsers(
        title="stripe"
    )
    sync = stripe_commands.add_parser(
        "sync", help="create the meters and products the configured meters need"
    )
    sync.add_argument("--dry-run", action="store_true", help="show what would be created, change nothing")
    sync.add_argument("--json", action="store_true")
    sync.set_defaults(run=_stripe_sync)

    invoice = commands.add_parser("invoice", help="what a customer's invoice will say").add_subparsers(
        title="invoice"
    )
    preview = invoice.add_parser(
        "preview", help="a period's invoice lines from ClickHouse's totals and the rate card"
    )
    preview.add_argument("--customer", required=True)
    preview.add_argument("--period", required=True, type=_period, help=PERIOD_HELP)
    preview.add_argument("--json", action="store_true")
    preview.set_defaults(run=_invoice_preview)
    quote = invoice.add_parser(
        "quote", help="the invoice a plan gives for the usage stated (no ClickHouse): support's calculator"
    )
    quote.add_argument("--plan", required=True)
    quote.add_argument(
        "--usage",
        action="append",
        default=[],
        metavar="METER=QUANTITY",
        help="usage in the meter's base unit (calls, bytes, ms), once per meter; missing meters used none",
    )
    quote.add_argument("--currency", help="the plan's currency, stated to check it (no conversion)")
    quote.add_argument("--json", action="store_true")
    quote.set_defaults(run=_invoice_quote)

    reconcile = commands.add_parser(
        "reconcile",
        help="compare Stripe's totals with ours; exit 0: no drift, 1: drift beyond --threshold, "
        "2: it could not run (ClickHouse or Stripe unavailable, bad arguments)",
    )
    reconcile.add_argument(
        "--period",
        type=_period,
        default=datetime.now(UTC).strftime("%Y-%m"),
        help="YYYY-MM (the UTC month; default: this month, as a scheduled job wants); with --customer, "
        "also current, previous or YYYY-MM-DD (the customer's Stripe billing period)",
    )
    reconcile.add_argument("--customer")
    reconcile.add_argument("--meter")
    reconcile.add_argument(
        "--threshold", type=int, default=0, help="tolerated drift in base units (default 0)"
    )
    reconcile.add_argument(
        "--give-up-after",
        type=float,
        default=120,
        metavar="SECONDS",
        help="how long Stripe may fail to answer before reconcile exits 2 (default 120)",
    )
    reconcile.add_argument(
        "--every",
        type=int,
        metavar="MINUTES",
        help="run as a role: reconcile the current month now and every MINUTES, exporting the drift "
        "metrics (with --http-port), until SIGTERM",
    )
    _role_arguments(reconcile)
    reconcile.add_argument("--json", action="store_true")
    reconcile.set_defaults(run=_reconcile)

    replay = commands.add_parser(
        "replay", help="re-derive window totals from usage.events and compare them with ClickHouse and Stripe"
    )
    replay.add_argument("--from", dest="start", type=_timestamp, required=True, help="ISO 8601 or epoch ms")
    replay.add_argument(
        "--to", dest="end", type=_timestamp, required=True, help="ISO 8601 or epoch ms (exclusive)"
    )
    replay.add_argument("--customer")
    replay.add_argument(
        "--repair", action="store_true", help="emit correcting revisions so that both sinks converge"
    )
    replay.add_argument("--json", action="store_true")
    replay.set_defaults(run=_replay)

    dispute = commands.add_parser("dispute", help='answer "why is my bill higher?" for a customer and period')
    dispute.add_argument("--customer", required=True)
    dispute.add_argument("--period", required=True, type=_period, help=PERIOD_HELP)
    dispute.add_argument("--format", choices=["csv", "json", "html"], default="html")
    dispute.add_argument("--output", type=Path, help="write here instead of standard output")
    dispute.set_defaults(run=_dispute)

    webhooks = commands.add_parser(
        "webhooks", help="receive Stripe webhooks (verified, kept on stripe.webhooks) and process each once"
    )
    webhooks.add_argument("--port", type=int, help="default: stripe.webhook_port")
    webhooks.add_argument("--group", default="meterline-webhooks", help="the consumer's Kafka group")
    _role_arguments(webhooks)
    webhooks.set_defaults(run=_webhooks)

    sql = commands.add_parser("sql", help="run a read-only query against the configured ClickHouse")
    sql.add_argument("query")
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sql.set_defaults(run=_sql)

    check = commands.add_parser(
        "verify", help="compare usage.aggregates and the DLQ with the expected totals of `generate`"
    )
    check.add_argument("--expected", type=Path, default=Path("expected.json"))
    check.add_argument("--json", action="store_true")
    check.set_defaults(run=_verify)

    inspect = commands.add_parser("inspect", help="what reached the events topic, judged as the stream will")
    inspect.add_argument("--expect-messages", type=int, help="stop after this many messages")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(run=_inspect)

    demo = commands.add_parser("demo", help="the whole story on the embedded stack")
    _workload_arguments(demo, events=60_000, customers=5, span=None)
    demo.add_argument(
        "--keep",
        action="store_true",
        help="leave the local stack and `meterline run` (the dashboard) running",
    )
    demo.set_defaults(run=_demo)
    _config_after_any_command(parser)
    return parser


def _period(text: str) -> str:
    from reconciler.periods import check_spec
    from reconciler.usage import PeriodError

    try:
        return check_spec(text)
    except PeriodError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _config_after_any_command(parser: argparse.ArgumentParser) -> None:
    """`meterline reconcile --config F` as well as `meterline --config F reconcile`: every command
    takes it too, its default suppressed so that it never overrides the one given first."""
    for action in parser._actions:  # argparse keeps subcommands only there
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if not any("--config" in a.option_strings for a in sub._actions):
                    sub.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=CONFIG_HELP)
                _config_after_any_command(sub)


def _role_arguments(parser: argparse.ArgumentParser) -> None:
    """What every long-running role takes: logging, and where it serves /metrics, /healthz, /readyz."""
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="text", choices=logs.FORMATS)
    parser.add_argument(
        "--http-port", type=int, help="serve /metrics, /healthz and /readyz on [run] host at this port"
    )


def _workload_arguments(
    parser: argparse.ArgumentParser, events: int = 100_000, customers: int = 10, span: int | None = DAY_MS
) -> None:
    parser.add_argument("--events", type=int, default=events, help="records to produce, bad ones included")
    parser.add_argument("--customers", type=int, default=customers)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--start", type=_timestamp, help="event time of the first event (default: now - span)"
    )
    parser.add_argument(
        "--span",
        type=_duration,
        default=span,
        help="event-time span: 90m, 24h, 30d (default: "
        + ("24h" if span == DAY_MS else "this month so far, with --start its first instant")
        + ")",
    )
    parser.add_argument("--duplicates", type=float, default=0.0, help="rate of retried duplicates")
    parser.add_argument(
        "--out-of-order", type=float, default=0.0, help="rate of events out of order within grace"
    )
    parser.add_argument("--late", type=float, default=0.0, help="rate of late events (corrections)")
    parser.add_argument(
        "--malformed", type=float, default=0.0, help="rate of records that must be dead-lettered"
    )
    parser.add_argument("--non-billable", type=float, default=0.05, help="rate of events the filters exclude")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="producer processes, each taking a share of the partitions (default: one per core); "
        "the records do not depend on it",
    )


# -- config ----------------------------------------------------------------------------------------


def _load(args: argparse.Namespace, resolve: bool = True) -> Config:
    """The configuration, with the local stack's addresses where it leaves them to the stack
    (`resolve`), as every role and command is handed it; unresolved for the commands that manage
    the stack itself or start it."""
    config = load_config(args.config)
    return devstack.resolve(config) if resolve else config


def _config_check(args: argparse.Namespace) -> int:
    try:
        config = _load(args, resolve=False)
    except ConfigError as exc:
        if args.json:
            problems = [{"field": p.field, "value": p.shown_value, "why": p.why} for p in exc.problems]
            print(json.dumps({"ok": False, "source": exc.source, "problems": problems}, indent=2))
        else:
            print(exc, file=sys.stderr)
        return 1
    meters = [
        {
            "meter": m.name,
            "unit": m.unit,
            "aggregation": m.aggregation,
            "stripe_event_name": m.stripe_event_name,
            "billable": " and ".join(f"{a} in {list(p)}" for a, p in m.billable.items()) or "everything",
        }
        for m in config.meters.values()
    ]
    kafka = Brokers(config.kafka.bootstrap or "(the local stack)", security_properties(config.kafka))
    if args.json:
        document = {"ok": True, "source": config.source, "kafka": kafka.redacted(), "meters": meters}
        print(json.dumps(document, indent=2))
    else:
        print(
            f"configuration OK ({config.source}): {len(meters)} meter(s), "
            f"{config.windows.size_minutes}-minute windows, Stripe mode {config.stripe.mode}"
        )
        print(
            f"Kafka {kafka.bootstrap}: "
            + ", ".join(f"{k}={v}" for k, v in kafka.redacted().items() if k != "bootstrap.servers")
        )
        print(render(meters))
    return 0


# -- dev stack -------------------------------------------------------------------------------------


def _dev_up(args: argparse.Namespace) -> int:
    config = _load(args, resolve=False)
    services = devstack.up(config, log=_quiet_if(args.json))
    if args.json:
        print(json.dumps({name: vars(s) for name, s in services.items()}, indent=2))
    else:
        print(f"local stack up; addresses in {devstack.state_path(config)}")
    return 0


def _dev_status(args: argparse.Namespace) -> int:
    statuses = devstack.status(_load(args, resolve=False))
    rows = [vars(s) | {"pid": str(s.pid or "")} for s in statuses]
    print(json.dumps(rows, indent=2) if args.json else render(rows))
    return 0 if all(s.answers for s in statuses) else 1


def _dev_down(args: argparse.Namespace) -> int:
    devstack.down(_load(args, resolve=False), log=_quiet_if(args.json))
    return 0


def _topics_ensure(args: argparse.Namespace) -> int:
    from meterline import topics

    config = _load(args)
    kafka = devstack.kafka_brokers(config)
    report = topics.ensure(kafka, topics.specs_for(kafka, config), dry_run=args.dry_run)
    findings = [f for t in report.topics for f in t.findings]
    if args.json:
        document = {
            "ok": report.ok,
            "bootstrap": kafka.bootstrap,
            "topics": [
                {
                    "topic": t.spec.name,
                    "action": t.action,
                    "partitions": t.spec.partitions,
                    "replication_factor": t.spec.replication_factor,
                    "settings": dict(t.spec.settings),
                    "purpose": t.spec.purpose,
                    "findings": [{"level": f.level, "text": str(f)} for f in t.findings],
                }
                for t in report.topics
            ],
        }
        print(json.dumps(document, indent=2))
    else:
        rows = [
            {
                "topic": t.spec.name,
                "action": t.action,
                "partitions": str(t.spec.partitions),
                "replicas": str(t.spec.replication_factor),
                "settings": ", ".join(f"{k}={v}" for k, v in t.spec.settings.items()),
            }
            for t in report.topics
        ]
        print(render(rows))
        for level in ("error", "warning"):
            for finding in (f for f in findings if f.level == level):
                print(f"{level}: {finding}")
        unreported = sorted({f.setting for f in findings if f.level == "unreported"})
        if unreported:
            print(f"note: the broker does not report {', '.join(unreported)}: not checked")
    return 0 if report.ok else 1


def _quiet_if(quiet: bool) -> Callable[[str], None]:
    return (lambda _line: None) if quiet else (lambda line: print(line, file=sys.stderr))


# -- producing -------------------------------------------------------------------------------------


def _emit(args: argparse.Namespace) -> int:
    from meterline.produce import make_producer
    from schemas.delivery import DeliveryReport

    config = _load(args)
    meter = config.meters.get(args.meter)
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
            f"--start {_iso(spec.start_ms)}: late events reach an hour before it, older than "
            f"{config.windows.max_lateness_days - 1} days; they would be rejected as too_late"
        )
    if spec.start_ms + spec.span_ms > now:
        raise MeterlineError(f"--start + --span ends at {_iso(spec.start_ms + spec.span_ms)}, in the future")


def _generate(args: argparse.Namespace) -> int:
    from meterline.produce import produce_workload
    from meterline.workload import generate

    config = _load(args)
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


# -- inspect and demo ------------------------------------------------------------------------------


def _stream(args: argparse.Namespace) -> int:
    import faust

    from meterline.run import stream_app
    from meterline.server import Health, serve

    config = _load(args)
    health = Health()
    app = stream_app(config, devstack.kafka_brokers(config), args.data_dir, health)
    if args.http_port is not None:
        serve(config.run.host, args.http_port, health, config.run.limits)
    # Faust's worker owns the event loop and the signals: SIGTERM and Ctrl-C stop it cleanly.
    faust.Worker(
        app, loglevel=args.log_level, logging_config=logs.config_dict(args.log_level, args.log_format)
    ).execute_from_commandline()
    return 0


def _run(args: argparse.Namespace) -> int:
    from meterline.run import run

    def execute(argv: list[str]) -> int:
        """A command sent by `meterline` beside `run`, run here as it would have run there."""
        if args.config is not None and "--config" not in argv:
            argv = ["--config", str(args.config.absolute()), *argv]
        return main(argv)

    return run(_load(args, resolve=False), execute, args.data_dir, args.log_level, args.log_format)


def _migrate(args: argparse.Namespace) -> int:
    from sinks.clickhouse.client import connect
    from sinks.clickhouse.migrate import migrate

    config = _load(args)
    client = connect(config)
    try:
        result = migrate(client, config.clickhouse.raw_events_ttl_days, cluster=config.clickhouse.cluster)
    finally:
        client.close()
    applied = [f"{m.version:04d}_{m.name}" for m in result.applied]
    if args.json:
        print(json.dumps({"applied": applied, "version": result.current}))
    else:
        print(f"schema version {result.current}; applied now: {', '.join(applied) or 'nothing (up to date)'}")
    return 0


def _sink_clickhouse(args: argparse.Namespace) -> int:
    from sinks.clickhouse.sink import ClickHouseSink

    config = _load(args)
    _run_until_signalled(
        args,
        config,
        "sink-clickhouse",
        lambda stop: ClickHouseSink(config, devstack.kafka_brokers(config), group_id=args.group).run(stop),
    )
    return 0


def _run_until_signalled(
    args: argparse.Namespace, config: Config, role: str, run: Callable[[Callable[[], bool]], None]
) -> None:
    """Check the role's topics, then run its loop with logging (and /metrics, /healthz, /readyz
    with --http-port); SIGTERM and Ctrl-C let it finish its batch, flush, commit and close."""
    import signal

    from meterline import topics
    from meterline.server import Health, serve

    logs.setup(args.log_level, args.log_format)
    topics.require_for_role(devstack.kafka_brokers(config), config, role)
    health = Health({role: "starting"})
    server = (
        serve(config.run.host, args.http_port, health, config.run.limits)
        if args.http_port is not None
        else None
    )
    stopping: list[bool] = []
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stopping.append(True))

    def should_stop() -> bool:
        health.set(role, "stopping" if stopping else "ready")
        return bool(stopping)

    try:
        run(should_stop)
    finally:
        if server is not None:
            server.shutdown()


def _sink_stripe(args: argparse.Namespace) -> int:
    from sinks.stripe.sink import StripeSink

    config = _load(args)
    _run_until_signalled(
        args,
        config,
        "sink-stripe",
        lambda stop: StripeSink(config, devstack.kafka_brokers(config), group_id=args.group).run(stop),
    )
    return 0


def _stripe_sync(args: argparse.Namespace) -> int:
    import dataclasses

    from sinks.stripe.calls import caller_for
    from sinks.stripe.sync import sync

    config = _load(args)
    changes = [dataclasses.asdict(c) for c in sync(config, caller_for(config), dry_run=args.dry_run)]
    print(json.dumps(changes) if args.json else render(changes))
    return 0


def _invoice_preview(args: argparse.Namespace) -> int:
    from reconciler.periods import resolve
    from reconciler.plan_history import period_invoice
    from sinks.clickhouse.client import connect

    config = _load(args)
    client = connect(config)
    try:
        period = resolve(client, args.customer, args.period, int(time.time() * 1000))
        split, usages, bill = period_invoice(config, client, args.customer, period.start_ms, period.end_ms)
    finally:
        client.close()
    usage: dict[str, int] = {}
    for used in usages:
        for meter, units in used.items():
            usage[meter] = usage.get(meter, 0) + units
    heading = f"Invoice preview for {args.customer}, {period.label}, plan {bill.plan}"
    extra = {
        "customer": args.customer,
        "period": args.period,
        "period_start": period.start_ms,
        "period_end": period.end_ms,
        "subscription": period.subscription,
        "usage": usage,
        "parts": [
            {"plan": p.plan.name, "start": p.start_ms, "end": p.end_ms, "billed": p.billed, "usage": used}
            for p, used in zip(split, usages, strict=True)
        ],
    }
    _print_invoice(bill, heading, extra, args.json)
    return 0


def _invoice_quote(args: argparse.Namespace) -> int:
    from reconciler.pricing import invoice

    config = _load(args)
    plan = config.plans.get(args.plan)
    if plan is None:
        raise MeterlineError(
            f"--plan {args.plan!r}: no such plan; configured: {', '.join(sorted(config.plans))}"
        )
    if args.currency and args.currency.lower() != plan.currency:
        raise MeterlineError(
            f"--currency {args.currency!r}: plan {plan.name!r} is priced in {plan.currency}, "
            "and meterline does not convert currencies"
        )
    usage: dict[str, int] = {}
    problems = []
    for text in args.usage:
        meter, _, quantity = text.partition("=")
        if meter not in plan.prices:
            problems.append(f"--usage {text!r}: plan {plan.name!r} prices no meter {meter!r}")
        elif not quantity.isdigit():
            unit = config.meters[meter].unit if meter in config.meters else "base unit"
            problems.append(
                f"--usage {text!r}: the quantity is a whole number of {unit}s, e.g. {meter}=1200000"
            )
        else:
            usage[meter] = usage.get(meter, 0) + int(quantity)
    if problems:
        raise MeterlineError("; ".join(problems))
    heading = f"Quote on plan {plan.name} for " + (
        ", ".join(f"{m} {q:,} ({config.meters[m].unit})" for m, q in usage.items()) or "no usage"
    )
    _print_invoice(invoice(plan, usage), heading, {"usage": usage}, args.json)
    return 0


def _print_invoice(bill: Invoice, heading: str, extra: dict[str, Any], as_json: bool) -> None:
    from reconciler.invoice_text import describe, rows, to_json

    if as_json:
        print(json.dumps({**extra, **to_json(bill)}))
        return
    print(heading)
    print(render(rows(bill)))
    print(describe(bill))
    for note in bill.notes:
        print(f"note: {note}")


def _reconcile(args: argparse.Namespace) -> int:
    from clickhouse_connect.driver.exceptions import ClickHouseError

    from reconciler.reconcile import reconcile
    from sinks.clickhouse.client import connect
    from sinks.stripe.calls import caller_for

    if args.every:
        return _reconcile_role(args)

    try:  # 2: it could not run, whatever the cause, so that a scheduler tells it from drift (1)
        config = _load(args)
        client = connect(config)
        try:
            result = reconcile(
                config,
                client,
                caller_for(config, give_up_after_s=args.give_up_after),
                args.period,
                args.customer,
                args.meter,
                args.threshold,
                progress=None if args.json else progress.counter("customers compared"),
            )
        finally:
            client.close()
    except (MeterlineError, ClickHouseError, OSError) as exc:
        return _cannot_run("reconcile", exc, args.json)
    if not args.json:
        print(file=sys.stderr)

    def pct(value: Any) -> str:
        return "" if value is None else f"{value}%"

    pairs = [
        {
            "customer": d.key[0],
            "meter": d.key[1],
            "ours": d.ours,
            "Stripe": d.theirs,
            "drift": d.drift,
            "drift %": pct(d.percent),
        }
        for d in result.pairs
    ]
    hours = [
        {
            "customer": d.key[0],
            "meter": d.key[1],
            "hour (UTC)": datetime.fromtimestamp(d.key[2] / 1000, UTC).strftime("%Y-%m-%d %H:00"),
            "ours": d.ours,
            "Stripe": d.theirs,
            "drift": d.drift,
        }
        for d in result.hours
    ]
    unbilled = [vars(u) for u in result.unbilled]
    if args.json:
        print(
            json.dumps(
                {
                    "run_id": result.run_id,
                    "period": result.period,
                    "ok": result.ok,
                    "pairs": pairs,
                    "hours": hours,
                    "unbilled": unbilled,
                    "dead_letters": result.dead_letters,
                }
            )
        )
    else:
        drifting = len(result.drifting)
        print(f"Reconciliation {result.run_id}, {result.period}: {len(pairs)} pairs of customer and meter,")
        print(f"{drifting} drifting beyond {result.threshold} units")
        print(render(pairs) if pairs else "(no usage in the period)")
        if hours:
            print("\nHours that differ:")
            print(render(hours))
        if unbilled:
            print(
                "\nNot billed as counted (refused; in usage.stripe.dlq and the ledger; "
                "negative units: billed in excess):"
            )
            print(render(unbilled))
        if result.dead_letters:
            print(
                "\nDead letters in the period (never counted): "
                + ", ".join(f"{k} {v:,}" for k, v in result.dead_letters.items())
            )
    return 0 if result.ok else 1


def _reconcile_role(args: argparse.Namespace) -> int:
    from core import metrics
    from meterline.run import reconcile_periodically
    from sinks.clickhouse.client import connect

    config = _load(args)
    metrics.register_reconcile()
    client = connect(config)
    every_s = args.every * 60
    try:
        _run_until_signalled(
            args, config, "reconcile", lambda stop: reconcile_periodically(config, client, stop, every_s, 0)
        )
    finally:
        client.close()
    return 0


def _cannot_run(command: str, exc: Exception, as_json: bool) -> int:
    message = str(exc).splitlines()[0] if not isinstance(exc, ConfigError) else str(exc)
    if as_json:
        print(json.dumps({"ok": False, "error": message, "kind": type(exc).__name__}))
    else:
        print(f"error: {command} could not run: {message}", file=sys.stderr)
    return 2


def _replay(args: argparse.Namespace) -> int:
    from collections import Counter

    from reconciler.compare import compare
    from reconciler.replay import (
        clickhouse_differences,
        rederive,
        repairs,
        reported_windows,
        stored_windows,
        stripe_windows,
    )
    from reconciler.stripe_totals import StripeTotals
    from schemas.serde import AvroSerde
    from sinks.clickhouse.client import connect
    from sinks.stripe.calls import caller_for

    config = _load(args)
    bootstrap = devstack.kafka_brokers(config)
    rederived = rederive(
        config,
        bootstrap,
        args.start,
        args.end,
        args.customer,
        None if args.json else progress.counter("partitions re-derived"),
    )
    client = connect(config)
    try:
        stored = stored_windows(client, args.start, args.end, args.customer)
        reported = reported_windows(client, args.start, args.end, args.customer)
    finally:
        client.close()
    in_clickhouse = clickhouse_differences(rederived, stored)
    pairs: Counter[tuple[str, str]] = Counter()
    for (customer, meter, _), value in rederived.windows().items():
        pairs[(customer, meter)] += value
    stripe = StripeTotals(caller_for(config), config)
    theirs = {(c, m): stripe.total(c, m, args.start, args.end) for c, m in pairs}
    in_stripe = [d for d in compare({k: v for k, v in theirs.items() if v}, dict(pairs)) if d.drift]
    fixes = []
    if args.repair:
        # Stripe's own totals of the windows it disagrees on (meter events only: usage record
        # summaries are per billing period, not per window).
        known = (
            stripe_windows(
                stripe,
                reported,
                rederived,
                config.windows.size_ms,
                int((time.time() - config.stripe.summaries_settle_seconds) * 1000),
            )
            if config.stripe.mode != "usage_records"
            else {}
        )
        fixes = repairs(rederived, stored, reported, config.windows.size_ms, known)
    if fixes:
        serde = AvroSerde.from_registry_url(config.kafka.schema_registry_url)
        producer = idempotent_producer(bootstrap, {"partitioner": "murmur2_random"})
        for fix in fixes:
            producer.produce(config.topics.aggregates, serde.encode_aggregate(fix), fix.customer_id.encode())
        if producer.flush(60):
            raise MeterlineError("the correcting revisions were not all delivered: run the repair again")
    summary = {
        "records": rederived.records,
        "events": rederived.events,
        "events/s": round(rederived.events / rederived.seconds) if rederived.seconds else None,
        "windows": len(rederived.windows()),
        "ClickHouse differs": len(in_clickhouse),
        "Stripe differs": len(in_stripe),
        "repairs emitted": len(fixes),
    }
    clickhouse_rows = [
        {
            "customer": d.key[0],
            "meter": d.key[1],
            "window (UTC)": datetime.fromtimestamp(d.key[2] / 1000, UTC).strftime("%Y-%m-%d %H:%M"),
            "ClickHouse": d.ours,
            "re-derived": d.theirs,
            "difference": d.drift,
        }
        for d in in_clickhouse
    ]
    stripe_rows = [
        {
            "customer": d.key[0],
            "meter": d.key[1],
            "Stripe": d.ours,
            "re-derived": d.theirs,
            "difference": d.drift,
        }
        for d in in_stripe
    ]
    if args.json:
        print(json.dumps({**summary, "clickhouse": clickhouse_rows, "stripe": stripe_rows}))
    else:
        print(file=sys.stderr)
        print(render([summary]))
        if clickhouse_rows:
            print("\nWindows where ClickHouse differs from the events:")
            print(render(clickhouse_rows[:50]))
        if stripe_rows:
            print("\nCustomers and meters where Stripe differs from the events:")
            print(render(stripe_rows))
        if fixes:
            print(f"\nEmitted {len(fixes)} correcting revisions to {config.topics.aggregates}:")
            print("the sinks apply them; replay again once they have caught up to see zero differences.")
    return 0 if not (in_clickhouse or in_stripe) or fixes else 1


def _dispute(args: argparse.Namespace) -> int:
    from reconciler import dispute
    from reconciler.periods import resolve
    from sinks.clickhouse.client import connect

    config = _load(args)
    client = connect(config)
    try:
        period = resolve(client, args.customer, args.period, int(time.time() * 1000))
        report = dispute.query(config, client, args.customer, period)
    finally:
        client.close()
    render_as = {"csv": dispute.render_csv, "json": dispute.render_json, "html": dispute.render_html}[
        args.format
    ]
    text = render_as(report)
    if args.output:
        args.output.write_text(text)
        print(
            f"wrote {args.output} ({len(report.hours)} hours of usage, {len(report.carriers)} Stripe reports)"
        )
    else:
        print(text)
    return 0


def _webhooks(args: argparse.Namespace) -> int:
    from meterline.server import serve_webhooks
    from sinks.clickhouse.client import connect
    from sinks.stripe.calls import caller_for
    from sinks.stripe.webhooks import PATH, WebhookConsumer

    config = _load(args)
    bootstrap = devstack.kafka_brokers(config)
    receiver = serve_webhooks(config, bootstrap, args.port)
    host, port = receiver.server_address
    client = connect(config)

    def consume(stop: Callable[[], bool]) -> None:
        logging.getLogger("meterline.webhooks").info("listening on http://%s:%s%s", host, port, PATH)
        WebhookConsumer(config, bootstrap, client, caller_for(config), group_id=args.group).run(stop)

    try:
        _run_until_signalled(args, config, "webhooks", consume)
    finally:
        receiver.shutdown()
        client.close()
    return 0


def _sql(args: argparse.Namespace) -> int:
    from sinks.clickhouse.client import ClickHouseError, connect

    config = _load(args)
    client = connect(config)
    try:
        result = client.query(args.query, settings={"readonly": 1})
    except Exception as exc:  # clickhouse-connect's errors carry ClickHouse's own message
        raise ClickHouseError(f"the query failed: {exc}") from exc
    finally:
        client.close()
    rows = [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]
    if args.format == "json":
        print(json.dumps(rows, default=str))
    elif args.format == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(result.column_names)
        writer.writerows(result.result_rows)
    else:
        print(render(rows) if rows else f"(no rows; columns: {', '.join(result.column_names)})")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from meterline.verify import read_emitted, verify
    from schemas.serde import AvroSerde

    config = _load(args)
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
    config = _load(args)
    document = inspect.summarize(config, args.expect_messages, quiet=args.json).document()
    print(json.dumps(document, indent=2) if args.json else inspect.describe(document))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from meterline.demo import demo

    config = _load(args, resolve=False)  # the demo starts a stack of its own
    if args.span is None:  # a month of usage: this billing month so far
        now_ms = int(time.time() * 1000)
        if args.start is None:
            month_start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            args.start = int(month_start.timestamp() * 1000)
        args.span = max(60_000, now_ms - args.start - 60_000)
    spec = _spec(args)
    _check_span_is_current(spec, config)
    return demo(config, args.config, spec, args.workers, args.keep)


# -- argument types --------------------------------------------------------------------------------


def _timestamp(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected ISO 8601 (2026-11-01T00:00:00Z) or epoch ms"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _duration(text: str) -> int:
    units = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": DAY_MS}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number and s, m, h or d, e.g. 24h")
    return int(text[:-1]) * units[text[-1]]


def _attribute(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key, value


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


if __name__ == "__main__":
    sys.exit(main())
