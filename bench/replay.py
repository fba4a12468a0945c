"""Replay throughput: events/s re-derived by `reconciler.checks.rederive.rederive` (the stream app's judge and
processor, one process per core taking partitions in turn, nothing committed), on the stream
benchmark's workloads.

Timed end to end: appending the end markers, starting the processes, reading and folding every
partition up to its marker, collecting the totals.

Run: .venv/bin/python bench/replay.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

from meterline.produce import produce_workload
from meterline.reconciler.checks.rederive import rederive
from meterline.streams.windows import DAY_MS
from meterline.topics import isolated_topics
from meterline.workload import WorkloadSpec

from harness import local_stack, report

LIVE_SPAN_MS = 21 * 60_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    with local_stack("replay") as (base, bootstrap, _, _):
        rows: list[dict[str, object]] = []
        for label, span in (("one day of event time", DAY_MS), ("20 minutes of event time", LIVE_SPAN_MS)):
            config = isolated_topics(base, bootstrap)
            now = int(time.time() * 1000)
            spec = WorkloadSpec(
                seed=1,
                events=args.events,
                customers=50,
                start_ms=now - span,
                span_ms=span - 60_000,
                duplicate_rate=0.01,
                out_of_order_rate=0.02,
                late_rate=0.001,
            )
            result, _ = produce_workload(config, bootstrap, spec, workers=os.cpu_count() or 1)
            rederived = rederive(config, bootstrap, spec.start_ms - DAY_MS, now + DAY_MS)
            assert rederived.events == args.events, (rederived.events, args.events)
            rows.append(
                {
                    "workload (packed)": label,
                    "events": rederived.events,
                    "messages": result.messages,
                    "windows": len(rederived.windows()),
                    "seconds": round(rederived.seconds, 1),
                    "events/s": round(rederived.events / rederived.seconds),
                    # the largest replay process so far (this row's, unless the one before was larger)
                    "peak RSS MiB": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024,
                }
            )
    report(rows)


if __name__ == "__main__":
    main()
