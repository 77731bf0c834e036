"""How many operations run at once: per operator, and per database.

Fifty Backups applied at once must not start fifty pg_dumps against one server: an operation takes
a slot of the operator's and one of its database's before it starts, and waits (its object says
`Queued`) while none is free. Slots are in memory: they bound this process's load; what must hold
across processes (two writers of one database) is the database lock's job.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from habitat_operator.metrics import OPERATIONS_QUEUED, OPERATIONS_RUNNING

DEFAULT_MAX_OPERATIONS = 8
DEFAULT_MAX_PER_DATABASE = 1


@dataclass
class OperationSlots:
    max_operations: int = DEFAULT_MAX_OPERATIONS
    max_per_database: int = DEFAULT_MAX_PER_DATABASE
    _total: asyncio.Semaphore | None = field(default=None, init=False)
    _databases: dict[str, asyncio.Semaphore] = field(default_factory=dict, init=False)
    _users: dict[str, int] = field(default_factory=dict, init=False)

    def _semaphore(self) -> asyncio.Semaphore:
        if self._total is None:  # created lazily: it binds to the running event loop
            self._total = asyncio.Semaphore(self.max_operations)
        return self._total

    @asynccontextmanager
    async def hold(self, database: str, on_wait: Callable[[str], Awaitable[None]]) -> AsyncIterator[None]:
        """Holds a slot of the operator's and one of `database`'s for the block; when it has to
        wait, calls `on_wait` once with why, first."""
        per_database = self._databases.setdefault(database, asyncio.Semaphore(self.max_per_database))
        self._users[database] = self._users.get(database, 0) + 1
        total = self._semaphore()
        OPERATIONS_QUEUED.inc()
        queued = True
        try:
            if per_database.locked():
                await on_wait(f"another operation on {database} is running (at most {self.max_per_database})")
            async with per_database:
                if total.locked():
                    await on_wait(f"the operator runs {self.max_operations} operations already")
                async with total:
                    OPERATIONS_QUEUED.dec()
                    queued = False
                    with OPERATIONS_RUNNING.track_inprogress():
                        yield
        finally:
            if queued:
                OPERATIONS_QUEUED.dec()
            self._users[database] -= 1
            if not self._users[database]:  # forget databases nobody waits for
                del self._users[database]
                self._databases.pop(database, None)
