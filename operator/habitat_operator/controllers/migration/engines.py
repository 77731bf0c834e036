"""The engines a Migration's run is given (a Protocol per engine family), so that a unit test hands
it stand-ins instead of patching module paths."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from habitat_operator.engines.postgres import lint as squawk
from habitat_operator.engines.postgres.lint import Finding
from habitat_operator.engines.postgres.locks import Locker, database_lock
from habitat_operator.engines.postgres.migrations import HistoryRow, MigrationSession, Script, Timeouts
from habitat_operator.engines.postgres.uri import ConnectionTarget


class History(Protocol):
    """A session on the target database: its migration history, and running migrations."""

    async def end_leftovers(self, application_name: str) -> None: ...
    async def ensure_history(self) -> None: ...
    async def history(self) -> list[HistoryRow]: ...
    async def baseline(self, script: Script, applied_by: str) -> None: ...
    async def mark_clean(self, version: int) -> None: ...
    async def forget(self, version: int) -> None: ...
    async def create_restore_point(self, name: str) -> str: ...
    async def apply(self, script: Script, applied_by: str) -> int: ...
    async def revert(self, down: Script) -> int: ...


class Connect(Protocol):
    def __call__(
        self, target: ConnectionTarget, application_name: str, table: str, timeouts: Timeouts
    ) -> AbstractAsyncContextManager[History]: ...


class Linter(Protocol):
    async def __call__(self, scripts: Sequence[Script], skip: Sequence[str] = ()) -> list[Finding]: ...


@dataclass(frozen=True)
class MigrationEngines:
    connect: Connect
    lock: Locker
    lint: Linter


POSTGRES = MigrationEngines(connect=MigrationSession.connect, lock=database_lock, lint=squawk.lint)
