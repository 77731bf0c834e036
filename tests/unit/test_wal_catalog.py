"""An archive's catalog read from a FolderStore, and recovery plans over it: the window, the base
backup chosen for each kind of target, and the refusals (before the oldest base backup, inside a
gap, past the archive's end, a missing segment)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from habitat_operator.api.wal import WalReason
from habitat_operator.engines.wal import catalog
from habitat_operator.engines.wal.basebackup import BaseBackupEntry, write_entry
from habitat_operator.engines.wal.catalog import RecoveryTarget, plan_recovery, read_catalog, recovery_window
from habitat_operator.engines.wal.layout import ArchiveLayout, format_lsn, parse_lsn, segment_name
from habitat_operator.engines.wal.store import FolderStore
from habitat_operator.errors import PermanentError

LAYOUT = ArchiveLayout("orders")
SEGMENT = 16 << 20
T0 = dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.UTC)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


class Archive:
    """An archive written object by object, as the uploader and the base backup write them."""

    def __init__(self, root: Path) -> None:
        self.store = FolderStore(root)

    def base_backup(self, backup_id: str, segment: int, started: float, completed: float) -> BaseBackupEntry:
        entry = BaseBackupEntry(
            id=backup_id,
            start_lsn=segment * SEGMENT + 0x28,
            end_lsn=segment * SEGMENT + 0x100,
            timeline=1,
            started_at=at(started),
            completed_at=at(completed),
            server_version=150020,
            system_identifier="7716609403539254163",
            size_bytes=100,
            sha256="0" * 64,
            encrypted=False,
            compression="none",
        )
        self.put(LAYOUT.base_backup(backup_id), b"tar")
        write_entry(self.store, LAYOUT, entry)
        return entry

    def segments(self, first: int, last: int, commits: dict[int, float] | None = None) -> None:
        for number in range(first, last + 1):
            minutes = (commits or {}).get(number)
            metadata = {"lastCommitAt": at(minutes).isoformat()} if minutes is not None else {}
            self.put(LAYOUT.wal(segment_name(1, number * SEGMENT)), b"wal", metadata)

    def partial(self, number: int, commit: float) -> None:
        name = segment_name(1, number * SEGMENT) + ".partial"
        self.put(LAYOUT.wal(name), b"wal", {"lastCommitAt": at(commit).isoformat()})

    def gap(self, detected: float, from_segment: int) -> None:
        body = {
            "detectedAt": at(detected).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "reason": "SlotMissing",
            "fromLsn": format_lsn(from_segment * SEGMENT),
            "toLsn": None,
            "timeline": 1,
            "message": "the replication slot is gone",
        }
        self.put(LAYOUT.gap(at(detected).strftime("%Y%m%dT%H%M%SZ")), json.dumps(body).encode())

    def put(self, key: str, body: bytes, metadata: dict[str, str] | None = None) -> None:
        with self.store.writer(key, metadata or {}) as out:
            out.write(body)
            out.sync()


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    return Archive(tmp_path)


def with_a_gap(archive: Archive) -> None:
    """A base backup, its WAL to 10:20, WAL lost from 0/5000000 (seen at 10:30), a backup after."""
    archive.base_backup("20261207T100000Z", 2, 0, 1)
    archive.segments(2, 4, {4: 20})
    archive.gap(detected=30, from_segment=5)
    archive.base_backup("20261207T103100Z", 9, 31, 32)
    archive.segments(9, 10, {10: 40})


def refusal(archive: Archive, target: RecoveryTarget) -> str:
    with pytest.raises(PermanentError) as caught:
        plan_recovery(archive.store, LAYOUT, target)
    assert caught.value.reason is WalReason.TARGET_NOT_RECOVERABLE
    return caught.value.message


def test_a_target_is_exactly_one_kind() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        RecoveryTarget()
    with pytest.raises(ValueError, match="exactly one"):
        RecoveryTarget(time=T0, latest=True)


def test_the_catalog_lists_backups_wal_and_unlisted_tars(archive: Archive) -> None:
    archive.base_backup("20261207T100000Z", 2, 0, 1)
    archive.put(LAYOUT.base_backup("20261207T110000Z"), b"half")  # killed before its entry
    archive.segments(2, 4, {4: 30})
    archive.put(LAYOUT.wal("00000002.history"), b"1\t0/5000000\tno recovery target specified\n")
    archive.put(LAYOUT.wal("not-wal"), b"?")
    read = read_catalog(archive.store, LAYOUT)
    assert [entry.id for entry in read.base_backups] == ["20261207T100000Z"]
    assert read.unlisted_tars == ("20261207T110000Z",)
    assert [wal.name for wal in read.wal] == [
        "00000002.history",
        "000000010000000000000002",
        "000000010000000000000003",
        "000000010000000000000004",
    ]
    assert read.wal[-1].last_commit_at == at(30)


def test_an_unreadable_entry_is_skipped(archive: Archive) -> None:
    archive.base_backup("20261207T100000Z", 2, 0, 1)
    archive.put(LAYOUT.base_backup_entry("20261207T090000Z"), b"{not json")
    archive.put(LAYOUT.base_backup_entry("20261207T080000Z"), json.dumps({"id": "x"}).encode())
    # An entry under another id's name would send a restore to another tar.
    moved = BaseBackupEntry.from_json(
        json.loads(archive.store.open(LAYOUT.base_backup_entry("20261207T100000Z")).read())
    ).to_json()
    archive.put(LAYOUT.base_backup_entry("20261207T070000Z"), json.dumps(moved).encode())
    assert [entry.id for entry in catalog.base_backups(archive.store, LAYOUT)] == ["20261207T100000Z"]


def test_the_window_runs_from_the_oldest_backup_to_the_newest_commit(archive: Archive) -> None:
    assert recovery_window(archive.store, LAYOUT) == (None, None)
    archive.base_backup("20261207T100000Z", 2, 0, 1)
    archive.base_backup("20261207T110000Z", 6, 60, 61)
    archive.segments(2, 7, {5: 50})
    archive.partial(8, commit=70.5)
    assert recovery_window(archive.store, LAYOUT) == (at(1), at(70.5))


def test_the_window_starts_after_the_last_gap(archive: Archive) -> None:
    with_a_gap(archive)
    assert recovery_window(archive.store, LAYOUT) == (at(32), at(40))


def test_latest_starts_from_the_newest_backup(archive: Archive) -> None:
    archive.base_backup("20261207T100000Z", 2, 0, 1)
    newest = archive.base_backup("20261207T110000Z", 6, 60, 61)
    archive.segments(2, 7, {7: 65})
    archive.put(LAYOUT.wal("00000002.history"), b"")
    plan = plan_recovery(archive.store, LAYOUT, RecoveryTarget(latest=True))
    assert plan.base_backup == newest
    assert plan.segments == ("00000002.history", "000000010000000000000006", "000000010000000000000007")
    assert LAYOUT.base_backup(newest.id) in plan.keys(LAYOUT)
    assert plan.end.time == at(65)


def test_a_time_starts_from_the_newest_backup_completed_before_it(archive: Archive) -> None:
    first = archive.base_backup("20261207T100000Z", 2, 0, 1)
    second = archive.base_backup("20261207T110000Z", 6, 60, 61)
    archive.segments(2, 7, {7: 65})
    assert plan_recovery(archive.store, LAYOUT, RecoveryTarget(time=at(30))).base_backup == first
    assert plan_recovery(archive.store, LAYOUT, RecoveryTarget(time=at(60.5))).base_backup == first
    assert plan_recovery(archive.store, LAYOUT, RecoveryTarget(time=at(61))).base_backup == second
    assert plan_recovery(archive.store, LAYOUT, RecoveryTarget(time=at(65))).base_backup == second


def test_a_time_before_the_oldest_backup_is_refused(archive: Archive) -> None:
    archive.base_backup("20261207T100000Z", 2, 0, 1)
    archive.segments(2, 3, {3: 10})
    message = refusal(archive, RecoveryTarget(time=at(0.5)))
    assert message == (
        "cannot recover to time 2026-12-07T10:00:30Z: it is before the oldest base backup,"
        " which completed at 2026-12-07T10:01:00Z"
    )


def test_a_time_past_the_archive_end_is_refused(archive: Archive) -> None:
    archive.base_backup("20261207T100000Z", 2, 0, 1)
    archive.segments(2, 3, {3: 10})
    message = refusal(archive, RecoveryTarget(time=at(10.5)))
    assert message.endswith("the archive ends at 2026-12-07T10:10:00Z (0/4000000)")


def test_a_time_without_archived_commit_times_is_left_to_the_recovery(archive: Archive) -> None:
    archive.base_backup("20261207T100000Z", 2, 0, 1)
    archive.segments(2, 3)
    plan = plan_recovery(archive.store, LAYOUT, RecoveryTarget(time=at(500)))
    assert plan.end.time is None
    assert plan.segments == ("000000010000000000000002", "000000010000000000000003")


def test_a_time_inside_a_gap_is_refused(archive: Archive) -> None:
    with_a_gap(archive)
    before_gap = plan_recovery(archive.store, LAYOUT, RecoveryTarget(time=at(15)))
    assert before_gap.base_backup.id == "20261207T100000Z"
    assert before_gap.segments == tuple(segment_name(1, n * SEGMENT) for n in (2, 3, 4))
    message = refusal(archive, RecoveryTarget(time=at(25)))
    assert message == (
        "cannot recover to time 2026-12-07T10:25:00Z: it is inside the gap detected at 2026-12-07T10:30:00Z "
        "(SlotMissing: WAL from 0/5000000 was lost); recoverable again from 2026-12-07T10:32:00Z"
    )
    assert "inside the gap" in refusal(archive, RecoveryTarget(time=at(31.5)))
    assert (
        plan_recovery(archive.store, LAYOUT, RecoveryTarget(time=at(35))).base_backup.id == "20261207T103100Z"
    )


def test_latest_before_a_new_backup_after_a_gap_is_refused(archive: Archive) -> None:
    archive.base_backup("20261207T100000Z", 2, 0, 1)
    archive.segments(2, 4, {4: 20})
    archive.gap(detected=30, from_segment=5)
    message = refusal(archive, RecoveryTarget(latest=True))
    assert "every base backup precedes the gap detected at 2026-12-07T10:30:00Z" in message


def test_an_lsn_is_planned_up_to_its_segment(archive: Archive) -> None:
    archive.base_backup("20261207T100000Z", 2, 0, 1)
    archive.segments(2, 6, {6: 20})
    plan = plan_recovery(archive.store, LAYOUT, RecoveryTarget(lsn=parse_lsn("0/4000010")))
    assert plan.segments == tuple(segment_name(1, n * SEGMENT) for n in (2, 3, 4))
    assert refusal(archive, RecoveryTarget(lsn=parse_lsn("0/2000030"))) == (
        "cannot recover to LSN 0/2000030: it is before the end of the oldest base backup, 0/2000100"
    )
    assert refusal(archive, RecoveryTarget(lsn=parse_lsn("0/7000001"))).endswith(
        "the archive ends at 2026-12-07T10:20:00Z (0/7000000)"
    )


def test_a_missing_segment_is_refused(archive: Archive) -> None:
    archive.base_backup("20261207T100000Z", 2, 0, 1)
    archive.segments(2, 3)
    archive.segments(5, 6, {6: 20})
    assert refusal(archive, RecoveryTarget(latest=True)).endswith(
        "segment 000000010000000000000004 is missing from the archive"
    )
    assert plan_recovery(archive.store, LAYOUT, RecoveryTarget(lsn=parse_lsn("0/3000200"))).segments


def test_a_backup_whose_wal_is_not_archived_yet_is_refused(archive: Archive) -> None:
    archive.base_backup("20261207T100000Z", 2, 0, 1)
    assert refusal(archive, RecoveryTarget(latest=True)).endswith(
        "segment 000000010000000000000002 is missing from the archive"
    )


def test_a_restore_point_needs_the_oldest_backup_and_all_the_wal(archive: Archive) -> None:
    archive.base_backup("20261207T100000Z", 2, 0, 1)
    archive.base_backup("20261207T110000Z", 6, 60, 61)
    archive.segments(2, 7, {7: 65})
    plan = plan_recovery(archive.store, LAYOUT, RecoveryTarget(restore_point="habitat-m-1-to-2"))
    assert plan.base_backup.id == "20261207T100000Z"
    assert plan.segments[-1] == "000000010000000000000007"


def test_no_backup_no_plan(archive: Archive) -> None:
    archive.segments(2, 3, {3: 10})
    assert refusal(archive, RecoveryTarget(latest=True)) == (
        "cannot recover to latest: the archive holds no base backup yet"
    )


def test_times_without_a_zone_are_utc(archive: Archive) -> None:
    entry = archive.base_backup("20261207T100000Z", 2, 0, 1)
    naive = {**entry.to_json(), "startedAt": "2026-12-07T10:00:00", "completedAt": "2026-12-07T10:01:00"}
    archive.put(LAYOUT.base_backup_entry(entry.id), json.dumps(naive).encode())
    archive.segments(2, 4, {4: 20})
    archive.put(
        LAYOUT.gap("20261207T103000Z"),
        json.dumps(
            {
                "detectedAt": "2026-12-07T10:30:00",
                "reason": "SlotMissing",
                "fromLsn": "0/5000000",
                "timeline": 1,
            }
        ).encode(),
    )
    assert plan_recovery(archive.store, LAYOUT, RecoveryTarget(time=at(15))).base_backup.completed_at == at(1)
    assert "inside the gap" in refusal(archive, RecoveryTarget(time=at(25)))


def test_a_restore_point_with_its_position_is_planned_as_that_position(archive: Archive) -> None:
    archive.base_backup("20261207T100000Z", 2, 0, 1)
    archive.base_backup("20261207T110000Z", 6, 60, 61)
    archive.segments(2, 9, {9: 65})
    # pg_create_restore_point() returned 0/7000100: the newest backup that ends before it will do.
    target = RecoveryTarget(restore_point="habitat-m-1-to-2", restore_point_lsn=parse_lsn("0/7000100"))
    plan = plan_recovery(archive.store, LAYOUT, target)
    assert plan.base_backup.id == "20261207T110000Z"
    assert plan.segments == ("000000010000000000000006", "000000010000000000000007")
    assert refusal(
        archive, RecoveryTarget(restore_point="x", restore_point_lsn=parse_lsn("0/A000001"))
    ).startswith("cannot recover to restore point 'x' at 0/A000001: the archive ends at")
    with pytest.raises(ValueError, match="restore point"):
        RecoveryTarget(latest=True, restore_point_lsn=1)


def test_a_timeline_switch_is_followed(archive: Archive) -> None:
    archive.base_backup("20261207T100000Z", 2, 0, 1)
    archive.segments(2, 4)
    # Promoted at 0/4800000: timeline 2 continues in the segment of the switch, with a history file.
    archive.put(LAYOUT.wal("00000002.history"), b"1\t0/4800000\tno recovery target specified\n")
    for number in (4, 5):
        metadata = {"lastCommitAt": at(30).isoformat()} if number == 5 else {}
        archive.put(LAYOUT.wal(segment_name(2, number * SEGMENT)), b"wal", metadata)
    plan = plan_recovery(archive.store, LAYOUT, RecoveryTarget(latest=True))
    assert plan.segments == (
        "00000002.history",
        "000000010000000000000002",
        "000000010000000000000003",
        "000000010000000000000004",
        "000000020000000000000004",
        "000000020000000000000005",
    )
    assert plan.end.time == at(30)
    assert (
        plan_recovery(archive.store, LAYOUT, RecoveryTarget(time=at(29))).base_backup.id == "20261207T100000Z"
    )
