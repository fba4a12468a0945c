"""Configuration: defaults, overrides, every problem reported at once, secrets never printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meterline.config import load_config
from meterline.core.config import ConfigError, Secret
from tests.support.cli import meterline
from tests.support.config import problems_of


def test_the_defaults_are_valid() -> None:
    config = load_config(None, {})
    assert config.windows.size_ms == 60_000
    assert config.meters["api_calls"].billable == {"status": ("2??",)}
    assert config.meter_units == {
        "api_calls": "call",
        "egress_bytes": "byte",
        "compute_ms": "millisecond",
        "seats": "seat",
        "active_users": "user",
        "tokens": "token",
        "storage": "GB",
    }
    assert config.unique_attributes == {"active_users": "user"}
    assert config.levels == {"seats": "max"} and config.plans["team"].prices["seats"].overage_price == 10


def test_three_mistakes_are_all_reported_by_config_check(tmp_path: Path) -> None:
    path = tmp_path / "meterline.toml"
    path.write_text(
        "[windows]\nsize_minutes = 3\n\n[kafka]\npartitions = 0\n\n"
        '[meters.api_calls]\nunit = "call"\naggregation = "average"\n'
    )
    result = meterline("--config", str(path), "config", "check")
    assert result.returncode == 1
    assert "3 problem(s)" in result.stderr
    assert "kafka.partitions = 0: must be at least 1" in result.stderr
    assert "windows.size_minutes = 3: must be 1 or 5" in result.stderr
    assert "meters.api_calls.aggregation = 'average': must be one of sum, count, max" in result.stderr
    as_json = json.loads(meterline("--config", str(path), "config", "check", "--json").stdout)
    assert [p["field"] for p in as_json["problems"]] == [
        "kafka.partitions",
        "windows.size_minutes",
        "meters.api_calls.aggregation",
    ]


def test_config_check_passes_on_the_defaults_and_lists_meters() -> None:
    result = meterline("config", "check")
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout and "api_calls" in result.stdout


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text("[windows]\nsize_minutes = 1\n")
    config = load_config(path, {"METERLINE__WINDOWS__SIZE_MINUTES": "5", "KAFKA_BOOTSTRAP": "10.0.0.1:9092"})
    assert config.windows.size_minutes == 5
    assert config.kafka.bootstrap == "10.0.0.1:9092"


def test_unknown_keys_sections_and_types_are_named() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            None,
            {
                "METERLINE__WINDOWS__SIZE_MINUTE": "5",
                "METERLINE__KAFKA__PARTITIONS": "many",
                "METERLINE__COLOUR__RED": "1",
            },
        )
    text = str(caught.value)
    assert (
        "windows.size_minute = '5': unknown key" in text
        and "(set by METERLINE__WINDOWS__SIZE_MINUTE)" in text
    )
    assert "kafka.partitions = 'many': must be an integer" in text
    assert "colour = {'red': '1'}: unknown section" in text


def test_secrets_are_never_printed(tmp_path: Path) -> None:
    secret = "sk_live_do_not_print_me"
    config = load_config(None, {"STRIPE_API_KEY": secret, "CLICKHOUSE_PASSWORD": "hunter2"})
    assert config.stripe.api_key.reveal() == secret
    assert secret not in repr(config) and "hunter2" not in repr(config)
    assert repr(Secret(secret)) == "Secret('***')"
    bad = meterline("config", "check", env={"STRIPE_API_KEY": "pk_live_wrong_kind_of_key"})
    assert bad.returncode == 1
    assert "stripe.api_key = ***: a Stripe secret key starts with" in bad.stderr
    assert "pk_live_wrong_kind_of_key" not in bad.stderr + bad.stdout


def test_plan_mistakes_are_config_errors_reported_together() -> None:
    raw_env = {
        "METERLINE__PLANS__STANDARD__PRICES__API_CALLS__UNIT": "second",  # the meter counts calls
        "METERLINE__PLANS__STANDARD__PRICES__API_CALLS__OVERAGE_PRICE": "0.1",  # a float, not "0.1"
        "METERLINE__BILLING__CUSTOMERS": '{ "cust-1" = "gold" }',
    }
    with pytest.raises(ConfigError) as error:
        load_config(None, raw_env)
    fields = {p.field: p.why for p in error.value.problems}
    assert "unit mismatch" in fields["plans.standard.prices.api_calls.unit"]
    assert "string" in fields["plans.standard.prices.api_calls.overage_price"]
    assert "gold" in fields["billing.customers"]


def test_the_default_plan_is_the_seed_s_rate_card() -> None:
    from decimal import Decimal

    config = load_config(None, {})
    price = config.plan_for("anyone").prices["api_calls"]
    assert (price.included, price.overage_price, price.billed_unit) == (
        Decimal(1_000_000),
        Decimal("0.001"),
        "call",
    )


def test_prices_stripe_cannot_bill_and_currencies_it_does_not_list_are_reported_at_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "meterline.toml"
    path.write_text(
        '[plans.standard]\ncurrency = "usd"\n\n'
        "[plans.standard.prices.compute_ms]\n"  # Stripe cannot divide a tiered price's quantity
        'unit = "millisecond"\nper = 1000\ntiers_mode = "graduated"\n'
        'tiers = [{ up_to = 3600, unit_price = "0" }, { unit_price = "0.0001" }]\n\n'
        "[plans.standard.prices.egress_bytes]\n"  # nor round it half up
        'unit = "byte"\nper = 1000000000\ndecimals = 2\nrounding = "half_up"\noverage_price = "0.09"\n\n'
        '[plans.mars]\ncurrency = "xyz"\n\n'
        '[plans.yen]\ncurrency = "JPY"\n'
    )
    result = meterline("--config", str(path), "config", "check", "--json")
    problems = {p["field"]: p["why"] for p in json.loads(result.stdout)["problems"]}
    assert result.returncode == 1
    assert "not compatible with tiered pricing" in problems["plans.standard.prices.compute_ms"]
    assert "not half up" in problems["plans.standard.prices.egress_bytes"]
    assert "billed_by_stripe = false" in problems["plans.standard.prices.egress_bytes"]
    assert problems["plans.mars.currency"].startswith("currency 'xyz': not one of Stripe's currencies")
    assert problems["plans.yen.currency"] == "write it in lowercase, as Stripe does: 'jpy'"


def test_a_price_not_billed_through_stripe_is_priced_and_labelled_so(tmp_path: Path) -> None:
    from meterline.reconciler.billing.invoice_text import rows
    from meterline.reconciler.billing.pricing import invoice

    path = tmp_path / "meterline.toml"
    path.write_text(
        "[plans.standard.prices.egress_bytes]\n"
        'unit = "byte"\nlabel = "egress"\nper = 1000000000\ndecimals = 2\nrounding = "half_up"\n'
        'overage_price = "0.09"\nbilled_by_stripe = false\n'
    )
    plan = load_config(path, {}).plans["standard"]
    bill = invoice(plan, {"egress_bytes": 1_235_000_000})
    assert (str(bill.total), str(bill.stripe_total)) == ("0.11", "0.00")
    assert [r["line"] for r in rows(bill)] == [
        "egress (not billed through Stripe)",
        "  egress",
        "Billed through Stripe",
        "Total",
    ]


def test_the_dedup_horizon_is_the_lateness_horizon_unless_shortened_to_a_day_or_more() -> None:
    """Issue 34, DESIGN §4: ids are held as long as an event can change a bill, never less than
    Stripe's 24 hours; `config check` says what a shorter horizon gives up. The old setting in
    seconds is refused by name, with what replaced it."""
    assert load_config(None, {}).windows.dedup_horizon_days == 35
    assert load_config(None, {"METERLINE__WINDOWS__MAX_LATENESS_DAYS": "10"}).windows.dedup_horizon_days == 10
    assert (
        load_config(None, {"METERLINE__WINDOWS__DEDUP_HORIZON_DAYS": "1"}).windows.dedup_horizon_ms
        == 86_400_000
    )
    with pytest.raises(ConfigError) as caught:
        load_config(
            None,
            {
                "METERLINE__WINDOWS__DEDUP_HORIZON_DAYS": "0",
                "METERLINE__WINDOWS__DEDUP_RETENTION_SECONDS": "3600",
            },
        )
    assert [(p.field, p.value) for p in caught.value.problems] == [
        ("windows.dedup_retention_seconds", "3600"),  # as the environment gave it
        ("windows.dedup_horizon_days", 0),
    ]
    assert "replaced by windows.dedup_horizon_days" in caught.value.problems[0].why
    assert "Stripe's 24 hours" in caught.value.problems[1].why
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"METERLINE__WINDOWS__DEDUP_HORIZON_DAYS": "36"})
    assert "must be between 1 and 35" in caught.value.problems[0].why

    default = meterline("config", "check", "--json")
    assert json.loads(default.stdout)["dedup"]["horizon_days"] == 35
    shorter = meterline("config", "check", env={"METERLINE__WINDOWS__DEDUP_HORIZON_DAYS": "2"})
    assert shorter.returncode == 0, shorter.stderr
    assert (
        "dedup: event ids are held 2 days past a window's end or last close (plus a day of margin), "
        "less than the 35-day lateness horizon: a duplicate arriving after that in its partition's "
        "event time (a batch re-sent after an outage, a backfill) is counted again"
    ) in shorter.stdout


def test_config_check_bounds_what_stripe_bounds() -> None:
    """Issue 35, item 7: a meter event name over 100 characters (maxLength in Stripe's OpenAPI
    specification) and a price lookup key over 200 ("This may be up to 200 characters",
    https://docs.stripe.com/api/prices/object) are refused by `config check`, not by Stripe at
    `stripe sync`."""
    long_plan = "p" * 190
    with pytest.raises(ConfigError) as caught:
        load_config(
            None,
            {
                "METERLINE__METERS__API_CALLS__STRIPE_EVENT_NAME": "e" * 101,
                f"METERLINE__PLANS__{long_plan.upper()}__CURRENCY": "usd",
                f"METERLINE__PLANS__{long_plan.upper()}__PRICES": (
                    '{ api_calls = { overage_price = "0.001" } }'
                ),
            },
        )
    whys = {p.field: p.why for p in caught.value.problems}
    assert whys["meters.api_calls.stripe_event_name"] == (
        "is 101 characters: Stripe's meter event names take at most 100 "
        "(set by METERLINE__METERS__API_CALLS__STRIPE_EVENT_NAME)"
    )
    assert whys[f"plans.{long_plan}"].startswith(
        f"the price lookup key 'meterline_{long_plan}_api_calls' is 210"
    )
    assert load_config(None, {"METERLINE__METERS__API_CALLS__STRIPE_EVENT_NAME": "e" * 100})


def test_a_max_meter_is_declared_with_its_reset(tmp_path: Path) -> None:
    path = tmp_path / "meterline.toml"
    path.write_text('[meters.seats]\nunit = "seat"\naggregation = "max"\nreset = "calendar_month"\n')
    seats = load_config(path, {}).meters["seats"]
    assert (seats.aggregation, seats.reset, seats.level) == ("max", "calendar_month", True)
    assert not load_config(None, {}).meters["api_calls"].level


def test_a_unique_count_meter_names_its_attribute_and_only_it_does(tmp_path: Path) -> None:
    path = tmp_path / "meterline.toml"
    path.write_text(
        '[meters.active_users]\nunit = "user"\naggregation = "unique_count"\nunique_by = "user"\n'
    )
    config = load_config(path, {})
    assert (not config.meters["active_users"].level, config.unique_attributes) == (
        True,
        {"active_users": "user"},
    )
    found = problems_of(
        tmp_path,
        '[meters.active_users]\nunit = "user"\naggregation = "unique_count"\n'
        '[meters.calls]\nunit = "call"\nunique_by = "user"\n',
    )
    assert found["meters.active_users.unique_by"].startswith("a unique_count meter names the attribute")
    assert (
        found["meters.calls.unique_by"]
        == 'only a unique_count meter counts distinct values; this one is "sum"'
    )


def test_a_last_meter_is_a_level_beside_the_peak() -> None:
    config = load_config(None, {"METERLINE__METERS__EGRESS_BYTES__AGGREGATION": "last"})
    assert config.levels == {"seats": "max", "egress_bytes": "last"} and config.meters["egress_bytes"].level


def test_a_last_meter_is_refused_with_legacy_usage_records_which_take_no_negative_quantity() -> None:
    """Usage records add a non-negative quantity (https://stripe.com/docs/api/usage_records/create):
    a level that falls could not be billed. A peak only rises, and is accepted."""
    legacy = {"METERLINE__STRIPE__MODE": "usage_records"}
    assert load_config(None, legacy).levels == {"seats": "max"}
    with pytest.raises(ConfigError) as raised:
        load_config(None, {**legacy, "METERLINE__METERS__EGRESS_BYTES__AGGREGATION": "last"})
    [problem] = raised.value.problems
    assert problem.field == "meters.egress_bytes.aggregation"
    assert problem.why.startswith('stripe.mode = "usage_records" cannot lower usage by an increment')


def test_a_reset_not_metered_yet_is_refused_by_name(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path, '[meters.seats]\nunit = "seat"\naggregation = "max"\nreset = "billing_period"\n'
    )
    assert found["meters.seats.reset"].startswith("is not metered yet: periods are UTC calendar months")


def test_a_time_weighted_meter_is_priced_in_its_level_by_the_second(tmp_path: Path) -> None:
    """Its usage is the level accrued by the second: a price in the events' unit is refused, naming
    the unit it must be written in."""
    found = problems_of(
        tmp_path,
        '[meters.storage]\nunit = "GB"\naggregation = "time_weighted"\n'
        '[plans.standard]\ncurrency = "usd"\n'
        '[plans.standard.prices.storage]\nunit = "GB"\noverage_price = "1"\n',
    )
    assert "GB-second" in found["plans.standard.prices.storage.unit"]


def test_two_meters_reporting_into_one_stripe_meter_are_refused(tmp_path: Path) -> None:
    """One Stripe meter per event name (https://docs.stripe.com/billing/subscriptions/usage-based/
    recording-usage: "You can only use an event name with a single meter"): two meters sharing one
    would bill each other's usage at their prices."""
    found = problems_of(
        tmp_path,
        '[meters.calls]\nunit = "call"\n[meters.calls_v2]\nunit = "call"\nstripe_event_name = "calls"\n',
    )
    why = found["meters.calls_v2.stripe_event_name"]
    assert why.startswith("meters calls and calls_v2 would report into one Stripe meter")


def test_exactly_once_is_refused_with_the_evidence() -> None:
    """Faust's exactly_once ran on Apache Kafka 4.1.1: exact through SIGKILLs, but after a rebalance
    its transactions fenced the surviving worker's producer and stopped the worker (README, "The
    stream app"), and it never covered meterline's own writes."""
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"METERLINE__STREAM__PROCESSING_GUARANTEE": "exactly_once"})
    [problem] = caught.value.problems
    assert problem.field == "stream.processing_guarantee"
    assert "fenced the surviving worker's producer" in problem.why and "use at_least_once" in problem.why
    assert load_config(None, {}).stream.processing_guarantee == "at_least_once"


