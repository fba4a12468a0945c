"""`meterline alerts`: raise each usage alert once (reconciler.alerts.rules decides which).

Each pass, for every customer with usage in the last month, its current billing period's exact
totals (`usage_windows FINAL`, which replays and duplicate aggregates do not change) are held
against its plan's alert rules. Raising an alert, in this order, each step safe to repeat:
1. its row in `usage_alerts` as `pending`, with the payload fixed from then on;
2. its record on `usage.alerts`, keyed by its id, unless the topic already has one (the ids on
   the topic are read at start): a crash after the send does not send it again; a metric and a
   log line when it is written;
3. the signed webhook to the product, when an endpoint is configured, with the same id and
   payload on every try (`Idempotency-Key`: a repeat after a crash is recognisable), up to four
   tries a pass; while the endpoint is away, the other alerts wait for the next pass;
4. the row as `delivered` (or `published` without an endpoint, or `failed` when the product
   refused it). A pending row left by a crash goes on from step 2 at the next pass.
One `meterline alerts` runs at a time (one replica): two would both raise a new alert's record.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meterline.core import metrics
from meterline.core.config import Config, ConfigError
from meterline.core.kafka import (
    Kafka,
    KafkaUnavailableError,
    at_end,
    consumer_from_beginning,
    idempotent_producer,
)
from meterline.core.logs import context
from meterline.reconciler.alerts.rules import SIGNATURE_HEADER, Alert, crossed, signature
from meterline.reconciler.billing.periods import resolve
from meterline.sinks.clickhouse.queries import in_span
from meterline.sinks.clickhouse.usage_windows import customer_usage, customers_since

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

log = logging.getLogger("meterline.alerts")

ALERT_COLUMNS = (
    "alert_id",
    "customer_id",
    "meter",
    "period_start",
    "period_end",
    "threshold",
    "status",
    "attempts",
    "last_error",
    "payload",
    "raised_at",
    "updated_at",
)
LOOKBACK_MS = 32 * 86_400_000
"""Customers with usage this recently are looked at: a monthly period began within it."""
DELIVERY_ATTEMPTS = 4
"""Tries of one webhook in a pass (0.5, 1, 2 s apart); one still failing is tried at the next."""


class Alerter:
    def __init__(self, config: Config, bootstrap: Kafka, client: Client) -> None:
        self.config = config
        self.bootstrap = bootstrap
        self.client = client
        self._producer = idempotent_producer(bootstrap)
        self._on_topic = self._ids_on_topic()
        self._last_version = 0

    def tick(self, now_ms: int) -> list[Alert]:
        """One pass; returns the alerts it raised for the first time."""
        if not self.config.alerts.rules:
            return []
        known = self._known(now_ms)
        new = [a for a in self._crossings(now_ms) if a.id not in known]
        self._record([a.payload() for a in new], "pending", 0, "")
        for alert_id, payload, attempts in self._pending():
            self._publish(alert_id, payload)
            if not self.config.alerts.endpoint:
                self._record([payload], "published", attempts, "")
                continue
            status, error = self._deliver(payload, alert_id)
            self._record([payload], status, attempts + 1, error)
            if status == "pending":
                break  # the endpoint is away: the rest wait for the next pass, not its retries each
        return new

    def _crossings(self, now_ms: int) -> list[Alert]:
        rules = {(r.plan, r.meter): r for r in self.config.alerts.rules}
        found: list[Alert] = []
        for customer in customers_since(self.client, now_ms - LOOKBACK_MS):
            try:
                plan = self.config.plan_for(customer)
            except ConfigError:  # on no plan: nothing to cross (the preview says the same)
                continue
            wanted = [rule for (name, _), rule in rules.items() if name == plan.name]
            if not wanted:
                continue
            period = resolve(self.client, customer, "", now_ms)
            usage = customer_usage(
                self.client, customer, period.start_ms, period.end_ms, levels=self.config.levels
            )
            for rule in wanted:
                found += crossed(
                    rule, plan, customer, (period.start_ms, period.end_ms), usage.get(rule.meter, 0), now_ms
                )
        return found

    def _known(self, now_ms: int) -> set[str]:
        """The ids of alerts of the periods looked at (those of older periods cannot recur)."""
        rows = self.client.query(
            "SELECT alert_id FROM usage_alerts FINAL "
            "WHERE period_end >= fromUnixTimestamp64Milli(%(since)s, 'UTC')",
            parameters={"since": now_ms - LOOKBACK_MS},
        ).result_rows
        return {str(alert_id) for (alert_id,) in rows}

    def _pending(self) -> list[tuple[str, bytes, int]]:
        rows = self.client.query(
            "SELECT alert_id, payload, attempts FROM usage_alerts FINAL WHERE status = 'pending' "
            "ORDER BY raised_at, alert_id"
        ).result_rows
        return [(str(i), str(p).encode(), int(n)) for i, p, n in rows]

    def _publish(self, alert_id: str, payload: bytes) -> None:
        """Its record on the topic, unless there is one; a metric and a log line when written."""
        alert = _document(payload)
        where = context(customer=alert["customer_id"], meter=alert["meter"], alert_id=alert_id)
        if alert_id not in self._on_topic:
            self._producer.produce(self.config.topics.alerts, payload, alert_id.encode())
            if self._producer.flush(30) > 0:
                raise KafkaUnavailableError(
                    f"alert {alert_id} was not delivered to {self.config.topics.alerts}"
                )
            self._on_topic.add(alert_id)
            metrics.USAGE_ALERTS.labels(alert["meter"]).inc()
            log.warning(
                "usage alert for %s, %s: %s",
                alert["customer_id"],
                alert["meter"],
                alert["threshold"],
                extra=where,
            )

    def _deliver(self, payload: bytes, alert_id: str) -> tuple[str, str]:
        """(status, last error): retried with backoff on 429, 5xx and failures to connect; a
        refusal (another 4xx) is final."""
        error = ""
        for attempt in range(DELIVERY_ATTEMPTS):
            headers = {
                "Content-Type": "application/json",
                "Idempotency-Key": alert_id,
                SIGNATURE_HEADER: signature(
                    self.config.alerts.signing_secret.reveal(), int(time.time()), payload
                ),
            }
            request = urllib.request.Request(self.config.alerts.endpoint, payload, headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=10):
                    return "delivered", ""
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
                if exc.code != 429 and exc.code < 500:
                    return "failed", error
            except OSError as exc:
                error = f"{type(exc).__name__}: {exc}"
            if attempt + 1 < DELIVERY_ATTEMPTS:
                time.sleep(0.5 * 2**attempt)
        return "pending", error  # tried again at the next pass, with the same id

    def _record(self, payloads: list[bytes], status: str, attempts: int, error: str) -> None:
        """Rows of usage_alerts, their columns read from each alert's payload."""
        if not payloads:
            return
        # A later write must win even within the same millisecond: versions only grow.
        version = self._last_version = max(int(time.time() * 1000), self._last_version + 1)
        rows = []
        for payload in payloads:
            a = _document(payload)
            fields = [
                a[name] for name in ("id", "customer_id", "meter", "period_start", "period_end", "threshold")
            ]
            rows.append([*fields, status, attempts, error[:1000], payload.decode(), a["raised_at"], version])
        self.client.insert("usage_alerts", rows, column_names=list(ALERT_COLUMNS))

    def _ids_on_topic(self, quiet_s: float = 1.0, timeout_s: float = 60.0) -> set[str]:
        """Every alert id on the topic: read to its end, then quiet (tansu's watermark can lag)."""
        topic = self.config.topics.alerts
        consumer = consumer_from_beginning(
            self.bootstrap, topic, f"meterline-alerts-scan-{uuid.uuid4().hex[:8]}"
        )
        ids: set[str] = set()
        deadline, quiet_since = time.monotonic() + timeout_s, time.monotonic()
        try:
            while True:
                messages = [m for m in consumer.consume(500, timeout=0.2) if not m.error()]
                ids.update((m.key() or b"").decode() for m in messages)
                if messages:
                    quiet_since = time.monotonic()
                elif at_end(consumer) and time.monotonic() - quiet_since >= quiet_s:
                    return ids
                if time.monotonic() > deadline:
                    raise KafkaUnavailableError(f"could not read {topic} to its end within {timeout_s:.0f} s")
        finally:
            consumer.close()


