"""One look at a WalArchive: keep WAL streaming into the archive, find gaps, guard the server's disk,
take base backups, apply retention, and report how far the archive reaches.

A WalArchive is a convergent kind (controllers/base/convergent.py) that looks again every
`partialUploadInterval`. Its receiver (a supervised pg_receivewal) and its storage live across
looks in a `Stream` (streams.py); a look:

1. opens the stream if there is none for this server, storage, codec and slot (`_stream_key`; the
   rest of the spec applies without a restart): the Secrets, the storage, then the continuity
   check (`_start`) BEFORE the receiver starts, since streaming moves the slot on;
2. uploads the completed segments in the spool, then the growing one (`.partial`);
3. checks the slot: a missing one is a gap (and is created again), one that holds back more than
   `maxRetainedWal` is an Event and, with `onExceeded: drop`, dropped (a gap) and created again;
4. collects a finished base backup, and starts one when there is none, a gap is newer than the
   newest, or the schedule says so: it runs beside the looks, which keep uploading meanwhile;
5. looks for holes between archived segments and applies retention (hourly, after each base
   backup, never while a Restore reads the archive), and reads the recovery window;
6. writes status: conditions when they change, the LSNs at most every PROGRESS_SECONDS.

A gap (WAL that never reached the archive) is a condition, an Event, a metric, an entry in storage
and an immediate base backup, after which the recovery window restarts. Failures follow the
convergent policy with `retries_failed`: Stalled with the reason, looked at again every
RECHECK_SECONDS, the receiver kept running where it can (its own restarts have their backoff).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

import structlog

from habitat_operator import timestamps
from habitat_operator.api.common import Reason
from habitat_operator.api.objectives import OBJECTIVES_MET
from habitat_operator.api.restore import RESTORE
from habitat_operator.api.wal import WalReason
from habitat_operator.api.walarchive import (
    MAX_GAPS_LISTED,
    WAL_ARCHIVE,
    Gap,
    GapReason,
    LastBaseBackup,
    OnExceeded,
    RecoveryWindow,
    WalArchivePhase,
    WalArchiveReason,
    WalArchiveSpec,
    WalArchiveStatus,
    WalCompression,
    parse_byte_size,
)
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.base import kube, recoverability_metrics
from habitat_operator.controllers.base.buckets import open_bucket
from habitat_operator.controllers.base.conditions import Flag
from habitat_operator.controllers.base.convergent import ConvergentRun
from habitat_operator.controllers.base.core import Recheck, RetryLater, unexpected
from habitat_operator.controllers.base.credentials import read_connection, read_secret_value
from habitat_operator.controllers.base.objectives import rpo_verdict
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.controllers.base.status import TERMINAL_PHASES, Edit
from habitat_operator.controllers.scheduling.cron import expected_interval_seconds, next_run
from habitat_operator.controllers.walarchive import metrics
from habitat_operator.controllers.walarchive.engines import Archive, WalEngines
from habitat_operator.controllers.walarchive.streams import Stream, Streams
from habitat_operator.durations import parse_duration
from habitat_operator.engines.artifacts.store import ArtifactStore
from habitat_operator.engines.postgres.replication import SlotState, application_name, default_slot_name
from habitat_operator.engines.threads import in_thread
from habitat_operator.engines.wal.basebackup import BaseBackupEntry
from habitat_operator.engines.wal.catalog import identity_segment_size
from habitat_operator.engines.wal.layout import DEFAULT_SEGMENT_SIZE, ArchiveLayout, format_lsn
from habitat_operator.engines.wal.store import BucketStore, FolderStore, ObjectStore
from habitat_operator.errors import OperationError, RetryableError, one_line
from habitat_operator.formatting import human_size
from habitat_operator.metrics import advance

log = structlog.get_logger(__name__)

RECHECK_SECONDS = 30.0
SUSPENDED_SECONDS = 3600.0  # a resume is a spec change, which wakes the daemon at once
PROGRESS_SECONDS = 30.0  # LSNs and lag change every look; status gets them this often (metrics: every look)
WINDOW_SECONDS = 30.0
RETENTION_SECONDS = 3600.0
BASE_BACKUP_BACKOFF_SECONDS = 60.0
MAX_BASE_BACKUP_BACKOFF_SECONDS = 3600.0
MAX_PARTIAL_UPLOAD_INTERVAL = 3600.0
# A slot made again after a drop holds WAL from the server's last checkpoint until pg_receivewal
# first confirms a position (it does every 10 s): over the budget at once if much WAL came since
# that checkpoint. It is not judged against the budget for this long.
REDROP_GRACE_SECONDS = 30.0
# Under the backup root (a persistent volume): a spool that survives a restart keeps the slot's
# promise; a lost one is a gap, detected on the next start.
SPOOL_FOLDER = ".habitat-wal-spool"

SLOT_OVER_BUDGET = "SlotOverBudget"
# Failures of credentials that live in the stream: the next look opens it again with the Secrets.
REOPEN_ON = frozenset({Reason.STORAGE_AUTH_FAILED, Reason.KEY_INVALID})


def backup_id(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ")


async def _nothing_to_close() -> None:
    pass


def _shows(done: BaseBackupEntry) -> Edit[WalArchiveStatus]:
    """Status' lastBaseBackup is `done`."""

    def taken(status: WalArchiveStatus) -> None:
        status.last_base_backup = LastBaseBackup(
            name=done.id,
            started_at=done.started_at,
            completed_at=done.completed_at,
            size=human_size(done.size_bytes),
            size_bytes=done.size_bytes,
        )

    return taken


