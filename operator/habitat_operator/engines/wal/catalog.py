"""What an archive holds, read from its objects alone, and what a recovery to a target needs.

Reading (`read_catalog` and the functions beside it) is blocking I/O on the store: call it with
`threads.in_thread`. Everything else here is pure, over the frozen `Catalog` it returns.

The archive is a chain of stretches cut by gaps (WAL that never reached it): a base backup recovers
to any point of its own stretch, from the moment it completed up to the stretch's end, which is the
gap's first missing position or, for the last stretch, the newest archived WAL. A base backup that
started after a gap was detected belongs to the stretch after it. Times in WAL are commit times: the
newest one of a stretch is read from the `lastCommitAt` metadata that the uploader stores on a
segment (optional; a stretch whose newest segments carry none has no known end time: a time target
there is planned with all the WAL and the recovery itself says whether it got there).

A `restorePoint` target cannot be placed from its name alone (finding it would mean reading every
segment with pg_waldump): it is planned from the oldest base backup of the last stretch with all of
its WAL, and the recovery itself reports when the name is not found. Given its position
(`restore_point_lsn`, which pg_create_restore_point() returns), it is planned as that position.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from habitat_operator import timestamps
from habitat_operator.api.common import Reason
from habitat_operator.api.wal import WalReason
from habitat_operator.engines.wal.basebackup import BaseBackupEntry, utc
from habitat_operator.engines.wal.layout import (
    DEFAULT_SEGMENT_SIZE,
    HISTORY_NAME,
    PARTIAL_SUFFIX,
    SEGMENT_NAME,
    ArchiveLayout,
    format_lsn,
    parse_lsn,
    segment_name,
    segment_start,
)
from habitat_operator.engines.wal.store import ObjectStore
from habitat_operator.errors import OperationError, PermanentError

LAST_COMMIT_AT = "lastCommitAt"
COMMIT_LOOKUPS = 8  # metadata requests per stretch end: segments that hold no commit are skipped
_MAX_ENTRY_BYTES = 1 << 20

# stdlib logging: the operator's pipeline takes it in, and `catalog list` keeps its stdout for the listing.
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchivedWal:
    """A WAL file in the archive: a segment, a partial segment or a timeline history file."""

    name: str
    key: str
    size: int
    timeline: int
    start_lsn: int  # 0 for a history file
    end_lsn: int  # the segment's end (a partial one holds less)
    last_commit_at: dt.datetime | None = None  # looked up for the newest segments of each stretch only

    @property
    def partial(self) -> bool:
        return self.name.endswith(PARTIAL_SUFFIX)

    @property
    def history(self) -> bool:
        return HISTORY_NAME.match(self.name) is not None


@dataclass(frozen=True)
class Gap:
    """WAL that never reached the archive, as the gap entry `gaps/<detected at>.json` records it."""

    key: str
    detected_at: dt.datetime
    reason: str
    from_lsn: int
    to_lsn: int | None
    timeline: int
    message: str


@dataclass(frozen=True)
class Catalog:
    """An archive as read at one moment, oldest first everywhere."""

    base_backups: tuple[BaseBackupEntry, ...]
    wal: tuple[ArchivedWal, ...]
    gaps: tuple[Gap, ...]
    segment_size: int = DEFAULT_SEGMENT_SIZE
    unlisted_tars: tuple[str, ...] = ()  # ids of base backup tars without an entry
    system_identifier: str | None = None


class RecoveryWindow(NamedTuple):
    """From the completion of the oldest base backup after the last gap to the newest archived
    commit; None where unknown (no base backup yet, or no commit time archived)."""

    start: dt.datetime | None
    end: dt.datetime | None


@dataclass(frozen=True)
class ArchiveEnd:
    """Where recovery from a stretch must stop: the newest position and commit time it holds."""

    lsn: int
    time: dt.datetime | None
    gap: Gap | None = None  # the gap that ends the stretch; None for the archive's end

    def describe(self) -> str:
        when = (
            f"{timestamps.rfc3339(self.time)} ({format_lsn(self.lsn)})" if self.time else format_lsn(self.lsn)
        )
        return f"the archive ends at {when}"


@dataclass(frozen=True)
class RecoveryTarget:
    """Exactly one of `time`, `lsn`, `restore_point`, `latest`, as a Restore's pointInTime target.

    `restore_point_lsn`, when known (pg_create_restore_point() returns it), places a restore point:
    recovery then starts from the newest base backup before it instead of the oldest."""

    time: dt.datetime | None = None
    lsn: int | None = None
    restore_point: str | None = None
    latest: bool = False
    inclusive: bool = True
    restore_point_lsn: int | None = None

    def __post_init__(self) -> None:
        given = [self.time is not None, self.lsn is not None, self.restore_point is not None, self.latest]
        if sum(given) != 1:
            raise ValueError("a recovery target is exactly one of time, lsn, restorePoint and latest")
        if self.restore_point_lsn is not None and self.restore_point is None:
            raise ValueError("restore_point_lsn places a restore point: it needs restore_point")

    def describe(self) -> str:
        if self.time is not None:
            return f"time {timestamps.rfc3339(self.time)}"
        if self.lsn is not None:
            return f"LSN {format_lsn(self.lsn)}"
        if self.restore_point is None:
            return "latest"
        at = f" at {format_lsn(self.restore_point_lsn)}" if self.restore_point_lsn is not None else ""
        return f"restore point {self.restore_point!r}{at}"


@dataclass(frozen=True)
class RecoveryPlan:
    """The base backup to start from and the WAL files (names, as restore_command asks for them)
    that recovery to `target` reads; `end` is where its stretch of the archive ends."""

    base_backup: BaseBackupEntry
    segments: tuple[str, ...]
    target: RecoveryTarget
    end: ArchiveEnd = field(default_factory=lambda: ArchiveEnd(0, None))

    def keys(self, layout: ArchiveLayout) -> frozenset[str]:
        """The objects a recovery following this plan reads: what retention must leave alone."""
        backup = {layout.base_backup(self.base_backup.id), layout.base_backup_entry(self.base_backup.id)}
        return frozenset(backup | {layout.wal(name) for name in self.segments})


# ---------------------------------------------------------------- reading (blocking)


def read_catalog(store: ObjectStore, layout: ArchiveLayout) -> Catalog:
    """The archive's base backups, WAL, gaps and the commit times at its stretches' ends."""
    identity = read_identity(store, layout)
    segment_size = identity_segment_size(identity)
    entries = base_backups(store, layout)
    found_gaps = gaps(store, layout)
    wal = segments(store, layout, segment_size)
    listed = {entry.id for entry in entries}
    tars = [
        stored.key.removeprefix(layout.base_prefix).removesuffix(".tar")
        for stored in store.list(layout.base_prefix)
        if stored.key.endswith(".tar")
    ]
    catalog = Catalog(
        base_backups=tuple(entries),
        wal=tuple(wal),
        gaps=tuple(found_gaps),
        segment_size=segment_size,
        unlisted_tars=tuple(sorted(set(tars) - listed)),
        system_identifier=str(identity["systemIdentifier"])
        if identity and "systemIdentifier" in identity
        else None,
    )
    return _with_commit_times(store, catalog)


def base_backups(store: ObjectStore, layout: ArchiveLayout) -> list[BaseBackupEntry]:
    """Every base backup that has an entry, oldest first; an unreadable entry is skipped (and logged)."""
    entries = []
    for stored in store.list(layout.base_prefix):
        if not stored.key.endswith(".json"):
            continue
        try:
            entry = BaseBackupEntry.from_json(_read_json(store, stored.key))
        except (ValueError, TypeError, KeyError):
            log.warning("skipping %s: not a base backup entry", store.uri(stored.key))
            continue
        if layout.base_backup_entry(entry.id) != stored.key:
            log.warning("skipping %s: it is the entry of %s", store.uri(stored.key), entry.id)
            continue
        entries.append(entry)
    return sorted(entries, key=lambda entry: (entry.completed_at, entry.id))


def segments(
    store: ObjectStore, layout: ArchiveLayout, segment_size: int = DEFAULT_SEGMENT_SIZE
) -> list[ArchivedWal]:
    """Every WAL file of the archive (commit times not looked up), by position, history files first."""
    found = []
    for stored in store.list(layout.wal_prefix):
        name = stored.key.removeprefix(layout.wal_prefix)
        base = name.removesuffix(PARTIAL_SUFFIX)
        if HISTORY_NAME.match(name):
            found.append(ArchivedWal(name, stored.key, stored.size, int(name[:8], 16), 0, 0))
        elif SEGMENT_NAME.match(base):
            timeline, start = segment_start(base, segment_size)
            found.append(ArchivedWal(name, stored.key, stored.size, timeline, start, start + segment_size))
    return sorted(found, key=lambda wal: (not wal.history, wal.start_lsn, wal.timeline, wal.partial))


def gaps(store: ObjectStore, layout: ArchiveLayout) -> list[Gap]:
    """Every readable gap entry, oldest first."""
    found = []
    for stored in store.list(layout.gap_prefix):
        if not stored.key.endswith(".json"):
            continue
        try:
            found.append(_gap(stored.key, _read_json(store, stored.key)))
        except (ValueError, TypeError, KeyError):
            log.warning("skipping %s: not a gap entry", store.uri(stored.key))
    return sorted(found, key=lambda gap: gap.detected_at)


def read_identity(store: ObjectStore, layout: ArchiveLayout) -> dict[str, object] | None:
    """The archive's `archive.json`; None when there is none, or it is not one (logged): a WalArchive
    then writes it again from its server."""
    try:
        return _read_json(store, layout.identity)
    except ValueError:
        log.warning("ignoring %s: not an archive identity", store.uri(layout.identity))
        return None


def recovery_window(store: ObjectStore, layout: ArchiveLayout) -> RecoveryWindow:
    return window_of(read_catalog(store, layout))


def plan_recovery(store: ObjectStore, layout: ArchiveLayout, target: RecoveryTarget) -> RecoveryPlan:
    """What recovery to `target` needs; PermanentError TargetNotRecoverable saying why there is none."""
    return plan(read_catalog(store, layout), target)


def _read_json(store: ObjectStore, key: str) -> dict[str, object] | None:
    """The JSON object stored at `key`; None when there is none, ValueError when it is not one."""
    try:
        stream = store.open(key)
    except OperationError as error:
        if error.reason is Reason.ARTIFACT_NOT_FOUND:
            return None
        raise
    try:
        body = stream.read(_MAX_ENTRY_BYTES + 1)
    finally:
        stream.close()
    if len(body) > _MAX_ENTRY_BYTES:
        raise ValueError(f"{key} is larger than an entry can be")
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError(f"{key} is not a JSON object")
    return data


def identity_segment_size(identity: dict[str, object] | None) -> int:
    """The segment size an identity records; the default for none (or a wrong one)."""
    size = identity.get("segmentSize") if identity else None
    if isinstance(size, int) and size > 0 and size & (size - 1) == 0:
        return size
    return DEFAULT_SEGMENT_SIZE


def _gap(key: str, data: dict[str, object] | None) -> Gap:
    if data is None:
        raise KeyError(key)
    to_lsn = data.get("toLsn")
    return Gap(
        key=key,
        detected_at=utc(str(data["detectedAt"])),
        reason=str(data["reason"]),
        from_lsn=_lsn(data["fromLsn"]),
        to_lsn=None if to_lsn is None else _lsn(to_lsn),
        timeline=int(str(data["timeline"])),
        message=str(data.get("message", "")),
    )


def _lsn(value: object) -> int:
    return parse_lsn(str(value))


def _with_commit_times(store: ObjectStore, catalog: Catalog) -> Catalog:
    """The catalog with `last_commit_at` of the newest segments before each stretch's end."""
    ends = [gap.from_lsn for gap in catalog.gaps] + [1 << 64]
    looked_up: dict[str, dt.datetime | None] = {}
    for end in ends:
        before = [wal for wal in catalog.wal if not wal.history and wal.start_lsn < end]
        for wal in reversed(before[-COMMIT_LOOKUPS:]):
            if wal.key not in looked_up:
                looked_up[wal.key] = _commit_time(store.metadata(wal.key))
            if looked_up[wal.key] is not None:
                break
    timed = tuple(replace(w, last_commit_at=looked_up.get(w.key)) for w in catalog.wal)
    return replace(catalog, wal=timed)


