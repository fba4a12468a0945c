"""Stripe's webhook signatures (docs.stripe.com/webhooks#verify-manually): the header
`Stripe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<payload>" under the endpoint
secret>` (several v1 entries while a secret rolls). Pure; the fake signs with `sign`, the
receiver checks with `verify`."""

from __future__ import annotations

import hashlib
import hmac

from meterline.errors import MeterlineError

DEFAULT_TOLERANCE_S = 300  # Stripe's libraries refuse signatures older than five minutes


class SignatureError(MeterlineError):
    pass


def signature(payload: bytes, secret: str, timestamp: int) -> str:
    signed = str(timestamp).encode() + b"." + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """The Stripe-Signature header for `payload` sent at `timestamp`."""
    return f"t={timestamp},v1={signature(payload, secret, timestamp)}"


def verify(
    payload: bytes, header: str | None, secret: str, now: int, tolerance_s: int = DEFAULT_TOLERANCE_S
) -> None:
    """Raise SignatureError unless `header` signs `payload` with `secret`, no older than the tolerance."""
    if not header:
        raise SignatureError("no Stripe-Signature header")
    parts = [p.split("=", 1) for p in header.split(",") if "=" in p]
    timestamps = [v for k, v in parts if k == "t"]
    candidates = [v for k, v in parts if k == "v1"]
    if len(timestamps) != 1 or not timestamps[0].isdigit() or not candidates:
        raise SignatureError("a Stripe-Signature header has one t= and at least one v1=")
    timestamp = int(timestamps[0])
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(
            f"signed {now - timestamp} s ago, beyond the {tolerance_s} s tolerance (a replay?)"
        )
    expected = signature(payload, secret, timestamp)
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise SignatureError("no v1 signature matches the endpoint secret")
