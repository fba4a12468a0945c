"""Invoice-ready notices: `meterline webhooks` takes invoice.finalized (twice, and the same invoice
under another event id), and a real SMTP server on loopback (aiosmtpd) receives one message that
explains the invoice in the rate card's terms; the notice is kept on the notices topic once."""

from __future__ import annotations

import json
import signal
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from meterline.core.config import Config
from meterline.core.kafka import committed_reaches, read_ends
from meterline.reconciler.billing.periods import period_bounds
from meterline.reconciler.billing.pricing import invoice
from meterline.reconciler.notices.compose import compose
from meterline.sinks.clickhouse.client import connect
from meterline.sinks.clickhouse.rows import REVISION_COLUMNS
from meterline.sinks.stripe.fake import FakeStripe
from tests.support.clickhouse_sink import fresh
from tests.support.kafka import read_messages
from tests.support.pipeline import free_port
from tests.support.webhooks import post, start_webhooks

NOV_START, NOV_END = period_bounds("2026-11")
CALLS = (700_000, 500_000)  # the seed's month: 1,200,000 API calls, 1,000,000 included, $0.001 beyond


class Inbox:
    """aiosmtpd's handler: every message the server accepted."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = message_from_bytes(envelope.content, policy=default)
        assert isinstance(mail, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), mail))
        return "250 OK"


def test_a_finalized_invoice_sends_one_notice_in_the_rate_card_s_terms(
    config: Config, stripe_fake: tuple[FakeStripe, str], tmp_path: Path
) -> None:
    fake, base = stripe_fake
    dsn = f"chdb://{tmp_path / 'clickhouse'}"
    fresh(config, dsn)
    client = connect(config, dsn)
    try:
        starts = [NOV_START + n * 3_600_000 for n in range(len(CALLS))]
        windows = [
            ["cust-seed", "api_calls", at, at + 60_000, 0, 0, calls, calls, 1, at + 90_000]
            for at, calls in zip(starts, CALLS, strict=True)
        ]
        client.insert("usage_window_revisions", windows, column_names=list(REVISION_COLUMNS))
    finally:
        client.close()
    subscriber = fake.state.create_customer({"metadata": {"meterline_customer_id": "cust-seed"}})
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    env = {
        "METERLINE__NOTICES__SMTP_HOST": "127.0.0.1",
        "METERLINE__NOTICES__SMTP_PORT": str(smtp.port),
        "METERLINE__NOTICES__SENDER": "billing@meterline.example",
        "METERLINE__NOTICES__DASHBOARD_URL": "https://usage.example",
    }
    stripe_invoice = {
        "id": "in_seed_nov",
        "object": "invoice",
        "customer": subscriber["id"],
        "customer_email": "ap@customer.example",
        "status": "open",
        "currency": "usd",
        "total": 20_000,
        "period_start": NOV_START // 1000,
        "period_end": NOV_END // 1000,
        "hosted_invoice_url": "https://invoice.stripe.example/in_seed_nov",
        "lines": {"data": [{"description": "API calls", "quantity": 1_200_000, "amount": 20_000}]},
    }
    process, log_path = start_webhooks(config, base, dsn, tmp_path, env)
    try:
        for event_id in ("evt_final_1", "evt_final_1", "evt_final_2"):  # a repeat, then a second event
            event = {"id": event_id, "type": "invoice.finalized", "object": stripe_invoice}
            assert post(base, "/_fake/events", event)["status"] == 200
        ends = read_ends(config.kafka.bootstrap, [config.topics.webhooks])
        while not committed_reaches(config.kafka.bootstrap, "test-webhooks", ends):
            assert process.poll() is None, log_path.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        smtp.stop()

    [(recipients, mail)] = inbox.messages
    assert recipients == ["ap@customer.example"]
    assert mail["Subject"] == "Your invoice for 2026-11-01 to 2026-12-01: $200.00"
    assert mail["Message-ID"] == "<invoice-in_seed_nov@meterline>"
    body = mail.get_content().replace("\r\n", "\n")  # decoded; SMTP's line ends
    # The seed's invoice, line by line: included, overage at its rate, the total; then the links.
    bill = invoice(config.plans["standard"], {"api_calls": sum(CALLS)})
    assert body == compose(stripe_invoice, "cust-seed", bill, "https://usage.example").body
    for text in (
        "Included API calls: 1,000,000 at $0.00 = $0.00",
        "Overage API calls: 200,000 at $0.001 = $200.00",
        "Total: $200.00",
        "https://usage.example/customers/cust-seed?period=2026-11-01",
        "https://invoice.stripe.example/in_seed_nov",
    ):
        assert text in body, body
    [kept] = read_messages(config.kafka.bootstrap, config.topics.notices, 1)
    assert kept.key() == b"in_seed_nov" and json.loads(kept.value() or b"")["body"] == body
    client = connect(config, dsn)
    try:
        assert client.query("SELECT invoice_id, status FROM invoice_notices FINAL").result_rows == [
            ("in_seed_nov", "sent")
        ]
    finally:
        client.close()
