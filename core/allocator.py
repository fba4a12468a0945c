"""glibc's malloc, held to two arenas in the stream worker.

glibc gives each new thread an arena of its own, up to eight per core. The stream worker's native
threads (librdkafka's, RocksDB's, Faust's consumer thread) each fill one and leave it fragmented.
On a day of sparse windows the worker's peak RSS read 287-392 MiB (mean 328, 11 runs) without a
limit and 257-366 MiB (mean 291, 14 runs) with two arenas, at the same rate (BENCHMARKS.md, issue
18). Only arenas made after the call are held: call it before the worker starts its clients.
"""

from __future__ import annotations

import ctypes

_M_ARENA_MAX = -8  # glibc's malloc.h


def limit_arenas(arenas: int = 2) -> bool:
    """Allow at most `arenas` malloc arenas from now on; False where the C library has no such
    setting (not glibc), which leaves the allocator as it is."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no such symbol; no C library by that handle
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # musl has mallopt but no arenas: it returns 0, as glibc does for an option it refuses.
    return bool(mallopt(_M_ARENA_MAX, arenas))
