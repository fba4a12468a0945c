"""`meterline run`: every role in one process, on the embedded stack or on configured services.

- The stream app (Faust) runs on the main thread: it owns the event loop and the signals.
- The ClickHouse sink, the Stripe sink, the webhook consumer, the scheduled reconcile and the usage
  alerts each run their loop on a thread; the webhook receiver and the HTTP server (API,
  dashboard, the HTTP ingest, /metrics, /healthz, /readyz) serve from threads of their own.
- One ClickHouse client is opened first and kept for the whole run: with the embedded engine it
  holds the data directory, and commands started beside `run` execute inside it (meterline.forward).

SIGTERM or Ctrl-C stops Faust (it flushes and commits), then every loop is told to stop and
finishes its batch, flushes and commits, then the servers close and the stack `run` started (if
it started one) stops. A role that dies takes the process down with exit code 1, for a supervisor
to restart: exactness never depended on a clean stop (DESIGN §4).
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meterline import api, devstack, forward, topics
from meterline.core import allocator, collector, logs, metrics
from meterline.core.config import Config
from meterline.core.errors import MeterlineError
from meterline.core.http import Route, Server
from meterline.core.kafka import Kafka
from meterline.server import Health, serve, serve_webhooks

if TYPE_CHECKING:
    import faust
    from clickhouse_connect.driver.client import Client

log = logging.getLogger("meterline.run")

Loop = Callable[[Callable[[], bool]], None]
"""A role's loop: runs until the callable it is given returns True."""


