"""`habitat-operator catalog list`: what a bucket holds, newest first, from the catalog entries alone,
then each WalArchive in it (`<prefix>/<namespace>/<archive>/`) with its base backups and recovery window.
`catalog check`: whether Object Lock keeps the artifacts as long as the retention policy does.

The runbook's first step after a disaster: no cluster and no Backup object is needed, only the
bucket (given by flags, or by a YAML file holding the same `s3` block as a Backup's storage) and
its credentials from the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, as every S3 tool
reads them), never from the command line.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any, TextIO

import yaml

from habitat_operator import timestamps
from habitat_operator.api.artifacts import RETAIN_FOR_RETENTION, S3Storage
from habitat_operator.api.backup import BackupSpec
from habitat_operator.controllers.backup.object_lock import retention_horizon
from habitat_operator.controllers.base.buckets import location_of
from habitat_operator.durations import format_duration, parse_duration
from habitat_operator.engines.artifacts.locked import locked_catalog
from habitat_operator.engines.artifacts.s3 import Bucket, BucketLock, recency, storage_errors
from habitat_operator.engines.wal.catalog import Catalog, archive_end, read_catalog, window_of
from habitat_operator.engines.wal.layout import ArchiveLayout, format_lsn
from habitat_operator.engines.wal.store import BucketStore
from habitat_operator.formatting import human_size, text_table

COLUMNS = (
    "DATABASE",
    "CREATED",
    "SIZE",
    "VERIFIED",
    "ENCRYPTED",
    "COMPRESSION",
    "LOCK",
    "RETAIN-UNTIL",
    "KEY",
)
ARCHIVE_COLUMNS = ("ARCHIVE", "SYSTEM IDENTIFIER", "WINDOW-FROM", "WINDOW-TO", "ENDS AT", "GAPS")
BASE_BACKUP_COLUMNS = ("BASE BACKUP", "STARTED", "COMPLETED", "SIZE", "START-LSN", "END-LSN", "ENCRYPTED")


def storage_from(file: Path | None, flags: dict[str, Any]) -> S3Storage:
    """The `s3` block of `file` (a Backup's storage, or the block itself), overridden by `flags`."""
    block: dict[str, Any] = {}
    if file is not None:
        loaded = yaml.safe_load(file.read_text()) or {}
        block = loaded.get("s3", loaded) if isinstance(loaded, dict) else {}
    block |= {key: value for key, value in flags.items() if value is not None}
    # The credentials come from the environment here; the Secret reference only satisfies the model.
    block.setdefault("credentialsSecretRef", {"name": "from-environment"})
    return S3Storage.model_validate(block)


def backup_spec_from(file: Path | None) -> BackupSpec | None:
    """The spec of the Backup that `file` holds (None when it holds only a storage block)."""
    loaded = yaml.safe_load(file.read_text()) if file is not None else None
    if not isinstance(loaded, dict) or loaded.get("kind") != "Backup":
        return None
    return BackupSpec.model_validate(loaded.get("spec") or {})


def storage_of(file: Path | None, flags: dict[str, Any]) -> S3Storage:
    """storage_from, where `file` may also hold a whole Backup (its spec.storage.s3)."""
    spec = backup_spec_from(file)
    if spec is None or spec.storage.s3 is None:
        return storage_from(file, flags)
    block = spec.storage.s3.model_dump(by_alias=True, exclude_none=True)
    block |= {key: value for key, value in flags.items() if value is not None}
    return S3Storage.model_validate(block)


def lock_findings(
    storage: S3Storage,
    bucket_lock: BucketLock | None,
    retention: dt.timedelta | None,
    entries: list[dict[str, Any]],
) -> list[str]:
    """What leaves artifacts deletable by the operator's own keys before the retention lets them go:
    no Object Lock on the bucket, nothing that locks each object, a lock shorter than the retention,
    artifacts written without a lock."""
    name = storage.bucket
    if bucket_lock is None:
        return [
            f"bucket {name} has no Object Lock configuration: the operator's keys can delete every artifact"
        ]
    findings = []
    lock = storage.object_lock
    period: dt.timedelta | None = None
    if lock is not None and lock.retain_for != RETAIN_FOR_RETENTION:
        period = parse_duration(lock.retain_for)
    elif lock is None:
        period = bucket_lock.default_period
        if period is None:
            findings.append(
                f"neither storage.s3.objectLock nor a default retention of bucket {name} locks the artifacts"
            )
    if period is not None and retention is not None and period < retention:
        findings.append(
            f"the lock ({format_duration(period.total_seconds())}) is shorter than the retention"
            f" ({format_duration(retention.total_seconds())}): each artifact can be deleted for the last"
            f" {format_duration((retention - period).total_seconds())} it is kept"
        )
    unlocked = [str(e["key"]) for e in entries if not e.get("objectLock")]
    if unlocked and (lock is not None or bucket_lock.default_period is None):
        findings.append(f"{len(unlocked)} artifact(s) written without a lock, e.g. {unlocked[0]}")
    return findings


def check_catalog(file: Path | None, flags: dict[str, Any], out: TextIO) -> int:
    """Print the findings of lock_findings; 1 when there are any, else 0."""
    storage = storage_of(file, flags)
    spec = backup_spec_from(file)
    retention = (
        retention_horizon(spec.retention, spec.schedule)
        if spec is not None and spec.retention is not None and spec.schedule is not None
        else None
    )
    credentials = os.environ.get("AWS_ACCESS_KEY_ID", ""), os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    with Bucket(location_of(storage, *credentials)) as bucket:
        findings = lock_findings(storage, bucket.object_lock(), retention, bucket.catalog())
    for finding in findings:
        out.write(f"finding: {finding}\n")
    if not findings:
        out.write(
            f"ok: Object Lock keeps the artifacts of bucket {storage.bucket} as long as the retention\n"
        )
    return 1 if findings else 0


def newest_first(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(entries, key=recency, reverse=True)


def table(entries: list[dict[str, Any]]) -> str:
    rows = [COLUMNS] + [
        (
            str(e.get("database", "?")),
            str(e.get("createdAt", "?")),
            human_size(int(e.get("sizeBytes") or 0)),
            "yes" if e.get("verified") else "no",
            "yes" if e.get("encrypted") else "no",
            str(e.get("compression", "gzip")),
            str((e.get("objectLock") or {}).get("mode") or "-"),
            str((e.get("objectLock") or {}).get("retainUntil") or "-"),
            str(e["key"]),
        )
        for e in entries
    ]
    return text_table(rows)


def archives(bucket: Bucket) -> list[dict[str, Any]]:
    """Every WalArchive of the bucket as `catalog list -o json` shows it (`kind: WalArchive`)."""
    found = []
    for namespace in _folders(bucket, bucket.location.key()):
        store = BucketStore(bucket, bucket.location.key(namespace))
        for name in _folders(bucket, bucket.location.key(namespace)):
            catalog = read_catalog(store, ArchiveLayout(name))
            if catalog.base_backups or catalog.wal or catalog.system_identifier:
                found.append(_archive(bucket.location.key(namespace, name), namespace, name, catalog))
    return found


def _folders(bucket: Bucket, prefix: str) -> list[str]:
    """The names of the "folders" right under `prefix` (S3's common prefixes)."""
    start = f"{prefix}/" if prefix else ""
    with storage_errors(f"listing s3://{bucket.location.bucket}/{start}", "list"):
        pages = bucket.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket.location.bucket, Prefix=start, Delimiter="/"
        )
        return [
            p["Prefix"][len(start) :].rstrip("/") for page in pages for p in page.get("CommonPrefixes", [])
        ]


def _archive(key: str, namespace: str, name: str, catalog: Catalog) -> dict[str, Any]:
    window = window_of(catalog)
    return {
        "kind": "WalArchive",
        "key": key,
        "namespace": namespace,
        "archive": name,
        "systemIdentifier": catalog.system_identifier,
        "recoveryWindow": {
            "from": timestamps.rfc3339(window.start) if window.start else None,
            "to": timestamps.rfc3339(window.end) if window.end else None,
        },
        "endLsn": format_lsn(archive_end(catalog, None).lsn),
        "baseBackups": [entry.to_json() for entry in reversed(catalog.base_backups)],
        "gaps": [
            {"detectedAt": timestamps.rfc3339(gap.detected_at), "reason": gap.reason, "message": gap.message}
            for gap in reversed(catalog.gaps)
        ],
    }


def archive_tables(found: list[dict[str, Any]]) -> str:
    """The archives, then their base backups newest first; nothing when the bucket holds none."""
    if not found:
        return ""
    rows = [ARCHIVE_COLUMNS] + [
        (
            f"{a['namespace']}/{a['archive']}",
            str(a["systemIdentifier"] or "?"),
            str(a["recoveryWindow"]["from"] or "-"),
            str(a["recoveryWindow"]["to"] or "-"),
            a["endLsn"],
            str(len(a["gaps"])),
        )
        for a in found
    ]
    backups = [BASE_BACKUP_COLUMNS] + [
        (
            f"{a['namespace']}/{a['archive']}/{b['id']}",
            b["startedAt"],
            b["completedAt"],
            human_size(int(b["sizeBytes"])),
            b["startLsn"],
            b["endLsn"],
            "yes" if b["encrypted"] else "no",
        )
        for a in found
        for b in a["baseBackups"]
    ]
    return "\n" + text_table(rows) + ("\n" + text_table(backups) if len(backups) > 1 else "")


def list_catalog(storage: S3Storage, output: str, out: TextIO, *, locked: bool = False) -> None:
    """The catalog; `locked`: as a Restore under Object Lock reads it, the locked versions alone."""
    credentials = os.environ.get("AWS_ACCESS_KEY_ID", ""), os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    with Bucket(location_of(storage, *credentials)) as bucket:
        entries = newest_first(locked_catalog(bucket)[0] if locked else bucket.catalog())
        found = archives(bucket)
    if output == "json":
        out.write(json.dumps(entries + found, indent=2) + "\n")
    else:
        out.write(table(entries) + archive_tables(found))
