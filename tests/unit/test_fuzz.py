"""Hostile input never crashes a reader: the compiled event reader, the batch reader (every usage
message and aggregate meterline reads) and the webhook parser, on random and on mutated bytes.
Every input either reads or is refused with a reason (the one exception type each promises); none
crashes, hangs or allocates beyond its input: a length prefix of 2**62 is a malformed record, not
a MemoryError. Bounded in time: a few thousand examples each, every one under its deadline."""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterline.schemas._readers import read_events
from meterline.schemas.codecs import encode_long
from meterline.schemas.errors import SchemaError
from meterline.schemas.records import UsageEvent, WindowAggregate
from meterline.schemas.serde import AvroSerde
from meterline.sinks.stripe.webhooks.events import (
    Malformed,
    created_of,
    envelope,
    invoice_row,
    meter_errors,
    payment_row,
    snapshot,
    subscription_rows,
)

EXAMPLES = settings().max_examples * 30  # 3,000 by default; the quick profile, 300
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(milliseconds=250),  # a reader that loops on its input fails here
    suppress_health_check=[HealthCheck.too_slow],
)
SERDE = AvroSerde()
EVENT = UsageEvent("evt-1", "cust-1", "api_calls", 12, "request", 1_796_000_000_000, "api", {"region": "eu"})
AGGREGATE = WindowAggregate("cust-1", "api_calls", 1_796_000_000_000, 1_796_000_060_000, 0, 5, 5, 1, 0, 1)
VALID = [
    SERDE.encode_event(EVENT),
    SERDE.encode_batch([SERDE.batch_item(EVENT)] * 3),
    SERDE.encode_batch([]),
    SERDE.encode_aggregate(AGGREGATE),
]
HUGE = encode_long(2**62)


@st.composite
def mutated(draw: st.DrawFn, originals: list[bytes]) -> bytes:
    """A valid message, then a few of: a byte replaced, bytes inserted (a 2**62 length among
    them), a cut."""
    data = bytearray(draw(st.sampled_from(originals)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["replace", "insert", "huge", "cut"]))
        if action == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "huge":
            data[at:at] = draw(st.sampled_from([HUGE, encode_long(-(2**62)), b"\xff" * 11]))
        else:
            del data[at:]
    return bytes(data)


messages = st.one_of(
    st.binary(max_size=600), mutated(VALID), st.binary(max_size=64).map(lambda b: VALID[1][:10] + b)
)


@FUZZ
@given(st.binary(max_size=600) | mutated([m[10:] for m in VALID]), st.booleans(), st.integers(-2, 12))
def test_the_compiled_reader_reads_or_refuses_any_bytes(data: bytes, batch: bool, pos: int) -> None:
    try:
        events = read_events(data, pos, batch)
    except ValueError:  # its one refusal (UnicodeDecodeError is one too)
        return
    assert all(isinstance(e, UsageEvent) for e in events)
    assert len(events) <= len(data)  # every event takes bytes of its own


@FUZZ
@given(messages)
def test_the_usage_and_aggregate_readers_read_or_refuse_any_message(data: bytes) -> None:
    for read in (SERDE.decode_usage, SERDE.decode_usage_with_fastavro, SERDE.decode_aggregate):
        try:
            read(data)
        except SchemaError as refused:  # malformed or of an unknown schema, with why
            assert str(refused)


@pytest.mark.parametrize(
    "body",
    [HUGE, encode_long(1) + HUGE, encode_long(-(2**62)) + HUGE, encode_long(1) + b"\x02e" * 3 + HUGE],
    ids=["count", "string length", "block size", "map count"],
)
def test_a_length_of_2_to_the_62_is_a_malformed_record(body: bytes) -> None:
    for header in (VALID[0][:10], VALID[1][:10]):
        for read in (SERDE.decode_usage, SERDE.decode_usage_with_fastavro):
            with pytest.raises(SchemaError, match="does not decode"):
                read(header + body)


# -- the webhook parser ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
KEYS = [
    "id",
    "object",
    "customer",
    "status",
    "lines",
    "data",
    "items",
    "price",
    "lookup_key",
    "reason",
    "error_types",
    "sample_errors",
    "request",
    "identifier",
    "code",
    "error_count",
    "period_start",
    "period_end",
    "current_period_start",
    "current_period_end",
    "created",
    "billing_mode",
    "type",
]