def _commit_time(metadata: dict[str, str] | None) -> dt.datetime | None:
    text = (metadata or {}).get(LAST_COMMIT_AT) or (metadata or {}).get(LAST_COMMIT_AT.lower())
    if not text:
        return None
    try:
        return utc(text)
    except ValueError:
        return None


# ---------------------------------------------------------------- planning (pure)


def window_of(catalog: Catalog) -> RecoveryWindow:
    last_stretch = _stretch_backups(catalog, None)
    if not last_stretch:
        return RecoveryWindow(None, None)
    return RecoveryWindow(last_stretch[0].completed_at, archive_end(catalog, None).time)


def archive_end(catalog: Catalog, gap: Gap | None) -> ArchiveEnd:
    """Where the stretch ending at `gap` (None: the last stretch) ends."""
    limit = gap.from_lsn if gap is not None else 1 << 64
    held = [wal for wal in catalog.wal if not wal.history and wal.start_lsn < limit]
    if not held:
        return ArchiveEnd(0 if gap is None else gap.from_lsn, None, gap)
    newest = held[-1]
    time = next((wal.last_commit_at for wal in reversed(held) if wal.last_commit_at is not None), None)
    return ArchiveEnd(min(newest.end_lsn, limit), time, gap)


def plan(catalog: Catalog, target: RecoveryTarget) -> RecoveryPlan:
    """The base backup and WAL for `target`, or PermanentError TargetNotRecoverable saying why not.

    Checks, in order: a base backup exists; one completed before the target; the target lies before
    the end of that backup's stretch (a later one is inside a gap, or past the archive's end); every
    segment from the backup to the target is archived.
    """
    if not catalog.base_backups:
        raise _refused(target, "the archive holds no base backup yet")
    if target.restore_point_lsn is not None:
        return _plan_to_lsn(catalog, target, target.restore_point_lsn)
    if target.latest or target.restore_point is not None:
        return _plan_to_end(catalog, target)
    if target.time is not None:
        return _plan_to_time(catalog, target, target.time)
    assert target.lsn is not None
    return _plan_to_lsn(catalog, target, target.lsn)


