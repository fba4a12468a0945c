"""The Stripe fake behaves as Stripe documents, through the official stripe library.

Each test names the behaviour of Stripe it pins (docs.stripe.com, API 2026-10-28). No broker.
"""

from __future__ import annotations

import json
import time
import urllib.request
from decimal import Decimal
from typing import Any

import pytest
import stripe

from meterline.sinks.stripe.fake import FakeStripe, Faults
from tests.support.records import window_aggregate
from tests.support.stripe import LEGACY_VERSION

KEY = "sk_test_meterline_fake"
NOW = int(time.time())
MINUTE = 60


@pytest.fixture
def fake(stripe_fake: tuple[FakeStripe, str]) -> tuple[FakeStripe, str]:
    """The fake with its clock pinned at NOW: its limits are judged against the instant the test
    computed its timestamps from, never a second reading of the wall clock."""
    stripe_fake[0].state.clock = lambda: NOW
    return stripe_fake


def client(base: str, key: str = KEY) -> stripe.StripeClient:
    return stripe.StripeClient(key, base_addresses={"api": base, "meter_events": base}, max_network_retries=0)


@pytest.fixture
def api(fake: tuple[FakeStripe, str]) -> stripe.StripeClient:
    return client(fake[1])


def setup_meter(api: stripe.StripeClient, event_name: str = "api_calls") -> tuple[str, str]:
    meter = api.v1.billing.meters.create(
        {"display_name": "API calls", "event_name": event_name, "default_aggregation": {"formula": "sum"}}
    )
    customer = api.v1.customers.create(
        {"email": "a@example.com", "metadata": {"meterline_customer_id": "cust-1"}}
    )
    return meter.id, customer.id


def report(
    api: stripe.StripeClient, customer: str, value: Any, timestamp: int, identifier: str, **options: Any
) -> Any:
    return api.v1.billing.meter_events.create(
        {
            "event_name": "api_calls",
            "payload": {"stripe_customer_id": customer, "value": str(value)},
            "timestamp": timestamp,
            "identifier": identifier,
        },
        options,  # type: ignore[arg-type]
    )


def summaries(
    api: stripe.StripeClient, meter: str, customer: str, start: int, end: int, **extra: str
) -> list[Any]:
    listed = api.v1.billing.meters.event_summaries.list(
        meter,
        {"customer": customer, "start_time": start, "end_time": end, **extra},  # type: ignore[typeddict-item]
    )
    return list(listed.auto_paging_iter())


def test_meter_events_sum_into_summaries_by_hour_and_day(api: stripe.StripeClient) -> None:
    meter, customer = setup_meter(api)
    hour = (NOW - 3 * 3600) // 3600 * 3600
    for n, (offset, value) in enumerate([(60, 5), (120, 7), (3600 + 60, 11)]):
        event = report(api, customer, value, hour + offset, f"id-{n}")
        assert (event.identifier, event.payload["value"], event.timestamp) == (
            f"id-{n}",
            str(value),
            hour + offset,
        )
    whole = summaries(api, meter, customer, hour, hour + 2 * 3600)
    assert [s.aggregated_value for s in whole] == [23]
    by_hour = summaries(api, meter, customer, hour, hour + 2 * 3600, value_grouping_window="hour")
    assert [(s.start_time, s.end_time, s.aggregated_value) for s in by_hour] == [
        (hour, hour + 3600, 12),
        (hour + 3600, hour + 7200, 11),
    ]


def test_summaries_need_minute_aligned_bounds(api: stripe.StripeClient) -> None:
    meter, customer = setup_meter(api)
    start = NOW // MINUTE * MINUTE - 3600
    with pytest.raises(stripe.InvalidRequestError, match="minute boundaries"):
        summaries(api, meter, customer, start + 1, start + 3600)


def test_an_identifier_is_accepted_once_within_24_hours(
    fake: tuple[FakeStripe, str], api: stripe.StripeClient
) -> None:
    _, customer = setup_meter(api)
    report(api, customer, 5, NOW - 600, "same")
    with pytest.raises(stripe.InvalidRequestError) as refused:
        report(api, customer, 5, NOW - 600, "same")
    assert refused.value.code == "duplicate_meter_event"
    fake[0].state.clock = lambda: NOW + 86_400 + 1  # a day later the identifier is free again
    report(api, customer, 5, NOW + 86_400 - 600, "same")
    assert len(fake[0].state.meter_events) == 2


