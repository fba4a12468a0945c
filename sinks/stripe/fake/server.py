"""The Stripe fake of the local stack: a loopback HTTP server that answers every call meterline
makes the way Stripe does (the rules of each resource in its module of this package: customers, catalog,
meters, subscriptions), with Stripe's idempotency,
rate limiting and injectable faults.

- Idempotency-Key (POST), as https://docs.stripe.com/api/idempotent_requests states: the first
  result is kept for 24 hours, "regardless of whether it succeeds or fails ... including 500
  errors", once the endpoint began executing; the same key with the same parameters gets it again
  with `Idempotent-Replayed: true`; with other parameters a 400 `idempotency_error`; while the
  first is still running, a 409. Failed validations and 500s before execution are not kept
  ("Results are only saved if an API endpoint began execution").
- Faults (POST /_fake/faults, JSON): `rate_limit_per_second` (429 beyond it), `error_rate` (500
  before executing), `execution_error_rate` (executes, then a 500 that is saved under the key),
  `drop_rate` (executes, then closes the connection without answering: the client cannot know it
  worked), `slow_rate`/`slow_seconds` (executes, answers late).
- Webhooks: POST /_fake/webhook_endpoint {"url", "secret"} registers the endpoint; POST
  /_fake/events {"type", "object", ...} sends it a signed event (Stripe-Signature as Stripe signs)
  and answers with the endpoint's status. `id`, `created`, `signed_at` and `secret` may be given, to
  send a duplicate, an old event, a stale signature or a wrong one. The meter error report is a
  thin event, as Stripe sends it, whose event is served at GET /v2/core/events/<id> (`errors`
  [{code, identifier, message}] may be given; `fetchable: false` sends one Stripe will not serve).
- Parameters are checked as Stripe checks them (sinks.stripe.fake.params): an unknown one, an
  integer or boolean that is not one, a string over its length are refused with Stripe's error.
- Search lags writes by `search_lag_seconds` (`--search-lag-seconds`), as Stripe's does.
- Inspection for tests and benchmarks: GET /_fake/meter_events, /_fake/error_reports,
  /_fake/usage_records, /_fake/stats.

Run: python -m sinks.stripe.fake --port N
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import stripe

from meterline.sinks.stripe.fake.catalog import price_view
from meterline.sinks.stripe.fake.errors import StripeError, invalid, new_id
from meterline.sinks.stripe.fake.objects import DAY_S
from meterline.sinks.stripe.fake.params import check_params
from meterline.sinks.stripe.fake.state import FakeStripeState
from meterline.sinks.stripe.fake.subscriptions import subscription_shape

SESSION_SECONDS = 15 * 60
API_VERSION = "2026-10-28.endive"
THIN_EVENT_TYPES = frozenset({"v1.billing.meter.error_report_triggered"})
SAMPLE_ERRORS = 5
"""Sample errors per error type in a meter error report. Stripe says "sample" and not how many: the
fake keeps few, so that nothing relies on a report naming every refused event."""
STREAM_MAX_EVENTS = 100


@dataclass
class Faults:
    rate_limit_per_second: float = 0.0  # 0: unlimited
    error_rate: float = 0.0
    drop_rate: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 0.0
    execution_error_rate: float = 0.0
    """An idempotent POST that runs (its effect is kept), then answers 500, which is saved under
    its key as Stripe saves every result once execution began."""


@dataclass
class _Saved:
    fingerprint: str
    status: int
    body: Any
    at: float


class FakeStripe:
    """The fake's state, idempotency records, sessions and faults; `serve()` puts it on HTTP."""

    def __init__(self, seed: int | None = None, search_lag_seconds: float = 0.0) -> None:
        self.state = FakeStripeState(search_lag_seconds=search_lag_seconds)
        self.faults = Faults()
        self.random = random.Random(seed)
        self.calls = 0
        self._saved: dict[str, _Saved] = {}
        self._running: set[str] = set()
        self._sessions: dict[str, float] = {}  # token -> expiry
        self._v2_events: dict[str, dict[str, Any]] = {}  # thin events, as GET /v2/core/events serves them
        self._bucket = (0.0, time.monotonic(), 0.0)  # tokens, when, for which limit
        self.webhook_endpoint: tuple[str, str] | None = None  # url, secret
        self._lock = threading.Lock()

    # -- the pipeline every API call goes through ---------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, Any], body: bytes, headers: dict[str, str]
    ) -> tuple[int, Any, dict[str, str], bool]:
        """(status, JSON body, extra headers, drop the connection instead of answering)."""
        with self._lock:
            self.calls += 1
        extra = {"Request-Id": new_id("req")}
        try:
            self._admit(path, headers)
            if self.random.random() < self.faults.error_rate:
                raise StripeError(500, "api_error", "An unknown error occurred (injected by the fake).")
            key = headers.get("idempotency-key") if method == "POST" else None
            if key is None:
                status, result = 200, self._route(method, path, query, body, headers)
            else:
                status, result, replayed = self._idempotent(key, method, path, query, body, headers)
                if replayed:
                    extra["Idempotent-Replayed"] = "true"
        except StripeError as exc:
            if exc.status == 429:
                extra["Stripe-Should-Retry"] = "true"
            return exc.status, exc.body(), extra, False
        drop = self.random.random() < self.faults.drop_rate
        if not drop and self.random.random() < self.faults.slow_rate:
            time.sleep(self.faults.slow_seconds)
        return status, result, extra, drop

    def _admit(self, path: str, headers: dict[str, str]) -> None:
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
            raise StripeError(401, "invalid_request_error", "You did not provide an API key.")
        limit = self.faults.rate_limit_per_second
        if limit > 0:
            with self._lock:
                tokens, since, for_limit = self._bucket
                now = time.monotonic()
                # A new limit starts with a full second's burst, as a bucket that was idle would.
                tokens = limit if for_limit != limit else min(limit, tokens + (now - since) * limit)
                if tokens < 1:
                    self._bucket = (tokens, now, limit)
                    raise StripeError(
                        429,
                        "invalid_request_error",
                        "Request rate limit exceeded (the fake's limit).",
                        "rate_limit",
                    )
                self._bucket = (tokens - 1, now, limit)

    def _idempotent(
        self, key: str, method: str, path: str, query: dict[str, Any], body: bytes, headers: dict[str, str]
    ) -> tuple[int, Any, bool]:
        fingerprint = hashlib.sha256(f"{method} {path}\n".encode() + body).hexdigest()
        with self._lock:
            saved = self._saved.get(key)
            if saved is not None and self.state.clock() - saved.at > DAY_S:
                del self._saved[key]
                saved = None
            if saved is not None:
                if saved.fingerprint != fingerprint:
                    raise StripeError(
                        400,
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same parameters they were "
                        f"first used with. Try using a key other than '{key}' if you meant to execute a "
                        "different request.",
                    )
                return saved.status, saved.body, True
            if key in self._running:
                raise StripeError(
                    409,
                    "idempotency_error",
                    "There is currently another in-progress request using this Idempotent Key.",
                    "idempotency_key_in_use",
                )
            self._running.add(key)
        try:
            result = self._route(method, path, query, body, headers)
            status = 200
            if self.random.random() < self.faults.execution_error_rate:
                status, result = (
                    500,
                    StripeError(500, "api_error", "An unknown error occurred (saved).").body(),
                )
            with self._lock:
                self._saved[key] = _Saved(fingerprint, status, result, self.state.clock())
            return status, result, False
        finally:
            with self._lock:
                self._running.discard(key)

    # -- routes ------------------------------------------------------------------------------------

    def _route(
        self, method: str, path: str, query: dict[str, Any], body: bytes, headers: dict[str, str]
    ) -> Any:
        if path.startswith("/v2/"):
            params = json.loads(body or b"{}")
        else:
            params = nested(parse_qsl(body.decode(), keep_blank_values=True)) if body else {}
        for pattern, verb, action in self._routes():
            match = re.fullmatch(pattern, path)
            if match and verb == method:
                check_params(verb, pattern, params if verb == "POST" else {**query, **params})
                return action(match, params, query, headers)
        raise StripeError(404, "invalid_request_error", f"Unrecognized request URL ({method}: {path}).")

    def _routes(self) -> list[tuple[str, str, Callable[..., Any]]]:
        s = self.state
        return [
            (r"/v1/customers", "POST", lambda m, p, q, h: s.create_customer(p)),
            (  # newest first, and without search's lag (https://docs.stripe.com/api/customers/list)
                r"/v1/customers",
                "GET",
                lambda m, p, q, h: page(list(reversed(s.customers.values())), q, "/v1/customers"),
            ),
            (
                r"/v1/customers/search",
                "GET",
                lambda m, p, q, h: search(s.search_customers(q.get("query", ""))),
            ),
            (r"/v1/customers/([^/]+)", "GET", lambda m, p, q, h: s.customer(m[1])),
            (r"/v1/products", "POST", lambda m, p, q, h: s.create_product(p)),
            (r"/v1/products/([^/]+)", "GET", lambda m, p, q, h: s.product(m[1])),
            (
                r"/v1/prices",
                "POST",
                lambda m, p, q, h: price_view(
                    s.create_price(p, h.get("stripe-version")), p.get("expand", [])
                ),
            ),
            (
                r"/v1/prices",
                "GET",
                lambda m, p, q, h: page(
                    [
                        price_view(x, q.get("expand", []), "data.")
                        for x in s.list_prices(q.get("lookup_keys", []))
                    ],
                    q,
                    "/v1/prices",
                ),
            ),
            (r"/v1/billing/meters", "POST", lambda m, p, q, h: s.create_meter(p)),
            (
                r"/v1/billing/meters",
                "GET",
                lambda m, p, q, h: page(list(s.meters.values()), q, "/v1/billing/meters"),
            ),
            (r"/v1/billing/meters/([^/]+)", "GET", lambda m, p, q, h: s.meter(m[1])),
            (r"/v1/billing/meters/([^/]+)/event_summaries", "GET", self._summaries),
            (
                r"/v1/subscriptions",
                "POST",
                lambda m, p, q, h: subscription_shape(s.create_subscription(p), h.get("stripe-version")),
            ),
            (
                r"/v1/subscriptions",
                "GET",
                lambda m, p, q, h: page(
                    [
                        subscription_shape(x, h.get("stripe-version"))
                        for x in s.list_subscriptions(q.get("customer"))
                    ],
                    q,
                    "/v1/subscriptions",
                ),
            ),
            (
                r"/v1/billing/meter_events",
                "POST",
                lambda m, p, q, h: s.record_meter_event(p, _int(p.get("timestamp"))),
            ),
            (r"/v2/billing/meter_event_session", "POST", self._new_session),
            (r"/v2/core/events/([^/]+)", "GET", lambda m, p, q, h: self._v2_event(m[1])),
            (r"/v2/billing/meter_event_stream", "POST", self._stream),
            (r"/v1/subscription_items", "POST", lambda m, p, q, h: s.add_subscription_item(p)),
            (
                r"/v1/subscription_items/([^/]+)",
                "DELETE",
                lambda m, p, q, h: s.delete_subscription_item(
                    m[1], str({**q, **p}.get("clear_usage", "false")).lower() == "true"
                ),
            ),
            (
                r"/v1/subscription_items/([^/]+)/usage_records",
                "POST",
                lambda m, p, q, h: s.record_usage(m[1], p, h.get("stripe-version")),
            ),
            (
                r"/v1/subscription_items/([^/]+)/usage_record_summaries",
                "GET",
                lambda m, p, q, h: page(s.usage_record_summaries(m[1]), q, m[0]),
            ),
        ]

    def _summaries(self, match: re.Match[str], params: Any, query: dict[str, Any], headers: Any) -> Any:
        for name in ("customer", "start_time", "end_time"):
            if not query.get(name):
                raise invalid(f"Missing required param: {name}.", "parameter_missing", name)
        found = self.state.event_summaries(
            match[1],
            query["customer"],
            int(query["start_time"]),
            int(query["end_time"]),
            query.get("value_grouping_window"),
        )
        return page(found, query, match[0])

    def _v2_event(self, event_id: str) -> dict[str, Any]:
        found = self._v2_events.get(event_id)
        if found is None:
            raise StripeError(
                404, "invalid_request_error", f"No such event: '{event_id}'", "resource_missing"
            )
        return found

    def _new_session(self, match: Any, params: Any, query: Any, headers: Any) -> Any:
        token = f"ek_test_{new_id('mes')}"
        now = self.state.clock()
        with self._lock:
            self._sessions[token] = now + SESSION_SECONDS
        return {
            "object": "v2.billing.meter_event_session",
            "id": new_id("mes"),
            "authentication_token": token,
            "created": iso(now),
            "expires_at": iso(now + SESSION_SECONDS),
            "livemode": False,
        }

    def _stream(self, match: Any, params: Any, query: Any, headers: dict[str, str]) -> Any:
        token = headers.get("authorization", "").removeprefix("Bearer ")
        with self._lock:
            expiry = self._sessions.get(token)
        if expiry is None or expiry < self.state.clock():
            raise StripeError(  # v2 errors carry a specific type: this one is what the library maps
                401,
                "temporary_session_expired",
                "The meter event session has expired: create a new one.",
                "billing_meter_event_session_expired",
            )
        events = params.get("events")
        if not isinstance(events, list) or not events:
            raise invalid("Missing required param: events.", "parameter_missing", "events")
        if len(events) > STREAM_MAX_EVENTS:  # "Supports up to 100 events per request"; no code documented
            raise invalid(f"At most {STREAM_MAX_EVENTS} events per request.", "parameter_invalid", "events")
        for event in events:
            # The stream is asynchronous at Stripe: an event it refuses becomes an error report.
            try:
                timestamp = event.get("timestamp")
                self.state.record_meter_event(event, None if timestamp is None else _from_iso(timestamp))
            except StripeError as exc:
                with self.state.lock:
                    self.state.error_reports.append(
                        {"code": exc.code, "message": str(exc), "identifier": event.get("identifier")}
                    )
        return {}

    # -- webhooks ----------------------------------------------------------------------------------

    def send_event(self, request: dict[str, Any]) -> dict[str, Any]:
        """Sign and POST an event to the registered endpoint; returns its id and the answer's status.

        Stripe's shapes: a snapshot event (`"object": "event"`, the object in `data`, `created` in
        epoch seconds) for v1 types; for `v1.billing.meter.error_report_triggered` a thin event
        notification (`"object": "v2.core.event"`, no data, `created` in RFC 3339, the meter as
        `related_object`), whose event is then served at GET /v2/core/events/<id> with the errors
        grouped by type in `data.reason.error_types[].sample_errors[]`
        (https://docs.stripe.com/api/v2/core/events/object). The errors are the ones given, or else
        the fake's own asynchronous refusals not reported yet."""
        if self.webhook_endpoint is None:
            raise invalid("No webhook endpoint: POST /_fake/webhook_endpoint first.")
        url, secret = self.webhook_endpoint
        created = int(request.get("created") or self.state.clock())
        event_id = request.get("id") or new_id("evt")
        if request["type"] in THIN_EVENT_TYPES:
            event = self._thin_event(event_id, request, created)
        else:
            event = {
                "id": event_id,
                "object": "event",
                "api_version": API_VERSION,
                "created": created,
                "livemode": False,
                "type": request["type"],
                "data": {"object": request.get("object", {})},
            }
        text = json.dumps(event)
        signed_at = int(request.get("signed_at") or self.state.clock())
        header = stripe.WebhookSignature.generate_signature_header(
            text, request.get("secret") or secret, signed_at
        )
        delivery = urllib.request.Request(
            url,
            text.encode(),
            {"Content-Type": "application/json", "Stripe-Signature": header},
            method="POST",
        )
        try:
            with urllib.request.urlopen(delivery, timeout=10) as answer:
                status = answer.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        return {"id": event["id"], "status": status}

    def _thin_event(self, event_id: str, request: dict[str, Any], created: int) -> dict[str, Any]:
        with self.state.lock:
            errors = request.get("errors")
            if errors is None:
                errors, self.state.error_reports[:] = list(self.state.error_reports), []
        by_code: dict[str, list[dict[str, Any]]] = {}
        for error in errors:
            by_code.setdefault(str(error["code"]), []).append(error)
        meter = (request.get("object") or {}).get("id") or "mtr_unknown"
        related = {"id": meter, "type": "billing.meter", "url": f"/v1/billing/meters/{meter}"}
        notification = {
            "id": event_id,
            "object": "v2.core.event",
            "type": request["type"],
            "created": iso(created),
            "livemode": False,
            "context": None,
            "reason": None,
            "related_object": related,
        }
        if request.get("fetchable") is False:  # a notification for an event Stripe will not serve
            return notification
        self._v2_events[event_id] = {
            **notification,
            "data": {
                "developer_message_summary": f"There are {len(errors)} invalid events",
                "reason": {
                    "error_count": len(errors),
                    "error_types": [
                        {
                            "code": code,
                            "error_count": len(found),
                            "sample_errors": [
                                {
                                    "error_message": e.get("message", ""),
                                    "request": {"identifier": e["identifier"]},
                                }
                                for e in found[:SAMPLE_ERRORS]
                            ],
                        }
                        for code, found in by_code.items()
                    ],
                },
                "validation_start": iso(created - 60),
                "validation_end": iso(created),
            },
        }
        return notification

    # -- inspection --------------------------------------------------------------------------------

    def inspect(self, path: str) -> Any:
        s = self.state
        with s.lock:
            if path == "/_fake/meter_events":
                return [asdict(e) for e in s.meter_events]
            if path == "/_fake/error_reports":
                return list(s.error_reports)
            if path == "/_fake/usage_records":
                return dict(s.usage_records)
            if path == "/_fake/stats":
                return {
                    "calls": self.calls,
                    "meter_events": len(s.meter_events),
                    "error_reports": len(s.error_reports),
                }
        raise StripeError(404, "invalid_request_error", f"Unrecognized fake URL: {path}")