def _plan_to_end(catalog: Catalog, target: RecoveryTarget) -> RecoveryPlan:
    last_stretch = _stretch_backups(catalog, None)
    if not last_stretch:
        gap = catalog.gaps[-1]
        raise _refused(
            target,
            f"every base backup precedes the gap detected at {timestamps.rfc3339(gap.detected_at)}"
            f" ({gap.reason}): recoverable again once the next base backup completes",
        )
    # latest: the newest base backup replays the least; a restore point may be anywhere after the first.
    backup = last_stretch[-1] if target.latest else last_stretch[0]
    end = archive_end(catalog, None)
    return RecoveryPlan(backup, _needed(catalog, target, backup, end.lsn), target, end)


def _plan_to_time(catalog: Catalog, target: RecoveryTarget, time: dt.datetime) -> RecoveryPlan:
    before = [entry for entry in catalog.base_backups if entry.completed_at <= time]
    if not before:
        completed = timestamps.rfc3339(catalog.base_backups[0].completed_at)
        raise _refused(target, f"it is before the oldest base backup, which completed at {completed}")
    backup = before[-1]
    gap = _gap_after(catalog, backup)
    end = archive_end(catalog, gap)
    if end.time is None and gap is not None:
        raise _refused(target, _inside_gap(catalog, gap, "the WAL before it carries no commit time"))
    if end.time is not None and time > end.time:
        raise _refused(target, _inside_gap(catalog, gap, "") if gap is not None else end.describe())
    return RecoveryPlan(backup, _needed(catalog, target, backup, end.lsn), target, end)