@pytest.mark.parametrize(
    ("age", "code"),
    [(35 * 86_400 + 60, "timestamp_too_far_in_past"), (-(5 * 60 + 60), "timestamp_in_future")],
)
def test_timestamps_beyond_35_days_past_or_5_minutes_ahead_are_refused(
    fake: tuple[FakeStripe, str], api: stripe.StripeClient, age: int, code: str
) -> None:
    _, customer = setup_meter(api)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        report(api, customer, 1, NOW - age, f"t-{age}")
    assert refused.value.code == code
    report(api, customer, 1, NOW - 35 * 86_400 + 60, "inside-past")
    report(api, customer, 1, NOW + 4 * 60, "inside-future")


def test_values_must_be_whole_numbers(api: stripe.StripeClient) -> None:
    _, customer = setup_meter(api)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        report(api, customer, "1.5", NOW - 60, "half")
    assert refused.value.code == "meter_event_invalid_value"


def test_a_value_of_more_than_15_digits_is_refused(api: stripe.StripeClient) -> None:
    """ "rejects billing meter event values with more than 15 significant digits"
    (https://docs.stripe.com/changelog/dahlia/2026-04-22/billing-meter-event-values-validation):
    the fake counts every digit of an integer, the stricter reading, so that a test never passes on
    a value Stripe might refuse."""
    _, customer = setup_meter(api)
    report(api, customer, 999_999_999_999_999, NOW - 60, "fifteen")
    with pytest.raises(stripe.InvalidRequestError) as refused:
        report(api, customer, 1_000_000_000_000_000, NOW - 60, "sixteen")
    assert refused.value.code == "meter_event_value_too_many_digits"


def test_a_negative_value_lowers_the_meter_s_sum(api: stripe.StripeClient) -> None:
    """ "You can also fix incorrectly recorded usage data by recording negative quantities"
    (https://docs.stripe.com/billing/subscriptions/usage-based/meters/configure): how a `last`
    meter's level falls (sinks.stripe.levels)."""
    meter, customer = setup_meter(api)
    minute = (NOW - 3600) // MINUTE * MINUTE
    report(api, customer, 10, minute, "level-10")
    report(api, customer, -6, minute + 60, "level-4")
    assert [s.aggregated_value for s in summaries(api, meter, customer, minute, minute + 120)] == [4]


def test_an_unknown_customer_is_accepted_then_reported_as_an_error(
    fake: tuple[FakeStripe, str], api: stripe.StripeClient
) -> None:
    setup_meter(api)
    report(api, "cus_nobody", 3, NOW - 60, "lost")  # Stripe processes meter events asynchronously
    assert fake[0].state.error_reports[-1]["code"] == "meter_event_customer_not_found"
    assert fake[0].state.meter_events == []


def test_an_idempotency_key_replays_the_first_result_and_refuses_other_parameters(
    fake: tuple[FakeStripe, str], api: stripe.StripeClient
) -> None:
    _, customer = setup_meter(api)
    first = report(api, customer, 5, NOW - 60, "k1", idempotency_key="key-1")
    again = report(api, customer, 5, NOW - 60, "k1", idempotency_key="key-1")
    assert again.last_response.headers.get("Idempotent-Replayed") == "true"  # type: ignore[union-attr]
    assert again.to_dict() == first.to_dict() and len(fake[0].state.meter_events) == 1
    with pytest.raises(stripe.IdempotencyError, match="same parameters"):
        report(api, customer, 6, NOW - 60, "k1", idempotency_key="key-1")


def test_an_injected_500_is_not_saved_but_a_dropped_answer_is(
    fake: tuple[FakeStripe, str], api: stripe.StripeClient
) -> None:
    _, customer = setup_meter(api)
    fake[0].faults = Faults(error_rate=1.0)
    with pytest.raises(stripe.APIError):
        report(api, customer, 5, NOW - 60, "e1", idempotency_key="key-e")
    fake[0].faults = Faults()
    assert report(api, customer, 5, NOW - 60, "e1", idempotency_key="key-e").identifier == "e1"
    fake[0].faults = Faults(drop_rate=1.0)
    with pytest.raises(stripe.APIConnectionError):
        report(api, customer, 7, NOW - 60, "d1", idempotency_key="key-d")
    fake[0].faults = Faults()
    replay = report(api, customer, 7, NOW - 60, "d1", idempotency_key="key-d")  # it had worked
    assert replay.last_response.headers.get("Idempotent-Replayed") == "true"  # type: ignore[union-attr]
    assert [e.identifier for e in fake[0].state.meter_events] == ["e1", "d1"]


