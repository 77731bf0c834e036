"""Retention of an archive: what the recovery window no longer needs, and what it must keep (the
anchor backup, its WAL, history files, the newest backup, and whatever a running Restore holds)."""

from __future__ import annotations

import datetime as dt

from habitat_operator.engines.wal.basebackup import BaseBackupEntry
from habitat_operator.engines.wal.catalog import ArchivedWal, Catalog, Gap
from habitat_operator.engines.wal.layout import ArchiveLayout, segment_name
from habitat_operator.engines.wal.retention import expired_keys

LAYOUT = ArchiveLayout("orders")
SEGMENT = 16 << 20
T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def day(n: float) -> dt.datetime:
    return T0 + dt.timedelta(days=n)


def backup(n: int, segment: int) -> BaseBackupEntry:
    return BaseBackupEntry(
        id=f"2026120{n + 1}T000000Z",
        start_lsn=segment * SEGMENT + 0x28,
        end_lsn=segment * SEGMENT + 0x100,
        timeline=1,
        started_at=day(n),
        completed_at=day(n) + dt.timedelta(minutes=1),
        server_version=150020,
        system_identifier="1",
        size_bytes=1,
        sha256="0" * 64,
        encrypted=False,
        compression="none",
    )


def wal(number: int) -> ArchivedWal:
    name = segment_name(1, number * SEGMENT)
    return ArchivedWal(name, LAYOUT.wal(name), 1, 1, number * SEGMENT, (number + 1) * SEGMENT)


HISTORY = ArchivedWal("00000002.history", LAYOUT.wal("00000002.history"), 1, 2, 0, 0)
BACKUPS = (backup(0, 2), backup(1, 5), backup(2, 8))
CATALOG = Catalog(base_backups=BACKUPS, wal=(HISTORY, *(wal(n) for n in range(2, 10))), gaps=())


def expired(catalog: Catalog, keep_since: dt.datetime, held: frozenset[str] = frozenset()) -> list[str]:
    return expired_keys(catalog, LAYOUT, keep_since, held)


def test_the_anchor_and_everything_newer_stay() -> None:
    # keep since day 1.5: the backup of day 1 is the anchor; day 0's backup and WAL go.
    assert expired(CATALOG, day(1.5)) == [
        LAYOUT.base_backup_entry("20261201T000000Z"),
        LAYOUT.base_backup("20261201T000000Z"),
        wal(2).key,
        wal(3).key,
        wal(4).key,
    ]


def test_a_window_reaching_past_the_oldest_backup_deletes_nothing() -> None:
    assert expired(CATALOG, day(-3)) == []
    assert expired(Catalog(base_backups=(), wal=CATALOG.wal, gaps=()), day(30)) == []


def test_the_newest_backup_always_stays() -> None:
    keys = expired(CATALOG, day(30))
    assert LAYOUT.base_backup("20261203T000000Z") not in keys
    assert LAYOUT.base_backup_entry("20261203T000000Z") not in keys
    assert wal(8).key not in keys and wal(9).key not in keys
    assert HISTORY.key not in keys


def test_what_a_restore_holds_stays_with_its_wal() -> None:
    held = frozenset({LAYOUT.base_backup("20261201T000000Z"), wal(2).key, wal(3).key})
    keys = expired(CATALOG, day(2.5), held)
    assert LAYOUT.base_backup_entry("20261201T000000Z") not in keys  # the entry stays with its tar
    assert LAYOUT.base_backup("20261202T000000Z") in keys
    assert not set(keys) & {wal(n).key for n in range(2, 8)}  # from the held backup's start


def test_gaps_before_the_anchor_and_unlisted_tars_go() -> None:
    old_gap = Gap(LAYOUT.gap("20261201T120000Z"), day(0.5), "SlotMissing", 4 * SEGMENT, None, 1, "")
    new_gap = Gap(LAYOUT.gap("20261202T120000Z"), day(1.5), "SlotMissing", 7 * SEGMENT, None, 1, "")
    catalog = Catalog(
        base_backups=BACKUPS,
        wal=CATALOG.wal,
        gaps=(old_gap, new_gap),
        unlisted_tars=("20261202T060000Z", "20261209T000000Z"),
    )
    keys = expired(catalog, day(1.2))
    assert old_gap.key in keys and new_gap.key not in keys
    assert LAYOUT.base_backup("20261202T060000Z") in keys  # killed before its entry
    assert LAYOUT.base_backup("20261209T000000Z") not in keys  # newer than every entry: maybe running
