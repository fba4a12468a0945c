"""The doors judge as the stream will (issue 40): `meterline emit` names an event's mistake before it
asks the broker anything, an unknown meter is `unknown_meter` wherever it is met (not a missing
unit, which only a declared meter could have given), and an event the stream would dead-letter for
its time is refused at the door. (The HTTP ingest: tests/integration/test_ingest.py.)"""

from __future__ import annotations

import pytest

from meterline.schemas.errors import RejectReason
from meterline.schemas.records import UsageEvent
from meterline.schemas.validation import check_event
from tests.support.cli import meterline

NO_BROKER = {"KAFKA_BOOTSTRAP": "127.0.0.1:1"}  # nothing listens: a door that asks Kafka first fails


def test_an_unknown_meter_is_named_before_its_missing_unit() -> None:
    event = UsageEvent("e1", "cust-1", "no_such_meter", 1, "", 1_796_000_000_000, "svc")
    invalid = check_event(event, {"api_calls": "call"})
    assert invalid is not None
    assert (invalid.reason, invalid.field) == (RejectReason.UNKNOWN_METER, "meter")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--meter", "no_such_meter"], "unknown_meter: meter='no_such_meter'"),
        (["--meter", "api_calls", "--quantity", "-3"], "negative_quantity: quantity=-3"),
        (
            ["--meter", "api_calls", "--timestamp", "2020-01-01T00:00:00Z"],
            "too_late: timestamp=1577836800000",
        ),
        (["--meter", "api_calls", "--timestamp", "2099-01-01T00:00:00Z"], "too_far_future: timestamp="),
    ],
    ids=["unknown meter", "negative", "too late", "too far ahead"],
)
def test_emit_judges_an_event_before_it_asks_the_broker(args: list[str], said: str) -> None:
    quantity = [] if "--quantity" in args else ["--quantity", "1"]
    refused = meterline("emit", "--customer", "cust-1", *args, *quantity, env=NO_BROKER)
    assert refused.returncode == 1
    assert f"error: not sent: {said}" in refused.stderr, refused.stderr
