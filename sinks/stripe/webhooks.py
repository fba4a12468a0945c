"""`meterline webhooks`: Stripe's webhooks received, verified, kept on Kafka, and processed once.

The receiver (HTTP, POST /webhooks/stripe) does as little as it can, so that it answers fast:
1. verify the Stripe-Signature (sinks.stripe.webhook_signature): a bad or stale one gets a 400 and
   nothing is kept;
2. publish the event, as received, to `stripe.webhooks` keyed by its id, and wait for the broker;
3. answer 200 (503 if the broker did not take it: Stripe sends it again).

The consumer processes each event id once (`stripe_webhook_events` in ClickHouse is checked
before and written after; every handler is idempotent, for a crash in between):
- `invoice.created`: a draft invoice finalizes about an hour later, so flush what is pending
  now: a tick into every partition of usage.events closes every window due by wall clock, which
  the sinks then report;
- `invoice.finalized`: record the invoice's period and usage lines (`stripe_invoices`), for
  reconciliation of usage that arrives after it;
- `customer.subscription.*`: the customer's subscription and billing period
  (`stripe_subscriptions`); the state of the latest event wins whatever order they arrive in;
- `v1.billing.meter.error_report_triggered`: Stripe refused meter events it had accepted: their
  ledger rows become `failed` with Stripe's code, and an alert is logged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaException, Message, Producer

from meterline import metrics
from meterline.config import Config
from meterline.kafka import group_consumer, partition_count, settings
from meterline.logs import context
from schemas.serde import AvroSerde
from sinks.stripe.ledger import COLUMNS as LEDGER_COLUMNS
from sinks.stripe.webhook_signature import SignatureError, verify

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

log = logging.getLogger("meterline.webhooks")

PATH = "/webhooks/stripe"


def make_receiver(
    config: Config, bootstrap: str, secret: str, port: int | None = None
) -> ThreadingHTTPServer:
    producer = Producer(settings(bootstrap, {"enable.idempotence": True, "linger.ms": 0}))
    tolerance = config.stripe.webhook_tolerance_seconds
    topic = config.topics.webhooks

    class Handler(BaseHTTPRequestHandler):
        server_version = "meterline-webhooks"

        def do_GET(self) -> None:
            self._reply(200 if self.path == "/healthz" else 404, {"ok": self.path == "/healthz"})

        def do_POST(self) -> None:
            if self.path != PATH:
                self._reply(404, {"error": f"POST {PATH}"})
                return
            payload = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            # 1. Verify.
            try:
                verify(payload, self.headers.get("Stripe-Signature"), secret, int(time.time()), tolerance)
                event = json.loads(payload)
                event_id, event_type = str(event["id"]), str(event["type"])
            except SignatureError as exc:
                log.warning("refused a webhook: %s", exc)
                metrics.WEBHOOK_EVENTS.labels("unverified", "refused").inc()
                self._reply(400, {"error": str(exc)})
                return
            except (ValueError, KeyError, TypeError):
                self._reply(400, {"error": "not a Stripe event (JSON with id and type)"})
                return
            # 2. Keep it.
            producer.produce(topic, payload, event_id.encode(), headers=[("type", event_type.encode())])
            if producer.flush(10) > 0:
                self._reply(503, {"error": "not stored: send it again"})
                return
            # 3. Answer.
            self._reply(200, {"received": True})

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            log.debug(format, *args)

    address = (config.run.host, config.stripe.webhook_port if port is None else port)
    server = ThreadingHTTPServer(address, Handler)
    server.daemon_threads = True
    return server


class WebhookConsumer:
    def __init__(
        self, config: Config, bootstrap: str, client: Client, group_id: str = "meterline-webhooks"
    ) -> None:
        self.config = config
        self.bootstrap = bootstrap
        self.client = client
        self.group_id = group_id
        self.processed = 0
        self.duplicates = 0
        self._consumer = group_consumer(bootstrap, group_id)
        self._ticks = Producer(settings(bootstrap, {"enable.idempotence": True}))
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "invoice.created": self._invoice_created,
            "invoice.finalized": self._invoice_finalized,
            "v1.billing.meter.error_report_triggered": self._meter_errors,
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
        event = json.loads(message.value() or b"{}")
        event_id, event_type = str(event["id"]), str(event["type"])
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
        handler = self._handlers.get(event_type)
        if handler is None and event_type.startswith("customer.subscription."):
            handler = self._subscription
        if handler is None:
            log.info("webhook %s (%s): nothing to do", event_id, event_type)
        else:
            handler(event)
        self.client.insert(
            "stripe_webhook_events",
            [[event_id, event_type, int(event.get("created", 0))]],
            column_names=["event_id", "type", "created"],
        )
        self.processed += 1
        metrics.WEBHOOK_EVENTS.labels(event_type, "processed").inc()

    # -- handlers ----------------------------------------------------------------------------------

    def _invoice_created(self, event: dict[str, Any]) -> None:
        invoice = event["data"]["object"]
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
        invoice = event["data"]["object"]
        lines = invoice.get("lines", {}).get("data", [])
        self.client.insert(
            "stripe_invoices",
            [
                [
                    invoice["id"],
                    invoice.get("customer", ""),
                    invoice.get("status", "open"),
                    int(invoice.get("period_start", 0)),
                    int(invoice.get("period_end", 0)),
                    json.dumps(lines),
                    int(event.get("created", 0)),
                ]
            ],
            column_names=[
                "invoice_id",
                "stripe_customer",
                "status",
                "period_start",
                "period_end",
                "lines",
                "event_created",
            ],
        )

    def _subscription(self, event: dict[str, Any]) -> None:
        subscription = event["data"]["object"]
        self.client.insert(
            "stripe_subscriptions",
            [
                [
                    subscription["id"],
                    subscription.get("customer", ""),
                    subscription.get("status", ""),
                    int(subscription.get("current_period_start", 0)),
                    int(subscription.get("current_period_end", 0)),
                    int(event.get("created", 0)),
                ]
            ],
            column_names=[
                "subscription_id",
                "stripe_customer",
                "status",
                "current_period_start",
                "current_period_end",
                "event_created",
            ],
        )

    def _meter_errors(self, event: dict[str, Any]) -> None:
        errors = event["data"].get("errors", [])
        by_identifier = {str(e["identifier"]): e for e in errors if e.get("identifier")}
        if not by_identifier:
            return
        rows = self.client.query(
            f"SELECT {', '.join(LEDGER_COLUMNS)} FROM stripe_reports FINAL WHERE identifier IN %(ids)s",
            parameters={"ids": tuple(by_identifier)},
        ).result_rows
        now = int(time.time() * 1000)
        updated = []
        for row in rows:
            record = dict(zip(LEDGER_COLUMNS, row, strict=True))
            error = by_identifier[record["identifier"]]
            record.update(
                status="failed",
                error_code=str(error.get("code", "meter_error")),
                last_error=str(error.get("message", ""))[:1000],
                updated_at=now,
            )
            updated.append([record[c] for c in LEDGER_COLUMNS])
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
        if updated:
            self.client.insert("stripe_reports", updated, column_names=list(LEDGER_COLUMNS))
        log.error(
            "ALERT: Stripe refused %d meter events after accepting them (%s); ledger rows marked failed",
            len(by_identifier),
            ", ".join(sorted({str(e.get("code")) for e in errors})),
        )
