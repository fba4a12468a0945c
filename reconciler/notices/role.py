"""Sending each invoice-ready notice once (the webhook consumer calls `notify` on invoice.finalized).

1. `invoice_notices` says the invoice's notice went out: nothing more (the same event again, or
   another event finalizing the same invoice).
2. The invoice is priced as the preview prices it over the invoice's period; the notice is kept on
   the notices topic, keyed by the invoice (compacted: one record per invoice).
3. With an SMTP server and the invoice's customer_email, it is mailed, tried three times (Message-ID
   from the invoice: a repeat after a crash between 3 and 4 is one message to a mail client).
4. The row in `invoice_notices`: sent, kept (no SMTP or no email), or failed with the reason; a
   failed one is not retried by the consumer (its events go on), the notice is on the topic.
"""

from __future__ import annotations

import logging
import smtplib
import time
from typing import TYPE_CHECKING, Any

from meterline.core.config import Config, ConfigError
from meterline.core.kafka import Kafka, KafkaUnavailableError, idempotent_producer
from meterline.core.logs import context
from meterline.reconciler.billing.plan_history import period_invoice
from meterline.reconciler.notices.compose import compose, message

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

log = logging.getLogger("meterline.notices")
NOTICE_COLUMNS = ("invoice_id", "customer_id", "email", "status", "detail")
MAIL_ATTEMPTS = 3


class Notifier:
    def __init__(self, config: Config, bootstrap: Kafka, client: Client) -> None:
        self.config = config
        self.client = client
        self._producer = idempotent_producer(bootstrap)

    def notify(self, invoice: dict[str, Any], customer: str) -> None:
        """The notice of a finalized invoice of `customer` (ours), once."""
        invoice_id = str(invoice["id"])
        done = self.client.query(
            "SELECT count() FROM invoice_notices FINAL WHERE invoice_id = %(i)s", parameters={"i": invoice_id}
        ).result_rows[0][0]
        if done or not customer:
            return
        start_ms, end_ms = (
            int(invoice.get("period_start") or 0) * 1000,
            int(invoice.get("period_end") or 0) * 1000,
        )
        try:
            _, _, bill = period_invoice(self.config, self.client, customer, start_ms, end_ms)
        except ConfigError as exc:  # no plan prices this customer: said once, not retried forever
            self._record(invoice_id, customer, str(invoice.get("customer_email") or ""), "failed", str(exc))
            log.error("invoice %s: no notice, its customer cannot be priced: %s", invoice_id, exc)
            return
        notice = compose(invoice, customer, bill, self.config.notices.dashboard_url)
        self._producer.produce(self.config.topics.notices, notice.payload(), invoice_id.encode())
        if self._producer.flush(30) > 0:
            raise KafkaUnavailableError(
                f"the notice of {invoice_id} was not delivered to {self.config.topics.notices}"
            )
        status, detail = self._mail(notice.email, message(notice, self.config.notices.sender))
        self._record(invoice_id, customer, notice.email, status, detail)
        log.info(
            "invoice %s: notice %s (%s)",
            invoice_id,
            status,
            detail or notice.subject,
            extra=context(customer=customer),
        )

    def _record(self, invoice_id: str, customer: str, email: str, status: str, detail: str) -> None:
        self.client.insert(
            "invoice_notices",
            [[invoice_id, customer, email, status, detail[:1000]]],
            column_names=list(NOTICE_COLUMNS),
        )

    def _mail(self, to: str, mail: Any) -> tuple[str, str]:
        settings = self.config.notices
        if not settings.smtp_host or not to:
            return (
                "kept",
                "no SMTP server configured"
                if not settings.smtp_host
                else "the invoice has no customer_email",
            )
        error = ""
        for attempt in range(MAIL_ATTEMPTS):
            try:
                with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=30) as smtp:
                    if settings.smtp_starttls:
                        smtp.starttls()
                    if settings.smtp_username:
                        smtp.login(settings.smtp_username, settings.smtp_password.reveal())
                    smtp.send_message(mail)
                return "sent", ""
            except smtplib.SMTPRecipientsRefused as exc:
                return "failed", f"refused: {sorted(exc.recipients)}"
            except (smtplib.SMTPException, OSError) as exc:
                error = f"SMTP {settings.smtp_host}:{settings.smtp_port}: {type(exc).__name__}: {exc}"
                time.sleep(attempt + 1)
        return "failed", error