def test_a_500_after_execution_began_is_saved_and_replayed_under_its_key(
    fake: tuple[FakeStripe, str], api: stripe.StripeClient
) -> None:
    """https://docs.stripe.com/api/idempotent_requests: Stripe saves "the resulting status code and
    body of the first request made for any given idempotency key, regardless of whether it succeeds
    or fails ... including 500 errors", once the endpoint began execution."""
    _, customer = setup_meter(api)
    fake[0].faults = Faults(execution_error_rate=1.0)
    with pytest.raises(stripe.APIError) as first:
        report(api, customer, 5, NOW - 60, "x1", idempotency_key="key-x")
    fake[0].faults = Faults()
    with pytest.raises(stripe.APIError) as again:
        report(api, customer, 5, NOW - 60, "x1", idempotency_key="key-x")
    assert (first.value.http_status, again.value.http_status) == (500, 500)
    assert again.value.headers.get("Idempotent-Replayed") == "true"  # type: ignore[union-attr]
    assert [e.identifier for e in fake[0].state.meter_events] == ["x1"]  # it had executed


def test_the_sink_s_call_settles_a_saved_500_under_a_new_key_for_meter_events_only(
    fake: tuple[FakeStripe, str], api: stripe.StripeClient
) -> None:
    from meterline.sinks.stripe.calls import Caller, RateLimiter
    from meterline.sinks.stripe.report import Report, Status

    _, customer = setup_meter(api)
    caller = Caller(fake[1], KEY, 5, RateLimiter(1000), "2024-06-20")
    window = (NOW - 3600) * 1000
    aggregate = window_aggregate("cust-1", "api_calls", window, value=9, closed_at=window)
    product = api.v1.products.create({"name": "API calls"})
    price = api.v1.prices.create(
        {
            "product": product.id,
            "currency": "usd",
            "unit_amount_decimal": "0.1",
            "recurring": {"interval": "month"},
        }
    )
    subscription = api.v1.subscriptions.create(
        {"customer": customer, "items": [{"price": price.id}], "backdate_start_date": NOW - 86_400}
    )
    fake[0].faults = Faults(execution_error_rate=1.0)
    outcome = caller.meter_event(Report(aggregate, customer, "api_calls"))
    # Recorded on the first call (a 500 saved), then, under a new key, refused as a duplicate
    # identifier: delivered once, and known to be.
    assert (outcome.status, outcome.error_code) == (Status.SENT, "duplicate_meter_event")
    assert [e.value for e in fake[0].state.meter_events] == [9]
    # A usage record has no identifier to dedup a new key on: it fails with the reason instead.
    item = subscription["items"]["data"][0]["id"]
    legacy = caller.usage_record(Report(aggregate, customer, "api_calls", subscription_item=item))
    assert (legacy.status, legacy.error_code) == (Status.FAILED, "stripe_saved_500")
    assert sum(r["quantity"] for r in fake[0].state.usage_records[item]) == 9  # recorded, once


def test_beyond_the_rate_limit_stripe_answers_429(
    fake: tuple[FakeStripe, str], api: stripe.StripeClient
) -> None:
    _, customer = setup_meter(api)
    fake[0].faults = Faults(rate_limit_per_second=5)
    outcomes = []
    for n in range(20):
        try:
            report(api, customer, 1, NOW - 60, f"r{n}")
            outcomes.append("ok")
        except stripe.RateLimitError as exc:
            assert exc.http_status == 429
            outcomes.append("429")
    assert "429" in outcomes and outcomes.count("ok") >= 1


def test_the_v2_stream_takes_up_to_100_events_with_a_15_minute_session(
    fake: tuple[FakeStripe, str], api: stripe.StripeClient
) -> None:
    _, customer = setup_meter(api)
    session = api.v2.billing.meter_event_session.create()
    stream = client(fake[1], session.authentication_token)

    def events(count: int, prefix: str) -> list[dict[str, Any]]:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(NOW - 120))
        return [
            {
                "event_name": "api_calls",
                "identifier": f"{prefix}-{n}",
                "payload": {"stripe_customer_id": customer, "value": "2"},
                "timestamp": stamp,
            }
            for n in range(count)
        ]

    stream.v2.billing.meter_event_stream.create({"events": events(100, "s")})  # type: ignore[typeddict-item]
    assert sum(e.value for e in fake[0].state.meter_events) == 200
    with pytest.raises(stripe.InvalidRequestError, match="At most 100"):
        stream.v2.billing.meter_event_stream.create({"events": events(101, "t")})  # type: ignore[typeddict-item]
    fake[0].state.clock = lambda: NOW + 15 * 60 + 1  # the session's 15 minutes are over
    with pytest.raises(stripe.TemporarySessionExpiredError) as expired:
        stream.v2.billing.meter_event_stream.create({"events": events(1, "u")})  # type: ignore[typeddict-item]
    assert expired.value.http_status == 401
    # v2's documented error for it (https://docs.stripe.com/api/v2/billing/meter-event-stream/create:
    # "401 billing_meter_event_session_expired"), with the error object's doc_url
    # (https://docs.stripe.com/api/errors).
    assert expired.value.code == "billing_meter_event_session_expired"
    assert expired.value.json_body is not None
    assert expired.value.json_body["error"]["doc_url"] == (
        "https://stripe.com/docs/error-codes/billing-meter-event-session-expired"
    )