def customer_alerts(client: Client, customer: str, start_ms: int, end_ms: int) -> list[tuple[str, int, str]]:
    """(threshold, raised at in epoch ms, status) of the customer's alerts of periods beginning in
    [start_ms, end_ms), oldest first: what the dashboard lists."""
    rows = client.query(
        "SELECT threshold, toUnixTimestamp64Milli(raised_at), status FROM usage_alerts FINAL "
        f"WHERE customer_id = %(customer)s AND {in_span('period_start')} ORDER BY raised_at, threshold",
        parameters={"customer": customer, "start": start_ms, "end": end_ms},
    ).result_rows
    return [(str(t), int(r), str(status)) for t, r, status in rows]


def _document(payload: bytes) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(payload)
    return document


def alert_periodically(alerter: Alerter, should_stop: Callable[[], bool], every_s: float) -> None:
    """A pass every `every_s`; one that fails (ClickHouse or the broker away) is logged and the
    next tries again, from what the table and the topic hold."""
    from clickhouse_connect.driver.exceptions import ClickHouseError
    from confluent_kafka import KafkaException

    from meterline.core.errors import MeterlineError

    next_at = time.monotonic()
    while not should_stop():
        if time.monotonic() >= next_at:
            next_at += every_s
            try:
                alerter.tick(int(time.time() * 1000))
            except (MeterlineError, ClickHouseError, KafkaException, OSError) as exc:
                log.error("alerts pass failed, the next one goes on from the table and the topic: %s", exc)
        time.sleep(0.2)
