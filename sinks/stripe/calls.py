"""The Stripe calls of each reporting mode, through the stripe library, with meterline's own
retries: the library's are off, so that every retry reuses the same Idempotency-Key and is counted.

Retried (backoff with full jitter, capped, without limit: usage must not be dropped): 429, 5xx,
connection errors and timeouts, an idempotency key still in use, an expired v2 session (renewed).
Settled: a duplicate identifier (`duplicate_meter_event`, or a message saying so: the error's form
is not documented) means Stripe already has it (a report whose answer was lost): sent. Refused
for good: any other invalid request (its code is kept); an authentication or permission error
stops the sink instead, as it would refuse everything.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import stripe

from meterline.core import metrics
from meterline.core.config import Config
from meterline.core.errors import MeterlineError
from meterline.sinks.stripe.report import Outcome, Report, Status, idempotency_key, stream_batch_key

log = logging.getLogger("meterline.sink.stripe")

_BACKOFF_FIRST, _BACKOFF_MAX = 0.25, 10.0
SESSION_MARGIN_S = 60  # renew a v2 session this long before it expires


class StripeUnavailableError(MeterlineError):
    pass


class StripeAccessError(MeterlineError):
    """Stripe refuses the key: nothing can be reported until the configuration is fixed."""


class RateLimiter:
    """A token bucket shared by the sink's threads: at most `per_second` calls, in bursts of one second."""

    def __init__(self, per_second: float) -> None:
        self.per_second = per_second
        self._tokens = per_second
        self._since = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.per_second, self._tokens + (now - self._since) * self.per_second)
                self._since = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                wait = (1 - self._tokens) / self.per_second
            time.sleep(wait)


def make_client(api_base: str, api_key: str, timeout_s: float) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base, "meter_events": api_base}
        if "api.stripe.com" not in api_base
        else None,
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=timeout_s),
    )


CUSTOMER_PAYLOAD_KEY = "stripe_customer_id"
VALUE_PAYLOAD_KEY = "value"
"""The payload keys of the meter events meterline sends: Stripe's defaults for a meter's
`customer_mapping.event_payload_key` and `value_settings.event_payload_key`, which `stripe sync`
requires of the meters it uses (sinks.stripe.catalog.sync)."""


def meter_payload(report: Report) -> dict[str, str]:
    return {CUSTOMER_PAYLOAD_KEY: report.stripe_customer, VALUE_PAYLOAD_KEY: str(report.value)}


