"""What letting a month's first sightings go costs the stream worker (issue 37): a `unique_count`
meter keeps each value first seen in a month as an entry of the partition's RocksDB store
(streams.state), and the month's entries are found by a scan of every entry of the partition once
no event can reach the month any more, then deleted. The scan runs once a month per partition,
inside the worker's processing: this measures how long it holds the worker, beside the time the
same store took to write those sightings (the baseline, measured in the same run).

Run: .venv/bin/python bench/sightings_forget.py [--sightings 1000000] [--windows 200000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from meterline.core.months import calendar_month
from meterline.streams.state import PartitionStore, WindowKey, WindowState, window_store_key
from meterline.streams.stores import RocksStore

from harness import report

MONTH = calendar_month(1_780_000_000_000)[0]
WRITE_EVERY = 10_000  # sightings per write-behind: a worker's commit interval on a busy partition


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sightings", type=int, default=1_000_000)
    parser.add_argument("--windows", type=int, default=200_000, help="other entries the scan reads past")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="meterline-bench-sightings-"))
    try:
        entries = RocksStore(directory)
        store = PartitionStore(entries, 0)
        entries.write(
            {
                window_store_key(0, WindowKey(f"cust-{n % 1000}", "api_calls", MONTH + n * 60_000)): (
                    WindowState(
                        WindowKey(f"cust-{n % 1000}", "api_calls", MONTH + n * 60_000), value=n
                    ).encode()
                )
                for n in range(args.windows)
            }
        )
        started = time.perf_counter()
        for n in range(args.sightings):
            store.save_sighting((f"cust-{n % 1000}", "active_users", MONTH, f"user-{n}"), (f"ev-{n}", MONTH))
            if n % WRITE_EVERY == WRITE_EVERY - 1:
                store.write_behind()
        store.write_behind()
        written = time.perf_counter() - started

        store.forget_sightings(MONTH)
        store.write_behind()  # let go: deleted by the next write, after its clock
        started = time.perf_counter()
        deleted = store.write_behind()
        forgotten = time.perf_counter() - started
        assert deleted == args.sightings, deleted
    finally:
        shutil.rmtree(directory)
    report(
        [
            {
                "what": "write the month's sightings (baseline)",
                "entries": args.sightings,
                "seconds": round(written, 2),
                "x baseline": 1.0,
            },
            {
                "what": f"scan {args.sightings + args.windows:,} entries, delete the month's",
                "entries": args.sightings,
                "seconds": round(forgotten, 2),
                "x baseline": round(forgotten / written, 2),
            },
        ]
    )


if __name__ == "__main__":
    main()