def _plan_to_lsn(catalog: Catalog, target: RecoveryTarget, lsn: int) -> RecoveryPlan:
    before = [entry for entry in catalog.base_backups if entry.end_lsn <= lsn]
    if not before:
        oldest = min(catalog.base_backups, key=lambda entry: entry.end_lsn)
        raise _refused(
            target, f"it is before the end of the oldest base backup, {format_lsn(oldest.end_lsn)}"
        )
    backup = max(before, key=lambda entry: entry.end_lsn)
    gap = _gap_after(catalog, backup)
    end = archive_end(catalog, gap)
    if lsn > end.lsn:
        raise _refused(target, _inside_gap(catalog, gap, "") if gap is not None else end.describe())
    return RecoveryPlan(backup, _needed(catalog, target, backup, lsn), target, end)


def _stretch_backups(catalog: Catalog, gap: Gap | None) -> list[BaseBackupEntry]:
    """The base backups whose stretch ends at `gap` (None: the last stretch), oldest first."""
    return [entry for entry in catalog.base_backups if _gap_after(catalog, entry) == gap]


def _gap_after(catalog: Catalog, backup: BaseBackupEntry) -> Gap | None:
    """The first gap detected after `backup` started: where its WAL ends."""
    return next((gap for gap in catalog.gaps if gap.detected_at > backup.started_at), None)


