"""`meterline stripe | invoice`: the rate card at Stripe, its customers, and what invoices will say."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meterline.cli.common import (
    PERIOD_HELP,
    cannot_run,
    load,
    period,
)
from meterline.core.errors import MeterlineError
from meterline.table import render, utc_minute

if TYPE_CHECKING:
    from meterline.reconciler.billing.pricing import Invoice


def register(commands: Any) -> None:
    """Add this group's commands to the `meterline` parser."""
    stripe_commands = commands.add_parser("stripe", help="Stripe's side of the rate card").add_subparsers(
        title="stripe"
    )
    sync = stripe_commands.add_parser(
        "sync", help="create the meters and products the configured meters need"
    )
    sync.add_argument("--dry-run", action="store_true", help="show what would be created, change nothing")
    sync.add_argument(
        "--give-up-after",
        type=float,
        default=120,
        metavar="SECONDS",
        help="how long Stripe may fail to answer before sync exits 2 (default 120)",
    )
    sync.add_argument("--json", action="store_true")
    sync.set_defaults(run=_stripe_sync)
    customers = stripe_commands.add_parser(
        "customers",
        help="the Stripe customers meterline knows without searching, and the customers usage waits for",
    )
    customers.add_argument(
        "--import",
        dest="import_file",
        type=Path,
        metavar="FILE",
        help="a CSV of customer_id,stripe_customer to add to the map (webhooks keep it current after)",
    )
    customers.add_argument("--json", action="store_true")
    customers.set_defaults(run=_stripe_customers)

    invoice = commands.add_parser("invoice", help="what a customer's invoice will say").add_subparsers(
        title="invoice"
    )
    preview = invoice.add_parser(
        "preview", help="a period's invoice lines from ClickHouse's totals and the rate card"
    )
    preview.add_argument("--customer", required=True)
    preview.add_argument("--period", required=True, type=period, help=PERIOD_HELP)
    preview.add_argument("--json", action="store_true")
    preview.set_defaults(run=_invoice_preview)
    quote = invoice.add_parser(
        "quote", help="the invoice a plan gives for the usage stated (no ClickHouse): support's calculator"
    )
    quote.add_argument("--plan", required=True)
    quote.add_argument(
        "--usage",
        action="append",
        default=[],
        metavar="METER=QUANTITY",
        help="usage in the meter's base unit (calls, bytes, ms), once per meter; missing meters used none",
    )
    quote.add_argument("--currency", help="the plan's currency, stated to check it (no conversion)")
    quote.add_argument("--json", action="store_true")
    quote.set_defaults(run=_invoice_quote, parser=quote)


def _stripe_sync(args: argparse.Namespace) -> int:
    import dataclasses

    from meterline.sinks.stripe.calls import StripeUnavailableError, caller_for
    from meterline.sinks.stripe.catalog.sync import refused, sync

    config = load(args)
    try:
        made = sync(config, caller_for(config, give_up_after_s=args.give_up_after), dry_run=args.dry_run)
    except StripeUnavailableError as exc:  # what was made before stays made: sync again later
        return cannot_run("stripe sync", exc, args.json)
    changes = [dataclasses.asdict(c) for c in made]
    print(json.dumps(changes) if args.json else render(changes))
    return 1 if refused(made) else 0


def _stripe_customers(args: argparse.Namespace) -> int:
    from meterline.sinks.clickhouse.client import connect
    from meterline.sinks.stripe.customers import CustomersFileError, KnownCustomers, parse_import
    from meterline.sinks.stripe.ledger import Ledger
    from meterline.sinks.stripe.report import customer_wait_until

    config = load(args)
    imported = []
    if args.import_file is not None:
        try:
            imported = parse_import(args.import_file.read_text())
        except OSError as exc:
            return cannot_run(f"stripe customers --import {args.import_file}", exc, args.json)
        except CustomersFileError as exc:  # every problem, by line: nothing was taken
            problems = str(exc).splitlines()
            if args.json:
                print(json.dumps({"ok": False, "problems": problems}))
            else:
                print(f"error: {args.import_file}: nothing imported", *problems, sep="\n  ", file=sys.stderr)
            return 2
    client = connect(config)
    try:
        known_customers = KnownCustomers(client)
        known_customers.record(imported)
        known = known_customers.count_by_source()
        waiting = Ledger(client, config.stripe.mode).waiting()
    finally:
        client.close()
    size_ms = config.windows.size_ms
    rows = [
        {
            "customer": customer,
            "waiting revisions": w.waiting,
            "earliest window": utc_minute(w.earliest_window_start),
            "unbilled after": utc_minute(
                customer_wait_until(w.earliest_window_start, w.earliest_window_start + size_ms, config.stripe)
            ),
        }
        for customer, w in sorted(waiting.items())
        if w.waiting
    ]
    if args.json:
        print(json.dumps({"imported": len(imported), "known": known, "waiting": rows}))
        return 0
    if imported:
        print(f"imported {len(imported)} customers from {args.import_file}")
    print(
        "known without search: "
        + (", ".join(f"{n} from {source}" for source, n in sorted(known.items())) or "none")
    )
    print(render(rows) if rows else "no usage waits for its Stripe customer")
    return 0


