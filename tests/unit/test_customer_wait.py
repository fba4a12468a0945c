"""A new customer's usage waits for Stripe to know it (issue 35 item 2): how long it waits, and how
customers become known without Stripe's search (webhook events, an imported file)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meterline.config import load_config
from meterline.core.config import ConfigError
from meterline.sinks.stripe.customers import CustomersFileError, KnownCustomer, parse_import
from meterline.sinks.stripe.report import Status, customer_wait_until
from meterline.sinks.stripe.webhooks.events import Malformed, known_customer

HOUR_MS = 3_600_000


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


STRIPE = load_config(None, {}).stripe


def test_by_default_a_window_waits_until_its_month_s_invoice_is_finalized() -> None:
    """The invoice of a period finalizes `invoice_grace_hours` (Stripe's default: 1 hour) after the
    period ends; usage reported later is not on it
    (https://docs.stripe.com/billing/subscriptions/usage-based/configure-grace-period). A customer
    Stripe does not know has no billing period meterline could know: its UTC month stands for it."""
    assert (STRIPE.invoice_grace_hours, STRIPE.customer_wait_hours) == (1, 0)
    start = ms("2026-11-14T10:03:00")
    assert customer_wait_until(start, start + 60_000, STRIPE) == ms("2026-12-01T01:00:00")
    # The last window of a month belongs to it, and December rolls into the next year.
    last = ms("2026-12-31T23:59:00")
    assert customer_wait_until(last, last + 60_000, STRIPE) == ms("2027-01-01T01:00:00")
    three_days = dataclasses.replace(STRIPE, invoice_grace_hours=72)
    assert customer_wait_until(start, start + 60_000, three_days) == ms("2026-12-04T00:00:00")


def test_a_configured_wait_counts_from_the_window_s_end() -> None:
    start = ms("2026-11-14T10:03:00")
    six_hours = dataclasses.replace(STRIPE, customer_wait_hours=6)
    assert customer_wait_until(start, start + 60_000, six_hours) == ms("2026-11-14T16:04:00")


def test_a_waiting_revision_is_not_done_and_not_lost() -> None:
    """The sink reports a waiting revision later; only sent, confirmed and failed ones are done."""
    assert {s for s in Status if s.done} == {Status.SENT, Status.CONFIRMED, Status.FAILED}


def test_the_config_refuses_a_grace_beyond_stripe_s_72_hours() -> None:
    with pytest.raises(ConfigError, match="invoice_grace_hours"):
        load_config(None, {"METERLINE__STRIPE__INVOICE_GRACE_HOURS": "73"})


def event(kind: str, customer: dict[str, object], created: int = 1_765_000_000) -> dict[str, object]:
    return {"id": "evt_1", "type": kind, "created": created, "data": {"object": customer}}


def test_customer_events_name_the_meterline_customer_of_a_stripe_customer() -> None:
    """customer.created, .updated and .deleted carry the customer object
    (https://docs.stripe.com/api/events/types); its metadata key names ours."""
    created = event("customer.created", {"id": "cus_A", "metadata": {"meterline_customer_id": "acme"}})
    assert known_customer(created, "meterline_customer_id") == KnownCustomer(
        "cus_A", "acme", "webhook", 1_765_000_000_000
    )
    unnamed = event("customer.updated", {"id": "cus_A", "metadata": {}})
    assert known_customer(unnamed, "meterline_customer_id").customer_id == ""
    deleted = event(
        "customer.deleted", {"id": "cus_A", "deleted": True, "metadata": {"meterline_customer_id": "a"}}
    )
    assert known_customer(deleted, "meterline_customer_id").customer_id == ""
    with pytest.raises(Malformed, match="metadata"):
        known_customer(event("customer.created", {"id": "cus_A", "metadata": ["x"]}), "meterline_customer_id")


def test_an_import_takes_a_csv_of_our_ids_and_stripe_s_and_reports_every_problem_by_line() -> None:
    taken = parse_import("customer_id,stripe_customer\nacme,cus_A\n\n globex , cus_B \n", now_ms=5)
    assert taken == [
        KnownCustomer("cus_A", "acme", "import", 5),
        KnownCustomer("cus_B", "globex", "import", 5),
    ]
    with pytest.raises(CustomersFileError) as refused:
        parse_import("acme,cus_A\nacme,cus_C\ninitech,acct_1\njust-one\n")
    assert str(refused.value).splitlines() == [
        "line 2: customer_id 'acme' is already on line 1",
        "line 3: stripe_customer 'acct_1' is not a Stripe customer id (cus_…)",
        "line 4: expected customer_id,stripe_customer, got ['just-one']",
    ]


def test_an_import_with_problems_takes_nothing_and_names_each_line(tmp_path: Path) -> None:
    """`meterline stripe customers --import`: every problem at once, before anything connects."""
    from tests.support.cli import meterline

    mapping = tmp_path / "customers.csv"
    mapping.write_text("customer_id,stripe_customer\nacme,cus_A\nacme,cus_B\ninitech,acct_1\n")
    answer = meterline("stripe", "customers", "--import", str(mapping))
    assert answer.returncode == 2
    assert answer.stderr.splitlines() == [
        f"error: {mapping}: nothing imported",
        "  line 3: customer_id 'acme' is already on line 2",
        "  line 4: stripe_customer 'acct_1' is not a Stripe customer id (cus_…)",
    ]
