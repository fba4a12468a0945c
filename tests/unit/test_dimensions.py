"""A meter priced per attribute value (issue 38): each declared value is a series, metered and
priced as a meter of its own; an event names the meter and carries the value, and the judge counts
it in its series. A value not declared is refused at every door, naming the attribute."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterline.config import load_config
from meterline.core.config import Config
from meterline.core.dimensions import declared_of
from meterline.reconciler.billing.pricing import invoice
from meterline.schemas.errors import InvalidEventError
from meterline.schemas.records import UsageEvent, WindowAggregate
from meterline.schemas.serde import AvroSerde
from meterline.schemas.validation import MeterRules, require_valid
from meterline.streams.judge import Judge
from meterline.streams.processor import PartitionProcessor, rules_from
from meterline.streams.state import UnsavedStore
from meterline.streams.windows import DAY_MS
from tests.support.config import problems_of

CONFIG = load_config(None, {})
SERDE = AvroSerde()
AT = 1_780_000_000_000


def tokens(n: int, attributes: dict[str, str], quantity: int = 100) -> UsageEvent:
    return UsageEvent(f"t{n}", "c", "tokens", quantity, "token", AT, "app", {"status": "200", **attributes})


def test_each_declared_value_is_a_meter_of_its_own_with_its_own_price() -> None:
    series = [name for name in CONFIG.meters if name.startswith("tokens")]
    assert series == ["tokens.small", "tokens.medium", "tokens.large"]
    assert [CONFIG.meters[s].stripe_event_name for s in series] == [
        "tokens_small",
        "tokens_medium",
        "tokens_large",
    ]
    assert declared_of(CONFIG.meters)["tokens"].dimensions == {"model": ("small", "medium", "large")}
    prices = CONFIG.plans["standard"].prices
    assert [str(prices[s].overage_price) for s in series] == ["0.0005", "0.003", "0.015"]
    assert [prices[s].label for s in series] == ["tokens small", "tokens medium", "tokens large"]
    # Each value's month is rounded up to whole thousands on its own, as each is a Stripe price.
    bill = invoice(CONFIG.plans["standard"], {"tokens.small": 1_500, "tokens.large": 2_001})
    lines = {line.meter: line for line in bill.lines}
    assert (lines["tokens.small"].amount, lines["tokens.large"].amount) == (
        CONFIG.plans["standard"].currency.round(2 * prices["tokens.small"].overage_price),
        CONFIG.plans["standard"].currency.round(3 * prices["tokens.large"].overage_price),
    )


def test_the_judge_counts_an_event_in_its_series_and_dead_letters_a_value_not_declared() -> None:
    judge = Judge(CONFIG, SERDE)
    events = [
        tokens(1, {"model": "large"}),
        tokens(2, {"model": "huge"}),
        tokens(3, {}),
        tokens(4, {"model": "small"}),
    ]
    verdict = judge(SERDE.encode_batch([SERDE.batch_item(e) for e in events]), AT)
    assert [(e.event_id, e.meter) for e in verdict.billable] == [
        ("t1", "tokens.large"),
        ("t4", "tokens.small"),
    ]
    assert [(r.index, r.reason) for r in verdict.rejections] == [
        (1, "unknown_dimension_value"),
        (2, "missing_field"),
    ]
    rules = MeterRules.of(declared_of(CONFIG.meters).values())
    with pytest.raises(InvalidEventError) as refused:
        require_valid(tokens(5, {"model": "huge"}), CONFIG.meter_units, rules)
    assert (refused.value.reason, refused.value.field, refused.value.value) == (
        "unknown_dimension_value",
        "attributes.model",
        "huge",
    )
    assert "prices the models small, medium, large" in str(refused.value)


def test_config_check_names_what_stripe_cannot_bill_per_value(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        '[meters.tokens]\nunit = "token"\ndimensions = { model = ["a", "b"], region = ["eu", "us east"] }\n'
        '[meters.calls]\nunit = "call"\ndimensions = { tier = ["1.0", "1_0"] }\n'
        '[plans.standard]\ncurrency = "usd"\n'
        '[plans.standard.prices.tokens]\nunit = "token"\noverage_price = "1"\nshared = true\n'
        'values = { c = { overage_price = "2" }, b = "2" }\n',
    )
    assert "letters, digits" in found["meters.tokens.dimensions.region"]
    assert "values must differ" in found["meters.calls.dimensions.tier"]
    assert found["plans.standard.prices.tokens.values.c"].startswith("not a declared value of tokens")
    assert "cannot be shared across values" in found["plans.standard.prices.tokens.shared"]
    assert found["plans.standard.prices.tokens.values.b"].startswith("the fields this value prices otherwise")


def test_a_meter_without_dimensions_keeps_its_name_and_event_name() -> None:
    assert (CONFIG.meters["api_calls"].name, CONFIG.meters["api_calls"].stripe_event_name) == (
        "api_calls",
        "api_calls",
    )
    assert not CONFIG.meters["api_calls"].declared and CONFIG.meter_units["tokens"] == "token"


def test_an_alert_rule_targets_one_value(tmp_path: Path) -> None:
    path = tmp_path / "meterline.toml"
    path.write_text('[alerts.rules.standard."tokens.large"]\nspend = ["1.00"]\n')
    [rule] = load_config(path, {}).alerts.rules
    assert (rule.plan, rule.meter) == ("standard", "tokens.large")


def test_a_plan_stripe_could_not_subscribe_a_customer_to_is_refused(tmp_path: Path) -> None:
    """ "A list of up to 20 subscription items, each with an attached price"
    (https://docs.stripe.com/api/subscriptions/create): a plan of more prices billed by Stripe could
    not be one subscription."""
    values = ", ".join(f'"m{n}"' for n in range(20))
    found = problems_of(
        tmp_path,
        f'[meters.tokens]\nunit = "token"\ndimensions = {{ model = [{values}] }}\n'
        '[plans.standard]\ncurrency = "usd"\nbase_fee = "5"\n'
        '[plans.standard.prices.tokens]\nunit = "token"\noverage_price = "1"\n',
    )
    assert found["plans.standard.prices"].startswith("a subscription holds at most 20 items")


def test_a_meter_without_dimensions_folds_as_it_did_before_any_meter_had_them(tmp_path: Path) -> None:
    """The same api_calls under a rate card with no dimensions and under the default one (tokens per
    model): the same windows, identities and values, so a history stored before reconciles after."""
    path = tmp_path / "meterline.toml"
    path.write_text(
        '[meters.api_calls]\nunit = "call"\nstripe_event_name = "api_calls"\n'
        '[plans.standard]\ncurrency = "usd"\n'
    )
    before = load_config(path, {})
    calls = [
        UsageEvent(f"a{n}", "c", "api_calls", n, "call", AT + n * 7_000, "app", {"status": "200"})
        for n in range(30)
    ]
    record = SERDE.encode_batch([SERDE.batch_item(e) for e in calls])
    tick = SERDE.encode_batch([])

    def aggregates(config: Config) -> list[WindowAggregate]:
        judge, processor = Judge(config, SERDE), PartitionProcessor(0, rules_from(config), UnsavedStore())
        out = processor.process(0, AT, judge(record, AT))
        return out + processor.process(1, AT + DAY_MS, judge(tick, AT + DAY_MS))

    assert not any(m.dimensions for m in declared_of(before.meters).values())
    assert aggregates(CONFIG) == aggregates(before) and len(aggregates(before)) == 5
