"""`meterline ingest` on the broker: a batch of CloudEvents answered event by event, the accepted
ones on usage.events as the SDK would have sent them, a retried batch the same events again (the
stream counts an event id once), and every refusal class with its reason."""

from __future__ import annotations

import dataclasses
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from meterline.compose import clickhouse_sink, stripe_sink
from meterline.core.config import Config
from meterline.core.kafka import read_ends
from meterline.schemas.cloudevents import STRUCTURED, from_usage_event
from meterline.schemas.records import UsageEvent
from meterline.schemas.serde import AvroSerde
from meterline.sinks.stripe.fake import FakeStripe
from meterline.workload import Expected, customer_ids, generate
from tests.conftest import local_broker
from tests.support.clickhouse_sink import assert_exact, run_pipeline
from tests.support.ingest import HOUR_AGO, HOUR_AGO_MS, KEY, cloud_event, post, start_ingest, stop
from tests.support.kafka import read_messages
from tests.support.pipeline import Workers, small_workload
from tests.support.sinks import run_sink
from tests.support.stripe import set_up_stripe
from tests.support.stripe_sink import assert_reported_exactly


def test_a_batch_is_answered_event_by_event_and_lands_as_the_sdk_sends_it(
    config: Config, tmp_path: Path
) -> None:
    process, url = start_ingest(config.kafka.bootstrap, config.topics.events, tmp_path, "ingest")
    try:
        batch = [cloud_event(n) for n in range(1, 6)]
        batch.append({**cloud_event(6), "subject": ""})  # no customer
        batch.append(cloud_event(7, unit="byte"))  # the wrong unit for api_calls
        batch.append(cloud_event(8, quantity=-1))
        batch.append(cloud_event(9, meter="active_users", unit="user"))  # a distinct count, no user
        # Judged at the door as the stream will judge them (against now, their records' time):
        batch.append({**cloud_event(11), "type": "com.acme.usage.no_such_meter"})
        batch.append({**cloud_event(12), "time": "2020-01-01T00:00:00Z"})
        batch.append({**cloud_event(13), "time": "2099-01-01T00:00:00Z"})
        status, _, answer = post(url, batch)
        assert status == 200, answer
        assert (answer["accepted"], answer["refused"], answer["retry"]) == (5, 7, 0)
        assert [(r["id"], r["status"], r.get("field"), r.get("reason")) for r in answer["results"]] == [
            *[(f"evt-{n}", "accepted", None, None) for n in range(1, 6)],
            ("evt-6", "refused", "subject", "malformed"),
            ("evt-7", "refused", "unit", "unit_mismatch"),
            ("evt-8", "refused", "quantity", "negative_quantity"),
            ("evt-9", "refused", "attributes.user", "missing_field"),
            ("evt-11", "refused", "meter", "unknown_meter"),
            ("evt-12", "refused", "timestamp", "too_late"),
            ("evt-13", "refused", "timestamp", "too_far_future"),
        ]
        # A retried batch: the same events again, the same answers (the stream dedups by id).
        assert post(url, batch[:5])[0] == 200
        # One event, structured: accepted; refused it is a 400 with its reason.
        assert post(url, cloud_event(9), STRUCTURED)[2]["accepted"] == 1
        status, _, single = post(url, {**cloud_event(10), "time": "noon"}, STRUCTURED)
        assert status == 400 and single["results"][0]["field"] == "time"
        # Refused whole, each with its reason, nothing sent.
        status, headers, refused = post(url, batch, key="")
        assert (status, headers["WWW-Authenticate"]) == (
            401,
            'Bearer realm="meterline-ingest"',
        )  # RFC 6750 §3
        assert refused["error"] == "an API key is required: Authorization: Bearer <key>"
        status, headers, refused = post(url, batch, key="ml_wrong")
        assert (status, headers["WWW-Authenticate"]) == (
            401,
            'Bearer realm="meterline-ingest", error="invalid_token"',
        )
        assert "not one of this ingest's keys" in refused["error"]
        wrong_method = urllib.request.Request(url, method="GET")
        with pytest.raises(urllib.error.HTTPError) as answered:
            urllib.request.urlopen(wrong_method, timeout=10)
        assert (answered.value.code, answered.value.headers["Allow"]) == (405, "POST")  # RFC 9110 §15.5.6
        assert post(url, batch, content_type="text/plain")[0] == 415
        assert post(url, {"not": "a batch"})[0] == 400
        assert post(url, [cloud_event(n) for n in range(1001)])[0] == 413
    finally:
        stop(process)

    serde = AvroSerde()
    events: list[UsageEvent] = []
    for message in read_messages(config.kafka.bootstrap, config.topics.events, 3):
        decoded = serde.decode_usage(message.value() or b"")
        assert decoded.is_batch  # packed, as the SDK packs them
        events += decoded.events
    ids = sorted(e.event_id for e in events)
    assert ids == sorted([f"evt-{n}" for n in range(1, 6)] * 2 + ["evt-9"])
    first = next(e for e in events if e.event_id == "evt-4")
    assert first == UsageEvent(
        "evt-4", "cust-1", "api_calls", 4, "call", HOUR_AGO_MS, "//billing-svc", {"status": "200"}
    )


