"""Which base backup a point-in-time recovery starts from, read from an archive's entries."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from habitat_operator.engines.postgres.recovery import RecoveryTarget, newest_base_backup
from habitat_operator.engines.wal.layout import ArchiveLayout
from habitat_operator.engines.wal.store import FolderStore
from habitat_operator.errors import PermanentError

LAYOUT = ArchiveLayout("db")


def _entry(store: FolderStore, backup_id: str, completed: str, end_lsn: str) -> None:
    entry = {
        "id": backup_id,
        "startLsn": "0/1000028",
        "endLsn": end_lsn,
        "timeline": 1,
        "startedAt": completed,
        "completedAt": completed,
        "serverVersion": 150004,
        "systemIdentifier": "7",
        "sizeBytes": 1,
        "sha256": "ab" * 32,
        "encrypted": False,
        "compression": "zstd",
    }
    with store.writer(LAYOUT.base_backup_entry(backup_id)) as out:
        out.write(json.dumps(entry).encode())


@pytest.fixture
def store(tmp_path: Path) -> FolderStore:
    folder = FolderStore(tmp_path)
    _entry(folder, "20261207T080000Z", "2026-12-07T08:01:00Z", "0/3000000")
    _entry(folder, "20261207T120000Z", "2026-12-07T12:01:00Z", "0/9000000")
    with folder.writer(LAYOUT.base_backup("20261207T160000Z")) as out:  # no entry: not complete
        out.write(b"tar")
    return folder


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_the_newest_base_backup_that_ended_before_the_target(store: FolderStore) -> None:
    assert newest_base_backup(store, LAYOUT, RecoveryTarget()).id == "20261207T120000Z"
    later = RecoveryTarget(time=_at("2026-12-07T12:30:00+00:00"))
    assert newest_base_backup(store, LAYOUT, later).id == "20261207T120000Z"
    between = RecoveryTarget(time=_at("2026-12-07T11:00:00+00:00"))
    assert newest_base_backup(store, LAYOUT, between).id == "20261207T080000Z"
    assert newest_base_backup(store, LAYOUT, RecoveryTarget(lsn="0/5000000")).id == "20261207T080000Z"


def test_a_restore_point_starts_from_the_oldest_since_only_the_wal_knows_where_it_is(
    store: FolderStore,
) -> None:
    assert newest_base_backup(store, LAYOUT, RecoveryTarget(restore_point="x")).id == "20261207T080000Z"


def test_a_target_older_than_every_base_backup_is_refused(store: FolderStore) -> None:
    early = RecoveryTarget(time=_at("2026-12-07T07:00:00+00:00"))
    with pytest.raises(PermanentError, match=r"no base backup in .* ends before time 2026-12-07T07:00:00Z"):
        newest_base_backup(store, LAYOUT, early)
