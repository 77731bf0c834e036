"""Stand-ins for the engines the controllers call (pg_dump, pg_restore, the database lock).

Each records what it was asked and fails when a test queues an error for it; nothing reaches
PostgreSQL. Every run takes its engines as a constructor argument, and a test hands it these
(Backup, Restore, Migration) or the stand-ins in its own module (ReplayJob's event store and
broker, ScalePolicy's target and trigger sources); no module path is patched.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from pathlib import Path

from habitat_operator.api.restore import VerificationQuery
from habitat_operator.engines.artifacts.store import file_uri
from habitat_operator.engines.postgres import restore as restore_engine
from habitat_operator.engines.postgres import scratch as scratch_engine
from habitat_operator.engines.postgres.dump import BackupRequest, BackupResult
from habitat_operator.engines.postgres.locks import DatabaseLock
from habitat_operator.engines.postgres.migrations import HistoryRow, MigrationFailed, Script, Timeouts
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.errors import OperationError

ARTIFACT_BYTES = b"PGDMP fake archive " * 64


class FakeDump:
    """`run_backup`: writes a small artifact at the destination, or raises the next queued error."""

    def __init__(self) -> None:
        self.requests: list[BackupRequest] = []
        self.errors: list[BaseException] = []
        self.during: Callable[[BackupRequest], None] | None = None  # runs while "dumping"
        self.gate: asyncio.Event | None = None  # when set, each dump waits for it

    def fail(self, *errors: BaseException) -> None:
        self.errors.extend(errors)

    async def __call__(self, request: BackupRequest) -> BackupResult:
        self.requests.append(request)
        if self.during is not None:
            self.during(request)
        if self.gate is not None:
            await self.gate.wait()
        if self.errors:
            raise self.errors.pop(0)
        assert request.destination is not None
        request.destination.parent.mkdir(parents=True, exist_ok=True)
        request.destination.write_bytes(ARTIFACT_BYTES)
        return BackupResult(
            uri=file_uri(request.destination),
            size_bytes=len(ARTIFACT_BYTES),
            sha256=hashlib.sha256(ARTIFACT_BYTES).hexdigest(),
            format=request.format,
            encrypted=request.encryption_key is not None,
            pg_version="15.8",
            verified=request.verify,
        )


class FakePostgres:
    """The module `engines.postgres.restore`, as a Restore's run is given it (`RestoreEngines.restore`).

    `calls` lists (operation, database) in order; `databases` are those that exist (a drill's scratch
    database comes and goes); `non_empty` are those holding objects.
    """

    def __init__(self, databases: Sequence[str] = ()) -> None:
        self.calls: list[tuple[str, str]] = []
        self.databases: set[str] = set(databases)
        self.non_empty: set[str] = set()
        self.restore_errors: list[BaseException] = []
        self.check_errors: list[BaseException] = []
        self.outcomes: list[restore_engine.QueryOutcome] = []
        self.requests: list[restore_engine.RestoreRequest] = []

    async def check_artifact(
        self,
        path: Path,
        format: str,
        expected_sha256: str | None,
        encryption_key: bytes | None,
        *,
        checksum: bool = True,
    ) -> str | None:
        self.calls.append(("check_artifact", path.name))
        if self.check_errors:
            raise self.check_errors.pop(0)
        return expected_sha256

    async def run_restore(self, request: restore_engine.RestoreRequest) -> restore_engine.RestoreResult:
        self.calls.append(("run_restore", request.target.dbname))
        self.requests.append(request)
        if self.restore_errors:
            raise self.restore_errors.pop(0)
        self.non_empty.add(request.target.dbname)
        return restore_engine.RestoreResult(duration_seconds=0.1, sha256=None)

    async def database_exists(self, target: ConnectionTarget) -> bool:
        self.calls.append(("database_exists", target.dbname))
        return target.dbname in self.databases

    async def create_database(self, target: ConnectionTarget) -> None:
        self.calls.append(("create_database", target.dbname))
        self.databases.add(target.dbname)

    async def drop_database(self, target: ConnectionTarget) -> None:
        self.calls.append(("drop_database", target.dbname))
        self.databases.discard(target.dbname)
        self.non_empty.discard(target.dbname)

    async def is_empty(self, target: ConnectionTarget) -> bool:
        self.calls.append(("is_empty", target.dbname))
        return target.dbname not in self.non_empty

    async def run_verification_queries(
        self, target: ConnectionTarget, queries: Sequence[VerificationQuery]
    ) -> list[restore_engine.QueryOutcome]:
        self.calls.append(("run_verification_queries", target.dbname))
        return list(self.outcomes)

    def operations(self) -> list[str]:
        return [operation for operation, _ in self.calls]


class FakeLock:
    """`database_lock`: granted, unless `holder` names someone who holds it already."""

    def __init__(self) -> None:
        self.holder: str | None = None
        self.taken: list[tuple[str, str]] = []  # (database, holder) of each try
        self.held: set[str] = set()  # databases locked now

    def __call__(self, target: ConnectionTarget, holder: str) -> AbstractAsyncContextManager[DatabaseLock]:
        return self._lock(target, holder)

    @asynccontextmanager
    async def _lock(self, target: ConnectionTarget, holder: str) -> AsyncIterator[DatabaseLock]:
        self.taken.append((target.dbname, holder))
        if self.holder is not None:
            yield DatabaseLock(acquired=False, holder=self.holder)
            return
        assert target.dbname not in self.held, f"{target.dbname} locked twice"
        self.held.add(target.dbname)
        try:
            yield DatabaseLock(acquired=True)
        finally:
            self.held.discard(target.dbname)


class FakeScratch:
    """The module `engines.postgres.scratch` (`RestoreEngines.scratch`): owner marks recorded, orphans
    listed from `orphans`."""

    def __init__(self, postgres: FakePostgres) -> None:
        self.postgres = postgres
        self.orphans: list[scratch_engine.ScratchDatabase] = []

    async def mark_owner(self, target: ConnectionTarget, namespace: str, uid: str) -> None:
        self.postgres.calls.append(("mark_owner", target.dbname))

    async def list_scratch_databases(self, target: ConnectionTarget) -> list[scratch_engine.ScratchDatabase]:
        return [o for o in self.orphans if o.name in self.postgres.databases]


class FakeMigrationDatabase:
    """A database's migration history, as `MigrationEngines.connect` opens sessions on it.

    `apply_errors` are raised by the next applies, in order (None: that one succeeds); with `gate`,
    each apply waits for it (a long migration); `cancelled` counts applies cut off mid-way (their
    transaction rolled back).
    """

    def __init__(self) -> None:
        self.rows: list[HistoryRow] = []
        self.applied: list[int] = []
        self.apply_errors: list[BaseException | None] = []
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.cancelled = 0
        self.sessions: list[str] = []
        self.log: list[str] = []  # restore points and applies, in order
        self.restore_point_error: OperationError | None = None

    def connect(
        self, target: ConnectionTarget, application_name: str, table: str, timeouts: Timeouts
    ) -> AbstractAsyncContextManager[FakeMigrationDatabase]:
        return self._session(application_name)

    @asynccontextmanager
    async def _session(self, application_name: str) -> AsyncIterator[FakeMigrationDatabase]:
        self.sessions.append(application_name)
        yield self

    async def end_leftovers(self, application_name: str) -> None:
        pass

    async def ensure_history(self) -> None:
        pass

    async def history(self) -> list[HistoryRow]:
        return sorted(self.rows, key=lambda row: row.version)

    async def baseline(self, script: Script, applied_by: str) -> None:
        self.rows.append(self._row(script, applied_by, baselined=True))

    async def mark_clean(self, version: int) -> None:
        self.rows = [replace(row, dirty=False) if row.version == version else row for row in self.rows]

    async def forget(self, version: int) -> None:
        self.rows = [row for row in self.rows if row.version != version]

    async def create_restore_point(self, name: str) -> str:
        if self.restore_point_error is not None:
            raise self.restore_point_error
        self.log.append(f"restore point {name}")
        return "0/3000148"

    async def apply(self, script: Script, applied_by: str) -> int:
        self.log.append(f"apply {script.version}")
        self.started.set()
        if self.gate is not None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        error = self.apply_errors.pop(0) if self.apply_errors else None
        if error is not None:
            if isinstance(error, MigrationFailed) and error.dirty:
                self.rows.append(replace(self._row(script, applied_by), dirty=True))
            raise error
        self.rows.append(self._row(script, applied_by))
        self.applied.append(script.version)
        return 5

    async def revert(self, down: Script) -> int:
        self.rows = [row for row in self.rows if row.version != down.version]
        return 5

    @staticmethod
    def _row(script: Script, applied_by: str, baselined: bool = False) -> HistoryRow:
        return HistoryRow(
            script.version,
            script.name,
            script.checksum,
            dt.datetime(2024, 6, 1, tzinfo=dt.UTC),
            5,
            applied_by,
            dirty=False,
            baselined=baselined,
        )
