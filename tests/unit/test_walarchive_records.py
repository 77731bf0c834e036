"""The archive's own records and reach (engines/wal/records.py) on a real folder store, read back
through the catalog."""

from __future__ import annotations

from pathlib import Path

from habitat_operator.engines.wal import catalog, records
from habitat_operator.engines.wal.layout import ArchiveLayout, parse_lsn
from habitat_operator.engines.wal.store import FolderStore

SEGMENT = 16 << 20
LAYOUT = ArchiveLayout("orders")


def gap_entry(from_lsn: str) -> dict[str, object]:
    """A slot found missing when the archive reached `from_lsn`, as a WalArchive records it."""
    return {
        "detectedAt": "2026-12-07T17:15:00Z",
        "reason": "SlotMissing",
        "fromLsn": from_lsn,
        "toLsn": None,
        "timeline": 1,
        "message": "replication slot habitat_team_a_orders is missing",
    }


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
    records.write_json(store, LAYOUT.gap("20261207T171500Z"), gap_entry("0/3000000"))
    assert records.unexplained_holes(store, LAYOUT, SEGMENT) == []


def test_the_spool_reach_ignores_other_files_and_a_missing_folder(tmp_path: Path) -> None:
    assert records.spooled_end(tmp_path / "none", SEGMENT) is None
    (tmp_path / "000000010000000100000000").write_bytes(b"")
    (tmp_path / "000000010000000100000001.partial").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    assert records.spooled_end(tmp_path, SEGMENT) == parse_lsn("1/1000000")


def test_identity_and_gap_records_round_trip_and_a_foreign_object_is_no_record(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    assert catalog.read_identity(store, LAYOUT) is None
    records.write_json(store, LAYOUT.identity, {"systemIdentifier": "7300000000000000001"})
    assert catalog.read_identity(store, LAYOUT) == {"systemIdentifier": "7300000000000000001"}
    records.write_json(store, LAYOUT.gap("20261207T171500Z"), gap_entry("0/3000000"))
    assert [gap.from_lsn for gap in catalog.gaps(store, LAYOUT)] == [parse_lsn("0/3000000")]
    with store.writer(LAYOUT.identity) as out:
        out.write(b"[1, 2]" + b" " * (2 << 20))
    assert catalog.read_identity(store, LAYOUT) is None
