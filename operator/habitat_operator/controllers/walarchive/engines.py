"""The engines a WalArchive's run is given (one Protocol), so that a unit test hands it stand-ins.

`WalEngines` is the contract with the engines of issue 20 (docs: /work/helpers/pitr-design.md):
replication probes, the supervised receiver and the uploader (`engines/postgres/replication.py`,
`engines/wal/receiver.py`, `engines/wal/uploader.py`), base backups, the catalog and retention
(`engines/wal/basebackup.py`, `catalog.py`, `retention.py`). `PostgresWal` wires the real ones, and
only it: each of them is looked up by name when first called (`_engine`), so a build without one
fails that call with ToolMissing naming the module and function, and nothing else. Where the
shared design names no function (retention's choice of keys: `keys_to_delete` here), the name is
this module's guess, to check when the engines are merged. The values they
return are read into this module's own types (`_lsn`, `_time`), which fixes what the run relies on.
"""

from __future__ import annotations

import importlib
import inspect
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from habitat_operator import timestamps
from habitat_operator.api.common import Reason
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.threads import in_thread
from habitat_operator.engines.wal import records
from habitat_operator.engines.wal.layout import ArchiveLayout, parse_lsn
from habitat_operator.engines.wal.store import ObjectStore
from habitat_operator.errors import PermanentError


@dataclass(frozen=True)
class ServerIdentity:
    system_identifier: str
    server_version: int  # server_version_num
    timeline: int
    segment_size: int


@dataclass(frozen=True)
class SlotState:
    restart_lsn: int | None  # None: created, never streamed from
    active: bool
    retained_bytes: int | None  # pg_current_wal_lsn() - restart_lsn


@dataclass(frozen=True)
class Uploaded:
    segments: int
    bytes: int
    archived_lsn: int | None  # how far the archive reaches after this upload
    newest_segment: str | None


@dataclass(frozen=True)
class BaseBackup:
    id: str
    start_lsn: int
    end_lsn: int
    timeline: int
    started_at: datetime
    completed_at: datetime
    size_bytes: int


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
    def last_error(self) -> str | None: ...

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class WalEngines(Protocol):
    async def server_identity(self, target: ConnectionTarget) -> ServerIdentity: ...
    async def slot_state(self, target: ConnectionTarget, slot: str) -> SlotState | None: ...
    async def create_slot(self, target: ConnectionTarget, slot: str) -> None: ...
    async def drop_slot(self, target: ConnectionTarget, slot: str) -> None: ...
    def receiver(
        self, target: ConnectionTarget, slot: str, spool: Path, application_name: str, synchronous: bool
    ) -> Receiver: ...
    async def upload_ready(self, spool: Path, archive: Archive) -> Uploaded: ...
    async def upload_partial(self, spool: Path, archive: Archive) -> Uploaded | None: ...
    async def take_base_backup(
        self, target: ConnectionTarget, archive: Archive, backup_id: str
    ) -> BaseBackup: ...
    async def newest_base_backup(self, archive: Archive) -> BaseBackup | None: ...
    async def recovery_window(self, archive: Archive) -> tuple[datetime | None, datetime | None]: ...
    async def apply_retention(self, archive: Archive, window: timedelta, now: datetime) -> int: ...
    # The archive's own records (engines/wal/records.py): real in every build.
    async def read_identity(self, archive: Archive) -> dict[str, Any] | None: ...
    async def write_identity(self, archive: Archive, identity: dict[str, Any]) -> None: ...
    async def write_gap(self, archive: Archive, detected_at: str, entry: dict[str, Any]) -> None: ...
    async def archived_end(self, archive: Archive, segment_size: int) -> int | None: ...
    async def spooled_end(self, spool: Path, segment_size: int) -> int | None: ...
    async def unexplained_holes(self, archive: Archive, segment_size: int) -> list[tuple[int, int]]: ...
    async def remove_spool(self, spool: Path) -> None: ...


def _engine(module: str, name: str) -> Callable[..., Any]:
    """A function of the walstream or basebackup engines, by name (see the module's docstring)."""
    try:
        found = getattr(importlib.import_module(f"habitat_operator.engines.{module}"), name)
    except (ImportError, AttributeError):
        raise PermanentError(
            Reason.TOOL_MISSING, f"this operator build has no habitat_operator.engines.{module}.{name}"
        ) from None
    assert callable(found)
    return found  # type: ignore[no-any-return]


async def _run(function: Callable[..., Any], *args: Any) -> Any:
    """A coroutine function awaited, a blocking one in an engine thread."""
    if inspect.iscoroutinefunction(function):
        return await function(*args)
    return await in_thread(function, *args)


async def _call(module: str, name: str, *args: Any) -> Any:
    return await _run(_engine(module, name), *args)


def _lsn(value: Any) -> int | None:
    if value is None or isinstance(value, int):
        return value
    return parse_lsn(str(value))


def _time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else timestamps.parse(str(value))


def _field(found: Any, name: str) -> Any:
    """A field of an engine's answer, whether a dataclass or the catalog's camelCase JSON."""
    if isinstance(found, dict):
        camel = name.split("_")[0] + "".join(part.title() for part in name.split("_")[1:])
        return found.get(name, found.get(camel))
    return getattr(found, name)


