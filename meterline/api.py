"""The routes `meterline run` adds to its HTTP server: the dashboard and commands run inside it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from meterline import dashboard, forward
from meterline.config import Config
from meterline.errors import MeterlineError
from meterline.server import Request, Response, Route

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def routes(config: Config, client: Client, execute: Callable[[list[str]], int]) -> dict[str, Route]:
    def index(_: Request) -> Response:
        return Response.html(dashboard.index(dashboard.customers(client)))

    def customer_page(request: Request) -> Response:
        customer = request.path.removeprefix("/customers/").strip("/")
        if not customer:
            return index(request)
        return Response.html(dashboard.page(customer))

    def usage(request: Request) -> Response:
        # /api/customers/<id>/usage
        parts = request.path.removeprefix("/api/customers/").split("/")
        if len(parts) != 2 or parts[1] != "usage" or not parts[0]:
            return Response.json(
                {"error": "GET /api/customers/<customer>/usage?period=YYYY-MM&grain=hour|day&as_of=MS"}, 404
            )
        grain = request.query.get("grain", "hour")
        if grain not in ("hour", "day"):
            return Response.json({"error": f"grain {grain!r}: expected hour or day"}, 400)
        as_of = request.query.get("as_of", "")
        if as_of and not as_of.isdigit():
            return Response.json({"error": f"as_of {as_of!r}: expected milliseconds since the epoch"}, 400)
        try:
            document = dashboard.document(
                config,
                client,
                parts[0],
                request.query.get("period") or None,
                "day" if grain == "day" else "hour",
                int(as_of) if as_of else None,
            )
        except MeterlineError as exc:
            return Response.json({"error": str(exc)}, 400)
        return Response.json(document)

    return {
        "GET /": index,
        "GET /customers/*": customer_page,
        "GET /api/customers/*": usage,
        "POST /api/cli": forward.cli_route(execute, allowed=config.run.host in LOOPBACK),
    }
