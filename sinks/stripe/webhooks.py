"""`meterline webhooks`: Stripe's webhooks received, verified, kept on Kafka, and processed once.

The receiver (HTTP, POST /webhooks/stripe) does as little as it can, so that it answers fast:
1. verify the Stripe-Signature with stripe-python (`WebhookSignature.verify_header`, the check
   of https://docs.stripe.com/webhooks#verify-events): a bad or stale one gets a 400 and nothing
   is kept. Both payloads Stripe sends pass: snapshot events (`"object": "event"`) and thin event
   notifications (`"object": "v2.core.event"`, https://docs.stripe.com/event-destinations);
2. publish the event, as received, to `stripe.webhooks` keyed by its id, and wait for the broker;
3. answer 200 (503 if the broker did not take it: Stripe sends it again).

The consumer processes each event id once (`stripe_webhook_events` in ClickHouse is checked
before and written after, with its outcome; every handler is idempotent, for a crash in between).
Events are parsed by stripe-python: a snapshot with `construct_event_without_verification`, a thin
notification with `parse_event_notification_without_verification`, whose details are fetched from
Stripe (`fetch_event`). A type meterline does not handle is recorded as `skipped`; an event whose
content cannot be read is logged with its id and recorded as `malformed`, never retried forever.
A failure to reach Stripe or ClickHouse stops the role instead, so that the event is retried.
- `invoice.created`: a draft invoice finalizes about an hour later, so flush what is pending
  now: a tick into every partition of usage.events closes every window due by wall clock, which
  the sinks then report;
- `invoice.finalized`: record the invoice's period and usage lines (`stripe_invoices`), for
  reconciliation of usage that arrives after it;
- `customer.subscription.*`: the customer's subscription (`stripe_subscriptions`; the state of the
  latest event wins whatever order they arrive in) and its items with their billing periods
  (`stripe_subscription_items`, kept per event). Since API 2025-03-31.basil the period is on the
  items (`items.data[].current_period_start/end`); before, on the subscription: both are read;
- `v1.billing.meter.error_report_triggered`, a thin event: Stripe refused meter events it had
  accepted. The event fetched carries samples of them per error type
  (`data.reason.error_types[].sample_errors[].request.identifier`,
  https://docs.stripe.com/api/v2/core/events/object): their ledger rows become `failed` with
  Stripe's code, and an alert is logged with the total count. Samples are not all of them: replay
  --repair compares Stripe's own totals, which catches the rest.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import stripe
from confluent_kafka import KafkaException, Message

from core import metrics
from core.config import Config
from core.http import Request, Response, Route
from core.kafka import Kafka, group_consumer, idempotent_producer, partition_count
from core.logs import context
from schemas.serde import AvroSerde
from sinks.stripe.calls import Caller
from sinks.stripe.directory import metadata
from sinks.stripe.ledger import COLUMNS as LEDGER_COLUMNS

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

log = logging.getLogger("meterline.webhooks")

PATH = "/webhooks/stripe"
SUBSCRIPTION_ITEM_COLUMNS = (
    "subscription_id",
    "item_id",
    "stripe_customer",
    "customer_id",
    "status",
    "price_id",
    "price_lookup_key",
    "current_period_start",
    "current_period_end",
    "event_created",
    "billing_mode",
)


def receiver_routes(config: Config, bootstrap: Kafka, secret: str) -> dict[str, Route]:
    """POST /webhooks/stripe and GET /healthz, all its port serves: it faces the internet, and the
    server's bounds (core.http) hold its bodies, its time and its connections."""
    producer = idempotent_producer(bootstrap, {"linger.ms": 0})
    tolerance = config.stripe.webhook_tolerance_seconds
    topic = config.topics.webhooks

    def receive(request: Request) -> Response:
        payload = request.body
        # 1. Verify.
        try:
            stripe.WebhookSignature.verify_header(
                payload, request.headers.get("stripe-signature", ""), secret, tolerance
            )
            event_id, event_type, _ = envelope(payload)
        except stripe.SignatureVerificationError as exc:
            log.warning("refused a webhook: %s", exc)
            metrics.WEBHOOK_EVENTS.labels("unverified", "refused").inc()
            return Response.error(400, str(exc))
        except (Malformed, UnicodeDecodeError) as exc:  # stripe-python decodes the payload as UTF-8
            return Response.error(400, str(exc))
        # 2. Keep it.
        producer.produce(topic, payload, event_id.encode(), headers=[("type", event_type.encode())])
        if producer.flush(10) > 0:
            return Response.error(503, "not stored: send it again")
        # 3. Answer.
        return Response.json({"received": True})

    return {f"POST {PATH}": receive, "GET /healthz": lambda _: Response.json({"ok": True})}