def _base_backup(found: Any) -> BaseBackup:
    return BaseBackup(
        id=str(_field(found, "id")),
        start_lsn=_lsn(_field(found, "start_lsn")) or 0,
        end_lsn=_lsn(_field(found, "end_lsn")) or 0,
        timeline=int(_field(found, "timeline")),
        started_at=_time(_field(found, "started_at")),
        completed_at=_time(_field(found, "completed_at")),
        size_bytes=int(_field(found, "size_bytes")),
    )


def _uploaded(found: Any) -> Uploaded:
    return Uploaded(
        segments=int(found.segments),
        bytes=int(found.bytes),
        archived_lsn=_lsn(found.archived_lsn),
        newest_segment=found.newest_segment,
    )


class PostgresWal:
    """The real engines; the walstream and basebackup functions are found when first called."""

    async def server_identity(self, target: ConnectionTarget) -> ServerIdentity:
        found = await _call("postgres.replication", "server_identity", target)
        return ServerIdentity(
            str(found.system_identifier),
            int(found.server_version),
            int(found.timeline),
            int(found.segment_size),
        )

    async def slot_state(self, target: ConnectionTarget, slot: str) -> SlotState | None:
        found = await _call("postgres.replication", "slot_state", target, slot)
        if found is None:
            return None
        retained = found.retained_bytes
        return SlotState(
            _lsn(found.restart_lsn), bool(found.active), None if retained is None else int(retained)
        )

    async def create_slot(self, target: ConnectionTarget, slot: str) -> None:
        await _call("postgres.replication", "create_slot", target, slot)

    async def drop_slot(self, target: ConnectionTarget, slot: str) -> None:
        await _call("postgres.replication", "drop_slot", target, slot)

    def receiver(
        self, target: ConnectionTarget, slot: str, spool: Path, application_name: str, synchronous: bool
    ) -> Receiver:
        made: Receiver = _engine("wal.receiver", "WalReceiver")(
            target, slot, spool, application_name, synchronous
        )
        return made

    async def upload_ready(self, spool: Path, archive: Archive) -> Uploaded:
        args = (spool, archive.store, archive.layout, archive.encryption_key, archive.zstd)
        return _uploaded(await _call("wal.uploader", "upload_ready", *args))

    async def upload_partial(self, spool: Path, archive: Archive) -> Uploaded | None:
        args = (spool, archive.store, archive.layout, archive.encryption_key, archive.zstd)
        found = await _call("wal.uploader", "upload_partial", *args)
        return None if found is None else _uploaded(found)

    async def take_base_backup(
        self, target: ConnectionTarget, archive: Archive, backup_id: str
    ) -> BaseBackup:
        args = (target, archive.store, archive.layout, archive.encryption_key, archive.zstd, backup_id)
        return _base_backup(await _call("wal.basebackup", "take_base_backup", *args))

    async def newest_base_backup(self, archive: Archive) -> BaseBackup | None:
        entries = await _call("wal.catalog", "base_backups", archive.store, archive.layout)
        newest = max(entries, key=lambda entry: str(_field(entry, "id")), default=None)
        return None if newest is None else _base_backup(newest)

    async def recovery_window(self, archive: Archive) -> tuple[datetime | None, datetime | None]:
        start, end = await _call("wal.catalog", "recovery_window", archive.store, archive.layout)
        return (None if start is None else _time(start)), (None if end is None else _time(end))

    async def apply_retention(self, archive: Archive, window: timedelta, now: datetime) -> int:
        """The catalog read, retention's pure choice of keys, then the deletes. Nothing is held for a
        Restore here: the run skips retention while one reads the archive."""
        store, layout = archive.store, archive.layout
        entries = await _call("wal.catalog", "base_backups", store, layout)
        segments = await _call("wal.catalog", "segments", store, layout)
        gaps = await _call("wal.catalog", "gaps", store, layout)
        choose = _engine("wal.retention", "keys_to_delete")
        doomed = [str(key) for key in choose(entries, segments, gaps, window, now, frozenset())]
        for key in doomed:
            await in_thread(store.delete, key)
        return len(doomed)

    async def read_identity(self, archive: Archive) -> dict[str, Any] | None:
        return await in_thread(records.read_identity, archive.store, archive.layout)

    async def write_identity(self, archive: Archive, identity: dict[str, Any]) -> None:
        await in_thread(records.write_identity, archive.store, archive.layout, identity)

    async def write_gap(self, archive: Archive, detected_at: str, entry: dict[str, Any]) -> None:
        await in_thread(records.write_gap, archive.store, archive.layout, detected_at, entry)

    async def archived_end(self, archive: Archive, segment_size: int) -> int | None:
        return await in_thread(records.archived_end, archive.store, archive.layout, segment_size)

    async def spooled_end(self, spool: Path, segment_size: int) -> int | None:
        return await in_thread(records.spooled_end, spool, segment_size)

    async def unexplained_holes(self, archive: Archive, segment_size: int) -> list[tuple[int, int]]:
        return await in_thread(records.unexplained_holes, archive.store, archive.layout, segment_size)

    async def remove_spool(self, spool: Path) -> None:
        await in_thread(shutil.rmtree, spool, ignore_errors=True)


POSTGRES_WAL = PostgresWal()
