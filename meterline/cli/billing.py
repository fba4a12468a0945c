"""`meterline stripe | invoice | reconcile | dispute`: the rate card at Stripe, invoices, drift, disputes."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meterline import progress
from meterline.cli.common import (
    PERIOD_HELP,
    cannot_run,
    load,
    month,
    period,
    role_arguments,
    run_until_signalled,
)
from meterline.core.errors import MeterlineError
from meterline.table import render, utc_minute

if TYPE_CHECKING:
    from meterline.reconciler.billing.pricing import Invoice
    from meterline.reconciler.checks.reconcile import Reconciliation


def register(commands: Any) -> None:
    """Add this group's commands to the `meterline` parser."""
    stripe_commands = commands.add_parser("stripe", help="Stripe's side of the rate card").add_subparsers(
        title="stripe"
    )
    sync = stripe_commands.add_parser(
        "sync", help="create the meters and products the configured meters need"
    )
    sync.add_argument("--dry-run", action="store_true", help="show what would be created, change nothing")
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
    quote.set_defaults(run=_invoice_quote)

    reconcile = commands.add_parser(
        "reconcile",
        help="compare Stripe's totals with ours; exit 0: no drift, 1: drift beyond --threshold, "
        "2: it could not run (ClickHouse or Stripe unavailable, bad arguments)",
    )
    reconcile.add_argument(
        "--period",
        type=period,
        default=datetime.now(UTC).strftime("%Y-%m"),
        help="YYYY-MM (the UTC month; default: this month, as a scheduled job wants); with --customer, "
        "also current, previous or YYYY-MM-DD (the customer's Stripe billing period)",
    )
    reconcile.add_argument("--customer")
    reconcile.add_argument("--meter")
    reconcile.add_argument(
        "--threshold", type=int, default=0, help="tolerated drift in base units (default 0)"
    )
    reconcile.add_argument(
        "--give-up-after",
        type=float,
        default=120,
        metavar="SECONDS",
        help="how long Stripe may fail to answer before reconcile exits 2 (default 120)",
    )
    reconcile.add_argument(
        "--every",
        type=int,
        metavar="MINUTES",
        help="run as a role: reconcile the current month now and every MINUTES, exporting the drift "
        "metrics (with --http-port), until SIGTERM",
    )
    role_arguments(reconcile)
    reconcile.add_argument("--json", action="store_true")
    reconcile.set_defaults(run=_reconcile)

    dispute = commands.add_parser("dispute", help='answer "why is my bill higher?" for a customer and period')
    dispute.add_argument("--customer", required=True)
    dispute.add_argument("--period", required=True, type=period, help=PERIOD_HELP)
    dispute.add_argument("--format", choices=["csv", "json", "html"], default="html")
    dispute.add_argument("--output", type=Path, help="write here instead of standard output")
    dispute.set_defaults(run=_dispute)

    _register_review(commands)


def _register_review(commands: Any) -> None:
    review = commands.add_parser(
        "review",
        help="the billing review: payments, reporting latency, drift, pricing fit, what was not billed",
    )
    review.add_argument("--period", required=True, type=month, help="the last UTC month reviewed, YYYY-MM")
    review.add_argument("--periods", type=int, default=3, help="how many months, ending with --period")
    review.add_argument("--format", choices=["table", "json", "html"], default="table")
    review.add_argument("--output", type=Path, help="write here instead of standard output")
    review.set_defaults(run=_review)


