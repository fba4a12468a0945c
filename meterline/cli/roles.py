"""`meterline stream | run | migrate | sink | webhooks | alerts | ingest`: the long-running roles (and
the schema they need)."""

from __future__ import annotations

import argparse
import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meterline import devstack
from meterline.cli.common import (
    load,
    role_arguments,
    run_until_signalled,
)
from meterline.core import logs

if TYPE_CHECKING:
    pass


def register(commands: Any, main: Callable[[list[str]], int]) -> None:
    """Add this group's commands to the `meterline` parser; `run` executes the commands sent to it
    with `main`."""
    stream = commands.add_parser("stream", help="run a stream worker: usage.events -> usage.aggregates")
    stream.add_argument(
        "--data-dir",
        type=Path,
        help="where this worker keeps its state store (default: <state_dir>/stream/<app_id>); "
        "two workers on one machine need two; `dev up` clears <state_dir>/stream with a new broker",
    )
    role_arguments(stream)
    stream.set_defaults(run=_stream)

    run_all = commands.add_parser(
        "run",
        help="every role in one process: stream app, both sinks, webhooks, scheduled reconcile, "
        "with the dashboard, metrics and an API on [run] port",
    )
    run_all.add_argument("--data-dir", type=Path, help="the stream app's state store (as for `stream`)")
    run_all.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run_all.add_argument("--log-format", default="text", choices=logs.FORMATS)
    run_all.set_defaults(run=functools.partial(_run, main=main))

    alerts = commands.add_parser(
        "alerts",
        help="raise each usage alert of [alerts] rules once: usage.alerts, a signed webhook, a metric",
    )
    alerts.add_argument(
        "--every", type=float, help="seconds between passes (default: [alerts] every_seconds)"
    )
    alerts.add_argument("--once", action="store_true", help="one pass, print what it raised, and exit")
    role_arguments(alerts)
    alerts.set_defaults(run=_alerts)

    ingest = commands.add_parser(
        "ingest", help="usage over HTTP: CloudEvents on POST /v1/events into usage.events ([ingest] port)"
    )
    ingest.add_argument("--port", type=int, help="where it listens (default: [ingest] port)")
    role_arguments(ingest)
    ingest.set_defaults(run=_ingest)

    migrate = commands.add_parser("migrate", help="bring ClickHouse's tables to this version; idempotent")
    migrate.add_argument("--json", action="store_true")
    migrate.set_defaults(run=_migrate)

    sink = commands.add_parser("sink", help="run a sink").add_subparsers(title="sink")
    clickhouse = sink.add_parser(
        "clickhouse", help="usage.aggregates, dead letters and accepted raw events into ClickHouse"
    )
    clickhouse.add_argument("--group", default="meterline-sink-clickhouse", help="its Kafka consumer group")
    role_arguments(clickhouse)
    clickhouse.set_defaults(run=_sink_clickhouse)

    stripe_sink = sink.add_parser("stripe", help="report usage.aggregates to Stripe once per window revision")
    stripe_sink.add_argument("--group", default="meterline-sink-stripe", help="its Kafka consumer group")
    role_arguments(stripe_sink)
    stripe_sink.set_defaults(run=_sink_stripe)

    webhooks = commands.add_parser(
        "webhooks", help="receive Stripe webhooks (verified, kept on stripe.webhooks) and process each once"
    )
    webhooks.add_argument("--port", type=int, help="default: stripe.webhook_port")
    webhooks.add_argument("--group", default="meterline-webhooks", help="the consumer's Kafka group")
    role_arguments(webhooks)
    webhooks.set_defaults(run=_webhooks)


def _stream(args: argparse.Namespace) -> int:
    import faust

    from meterline.run import stream_app
    from meterline.server import Health, serve

    config = load(args)
    health = Health()
    app = stream_app(config, devstack.kafka_brokers(config), args.data_dir, health)
    if args.http_port is not None:
        serve(config.run.host, args.http_port, health, config.run.limits)
    # Faust's worker owns the event loop and the signals: SIGTERM and Ctrl-C stop it cleanly.
    faust.Worker(
        app, loglevel=args.log_level, logging_config=logs.config_dict(args.log_level, args.log_format)
    ).execute_from_commandline()
    return 0