def _invoice_preview(args: argparse.Namespace) -> int:
    from meterline.reconciler.billing.periods import resolve
    from meterline.reconciler.billing.plan_history import period_invoice
    from meterline.sinks.clickhouse.client import connect

    config = load(args)
    client = connect(config)
    try:
        period = resolve(client, args.customer, args.period, int(time.time() * 1000))
        split, usages, bill = period_invoice(config, client, args.customer, period.start_ms, period.end_ms)
    finally:
        client.close()
    usage: dict[str, int] = {}
    for used in usages:
        for meter, units in used.items():
            usage[meter] = usage.get(meter, 0) + units
    heading = f"Invoice preview for {args.customer}, {period.label}, plan {bill.plan}"
    extra = {
        "customer": args.customer,
        "period": args.period,
        "period_start": period.start_ms,
        "period_end": period.end_ms,
        "subscription": period.subscription,
        "usage": usage,
        "parts": [
            {"plan": p.plan.name, "start": p.start_ms, "end": p.end_ms, "billed": p.billed, "usage": used}
            for p, used in zip(split, usages, strict=True)
        ],
    }
    _print_invoice(bill, heading, extra, args.json)
    return 0


def _invoice_quote(args: argparse.Namespace) -> int:
    from meterline.reconciler.billing.pricing import invoice

    config = load(args)
    plan = config.plans.get(args.plan)
    if plan is None:
        raise MeterlineError(
            f"--plan {args.plan!r}: no such plan; configured: {', '.join(sorted(config.plans))}"
        )
    if args.currency and args.currency.lower() != plan.currency.code:
        raise MeterlineError(
            f"--currency {args.currency!r}: plan {plan.name!r} is priced in {plan.currency.code}, "
            "and meterline does not convert currencies"
        )
    usage: dict[str, int] = {}
    problems = []
    for text in args.usage:  # every problem at once, each naming its argument
        meter, equals, quantity = text.partition("=")
        if not equals:
            problems.append(f"--usage {text!r}: expected METER=QUANTITY, e.g. {text}=1200000")
        elif meter not in plan.prices:
            problems.append(f"--usage {text!r}: plan {plan.name!r} prices no meter {meter!r}")
        elif not quantity.isdigit():
            unit = config.meters[meter].unit if meter in config.meters else "base unit"
            problems.append(
                f"--usage {text!r}: the quantity is a whole number of {unit}s, e.g. {meter}=1200000"
            )
        elif meter in usage:
            problems.append(f"--usage {text!r}: {meter} given twice; state each meter's usage once")
        else:
            usage[meter] = int(quantity)
    if problems:
        args.parser.error("; ".join(problems))  # argument errors exit 2, as argparse's own
    heading = f"Quote on plan {plan.name} for " + (
        ", ".join(f"{m} {q:,} ({config.meters[m].usage_unit})" for m, q in usage.items()) or "no usage"
    )
    _print_invoice(invoice(plan, usage), heading, {"usage": usage}, args.json)
    return 0


def _print_invoice(bill: Invoice, heading: str, extra: dict[str, Any], as_json: bool) -> None:
    from meterline.reconciler.billing.invoice_text import describe, rows, to_json

    if as_json:
        print(json.dumps({**extra, **to_json(bill)}))
        return
    print(heading)
    print(render(rows(bill)))
    print(describe(bill))
    for note in bill.notes:
        print(f"note: {note}")
