"""The engines a Restore's run is given (a Protocol per engine family), so that a unit test hands
it stand-ins instead of patching module paths."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from habitat_operator.api.restore import VerificationQuery
from habitat_operator.engines.postgres import amcheck, recovery, restore, scratch
from habitat_operator.engines.postgres.dump import ArtifactFormat
from habitat_operator.engines.postgres.locks import Locker, database_lock
from habitat_operator.engines.postgres.recovery import RecoveredDump, RecoveryRequest
from habitat_operator.engines.postgres.restore import QueryOutcome, RestoreRequest, RestoreResult
from habitat_operator.engines.postgres.scratch import ScratchDatabase
from habitat_operator.engines.postgres.uri import ConnectionTarget


class Restorer(Protocol):
    """pg_restore and the target's databases, as `engines.postgres.restore` offers them."""

    async def check_artifact(
        self,
        path: Path,
        format: ArtifactFormat,
        expected_sha256: str | None,
        encryption_key: bytes | None,
        *,
        checksum: bool = True,
    ) -> str | None: ...
    async def run_restore(self, request: RestoreRequest) -> RestoreResult: ...
    async def database_exists(self, target: ConnectionTarget) -> bool: ...
    async def create_database(self, target: ConnectionTarget) -> None: ...
    async def drop_database(self, target: ConnectionTarget) -> None: ...
    async def is_empty(self, target: ConnectionTarget) -> bool: ...
    async def run_verification_queries(
        self, target: ConnectionTarget, queries: Sequence[VerificationQuery]
    ) -> list[QueryOutcome]: ...


class ScratchMarks(Protocol):
    """A drill's scratch databases, marked with their owner, as `engines.postgres.scratch` offers them."""

    async def mark_owner(self, target: ConnectionTarget, namespace: str, uid: str) -> None: ...
    async def list_scratch_databases(self, target: ConnectionTarget) -> list[ScratchDatabase]: ...


class Recoverer(Protocol):
    """A private server's point-in-time recovery, as `engines.postgres.recovery` offers it."""

    def recovered_dump(self, request: RecoveryRequest) -> AbstractAsyncContextManager[RecoveredDump]: ...


class Checker(Protocol):
    """pg_amcheck of a database of the operator's own, as `engines.postgres.amcheck` offers it."""

    async def check_database(self, target: ConnectionTarget) -> None: ...


@dataclass(frozen=True)
class RestoreEngines:
    restore: Restorer
    scratch: ScratchMarks
    lock: Locker
    recovery: Recoverer = recovery
    amcheck: Checker = amcheck


POSTGRES = RestoreEngines(restore=restore, scratch=scratch, lock=database_lock)
