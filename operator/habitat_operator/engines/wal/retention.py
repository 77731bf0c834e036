"""Which of an archive's objects its recovery window no longer needs. Pure: the caller deletes.

To recover to any moment since `keep_since` (now minus the recovery window), the archive keeps the
newest base backup that completed at or before it (the anchor) and every newer one, and the WAL from
the anchor's first segment on. Older base backups go (entry first, so a reader never finds an entry
without its tar), with the segments before the oldest kept backup's start, the gap entries detected
before the anchor started, and tars left without an entry by an interrupted base backup (older than
the newest entry: a base backup still running is newer than every entry). Never deleted: the newest
base backup, history files (small, and recovery follows timelines through them), and any key in
`held` (what a running Restore reads: `RecoveryPlan.keys`), with the entry and tar of a held base
backup kept together.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection

from habitat_operator.engines.wal.catalog import Catalog
from habitat_operator.engines.wal.layout import ArchiveLayout


def expired_keys(
    catalog: Catalog, layout: ArchiveLayout, keep_since: dt.datetime, held: Collection[str] = ()
) -> list[str]:
    """The keys to delete, in the order to delete them."""
    entries = sorted(catalog.base_backups, key=lambda entry: (entry.completed_at, entry.id))
    if not entries:
        return []
    anchor = next((i for i in range(len(entries) - 1, -1, -1) if entries[i].completed_at <= keep_since), 0)

    def is_held(backup_id: str) -> bool:
        return layout.base_backup(backup_id) in held or layout.base_backup_entry(backup_id) in held

    kept = entries[anchor:] + [entry for entry in entries[:anchor] if is_held(entry.id)]
    doomed = [entry for entry in entries[:anchor] if not is_held(entry.id)]
    newest_id = max(entry.id for entry in entries)
    cutoff = min(entry.start_lsn for entry in kept)
    cutoff -= cutoff % catalog.segment_size
    anchor_started = entries[anchor].started_at

    keys = [layout.base_backup_entry(entry.id) for entry in doomed]
    keys += [layout.base_backup(entry.id) for entry in doomed]
    keys += [
        layout.base_backup(backup_id)
        for backup_id in catalog.unlisted_tars
        if backup_id < newest_id and not is_held(backup_id)
    ]
    keys += [wal.key for wal in catalog.wal if not wal.history and wal.end_lsn <= cutoff]
    keys += [gap.key for gap in catalog.gaps if gap.detected_at < anchor_started]
    return [key for key in keys if key not in held]
