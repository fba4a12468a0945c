"""What a process and its descendants use, read from /proc (Linux): for the benchmarks that run
workers as processes of their own."""

from __future__ import annotations

import bisect
import os
from pathlib import Path


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants: the worker under py-spy (--profile) is py-spy's child."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
    return [pid] + [descendant for child in children for descendant in process_tree(int(child))]


def cpu_seconds(pid: int) -> float:
    """The user and system CPU time a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):  # gone, before the open or during the read
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def rss_kib(pid: int) -> int:
    """A process's resident memory now, in KiB (0: gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):  # gone, before the open or during the read
        pass
    return 0


def cpu_between(
    usage: list[tuple[float, float, float, float]], clock: int, start: float, end: float
) -> tuple[float, float]:
    """The worker's and the broker's CPU seconds from `start` to `end` on `clock` (0 monotonic, 1
    wall), interpolated between the samples taken every ~0.1 s."""

    times = [sample[clock] for sample in usage]

    def at(moment: float, column: int) -> float:
        i = min(max(bisect.bisect_left(times, moment), 1), len(usage) - 1)
        (t0, c0), (t1, c1) = (times[i - 1], usage[i - 1][column]), (times[i], usage[i][column])
        return c0 + (c1 - c0) * (moment - t0) / (t1 - t0) if t1 > t0 else c1

    return at(end, 2) - at(start, 2), at(end, 3) - at(start, 3)