@dataclass
class Roles:
    """The roles running on threads, and what they report to /healthz and /readyz."""

    health: Health
    stopping: threading.Event = field(default_factory=threading.Event)
    failures: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, name: str, loop: Loop) -> None:
        def should_stop() -> bool:
            # Asked once per poll: a role that asks is running its loop.
            self.health.set(name, "stopping" if self.stopping.is_set() else "ready")
            return self.stopping.is_set()

        def body() -> None:
            try:
                loop(should_stop)
                self.health.set(name, "stopped")
            except BaseException as exc:
                log.critical(
                    "role %s failed: stopping meterline run", name, exc_info=True, extra={"role": name}
                )
                self.health.set(name, f"failed: {type(exc).__name__}: {exc}")
                self.failures.append(name)
                os.kill(os.getpid(), signal.SIGTERM)  # Faust stops, then the other roles

        self.health.set(name, "starting")
        thread = threading.Thread(target=body, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def stop(self, timeout_s: float) -> None:
        self.stopping.set()
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.error("role %s did not stop within %.0f s", thread.name, timeout_s)


def reconcile_periodically(
    config: Config, client: Client, should_stop: Callable[[], bool], every_s: float, first_after_s: float
) -> None:
    """Reconcile the current month every `every_s`, the first time after `first_after_s` (in `run`,
    one interval: the sinks catch up first). A run that cannot finish is logged and counted; the
    next one tries again."""
    from clickhouse_connect.driver.exceptions import ClickHouseError

    from meterline.reconciler.checks.reconcile import reconcile
    from meterline.sinks.stripe.calls import caller_for

    next_at = time.monotonic() + first_after_s
    while not should_stop():
        if every_s and time.monotonic() >= next_at:
            next_at += every_s
            period = datetime.now(UTC).strftime("%Y-%m")
            try:
                result = reconcile(config, client, caller_for(config, give_up_after_s=120), period)
            except (MeterlineError, ClickHouseError, OSError) as exc:
                metrics.RECONCILE_RUNS.labels("failed").inc()
                log.error("scheduled reconcile of %s failed: %s", period, exc)
                continue
            drift = sum(abs(d.drift) for d in result.pairs)
            (log.info if result.ok else log.warning)(
                "scheduled reconcile of %s: %d pairs, drift %d units",
                period,
                len(result.pairs),
                drift,
                extra={"run_id": result.run_id},
            )
        time.sleep(0.5)


def stream_app(config: Config, bootstrap: Kafka, data_dir: Path | None, health: Health) -> faust.App:
    """The stream app, its state store in `data_dir` (default: <state_dir>/stream/<app_id>), its
    counters on /metrics, and `ready` on /readyz once Faust has started it."""
    from meterline.streams.app import build_app

    allocator.limit_arenas()  # before the clients' threads start (core.allocator)
    topics.require_for_role(bootstrap, config, "stream")
    data_dir = data_dir or devstack.stream_state_dir(config) / config.stream.app_id
    data_dir.mkdir(parents=True, exist_ok=True)
    app, runtime = build_app(config, bootstrap, data_dir.resolve())
    collector.tune_for_long_lived_state()
    metrics.register_stream(runtime.snapshot)
    health.set("stream", "starting")

    @app.task  # type: ignore[untyped-decorator]  # runs once the Faust app has started
    async def started() -> None:
        health.set("stream", "ready")

    return app


@functools.cache
def faust_app() -> faust.App:
    """The stream app as Faust users run it, `faust -A meterline.run worker -l info`: configured as
    `meterline stream` is (the file and the environment), its state under the default data dir."""
    from meterline.config import load_config

    config = devstack.resolve(load_config())
    return stream_app(config, devstack.kafka_brokers(config), None, Health())


def run(
    config: Config,
    execute: Callable[[list[str]], int],
    data_dir: Path | None,
    log_level: str,
    log_format: str,
) -> int:
    import faust

    from meterline.schemas.ingest import PATH as INGEST_PATH
    from meterline.schemas.ingest import Ingest
    from meterline.sinks.clickhouse.client import connect
    from meterline.sinks.clickhouse.migrate import migrate
    from meterline.sinks.stripe.webhooks.role import PATH

    logs.setup(log_level, log_format)
    if not config.run.loopback and not config.run.dashboard_protected:
        raise MeterlineError(
            f"[run] host {config.run.host} is beyond loopback: the dashboard would show customers' usage "
            "to anyone who reaches it. Set [run] dashboard_token, or dashboard_user and dashboard_password"
        )
    stack_was_up = any(s.state == "running" for s in devstack.status(config))
    devstack.up(config, log=log.info)
    config = devstack.resolve(config)
    bootstrap = devstack.kafka_brokers(config)
    client = connect(config)
    health = Health()
    try:
        migrated = migrate(client, config.clickhouse.raw_events_ttl_days, cluster=config.clickhouse.cluster)
        log.info("ClickHouse schema version %d", migrated.current)
        app = stream_app(config, bootstrap, data_dir, health)
    except BaseException:
        client.close()
        raise

    # The ports first: a port in use stops `run` before any role has started.
    secret = secrets.token_urlsafe(32)
    try:
        # The HTTP ingest's routes beside the dashboard's: their own API keys guard them.
        routes = {**api.routes(config, client, execute, secret), **Ingest(config, bootstrap).routes()}
        server, receiver = _listen(config, bootstrap, health, routes)
    except BaseException:
        client.close()
        raise
    roles = _start_roles(config, bootstrap, client, health)
    url = f"http://{config.run.host}:{server.server_address[1]}"
    forward.announce(config, url, secret)
    log.info(
        "meterline run is up: dashboard %s/customers/<customer>, metrics %s/metrics, ingest %s%s, "
        "webhooks http://%s:%d%s",
        url,
        url,
        url,
        INGEST_PATH,
        *receiver.server_address[:2],
        PATH,
    )
    try:
        # redirect_stdouts off: commands run through the API print to their caller (meterline.forward).
        worker = faust.Worker(
            app,
            loglevel=log_level,
            logging_config=logs.config_dict(log_level, log_format),
            redirect_stdouts=False,
        )
        worker.execute_from_commandline()
    except SystemExit:
        pass
    finally:
        log.info("stopping the roles: each finishes its batch, flushes and commits")
        roles.stop(timeout_s=120)
        receiver.shutdown()
        server.shutdown()
        forward.withdraw(config)
        client.close()
        if not stack_was_up:
            devstack.down(config, log=log.info)
    return 1 if roles.failures else 0


def _listen(
    config: Config, bootstrap: Kafka, health: Health, routes: dict[str, Route]
) -> tuple[Server, Server]:
    """The API and dashboard server, and Stripe's webhook receiver."""
    try:
        server = serve(config.run.host, config.run.port, health, config.run.limits, routes)
    except OSError as exc:
        raise _cannot_listen(config, exc) from exc
    try:
        return server, serve_webhooks(config, bootstrap)
    except OSError as exc:
        server.shutdown()
        raise _cannot_listen(config, exc) from exc


def _cannot_listen(config: Config, exc: OSError) -> MeterlineError:
    return MeterlineError(
        f"cannot listen on {config.run.host} ({exc.strerror}): [run] port {config.run.port} and "
        f"[stripe] webhook_port {config.stripe.webhook_port} must be free (0: any free port)"
    )


def _start_roles(config: Config, bootstrap: Kafka, client: Client, health: Health) -> Roles:
    """Every role but the stream app, each on its thread, once their topics are there."""
    from meterline.compose import clickhouse_sink, stripe_sink
    from meterline.reconciler.alerts.role import Alerter, alert_periodically
    from meterline.reconciler.notices.role import Notifier
    from meterline.sinks.stripe.calls import caller_for
    from meterline.sinks.stripe.webhooks.role import WebhookConsumer

    for role in ("sink-clickhouse", "sink-stripe", "webhooks", "alerts"):
        topics.require_for_role(bootstrap, config, role)
    roles = Roles(health)
    roles.start("sink-clickhouse", lambda stop: clickhouse_sink(config, bootstrap).run(stop))
    roles.start("sink-stripe", lambda stop: stripe_sink(config, bootstrap).run(stop))
    roles.start(
        "webhooks",
        lambda stop: WebhookConsumer(
            config,
            bootstrap,
            client,
            caller_for(config),
            on_finalized=Notifier(config, bootstrap, client).notify,
        ).run(stop),
    )
    metrics.register_reconcile()
    every_s = config.run.reconcile_every_minutes * 60
    roles.start("reconcile", lambda stop: reconcile_periodically(config, client, stop, every_s, every_s))
    roles.start(
        "alerts",
        lambda stop: alert_periodically(
            Alerter(config, bootstrap, client), stop, config.alerts.every_seconds
        ),
    )
    return roles


def __getattr__(name: str) -> Any:
    """`faust -A meterline.run worker` looks up `app` in this module: the stream app, built on first
    access (streams.app builds it; the composition root resolves its addresses)."""
    if name == "app":
        return faust_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