def test_an_environment_override_is_typed_by_its_field_and_named_in_its_problem() -> None:
    config = load_config(
        None,
        {
            "METERLINE__NOTICES__SMTP_PASSWORD": "123456",  # a string field: digits stay a string
            "METERLINE__KAFKA__PARTITIONS": "6",
            "METERLINE__CLICKHOUSE__RAW_EVENTS": "true",
            "METERLINE__METERS__ACTIVE_USERS__UNIQUE_BY": '"account"',  # TOML's quoted string still works
        },
    )
    assert config.notices.smtp_password.reveal() == "123456"
    assert config.kafka.partitions == 6 and config.clickhouse.raw_events is True
    assert config.meters["active_users"].unique_by == "account"
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"METERLINE__KAFKA__PARTITIONS": "many", "KAFKA_SASL_PASSWORD": "left-over"})
    assert {str(p) for p in caught.value.problems} >= {
        "kafka.partitions = 'many': must be an integer (set by METERLINE__KAFKA__PARTITIONS)",
    }
    assert any("(set by KAFKA_SASL_PASSWORD)" in str(p) for p in caught.value.problems)


def test_a_price_for_an_unknown_meter_is_one_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            None,
            {"METERLINE__PLANS__TEAM__PRICES__NO_SUCH_METER": '{ unit = "call", overage_price = "0.01" }'},
        )
    about = [str(p) for p in caught.value.problems if "no_such_meter" in p.field]
    assert about == [
        "plans.team.prices.no_such_meter = 'no_such_meter': no meter 'no_such_meter' in [meters] "
        "(set by METERLINE__PLANS__TEAM__PRICES__NO_SUCH_METER)"
    ]


def test_config_check_shows_the_rate_card_as_it_will_bill() -> None:
    shown = meterline("config", "check", "--json")
    assert shown.returncode == 0, shown.stderr
    plans = {(row["plan"], row["meter"]): row for row in json.loads(shown.stdout)["plans"]}
    assert plans[("team", "api_calls")]["price"] == "500000 call included, then 0.001 usd per call"
    assert plans[("team", "storage")]["price"] == "0.10 usd per GB-month (2592000 GB-second each)"
    assert plans[("standard", "compute_ms")]["price"] == (
        "graduated: up to 3600000 at 0 usd, then at 0.0000001 usd per millisecond"
    )
    assert plans[("team", "seats")]["base fee"] == "" and any(
        row["base fee"] == "29" for (plan, _), row in plans.items() if plan == "team"
    )
