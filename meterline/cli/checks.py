"""`meterline reconcile | dispute | review`: drift between Stripe and us, a disputed bill explained,
the billing review."""

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
from meterline.table import render

if TYPE_CHECKING:
    from meterline.reconciler.checks.reconcile import Reconciliation


def register(commands: Any) -> None:
    """Add this group's commands to the `meterline` parser."""
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
                    "not_compared": result.not_compared,
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
        for meter, why in result.not_compared.items():
            print(f"\n{meter} not compared: {why}")
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
