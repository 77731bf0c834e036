"""The engines' own threads, apart from the event loop's default executor.

The default executor (min(32, CPUs + 4) threads) resolves the apiserver's name and serves the
login; engines' blocking work (copying a dump's output, hashing, decrypting, file I/O) runs here
instead, so that a dump waiting on a database lock never delays a status write.
"""

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")

ENGINE_POOL = ThreadPoolExecutor(max_workers=64, thread_name_prefix="habitat-engine")
"""Threads for the engines' blocking work: copying a dump's output, hashing, decrypting, file I/O.

A dump holds one for its whole length (longer when the database makes it wait on a lock), so this
is not the loop's default executor: that one (min(32, CPUs + 4) threads) serves the Kubernetes
client, which must not wait behind dumps. An operation holds at most one thread at a time.
"""


def in_pool(function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> asyncio.Future[_T]:
    """`function` in an ENGINE_POOL thread, with the caller's context variables (as asyncio.to_thread)."""
    call = functools.partial(contextvars.copy_context().run, function, *args, **kwargs)
    return asyncio.get_running_loop().run_in_executor(ENGINE_POOL, call)


async def in_thread(function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run `function` in an ENGINE_POOL thread; if cancelled, still wait for it, so that cleanup
    (closing or removing the file it works on) never races it."""
    return await _held(in_pool(function, *args, **kwargs))


async def in_stoppable_thread(function: Callable[[threading.Event], _T]) -> _T:
    """Run `function(stop)` in an ENGINE_POOL thread; if cancelled, set `stop` (which `function`
    checks between blocks of its work) and wait for it, as in_thread does."""
    stop = threading.Event()
    return await _held(in_pool(function, stop), stop.set)


async def _held(work: asyncio.Future[_T], on_cancel: Callable[[], None] | None = None) -> _T:
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        if on_cancel is not None:
            on_cancel()
        await asyncio.wait([work])
        if not work.cancelled():
            work.exception()  # retrieved: the cancellation is what propagates
        raise
