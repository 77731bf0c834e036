"""The archive's own records and reach (engines/wal/records.py) on a real folder store, and how the
WalArchive's engine wiring reads what the engines return (controllers/walarchive/engines.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from habitat_operator.api.common import Reason
from habitat_operator.controllers.walarchive import engines
from habitat_operator.engines.wal import records
from habitat_operator.engines.wal.layout import ArchiveLayout, parse_lsn
from habitat_operator.engines.wal.store import FolderStore
from habitat_operator.errors import PermanentError

SEGMENT = 16 << 20
LAYOUT = ArchiveLayout("orders")


def test_the_reach_is_the_end_of_the_newest_complete_segment_or_the_start_of_a_newer_partial(
    tmp_path: Path,
) -> None:
    store = FolderStore(tmp_path)
    assert records.archived_end(store, LAYOUT, SEGMENT) is None
    for name in ("000000010000000000000002", "000000010000000000000003", "00000002.history"):
        with store.writer(LAYOUT.wal(name)) as out:
            out.write(b"x")
    assert records.archived_end(store, LAYOUT, SEGMENT) == parse_lsn("0/4000000")
    with store.writer(LAYOUT.wal("000000020000000000000005.partial")) as out:
        out.write(b"x")
    assert records.archived_end(store, LAYOUT, SEGMENT) == parse_lsn("0/5000000")


def test_holes_between_archived_segments_of_any_timeline(tmp_path: Path) -> None:
    names = ["000000010000000000000002", "000000010000000000000003", "000000020000000000000003.partial"]
    assert records.holes(names, SEGMENT) == []
    names += ["000000020000000000000006", "00000002.history", "000000020000000000000009.partial"]
    assert records.holes(names, SEGMENT) == [
        (parse_lsn("0/4000000"), parse_lsn("0/6000000")),
        (parse_lsn("0/7000000"), parse_lsn("0/9000000")),
    ]


def test_a_hole_that_a_gap_entry_accounts_for_is_no_news(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    for name in ("000000010000000000000002", "000000010000000000000003.partial", "000000010000000000000007"):
        with store.writer(LAYOUT.wal(name)) as out:
            out.write(b"x")
    hole = (parse_lsn("0/4000000"), parse_lsn("0/7000000"))
    assert records.unexplained_holes(store, LAYOUT, SEGMENT) == [hole]
    # a slot found missing when the archive reached the partial segment's start
    records.write_gap(store, LAYOUT, "20261207T171500Z", {"fromLsn": "0/3000000", "toLsn": None})
    assert records.unexplained_holes(store, LAYOUT, SEGMENT) == []


def test_the_spool_reach_ignores_other_files_and_a_missing_folder(tmp_path: Path) -> None:
    assert records.spooled_end(tmp_path / "none", SEGMENT) is None
    (tmp_path / "000000010000000100000000").write_bytes(b"")
    (tmp_path / "000000010000000100000001.partial").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    assert records.spooled_end(tmp_path, SEGMENT) == parse_lsn("1/1000000")


def test_identity_and_gap_records_round_trip_and_a_foreign_object_is_no_record(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    assert records.read_identity(store, LAYOUT) is None
    records.write_identity(store, LAYOUT, {"systemIdentifier": "7300000000000000001"})
    assert records.read_identity(store, LAYOUT) == {"systemIdentifier": "7300000000000000001"}
    records.write_gap(store, LAYOUT, "20261207T171500Z", {"reason": "SlotMissing"})
    assert (tmp_path / "orders" / "gaps" / "20261207T171500Z.json").is_file()
    with store.writer(LAYOUT.identity) as out:
        out.write(b"[1, 2]" + b" " * (records.MAX_RECORD_BYTES + 1))
    assert records.read_identity(store, LAYOUT) is None


def test_a_missing_engine_function_is_tool_missing_naming_it() -> None:
    with pytest.raises(PermanentError) as raised:
        engines._engine("wal.no_such_module", "upload_ready")
    assert raised.value.reason is Reason.TOOL_MISSING
    assert "habitat_operator.engines.wal.no_such_module.upload_ready" in raised.value.message


@dataclass(frozen=True)
class EngineEntry:
    id: str
    start_lsn: str
    end_lsn: int
    timeline: int
    started_at: datetime
    completed_at: str
    size_bytes: int


def test_base_backup_entries_are_read_from_the_catalog_json_or_an_engine_dataclass() -> None:
    catalog_json = {
        "id": "20261207T171500Z",
        "startLsn": "0/2000028",
        "endLsn": "0/2000100",
        "timeline": 1,
        "startedAt": "2026-12-07T17:15:00Z",
        "completedAt": "2026-12-07T17:16:00Z",
        "sizeBytes": 1024,
    }
    from_json = engines._base_backup(catalog_json)
    assert (from_json.start_lsn, from_json.end_lsn) == (parse_lsn("0/2000028"), parse_lsn("0/2000100"))
    assert from_json.completed_at == datetime(2026, 12, 7, 17, 16, tzinfo=UTC)
    started = datetime(2026, 12, 7, 17, 15, tzinfo=UTC)
    entry = EngineEntry("20261207T171500Z", "0/2000028", 33554688, 1, started, "2026-12-07T17:16:00Z", 1024)
    assert engines._base_backup(entry) == from_json


def test_an_engine_function_that_blocks_runs_off_the_event_loop() -> None:
    def blocking() -> int:
        return 7

    async def coroutine() -> int:
        return 8

    async def both() -> tuple[int, int]:
        return await engines._run(blocking), await engines._run(coroutine)

    assert asyncio.run(both()) == (7, 8)
