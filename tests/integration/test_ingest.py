"""`meterline ingest` on the broker: a batch of CloudEvents answered event by event, the accepted
ones on usage.events as the SDK would have sent them, a retried batch the same events again (the
stream counts an event id once), and every refusal class with its reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings

from core.config import Config
from schemas.cloudevents import STRUCTURED
from schemas.records import UsageEvent
from schemas.serde import AvroSerde
from tests.conftest import local_broker
from tests.support.ingest import KEY, cloud_event, post, start_ingest, stop
from tests.support.kafka import read_messages


def test_a_batch_is_answered_event_by_event_and_lands_as_the_sdk_sends_it(
    config: Config, tmp_path: Path
) -> None:
    process, url = start_ingest(config.kafka.bootstrap, config.topics.events, tmp_path, "ingest")
    try:
        batch = [cloud_event(n) for n in range(1, 6)]
        batch.append({**cloud_event(6), "subject": ""})  # no customer
        batch.append(cloud_event(7, unit="byte"))  # the wrong unit for api_calls
        batch.append(cloud_event(8, quantity=-1))
        status, _, answer = post(url, batch)
        assert status == 200, answer
        assert (answer["accepted"], answer["refused"], answer["retry"]) == (5, 3, 0)
        assert [(r["id"], r["status"], r.get("field"), r.get("reason")) for r in answer["results"]] == [
            *[(f"evt-{n}", "accepted", None, None) for n in range(1, 6)],
            ("evt-6", "refused", "subject", "malformed"),
            ("evt-7", "refused", "unit", "unit_mismatch"),
            ("evt-8", "refused", "quantity", "negative_quantity"),
        ]
        # A retried batch: the same events again, the same answers (the stream dedups by id).
        assert post(url, batch[:5])[0] == 200
        # One event, structured: accepted; refused it is a 400 with its reason.
        assert post(url, cloud_event(9), STRUCTURED)[2]["accepted"] == 1
        status, _, single = post(url, {**cloud_event(10), "time": "noon"}, STRUCTURED)
        assert status == 400 and single["results"][0]["field"] == "time"
        # Refused whole, each with its reason, nothing sent.
        assert post(url, batch, key="")[0] == 401
        assert post(url, batch, key="ml_wrong")[0] == 401
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
        "evt-4", "cust-1", "api_calls", 4, "call", 1_796_119_200_000, "//billing-svc", {"status": "200"}
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
            case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"})

        answers_as_documented()
    finally:
        stop(process)