class Malformed(ValueError):
    """An event whose content meterline cannot read: logged and recorded, not retried."""


class WebhookConsumer:
    def __init__(
        self,
        config: Config,
        bootstrap: Kafka,
        client: Client,
        stripe_caller: Caller,
        group_id: str = "meterline-webhooks",
    ) -> None:
        self.config = config
        self.bootstrap = bootstrap
        self.client = client
        self.stripe = stripe_caller
        self.group_id = group_id
        self.processed = 0
        self.duplicates = 0
        self._customers: dict[str, str] = {}  # Stripe customer -> ours
        self._consumer = group_consumer(bootstrap, group_id)
        self._ticks = idempotent_producer(bootstrap)
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "invoice.created": self._invoice_created,
            "invoice.finalized": self._invoice_finalized,
        }

    def run(self, should_stop: Callable[[], bool]) -> None:
        self._consumer.subscribe([self.config.topics.webhooks])
        try:
            while not should_stop():
                for message in self._consumer.consume(100, timeout=0.5):
                    if message.error():
                        continue
                    self._process(message)
                    self._consumer.commit(message=message, asynchronous=False)
        finally:
            self._consumer.close()

    def _process(self, message: Message) -> None:
        payload = message.value() or b""
        try:
            event_id, event_type, raw = envelope(payload)
        except Malformed as exc:
            log.error(
                "a record on %s at offset %d is not a Stripe event, skipped: %s",
                message.topic(),
                message.offset(),
                exc,
            )
            metrics.WEBHOOK_EVENTS.labels("unreadable", "malformed").inc()
            return
        seen = self.client.query(
            "SELECT count() FROM stripe_webhook_events FINAL WHERE event_id = %(id)s",
            parameters={"id": event_id},
        ).result_rows[0][0]
        if seen:
            self.duplicates += 1
            metrics.WEBHOOK_EVENTS.labels(event_type, "duplicate").inc()
            log.info(
                "webhook %s (%s) already processed: skipped",
                event_id,
                event_type,
                extra=context(event_id=event_id),
            )
            return
        outcome, detail = "processed", ""
        try:
            created = created_of(raw)
            if raw.get("object") == "v2.core.event":
                outcome = self._thin(payload)
            else:
                outcome = self._snapshot(payload, event_type)
        except Malformed as exc:
            outcome, detail, created = "malformed", str(exc), 0
            log.error(
                "webhook %s (%s) cannot be read, recorded as malformed and not retried: %s",
                event_id,
                event_type,
                exc,
                extra=context(event_id=event_id),
            )
        self.client.insert(
            "stripe_webhook_events",
            [[event_id, event_type, created, outcome, detail[:1000]]],
            column_names=["event_id", "type", "created", "outcome", "detail"],
        )
        self.processed += 1
        metrics.WEBHOOK_EVENTS.labels(event_type, outcome).inc()

    def _snapshot(self, payload: bytes, event_type: str) -> str:
        """A snapshot event, parsed by stripe-python; its handler reads the object as Stripe sent it."""
        document = snapshot(payload)
        handler = self._handlers.get(event_type)
        if handler is None and event_type.startswith("customer.subscription."):
            handler = self._subscription
        if handler is None:
            log.info("webhook %s (%s): not a type meterline handles, skipped", document["id"], event_type)
            return "skipped"
        handler(document)
        return "processed"

    def _thin(self, payload: bytes) -> str:
        """A thin event notification: no data; the event is fetched from Stripe."""
        try:
            notification = self.stripe.client.parse_event_notification_without_verification(payload)
        except (ValueError, KeyError, TypeError) as exc:
            raise Malformed(f"not a thin event notification: {exc}") from exc
        if notification.type != "v1.billing.meter.error_report_triggered":
            log.info(
                "webhook %s (%s): not a type meterline handles, skipped", notification.id, notification.type
            )
            return "skipped"
        try:
            event, _ = self.stripe.retrying(notification.fetch_event)
        except stripe.InvalidRequestError as exc:  # Stripe does not have it: nothing to fetch, ever
            raise Malformed(f"Stripe has no event {notification.id}: {exc.user_message}") from exc
        self._meter_errors(event.to_dict())
        return "processed"

    # -- handlers ----------------------------------------------------------------------------------

    def _invoice_created(self, event: dict[str, Any]) -> None:
        invoice = _object(_object(event, "data"), "object")
        tick = AvroSerde.from_registry_url(self.config.kafka.schema_registry_url).encode_batch([])
        topic = self.config.topics.events
        for partition in range(partition_count(self.bootstrap, topic)):
            self._ticks.produce(topic, tick, partition=partition)
        if self._ticks.flush(10) > 0:
            raise KafkaException("the flush ticks were not delivered")
        log.info(
            "invoice %s created for %s: ticked every partition, so due windows close and are reported "
            "before it finalizes",
            invoice.get("id"),
            invoice.get("customer"),
            extra=context(invoice=invoice.get("id")),
        )

    def _invoice_finalized(self, event: dict[str, Any]) -> None:
        self.client.insert("stripe_invoices", [invoice_row(event)], column_names=list(INVOICE_COLUMNS))

    def _subscription(self, event: dict[str, Any]) -> None:
        customer = _text(_object(_object(event, "data"), "object"), "customer")
        items, subscription = subscription_rows(event, self._meterline_customer(customer))
        self.client.insert("stripe_subscription_items", items, column_names=list(SUBSCRIPTION_ITEM_COLUMNS))
        self.client.insert("stripe_subscriptions", [subscription], column_names=list(SUBSCRIPTION_COLUMNS))

    def _meterline_customer(self, stripe_customer: str) -> str:
        """Our id of a Stripe customer: the configured mapping, else the customer's metadata
        (`stripe.customer_metadata_key`); empty when Stripe has no such customer."""
        configured = {v: k for k, v in self.config.stripe.customers.items()}
        if stripe_customer in configured or not stripe_customer:
            return configured.get(stripe_customer, "")
        if stripe_customer not in self._customers:
            try:
                found, _ = self.stripe.retrying(
                    lambda: self.stripe.client.v1.customers.retrieve(stripe_customer)
                )
                self._customers[stripe_customer] = metadata(found).get(
                    self.config.stripe.customer_metadata_key, ""
                )
            except stripe.InvalidRequestError:
                self._customers[stripe_customer] = ""
        return self._customers[stripe_customer]

    def _meter_errors(self, event: dict[str, Any]) -> None:
        count, codes, samples = meter_errors(event)
        log.error(
            "ALERT: Stripe refused %d meter events after accepting them (%s); the %d sampled are "
            "marked failed in the ledger, replay --repair finds the rest from Stripe's totals",
            count,
            ", ".join(codes),
            len(samples),
        )
        if not samples:
            return
        rows = self.client.query(
            f"SELECT {', '.join(LEDGER_COLUMNS)} FROM stripe_reports FINAL WHERE identifier IN %(ids)s",
            parameters={"ids": tuple(samples)},
        ).result_rows
        now = int(time.time() * 1000)
        updated = []
        for row in rows:
            record = dict(zip(LEDGER_COLUMNS, row, strict=True))
            code, message = samples[record["identifier"]]
            record.update(status="failed", error_code=code, last_error=message[:1000], updated_at=now)
            updated.append([record[c] for c in LEDGER_COLUMNS])
            log.error(
                "ALERT: Stripe refused meter event %s after accepting it: %s",
                record["identifier"],
                code,
                extra=context(
                    customer=record["customer_id"],
                    meter=record["meter"],
                    window=record["window_start"],
                    identifier=record["identifier"],
                ),
            )
        if updated:
            self.client.insert("stripe_reports", updated, column_names=list(LEDGER_COLUMNS))


