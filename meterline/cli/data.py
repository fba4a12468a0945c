"""`meterline replay | sql`: re-deriving totals from usage.events, and asking ClickHouse."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from meterline import devstack, progress
from meterline.cli.common import (
    load,
    timestamp,
)
from meterline.table import render

if TYPE_CHECKING:
    pass


def register(commands: Any) -> None:
    """Add this group's commands to the `meterline` parser."""
    replay = commands.add_parser(
        "replay", help="re-derive window totals from usage.events and compare them with ClickHouse and Stripe"
    )
    replay.add_argument("--from", dest="start", type=timestamp, required=True, help="ISO 8601 or epoch ms")
    replay.add_argument(
        "--to", dest="end", type=timestamp, required=True, help="ISO 8601 or epoch ms (exclusive)"
    )
    replay.add_argument("--customer")
    replay.add_argument(
        "--repair", action="store_true", help="emit correcting revisions so that both sinks converge"
    )
    replay.add_argument("--json", action="store_true")
    replay.set_defaults(run=_replay)

    sql = commands.add_parser("sql", help="run a read-only query against the configured ClickHouse")
    sql.add_argument("query")
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sql.set_defaults(run=_sql)


def _replay(args: argparse.Namespace) -> int:
    from meterline.reconciler.checks.rederive import not_rederived, rederive
    from meterline.reconciler.checks.replay import (
        clickhouse_differences,
        emit_repairs,
        plan_repairs,
        stripe_differences,
    )
    from meterline.sinks.clickhouse.client import connect
    from meterline.sinks.clickhouse.usage_windows import latest_revisions
    from meterline.sinks.stripe.calls import caller_for
    from meterline.sinks.stripe.customers import KnownCustomers
    from meterline.sinks.stripe.ledger import reported_windows
    from meterline.sinks.stripe.totals import totals_for

    config = load(args)
    bootstrap = devstack.kafka_brokers(config)
    progress_of = None if args.json else progress.counter("partitions re-derived")
    rederived = rederive(config, bootstrap, args.start, args.end, args.customer, progress_of)
    client = connect(config)
    try:
        skipped = not_rederived(config)
        stored = {
            k: v
            for k, v in latest_revisions(client, args.start, args.end, args.customer).items()
            if k[1] not in skipped
        }
        reported = {
            k: v
            for k, v in reported_windows(client, args.start, args.end, args.customer).items()
            if k[1] not in skipped
        }
        in_clickhouse = clickhouse_differences(rederived, stored)
        stripe = totals_for(config, caller_for(config), KnownCustomers(client).find)
        in_stripe = stripe_differences(rederived, stripe, args.start, args.end)
        fixes = []
        if args.repair:
            fixes = plan_repairs(config, stripe, rederived, stored, reported, int(time.time() * 1000))
    finally:
        client.close()
        if fixes:
            emit_repairs(config, bootstrap, fixes)
    summary = {
        "records": rederived.records,
        "events": rederived.events,
        "events/s": round(rederived.events / rederived.seconds) if rederived.seconds else None,
        "windows": len(rederived.windows()),
        "ClickHouse differs": len(in_clickhouse),
        "Stripe differs": len(in_stripe),
        "repairs emitted": len(fixes),
    }
    clickhouse_rows = [
        {
            "customer": d.key[0],
            "meter": d.key[1],
            "window (UTC)": datetime.fromtimestamp(d.key[2] / 1000, UTC).strftime("%Y-%m-%d %H:%M"),
            "ClickHouse": d.ours,
            "re-derived": d.theirs,
            "difference": d.drift,
        }
        for d in in_clickhouse
    ]
    stripe_rows = [
        {
            "customer": d.key[0],
            "meter": d.key[1],
            "Stripe": d.ours,
            "re-derived": d.theirs,
            "difference": d.drift,
        }
        for d in in_stripe
    ]
    if args.json:
        print(
            json.dumps(
                {**summary, "clickhouse": clickhouse_rows, "stripe": stripe_rows, "not_rederived": skipped}
            )
        )
    else:
        print(file=sys.stderr)
        print(render([summary]))
        if clickhouse_rows:
            print("\nWindows where ClickHouse differs from the events:")
            print(render(clickhouse_rows[:50]))
        if stripe_rows:
            print("\nCustomers and meters where Stripe differs from the events:")
            print(render(stripe_rows))
        for meter, why in skipped.items():
            print(f"\n{meter} not re-derived (nor repaired): {why}")
        if fixes:
            print(f"\nEmitted {len(fixes)} correcting revisions to {config.topics.aggregates}:")
            print("the sinks apply them; replay again once they have caught up to see zero differences.")
    return 0 if not (in_clickhouse or in_stripe) or fixes else 1


def _sql(args: argparse.Namespace) -> int:
    from meterline.sinks.clickhouse.client import ClickHouseError, connect

    config = load(args)
    client = connect(config)
    try:
        result = client.query(args.query, settings={"readonly": 1})
    except Exception as exc:  # clickhouse-connect's errors carry ClickHouse's own message
        raise ClickHouseError(f"the query failed: {exc}") from exc
    finally:
        client.close()
    rows = [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]
    if args.format == "json":
        print(json.dumps(rows, default=str))
    elif args.format == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(result.column_names)
        writer.writerows(result.result_rows)
    else:
        print(render(rows) if rows else f"(no rows; columns: {', '.join(result.column_names)})")
    return 0