@st.composite
def stripe_shaped(draw: st.DrawFn) -> dict[str, Any]:
    """Documents with Stripe's keys in them at any depth, holding any JSON: the shapes a handler
    reads, with every field of the wrong type, missing, huge or negative somewhere."""
    tree = st.recursive(
        json_values,
        lambda children: (
            st.dictionaries(st.sampled_from(KEYS), children, max_size=6) | st.lists(children, max_size=3)
        ),
        max_leaves=30,
    )
    document = draw(st.dictionaries(st.sampled_from(KEYS), tree, max_size=6))
    document.setdefault(
        "data", draw(st.dictionaries(st.sampled_from(["object", "reason"]), tree, max_size=2))
    )
    document["id"], document["type"] = draw(st.text(max_size=8)), draw(st.text(max_size=30))
    return document


def read_webhook(payload: bytes) -> None:
    """What the consumer does with a record, without its I/O: everything raises Malformed or reads."""
    _, _, raw = envelope(payload)
    created_of(raw)
    if raw.get("object") == "v2.core.event":
        meter_errors(raw)  # the fetched event has the same shape
        return
    document = snapshot(payload)
    for handler in (invoice_row, payment_row, lambda d: subscription_rows(d, "cust-1"), meter_errors):
        with contextlib.suppress(Malformed):  # each handler reads its own type; any may refuse
            handler(document)


def webhook_payloads() -> st.SearchStrategy[bytes]:
    documents = stripe_shaped().map(lambda d: json.dumps(d).encode())
    return st.one_of(
        st.binary(max_size=300),
        documents,
        mutated([json.dumps(d).encode() for d in (SUBSCRIPTION, METER_ERRORS, PAYMENT_FAILED)]),
        st.integers(1, 100_000).map(lambda depth: b"[" * depth),
    )


SUBSCRIPTION = {
    "id": "evt_1",
    "object": "event",
    "type": "customer.subscription.updated",
    "created": 1_796_000_000,
    "data": {
        "object": {
            "id": "sub_1",
            "customer": "cus_1",
            "status": "active",
            "items": {
                "data": [
                    {
                        "id": "si_1",
                        "price": {"id": "price_1", "lookup_key": "k"},
                        "current_period_start": 1,
                        "current_period_end": 2,
                    }
                ]
            },
        }
    },
}
PAYMENT_FAILED = {
    "id": "evt_3",
    "object": "event",
    "type": "invoice.payment_failed",
    "created": 1_796_000_100,
    "data": {
        "object": {
            "id": "in_1",
            "object": "invoice",
            "customer": "cus_1",
            "amount_due": 20_000,
            "amount_paid": 0,
            "currency": "usd",
            "attempt_count": 1,
            "period_start": 1_793_500_000,
            "period_end": 1_796_000_000,
        }
    },
}
METER_ERRORS = {
    "id": "evt_2",
    "object": "v2.core.event",
    "type": "v1.billing.meter.error_report_triggered",
    "created": "2026-12-01T00:00:00Z",
    "data": {
        "reason": {
            "error_count": 1,
            "error_types": [
                {
                    "code": "meter_event_no_customer_defined",
                    "sample_errors": [{"request": {"identifier": "ml:1"}}],
                }
            ],
        }
    },
}


@settings(FUZZ, max_examples=EXAMPLES // 8)  # JSON documents cost more to make than bytes
@given(webhook_payloads())
def test_the_webhook_parser_reads_or_refuses_any_payload(payload: bytes) -> None:
    try:
        read_webhook(payload)
    except Malformed as refused:
        assert str(refused)


def test_valid_webhooks_read_as_stripe_sent_them() -> None:
    """The fuzzed parser still reads what Stripe sends (the cases above must not all be refusals)."""
    items, own = subscription_rows(snapshot(json.dumps(SUBSCRIPTION).encode()), "cust-1")
    assert own == ["sub_1", "cus_1", "active", 1, 2, 1_796_000_000]
    assert items == [
        ["sub_1", "si_1", "cus_1", "cust-1", "active", "price_1", "k", 1, 2, 1_796_000_000, "classic"]
    ]
    assert meter_errors(METER_ERRORS) == (
        1,
        ["meter_event_no_customer_defined"],
        {"ml:1": ("meter_event_no_customer_defined", "")},
    )
    assert payment_row(snapshot(json.dumps(PAYMENT_FAILED).encode())) == [
        "evt_3",
        "in_1",
        "cus_1",
        "failed",
        20_000,
        0,
        "usd",
        1,
        1_793_500_000,
        1_796_000_000,
        1_796_000_100,
    ]
    with pytest.raises(Malformed, match="amount_due"):
        payment_row({**PAYMENT_FAILED, "data": {"object": {"id": "in_1", "amount_due": -5}}})
    assert created_of(METER_ERRORS) == 1_796_083_200
    for created in (2**40, -1, True, 1.5, "yesterday"):
        with pytest.raises(Malformed, match="created"):
            created_of({"created": created})
    with pytest.raises(Malformed, match="not JSON"):
        envelope(b"[" * 100_000)