class Caller:
    """Makes one report (or one stream batch) until it settles; counts what happened."""

    def __init__(
        self,
        api_base: str,
        api_key: str,
        timeout_s: float,
        limiter: RateLimiter,
        legacy_version: str,
        give_up_after_s: float | None = None,
    ) -> None:
        """`give_up_after_s`: how long a call may keep failing transiently before StripeUnavailable
        is raised; None (the sinks): retry until it succeeds, as usage must never be dropped."""
        self.api_base, self.timeout_s = api_base, timeout_s
        self.give_up_after_s = give_up_after_s
        self.client = make_client(api_base, api_key, timeout_s)
        self.limiter = limiter
        self.legacy_version = legacy_version
        self.calls = 0
        self.retries = 0
        self._lock = threading.Lock()
        self._session: tuple[str, float] | None = None  # v2 token, expiry (epoch s)

    # -- the modes ---------------------------------------------------------------------------------

    def meter_event(self, report: Report) -> Outcome:
        params = {
            "event_name": report.stripe_event_name,
            "payload": meter_payload(report),
            "timestamp": report.timestamp,
            "identifier": report.identifier,
        }
        return self._settle(
            lambda key: self.client.v1.billing.meter_events.create(params, {"idempotency_key": key}),  # type: ignore[arg-type]
            idempotency_key(report.aggregate.identity, "meter_events"),
            Status.SENT,
            rekey_after_saved_error=True,  # Stripe dedups on the identifier
        )

    def usage_record(self, report: Report) -> Outcome:
        """Legacy accounts: an increment on the customer's subscription item (or, to lower usage, a
        set of the window's total at its timestamp), synchronous at Stripe."""
        return self._settle(
            lambda key: self.client.raw_request(
                "post",
                f"/v1/subscription_items/{report.subscription_item}/usage_records",
                quantity=report.value,
                timestamp=report.timestamp,
                action="set" if report.sets_total else "increment",
                idempotency_key=key,
                stripe_version=self.legacy_version,
            ),
            idempotency_key(report.aggregate.identity, "usage_records"),
            Status.CONFIRMED,
            rekey_after_saved_error=False,  # a usage record has no identifier: a new key could add it twice
        )

    def stream(self, reports: Sequence[Report]) -> Outcome:
        """Up to 100 reports in one v2 meter_event_stream call; Stripe validates them
        asynchronously (refusals come back as meter error reports), so success means sent."""
        events = [
            {
                "event_name": r.stripe_event_name,
                "identifier": r.identifier,
                "payload": meter_payload(r),
                "timestamp": datetime.fromtimestamp(r.timestamp, UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
            }
            for r in reports
        ]

        def call(key: str) -> Any:
            session_client = make_client(self.api_base, self._session_token(), self.timeout_s)
            return session_client.v2.billing.meter_event_stream.create(
                {"events": events},  # type: ignore[typeddict-item]
                {"idempotency_key": key},
            )

        key = stream_batch_key([r.identifier for r in reports])
        return self._settle(call, key, Status.SENT, rekey_after_saved_error=True)

    # -- retries -----------------------------------------------------------------------------------

    def _settle(
        self, call: Callable[[str], Any], key: str, success: Status, rekey_after_saved_error: bool
    ) -> Outcome:
        """Retry `call(idempotency key)` until it settles. Stripe saves a 500 under its key once the
        call began executing and replays it to every retry with that key
        (https://docs.stripe.com/api/idempotent_requests): where Stripe also dedups on the content
        (a meter event's identifier), the retry goes on under a new key derived from the first, so
        the event counts once either way; elsewhere the report fails with the reason."""
        attempts, attempt_key = 0, key
        for rekeyed in range(1, _MAX_REKEYS + 2):
            try:
                response, tried = self.retrying(functools.partial(call, attempt_key))
            except SavedServerError as exc:
                attempts += exc.attempts
                if not rekey_after_saved_error:
                    return Outcome(Status.FAILED, attempts, "stripe_saved_500", _SAVED_500, exc.request_id)
                attempt_key = f"{key}:after-saved-500:{rekeyed}"
                continue
            except stripe.InvalidRequestError as exc:
                attempts += getattr(exc, "meterline_attempts", 1)
                message, request_id = str(exc.user_message or exc), exc.request_id or ""
                if is_duplicate_identifier(exc):  # Stripe has it: the first answer was lost
                    code = exc.code or "duplicate_meter_event"
                    return Outcome(Status.SENT, attempts, code, message, request_id)
                return Outcome(Status.FAILED, attempts, exc.code or "invalid_request", message, request_id)
            except stripe.IdempotencyError as exc:  # same key, other parameters: never retried into success
                attempts += getattr(exc, "meterline_attempts", 1)
                return Outcome(
                    Status.FAILED, attempts, "idempotency_conflict", str(exc), exc.request_id or ""
                )
            return Outcome(success, attempts + tried, request_id=_request_id(response))
        return Outcome(Status.FAILED, attempts, "stripe_saved_500", "Stripe kept answering a saved 500", "")

    def retrying(self, call: Callable[[], Any]) -> tuple[Any, int]:
        """(the response, attempts): transient failures are retried; a refusal is raised with the
        number of attempts on it (`meterline_attempts`)."""
        delay = _BACKOFF_FIRST
        attempts = 0
        started = time.monotonic()
        while True:
            self.limiter.acquire()
            attempts += 1
            with self._lock:
                self.calls += 1
            metrics.STRIPE_CALLS.inc()
            try:
                return call(), attempts
            except stripe.TemporarySessionExpiredError as exc:
                with self._lock:
                    self._session = None
                error: Exception = exc
            except stripe.IdempotencyError as exc:
                if exc.http_status != 409:  # 409: the same key is still running: retry
                    exc.meterline_attempts = attempts  # type: ignore[attr-defined]
                    raise
                error = exc
            except stripe.InvalidRequestError as exc:
                metrics.STRIPE_ERRORS.labels(exc.code or "invalid_request").inc()
                exc.meterline_attempts = attempts  # type: ignore[attr-defined]
                raise
            except (stripe.AuthenticationError, stripe.PermissionError) as exc:
                raise StripeAccessError(f"Stripe refuses meterline's key: {exc}") from exc
            except (stripe.RateLimitError, stripe.APIConnectionError, stripe.APIError) as exc:
                if _replayed_server_error(exc):  # the same key will only ever get this answer again
                    raise SavedServerError(attempts, exc.request_id or "") from exc
                error = exc
            if self.give_up_after_s is not None and time.monotonic() - started > self.give_up_after_s:
                raise StripeUnavailableError(
                    f"Stripe did not answer for {self.give_up_after_s:g} s ({attempts} attempts; "
                    f"last: {type(error).__name__}: {error})"
                ) from error
            with self._lock:
                self.retries += 1
            metrics.STRIPE_RETRIES.inc()
            metrics.STRIPE_ERRORS.labels(type(error).__name__).inc()
            wait = random.uniform(0, delay)
            log.warning(
                "stripe call failed (%s: %s); retry %d in %.2f s", type(error).__name__, error, attempts, wait
            )
            time.sleep(wait)
            delay = min(delay * 2, _BACKOFF_MAX)

    def _session_token(self) -> str:
        with self._lock:
            if self._session is not None and self._session[1] - SESSION_MARGIN_S > time.time():
                return self._session[0]
        session = self.client.v2.billing.meter_event_session.create()
        expires = session.expires_at
        expiry = expires.timestamp() if isinstance(expires, datetime) else _epoch(expires)
        with self._lock:
            self._session = (session.authentication_token, expiry)
        return session.authentication_token


_DUPLICATE_MESSAGE = re.compile(
    r"identifier\b.*\b(already|duplicate)|\b(already exists|duplicate)\b.*identifier", re.I
)


def is_duplicate_identifier(exc: stripe.InvalidRequestError) -> bool:
    """Stripe already has a meter event with this identifier. Its page documents the uniqueness
    ("We will enforce uniqueness within a rolling period of at least 24 hours",
    https://docs.stripe.com/api/billing/meter-event/create) but not the error's form: the code
    `duplicate_meter_event`, or, without it, a message naming the identifier as already there.
    Anything else is a refusal, never taken for delivered."""
    if exc.code == "duplicate_meter_event":
        return True
    text = str(exc.user_message or exc)
    return exc.code in (None, "", "resource_already_exists") and bool(_DUPLICATE_MESSAGE.search(text))


_MAX_REKEYS = 5
_SAVED_500 = (
    "Stripe saved a 500 for this report's Idempotency-Key: whether the usage was recorded is unknown, "
    "and a usage record has no identifier for a retry under a new key to dedup on (replay --repair "
    "compares Stripe's totals)"
)


class SavedServerError(Exception):
    """A 5xx Stripe replays for an Idempotency-Key: retrying with that key cannot succeed."""

    def __init__(self, attempts: int, request_id: str) -> None:
        super().__init__(f"a saved server error after {attempts} attempts")
        self.attempts, self.request_id = attempts, request_id


def _replayed_server_error(exc: stripe.StripeError) -> bool:
    headers = exc.headers or {}
    return (exc.http_status or 0) >= 500 and str(headers.get("Idempotent-Replayed", "")).lower() == "true"


FAKE_KEY = "sk_test_meterline_fake"
"""An API base without a key is a fake (meterline's, or a mock someone runs): it takes any key."""


def caller_for(config: Config, give_up_after_s: float | None = None) -> Caller:
    """The configured Stripe (or a fake at the configured API base), under the configured limits."""
    api_key = config.stripe.api_key.reveal()
    api_base = config.stripe.api_base or ("https://api.stripe.com" if api_key else "")
    if not api_base:  # the composition root resolves the local fake's (meterline.devstack.resolve)
        raise StripeUnavailableError("no Stripe: run `meterline dev up` (the fake) or set STRIPE_API_KEY")
    return Caller(
        api_base,
        api_key or FAKE_KEY,
        config.stripe.timeout_seconds,
        RateLimiter(config.stripe.requests_per_second),
        config.stripe.legacy_api_version,
        give_up_after_s,
    )


def _request_id(response: Any) -> str:
    """Stripe's Request-Id of a library object's response, or of a raw response."""
    last = getattr(response, "last_response", None)
    if last is not None:
        return str(getattr(last, "request_id", "") or "")
    headers = getattr(response, "headers", None) or {}
    return str(headers.get("request-id") or headers.get("Request-Id") or "")


def _epoch(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