# -- reading events: pure, so that they are fuzzed without I/O (tests/unit/test_fuzz.py) -----------------
# Whatever the bytes, each either reads or raises Malformed: a record that crashed the consumer
# would stop the role at the same offset after every restart.

DATETIME_MAX = 2**32 - 1
"""ClickHouse's DateTime holds epoch seconds up to here; a larger one would fail the insert."""


def envelope(payload: bytes) -> tuple[str, str, dict[str, Any]]:
    """(id, type, the JSON object) of a record on stripe.webhooks."""
    try:
        raw = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested beyond Python's stack
        raise Malformed(f"not JSON: {type(exc).__name__}") from None
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("id"), str)
        or not isinstance(raw.get("type"), str)
    ):
        raise Malformed("not a Stripe event: a JSON object with a string id and type")
    return raw["id"], raw["type"], raw


def snapshot(payload: bytes) -> dict[str, Any]:
    """A snapshot event as stripe-python parses it, as a dict."""
    try:
        document: dict[str, Any] = stripe.Webhook.construct_event_without_verification(payload).to_dict()
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise Malformed(f"stripe-python cannot read it: {type(exc).__name__}: {exc}") from None
    return document


def created_of(raw: dict[str, Any]) -> int:
    """Epoch seconds: a snapshot event's `created` is one, a thin event's is RFC 3339."""
    created = raw.get("created", 0)
    if isinstance(created, str):
        try:
            created = int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
        except ValueError:
            raise Malformed(f"created {created!r}: neither epoch seconds nor RFC 3339") from None
    return _epoch(created, "created")


