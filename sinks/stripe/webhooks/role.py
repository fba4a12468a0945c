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
- `customer.created`, `customer.updated`, `customer.deleted`: which meterline customer the Stripe
  customer is (its metadata key; none once deleted), in `stripe_customers`, so that the sink finds a
  new customer at once: Stripe's search lags a write by up to an hour (sinks.stripe.customers);
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

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import stripe
from confluent_kafka import KafkaException, Message

from meterline.core import metrics
from meterline.core.config import Config
from meterline.core.http import Request, Response, Route
from meterline.core.kafka import Kafka, group_consumer, idempotent_producer, partition_count
from meterline.core.logs import context
from meterline.schemas.serde import AvroSerde
from meterline.sinks.stripe.calls import Caller
from meterline.sinks.stripe.customers import KnownCustomers
from meterline.sinks.stripe.directory import metadata
from meterline.sinks.stripe.ledger import mark_refused
from meterline.sinks.stripe.webhooks.events import (
    CUSTOMER_EVENTS,
    INVOICE_COLUMNS,
    PAYMENT_COLUMNS,
    PAYMENT_OUTCOMES,
    SUBSCRIPTION_COLUMNS,
    SUBSCRIPTION_ITEM_COLUMNS,
    Malformed,
    created_of,
    envelope,
    invoice_row,
    known_customer,
    meter_errors,
    object_of,
    payment_row,
    snapshot,
    subscription_rows,
    text_of,
)

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

log = logging.getLogger("meterline.webhooks")

PATH = "/webhooks/stripe"


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


def subscriptions_changed_since(client: Client, since_s: int) -> dict[str, int]:
    """Stripe customer -> epoch s of its newest subscription event stored at or after `since_s`
    (`stripe_subscription_items`, which the consumer below writes)."""
    rows = client.query(
        "SELECT stripe_customer, toUnixTimestamp(max(event_created)) FROM stripe_subscription_items "
        "WHERE event_created >= fromUnixTimestamp(%(since)s) GROUP BY stripe_customer",
        parameters={"since": since_s},
    ).result_rows
    return {str(customer): int(at) for customer, at in rows}


class WebhookConsumer:
    def __init__(
        self,
        config: Config,
        bootstrap: Kafka,
        client: Client,
        stripe_caller: Caller,
        group_id: str = "meterline-webhooks",
        on_finalized: Callable[[dict[str, Any], str], None] | None = None,
    ) -> None:
        """`on_finalized(invoice, our customer id)` after each finalized invoice is stored: the
        invoice-ready notice (reconciler.notices.role), passed in by the composition root."""
        self.config = config
        self.bootstrap = bootstrap
        self.client = client
        self.stripe = stripe_caller
        self.group_id = group_id
        self.on_finalized = on_finalized
        self.processed = 0
        self.duplicates = 0
        self._customers: dict[str, str] = {}  # Stripe customer -> ours
        self._consumer = group_consumer(bootstrap, group_id)
        self._ticks = idempotent_producer(bootstrap)
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "invoice.created": self._invoice_created,
            "invoice.finalized": self._invoice_finalized,
            **{kind: self._invoice_payment for kind in PAYMENT_OUTCOMES},
            **{kind: self._customer for kind in CUSTOMER_EVENTS},
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
        invoice = object_of(object_of(event, "data"), "object")
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
        row = invoice_row(event)
        self.client.insert("stripe_invoices", [row], column_names=list(INVOICE_COLUMNS))
        if self.on_finalized is not None:
            self.on_finalized(object_of(object_of(event, "data"), "object"), self._meterline_customer(row[1]))

    def _invoice_payment(self, event: dict[str, Any]) -> None:
        self.client.insert(
            "stripe_invoice_payments", [payment_row(event)], column_names=list(PAYMENT_COLUMNS)
        )

    def _customer(self, event: dict[str, Any]) -> None:
        known = known_customer(event, self.config.stripe.customer_metadata_key)
        KnownCustomers(self.client).record([known])
        self._customers[known.stripe_customer] = known.customer_id

    def _subscription(self, event: dict[str, Any]) -> None:
        customer = text_of(object_of(object_of(event, "data"), "object"), "customer")
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
        for record in mark_refused(self.client, samples):
            log.error(
                "ALERT: Stripe refused meter event %s after accepting it: %s",
                record["identifier"],
                record["error_code"],
                extra=context(
                    customer=record["customer_id"],
                    meter=record["meter"],
                    window=record["window_start"],
                    identifier=record["identifier"],
                ),
            )
