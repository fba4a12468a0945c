"""What the command groups share: loading the configuration, the arguments every role or
workload takes, argument types, and running a role until it is signalled."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from meterline import devstack
from meterline.config import load_config
from meterline.core import logs
from meterline.core.config import Config, ConfigError
from meterline.streams.windows import DAY_MS

if TYPE_CHECKING:
    pass


CONFIG_HELP = "TOML file (default: $METERLINE_CONFIG, ./meterline.toml or /etc/meterline/meterline.toml)"


PERIOD_HELP = (
    "YYYY-MM (the UTC month), current, previous, or YYYY-MM-DD (the customer's Stripe billing "
    "period that day falls in)"
)


def period(text: str) -> str:
    from meterline.reconciler.billing.periods import PeriodError, check_spec

    try:
        return check_spec(text)
    except PeriodError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def month(text: str) -> str:
    """A UTC month, YYYY-MM, checked before anything connects."""
    from meterline.reconciler.billing.periods import PeriodError, period_bounds

    try:
        period_bounds(text)
    except PeriodError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def role_arguments(parser: argparse.ArgumentParser) -> None:
    """What every long-running role takes: logging, and where it serves /metrics, /healthz, /readyz."""
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="text", choices=logs.FORMATS)
    parser.add_argument(
        "--http-port", type=int, help="serve /metrics, /healthz and /readyz on [run] host at this port"
    )


def workload_arguments(
    parser: argparse.ArgumentParser,
    events: int = 100_000,
    customers: int = 10,
    span: int | None = DAY_MS,
    workers: bool = True,
) -> None:
    parser.add_argument("--events", type=int, default=events, help="records to produce, bad ones included")
    parser.add_argument("--customers", type=int, default=customers)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--start", type=timestamp, help="event time of the first event (default: now - span)")
    parser.add_argument(
        "--span",
        type=duration,
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
    if not workers:
        return
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="producer processes, each taking a share of the partitions (default: one per core); "
        "the records do not depend on it",
    )


def load(args: argparse.Namespace, resolve: bool = True) -> Config:
    """The configuration, with the local stack's addresses where it leaves them to the stack
    (`resolve`), as every role and command is handed it; unresolved for the commands that manage
    the stack itself or start it."""
    config = load_config(args.config)
    return devstack.resolve(config) if resolve else config


def quiet_if(quiet: bool) -> Callable[[str], None]:
    return (lambda _line: None) if quiet else (lambda line: print(line, file=sys.stderr))


def run_until_signalled(
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


def cannot_run(command: str, exc: Exception, as_json: bool) -> int:
    message = str(exc).splitlines()[0] if not isinstance(exc, ConfigError) else str(exc)
    if as_json:
        print(json.dumps({"ok": False, "error": message, "kind": type(exc).__name__}))
    else:
        print(f"error: {command} could not run: {message}", file=sys.stderr)
    return 2


def timestamp(text: str) -> int:
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


def duration(text: str) -> int:
    units = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": DAY_MS}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number and s, m, h or d, e.g. 24h")
    return int(text[:-1]) * units[text[-1]]


def attribute(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key, value


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")
