"""The operator caps glibc's malloc arenas before its threads start: each thread that allocates would
otherwise get an arena of its own (up to 8 per core), and memory freed in it after a burst of work
stays with that arena instead of going back to the system."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from habitat_operator import health

# Eight threads that allocate at the same time, then the number of arenas malloc_info reports.
PROBE = textwrap.dedent(
    """
    import ctypes, sys, tempfile, threading
    from habitat_operator import health
    if sys.argv[1] == "capped":
        health.limit_malloc_arenas()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.fopen.restype = ctypes.c_void_p
    together = threading.Barrier(8)

    def allocate():
        block = libc.malloc(64 * 1024)
        together.wait()
        libc.free(block)

    threads = [threading.Thread(target=allocate) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with tempfile.NamedTemporaryFile() as report:
        stream = ctypes.c_void_p(libc.fopen(report.name.encode(), b"w"))
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        print(open(report.name).read().count("<heap nr="))
    """
)


def arenas(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60, check=True
    )
    return int(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_threads_share_at_most_the_capped_number_of_arenas() -> None:
    assert arenas("uncapped") > health.MALLOC_ARENAS  # the probe does make arenas
    assert arenas("capped") <= health.MALLOC_ARENAS
