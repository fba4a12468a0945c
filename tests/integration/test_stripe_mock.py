"""Issue 35, item 8: every v1 request meterline makes, checked by Stripe's own validator
(stripe-mock, tests/support/stripe_mock.py). meterline's flows run against the fake behind a
recorder, so that they take their real branches (creating what is missing); each request is then
sent to stripe-mock as it went. stripe-mock does not serve v2 (the meter event stream), and the
legacy usage records endpoint is not in the current specification (issue 35, item 1)."""

from __future__ import annotations

import dataclasses
import json
import re
from decimal import Decimal

from meterline.core.config import Config
from meterline.core.ratecard import Tier
from meterline.demo import _onboard
from meterline.schemas.serde import new_aggregate
from meterline.sinks.stripe.calls import Caller, RateLimiter
from meterline.sinks.stripe.catalog.prices import lookup_key
from meterline.sinks.stripe.catalog.sync import sync
from meterline.sinks.stripe.directory import Directory
from meterline.sinks.stripe.fake import FakeStripe
from meterline.sinks.stripe.report import Report
from meterline.sinks.stripe.totals import StripeTotals
from meterline.workload import WorkloadSpec
from tests.support.stripe import KEY
from tests.support.stripe_mock import Recorder, replay, requires_stripe_mock, stripe_mock, stripe_mock_spec

pytestmark = requires_stripe_mock
__all__ = ["stripe_mock"]  # the module's fixture

MINUTE_MS = 60_000


def tiered(config: Config) -> Config:
    """The default rate card with api_calls on graduated tiers, a base fee in the first tier."""
    standard = config.plans["standard"]
    calls = dataclasses.replace(
        standard.prices["api_calls"],
        included=Decimal(0),
        overage_price=None,
        tiers_mode="graduated",
        tiers=(Tier(Decimal(1000), Decimal(0), Decimal(200)), Tier(None, Decimal("0.001"))),
    )
    plan = dataclasses.replace(standard, prices={**standard.prices, "api_calls": calls})
    return dataclasses.replace(config, plans={"standard": plan})


def test_every_v1_request_meterline_makes_is_one_stripe_s_validator_accepts(
    config: Config, stripe_fake: tuple[FakeStripe, str], stripe_mock: str
) -> None:
    fake, base = stripe_fake
    fake.state.clock = lambda: 1_796_000_000
    fake.state.search_lag_seconds = 0  # the request shapes are checked here, not search's lag
    recorder = Recorder(base)
    try:
        at_recorder = dataclasses.replace(
            config, stripe=dataclasses.replace(config.stripe, api_base=recorder.url)
        )
        caller = Caller(recorder.url, KEY, 5, RateLimiter(1000), config.stripe.legacy_api_version)
        # `stripe sync` of the default rate card, and the demo's onboarding: sync again, customers
        # searched and created
        sync(config, caller)
        _onboard(at_recorder, WorkloadSpec(seed=1, events=1, customers=2, start_ms=0, span_ms=1))
        # a tiered rate card replaces the api_calls price
        sync(tiered(config), caller)
        # the demo's check of what Stripe would bill reads prices with their tiers
        caller.client.v1.prices.list(
            {"lookup_keys": [lookup_key("standard", "api_calls")], "expand": ["data.tiers"]}
        )
        # the Stripe sink: the customer, its subscription items, a meter event
        directory = Directory(config.stripe, caller)
        stripe_customer = directory.customer("cust-0000")
        assert stripe_customer is not None
        directory.subscription_items(stripe_customer, "api_calls")
        window = (1_796_000_000 - 3600) * 1000 // MINUTE_MS * MINUTE_MS
        aggregate = new_aggregate("cust-0000", "api_calls", window, window + MINUTE_MS, 0, 7, 7, 3, 0, window)
        caller.meter_event(Report(aggregate, stripe_customer, "api_calls"))
        # reconcile: Stripe's totals from meter event summaries
        StripeTotals(caller, config).total(
            "cust-0000", "api_calls", window - 59 * MINUTE_MS, window + MINUTE_MS
        )
    finally:
        recorder.close()

    made = {
        (s.method, re.sub(r"/(mtr|cus|prod|meterline)_[^/?]*", "/{id}", s.path.split("?")[0]))
        for s in recorder.sent
    }
    assert made >= {
        ("GET", "/v1/billing/meters"),
        ("POST", "/v1/billing/meters"),
        ("GET", "/v1/products/{id}"),
        ("POST", "/v1/products"),
        ("GET", "/v1/prices"),
        ("POST", "/v1/prices"),
        ("GET", "/v1/customers/search"),
        ("POST", "/v1/customers"),
        ("GET", "/v1/subscriptions"),
        ("POST", "/v1/billing/meter_events"),
        ("GET", "/v1/billing/meters/{id}/event_summaries"),
    }, made
    refused = []
    for sent in recorder.sent:
        status, body = replay(stripe_mock, sent)
        if status >= 400:
            refused.append((sent.method, sent.path, sent.body.decode(), status, body[:300]))
    assert refused == []
    # and the validator is at work: a meter event with a parameter Stripe does not have is refused
    event = next(sent for sent in recorder.sent if sent.path == "/v1/billing/meter_events")
    status, body = replay(stripe_mock, dataclasses.replace(event, body=event.body + b"&value_in_cents=7"))
    assert status == 400 and "additional properties are not allowed" in body, (status, body)


def test_the_fake_takes_exactly_the_parameters_stripe_s_specification_lists() -> None:
    """Issue 35, item 7: the fake refuses a parameter Stripe does not know, an integer or boolean
    that is not one and a string over its length (sinks.stripe.fake.params); its table of what each
    endpoint takes is the specification's, read here from the one stripe-mock bundles."""
    from meterline.sinks.stripe.fake.params import ACCEPTED, SPEC_VERSION

    spec = json.loads(stripe_mock_spec().read_text())
    assert spec["info"]["version"] == SPEC_VERSION
    templates = {re.sub(r"\{[^}]+\}", "([^/]+)", path): path for path in spec["paths"]}
    for (verb, route), accepted in ACCEPTED.items():
        operation = spec["paths"][templates[route]][verb.lower()]
        if verb == "GET":
            listed = {
                p["name"]: (p["schema"].get("type") or "", p["schema"].get("maxLength"))
                for p in operation.get("parameters", [])
                if p["in"] == "query"
            }
        else:
            form = operation["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
            listed = {
                name: (schema.get("type") or "", schema.get("maxLength"))
                for name, schema in form.get("properties", {}).items()
            }
        assert accepted == listed, (verb, route)
