"""`meterline demo`: the whole story on the embedded stack, checked against the generator.

A month of usage (this billing month so far) for a few customers, with duplicates, late and
malformed records, goes through `meterline run` (every role in one process). Then what a billing
engineer would look at, each through `run` since it holds the embedded ClickHouse: ClickHouse's
totals, Stripe's, a zero-drift reconciliation, the dead letters, and an invoice preview in the
seed's terms. Every number is compared with the generator's exact expectation; the demo exits 1
if any differs.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meterline import demo_usage, devstack, forward, inspect, progress
from meterline.core.config import Config
from meterline.core.errors import MeterlineError
from meterline.core.kafka import committed_reaches, read_ends
from meterline.demo_checks import (
    clickhouse_exact,
    dead_letters_exact,
    inside,
    show_alerts_raised,
    stripe_exact,
    stripe_would_bill_the_preview,
)
from meterline.table import render, utc_minute
from meterline.topics import role_topics
from meterline.workload import Expected, WorkloadSpec, customer_ids


def demo(config: Config, config_path: Path | None, spec: WorkloadSpec, keep: bool) -> int:
    _clear_the_stack(config)
    devstack.up(config, log=print)
    config = devstack.resolve(config)
    config, on_team = _on_team(config, spec)
    run: subprocess.Popen[bytes] | None = None
    try:
        month = datetime.fromtimestamp(spec.start_ms / 1000, UTC).strftime("%Y-%m")
        expected, wanted, judged_right = _produce_and_judge(config, config_path, spec)

        print("\n== 4. Stripe onboarding: `meterline stripe sync`, and a Stripe customer per demo customer")
        _onboard(config, spec)

        print("\n== 5. `meterline run`: the stream app, both sinks, webhooks and reconcile in one process")
        run, address = _start_run(config, config_path, on_team)
        streamed = _wait_streamed(config, wanted, run)
        caught_up = streamed and _wait_sinks(config, run)

        print("\n== 6. ClickHouse's totals (`meterline sql`, executed inside `run`, which holds ClickHouse)")
        stored = clickhouse_exact(address, expected)
        print("\n== 7. Stripe's totals (meter event summaries) against the generator's")
        billed = stripe_exact(config, spec, expected)
        print(f"\n== 8. `meterline reconcile --period {month}`")
        reconciled = inside(address, "reconcile", "--period", month)[0] == 0
        print(
            "\n== 9. dead letters: never counted, kept with their reason (dlq_events, from usage.events.dlq)"
        )
        dead_letters_right = dead_letters_exact(address, expected)
        customer = customer_ids(spec)[0]
        previewed = True
        for who in [customer, *([on_team] if on_team else [])]:
            plan = config.plan_for(who).name
            print(f"\n== 10. `meterline invoice preview --customer {who} --period {month}` (plan {plan})")
            shown = inside(address, "invoice", "preview", "--customer", who, "--period", month)[0] == 0
            previewed = shown and stripe_would_bill_the_preview(config, address, who, month) and previewed
        print(f"\n== 11. `meterline review --period {month} --periods 1`: the guide's Step 7")
        reviewed = inside(address, "review", "--period", month, "--periods", "1")[0] == 0
        print("\n== 12. the usage alerts `run` raised, each once (usage_alerts; also on usage.alerts)")
        show_alerts_raised(address)
        print(f"\n== the usage dashboard: {address.url}/customers/{customer}")
        ok = (
            judged_right
            and caught_up
            and stored
            and billed
            and reconciled
            and dead_letters_right
            and previewed
            and reviewed
        )
        print(f"\n{'every number matches the generator' if ok else 'SOMETHING DIFFERS: see above'}")
        if keep:
            print(
                f"`meterline run` (pid {run.pid}) and the stack stay up (--keep): stop with kill {run.pid}; "
                "meterline dev down"
            )
            run = None
        return 0 if ok else 1
    finally:
        if run is not None:
            run.terminate()
            run.wait(timeout=180)
        if not keep:
            print("\n== stopping `meterline run` and the local stack (use --keep to leave them up)")
            devstack.down(config, log=print)


def _produce_and_judge(
    config: Config, config_path: Path | None, spec: WorkloadSpec
) -> tuple[Expected, dict[str, Any], bool]:
    """Steps 2 and 3: the month of usage produced (through the SDK and over HTTP), then judged from
    the topic as the stream app will judge it; (the generator's expectation, as JSON, whether the
    judgement matches it)."""
    print(
        f"\n== 2. a month of usage: {spec.events:,} records for {spec.customers} customers from "
        f"{utc_minute(spec.start_ms)} to {utc_minute(spec.start_ms + spec.span_ms)} (seed {spec.seed}; "
        f"duplicates "
        f"{spec.duplicate_rate:.0%}, late {spec.late_rate:.0%}, malformed {spec.malformed_rate:.0%}): "
        f"the SDK sends the first {1 - demo_usage.HTTP_SHARE:.0%} of the records, and `meterline ingest` "
        f"takes the valid events of the rest as CloudEvents, {demo_usage.HTTP_BATCH} a request"
    )
    ingest = demo_usage.start_ingest(config, config_path)
    try:
        produced, expected = demo_usage.produce(config, ingest, spec, progress.rate("produced", spec.events))
        refused = demo_usage.refusals(config, ingest, spec)
    finally:
        demo_usage.stop_ingest(ingest)
    print(file=sys.stderr)
    print(
        render(
            [
                {
                    "through": "producer SDK",
                    "records": produced.sdk_records,
                    "sent as": f"{produced.sdk_messages:,} messages",
                },
                {
                    "through": "HTTP ingest",
                    "records": produced.http_events,
                    "sent as": f"{produced.http_requests:,} requests",
                },
            ]
        )
    )
    print(
        f"  {spec.events / produced.seconds:,.0f} records/s; two events of the demo's own, refused at "
        "the door with their reasons (never on the topic):"
    )
    print(render([{k: r.get(k, "") for k in ("id", "status", "field", "reason")} for r in refused]))
    print("\n== 3. what reached usage.events, judged as the stream app will judge it")
    judged = inspect.summarize(config, None).document()  # every record was acknowledged: read to the end
    print(inspect.describe(judged))
    wanted = expected.to_json(spec)
    judged_right = (
        judged["records"] == {k: wanted["records"][k] for k in judged["records"]}
        and judged["totals_by_customer_meter"] == wanted["totals_by_customer_meter"]
    )
    verdict = "the same outcomes and totals" if judged_right else "DIFFERENT"
    print(f"  against the generator's expectation: {verdict}")
    return expected, wanted, judged_right


def _clear_the_stack(config: Config) -> None:
    """Every number is compared with the generator's, so the demo starts from nothing: a new
    broker and Stripe fake, and an empty embedded ClickHouse. Only on the local stack."""
    external = [
        name
        for name, value in (
            ("KAFKA_BOOTSTRAP", config.kafka.bootstrap),
            ("CLICKHOUSE_DSN", config.clickhouse.dsn),
            ("STRIPE_API_KEY", config.stripe.api_key),
            ("STRIPE_API_BASE", config.stripe.api_base),
        )
        if value
    ]
    if external:
        raise MeterlineError(f"the demo runs on the local stack only: unset {', '.join(external)}")
    running = forward.running(config)
    if running is not None:
        raise MeterlineError(
            f"`meterline run` (pid {running.pid}) is up: stop it first; the demo starts its own"
        )
    clickhouse = config.dev.state_dir / "clickhouse"
    print(f"== 1. the local stack, afresh: a new broker and Stripe fake, an empty ClickHouse at {clickhouse}")
    devstack.down(config, log=lambda _line: None)
    shutil.rmtree(clickhouse, ignore_errors=True)


def _onboard(config: Config, spec: WorkloadSpec) -> None:
    from meterline.sinks.stripe.calls import caller_for
    from meterline.sinks.stripe.catalog.sync import sync
    from meterline.sinks.stripe.directory import Directory

    caller = caller_for(config)
    synced = sync(config, caller)
    print(render([{"kind": c.kind, "name": c.name, "action": c.action} for c in synced]))
    directory = Directory(config.stripe, caller)
    for customer in customer_ids(spec):
        if directory.customer(customer) is None:
            caller.client.v1.customers.create({"metadata": {config.stripe.customer_metadata_key: customer}})
    print(
        f"  {spec.customers} Stripe customers carry metadata {config.stripe.customer_metadata_key}=<our id>"
    )


DEMO_ALERT_RULES = '{ standard = { api_calls = { included = ["1%", "80%"], projected_overage = true } } }'


def _on_team(config: Config, spec: WorkloadSpec) -> tuple[Config, str | None]:
    """The second demo customer on the seat-based `team` plan, where the rate card has one and
    assigns no customer itself: the invoice of a plan billed by its peak seats is shown too."""
    if "team" not in config.plans or config.billing.customers or spec.customers < 2:
        return config, None
    customer = customer_ids(spec)[1]
    billing = dataclasses.replace(config.billing, customers={customer: "team"})
    return dataclasses.replace(config, billing=billing), customer


def _start_run(
    config: Config, config_path: Path | None, on_team: str | None
) -> tuple[subprocess.Popen[bytes], forward.RunningRun]:
    env = dict(os.environ)
    if on_team:
        env["METERLINE__BILLING__CUSTOMERS"] = f'{{ "{on_team}" = "team" }}'  # as `_on_team` assigned
    if not config.stripe.api_key:
        # The fake has no rate limit of its own: lift the sink's (20/s, Stripe test mode's), and
        # backfill a month through meter event streams, Stripe's high-throughput API.
        env["METERLINE__STRIPE__REQUESTS_PER_SECOND"] = "1000"
        env["METERLINE__STRIPE__MODE"] = "meter_event_stream"
    if not config.alerts.rules:
        # A small month: warn at 1% and 80% of the included calls, so that its usage raises some.
        env["METERLINE__ALERTS__RULES"] = DEMO_ALERT_RULES
    env["METERLINE__ALERTS__EVERY_SECONDS"] = "5"
    log_path = config.dev.state_dir / "run-demo.log"
    command = [
        sys.executable,
        "-m",
        "meterline.cli",
        *(["--config", str(config_path)] if config_path else []),
        "run",
    ]
    with open(log_path, "wb") as log:
        run = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while True:
        address = forward.running(config)
        if address is not None and address.pid == run.pid and devstack.http_ok(f"{address.url}/readyz"):
            break
        if run.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"`meterline run` did not come up: see {log_path}")
        time.sleep(0.5)
    print(f"  pid {run.pid}, log {log_path}; {address.url}/readyz says every role is ready")
    return run, address


def _wait_streamed(config: Config, wanted: dict[str, object], run: subprocess.Popen[bytes]) -> bool:
    """Until usage.aggregates and usage.events.dlq match the expectation exactly."""
    from meterline.schemas.serde import AvroSerde
    from meterline.verify import read_emitted, verify

    print(
        f"  the last windows close by wall clock after {config.windows.idle_timeout_seconds} s of quiet "
        "(windows.idle_timeout_seconds)"
    )
    serde = AvroSerde.from_registry_url(config.kafka.schema_registry_url)
    started = time.monotonic()
    while True:
        emitted = read_emitted(config, devstack.kafka_brokers(config), serde, quiet_s=0.5)
        result = verify(wanted, emitted)
        elapsed = time.monotonic() - started
        print(
            f"\r  {elapsed:5.0f} s: {result.windows_matching:,}/{result.windows_expected:,} windows exact on "
            f"usage.aggregates, {sum(result.dlq_found.values()):,} records dead-lettered",
            end="" if sys.stderr.isatty() else "\n",
            file=sys.stderr,
        )
        if result.ok or elapsed > 600 or run.poll() is not None:
            break
        time.sleep(2)
    print(file=sys.stderr)
    print(
        render(
            [
                {
                    "windows exact": f"{result.windows_matching:,} of {result.windows_expected:,}",
                    "aggregates": emitted.messages,
                    "corrections (revision > 0)": sum(1 for i in emitted.aggregates if i.revision > 0),
                    "identity conflicts": result.conflicts,
                    "DLQ as expected": result.dlq_found == result.dlq_expected,
                }
            ]
        )
    )
    return result.ok


def _wait_sinks(config: Config, run: subprocess.Popen[bytes]) -> bool:
    """Until the Stripe sink, then the ClickHouse sink, have committed everything the topics
    they read hold now."""
    bootstrap = devstack.kafka_brokers(config)
    started = time.monotonic()
    for group, topics in (
        ("meterline-sink-stripe", [config.topics.aggregates]),
        ("meterline-sink-clickhouse", role_topics(config, "sink-clickhouse")),
    ):
        ends = read_ends(bootstrap, topics)
        while not committed_reaches(bootstrap, group, ends):
            if run.poll() is not None or time.monotonic() - started > 900:
                print(f"  {group} did not catch up")
                return False
            time.sleep(0.5)
        print(f"  {group} caught up after {time.monotonic() - started:.1f} s")
    return True
