"""What a WalArchive keeps across its steps: the running receiver, the open storage, a base backup
in flight. One `Streams` registry (on the handlers' `Shared`, keyed by the object's uid) holds them,
so that whatever ends an archive's daemon (its deletion, a new spec, the operator stopping or
standing by for a peer) stops its receiver, and the operator's clean-up finds any left.

Closing a stream never drops its slot, except when the object is deleted: the slot is what keeps
the server's WAL while nobody streams it, so an operator that restarts, or a standby that takes
over, resumes where the slot stands, without a gap.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import structlog

from habitat_operator.controllers.walarchive.engines import POSTGRES_WAL, Archive, Receiver, WalEngines
from habitat_operator.engines.postgres.replication import ServerIdentity
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.wal.basebackup import BaseBackupEntry
from habitat_operator.engines.wal.catalog import RecoveryWindow
from habitat_operator.engines.wal.uploader import PartialUpload
from habitat_operator.errors import OperationError

log = structlog.get_logger(__name__)


@dataclass
class Stream:
    """One archive's streaming state, for as long as its server and storage stay the same."""

    uid: str
    key: str  # the spec's fields the receiver and the storage are made of
    engines: WalEngines
    target: ConnectionTarget
    slot: str
    spool: Path
    archive: Archive
    close_storage: Callable[[], Awaitable[None]]
    identity: ServerIdentity | None = None
    receiver: Receiver | None = None
    archived_lsn: int | None = None
    partial: PartialUpload | None = None  # the growing segment as last archived
    catalog_read: bool = False  # the newest base backup looked up (once per stream)
    last_base_backup_started: datetime | None = None
    base_backup: asyncio.Task[BaseBackupEntry] | None = None
    base_backup_failures: int = 0
    base_backup_error: str | None = None  # the last attempt's, until one succeeds
    base_backup_retry_at: float = 0.0  # monotonic
    retention_at: float = 0.0  # monotonic: when retention runs next
    window_at: float = 0.0  # monotonic: when the recovery window is read next
    window: RecoveryWindow = field(default_factory=lambda: RecoveryWindow(None, None))
    progress_written: float = -math.inf  # monotonic: when status last got the LSNs
    over_budget: bool = False
    dropped_at: float = -math.inf  # monotonic: when the operator last dropped the slot over its budget
    storage_stale: bool = False  # its keys were refused: read the Secrets again
    closed: bool = field(default=False, init=False)

    async def shut(self, drop_slot: bool) -> None:
        """Stops the receiver and a base backup in flight; drops the slot and the spool only when
        told to (the object is gone)."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.base_backup is not None:
                self.base_backup.cancel()
                with suppress(asyncio.CancelledError, Exception):  # its outcome no longer matters
                    await self.base_backup
            if self.receiver is not None:
                await self.receiver.stop()
            if drop_slot:
                try:
                    await self.engines.drop_slot(self.target, self.slot)
                except OperationError as error:
                    log.warning("could not drop the replication slot", slot=self.slot, error=error.message)
                await self.engines.remove_spool(self.spool)
        finally:
            await self.close_storage()


class Streams:
    """The streams of the archives this operator runs, by object uid, and the engines they run on
    (the real ones; a unit test hands its stand-ins here)."""

    def __init__(self, engines: WalEngines = POSTGRES_WAL) -> None:
        self.engines = engines
        self._streams: dict[str, Stream] = {}

    def get(self, uid: str) -> Stream | None:
        return self._streams.get(uid)

    def add(self, stream: Stream) -> None:
        assert stream.uid not in self._streams, "close the old stream first"
        self._streams[stream.uid] = stream

    async def close(self, uid: str, *, drop_slot: bool = False) -> None:
        stream = self._streams.pop(uid, None)
        if stream is not None:
            await stream.shut(drop_slot)

    async def close_all(self) -> None:
        """The operator stops: every receiver stops, every slot stays."""
        for uid in list(self._streams):
            await self.close(uid)