def nested(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding (a[b]=1, a[0][c]=2, k[]=v) back into dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+|\[\]", key.replace("][", "]["))
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            following = None if last else parts[i + 1]
            child: Any = [] if following == "[]" or (following or "").isdigit() else {}
            if isinstance(node, list):
                if part == "[]":
                    node.append(value if last else child)
                    node = node[-1]
                    continue
                index = int(part)
                while len(node) <= index:
                    node.append(None)
                if last:
                    node[index] = value
                elif node[index] is None:
                    node[index] = child
                node = node[index]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, child)
    return root


def page(items: list[Any], query: dict[str, Any], url: str) -> dict[str, Any]:
    limit = int(query.get("limit", 10))
    if not 1 <= limit <= 100:
        raise invalid("limit must be between 1 and 100.", param="limit")
    after = query.get("starting_after")
    if after:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    return {"object": "list", "data": items[:limit], "has_more": len(items) > limit, "url": url}


def search(items: list[Any]) -> dict[str, Any]:
    return {
        "object": "search_result",
        "data": items,
        "has_more": False,
        "next_page": None,
        "url": "/v1/customers/search",
    }


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _from_iso(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def _int(value: Any) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise invalid(f"Invalid integer: {value}", param="timestamp") from None


class _Handler(BaseHTTPRequestHandler):
    server_version = "meterline-stripe-fake"
    protocol_version = "HTTP/1.1"
    fake: FakeStripe

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without this, Nagle's algorithm and the client's
        # delayed ACK hold every keep-alive response ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if url.path == "/healthz":
            self._reply(200, {"ok": True, "service": "stripe-fake"}, {})
            return
        if url.path.startswith("/_fake/"):
            self._fake_admin(method, url.path, body)
            return
        query = nested(parse_qsl(url.query, keep_blank_values=True))
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, result, extra, drop = self.fake.handle(method, url.path, query, body, headers)
        if drop:
            self.close_connection = True
            self.connection.shutdown(2)  # SHUT_RDWR: the client sees the connection die
            return
        self._reply(status, result, extra)

    def _fake_admin(self, method: str, path: str, body: bytes) -> None:
        if path == "/_fake/faults" and method == "POST":
            self.fake.faults = Faults(**json.loads(body or b"{}"))
            self._reply(200, asdict(self.fake.faults), {})
            return
        if path == "/_fake/webhook_endpoint" and method == "POST":
            given = json.loads(body)
            self.fake.webhook_endpoint = (given["url"], given["secret"])
            self._reply(200, {"url": given["url"]}, {})
            return
        if path == "/_fake/events" and method == "POST":
            try:
                self._reply(200, self.fake.send_event(json.loads(body)), {})
            except StripeError as exc:
                self._reply(exc.status, exc.body(), {})
            return
        try:
            self._reply(200, self.fake.inspect(path), {})
        except StripeError as exc:
            self._reply(exc.status, exc.body(), {})

    def _reply(self, status: int, body: Any, headers: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # quiet: the dev stack logs to a file
        pass


def make_server(fake: FakeStripe, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--search-lag-seconds", type=float, default=0.0, help="how long a new customer is not found by search"
    )
    args = parser.parse_args()
    with make_server(FakeStripe(search_lag_seconds=args.search_lag_seconds), args.host, args.port) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
