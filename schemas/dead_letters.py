"""The dead-letter contract, one for every DLQ topic: a refused record goes as it came (or the one
bad event of a batch, alone), with headers saying why and where it came from. The stream writes
usage.events.dlq, the Stripe sink usage.stripe.dlq; the ClickHouse sink (usage_dead_letters),
`verify` and on-call read them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Value = str | bytes | None
Headers = Iterable[tuple[str, Value]] | Mapping[str, Value]
"""A Kafka record's headers, as confluent-kafka gives and takes them."""


@dataclass(frozen=True)
class DeadLetter:
    code: str
    """Why: a RejectReason of the stream, or Stripe's error code."""
    detail: str
    topic: str
    partition: int
    offset: int
    index: int | None = None
    """The event's place in its batch, when only it was refused and sent alone."""
    identifier: str = ""
    """The window revision's identity at Stripe (usage.stripe.dlq)."""

    def headers(self, original: Headers = ()) -> list[tuple[str, Value]]:
        """The record's own headers, but those of this contract, then this contract's."""
        own = {
            "error.code": self.code,
            "error.detail": self.detail,
            "source.topic": self.topic,
            "source.partition": str(self.partition),
            "source.offset": str(self.offset),
        }
        if self.index is not None:
            own["source.index"] = str(self.index)
        if self.identifier:
            own["identifier"] = self.identifier
        kept = [(k, v) for k, v in _pairs(original) if k not in own]
        return kept + [(k, v.encode()) for k, v in own.items()]


def read(headers: Headers | None) -> DeadLetter:
    """A dead letter's contract from its headers; what a record lacks reads as unknown."""
    text = {
        k: v.decode(errors="replace") if isinstance(v, bytes) else v or "" for k, v in _pairs(headers or ())
    }
    index = text.get("source.index")
    return DeadLetter(
        code=text.get("error.code", "unknown"),
        detail=text.get("error.detail", ""),
        topic=text.get("source.topic", ""),
        partition=int(text.get("source.partition") or 0),
        offset=int(text.get("source.offset") or 0),
        index=int(index) if index else None,
        identifier=text.get("identifier", ""),
    )


def _pairs(headers: Headers) -> Iterable[tuple[str, Value]]:
    return headers.items() if isinstance(headers, Mapping) else headers
