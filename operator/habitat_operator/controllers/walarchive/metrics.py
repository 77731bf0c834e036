"""WalArchive's Prometheus metrics. Label values are object names and fixed words only: never a
URI, a host, a slot's server or anything from a Secret.

The live RPO is `time() - habitat_walarchive_last_archived_commit_timestamp_seconds`: a timestamp,
so that it keeps growing between the operator's looks (and while the operator is down).
"""

from __future__ import annotations

from contextlib import suppress

from prometheus_client import Counter, Gauge, Histogram

from habitat_operator.api.walarchive import GapReason
from habitat_operator.metrics import LONG_BUCKETS, advance, forget

_ARCHIVE = ["namespace", "walarchive"]

ARCHIVED_BYTES = Counter(
    "habitat_walarchive_archived_bytes_total", "WAL bytes uploaded (completed segments, as stored).", _ARCHIVE
)
ARCHIVED_SEGMENTS = Counter(
    "habitat_walarchive_archived_segments_total",
    "Completed WAL segments and history files uploaded.",
    _ARCHIVE,
)
LAG_BYTES = Gauge(
    "habitat_walarchive_lag_bytes", "WAL the server has written that is not archived yet.", _ARCHIVE
)
LAST_ARCHIVED_COMMIT = Gauge(
    "habitat_walarchive_last_archived_commit_timestamp_seconds",
    "Unix time of the newest archived commit: the end of the recovery window.",
    _ARCHIVE,
)
SLOT_RETAINED_BYTES = Gauge(
    "habitat_walarchive_slot_retained_bytes",
    "WAL the replication slot holds back on the server (pg_current_wal_lsn() - restart_lsn).",
    _ARCHIVE,
)
SLOT_MAX_RETAINED_BYTES = Gauge(
    "habitat_walarchive_slot_max_retained_bytes", "The slot's budget, spec.slot.maxRetainedWal.", _ARCHIVE
)
STREAMING = Gauge("habitat_walarchive_streaming", "1 while pg_receivewal runs on the slot.", _ARCHIVE)
BASE_BACKUPS = Counter(
    "habitat_walarchive_base_backups_total",
    "Finished base backups by result (success, failure).",
    [*_ARCHIVE, "result"],
)
BASE_BACKUP_DURATION = Histogram(
    "habitat_walarchive_base_backup_duration_seconds",
    "Wall time of one base backup, verification included.",
    _ARCHIVE,
    buckets=LONG_BUCKETS,
)
BASE_BACKUP_SIZE = Gauge(
    "habitat_walarchive_base_backup_size_bytes", "Stored size of the newest base backup.", _ARCHIVE
)
BASE_BACKUP_LAST_SUCCESS = Gauge(
    "habitat_walarchive_base_backup_last_success_timestamp_seconds",
    "Unix time the newest base backup completed (for an archive without one: its creation time).",
    _ARCHIVE,
)
BASE_BACKUP_EXPECTED_INTERVAL = Gauge(
    "habitat_walarchive_base_backup_expected_interval_seconds",
    "Longest time between two scheduled base backups; alert when the newest is older than two.",
    _ARCHIVE,
)
GAPS = Counter(
    "habitat_walarchive_gaps_total",
    "Gaps detected in the archive, by reason (the gap entry's reason).",
    [*_ARCHIVE, "reason"],
)


def note_base_backup(namespace: str, name: str, completed: float, size_bytes: int) -> None:
    if advance(BASE_BACKUP_LAST_SUCCESS, namespace, name, completed):
        BASE_BACKUP_SIZE.labels(namespace, name).set(size_bytes)


def forget_archive(namespace: str, name: str) -> None:
    """Drops a deleted archive's series, its gap reasons' included."""
    forget(
        (
            ARCHIVED_BYTES,
            ARCHIVED_SEGMENTS,
            LAG_BYTES,
            LAST_ARCHIVED_COMMIT,
            SLOT_RETAINED_BYTES,
            SLOT_MAX_RETAINED_BYTES,
            STREAMING,
            BASE_BACKUPS,
            BASE_BACKUP_DURATION,
            BASE_BACKUP_SIZE,
            BASE_BACKUP_LAST_SUCCESS,
            BASE_BACKUP_EXPECTED_INTERVAL,
        ),
        namespace,
        name,
    )
    for reason in GapReason:
        with suppress(KeyError):  # never had a value
            GAPS.remove(namespace, name, reason.value)
