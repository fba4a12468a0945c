"""What `meterline demo` compares with the generator's exact expectation: ClickHouse's windows,
Stripe's totals, the dead letters, and the invoice Stripe would issue beside the preview; each
read through `run` (meterline.forward), which holds the embedded ClickHouse."""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Mapping
from functools import partial

from meterline import forward
from meterline.core.config import Config
from meterline.sinks.clickhouse.usage_windows import ANSWER, kinds
from meterline.streams.accrual import SLICE_MS
from meterline.table import render
from meterline.workload import Expected, WorkloadSpec, customer_ids

WINDOWS = (
    "SELECT customer_id, meter, toUnixTimestamp64Milli(window_start) AS w, sum(value) AS v, "
    "sum(event_count) AS n FROM usage_windows FINAL GROUP BY customer_id, meter, w"
)


def totals_sql(levels: Mapping[str, str]) -> str:
    """Each customer's answer per meter as `meterline sql` shows it (usage_windows.ANSWER, its
    lists written out): a level's highest or latest window (`levels`), every other meter's sum."""
    # meter names: [a-z0-9_], checked at load
    listed = {
        kind: "[" + ", ".join(f"'{meter}'" for meter in meters) + "]"
        for kind, meters in kinds(levels).items()
    }
    answer = ANSWER % listed
    return (
        f"SELECT customer_id AS customer, meter, {answer} AS total, count() AS windows, "
        "countIf(revision > 0) AS corrected FROM usage_windows FINAL "
        "GROUP BY customer, meter ORDER BY customer, meter"
    )


DEAD_LETTERS = (
    "SELECT error_code AS reason, count() AS records FROM dlq_events FINAL GROUP BY reason ORDER BY reason"
)


def show_alerts_raised(address: forward.RunningRun) -> None:
    """The alerts role looks every 5 s: the first pass after the sinks caught up may still be going."""
    query = (
        "SELECT customer_id, meter, threshold, status, count() AS copies FROM usage_alerts FINAL "
        "WHERE status != 'pending' GROUP BY customer_id, meter, threshold, status ORDER BY 1, 2, 3"
    )
    deadline = time.monotonic() + 30
    while "(no rows)" in inside(address, "sql", query, show=False)[1] and time.monotonic() < deadline:
        time.sleep(1)
    inside(address, "sql", query)


def inside(address: forward.RunningRun, *argv: str, show: bool = True) -> tuple[int, str]:
    """Run a command inside `run` (meterline.forward), as `meterline <argv>` beside it would."""
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        code = forward.forward(address, argv, announce=False)
    if show:
        print(captured.getvalue(), end="")
    return code, captured.getvalue()


def clickhouse_exact(address: forward.RunningRun, expected: Expected) -> bool:
    inside(address, "sql", totals_sql(expected.levels))
    code, output = inside(address, "sql", "--format", "json", WINDOWS, show=False)
    stored = {
        (r["customer_id"], r["meter"], int(r["w"])): (int(r["v"]), int(r["n"])) for r in json.loads(output)
    }
    wanted = {key: (value, count) for key, (value, count) in expected.totals.items()}
    exact = sum(1 for key, total in wanted.items() if stored.get(key) == total)
    same = code == 0 and stored == wanted
    verdict = "" if same else ", DIFFERENT"
    print(f"  usage_windows FINAL, window by window: {exact:,} of {len(wanted):,} exact{verdict}")
    return same


def dead_letters_exact(address: forward.RunningRun, expected: Expected) -> bool:
    code, output = inside(address, "sql", "--format", "json", DEAD_LETTERS, show=False)
    stored = {row["reason"]: int(row["records"]) for row in json.loads(output)} if code == 0 else {}
    rows = [
        {
            "reason": reason,
            "expected": expected.rejected.get(reason, 0),
            "in ClickHouse": stored.get(reason, 0),
        }
        for reason in sorted(set(stored) | set(expected.rejected))
    ]
    print(render(rows))
    same = code == 0 and stored == dict(expected.rejected)
    print(f"  every rejected record is there with its reason: {'yes' if same else 'NO'}")
    return same


def stripe_exact(config: Config, spec: WorkloadSpec, expected: Expected) -> bool:
    from meterline.sinks.stripe.calls import caller_for
    from meterline.sinks.stripe.totals import meter_totals

    ours = expected.at_stripe()  # a peak meter's: its month's peak
    starts = [start for _, _, start in expected.totals]
    # The end of the last window: a time_weighted meter's are hours (streams.accrual).
    theirs = meter_totals(caller_for(config), config, customer_ids(spec), min(starts), max(starts) + SLICE_MS)
    rows = [
        {
            "customer": c,
            "meter": m,
            "expected": ours[(c, m)],
            "Stripe": theirs.get((c, m), 0),
            "drift": theirs.get((c, m), 0) - ours[(c, m)],
        }
        for c, m in sorted(ours)
    ]
    print(render(rows))
    exact = all(row["drift"] == 0 for row in rows)
    print(f"  Stripe {'equals' if exact else 'DIFFERS FROM'} the generator for all {len(rows)} pairs")
    if expected.levels:
        print(
            f"  ({', '.join(sorted(expected.levels))}: each month's answer, summed over the months the usage "
            "touches, late events reaching back into the previous one)"
        )
    return exact


def stripe_would_bill_the_preview(
    config: Config, address: forward.RunningRun, customer: str, month: str
) -> bool:
    """Stripe's documented line rules (sinks.stripe.invoice_rules) applied to the prices `stripe
    sync` made and to Stripe's own totals of the month: the invoice Stripe would issue, line by
    line, beside the preview's."""
    import json
    from decimal import Decimal

    from meterline.reconciler.billing.periods import period_bounds
    from meterline.sinks.stripe.calls import caller_for
    from meterline.sinks.stripe.catalog.prices import base_fee_lookup_key, lookup_key
    from meterline.sinks.stripe.invoice_rules import line_amount, line_quantity
    from meterline.sinks.stripe.totals import StripeTotals

    code, output = inside(
        address, "invoice", "preview", "--customer", customer, "--period", month, "--json", show=False
    )
    if code != 0:
        return False
    preview = json.loads(output)
    plan = config.plan_for(customer)
    unit = plan.currency
    caller = caller_for(config)
    totals = StripeTotals(caller, config)
    start, end = period_bounds(month)
    rows = []
    for line in preview["lines"]:
        if not line["billed_by_stripe"]:
            continue
        meter = line["meter"]
        key = base_fee_lookup_key(plan.name) if meter is None else lookup_key(plan.name, meter)
        # `tiers` comes back only when expanded (https://docs.stripe.com/api/prices/object#price_object-tiers)
        listed, _ = caller.retrying(
            partial(caller.client.v1.prices.list, {"lookup_keys": [key], "expand": ["data.tiers"]})
        )
        price = listed.data[0].to_dict()
        quantity = (
            Decimal(1) if meter is None else line_quantity(price, totals.total(customer, meter, start, end))
        )
        theirs, ours = line_amount(price, quantity), int(line["amount_minor_units"])
        rows.append(
            {
                "line": line["description"],
                "preview": unit.format(unit.from_minor(ours)),
                "Stripe would bill": unit.format(unit.from_minor(theirs)),
                "same": "yes" if theirs == ours else "NO",
            }
        )
    same = all(row["same"] == "yes" for row in rows)
    print(render(rows))
    print(
        f"  Stripe's line rules on Stripe's own totals bill what the preview shows: {'yes' if same else 'NO'}"
    )
    return same