def _stripe_sync(args: argparse.Namespace) -> int:
    import dataclasses

    from meterline.sinks.stripe.calls import caller_for
    from meterline.sinks.stripe.catalog.sync import refused, sync

    config = load(args)
    made = sync(config, caller_for(config), dry_run=args.dry_run)
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
    for text in args.usage:
        meter, _, quantity = text.partition("=")
        if meter not in plan.prices:
            problems.append(f"--usage {text!r}: plan {plan.name!r} prices no meter {meter!r}")
        elif not quantity.isdigit():
            unit = config.meters[meter].unit if meter in config.meters else "base unit"
            problems.append(
                f"--usage {text!r}: the quantity is a whole number of {unit}s, e.g. {meter}=1200000"
            )
        else:
            usage[meter] = usage.get(meter, 0) + int(quantity)
    if problems:
        raise MeterlineError("; ".join(problems))
    heading = f"Quote on plan {plan.name} for " + (
        ", ".join(f"{m} {q:,} ({config.meters[m].unit})" for m, q in usage.items()) or "no usage"
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


def _reconcile(args: argparse.Namespace) -> int:
    from clickhouse_connect.driver.exceptions import ClickHouseError

    from meterline.reconciler.checks.reconcile import reconcile
    from meterline.sinks.clickhouse.client import connect
    from meterline.sinks.stripe.calls import caller_for

    if args.every:
        return _reconcile_role(args)

    try:  # 2: it could not run, whatever the cause, so that a scheduler tells it from drift (1)
        config = load(args)
        client = connect(config)
        try:
            result = reconcile(
                config,
                client,
                caller_for(config, give_up_after_s=args.give_up_after),
                args.period,
                args.customer,
                args.meter,
                args.threshold,
                progress=None if args.json else progress.counter("customers compared"),
            )
        finally:
            client.close()
    except (MeterlineError, ClickHouseError, OSError) as exc:
        return cannot_run("reconcile", exc, args.json)
    if not args.json:
        print(file=sys.stderr)
    _print_reconciliation(result, args.json)
    return 0 if result.ok else 1


def _print_reconciliation(result: Reconciliation, as_json: bool) -> None:
    def pct(value: Any) -> str:
        return "" if value is None else f"{value}%"

    pairs = [
        {
            "customer": d.key[0],
            "meter": d.key[1],
            "ours": d.ours,
            "Stripe": d.theirs,
            "drift": d.drift,
            "drift %": pct(d.percent),
        }
        for d in result.pairs
    ]
    hours = [
        {
            "customer": d.key[0],
            "meter": d.key[1],
            "hour (UTC)": datetime.fromtimestamp(d.key[2] / 1000, UTC).strftime("%Y-%m-%d %H:00"),
            "ours": d.ours,
            "Stripe": d.theirs,
            "drift": d.drift,
        }
        for d in result.hours
    ]
    unbilled = [vars(u) for u in result.unbilled]
    if as_json:
        print(
            json.dumps(
                {
                    "run_id": result.run_id,
                    "period": result.period,
                    "ok": result.ok,
                    "pairs": pairs,
                    "hours": hours,
                    "unbilled": unbilled,
                    "dead_letters": result.dead_letters,
                }
            )
        )
    else:
        drifting = len(result.drifting)
        print(f"Reconciliation {result.run_id}, {result.period}: {len(pairs)} pairs of customer and meter,")
        print(f"{drifting} drifting beyond {result.threshold} units")
        print(render(pairs) if pairs else "(no usage in the period)")
        if hours:
            print("\nHours that differ:")
            print(render(hours))
        if unbilled:
            print(
                "\nNot billed as counted (refused; in usage.stripe.dlq and the ledger; "
                "negative units: billed in excess):"
            )
            print(render(unbilled))
        if result.dead_letters:
            print(
                "\nDead letters in the period (never counted): "
                + ", ".join(f"{k} {v:,}" for k, v in result.dead_letters.items())
            )


def _reconcile_role(args: argparse.Namespace) -> int:
    from meterline.core import metrics
    from meterline.run import reconcile_periodically
    from meterline.sinks.clickhouse.client import connect

    config = load(args)
    metrics.register_reconcile()
    client = connect(config)
    every_s = args.every * 60
    try:
        run_until_signalled(
            args, config, "reconcile", lambda stop: reconcile_periodically(config, client, stop, every_s, 0)
        )
    finally:
        client.close()
    return 0


def _dispute(args: argparse.Namespace) -> int:
    from meterline.reconciler.billing.periods import resolve
    from meterline.reconciler.checks import dispute
    from meterline.sinks.clickhouse.client import connect

    config = load(args)
    client = connect(config)
    try:
        period = resolve(client, args.customer, args.period, int(time.time() * 1000))
        report = dispute.query(config, client, args.customer, period)
    finally:
        client.close()
    render_as = {"csv": dispute.render_csv, "json": dispute.render_json, "html": dispute.render_html}[
        args.format
    ]
    text = render_as(report)
    if args.output:
        args.output.write_text(text)
        print(
            f"wrote {args.output} ({len(report.hours)} hours of usage, {len(report.carriers)} Stripe reports)"
        )
    else:
        print(text)
    return 0


def _review(args: argparse.Namespace) -> int:
    from meterline.reconciler.review import page as review_page
    from meterline.reconciler.review.figures import months_ending
    from meterline.reconciler.review.queries import review
    from meterline.sinks.clickhouse.client import connect

    if args.periods < 1:
        raise MeterlineError(f"--periods {args.periods}: at least 1")
    config = load(args)
    client = connect(config)
    try:
        reviewed = review(config, client, months_ending(args.period, args.periods))
    finally:
        client.close()
    if args.format == "table":
        text = "\n\n".join(f"{title}\n{render(rows)}" for title, rows in review_page.sections(reviewed))
    else:
        text = {"json": review_page.render_json, "html": review_page.render_html}[args.format](reviewed)
    if args.output:
        args.output.write_text(text)
        print(f"wrote {args.output} ({len(reviewed.months)} months reviewed)")
    else:
        print(text)
    return 0
