"""`meterline config | dev | topics`: the configuration, the local stack, the topics."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from meterline import devstack
from meterline.cli.common import (
    load,
    quiet_if,
)
from meterline.config_sections import dedup_promise
from meterline.core.config import ConfigError
from meterline.core.kafka import Brokers, security_properties
from meterline.core.ratecard import terms
from meterline.table import render

if TYPE_CHECKING:
    pass


def register(commands: Any) -> None:
    """Add this group's commands to the `meterline` parser."""
    config = commands.add_parser("config", help="check the configuration").add_subparsers(title="config")
    check = config.add_parser("check", help="report every problem at once; exit 1 if any")
    check.add_argument("--json", action="store_true")
    check.set_defaults(run=_config_check)

    dev = commands.add_parser("dev", help="the local stack: tansu, chdb, Stripe fake").add_subparsers(
        title="dev"
    )
    for name, run, text in (
        ("up", _dev_up, "start what is not running; idempotent"),
        ("status", _dev_status, "what runs where; exit 1 unless everything answers"),
        ("down", _dev_down, "stop what `up` started; idempotent"),
    ):
        sub = dev.add_parser(name, help=text)
        sub.add_argument("--json", action="store_true")
        sub.set_defaults(run=run)

    topics = commands.add_parser("topics", help="meterline's Kafka topics, as code").add_subparsers(
        title="topics"
    )
    ensure = topics.add_parser(
        "ensure",
        help="create the missing topics with their settings, check the others; exit 1 on any mismatch",
    )
    ensure.add_argument("--dry-run", action="store_true", help="create nothing: say what would be")
    ensure.add_argument("--json", action="store_true")
    ensure.set_defaults(run=_topics_ensure)


def _config_check(args: argparse.Namespace) -> int:
    try:
        config = load(args, resolve=False)
    except ConfigError as exc:
        if args.json:
            problems = [{"field": p.field, "value": p.shown_value, "why": p.why} for p in exc.problems]
            print(json.dumps({"ok": False, "source": exc.source, "problems": problems}, indent=2))
        else:
            print(exc, file=sys.stderr)
        return 1
    meters = [
        {
            "meter": m.name,
            "unit": m.unit if m.usage_unit == m.unit else f"{m.unit}, billed in {m.usage_unit}s",
            "aggregation": f"{m.aggregation} of {m.unique_by}" if m.unique_by else m.aggregation,
            "reset": m.reset,
            "stripe_event_name": m.stripe_event_name,
            "billable": " and ".join(f"{a} in {list(p)}" for a, p in m.billable.items()) or "everything",
        }
        for m in config.meters.values()
    ]
    # The rate card as it will bill: a row per plan and meter (the base fee on the plan's first row).
    plans = [
        {
            "plan": plan.name,
            "currency": plan.currency.code,
            "base fee": str(plan.base_fee) if n == 0 else "",
            "meter": meter,
            "price": terms(price, plan.currency, config.meters[meter].usage_unit),
        }
        for plan in config.plans.values()
        for n, (meter, price) in enumerate(plan.prices.items())
    ]
    kafka = Brokers(config.kafka.bootstrap or "(the local stack)", security_properties(config.kafka))
    dedup = {"horizon_days": config.windows.dedup_horizon_days, "promise": dedup_promise(config.windows)}
    if args.json:
        document = {
            "ok": True,
            "source": config.source,
            "kafka": kafka.redacted(),
            "dedup": dedup,
            "meters": meters,
            "plans": plans,
        }
        print(json.dumps(document, indent=2))
    else:
        print(
            f"configuration OK ({config.source}): {len(meters)} meter(s), "
            f"{config.windows.size_minutes}-minute windows, Stripe mode {config.stripe.mode}"
        )
        print(
            f"Kafka {kafka.bootstrap}: "
            + ", ".join(f"{k}={v}" for k, v in kafka.redacted().items() if k != "bootstrap.servers")
        )
        print(f"dedup: {dedup['promise']}")
        print(render(meters))
        print()
        print(render(plans))
    return 0


def _dev_up(args: argparse.Namespace) -> int:
    config = load(args, resolve=False)
    services = devstack.up(config, log=quiet_if(args.json))
    if args.json:
        print(json.dumps({name: vars(s) for name, s in services.items()}, indent=2))
    else:
        print(f"local stack up; addresses in {devstack.state_path(config)}")
    return 0


def _dev_status(args: argparse.Namespace) -> int:
    statuses = devstack.status(load(args, resolve=False))
    rows = [vars(s) | {"pid": str(s.pid or "")} for s in statuses]
    print(json.dumps(rows, indent=2) if args.json else render(rows))
    return 0 if all(s.answers for s in statuses) else 1


def _dev_down(args: argparse.Namespace) -> int:
    devstack.down(load(args, resolve=False), log=quiet_if(args.json))
    return 0


def _topics_ensure(args: argparse.Namespace) -> int:
    from meterline import topics

    config = load(args)
    kafka = devstack.kafka_brokers(config)
    report = topics.ensure(kafka, topics.specs_for(kafka, config), dry_run=args.dry_run)
    findings = [f for t in report.topics for f in t.findings]
    if args.json:
        document = {
            "ok": report.ok,
            "bootstrap": kafka.bootstrap,
            "topics": [
                {
                    "topic": t.spec.name,
                    "action": t.action,
                    "partitions": t.spec.partitions,
                    "replication_factor": t.spec.replication_factor,
                    "settings": t.spec.created_with,
                    "purpose": t.spec.purpose,
                    "findings": [{"level": f.level, "text": str(f)} for f in t.findings],
                }
                for t in report.topics
            ],
        }
        print(json.dumps(document, indent=2))
    else:
        rows = [
            {
                "topic": t.spec.name,
                "action": t.action,
                "partitions": str(t.spec.partitions),
                "replicas": str(t.spec.replication_factor),
                "settings": ", ".join(f"{k}={v}" for k, v in t.spec.created_with.items()),
            }
            for t in report.topics
        ]
        print(render(rows))
        for level in ("error", "warning"):
            for finding in (f for f in findings if f.level == level):
                print(f"{level}: {finding}")
        unreported = sorted({f.setting for f in findings if f.level == "unreported"})
        if unreported:
            print(f"note: the broker does not report {', '.join(unreported)}: not checked")
    return 0 if report.ok else 1
