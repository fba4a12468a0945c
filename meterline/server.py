"""The HTTP face of a meterline process: /metrics, /healthz, /readyz, plus the routes a role adds.

Every role serves these three (`meterline run` on its API port, a standalone role with
`--http-port`). Health is what the roles report about themselves: a role is `starting` until its
loop runs, `ready` while it runs, and `failed` once it has died (the process then shuts down).
They are open to whoever reaches the port, as probes and scrapers need: they carry no customer's
data. The server and its bounds are core.http's.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from meterline import devstack
from meterline.core.config import Config
from meterline.core.http import Limits, Request, Response, Route, Server, dispatch
from meterline.core.kafka import Kafka


@dataclass
class Health:
    roles: dict[str, str] = field(default_factory=dict)
    """role -> "starting" | "ready" | "failed: why"."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, role: str, state: str) -> None:
        with self._lock:
            self.roles[role] = state

    def report(self) -> tuple[bool, bool, dict[str, str]]:
        """(alive: no role failed, ready: every role ready, the roles)."""
        with self._lock:
            roles = dict(self.roles)
        alive = not any(state.startswith("failed") for state in roles.values())
        return alive, alive and all(state == "ready" for state in roles.values()), roles


def health_routes(health: Health, registry: CollectorRegistry = REGISTRY) -> dict[str, Route]:
    def metrics(_: Request) -> Response:
        return Response(200, generate_latest(registry), CONTENT_TYPE_LATEST)

    def healthz(_: Request) -> Response:
        alive, _ready, roles = health.report()
        return Response.json({"ok": alive, "roles": roles}, 200 if alive else 503)

    def readyz(_: Request) -> Response:
        _alive, ready, roles = health.report()
        return Response.json({"ok": ready, "roles": roles}, 200 if ready else 503)

    return {"GET /metrics": metrics, "GET /healthz": healthz, "GET /readyz": readyz}


def serve(
    host: str,
    port: int,
    health: Health,
    limits: Limits,
    routes: Mapping[str, Route] | None = None,
    registry: CollectorRegistry = REGISTRY,
) -> Server:
    """Serve the health routes and `routes` ("METHOD /path", or "METHOD /path/*" for everything
    under /path/) on (host, port) until `shutdown()`."""
    return Server(host, port, dispatch({**health_routes(health, registry), **(routes or {})}), limits)


def serve_webhooks(config: Config, bootstrap: Kafka, port: int | None = None) -> Server:
    """Stripe's webhook endpoint on [run] host at [stripe] webhook_port (or `port`): the receiver's
    two routes only, since this port faces the internet."""
    from meterline.sinks.stripe.webhooks.role import receiver_routes

    routes = receiver_routes(config, bootstrap, devstack.webhook_secret(config))
    port = config.stripe.webhook_port if port is None else port
    return Server(config.run.host, port, dispatch(routes), config.run.limits)
