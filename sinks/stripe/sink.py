"""`meterline sink stripe`: every window revision on usage.aggregates reported to Stripe once.

Per batch of consumed aggregates, in this order:
1. Decode each and resolve who it bills (Stripe customer, meter event name) and what is sent, as
   the reporting mode says (sinks.stripe.modes: legacy usage records need the subscription item
   of the window's time, and lower usage only by an exact `set`). Refuse before any call what
   Stripe would refuse for good: an unknown meter, a window older than Stripe's 35 days, what the
   mode cannot send. A revision whose Stripe customer is not known yet waits
   (`waiting_for_customer`, held in the ledger); the batch also takes up the held revisions of
   customers known since, before its own, and refuses as `unknown_customer` those whose horizon
   passed (`customer_wait_until`).
2. Read the ledger: a revision already sent, confirmed or failed (before a crash or a rebalance)
   is not reported again. A level's revision (`max`, `last`) is given what it moves its period's
   answer by (sinks.stripe.levels). One still `pending` from before (its answer lost) whose revision closed
   more than `stripe.resend_check_after_hours` ago may be one Stripe has forgotten the
   identifier of: Stripe's totals decide whether it landed (sinks.stripe.landed); only what did
   not is sent again.
3. Write `pending` rows for the rest: the ledger shows a batch that was interrupted.
4. Report, as the mode sends (one call in flight per customer and meter, in offset order), under
   the client-side rate limit; each call retried until it settles (sinks.stripe.calls), with the
   identifier and Idempotency-Key of its aggregate identity.
5. Write the outcomes to the ledger (a waiting revision with its record); send every refused
   revision to usage.stripe.dlq with its reason, and wait until the DLQ has them.
6. Commit the batch's offsets: only now is every revision settled or held.
A crash anywhere re-reads the batch: step 2 skips what settled, and what was in flight is sent
again with the same identifier and key, which Stripe answers with the first result (or
`duplicate_meter_event`): no identifier is billed twice. Between batches the sink takes up held
revisions every few seconds. Two sinks may take up the same one after a rebalance: its identifier
makes the second report a duplicate Stripe does not count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from meterline.core import metrics
from meterline.core.config import Config
from meterline.core.kafka import Assignment
from meterline.core.logs import context
from meterline.schemas.dead_letters import DeadLetter
from meterline.schemas.records import AggregateIdentity, WindowAggregate
from meterline.schemas.serde import AvroSerde
from meterline.sinks import consume
from meterline.sinks.stripe.calls import Caller
from meterline.sinks.stripe.directory import Directory
from meterline.sinks.stripe.landed import LostReports
from meterline.sinks.stripe.ledger import Consumed, Entry, Ledger, Waiting
from meterline.sinks.stripe.levels import Levels
from meterline.sinks.stripe.modes import Refusal, ReportingMode
from meterline.sinks.stripe.report import (
    Outcome,
    Reason,
    Report,
    Status,
    customer_unknown,
    customer_wait_until,
    identifier,
    too_old,
)

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

log = logging.getLogger("meterline.sink.stripe")

BATCH = 500
WAITING_LOOK_S = 5.0  # how often, between batches, the sink looks whether waiting customers are known
WAITING_RELOAD_S = 60.0  # how often it rereads which customers wait (another sink may hold some)


@dataclass
class StripeSinkStats:
    aggregates: int = 0
    already_settled: int = 0
    sent: int = 0
    confirmed: int = 0
    failed: int = 0
    waiting: int = 0
    released: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Item:
    record: Consumed
    aggregate: WindowAggregate
    report: Report | None  # None: decided in step 1
    decided: Outcome | None  # refused (failed) or waiting for its customer
    from_ledger: bool = False  # taken up from the ledger: its pending row keeps the record


class StripeSink:
    """Run by sinks.consume; the composition root (meterline.compose) builds its parts, the
    reporting mode among them."""

    name = "stripe"
    most, wait_s = BATCH, 0.5

    def __init__(
        self,
        config: Config,
        *,
        consumer: Consumer,
        dead_letters: Producer,
        client: Client,
        caller: Caller,
        directory: Directory,
        ledger: Ledger,
        reporting: ReportingMode,
        serde: AvroSerde,
        group_id: str,
    ) -> None:
        """`client` holds the ledger; `dead_letters` produces to usage.stripe.dlq; `group_id` is the
        consumer's group, which commits each batch."""
        self.config = config
        self.group_id = group_id
        self.topics = [config.topics.aggregates]
        self.caller = caller
        self.event_names = {name: meter.stripe_event_name for name, meter in config.meters.items()}
        self.serde = serde
        self.stats = StripeSinkStats()
        self.directory = directory
        self.ledger = ledger
        self.reporting = reporting
        self._client = client
        self._waiting: dict[str, Waiting] = {}
        self._waiting_looked_at = self._waiting_read_at = float("-inf")
        self._lost = LostReports(config, caller, ledger)
        self._levels = Levels(ledger, config.levels)
        self._consumer = consumer
        self._dlq = dead_letters
        self._assignment = Assignment(self.name)
        self._batch_since: float | None = None

    def oldest_pending_seconds(self) -> float:
        """How long the batch being reported has waited since it was consumed (0 between batches)."""
        since = self._batch_since
        return 0.0 if since is None else time.monotonic() - since

    def run(self, should_stop: Callable[[], bool]) -> None:
        consume.run(self._consumer, self, should_stop)

    def assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assignment.assigned(consumer, partitions)
        self._waiting_read_at = float("-inf")  # the partitions' waiting customers, from the ledger

    def revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assignment.revoked(consumer, partitions)

    def take(self, messages: list[Message]) -> None:
        if messages:
            self.reporting.prepare()
            self._batch_since = time.monotonic()
            self._process(messages)
            metrics.SINK_FLUSH_SECONDS.labels(self.name).observe(time.monotonic() - self._batch_since)
            self._batch_since = None
        elif time.monotonic() - self._waiting_looked_at >= WAITING_LOOK_S:
            self._process([])  # only the waiting revisions

    def finish(self) -> None:
        """Nothing is held between batches: each is committed once reported."""

    def close(self) -> None:
        self.reporting.close()
        self._client.close()

    def progress(self) -> str:
        return f"{vars(self.stats)} calls={self.caller.calls} retries={self.caller.retries}"

    def _process(self, messages: list[Message]) -> None:
        # 1. Decode, resolve, refuse early; the waiting revisions of customers known since first.
        consumed = [Consumed(m.value() or b"", m.partition() or 0, m.offset() or 0) for m in messages]
        aggregates = [self.serde.decode_aggregate(c.value) for c in consumed]
        now_ms = int(time.time() * 1000)
        looking = time.monotonic() - self._waiting_looked_at >= WAITING_LOOK_S
        if looking:  # every waiting customer, every few seconds; in between, those of the batch
            self._waiting_looked_at = time.monotonic()
        waiting = self._waiting_now()
        asked = {a.customer_id for a in aggregates} | (set(waiting) if looking else set())
        customers = self.directory.customers(asked)
        released = self._released(customers, now_ms, looking)
        items = self._refuse_in_batch(
            [
                replace(
                    self._resolve(record, self.serde.decode_aggregate(record.value), customers, now_ms),
                    from_ledger=True,
                )
                for record in released
            ]
            + [
                self._resolve(record, aggregate, customers, now_ms)
                for record, aggregate in zip(consumed, aggregates, strict=True)
            ]
        )
        self.stats.aggregates += len(messages)
        # 2. What settled before is not reported again.
        settled = self.ledger.statuses(i.aggregate.identity for i in items)
        todo = [
            i for i in items if not (i.aggregate.identity in settled and settled[i.aggregate.identity].done)
        ]
        self.stats.already_settled += len(items) - len(todo)
        todo = self._with_contributions(todo, settled)
        decided = self._decide_lost(todo, settled)
        # 3. Pending, before any call.
        to_call = [i for i in todo if i.report is not None and i.report.identifier not in decided]
        self.ledger.record(
            [self._entry(i, Outcome(Status.PENDING)) for i in to_call],
            [i.record if i.from_ledger else None for i in to_call],
        )
        # 4. Report.
        outcomes = self.reporting.send([i.report for i in to_call if i.report is not None])
        results = [(i, outcomes[i.report.identifier]) for i in to_call if i.report is not None]
        results += [
            (i, i.decided)
            for i in todo
            if i.decided is not None  # and not held already: a revision waits in one row
            and not (i.decided.status is Status.WAITING and i.aggregate.identity in settled)
        ]
        results += [
            (i, decided[i.report.identifier]) for i in todo if i.report and i.report.identifier in decided
        ]
        # 5. Outcomes to the ledger, refusals to the DLQ.
        held = [(i, o) for i, o in results if o.status is Status.WAITING]
        self.ledger.record([self._entry(i, o) for i, o in results if o.status is not Status.WAITING])
        self.ledger.record([self._entry(i, o) for i, o in held], [i.record for i, _ in held])
        answered_at = time.time() * 1000
        for item, outcome in results:
            self._count(outcome)
            if item.report is not None:
                metrics.STRIPE_REPORT_LATENCY.observe(max(0.0, answered_at - item.aggregate.closed_at) / 1000)
            if outcome.status is Status.FAILED:
                self._dead_letter(item, outcome)
        if self._dlq.flush(30) > 0:
            raise KafkaException(
                KafkaError(KafkaError._MSG_TIMED_OUT, "usage.stripe.dlq did not take the refusals")
            )
        if released or held:
            self._waiting_read_at = float("-inf")  # read again at the next look
        # 6. Commit.
        ends: dict[tuple[str, int], int] = {}
        for message in messages:
            key = (message.topic() or "", message.partition() or 0)
            ends[key] = max(ends.get(key, 0), (message.offset() or 0) + 1)
        if not ends:
            return
        try:
            self._consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()], asynchronous=False
            )
        except KafkaException as exc:  # revoked meanwhile: the new owner finds them settled (step 2)
            log.warning("commit failed (%s); the batch will be read again and found settled", exc)

    def _waiting_now(self) -> dict[str, Waiting]:
        """The customers whose revisions the ledger holds, reread every minute (and after this sink
        held or released some, or was assigned partitions)."""
        if time.monotonic() - self._waiting_read_at >= WAITING_RELOAD_S:
            self._waiting = self.ledger.waiting()
            self._waiting_read_at = time.monotonic()
            metrics.STRIPE_WAITING.set(sum(w.waiting for w in self._waiting.values()))
        return self._waiting

    def _released(self, customers: dict[str, str | None], now_ms: int, looking: bool) -> list[Consumed]:
        """The held records to take up: of each customer just found known (a customer of the batch
        always: its held revisions go before its new ones), and, when looking, of each whose
        earliest waiting window passed its horizon (refused in `_resolve`)."""
        size_ms = self.config.windows.size_ms
        stripe = self.config.stripe
        due = [
            customer
            for customer, w in self._waiting.items()
            if customers.get(customer) is not None
            or (
                looking
                and customer_wait_until(w.earliest_window_start, w.earliest_window_start + size_ms, stripe)
                <= now_ms
            )
        ]
        released = self.ledger.held(due)
        self.stats.released += len(released)
        return released

    def _with_contributions(self, todo: list[_Item], settled: dict[AggregateIdentity, Status]) -> list[_Item]:
        """Step 2, for the levels: each revision sends what it moves its period's answer by."""
        decided = self._levels.contributions([i.report for i in todo if i.report is not None], settled)
        return [
            replace(i, report=decided[i.report.identifier])
            if i.report is not None and i.report.identifier in decided
            else i
            for i in todo
        ]

    def _decide_lost(self, todo: list[_Item], settled: dict[AggregateIdentity, Status]) -> dict[str, Outcome]:
        """Step 2's second half: the pending reports Stripe may have forgotten the identifiers of,
        decided from its totals (identifier -> outcome); legacy usage records carry no identifier."""
        if not self.reporting.checks_lost_answers:
            return {}
        now_ms = int(time.time() * 1000)
        lost = [
            i.report
            for i in todo
            if i.report is not None
            and settled.get(i.aggregate.identity) is Status.PENDING
            and self._lost.may_be_forgotten(i.report, now_ms)
        ]
        return self._lost.decide(lost) if lost else {}

    def _resolve(
        self, record: Consumed, aggregate: WindowAggregate, customers: dict[str, str | None], now_ms: int
    ) -> _Item:
        event_name = self.event_names.get(aggregate.meter)
        if event_name is None:
            return self._refused(
                record, aggregate, Reason.UNKNOWN_METER, f"meter {aggregate.meter!r} is not configured"
            )
        if too_old(aggregate):
            detail = "the window is older than Stripe's 35 days (less an hour)"
            return self._refused(record, aggregate, Reason.TIMESTAMP_TOO_OLD, detail)
        stripe_customer = customers.get(aggregate.customer_id)
        if stripe_customer is None:
            return _Item(record, aggregate, None, customer_unknown(aggregate, self.config.stripe, now_ms))
        made = self.reporting.report(aggregate, stripe_customer, event_name)
        if isinstance(made, Refusal):
            return self._refused(record, aggregate, made.reason, made.detail)
        return _Item(record, aggregate, made, None)

    def _refuse_in_batch(self, items: list[_Item]) -> list[_Item]:
        refusals = self.reporting.refuse_in_batch([i.report for i in items if i.report is not None])
        return [
            self._refused(i.record, i.aggregate, *refusals[i.report.identifier])
            if i.report is not None and i.report.identifier in refusals
            else i
            for i in items
        ]

    @staticmethod
    def _refused(record: Consumed, aggregate: WindowAggregate, reason: Reason, detail: str) -> _Item:
        return _Item(record, aggregate, None, Outcome(Status.FAILED, 0, str(reason), detail))

    def _entry(self, item: _Item, outcome: Outcome) -> Entry:
        report = item.report
        if report is None:
            return Entry(item.aggregate, "", "", outcome)
        return Entry(item.aggregate, report.stripe_customer, report.stripe_event_name, outcome, report.value)

    def _count(self, outcome: Outcome) -> None:
        metrics.STRIPE_REPORTS.labels(str(outcome.status)).inc()
        if outcome.status is Status.SENT:
            self.stats.sent += 1
        elif outcome.status is Status.CONFIRMED:
            self.stats.confirmed += 1
        elif outcome.status is Status.WAITING:
            self.stats.waiting += 1
        elif outcome.status is Status.FAILED:
            self.stats.failed += 1
            self.stats.by_reason[outcome.error_code] = self.stats.by_reason.get(outcome.error_code, 0) + 1

    def _dead_letter(self, item: _Item, outcome: Outcome) -> None:
        record, aggregate = item.record, item.aggregate
        names = identifier(aggregate.identity)
        log.warning(
            "not billed: %s (%s); sent to %s",
            outcome.error_code,
            outcome.last_error,
            self.config.topics.stripe_dlq,
            extra=context(
                customer=aggregate.customer_id,
                meter=aggregate.meter,
                window=aggregate.window_start,
                identifier=names,
            ),
        )
        code = outcome.error_code or str(Reason.REFUSED)
        where = (self.config.topics.aggregates, record.partition, record.offset)
        letter = DeadLetter(code, outcome.last_error, *where, identifier=names)
        self._dlq.produce(
            self.config.topics.stripe_dlq,
            record.value,
            aggregate.customer_id.encode(),
            headers=letter.headers(),
        )
