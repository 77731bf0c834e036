"""Liveness that means something: /healthz fails when the operator can no longer do its work.

The event loop runs every Kubernetes call; its default thread pool resolves the apiserver's name for
each new connection and reads the login's files. A heartbeat sends a no-op through that pool every
second; when none has come back for STALL_SECONDS (the pool starved, or the loop blocked), /healthz
says so and the kubelet restarts the pod. A loop that is blocked outright cannot answer /healthz at
all, which fails the probe too.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import time

BEAT_SECONDS = 1.0
STALL_SECONDS = 20.0


def _noop() -> None:
    pass


class Heartbeat:
    def __init__(self) -> None:
        self.last_beat = time.monotonic()

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(_noop)
            self.last_beat = time.monotonic()
            await asyncio.sleep(BEAT_SECONDS)

    def stalled_for(self) -> float:
        """Seconds since a heartbeat last made it through the loop and its thread pool."""
        return time.monotonic() - self.last_beat

    def healthy(self) -> bool:
        return self.stalled_for() < STALL_SECONDS


TRIM_SECONDS = 30.0
_M_MMAP_THRESHOLD = -3  # malloc.h
_M_ARENA_MAX = -8
LARGE_BUFFER_BYTES = 1 << 20
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> None:
    """At most MALLOC_ARENAS glibc arenas, shared by all threads (as MALLOC_ARENA_MAX, which the image
    also sets). Uncapped, every thread that allocates gets an arena of its own, up to 8 per core: the
    engines' threads copy dumps into theirs, and what a burst freed there stays with that arena.
    Call it before any thread starts: glibc fixes the limit at its first new arena."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def map_large_buffers() -> None:
    """Buffers of LARGE_BUFFER_BYTES and more (chunks of a dump, an upload's 16 MiB parts) come from
    mmap and go back to the system when freed. Left to itself, glibc raises its mmap threshold after
    the first such free and serves them from the heaps of the threads that use them, which keep the
    memory: the peak would grow with each thread that ever held a part."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES)


async def release_memory_periodically() -> None:
    """Hands freed heap back to the system now and then: after a burst of watch events (a thousand
    objects applied at once) glibc keeps the freed arenas, and the pod's RSS would stay at its peak."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    while True:
        await asyncio.sleep(TRIM_SECONDS)
        gc.collect()
        if trim is not None:
            trim(0)