def _refused(stream: Stream) -> bool:
    """The receiver stopped on an error (and restarts with its own backoff)."""
    receiver = stream.receiver
    return receiver is not None and not receiver.running and bool(receiver.last_error)


def _stream_key(spec: WalArchiveSpec) -> str:
    """What the receiver and the storage are made of: a change of anything else (the interval, the
    budget, the schedule) takes effect at the next look without a restart of the stream."""
    fields = ("database", "storage", "compression", "encryption", "synchronous")
    return spec.model_dump_json(include={**dict.fromkeys(fields, True), "slot": {"name"}})


def _interval(spec: WalArchiveSpec) -> float:
    return parse_duration(spec.partial_upload_interval).total_seconds()


class WalArchiveRun(ConvergentRun[WalArchiveSpec, WalArchiveStatus]):
    """One look at one WalArchive; build one per look with the latest body. What lives longer is
    in `streams`."""

    info = WAL_ARCHIVE
    spec_model = WalArchiveSpec
    status_model = WalArchiveStatus
    pending_phase = WalArchivePhase.PENDING
    failed_phase = WalArchivePhase.STALLED
    retries_failed = True
    recheck_seconds = RECHECK_SECONDS

    def __init__(
        self,
        body: kube.JsonDict,
        config: OperatorConfig,
        slots: OperationSlots,
        streams: Streams,
    ) -> None:
        super().__init__(body, config, slots)
        self.streams = streams
        self.engines: WalEngines = streams.engines
        self.uid: str = body["metadata"]["uid"]

    @property
    def spool(self) -> Path:
        return self.config.backup_root / SPOOL_FOLDER / self.namespace / self.uid

    async def retry_or_fail(self, spec: WalArchiveSpec, error: OperationError) -> RetryLater | None:
        """As the convergent policy says; keys the storage or the codec refused are read again at
        the next look (a rotated Secret), and the storage opened again, the receiver streaming on."""
        stream = self.streams.get(self.uid)
        if stream is not None and error.reason in REOPEN_ON:
            stream.storage_stale = True
        return await super().retry_or_fail(spec, error)

    def check_spec(self, spec: WalArchiveSpec) -> None:
        if not 1.0 <= _interval(spec) <= MAX_PARTIAL_UPLOAD_INTERVAL:
            raise ValueError("spec.partialUploadInterval must be between 1s and 1h")
        if parse_duration(spec.base_backup.retention.recovery_window).total_seconds() <= 0:
            raise ValueError("spec.baseBackup.retention.recoveryWindow must be longer than 0s")

    # ---------------------------------------------------------------- the look

    async def execute(self, spec: WalArchiveSpec) -> RetryLater:
        labels = (self.namespace, self.name)
        metrics.SLOT_MAX_RETAINED_BYTES.labels(*labels).set(parse_byte_size(spec.slot.max_retained_wal))
        metrics.BASE_BACKUP_EXPECTED_INTERVAL.labels(*labels).set(
            expected_interval_seconds(spec.base_backup.schedule)
        )
        if self.streams.get(self.uid) is None:
            self._restore_metrics()
        if spec.suspend:
            await self.streams.close(self.uid)
            metrics.STREAMING.labels(*labels).set(0)
            window = self.status.recovery_window
            edits, flags, drop = self._objectives(spec, window.to if window else None, force=True)
            await self.reporter.write(
                "paused",
                WalArchivePhase.SUSPENDED,
                Reason.SUSPENDED,
                "suspended: not streaming; the slot keeps the server's WAL until resumed",
                *edits,
                flags=flags,
                drop=drop,
            )
            return Recheck(SUSPENDED_SECONDS)
        stream = await self._stream(spec)
        await self._upload(stream)
        slot = await self._check_slot(stream, spec)
        await self._base_backups(stream, spec)
        await self._housekeeping(stream, spec)
        await self._report(stream, spec, slot)
        return Recheck(_interval(spec))

    async def _stream(self, spec: WalArchiveSpec) -> Stream:
        stream = self.streams.get(self.uid)
        target = None
        if stream is not None and stream.key == _stream_key(spec):
            running = stream.base_backup is not None and not stream.base_backup.done()
            if stream.storage_stale and not running:  # not under a running base backup's feet
                await self._reopen_storage(stream, spec)
            if not _refused(stream):
                return stream
            # Refused: a rotated password (or a new server) in the Secret is a reason to restart.
            target = await read_connection(self.namespace, spec.database.secret_ref)
            if target.conninfo() == stream.target.conninfo():
                return stream
        await self.streams.close(self.uid)  # another server or storage: the receiver restarts; the slot stays
        target = target or await read_connection(self.namespace, spec.database.secret_ref)
        archive, close = await self._open_archive(spec)
        stream = Stream(
            uid=self.uid,
            key=_stream_key(spec),
            engines=self.engines,
            target=target,
            slot=spec.slot.name or default_slot_name(self.namespace, self.name),
            spool=self.spool,
            archive=archive,
            close_storage=close,
        )
        try:
            await self._start(stream, spec)
        except BaseException:
            await stream.shut(drop_slot=False)
            raise
        self.streams.add(stream)
        return stream

    def _restore_metrics(self) -> None:
        """Before a stream runs (after an operator restart, or while it cannot open), the gauges the
        alerts read come from status, so that they neither misfire nor go silent: the base backup's
        (an archive without one counts from its creation), the newest archived commit, the lag."""
        labels = (self.namespace, self.name)
        window = self.status.recovery_window
        if window is not None and window.to is not None:
            advance(metrics.LAST_ARCHIVED_COMMIT, *labels, window.to.timestamp())
        if self.status.lag_bytes is not None:
            metrics.LAG_BYTES.labels(*labels).set(self.status.lag_bytes)
        known = self.status.last_base_backup
        if known is not None and known.completed_at is not None:
            metrics.note_base_backup(
                self.namespace, self.name, known.completed_at.timestamp(), known.size_bytes or 0
            )
        elif created := self.body["metadata"].get("creationTimestamp"):
            metrics.note_base_backup(self.namespace, self.name, timestamps.parse(created).timestamp(), 0)

    async def _open_archive(self, spec: WalArchiveSpec) -> tuple[Archive, Callable[[], Awaitable[None]]]:
        """The archive with its storage and key read from the Secrets, and how to close it."""
        key = None
        if spec.encryption is not None:
            ref = spec.encryption.key_secret_ref
            key = await read_secret_value(self.namespace, ref.name, ref.key)
        store, close = await self._open_storage(spec)
        zstd = spec.compression is WalCompression.ZSTD
        return Archive(store, ArchiveLayout(self.name), key, zstd), close

    async def _reopen_storage(self, stream: Stream, spec: WalArchiveSpec) -> None:
        """Fresh keys for a running stream."""
        archive, close = await self._open_archive(spec)
        await stream.close_storage()
        stream.archive, stream.close_storage, stream.storage_stale = archive, close, False

    async def _open_storage(self, spec: WalArchiveSpec) -> tuple[ObjectStore, Callable[[], Awaitable[None]]]:
        """The archive's namespace part of its storage, and how to close it when the stream ends."""
        if spec.storage.s3 is None:
            assert spec.storage.filesystem is not None
            root = await in_thread(
                ArtifactStore(self.config.backup_root).namespace_directory,
                spec.storage.filesystem.path,
                self.namespace,
            )
            return FolderStore(root), _nothing_to_close
        bucket = await open_bucket(self.namespace, spec.storage.s3)

        async def close() -> None:
            await in_thread(bucket.close)

        return BucketStore(bucket, bucket.location.key(self.namespace)), close

    async def _start(self, stream: Stream, spec: WalArchiveSpec) -> None:
        """The continuity check, then the receiver: a changed server, a missing slot or a slot that
        starts past what the archive and the spool hold is a gap."""
        engines, archive = self.engines, stream.archive
        identity = stream.identity = await engines.server_identity(stream.target)
        recorded = await engines.read_identity(archive)
        changed = recorded is not None and str(recorded.get("systemIdentifier")) != identity.system_identifier
        if changed:
            assert recorded is not None
            reach = await engines.archived_end(archive, identity_segment_size(recorded))
            await self._gap(
                stream,
                GapReason.SYSTEM_IDENTIFIER_CHANGED,
                reach,
                None,
                f"the server's system identifier is {identity.system_identifier}, the archive's "
                f"{recorded.get('systemIdentifier')}: another server (a new primary, or a restored one); "
                "the archive follows it from now on",
            )
            await engines.remove_spool(stream.spool)  # the old server's WAL must not mix with the new one's
        if recorded is None or changed:
            await engines.write_identity(
                archive,
                {
                    "systemIdentifier": identity.system_identifier,
                    "serverVersion": identity.server_version,
                    "segmentSize": identity.segment_size,
                    "createdAt": timestamps.rfc3339(timestamps.now()),
                },
            )
        slot = await engines.slot_state(stream.target, stream.slot)
        archived = await engines.archived_end(archive, identity.segment_size)
        spooled = await engines.spooled_end(stream.spool, identity.segment_size)
        reach = max((lsn for lsn in (archived, spooled) if lsn is not None), default=None)
        stream.archived_lsn = archived
        if slot is None:
            if reach is not None and not changed:
                await self._gap(
                    stream,
                    GapReason.SLOT_MISSING,
                    reach,
                    None,
                    f"replication slot {stream.slot} is missing (dropped, or a failover to a new primary): "
                    f"the server did not keep the WAL after {format_lsn(reach)}",
                )
            await engines.create_slot(stream.target, stream.slot)
        elif slot.restart_lsn is not None and reach is not None and not changed:
            # pg_receivewal starts at the beginning of the segment that holds restart_lsn.
            resumes = slot.restart_lsn - slot.restart_lsn % identity.segment_size
            if resumes > reach:
                await self._gap(
                    stream,
                    GapReason.SEGMENT_MISSING,
                    reach,
                    resumes,
                    f"the archive and the spool reach {format_lsn(reach)} but slot {stream.slot} resumes at "
                    f"{format_lsn(resumes)}: the WAL between is lost (is the spool on a persistent volume?)",
                )
        await self._start_receiver(stream, spec)

    async def _start_receiver(self, stream: Stream, spec: WalArchiveSpec) -> None:
        stream.receiver = self.engines.receiver(
            stream.target,
            stream.slot,
            stream.spool,
            application_name(self.namespace, self.name),
            spec.synchronous,
        )
        await stream.receiver.start()

    # ---------------------------------------------------------------- uploads and the slot

    async def _upload(self, stream: Stream) -> None:
        labels = (self.namespace, self.name)
        ready = await self.engines.upload_ready(stream.spool, stream.archive)
        partial = stream.partial = await self.engines.upload_partial(
            stream.spool, stream.archive, stream.partial
        )
        metrics.ARCHIVED_SEGMENTS.labels(*labels).inc(ready.segments)
        metrics.ARCHIVED_BYTES.labels(*labels).inc(ready.bytes + (partial.uploaded_bytes if partial else 0))
        reached = (ready.archived_lsn, partial.end_lsn if partial else None)
        for lsn in (lsn for lsn in reached if lsn is not None):
            stream.archived_lsn = max(stream.archived_lsn or 0, lsn)
        committed = (ready.last_commit_at, partial.last_commit_at if partial else None)
        for moment in (moment for moment in committed if moment is not None):
            advance(metrics.LAST_ARCHIVED_COMMIT, *labels, moment.timestamp())

    async def _check_slot(self, stream: Stream, spec: WalArchiveSpec) -> SlotState | None:
        """The slot as the server sees it now; missing or over budget with `drop`: a gap, and a new
        slot from the server's current position."""
        slot = await self.engines.slot_state(stream.target, stream.slot)
        if slot is None:
            await self._gap(
                stream,
                GapReason.SLOT_MISSING,
                stream.archived_lsn,
                None,
                f"replication slot {stream.slot} disappeared while streaming (dropped, or a failover to a "
                "new primary)",
            )
            await self.engines.create_slot(stream.target, stream.slot)
            return None
        budget = parse_byte_size(spec.slot.max_retained_wal)
        retained = slot.retained_bytes
        metrics.SLOT_RETAINED_BYTES.labels(self.namespace, self.name).set(retained)
        over = retained > budget and time.monotonic() - stream.dropped_at >= REDROP_GRACE_SECONDS
        if over and not stream.over_budget:
            message = (
                f"replication slot {stream.slot} holds back {human_size(retained)} of WAL on the server, "
                f"over maxRetainedWal {spec.slot.max_retained_wal}"
            )
            if spec.slot.on_exceeded is OnExceeded.DROP:
                message += "; dropping it (onExceeded: drop)"
            log.warning("slot over budget", namespace=self.namespace, name=self.name, retained=retained)
            await kube.event(self.body, "Warning", WalArchiveReason.SLOT_RETENTION_EXCEEDED, message)
        stream.over_budget = over
        if over and spec.slot.on_exceeded is OnExceeded.DROP:
            await self._drop_and_recreate(stream, spec, retained)
            return None
        return slot

    async def _drop_and_recreate(self, stream: Stream, spec: WalArchiveSpec, retained: int) -> None:
        if stream.receiver is not None:
            await stream.receiver.stop()
        await self.engines.drop_slot(stream.target, stream.slot)
        # pg_receivewal resumes at the spool's newest segment, WAL the server no longer keeps: an
        # empty spool makes it start at the new slot. What the spool held is behind the gap.
        await self.engines.remove_spool(stream.spool)
        stream.partial = None
        stream.over_budget = False
        await self._gap(
            stream,
            GapReason.SLOT_DROPPED,
            stream.archived_lsn,
            None,
            f"replication slot {stream.slot} was dropped holding {human_size(retained)}, over maxRetainedWal "
            f"{spec.slot.max_retained_wal} (onExceeded: drop): the WAL it held is not archived",
        )
        await self.engines.create_slot(stream.target, stream.slot)
        stream.dropped_at = time.monotonic()
        await self._start_receiver(stream, spec)

    async def _gap(
        self, stream: Stream, reason: GapReason, from_lsn: int | None, to_lsn: int | None, message: str
    ) -> None:
        """WAL that never reached the archive: an entry in storage, the status' list, a metric, an
        Event, and a base backup due at once (the recovery window restarts after it). The same gap
        found again (a look that failed after finding it) is recorded once."""
        now = timestamps.now()
        newest = self.status.gaps[-1] if self.status.gaps else None
        last = stream.last_base_backup_started
        # Nothing archived yet: all WAL before the gap is missing (the catalog needs a position).
        from_text = format_lsn(from_lsn or 0)
        if (
            newest is not None
            and (newest.reason, newest.from_lsn) == (reason, from_text)
            and (last is None or newest.detected_at > last)
        ):
            return
        timeline = stream.identity.timeline if stream.identity else None
        gap = Gap(
            detected_at=now,
            reason=reason,
            from_lsn=from_text,
            to_lsn=None if to_lsn is None else format_lsn(to_lsn),
            timeline=timeline,
            message=message,
        )
        entry = gap.model_dump(by_alias=True, mode="json")
        await self.engines.write_gap(stream.archive, backup_id(now), entry)
        metrics.GAPS.labels(self.namespace, self.name, reason.value).inc()
        log.warning(
            "gap detected", namespace=self.namespace, name=self.name, reason=reason.value, error=message
        )
        await kube.event(self.body, "Warning", WalArchiveReason.GAP_DETECTED, f"{reason.value}: {message}")

        def listed(status: WalArchiveStatus) -> None:  # carried: applied again by every later write
            if gap not in (status.gaps or []):
                status.gaps = [*(status.gaps or []), gap][-MAX_GAPS_LISTED:]

        self.reporter.carry(listed)
        await self.reporter.write(
            "reconciling",
            self.status.phase or WalArchivePhase.PENDING,
            WalArchiveReason.GAP_DETECTED,
            f"gap detected ({reason.value}): {message}; taking a base backup",
        )
        stream.base_backup_retry_at = 0.0
        stream.progress_written = -math.inf

    # ---------------------------------------------------------------- base backups

    def _newest_gap(self) -> datetime | None:
        return max((gap.detected_at for gap in self.status.gaps or []), default=None)

    def _base_backup_due(self, stream: Stream, spec: WalArchiveSpec) -> bool:
        last = stream.last_base_backup_started
        if last is None:
            return True
        gap = self._newest_gap()
        if gap is not None and gap > last:
            return True
        return next_run(spec.base_backup.schedule, last) <= timestamps.now()

    async def _base_backups(self, stream: Stream, spec: WalArchiveSpec) -> None:
        if not stream.catalog_read:
            stream.last_base_backup_started = await self._newest_base_backup_started(stream)
            stream.catalog_read = True
        task = stream.base_backup
        if task is not None and task.done():
            stream.base_backup = None
            try:
                if task.cancelled():  # only a stream's shut cancels it, and that ends the stream
                    raise RetryableError(Reason.CANCELLED, "the base backup was cancelled")
                await self._base_backup_done(stream, task.result())
            except OperationError as error:
                await self._base_backup_failed(stream, error)
            except Exception as error:  # an engine's bug still ends in status, and is retried
                log.exception("base backup failed", namespace=self.namespace, name=self.name)
                await self._base_backup_failed(stream, unexpected(error))
        idle = stream.base_backup is None and time.monotonic() >= stream.base_backup_retry_at
        if idle and self._base_backup_due(stream, spec):
            started = backup_id(timestamps.now())
            stream.base_backup = asyncio.create_task(self._take_base_backup(stream, started))

    async def _newest_base_backup_started(self, stream: Stream) -> datetime | None:
        """The newest base backup's start: status knows it, else the archive's catalog (a status
        lost or reset, a WalArchive created again over its old archive), which status then shows."""
        known = self.status.last_base_backup
        if known is not None and known.started_at is not None:
            return known.started_at
        newest = await self.engines.newest_base_backup(stream.archive)
        if newest is None:
            return None
        self.reporter.carry(_shows(newest))
        return newest.started_at

    async def _take_base_backup(self, stream: Stream, backup: str) -> BaseBackupEntry:
        async def queued(_: str) -> None:
            pass  # status says BaseBackupRunning; the slot only bounds the server's load

        async with self.slots.hold(stream.target.display, queued):
            return await self.engines.take_base_backup(stream.target, stream.archive, backup)

    async def _base_backup_done(self, stream: Stream, done: BaseBackupEntry) -> None:
        labels = (self.namespace, self.name)
        elapsed = (done.completed_at - done.started_at).total_seconds()
        stream.last_base_backup_started = done.started_at
        stream.base_backup_failures, stream.base_backup_error = 0, None
        stream.progress_written = -math.inf  # the window and the base backup show at once
        stream.retention_at = stream.window_at = 0.0  # the window may start later now
        metrics.BASE_BACKUPS.labels(*labels, "success").inc()
        metrics.BASE_BACKUP_DURATION.labels(*labels).observe(max(elapsed, 0.0))
        metrics.note_base_backup(*labels, done.completed_at.timestamp(), done.size_bytes)

        self.reporter.carry(_shows(done))
        message = f"base backup {done.id}: {human_size(done.size_bytes)} in {elapsed:.0f}s, verified"
        await kube.event(self.body, "Normal", WalArchiveReason.BASE_BACKUP_SUCCEEDED, message)

    async def _base_backup_failed(self, stream: Stream, error: OperationError) -> None:
        stream.base_backup_failures += 1
        delay = min(
            BASE_BACKUP_BACKOFF_SECONDS * 2 ** (stream.base_backup_failures - 1),
            MAX_BASE_BACKUP_BACKOFF_SECONDS,
        )
        stream.base_backup_retry_at = time.monotonic() + delay
        metrics.BASE_BACKUPS.labels(self.namespace, self.name, "failure").inc()
        message = f"base backup failed: {error.message}; trying again in {delay:.0f}s"
        stream.base_backup_error = message
        log.warning("base backup failed", namespace=self.namespace, name=self.name, error=error.message)
        await kube.event(self.body, "Warning", WalReason.BASE_BACKUP_FAILED, message)

    # ---------------------------------------------------------------- retention, window, status

    async def _housekeeping(self, stream: Stream, spec: WalArchiveSpec) -> None:
        """Retention hourly and after each base backup (never while one runs); the window every
        WINDOW_SECONDS. A failed retention is reported and tried again at the next hour."""
        now = time.monotonic()
        due = now >= stream.retention_at and stream.base_backup is None and stream.last_base_backup_started
        if due and await self._read_by_a_restore():
            stream.retention_at = now + WINDOW_SECONDS  # looked at again soon: it holds nothing for long
        elif due:
            stream.retention_at = now + RETENTION_SECONDS
            await self._find_holes(stream)
            window = spec.base_backup.retention.recovery_window
            try:
                deleted = await self.engines.apply_retention(
                    stream.archive, timestamps.now() - parse_duration(window)
                )
            except OperationError as error:
                log.warning("retention failed", namespace=self.namespace, name=self.name, error=error.message)
                await kube.event(
                    self.body,
                    "Warning",
                    WalArchiveReason.RETENTION_FAILED,
                    f"retention failed: {error.message}",
                )
            else:
                if deleted:
                    message = (
                        f"deleted {deleted} objects that the recovery window of {window} no longer needs"
                    )
                    await kube.event(self.body, "Normal", WalArchiveReason.RETENTION_APPLIED, message)
        if now >= stream.window_at:
            stream.window_at = now + WINDOW_SECONDS
            stream.window = await self.engines.recovery_window(stream.archive)
            if stream.window[1] is not None:
                advance(metrics.LAST_ARCHIVED_COMMIT, self.namespace, self.name, stream.window[1].timestamp())

    async def _find_holes(self, stream: Stream) -> None:
        """Segments missing between archived ones (deleted, an upload lost): gaps nobody saw happen.
        Looked for before retention, which removes only what is older than the window."""
        segment_size = stream.identity.segment_size if stream.identity else DEFAULT_SEGMENT_SIZE
        for start, end in await self.engines.unexplained_holes(stream.archive, segment_size):
            await self._gap(
                stream,
                GapReason.SEGMENT_MISSING,
                start,
                end,
                f"the archive has no WAL from {format_lsn(start)} to {format_lsn(end)}, though it has WAL "
                "on both sides (objects deleted, or an upload lost)",
            )

    async def _read_by_a_restore(self) -> str | None:
        """An unfinished Restore of this namespace that reads this archive: while one runs, retention
        deletes nothing (the base backup and WAL it replays must stay)."""
        for restore in await kube.list_objects(RESTORE.plural, self.namespace, ""):
            source = (restore.get("spec") or {}).get("source") or {}
            ref = (source.get("pointInTime") or {}).get("walArchiveRef") or {}
            phase = (restore.get("status") or {}).get("phase")
            if ref.get("name") == self.name and phase not in TERMINAL_PHASES:
                return str(restore["metadata"]["name"])
        return None

    async def _report(self, stream: Stream, spec: WalArchiveSpec, slot: SlotState | None) -> None:
        labels = (self.namespace, self.name)
        receiver = stream.receiver
        streaming = receiver is not None and receiver.running
        metrics.STREAMING.labels(*labels).set(1 if streaming else 0)
        archived = stream.archived_lsn
        current = None
        if slot is not None and slot.restart_lsn is not None:
            current = slot.restart_lsn + slot.retained_bytes
        lag = None if current is None or archived is None else max(0, current - archived)
        if lag is not None:
            metrics.LAG_BYTES.labels(*labels).set(lag)
        identity = stream.identity
        start, end = stream.window

        def progress(status: WalArchiveStatus) -> None:
            status.slot = stream.slot
            status.timeline = identity.timeline if identity else status.timeline
            if slot is not None and slot.restart_lsn is not None:
                status.received_lsn = format_lsn(slot.restart_lsn)
                status.slot_retained_bytes = slot.retained_bytes
            if archived is not None:
                status.archived_lsn = format_lsn(archived)
            status.lag_bytes = lag if lag is not None else status.lag_bytes
            if start is not None or end is not None:
                status.recovery_window = RecoveryWindow(from_=start, to=end)

        edits: list[Edit[WalArchiveStatus]] = []
        due = time.monotonic() - stream.progress_written >= PROGRESS_SECONDS
        if due:
            edits.append(progress)
            stream.progress_written = time.monotonic()
        last = stream.last_base_backup_started
        # Nothing waits to be archived: the archive holds everything up to now.
        point = None if last is None else timestamps.now() if lag == 0 else end
        objectives, objective_flags, drop = self._objectives(spec, point, force=due)
        edits.extend(objectives)
        flags = (self._budget_flag(stream, spec), *objective_flags)
        gap = self._newest_gap()
        failing = f"; {stream.base_backup_error}" if stream.base_backup_error else ""
        if receiver is not None and _refused(stream):
            error = stream.target.redact(receiver.last_error.message if receiver.last_error else "")
            await self.stall(
                WalArchivePhase.STALLED,
                WalReason.REPLICATION_REFUSED,
                f"pg_receivewal on slot {stream.slot} is not running: {error}; it is restarted with backoff",
                *edits,
                flags=flags,
                drop=drop,
            )
        elif last is None and stream.base_backup_error:
            await self.stall(
                WalArchivePhase.PENDING,
                WalReason.BASE_BACKUP_FAILED,
                f"streaming, but nothing is recoverable until a base backup succeeds{failing}",
                *edits,
                flags=flags,
                drop=drop,
            )
        elif last is None:
            await self.reporter.write(
                "reconciling",
                WalArchivePhase.PENDING,
                WalArchiveReason.BASE_BACKUP_RUNNING,
                "streaming; taking the first base backup (nothing is recoverable before it)",
                *edits,
                flags=flags,
                drop=drop,
            )
        elif gap is not None and gap > last:
            await self.reporter.write(
                "reconciling",
                WalArchivePhase.READY,
                WalArchiveReason.GAP_DETECTED,
                f"a gap was detected at {timestamps.rfc3339(gap)}: taking a base backup, after which the "
                f"recovery window restarts{failing}",
                *edits,
                flags=flags,
                drop=drop,
            )
        else:
            where = stream.archive.store.uri(stream.archive.layout.archive)
            await self.reporter.write(
                "ready",
                WalArchivePhase.READY,
                WalArchiveReason.STREAMING,
                f"streaming WAL on slot {stream.slot} into {where}{failing}",
                *edits,
                flags=flags,
                drop=drop,
            )

    def _objectives(
        self, spec: WalArchiveSpec, point: datetime | None, force: bool
    ) -> tuple[list[Edit[WalArchiveStatus]], tuple[Flag, ...], tuple[str, ...]]:
        """The RPO's condition, and its figures in status when `force` (the progress period) or
        the verdict turned: a look every few seconds must not write status for a figure alone."""
        objective = spec.objectives.rpo if spec.objectives else None
        series = None
        if objective is None:
            recoverability_metrics.set_rpo(WAL_ARCHIVE.kind, self.namespace, self.name, None)

            def cleared(status: WalArchiveStatus) -> None:
                status.recoverability = None

            return [cleared], (), (OBJECTIVES_MET,)
        created = timestamps.parse(self.body["metadata"]["creationTimestamp"])
        previous = self.status.recoverability
        verdict = rpo_verdict(objective, point, created, timestamps.now(), previous)
        series = recoverability_metrics.RpoSeries(
            (point or created).timestamp(), parse_duration(objective).total_seconds()
        )
        recoverability_metrics.set_rpo(WAL_ARCHIVE.kind, self.namespace, self.name, series)
        edits: list[Edit[WalArchiveStatus]] = []
        if force or previous is None or previous.objectives_met != verdict.met:

            def measured(status: WalArchiveStatus) -> None:
                status.recoverability = verdict.recoverability

            edits.append(measured)
        return edits, (verdict.flag,), ()

    @staticmethod
    def _budget_flag(stream: Stream, spec: WalArchiveSpec) -> Flag:
        budget = spec.slot.max_retained_wal
        if stream.over_budget:
            return Flag(
                SLOT_OVER_BUDGET,
                True,
                WalArchiveReason.SLOT_RETENTION_EXCEEDED,
                f"slot {stream.slot} holds back more WAL on the server than maxRetainedWal {budget}",
            )
        return Flag(
            SLOT_OVER_BUDGET,
            False,
            WalArchiveReason.SLOT_RETENTION_WITHIN_BUDGET,
            f"slot {stream.slot} holds back less than maxRetainedWal {budget}",
        )

    # ---------------------------------------------------------------- the daemon's end

    async def forget(self, deleted: bool) -> None:
        """The daemon ends. Deleted: the receiver stops, the slot is dropped (it would hold the
        server's WAL for ever) and the spool removed; the archive's objects stay in storage.
        Otherwise (the operator stops, or stands by for a peer): the receiver stops, the slot stays."""
        if not deleted:
            await self.streams.close(self.uid)
            return
        metrics.forget_archive(self.namespace, self.name)
        recoverability_metrics.forget(WAL_ARCHIVE.kind, self.namespace, self.name)
        if self.streams.get(self.uid) is not None:
            await self.streams.close(self.uid, drop_slot=True)
            return
        slot = str(((self.body.get("spec") or {}).get("slot") or {}).get("name") or "")
        slot = slot or default_slot_name(self.namespace, self.name)
        try:  # never streamed by this process (suspended, or stalled before): drop the slot anyway
            spec = WalArchiveSpec.model_validate(self.body.get("spec") or {})
            target = await read_connection(self.namespace, spec.database.secret_ref)
            await self.engines.drop_slot(target, slot)
        except (OperationError, ValueError) as error:
            log.warning(
                "could not drop the replication slot of a deleted WalArchive: drop it by hand",
                namespace=self.namespace,
                name=self.name,
                slot=slot,
                error=one_line(str(error)),
            )
        await self.engines.remove_spool(self.spool)
