"""CloudEvents to UsageEvent (schemas/cloudevents.py) and the ingest's rate limit, without I/O."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterline.schemas.cloudevents import CloudEventError, from_usage_event, to_usage_event
from meterline.schemas.ingest import RateLimiter
from meterline.schemas.records import UsageEvent

UNITS = {"api_calls": "call", "egress_bytes": "byte"}


def cloud_event(**overrides: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "//billing-svc/eu-1",
        "type": "com.acme.usage.api_calls",
        "subject": "cust-42",
        "time": "2026-11-20T12:00:00.123Z",
        "data": {"quantity": 3, "attributes": {"status": "200"}},
        **overrides,
    }


def test_a_cloud_event_maps_field_by_field() -> None:
    assert to_usage_event(cloud_event(), UNITS) == UsageEvent(
        "evt-1", "cust-42", "api_calls", 3, "call", 1_795_176_000_123, "//billing-svc/eu-1", {"status": "200"}
    )
    # data.meter names the meter when the type does not end with it; an offset other than Z.
    named = to_usage_event(
        cloud_event(
            type="usage", time="2026-11-20T13:00:00+01:00", data={"meter": "egress_bytes", "quantity": 9}
        ),
        UNITS,
    )
    assert (named.meter, named.unit, named.timestamp) == ("egress_bytes", "byte", 1_795_176_000_000)
    # JSON's integers include 3.0 (JSON Schema agrees): some serializers write them so.
    assert to_usage_event(cloud_event(data={"quantity": 3.0}), UNITS).quantity == 3


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"specversion": "0.3"}, "specversion"),
        ({"subject": ""}, "subject"),
        ({"id": 7}, "id"),
        ({"time": "yesterday"}, "time"),
        ({"time": "2026-11-20T12:00:00"}, "time"),  # no offset: which noon?
        ({"data": {"quantity": 1.5}}, "data.quantity"),
        ({"data": {"quantity": 2**63}}, "data.quantity"),  # beyond Avro's long
        ({"data": {"quantity": True}}, "data.quantity"),
        ({"data": {"quantity": 1, "attributes": {"n": 1}}}, "data.attributes"),
        ({"datacontenttype": "text/plain"}, "datacontenttype"),
        ({"data": "3"}, "data"),
    ],
)
def test_each_malformed_field_is_named(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(CloudEventError) as refused:
        to_usage_event(cloud_event(**overrides), UNITS)
    assert refused.value.field == field


@given(
    st.builds(
        UsageEvent,
        event_id=st.text(min_size=1),
        customer_id=st.text(min_size=1),
        meter=st.sampled_from(sorted(UNITS)),
        quantity=st.integers(0, 2**63 - 1),
        unit=st.just(""),
        timestamp=st.integers(1, 253_402_300_799_999),  # to the end of year 9999
        source=st.text(min_size=1),
        attributes=st.dictionaries(st.text(), st.text(), max_size=3),
    )
)
def test_a_usage_event_survives_the_round_trip_through_its_cloud_event(event: UsageEvent) -> None:
    event = dataclasses.replace(event, unit=UNITS[event.meter])
    assert to_usage_event(json.loads(json.dumps(from_usage_event(event))), UNITS) == event


def test_a_key_gets_its_rate_and_a_burst_of_twice_as_many_then_waits() -> None:
    limiter = RateLimiter(2.0)
    assert [limiter.wait_for("a", 100.0) for _ in range(4)] == [0.0] * 4  # the burst
    assert limiter.wait_for("a", 100.0) == pytest.approx(0.5)  # a token every half second
    assert limiter.wait_for("b", 100.0) == 0.0  # another key is not slowed
    assert limiter.wait_for("a", 100.5) == 0.0
