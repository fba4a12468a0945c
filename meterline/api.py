"""The routes `meterline run` adds to its HTTP server: the dashboard and commands run inside it,
each behind meterline.guard."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote

from meterline import dashboard, forward
from meterline.core.config import Config
from meterline.core.errors import MeterlineError
from meterline.core.http import Request, Response, Route
from meterline.guard import Guard
from meterline.sinks.clickhouse.usage_windows import customers_since

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


def routes(
    config: Config, client: Client, execute: Callable[[list[str]], int], secret: str
) -> dict[str, Route]:
    def index(_: Request) -> Response:
        return dashboard.respond(dashboard.index(customers_since(client)))

    def customer_page(request: Request) -> Response:
        customer = unquote(request.path.removeprefix("/customers/").strip("/"))
        if not customer:
            return index(request)
        return dashboard.respond(dashboard.page(customer))

    def script(_: Request) -> Response:
        return Response(200, dashboard.SCRIPT.encode(), "text/javascript; charset=utf-8")

    def usage(request: Request) -> Response:
        # /api/customers/<id>/usage
        parts = request.path.removeprefix("/api/customers/").split("/")
        if len(parts) != 2 or parts[1] != "usage" or not parts[0]:
            return Response.error(
                404, "GET /api/customers/<customer>/usage?period=YYYY-MM&grain=hour|day&as_of=MS"
            )
        grain = request.query.get("grain", "hour")
        if grain not in ("hour", "day"):
            return Response.error(400, f"grain {grain!r}: expected hour or day")
        as_of = request.query.get("as_of", "")
        if as_of and not as_of.isdigit():
            return Response.error(400, f"as_of {as_of!r}: expected milliseconds since the epoch")
        try:
            document = dashboard.document(
                config,
                client,
                unquote(parts[0]),
                request.query.get("period") or None,
                "day" if grain == "day" else "hour",
                int(as_of) if as_of else None,
            )
        except MeterlineError as exc:
            return Response.error(400, str(exc))
        return Response.json(document)

    guard = Guard(config.run)
    return {
        **guard.dashboard(
            {
                "GET /": index,
                "GET /customers/*": customer_page,
                "GET /dashboard.js": script,
                "GET /api/customers/*": usage,
            }
        ),
        "POST /api/cli": guard.commands(forward.cli_route(execute, allowed=config.run.loopback), secret),
    }
