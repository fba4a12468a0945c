"""`meterline ingest`: usage over HTTP, for services that do not speak Avro to Kafka.

POST /v1/events takes one CloudEvent (`application/cloudevents+json`) or a batch
(`application/cloudevents-batch+json`), mapped by schemas.cloudevents and checked by the same
rules as the SDK. Each event is answered: accepted, or refused with the field and the reason
(final: sending it again changes nothing). Nothing is answered accepted before the broker has
acknowledged it; events the broker did not take within the timeout are answered `retry`, with 503
and `Retry-After`, and a client sends the batch again: the event id is the dedup key everywhere,
so a retried batch is counted once.

An API key per source (`Authorization: Bearer <key>`), stored as its SHA-256 only; a request
rate per key (429 with Retry-After beyond it); the body and time bounds of every meterline server
(core.http); GET /openapi.json describes it all.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message

from meterline.core import metrics
from meterline.core.config import Config
from meterline.core.dimensions import declared_of
from meterline.core.http import Request, Response, Route
from meterline.core.kafka import Kafka, idempotent_producer, partition_count
from meterline.schemas.cloudevents import BATCH, STRUCTURED, CloudEventError, to_usage_event
from meterline.schemas.ingest_openapi import openapi
from meterline.schemas.partitioner import partition_for
from meterline.schemas.records import UsageEvent
from meterline.schemas.serde import AvroSerde
from meterline.schemas.validation import MeterRules, check_event, check_timing

PATH = "/v1/events"
DELIVERY_TIMEOUT_S = 10.0
"""How long a request waits for the broker before answering `retry` (503)."""
EVENTS_PER_MESSAGE = 1000
CHALLENGE = 'Bearer realm="meterline-ingest"'


class RateLimiter:
    """A token bucket per API key: `rate` requests a second, bursts of twice as many."""

    def __init__(self, rate: float) -> None:
        self.rate, self.burst = rate, 2 * rate
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def wait_for(self, key: str, now: float) -> float:
        """0 if a request of `key` may go now (and takes its token), else the seconds to wait."""
        with self._lock:
            tokens, then = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Ingest:
    def __init__(self, config: Config, bootstrap: Kafka, clock: Callable[[], float] = time.time) -> None:
        """`clock`: what its records will be stamped with (the broker's CreateTime), in seconds."""
        self.config = config
        self._clock = clock
        self.topic = config.topics.events
        self._units = config.meter_units
        self._meter_rules = MeterRules.of(declared_of(config.meters).values())
        self._lateness_ms = config.windows.max_lateness_ms
        self._skew_ms = config.windows.max_clock_skew_ms
        self._serde = AvroSerde.from_registry_url(config.kafka.schema_registry_url)
        self._partitions = partition_count(bootstrap, self.topic)
        self._producer = idempotent_producer(
            bootstrap, {"linger.ms": 1, "message.timeout.ms": int(DELIVERY_TIMEOUT_S * 1000)}
        )
        self._limiter = RateLimiter(config.ingest.requests_per_second)
        self._partition_of: dict[str, int] = {}

    def routes(self) -> dict[str, Route]:
        document = openapi(self.config, PATH)
        return {f"POST {PATH}": self.receive, "GET /openapi.json": lambda _: Response.json(document)}

    def receive(self, request: Request) -> Response:
        started = time.monotonic()
        response = self._receive(request)
        metrics.INGEST_REQUESTS.labels(str(response.status)).inc()
        metrics.INGEST_LATENCY.observe(time.monotonic() - started)
        return response

    def _receive(self, request: Request) -> Response:
        authorization = request.headers.get("authorization", "")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            # RFC 6750 §3: a challenge on every 401; no error code when no credentials came.
            return Response.error(
                401, "an API key is required: Authorization: Bearer <key>", (("WWW-Authenticate", CHALLENGE),)
            )
        source = self._source(key.strip())
        if source is None:
            return Response.error(
                401,
                "the API key is not one of this ingest's keys (ingest.keys holds their SHA-256)",
                (("WWW-Authenticate", f'{CHALLENGE}, error="invalid_token"'),),
            )
        wait = self._limiter.wait_for(source, time.monotonic())
        if wait:
            return Response.error(
                429,
                f"more than {self.config.ingest.requests_per_second:g} requests a second",
                (("Retry-After", str(max(1, round(wait)))),),
            )
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type not in (STRUCTURED, BATCH):
            return Response.error(415, f"Content-Type {content_type!r}: {STRUCTURED} or {BATCH}")
        try:
            document = json.loads(request.body)
        except (ValueError, RecursionError):
            return Response.error(400, "the body is not JSON")
        documents = document if content_type == BATCH else [document]
        if not isinstance(documents, list):
            return Response.error(400, f"{BATCH} is a JSON array of CloudEvents")
        if len(documents) > self.config.ingest.max_events_per_request:
            return Response.error(
                413, f"{len(documents)} events: at most {self.config.ingest.max_events_per_request}"
            )
        results, accepted = self._judge(documents, int(self._clock() * 1000))
        undelivered = self._deliver(accepted)
        for index, event in accepted:
            results[index] = {
                "id": event.event_id,
                "status": "retry" if event.event_id in undelivered else "accepted",
            }
        # Counted once a request, not once an event: a labelled metric costs more than the event.
        outcomes = Counter((r["status"], r.get("reason", "")) for r in results)
        for (outcome, reason), count in outcomes.items():
            metrics.INGEST_EVENTS.labels(outcome, reason).inc(count)
        answer = {
            "accepted": outcomes[("accepted", "")],
            "refused": sum(n for (outcome, _), n in outcomes.items() if outcome == "refused"),
            "retry": outcomes[("retry", "")],
            "results": results,
        }
        if answer["retry"]:
            return Response.json(answer, 503, (("Retry-After", "1"),))
        single_refused = content_type == STRUCTURED and answer["refused"]
        return Response.json(answer, 400 if single_refused else 200)

    def _source(self, key: str) -> str | None:
        """The source whose key this is, or None."""
        digest = key_digest(key)
        found = None
        for source, stored in self.config.ingest.keys.items():  # every one compared: constant time
            if hmac.compare_digest(digest, stored):
                found = source
        return found

    def _judge(
        self, documents: list[Any], now_ms: int
    ) -> tuple[list[dict[str, Any]], list[tuple[int, UsageEvent]]]:
        results: list[dict[str, Any]] = [{} for _ in documents]
        accepted = []
        for index, document in enumerate(documents):
            event_id = document.get("id") if isinstance(document, dict) else None
            try:
                event = to_usage_event(document, self._units)
            except CloudEventError as exc:
                results[index] = _refused(event_id, exc.field, "malformed", exc.why)
                continue
            invalid = (
                check_event(event, self._units)
                or self._meter_rules.check(event)
                # As the stream will judge it: against its record's timestamp, which is now.
                or check_timing(event.timestamp, now_ms, self._lateness_ms, self._skew_ms)
            )
            if invalid is not None:
                results[index] = _refused(event_id, invalid.field, str(invalid.reason), invalid.detail)
                continue
            accepted.append((index, event))
        return results, accepted

    def _deliver(self, accepted: list[tuple[int, UsageEvent]]) -> set[str]:
        """Produce the events, packed per partition as the SDK packs them; return the ids of those
        the broker did not acknowledge within the timeout."""
        by_partition: dict[int, list[UsageEvent]] = defaultdict(list)
        for _, event in accepted:
            partition = self._partition_of.get(event.customer_id)
            if partition is None:  # murmur2 in Python: once a customer, as the SDK does
                partition = self._partition_of[event.customer_id] = partition_for(
                    event.customer_id.encode(), self._partitions
                )
            by_partition[partition].append(event)
        chunks = [
            (partition, events[start : start + EVENTS_PER_MESSAGE])
            for partition, events in by_partition.items()
            for start in range(0, len(events), EVENTS_PER_MESSAGE)
        ]
        if not chunks:
            return set()
        # Counted before the first send: another request's poll may serve these callbacks meanwhile.
        pending = [len(chunks)]
        failed: set[str] = set()
        done = threading.Event()
        lock = threading.Lock()

        def delivered(events: list[UsageEvent]) -> Any:
            def report(error: KafkaError | None, _: Message) -> None:
                with lock:
                    if error is not None:
                        failed.update(e.event_id for e in events)
                    pending[0] -= 1
                    if pending[0] == 0:
                        done.set()

            return report

        for partition, chunk in chunks:
            value = self._serde.encode_batch([self._serde.batch_item(e) for e in chunk])
            # Every customer of the chunk hashes to this partition: the first one is a valid key.
            key = chunk[0].customer_id.encode()
            while True:
                try:
                    self._producer.produce(
                        self.topic, value, key, partition=partition, on_delivery=delivered(chunk)
                    )
                    break
                except BufferError:  # librdkafka's queue is full: serve callbacks until there is room
                    self._producer.poll(0.05)
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S + 1
        while not done.is_set() and time.monotonic() < deadline:
            self._producer.poll(0.01)
        with lock:
            if not done.is_set():  # not reported in time: answered retry, and sent again by the client
                return {e.event_id for _, e in accepted}
            return failed


def _refused(event_id: Any, field: str, reason: str, detail: str) -> dict[str, Any]:
    return {
        "id": event_id if isinstance(event_id, str) else None,
        "status": "refused",
        "field": field,
        "reason": reason,
        "detail": detail,
    }
