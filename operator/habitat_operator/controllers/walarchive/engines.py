"""The engines a WalArchive's run is given (one Protocol), so that a unit test hands it stand-ins.

`WalEngines` names the engines of issue 20 with their own types: the replication probes
(`engines/postgres/replication.py`), the supervised receiver and the uploader (`engines/wal/
receiver.py`, `uploader.py`), base backups, the catalog and retention (`engines/wal/basebackup.py`,
`catalog.py`, `retention.py`) and the archive's records (`engines/wal/records.py`). `PostgresWal`
is the real ones; blocking ones run in an engine thread.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from habitat_operator.engines.postgres import replication
from habitat_operator.engines.postgres.replication import ServerIdentity, SlotState
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.threads import in_thread
from habitat_operator.engines.wal import basebackup, catalog, records, retention, uploader
from habitat_operator.engines.wal.basebackup import BaseBackupEntry
from habitat_operator.engines.wal.catalog import RecoveryWindow
from habitat_operator.engines.wal.layout import ArchiveLayout
from habitat_operator.engines.wal.receiver import WalReceiver
from habitat_operator.engines.wal.store import ObjectStore
from habitat_operator.engines.wal.uploader import PartialUpload, UploadResult
from habitat_operator.errors import OperationError


@dataclass(frozen=True)
class Archive:
    """One archive in its storage, and how its objects are written."""

    store: ObjectStore
    layout: ArchiveLayout
    encryption_key: bytes | None
    zstd: bool


class Receiver(Protocol):
    """A supervised pg_receivewal: restarted with backoff until stopped."""

    @property
    def running(self) -> bool: ...

    @property
    def last_error(self) -> OperationError | None: ...

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class WalEngines(Protocol):
    async def server_identity(self, target: ConnectionTarget) -> ServerIdentity: ...
    async def slot_state(self, target: ConnectionTarget, slot: str) -> SlotState | None: ...
    async def create_slot(self, target: ConnectionTarget, slot: str) -> bool: ...
    async def drop_slot(self, target: ConnectionTarget, slot: str) -> bool: ...
    def receiver(
        self, target: ConnectionTarget, slot: str, spool: Path, application_name: str, synchronous: bool
    ) -> Receiver: ...
    async def upload_ready(self, spool: Path, archive: Archive) -> UploadResult: ...
    async def upload_partial(
        self, spool: Path, archive: Archive, previous: PartialUpload | None
    ) -> PartialUpload | None: ...
    async def take_base_backup(
        self, target: ConnectionTarget, archive: Archive, backup_id: str
    ) -> BaseBackupEntry: ...
    async def newest_base_backup(self, archive: Archive) -> BaseBackupEntry | None: ...
    async def recovery_window(self, archive: Archive) -> RecoveryWindow: ...
    async def apply_retention(self, archive: Archive, keep_since: datetime) -> int: ...
    async def read_identity(self, archive: Archive) -> dict[str, object] | None: ...
    async def write_identity(self, archive: Archive, identity: dict[str, object]) -> None: ...
    async def write_gap(self, archive: Archive, detected_at: str, entry: dict[str, object]) -> None: ...
    async def archived_end(self, archive: Archive, segment_size: int) -> int | None: ...
    async def spooled_end(self, spool: Path, segment_size: int) -> int | None: ...
    async def unexplained_holes(self, archive: Archive, segment_size: int) -> list[tuple[int, int]]: ...
    async def remove_spool(self, spool: Path) -> None: ...


class PostgresWal:
    """The real engines."""

    async def server_identity(self, target: ConnectionTarget) -> ServerIdentity:
        return await replication.server_identity(target)

    async def slot_state(self, target: ConnectionTarget, slot: str) -> SlotState | None:
        return await replication.slot_state(target, slot)

    async def create_slot(self, target: ConnectionTarget, slot: str) -> bool:
        return await replication.create_slot(target, slot)

    async def drop_slot(self, target: ConnectionTarget, slot: str) -> bool:
        return await replication.drop_slot(target, slot)

    def receiver(
        self, target: ConnectionTarget, slot: str, spool: Path, application_name: str, synchronous: bool
    ) -> Receiver:
        return WalReceiver(target, slot, spool, application_name, synchronous)

    async def upload_ready(self, spool: Path, archive: Archive) -> UploadResult:
        return await uploader.upload_ready(
            spool, archive.store, archive.layout, archive.encryption_key, archive.zstd
        )

    async def upload_partial(
        self, spool: Path, archive: Archive, previous: PartialUpload | None
    ) -> PartialUpload | None:
        return await uploader.upload_partial(
            spool, archive.store, archive.layout, archive.encryption_key, archive.zstd, previous
        )

    async def take_base_backup(
        self, target: ConnectionTarget, archive: Archive, backup_id: str
    ) -> BaseBackupEntry:
        return await basebackup.take_base_backup(
            target, archive.store, archive.layout, archive.encryption_key, archive.zstd, backup_id
        )

    async def newest_base_backup(self, archive: Archive) -> BaseBackupEntry | None:
        entries = await in_thread(catalog.base_backups, archive.store, archive.layout)
        return max(entries, key=lambda entry: entry.started_at, default=None)

    async def recovery_window(self, archive: Archive) -> RecoveryWindow:
        return await in_thread(catalog.recovery_window, archive.store, archive.layout)

    async def apply_retention(self, archive: Archive, keep_since: datetime) -> int:
        """The catalog read, retention's choice of keys, then the deletes. Nothing is held for a
        Restore here: the run skips retention while one reads the archive."""
        store, layout = archive.store, archive.layout
        found = await in_thread(catalog.read_catalog, store, layout)
        doomed = retention.expired_keys(found, layout, keep_since)
        for key in doomed:
            await in_thread(store.delete, key)
        return len(doomed)

    async def read_identity(self, archive: Archive) -> dict[str, object] | None:
        return await in_thread(catalog.read_identity, archive.store, archive.layout)

    async def write_identity(self, archive: Archive, identity: dict[str, object]) -> None:
        await in_thread(records.write_json, archive.store, archive.layout.identity, identity)

    async def write_gap(self, archive: Archive, detected_at: str, entry: dict[str, object]) -> None:
        await in_thread(records.write_json, archive.store, archive.layout.gap(detected_at), entry)

    async def archived_end(self, archive: Archive, segment_size: int) -> int | None:
        return await in_thread(records.archived_end, archive.store, archive.layout, segment_size)

    async def spooled_end(self, spool: Path, segment_size: int) -> int | None:
        return await in_thread(records.spooled_end, spool, segment_size)

    async def unexplained_holes(self, archive: Archive, segment_size: int) -> list[tuple[int, int]]:
        return await in_thread(records.unexplained_holes, archive.store, archive.layout, segment_size)

    async def remove_spool(self, spool: Path) -> None:
        await in_thread(shutil.rmtree, spool, ignore_errors=True)


POSTGRES_WAL = PostgresWal()