def legacy_price(api: stripe.StripeClient, **extra: str) -> str:
    """A legacy metered price (no meter: made under a Stripe-Version before basil) on a new product."""
    product = api.v1.products.create({"name": "API"})
    price = api.v1.prices.create(
        {
            "product": product.id,
            "currency": "usd",
            "unit_amount_decimal": "0.1",
            "recurring": {"interval": "month", "usage_type": "metered"},
            **extra,
        },  # type: ignore[typeddict-item]
        {"stripe_version": LEGACY_VERSION},
    )
    return str(price.id)


def legacy_item(api: stripe.StripeClient, customer: str, started: int) -> str:
    subscription = api.v1.subscriptions.create(
        {"customer": customer, "items": [{"price": legacy_price(api)}], "backdate_start_date": started}  # type: ignore[typeddict-item]
    )
    return str(subscription["items"]["data"][0]["id"])


def usage_summaries(fake: tuple[FakeStripe, str], item: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(
        f"{fake[1]}/v1/subscription_items/{item}/usage_record_summaries",
        headers={"Authorization": f"Bearer {KEY}", "Stripe-Version": "2024-06-20"},
    )
    found: list[dict[str, Any]] = json.loads(urllib.request.urlopen(request).read())["data"]
    return found


def test_legacy_usage_records_need_an_api_version_before_basil(
    fake: tuple[FakeStripe, str], api: stripe.StripeClient
) -> None:
    _, customer = setup_meter(api)
    item = legacy_item(api, customer, NOW - 86_400)
    path = f"/v1/subscription_items/{item}/usage_records"
    with pytest.raises(stripe.InvalidRequestError, match="not available in this API version"):
        api.raw_request("post", path, quantity=5, timestamp=NOW - 60, action="increment")
    old = {"stripe_version": "2024-06-20"}
    for quantity in (5, 7):
        api.raw_request("post", path, quantity=quantity, timestamp=NOW - 60, action="increment", **old)  # type: ignore[arg-type]
    assert usage_summaries(fake, item)[0]["total_usage"] == 12


def test_a_usage_record_lies_in_the_item_s_current_period_and_set_overwrites_its_timestamp(
    fake: tuple[FakeStripe, str], api: stripe.StripeClient
) -> None:
    """https://stripe.com/docs/api/usage_records/create: the timestamp "must be within the current
    billing period of the subscription of the provided subscription_item, and must not be in the
    future"; "The set action will overwrite the usage quantity at that timestamp"; summaries come
    one per billing period, newest first."""
    _, customer = setup_meter(api)
    started = NOW - 40 * 86_400  # the second monthly period is the current one
    item = legacy_item(api, customer, started)
    path = f"/v1/subscription_items/{item}/usage_records"
    old = {"stripe_version": "2024-06-20"}

    def record(quantity: int, timestamp: int, action: str = "increment") -> None:
        api.raw_request("post", path, quantity=quantity, timestamp=timestamp, action=action, **old)  # type: ignore[arg-type]

    for too_early_or_late in (started + 60, NOW + 60):  # the previous period; the future
        with pytest.raises(stripe.InvalidRequestError, match="current period"):
            record(1, too_early_or_late)
    record(5, NOW - 120)
    record(7, NOW - 120)  # same timestamp: adds up
    record(3, NOW - 60)
    record(4, NOW - 120, "set")  # overwrites the 12 at NOW - 120, leaves the 3
    summaries = usage_summaries(fake, item)
    assert [s["total_usage"] for s in summaries] == [7, 0]  # current period first, then the first one
    assert summaries[0]["period"]["start"] > summaries[1]["period"]["start"] == started


def test_a_subscription_s_billing_period_is_on_its_items_since_basil(
    fake: tuple[FakeStripe, str], api: stripe.StripeClient
) -> None:
    """https://docs.stripe.com/changelog/basil/2025-03-31/deprecate-subscription-current-period-start-and-end:
    "current_period_start and current_period_end fields are no longer available on the subscription
    resource"; the items carry them. Older API versions see the subscription's."""
    _, customer = setup_meter(api)
    legacy_item(api, customer, NOW - 86_400)
    [now_shape] = api.v1.subscriptions.list({"customer": customer}).data
    assert "current_period_start" not in now_shape
    assert now_shape["items"]["data"][0]["current_period_start"] == NOW - 86_400
    listed = api.raw_request("get", "/v1/subscriptions", customer=customer, stripe_version="2024-06-20")
    [old_shape] = json.loads(listed.body)["data"]
    assert (old_shape["current_period_start"], "current_period_start" in old_shape["items"]["data"][0]) == (
        NOW - 86_400,
        False,
    )


def test_event_summaries_grouped_by_hour_or_day_need_bounds_aligned_to_them(
    fake: tuple[FakeStripe, str], api: stripe.StripeClient
) -> None:
    """https://docs.stripe.com/api/billing/meter-event-summary/list, value_grouping_window: "For
    hourly granularity, start and end times must align with hour boundaries ... For daily
    granularity, start and end times must align with UTC day boundaries (00:00 UTC).\""""
    meter, customer = setup_meter(api)
    day = NOW // 86_400 * 86_400 - 86_400  # yesterday, 00:00 UTC
    with pytest.raises(stripe.InvalidRequestError, match="aligned with hour boundaries"):
        summaries(api, meter, customer, day + 60, day + 3600, value_grouping_window="hour")
    with pytest.raises(stripe.InvalidRequestError, match="aligned with day boundaries"):
        summaries(api, meter, customer, day + 3600, day + 86_400, value_grouping_window="day")
    assert summaries(api, meter, customer, day, day + 86_400, value_grouping_window="day") == []
    assert summaries(api, meter, customer, day + 3600, day + 7200, value_grouping_window="hour") == []


def test_requests_without_an_api_key_are_refused(fake: tuple[FakeStripe, str]) -> None:
    request = urllib.request.Request(f"{fake[1]}/v1/billing/meters")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 401


@pytest.mark.parametrize(
    ("code", "message", "duplicate"),
    [
        ("duplicate_meter_event", "An event with this identifier already exists.", True),
        (None, "An event with identifier 'mtr-1' already exists.", True),  # the message alone says so
        (None, "Duplicate identifier: mtr-1", True),
        ("timestamp_too_far_in_past", "The identifier's event is too old.", False),
        (None, "No such customer: 'cus_x'", False),
    ],
)
def test_a_duplicate_identifier_is_known_by_its_code_or_its_message(
    code: str | None, message: str, duplicate: bool
) -> None:
    """The page documents uniqueness "within a rolling period of at least 24 hours"
    (https://docs.stripe.com/api/billing/meter-event/create), not the error's form: the safe
    reading is to take only a clear duplicate for delivered, and refuse everything else."""
    from meterline.sinks.stripe.calls import is_duplicate_identifier

    exc = stripe.InvalidRequestError(message, "identifier", code=code)
    assert is_duplicate_identifier(exc) is duplicate


def test_the_fake_refuses_what_stripe_s_specification_refuses(api: stripe.StripeClient) -> None:
    """Issue 35, item 7. The specification (2025-09-30.clover, tests/integration/test_stripe_mock.py
    holds the fake's table to it) bounds a meter event's `identifier` and a meter's `event_name` at
    100 characters and a price's `lookup_key` at 200; an unknown parameter is `parameter_unknown`
    and an integer that is not one `parameter_invalid_integer` (https://docs.stripe.com/error-codes).
    The page of codes names none for a string too long: the fake answers 400 naming the parameter,
    which is what the sink needs to refuse the report for good."""
    meter, customer = setup_meter(api)
    refused: list[tuple[str | None, str | None]] = []
    attempts: list[Any] = [
        lambda: report(api, customer, 1, NOW, "i" * 101),
        lambda: api.v1.billing.meters.create(
            {"display_name": "Long", "event_name": "e" * 101, "default_aggregation": {"formula": "sum"}}
        ),
        lambda: api.v1.prices.create(
            {"currency": "usd", "product_data": {"name": "p"}, "unit_amount": 1, "lookup_key": "k" * 201}
        ),
        lambda: api.v1.customers.create({"metadata": {"a": "b"}, "colour": "blue"}),  # type: ignore[typeddict-unknown-key]
        lambda: api.raw_request(
            "get",
            f"/v1/billing/meters/{meter}/event_summaries",
            customer=customer,
            start_time="soon",
            end_time=NOW,
        ),
    ]
    for attempt in attempts:
        with pytest.raises(stripe.InvalidRequestError) as error:
            attempt()
        refused.append((error.value.code, error.value.param))
    assert refused == [
        (None, "identifier"),
        (None, "event_name"),
        (None, "lookup_key"),
        ("parameter_unknown", "colour"),
        ("parameter_invalid_integer", "start_time"),
    ]
    assert len(report(api, customer, 1, NOW, "i" * 100).identifier) == 100  # the limit itself is taken


def test_a_meter_error_report_is_a_thin_event_stripe_python_parses_and_fetches(
    fake: tuple[FakeStripe, str], api: stripe.StripeClient
) -> None:
    """https://docs.stripe.com/api/v2/core/events/object: the notification has no data; the event
    fetched has the errors by type, with sample errors naming each request's identifier."""
    errors = [
        {"identifier": f"id-{n}", "code": "meter_event_customer_not_found", "message": "No such customer"}
        for n in range(7)
    ]
    notification = fake[0]._thin_event(
        "evt_t1", {"type": "v1.billing.meter.error_report_triggered", "errors": errors}, NOW
    )
    parsed = api.parse_event_notification_without_verification(json.dumps(notification))
    assert (parsed.type, parsed.created) == (
        "v1.billing.meter.error_report_triggered",
        notification["created"],
    )
    event = parsed.fetch_event()
    [error_type] = event.data.reason.error_types
    assert (error_type.code, error_type.error_count) == ("meter_event_customer_not_found", 7)
    # Samples, not all: meterline must not rely on a report naming every refused event.
    assert [e.request.identifier for e in error_type.sample_errors] == [f"id-{n}" for n in range(5)]


def test_the_directory_finds_a_trialing_subscription_s_item_and_looks_again_after_a_plan_change(
    fake: tuple[FakeStripe, str], api: stripe.StripeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial bills its metered usage too (its subscription's status is `trialing`,
    https://docs.stripe.com/billing/subscriptions/trials); an item found is looked up again after a
    few minutes, as a plan change replaces it, and at once after a subscription event."""
    from types import SimpleNamespace

    from meterline.config import load_config
    from meterline.sinks.stripe import directory
    from meterline.sinks.stripe.calls import Caller, RateLimiter

    _, customer = setup_meter(api)
    price = legacy_price(api, lookup_key="meterline_api_calls")
    trial = api.v1.subscriptions.create(
        {"customer": customer, "items": [{"price": price}], "trial_period_days": 14}  # type: ignore[typeddict-item]
    )
    assert trial["status"] == "trialing"
    clock = [1000.0]
    monkeypatch.setattr(directory, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    found = directory.Directory(
        load_config(None, {}).stripe, Caller(fake[1], KEY, 5, RateLimiter(1000), "2024-06-20")
    )
    assert [i.id for i in found.subscription_items(customer, "api_calls")] == [
        trial["items"]["data"][0]["id"]
    ]
    fake[0].state.subscriptions.clear()  # the plan changed: that item is gone
    changed = api.v1.subscriptions.create({"customer": customer, "items": [{"price": price}]})
    assert [i.id for i in found.subscription_items(customer, "api_calls")] == [
        trial["items"]["data"][0]["id"]
    ]  # cached
    clock[0] += directory.ITEM_TTL_S + 1
    assert [i.id for i in found.subscription_items(customer, "api_calls")] == [
        changed["items"]["data"][0]["id"]
    ]
    # A subscription event about the customer: looked up again at once, whatever the TTL.
    fake[0].state.subscriptions.clear()
    again = api.v1.subscriptions.create({"customer": customer, "items": [{"price": price}]})
    found.forget_items([customer])
    assert [i.id for i in found.subscription_items(customer, "api_calls")] == [
        again["items"]["data"][0]["id"]
    ]


def test_a_price_s_tiers_come_back_only_when_expanded_and_typed(api: stripe.StripeClient) -> None:
    """Issue 35, item 3. The price object's `tiers`: "This field is not included by default. To
    include it in the response, expand the `tiers` field"; each tier's `up_to` is an integer, null
    for the last, its amounts integers and decimal strings
    (https://docs.stripe.com/api/prices/object#price_object-tiers). A reader of tiers that does not
    expand them (the demo's "Stripe would bill" did) meets a KeyError on real Stripe."""
    product = api.v1.products.create({"name": "tiered"})
    created = api.v1.prices.create(
        {
            "product": product.id,
            "currency": "usd",
            "recurring": {"interval": "month", "usage_type": "licensed"},
            "billing_scheme": "tiered",
            "tiers_mode": "graduated",
            "tiers": [
                {"up_to": 1000, "unit_amount_decimal": Decimal("0"), "flat_amount": 200},
                {"up_to": "inf", "unit_amount_decimal": "0.1"},
            ],
            "lookup_key": "tiered-key",
        }
    )
    assert "tiers" not in created
    [listed] = api.v1.prices.list({"lookup_keys": ["tiered-key"]}).data
    assert "tiers" not in listed
    [expanded] = api.v1.prices.list({"lookup_keys": ["tiered-key"], "expand": ["data.tiers"]}).data
    # stripe-python reads the spec's decimal strings as Decimals
    assert expanded.to_dict()["tiers"] == [
        {
            "up_to": 1000,
            "unit_amount": 0,
            "unit_amount_decimal": Decimal("0"),
            "flat_amount": 200,
            "flat_amount_decimal": Decimal("200"),
        },
        {
            "up_to": None,
            "unit_amount": None,
            "unit_amount_decimal": Decimal("0.1"),
            "flat_amount": None,
            "flat_amount_decimal": None,
        },
    ]


def test_a_meter_reads_the_payload_keys_it_was_made_with(
    fake: tuple[FakeStripe, str], api: stripe.StripeClient
) -> None:
    """Issue 35, item 4. A meter's "Payload key overrides" name the keys of the customer and the
    value (https://docs.stripe.com/billing/subscriptions/usage-based/meters/configure); an event
    without them is accepted and reported asynchronously ("Customer mapping key ... not found in
    payload", https://docs.stripe.com/api/v2/core/events/object)."""
    api.v1.billing.meters.create(
        {
            "display_name": "tokens",
            "event_name": "api_calls",
            "default_aggregation": {"formula": "sum"},
            "value_settings": {"event_payload_key": "tokens"},
        }
    )
    customer = api.v1.customers.create({"metadata": {"meterline_customer_id": "cust-1"}}).id
    report(api, customer, 3, NOW - 60, "with-value")  # meterline's payload: `value`, not `tokens`
    assert fake[0].state.error_reports[-1]["code"] == "meter_event_value_not_found"
    api.v1.billing.meter_events.create(
        {
            "event_name": "api_calls",
            "payload": {"stripe_customer_id": customer, "tokens": "4"},
            "identifier": "t",
        }
    )
    assert [e.value for e in fake[0].state.meter_events] == [4]


def test_the_directory_reads_a_customer_s_subscriptions_to_the_last_page(
    fake: tuple[FakeStripe, str], api: stripe.StripeClient
) -> None:
    """Issue 35, item 7. A list answers 10 objects unless asked for more ("limit ... defaults to
    10", https://docs.stripe.com/api/pagination): a customer whose item billing the meter is on
    its 11th subscription was not found, and its legacy usage was refused."""
    from meterline.config import load_config
    from meterline.sinks.stripe.calls import Caller, RateLimiter
    from meterline.sinks.stripe.directory import Directory

    _, customer = setup_meter(api)
    product = api.v1.products.create({"name": "API"})
    other = api.v1.prices.create(
        {
            "product": product.id,
            "currency": "usd",
            "unit_amount_decimal": "100",
            "recurring": {"interval": "month"},
        }  # type: ignore[typeddict-item]
    )
    for _ in range(10):
        api.v1.subscriptions.create({"customer": customer, "items": [{"price": other.id}]})
    metered = legacy_price(api, lookup_key="meterline_api_calls")
    last = api.v1.subscriptions.create({"customer": customer, "items": [{"price": metered}]})
    directory = Directory(
        load_config(None, {}).stripe, Caller(fake[1], KEY, 5, RateLimiter(1000), "2024-06-20")
    )
    assert [i.id for i in directory.subscription_items(customer, "api_calls")] == [
        last["items"]["data"][0]["id"]
    ]


def test_a_metered_price_without_a_meter_exists_only_before_basil(api: stripe.StripeClient) -> None:
    """Issue 35, item 1: "You can no longer create a price with a usage_type of metered without a
    specified meter" from 2025-03-31.basil on
    (https://docs.stripe.com/changelog/basil/2025-03-31/deprecate-legacy-usage-based-billing); a
    legacy account's Stripe-Version still can, and only such prices take usage records."""
    product = api.v1.products.create({"name": "API"})
    legacy = {
        "product": product.id,
        "currency": "usd",
        "unit_amount_decimal": "0.1",
        "recurring": {"interval": "month", "usage_type": "metered"},
    }
    with pytest.raises(stripe.InvalidRequestError, match="A metered price needs a meter"):
        api.v1.prices.create(legacy)  # type: ignore[arg-type]
    made = api.v1.prices.create(legacy, {"stripe_version": LEGACY_VERSION})  # type: ignore[arg-type]
    assert made.to_dict()["recurring"] == {"interval": "month", "interval_count": 1, "usage_type": "metered"}


# The properties Stripe's specification marks required on the objects the fake returns, with their
# JSON types: facts of the OpenAPI specification 2025-09-30.clover, as stripe-mock v0.197.0 bundles
# it (embedded/openapi/spec3.json, components.schemas.<object>.required).
REQUIRED = {
    "billing.meter": {
        "created": "integer",
        "customer_mapping": "object",
        "default_aggregation": "object",
        "display_name": "string",
        "event_name": "string",
        "id": "string",
        "livemode": "boolean",
        "object": "string",
        "status": "string",
        "status_transitions": "object",
        "updated": "integer",
        "value_settings": "object",
    },
    "product": {
        "active": "boolean",
        "created": "integer",
        "id": "string",
        "images": "array",
        "livemode": "boolean",
        "marketing_features": "array",
        "metadata": "object",
        "name": "string",
        "object": "string",
        "updated": "integer",
    },
    "price": {
        "active": "boolean",
        "billing_scheme": "string",
        "created": "integer",
        "currency": "string",
        "id": "string",
        "livemode": "boolean",
        "metadata": "object",
        "object": "string",
        "product": "string",
        "type": "string",
    },
    "recurring": {"interval": "string", "interval_count": "integer", "usage_type": "string"},
    "customer": {"created": "integer", "id": "string", "livemode": "boolean", "object": "string"},
    "subscription": {
        "automatic_tax": "object",
        "billing_cycle_anchor": "integer",
        "billing_mode": "object",
        "cancel_at_period_end": "boolean",
        "collection_method": "string",
        "created": "integer",
        "currency": "string",
        "customer": "string",
        "discounts": "array",
        "id": "string",
        "invoice_settings": "object",
        "items": "object",
        "livemode": "boolean",
        "metadata": "object",
        "object": "string",
        "start_date": "integer",
        "status": "string",
    },
    "subscription_item": {
        "created": "integer",
        "current_period_end": "integer",
        "current_period_start": "integer",
        "discounts": "array",
        "id": "string",
        "metadata": "object",
        "object": "string",
        "price": "object",
        "subscription": "string",
    },
    "billing.meter_event": {
        "created": "integer",
        "event_name": "string",
        "identifier": "string",
        "livemode": "boolean",
        "object": "string",
        "payload": "object",
        "timestamp": "integer",
    },
    "billing.meter_event_summary": {
        "aggregated_value": "number",
        "end_time": "integer",
        "id": "string",
        "livemode": "boolean",
        "meter": "string",
        "object": "string",
        "start_time": "integer",
    },
}
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,),
    "number": (int, float),
    "string": (str,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def missing_or_mistyped(shape: str, found: dict[str, Any]) -> list[str]:
    wrong = []
    for name, kind in REQUIRED[shape].items():
        value = found.get(name, KeyError)
        ok = isinstance(value, JSON_TYPES[kind]) and not (
            kind in ("integer", "number") and isinstance(value, bool)
        )
        if not ok:
            wrong.append(f"{shape}.{name}: {value!r} is not {kind}")
    return wrong


def test_every_object_the_fake_returns_carries_the_properties_stripe_s_specification_requires(
    fake: tuple[FakeStripe, str],
) -> None:
    """Issue 35, item 7: the fake's objects as Stripe's specification describes them (REQUIRED
    above): a client reading a required property of the real object must find it here too."""
    import json as json_module
    import urllib.request

    def call(method: str, path: str, form: str = "", version: str = "") -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/x-www-form-urlencoded"}
        if version:
            headers["Stripe-Version"] = version
        request = urllib.request.Request(fake[1] + path, form.encode() or None, headers, method=method)
        with urllib.request.urlopen(request) as answer:
            found: dict[str, Any] = json_module.loads(answer.read())
            return found

    meter = call(
        "POST", "/v1/billing/meters", "display_name=m&event_name=api_calls&default_aggregation[formula]=sum"
    )
    product = call("POST", "/v1/products", "name=API")
    price = call(
        "POST",
        "/v1/prices",
        f"product={product['id']}&currency=usd&unit_amount_decimal=0.1&recurring[interval]=month"
        f"&recurring[usage_type]=metered&recurring[meter]={meter['id']}",
    )
    customer = call("POST", "/v1/customers", "metadata[meterline_customer_id]=c")
    subscription = call(
        "POST", "/v1/subscriptions", f"customer={customer['id']}&items[0][price]={price['id']}"
    )
    event = call(
        "POST",
        "/v1/billing/meter_events",
        f"event_name=api_calls&payload[stripe_customer_id]={customer['id']}&payload[value]=3"
        f"&timestamp={NOW - 120}",
    )
    summaries = call(
        "GET",
        f"/v1/billing/meters/{meter['id']}/event_summaries?customer={customer['id']}"
        f"&start_time={(NOW - 3600) // 60 * 60}&end_time={(NOW + 60) // 60 * 60}",
    )
    wrong = [
        *missing_or_mistyped("billing.meter", meter),
        *missing_or_mistyped("product", product),
        *missing_or_mistyped("price", price),
        *missing_or_mistyped("recurring", price["recurring"]),
        *missing_or_mistyped("customer", customer),
        *missing_or_mistyped("subscription", subscription),
        *(
            w
            for item in subscription["items"]["data"]
            for w in missing_or_mistyped("subscription_item", item)
        ),
        *missing_or_mistyped("billing.meter_event", event),
        *(w for s in summaries["data"] for w in missing_or_mistyped("billing.meter_event_summary", s)),
    ]
    assert summaries["data"] and wrong == []