INVOICE_COLUMNS = (
    "invoice_id",
    "stripe_customer",
    "status",
    "period_start",
    "period_end",
    "lines",
    "event_created",
)
SUBSCRIPTION_COLUMNS = (
    "subscription_id",
    "stripe_customer",
    "status",
    "current_period_start",
    "current_period_end",
    "event_created",
)


def invoice_row(event: dict[str, Any]) -> list[Any]:
    """invoice.finalized -> its row of stripe_invoices."""
    invoice = _object(_object(event, "data"), "object")
    lines = _object(invoice, "lines").get("data", [])
    if not isinstance(lines, list):
        raise Malformed(f"invoice lines.data {lines!r:.80}: not a list")
    return [
        _text(invoice, "id", required=True),
        _text(invoice, "customer"),
        _text(invoice, "status") or "open",
        _epoch(invoice.get("period_start", 0), "period_start"),
        _epoch(invoice.get("period_end", 0), "period_end"),
        json.dumps(lines),
        _epoch(event.get("created", 0), "created"),
    ]


def subscription_rows(event: dict[str, Any], meterline_customer: str) -> tuple[list[list[Any]], list[Any]]:
    """customer.subscription.* -> (its items' rows, its own row). Since API 2025-03-31.basil the
    period is on the items; before, on the subscription: both are read."""
    subscription = _object(_object(event, "data"), "object")
    items = _object(subscription, "items").get("data", [])
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise Malformed(f"subscription items.data {items!r:.80}: not a list of objects")
    created = _epoch(event.get("created", 0), "created")
    customer = _text(subscription, "customer")
    status = _text(subscription, "status")
    billing_mode = _object(subscription, "billing_mode") if subscription.get("billing_mode") else {}

    def period(owner: dict[str, Any], edge: str) -> int:
        value = owner.get(f"current_period_{edge}")
        if value is None and owner is not subscription:
            return period(subscription, edge)
        return _epoch(value, f"current_period_{edge}")

    periods = [(period(item, "start"), period(item, "end")) for item in items]
    if not periods:  # no items: only the pre-basil shape has a period of its own
        periods = [(period(subscription, "start"), period(subscription, "end"))]
    subscription_id = _text(subscription, "id", required=True)
    item_rows = [
        [
            subscription_id,
            _text(item, "id", required=True),
            customer,
            meterline_customer,
            status,
            _text(_object(item, "price"), "id"),
            _text(_object(item, "price"), "lookup_key"),
            start,
            end,
            created,
            _text(billing_mode, "type") or "classic",
        ]
        for item, (start, end) in zip(items, periods, strict=False)
    ]
    own = [
        subscription_id,
        customer,
        status,
        min(start for start, _ in periods),
        max(end for _, end in periods),
        created,
    ]
    return item_rows, own


def meter_errors(event: dict[str, Any]) -> tuple[int, list[str], dict[str, tuple[str, str]]]:
    """v1.billing.meter.error_report_triggered, fetched -> (how many Stripe refused, the error
    codes, identifier -> (code, message) of the samples)."""
    reason = _object(_object(event, "data"), "reason")
    error_types = reason.get("error_types", [])
    if not isinstance(error_types, list) or not all(isinstance(t, dict) for t in error_types):
        raise Malformed(f"error_types {error_types!r:.80}: not a list of objects")
    samples: dict[str, tuple[str, str]] = {}
    codes: set[str] = set()
    for error_type in error_types:
        code = _text(error_type, "code", required=True)
        codes.add(code)
        sampled = error_type.get("sample_errors", [])
        if not isinstance(sampled, list) or not all(isinstance(x, dict) for x in sampled):
            raise Malformed(f"sample_errors {sampled!r:.80}: not a list of objects")
        for sample in sampled:
            identifier = _text(_object(sample, "request"), "identifier", required=True)
            samples[identifier] = (code, _text(sample, "error_message"))
    count = reason.get("error_count", len(samples))
    if not isinstance(count, int):
        raise Malformed(f"error_count {count!r:.80}: not an integer")
    return (
        count,
        sorted({code for code, _ in samples.values()} | {str(t["code"]) for t in error_types}),
        samples,
    )


def _object(owner: dict[str, Any], key: str) -> dict[str, Any]:
    value = owner.get(key, {})
    if not isinstance(value, dict):
        raise Malformed(f"{key} {value!r:.80}: not an object")
    return value


def _text(owner: dict[str, Any], key: str, required: bool = False) -> str:
    value = owner.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise Malformed(f"{key} {value!r:.80}: not a string")
    return value


def _epoch(value: Any, what: str) -> int:
    """Epoch seconds a DateTime column can hold."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= DATETIME_MAX:
        raise Malformed(f"{what} {value!r:.80}: not epoch seconds (0 to {DATETIME_MAX})")
    return value
