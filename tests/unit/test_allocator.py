"""core.allocator: threads started after the limit share two malloc arenas (glibc), counted by
glibc's own report (malloc_info), in a process of their own."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's arenas only"
)

_ARENAS_AFTER_SIX_THREADS = textwrap.dedent(
    """
    import ctypes, sys, threading
    from meterline.core.allocator import limit_arenas

    if sys.argv[1] == "limit":
        assert limit_arenas(2)
    done = threading.Barrier(7)
    kept = []

    def allocate():
        kept.append(bytearray(1 << 16))  # past pymalloc: glibc's malloc, from this thread's arena
        done.wait()  # all six alive at once: none hands its arena to the next

    threads = [threading.Thread(target=allocate) for _ in range(6)]
    for thread in threads:
        thread.start()
    done.wait()
    libc = ctypes.CDLL(None)
    libc.open_memstream.restype = ctypes.c_void_p
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    buffer, size = ctypes.c_char_p(), ctypes.c_size_t()
    stream = libc.open_memstream(ctypes.byref(buffer), ctypes.byref(size))
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(buffer.value.decode().count("<heap nr="))
    """
)


def _arenas(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _ARENAS_AFTER_SIX_THREADS, mode], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_threads_started_after_the_limit_share_two_arenas() -> None:
    assert _arenas("default") == 7  # the main thread's and one each: the limit is what holds them
    assert _arenas("limit") == 2
