"""Invoice-ready notices: when Stripe finalizes an invoice, a message to its customer explaining it
in the rate card's terms (each line with what was included, the overage and its rate, the total)
and where to see the usage behind it. Pure: reconciler.notices.role sends it once.

"People don't mind paying when they understand why" (the guide's Step 7).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote

from meterline.reconciler.billing.invoice_text import rows
from meterline.reconciler.billing.pricing import Invoice


@dataclass(frozen=True)
class Notice:
    invoice_id: str
    customer_id: str
    email: str
    """The invoice's `customer_email`; empty when Stripe has none (kept on the topic, not mailed)."""
    subject: str
    body: str

    def payload(self) -> bytes:
        return json.dumps({"type": "invoice.ready", **asdict(self)}, sort_keys=True).encode()


def _day(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d")


def compose(invoice: dict[str, Any], customer: str, bill: Invoice, dashboard_url: str) -> Notice:
    """The notice of a finalized invoice (Stripe's object: https://docs.stripe.com/api/invoices/object)
    whose usage our rate card prices as `bill` (the preview's invoice for the same period). Where
    Stripe's total is given and differs, the notice says so: the invoice is what is charged."""
    start, end = int(invoice.get("period_start") or 0), int(invoice.get("period_end") or 0)
    period = f"{_day(start)} to {_day(end)}"
    lines = [f"Your invoice for {period} is ready.", ""]
    for row in rows(bill):  # "Overage API calls: 200,000 at $0.001 = $200.00", "Total: $200.00"
        rate = f"at {row['unit price']}" if row["unit price"] else ""
        details = " ".join(part for part in (row["quantity"], rate) if part)
        lines.append(
            f"{row['line']}: {details} = {row['amount']}" if details else f"{row['line']}: {row['amount']}"
        )
    total_minor = invoice.get("total")
    if isinstance(total_minor, int) and not isinstance(total_minor, bool):
        charged = bill.currency.format(bill.currency.from_minor(total_minor))
        if charged != bill.currency.format(bill.total):
            lines.append(f"The invoice's total is {charged}: it is what is charged.")
    lines.append("")
    if dashboard_url:
        link = f"{dashboard_url.rstrip('/')}/customers/{quote(customer, safe='')}?period={_day(start)}"
        lines.append(f"Your usage, hour by hour: {link}")
    if invoice.get("hosted_invoice_url"):
        lines.append(f"The invoice: {invoice['hosted_invoice_url']}")
    return Notice(
        invoice_id=str(invoice["id"]),
        customer_id=customer,
        email=str(invoice.get("customer_email") or ""),
        subject=f"Your invoice for {period}: {bill.currency.format(bill.total)}",
        body="\n".join(lines).rstrip() + "\n",
    )


def message(notice: Notice, sender: str) -> EmailMessage:
    """The mail; its Message-ID is the invoice's, so that a repeat after a crash is one message to
    every mail client."""
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = notice.email
    mail["Subject"] = notice.subject
    mail["Message-ID"] = f"<invoice-{notice.invoice_id}@meterline>"
    mail.set_content(notice.body)
    return mail