def _needed(catalog: Catalog, target: RecoveryTarget, backup: BaseBackupEntry, upto: int) -> tuple[str, ...]:
    """History files, and the WAL from the backup's first segment to the one holding `upto`, every
    segment there; PermanentError when one is missing."""
    first = backup.start_lsn - backup.start_lsn % catalog.segment_size
    wanted = [
        wal
        for wal in catalog.wal
        if wal.history or (wal.timeline >= backup.timeline and first <= wal.start_lsn <= upto)
    ]
    present = {wal.start_lsn for wal in wanted if not wal.history}
    # Up to the target, or the newest segment archived when the target is the stretch's end; and at
    # least to the end of the backup, without which its copy is not consistent.
    last = max(min(upto, max(present, default=first)), backup.end_lsn - 1)
    for start in range(first, last - last % catalog.segment_size + 1, catalog.segment_size):
        if start not in present:
            missing = segment_name(backup.timeline, start, catalog.segment_size)
            raise _refused(target, f"segment {missing} is missing from the archive")
    return tuple(wal.name for wal in wanted)


def _inside_gap(catalog: Catalog, gap: Gap, detail: str) -> str:
    after = [entry for entry in catalog.base_backups if entry.started_at >= gap.detected_at]
    again = (
        f"; recoverable again from {timestamps.rfc3339(after[0].completed_at)}"
        if after
        else "; recoverable again once a base backup completes after it"
    )
    lost = f"WAL from {format_lsn(gap.from_lsn)} was lost"
    parts = [f"it is inside the gap detected at {timestamps.rfc3339(gap.detected_at)} ({gap.reason}: {lost}"]
    if detail:
        parts.append(f", {detail}")
    return "".join(parts) + ")" + again


def _refused(target: RecoveryTarget, why: str) -> PermanentError:
    return PermanentError(WalReason.TARGET_NOT_RECOVERABLE, f"cannot recover to {target.describe()}: {why}")
