"""Who may use the routes of `meterline run` that carry customers' data or run commands.

The attacker to think of is a browser: any page the operator visits can POST to 127.0.0.1
without a preflight (text/plain, form encodings), and by DNS rebinding can make its own name
resolve to 127.0.0.1 and then read the answers. Loopback is not a boundary for a browser. So,
before a route runs:
- **Host** must name this server: the address it listens on (any loopback name when that is
  loopback; any IP address when it listens on all of them) or one of `[run] allowed_hosts` (a
  proxy's name). A rebound page sends its own name. The port is not compared: behind a proxy it
  differs, and rebinding is about names.
- **Origin**, when there is one, must be this server's own (the request's Host): a foreign page's
  request carries its origin.
- **The command API** takes the run's secret (`X-Meterline-Secret`), which `run` writes where only
  the local user can read it (meterline.forward), and JSON only.
- **The dashboard** takes `[run] dashboard_token` (Bearer) or `dashboard_user`/`dashboard_password`
  (Basic), when configured; beyond loopback `run` does not start without one.
Each refusal is a 4xx naming the reason; the route does not run.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from urllib.parse import urlsplit

from meterline.core.config import RunConfig
from meterline.core.http import Request, Response, Route, is_loopback

SECRET_HEADER = "x-meterline-secret"


class Guard:
    """The checks, for the server `run` (its [run] section) describes."""

    def __init__(self, run: RunConfig) -> None:
        self.run = run
        self.listen_host = _name(run.host)
        self.allowed_hosts = frozenset(_name(h) for h in run.allowed_hosts)

    def host_refusal(self, request: Request) -> Response | None:
        host = request.headers.get("host", "")
        name = _name(host)
        if name == self.listen_host or name in self.allowed_hosts:
            return None
        if is_loopback(self.listen_host) and is_loopback(name):
            return None
        if self.listen_host in ("0.0.0.0", "::") and _is_address(name):
            return None
        return Response.error(
            421, f"Host {host!r} is not a name this server answers to (add it to [run] allowed_hosts)"
        )

    def cross_site_refusal(self, request: Request) -> Response | None:
        """Refused unless its Host names this server and any Origin is its own."""
        return self.host_refusal(request) or self.origin_refusal(request)

    def origin_refusal(self, request: Request) -> Response | None:
        origin = request.headers.get("origin")
        if origin is None:
            return None
        url = urlsplit(origin)
        if url.scheme in ("http", "https") and url.netloc.lower() == request.headers.get("host", "").lower():
            return None
        return Response.error(403, f"Origin {origin!r} is not this server's: cross-site requests are refused")

    def commands(self, route: Route, secret: str) -> Route:
        """The command API: Host, Origin, the run's secret, JSON."""

        def guarded(request: Request) -> Response:
            refusal = self.cross_site_refusal(request)
            if refusal:
                return refusal
            given = request.headers.get(SECRET_HEADER)
            if given is None:
                return Response.error(
                    401, f"no {SECRET_HEADER} header: commands come from `meterline` itself"
                )
            if not hmac.compare_digest(given.encode(), secret.encode()):
                return Response.error(403, f"wrong {SECRET_HEADER}")
            media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type != "application/json":
                return Response.error(
                    415, f"Content-Type {media_type or 'none'!r}: expected application/json"
                )
            return route(request)

        return guarded

    def dashboard(self, routes: dict[str, Route]) -> dict[str, Route]:
        """The dashboard's pages and JSON: Host, Origin, and the configured credentials."""
        run = self.run

        def wrap(route: Route) -> Route:
            def guarded(request: Request) -> Response:
                refusal = self.cross_site_refusal(request)
                if refusal:
                    return refusal
                if run.dashboard_protected and not _authorized(request, run):
                    challenge = "Basic" if run.dashboard_password else "Bearer"
                    return Response.error(
                        401,
                        "the dashboard needs its credentials ([run] dashboard_token or dashboard_user)",
                        (("WWW-Authenticate", f'{challenge} realm="meterline", charset="UTF-8"'),),
                    )
                return route(request)

            return guarded

        return {key: wrap(route) for key, route in routes.items()}


def _authorized(request: Request, run: RunConfig) -> bool:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and run.dashboard_token:
        return _equal(credentials.strip(), run.dashboard_token.reveal())
    if scheme == "basic" and run.dashboard_password:
        try:
            user, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        # Both compared, whatever the first gives: the time taken says nothing about which was wrong.
        return _equal(user, run.dashboard_user) & _equal(password, run.dashboard_password.reveal())
    return False


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _name(host: str) -> str:
    """The name in a Host header: without the port, IPv6 without brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
