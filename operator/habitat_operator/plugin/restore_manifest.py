"""`kubectl habitat restore`: writes the Restore a user would, from a few flags.

The spec is built with the API models (api/restore.py), so what is printed or created passes the
CRD's schema and CEL rules by construction; `--dry-run` prints it as YAML for Git instead.
"""

from __future__ import annotations

import argparse

from habitat_operator.api.artifacts import S3CredentialsSecretRef, S3Storage
from habitat_operator.api.backup import BACKUP
from habitat_operator.api.common import (
    DatabaseRef,
    EncryptionKeySecretRef,
    SecretKeyRef,
)
from habitat_operator.api.restore import (
    LATEST_RUN,
    RESTORE,
    ArchiveInStorage,
    BackupRef,
    LatestOf,
    PointInTimeSource,
    PointInTimeTarget,
    RestoreMode,
    RestoreSource,
    RestoreSpec,
    RestoreTarget,
    StorageSource,
    WalArchiveRef,
)
from habitat_operator.api.walarchive import WAL_ARCHIVE
from habitat_operator.plugin import writing
from habitat_operator.plugin.writing import (
    UsageError,
    secret_key_ref,
    timestamped_name,
)


def restore_spec(args: argparse.Namespace) -> RestoreSpec:
    """The Restore's spec; raises UsageError or pydantic's ValidationError on flags that do not fit."""
    target = RestoreTarget(
        database=DatabaseRef(secret_ref=SecretKeyRef(**secret_key_ref(args.to_database, "uri")))
    )
    return RestoreSpec(
        source=_source(args),
        target=target,
        drill=args.drill,
        mode=RestoreMode(create_database=args.create_database),
    )


def _source(args: argparse.Namespace) -> RestoreSource:
    point_in_time = args.time is not None or args.lsn is not None or args.restore_point is not None
    key = (
        EncryptionKeySecretRef(**secret_key_ref(args.encryption_key, "key")) if args.encryption_key else None
    )
    kind, _, name = (args.source or "").rpartition("/")
    if args.source and args.from_bucket:
        raise UsageError("give a source (a Backup or walarchive/NAME) or --from-bucket, not both")
    if args.source and kind.split(".", 1)[0] in _WAL_ARCHIVE_NAMES:
        if not (point_in_time or args.latest):
            raise UsageError(
                f"{args.source}: say where recovery stops with --time, --lsn, --restore-point or --latest"
            )
        return RestoreSource(
            point_in_time=PointInTimeSource(
                wal_archive_ref=WalArchiveRef(name=name), target=_target(args), database=args.database
            )
        )
    if args.source:
        if kind and kind.split(".", 1)[0] not in _BACKUP_NAMES:
            raise UsageError(
                f"{args.source}: the source is a Backup (NAME or backup/NAME) or walarchive/NAME"
            )
        if point_in_time:
            raise UsageError(
                "--time, --lsn and --restore-point need a point-in-time source: walarchive/NAME or --archive"
            )
        return RestoreSource(backup_ref=BackupRef(name=name, run=args.backup_run or LATEST_RUN))
    if not args.from_bucket:
        raise UsageError("name a source: a Backup, walarchive/NAME, or --from-bucket BUCKET")
    if not args.credentials:
        raise UsageError("--from-bucket needs --credentials SECRET (its access keys)")
    bucket = S3Storage(
        bucket=args.from_bucket,
        prefix=args.prefix,
        endpoint=args.endpoint,
        region=args.region,
        force_path_style=args.path_style,
        credentials_secret_ref=S3CredentialsSecretRef(name=args.credentials),
    )
    if args.archive:
        if not (point_in_time or args.latest):
            raise UsageError(
                "--archive: say where recovery stops with --time, --lsn, --restore-point or --latest"
            )
        archive = ArchiveInStorage(
            s3=bucket, archive=args.archive, namespace=args.source_namespace, encryption_key_secret_ref=key
        )
        return RestoreSource(
            point_in_time=PointInTimeSource(storage=archive, target=_target(args), database=args.database)
        )
    if point_in_time:
        raise UsageError(
            "--time, --lsn and --restore-point need --archive (a WalArchive's archive in the bucket)"
        )
    if args.key:
        return RestoreSource(storage=StorageSource(s3=bucket, key=args.key, encryption_key_secret_ref=key))
    if not args.database:
        raise UsageError("--from-bucket needs --key KEY, or --database NAME for its newest verified artifact")
    latest = LatestOf(database=args.database, namespace=args.source_namespace)
    return RestoreSource(storage=StorageSource(s3=bucket, latest_of=latest, encryption_key_secret_ref=key))


def _target(args: argparse.Namespace) -> PointInTimeTarget:
    return PointInTimeTarget(
        time=args.time, lsn=args.lsn, restore_point=args.restore_point, latest=True if args.latest else None
    )


_WAL_ARCHIVE_NAMES = {WAL_ARCHIVE.singular, WAL_ARCHIVE.plural, *WAL_ARCHIVE.short_names}
_BACKUP_NAMES = {BACKUP.singular, BACKUP.plural, *BACKUP.short_names}


def default_name(args: argparse.Namespace) -> str:
    """<source>-<UTC time>: the Backup's, the archive's or the database's name."""
    return timestamped_name(
        (args.source or "").rpartition("/")[2] or args.archive or args.database or "restore", "restore"
    )


write = writing.writer(RESTORE, restore_spec, default_name)