def test_beyond_its_rate_a_key_waits_and_without_kafka_nothing_is_acknowledged(tmp_path: Path) -> None:
    with local_broker(tmp_path / "stack") as bootstrap:
        process, url = start_ingest(bootstrap, "usage.events", tmp_path, "ingest", rate="0.5")
        try:
            assert post(url, [cloud_event(1)])[0] == 200  # a burst of one (twice 0.5)
            status, headers, _ = post(url, [cloud_event(2)])
            assert status == 429 and int(headers["Retry-After"]) >= 1
        finally:
            stop(process)
        process, url = start_ingest(bootstrap, "usage.events", tmp_path, "ingest-2")
    try:  # the broker is gone: the event is answered retry, with 503, never accepted
        status, headers, answer = post(url, [cloud_event(3)])
        assert status == 503 and headers["Retry-After"] == "1"
        assert answer["results"] == [{"id": "evt-3", "status": "retry"}]
    finally:
        process.kill()
        process.wait(timeout=30)


def at_an_accepted_time(body: Any) -> Any:
    """A static document cannot say "within the lateness horizon of the server's clock" (the door
    refuses other times as too_late or too_far_future, as the stream would): a generated `time` that
    is a valid date-time moves to an hour ago, one that is not stays, so each case keeps its kind."""
    if isinstance(body, list):
        return [at_an_accepted_time(event) for event in body]
    if isinstance(body, dict) and isinstance(body.get("time"), str):
        try:
            datetime.fromisoformat(body["time"])
        except ValueError:
            return body
        return {**body, "time": HOUR_AGO}
    return body


def test_the_role_answers_as_its_openapi_document_says(config: Config, tmp_path: Path) -> None:
    """schemathesis's checks (no 5xx, statuses, content types and bodies as documented) over
    requests generated from the document the running role serves, positive and negative, with the
    source's key. Driven through hypothesis directly: schemathesis's pytest plugin does not load
    under this pytest."""
    process, url = start_ingest(config.kafka.bootstrap, config.topics.events, tmp_path, "ingest-api")
    try:
        schema = schemathesis.openapi.from_url(url.replace("/v1/events", "/openapi.json"))
        [operation] = [result.ok() for result in schema.get_all_operations()]
        strategy = operation.as_strategy()

        @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=strategy)
        def answers_as_documented(case: Any) -> None:
            case.body = at_an_accepted_time(case.body)
            case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"})

        answers_as_documented()
    finally:
        stop(process)


def test_events_posted_over_http_reach_clickhouse_and_stripe_exactly(
    config: Config, workers: Workers, stripe_fake: tuple[FakeStripe, str], ledger_dsn: str, tmp_path: Path
) -> None:
    """A workload's events (duplicates, out of order and non-billable ones among them) posted as
    CloudEvents in batches of 100, one batch sent twice: the stream, ClickHouse and Stripe are exact."""
    fake, base = stripe_fake
    spec = dataclasses.replace(small_workload(seed=93, events=3_000), malformed_rate=0.0, late_rate=0.0)
    meters = set_up_stripe(config, base, customer_ids(spec))
    expected = Expected(config.windows.size_ms)
    emissions = list(generate(spec, config.meters, config.windows.size_ms, expected))
    assert all(e.event is not None and e.valid for e in emissions)  # what HTTP can carry
    documents = [from_usage_event(e.event) for e in emissions if e.event is not None]
    process, url = start_ingest(config.kafka.bootstrap, config.topics.events, tmp_path, "ingest")
    try:
        for n, start in enumerate(range(0, len(documents), 100)):
            for _ in range(2 if n == 7 else 1):  # the eighth batch again, as a client's retry
                status, _, answer = post(url, documents[start : start + 100])
                assert status == 200 and answer["refused"] == 0, answer
    finally:
        stop(process)
    dead = run_pipeline(config, workers, expected.to_json(spec))
    ends = read_ends(config.kafka.bootstrap, [config.topics.aggregates, config.topics.events_dlq])
    run_sink(
        clickhouse_sink(config, config.kafka.bootstrap, dsn=ledger_dsn, group_id="test-ingest-ch"),
        config.kafka.bootstrap,
        ends,
    )
    assert_exact(config, ledger_dsn, expected, dead)
    stripe_config = dataclasses.replace(
        config, stripe=dataclasses.replace(config.stripe, api_base=base, requests_per_second=1000)
    )
    run_sink(
        stripe_sink(stripe_config, config.kafka.bootstrap, dsn=ledger_dsn, group_id="test-ingest-stripe"),
        config.kafka.bootstrap,
        ends,
    )
    assert_reported_exactly(config, fake, base, meters, spec, expected, ledger_dsn)