def _run(args: argparse.Namespace, main: Callable[[list[str]], int]) -> int:
    from meterline.run import run

    def execute(argv: list[str]) -> int:
        """A command sent by `meterline` beside `run`, run here as it would have run there."""
        if args.config is not None and "--config" not in argv:
            argv = ["--config", str(args.config.absolute()), *argv]
        return main(argv)

    return run(load(args, resolve=False), execute, args.data_dir, args.log_level, args.log_format)


def _migrate(args: argparse.Namespace) -> int:
    from meterline.sinks.clickhouse.client import connect
    from meterline.sinks.clickhouse.migrate import migrate

    config = load(args)
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
    from meterline.compose import clickhouse_sink

    config = load(args)
    run_until_signalled(
        args,
        config,
        "sink-clickhouse",
        lambda stop: clickhouse_sink(config, devstack.kafka_brokers(config), group_id=args.group).run(stop),
    )
    return 0


def _sink_stripe(args: argparse.Namespace) -> int:
    from meterline.compose import stripe_sink

    config = load(args)
    run_until_signalled(
        args,
        config,
        "sink-stripe",
        lambda stop: stripe_sink(config, devstack.kafka_brokers(config), group_id=args.group).run(stop),
    )
    return 0


def _webhooks(args: argparse.Namespace) -> int:
    from meterline.reconciler.notices.role import Notifier
    from meterline.server import serve_webhooks
    from meterline.sinks.clickhouse.client import connect
    from meterline.sinks.stripe.calls import caller_for
    from meterline.sinks.stripe.webhooks.role import PATH, WebhookConsumer

    config = load(args)
    bootstrap = devstack.kafka_brokers(config)
    receiver = serve_webhooks(config, bootstrap, args.port)
    host, port = receiver.server_address
    client = connect(config)

    def consume(stop: Callable[[], bool]) -> None:
        logging.getLogger("meterline.webhooks").info("listening on http://%s:%s%s", host, port, PATH)
        notify = Notifier(config, bootstrap, client).notify
        WebhookConsumer(
            config, bootstrap, client, caller_for(config), group_id=args.group, on_finalized=notify
        ).run(stop)

    try:
        run_until_signalled(args, config, "webhooks", consume)
    finally:
        receiver.shutdown()
        client.close()
    return 0


def _alerts(args: argparse.Namespace) -> int:
    import time

    from meterline.reconciler.alerts.role import Alerter, alert_periodically
    from meterline.sinks.clickhouse.client import connect
    from meterline.table import render

    config = load(args)
    client = connect(config)
    try:
        if args.once:
            raised = Alerter(config, devstack.kafka_brokers(config), client).tick(int(time.time() * 1000))
            rows = [
                {"customer": a.customer_id, "meter": a.meter, "threshold": a.threshold, "id": a.id}
                for a in raised
            ]
            print(render(rows))
            return 0
        every_s = args.every or config.alerts.every_seconds
        run_until_signalled(
            args,
            config,
            "alerts",
            lambda stop: alert_periodically(
                Alerter(config, devstack.kafka_brokers(config), client), stop, every_s
            ),
        )
    finally:
        client.close()
    return 0


def _ingest(args: argparse.Namespace) -> int:
    import time

    from meterline.core.http import Response, Server, dispatch
    from meterline.schemas.ingest import PATH, Ingest

    config = load(args)
    bootstrap = devstack.kafka_brokers(config)
    server = Server(
        config.run.host,
        config.ingest.port if args.port is None else args.port,
        dispatch(
            {**Ingest(config, bootstrap).routes(), "GET /healthz": lambda _: Response.json({"ok": True})}
        ),
        config.run.limits,
    )
    host, port = server.server_address

    def serve(stop: Callable[[], bool]) -> None:
        logging.getLogger("meterline.ingest").info("listening on http://%s:%s%s", host, port, PATH)
        while not stop():
            time.sleep(0.2)

    try:
        run_until_signalled(args, config, "ingest", serve)
    finally:
        server.shutdown()
    return 0
