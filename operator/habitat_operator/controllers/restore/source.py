"""Finding what a Restore restores: a Backup's (or a schedule run's) artifact, an artifact by URI,
the newest verified artifact of a database in a bucket, through the bucket's catalog alone, or the
base backup of a WalArchive's archive that a point-in-time recovery starts from.

`latestOf` trusts no more of the catalog than it must: it chooses among the entries that Backups of
one namespace wrote (the Restore's own unless `latestOf.namespace` names another), under that
namespace's folder, and passes over an entry without a SHA-256, one completed in the future (beyond
MAX_CLOCK_SKEW) or one whose object's size is not the size it records; the artifact chosen is then
always checked against its SHA-256.

A bucket whose storage sets `objectLock` is read as the operator wrote it (engines/artifacts/locked):
only locked versions, the catalog entry's and the artifact's own, whatever newer versions or delete
markers lie over them (each named in `ignored`), and the artifact always checked against its SHA-256.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from habitat_operator import timestamps
from habitat_operator.api.artifacts import BackupFormat, S3Storage
from habitat_operator.api.backup import BACKUP
from habitat_operator.api.common import EncryptionKeySecretRef, Phase, Reason
from habitat_operator.api.rabbitmq_definitions import ArtifactKind
from habitat_operator.api.restore import (
    LATEST_RUN,
    SHA256_PATTERN,
    LatestOf,
    PointInTimeSource,
    PointInTimeTarget,
    RestoreReason,
    RestoreSource,
    StorageSource,
)
from habitat_operator.api.walarchive import WAL_ARCHIVE, WalArchiveSpec
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.base.buckets import encryption_key_id, object_key, open_bucket
from habitat_operator.controllers.base.credentials import read_secret_value
from habitat_operator.controllers.scheduling.child_runs import completed_at, list_children, phase
from habitat_operator.engines.artifacts.locked import locked_catalog, locked_entry, original_version
from habitat_operator.engines.artifacts.s3 import TAR_SUFFIX, Bucket, ObjectVersion, recency
from habitat_operator.engines.artifacts.store import ArtifactStore
from habitat_operator.engines.postgres.bucket import opener
from habitat_operator.engines.postgres.dump import StoredBytes
from habitat_operator.engines.postgres.recovery import server_binary
from habitat_operator.engines.threads import in_thread
from habitat_operator.engines.wal.catalog import RecoveryPlan, RecoveryTarget, plan_recovery
from habitat_operator.engines.wal.layout import ArchiveLayout, parse_lsn
from habitat_operator.engines.wal.store import BucketStore, FolderStore, ObjectStore
from habitat_operator.errors import OperationError, PermanentError, WaitingError, WaitingOnProgress

BACKUPS = BACKUP.plural
WALARCHIVES = WAL_ARCHIVE.plural
MAX_CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class ArchiveSource:
    """What a point-in-time recovery reads: the archive, and the catalog's plan (its base backup, its
    WAL and where to stop)."""

    store: ObjectStore = field(repr=False)
    layout: ArchiveLayout
    plan: RecoveryPlan
    database: str | None  # of the recovered server; None: the target's database name


@dataclass(frozen=True)
class SourceArtifact:
    stored: StoredBytes  # a file or directory under the backup root, or opens `key` in `bucket`
    uri: str
    format: BackupFormat
    sha256: str | None
    encryption_key: bytes | None = field(repr=False)
    backup: str | None  # the Backup object it came from, if any
    storage: dict[str, Any] | None  # where that Backup stored it, for the safety backup
    bucket: Bucket | None = None  # close() closes it
    key: str | None = None
    checksum_required: bool = False  # chosen by the catalog: checked against its SHA-256 whatever verify says
    skipped: tuple[str, ...] = ()  # catalog entries passed over, each naming its key and why
    pinned: ObjectVersion | None = None  # under Object Lock: the locked version to read
    ignored: tuple[str, ...] = ()  # under Object Lock: versions and delete markers passed over
    # A point-in-time source: `stored` is the dump of the recovered database, once recovered.
    archive: ArchiveSource | None = None
    kind: ArtifactKind | None = None  # as its Backup's status or its catalog entry says; None: unknown
    size_bytes: int | None = None  # as stored: the artifact, or the base backup recovered from

    async def close(self) -> None:
        if self.bucket is not None:
            await in_thread(self.bucket.close)


async def resolve(
    source: RestoreSource, namespace: str, store: ArtifactStore, *, cross_namespace: bool = False
) -> SourceArtifact:
    """Raises WaitingError while the Backup is missing or unfinished, PermanentError when it failed
    or when the artifact lies outside `namespace`'s part of the store (unless `cross_namespace`)."""
    scope = None if cross_namespace else namespace
    if source.artifact is not None:
        given = source.artifact
        key = None
        if given.encryption_key_secret_ref:
            ref = given.encryption_key_secret_ref
            key = await read_secret_value(namespace, ref.name, ref.key)
        return SourceArtifact(
            stored=store.path_for(given.uri, scope),
            uri=given.uri,
            format=given.format,
            sha256=given.sha256,
            encryption_key=key,
            backup=None,
            storage=None,
        )
    if source.storage is not None:
        return await _from_bucket(source.storage, namespace, timestamps.now())
    if source.point_in_time is not None:
        return await _from_archive(source.point_in_time, namespace, store)
    assert source.backup_ref is not None  # the CRD requires exactly one source
    return await _from_backup(
        await _find_backup(namespace, source.backup_ref.name, source.backup_ref.run), store, scope
    )


async def _from_backup(backup: kube.JsonDict, store: ArtifactStore, scope: str | None) -> SourceArtifact:
    namespace = backup["metadata"]["namespace"]
    status = backup.get("status") or {}
    name = backup["metadata"]["name"]
    if status.get("phase") == Phase.FAILED:
        raise PermanentError(
            RestoreReason.BACKUP_FAILED, f"Backup {name} failed: {status.get('message') or 'see its status'}"
        )
    artifact = status.get("artifact") or {}
    if status.get("phase") != Phase.SUCCEEDED or not artifact.get("uri"):
        raise WaitingOnProgress(
            RestoreReason.BACKUP_NOT_READY,
            f"Backup {name} has not succeeded yet (phase {status.get('phase') or 'Pending'})",
        )
    spec = backup.get("spec") or {}
    key = None
    if artifact.get("encrypted"):
        ref = (spec.get("encryption") or {}).get("keySecretRef") or {}
        if not ref.get("name"):
            raise PermanentError(
                Reason.KEY_NOT_FOUND, f"Backup {name} is encrypted but no longer names its key Secret"
            )
        key = await read_secret_value(namespace, ref["name"], ref.get("key", "key"))
    storage = spec.get("storage") or {}
    fields: dict[str, Any] = {
        "uri": artifact["uri"],
        "format": BackupFormat(artifact.get("format") or "custom"),
        "sha256": artifact.get("sha256"),
        "encryption_key": key,
        "backup": name,
        "storage": storage,
        "kind": _artifact_kind(artifact.get("kind") or ArtifactKind.DATABASE, f"Backup {name}"),
        "size_bytes": artifact.get("sizeBytes"),
    }
    if "s3" not in storage:
        return SourceArtifact(stored=store.path_for(artifact["uri"], scope), **fields)
    s3 = S3Storage.model_validate(storage["s3"])
    bucket = await open_bucket(namespace, s3)
    try:
        # The Backup's own namespace, whatever cross_namespace says: it names a key of this namespace.
        key_in_bucket = object_key(bucket.location, artifact["uri"], namespace)
        if s3.object_lock is not None:
            locked = await in_thread(original_version, bucket, key_in_bucket, artifact.get("versionId"))
            fields |= {"pinned": locked.version, "ignored": locked.ignored, "checksum_required": True}
    except BaseException:
        await in_thread(bucket.close)
        raise
    return SourceArtifact(stored=opener(bucket, key_in_bucket), bucket=bucket, key=key_in_bucket, **fields)


async def _from_bucket(source: StorageSource, namespace: str, now: dt.datetime) -> SourceArtifact:
    """The artifact `key`, or the newest trustworthy verified one of a database by the bucket's
    catalog: no Backup object needed (a new cluster after a disaster). The credentials are this
    namespace's."""
    encryption_key = None
    if source.encryption_key_secret_ref:
        ref = source.encryption_key_secret_ref
        encryption_key = await read_secret_value(namespace, ref.name, ref.key)
    bucket = await open_bucket(namespace, source.s3)
    locked = source.s3.object_lock is not None
    try:
        if locked:
            entry, skipped, ignored = await in_thread(_locked_catalog_entry, bucket, source, namespace, now)
        else:
            (entry, skipped), ignored = await in_thread(_catalog_entry, bucket, source, namespace, now), ()
        _check_key(entry, encryption_key, bucket.uri(entry["key"]))
        pinned = None
        if locked:
            found = await in_thread(original_version, bucket, str(entry["key"]), entry.get("versionId"))
            pinned, ignored = found.version, ignored + found.ignored
    except BaseException:
        await in_thread(bucket.close)
        raise
    key = str(entry["key"])
    return SourceArtifact(
        stored=opener(bucket, key),
        uri=bucket.uri(key),
        format=BackupFormat(entry.get("format") or ("directory" if key.endswith(TAR_SUFFIX) else "custom")),
        sha256=entry.get("sha256"),
        encryption_key=encryption_key,
        backup=None,
        storage={"s3": source.s3.model_dump(by_alias=True, exclude_none=True)},
        bucket=bucket,
        key=key,
        checksum_required=source.latest_of is not None or locked,
        skipped=skipped,
        kind=_artifact_kind(entry.get("kind") or ("database" in entry and ArtifactKind.DATABASE), key),
        size_bytes=entry.get("sizeBytes"),
        pinned=pinned,
        ignored=ignored,
    )


def _artifact_kind(recorded: object, where: str) -> ArtifactKind | None:
    """The kind an artifact's record names (None: it names none); an unknown one is refused."""
    if not recorded:
        return None
    try:
        return ArtifactKind(str(recorded))
    except ValueError:
        raise PermanentError(
            Reason.VERIFICATION_FAILED, f"{where} records an unknown kind of artifact: {str(recorded)[:64]!r}"
        ) from None


def _catalog_entry(
    bucket: Bucket, source: StorageSource, namespace: str, now: dt.datetime
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The catalog entry of `source.key` ({"key": key} alone when it has none), or latest_entry's."""
    if source.key is not None:
        return bucket.catalog_entry(source.key) or {"key": source.key}, ()
    assert source.latest_of is not None  # the CRD requires exactly one of them
    return latest_entry(bucket, source.latest_of, namespace, now)


def _locked_catalog_entry(
    bucket: Bucket, source: StorageSource, namespace: str, now: dt.datetime
) -> tuple[dict[str, Any], tuple[str, ...], tuple[str, ...]]:
    """_catalog_entry under Object Lock: from the locked entries alone (one is required for `key`),
    with the versions and delete markers ignored to read them."""
    if source.key is not None:
        entry, ignored = locked_entry(bucket, source.key)
        if entry is None:
            raise PermanentError(
                Reason.ARTIFACT_NOT_FOUND,
                f"{bucket.uri(source.key)} has no locked catalog entry: {ignored[0]}",
            )
        return entry, (), ignored
    assert source.latest_of is not None  # the CRD requires exactly one of them
    entries, ignored = locked_catalog(bucket)
    return *latest_entry(bucket, source.latest_of, namespace, now, entries), ignored


def latest_entry(
    bucket: Bucket,
    latest: LatestOf,
    namespace: str,
    now: dt.datetime,
    entries: list[dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The newest trustworthy verified entry of `latest.database` written by Backups of
    `latest.namespace` (else `namespace`), and why each newer one was passed over; among `entries`
    if given, else the bucket's catalog. Blocking."""
    owner = latest.namespace or namespace
    folder = bucket.location.key(owner) + "/"
    candidates = [
        entry
        for entry in (bucket.catalog() if entries is None else entries)
        if entry.get("database") == latest.database
        and entry.get("namespace") == owner
        and str(entry["key"]).startswith(folder)
        and (latest.server is None or entry.get("server") == latest.server)
        and entry.get("verified")
        and entry.get("completedAt")
    ]
    skipped: list[str] = []
    for entry in sorted(candidates, key=recency, reverse=True):
        why = distrust(entry, now) or _size_differs(bucket, entry, pinned=entries is not None)
        if why is None:
            return entry, tuple(skipped)
        skipped.append(f"catalog entry of {bucket.uri(entry['key'])} skipped: {why}")
    server = f" on {latest.server}" if latest.server else ""
    passed_over = f"; {len(skipped)} passed over, the newest: {skipped[0]}" if skipped else ""
    raise PermanentError(
        Reason.ARTIFACT_NOT_FOUND,
        f"no trustworthy verified artifact of database {latest.database}{server} by Backups of"
        f" namespace {owner} in the catalog under {bucket.uri(folder)}{passed_over}",
    )


def distrust(entry: dict[str, Any], now: dt.datetime) -> str | None:
    """Why a catalog entry may not be chosen by its own fields, or None."""
    if not re.fullmatch(SHA256_PATTERN, str(entry.get("sha256", ""))):
        return "it records no valid SHA-256"
    try:
        completed = timestamps.parse(str(entry["completedAt"]))
    except ValueError:
        return "its completedAt is not a time"
    if completed.tzinfo is None or completed > now + MAX_CLOCK_SKEW:
        return f"its completedAt {entry['completedAt']} lies in the future"
    return None


def _size_differs(bucket: Bucket, entry: dict[str, Any], *, pinned: bool = False) -> str | None:
    """Why the artifact's object (`pinned`: the version its locked entry records) is not the size
    its entry records, or None."""
    version_id = entry.get("versionId") if pinned else None
    try:
        actual = bucket.head(str(entry["key"]), str(version_id) if version_id else None).size
    except OperationError as error:
        if error.reason is Reason.ARTIFACT_NOT_FOUND:
            return "its object is missing"
        raise
    if actual != entry.get("sizeBytes"):
        return f"the object holds {actual} bytes, the entry records {entry.get('sizeBytes')}"
    return None


def _check_key(entry: dict[str, Any], encryption_key: bytes | None, uri: str) -> None:
    """An encrypted artifact needs its key, and the catalog says which one (by id) before any byte is read."""
    if not entry.get("encrypted"):
        return
    if encryption_key is None:
        raise PermanentError(
            Reason.KEY_NOT_FOUND, f"{uri} is encrypted; set source.storage.encryptionKeySecretRef"
        )
    recorded = entry.get("encryptionKeyId")
    if recorded and recorded != encryption_key_id(encryption_key):
        raise PermanentError(
            Reason.DECRYPTION_FAILED, f"{uri} was encrypted with key {recorded}, not the one given"
        )


async def _from_archive(
    source: PointInTimeSource, namespace: str, artifacts: ArtifactStore
) -> SourceArtifact:
    """The newest base backup of the archive before the target, refused at once when this operator
    cannot run its PostgreSQL version. The credentials are this namespace's."""
    bucket: Bucket | None = None
    if source.storage is not None:
        given = source.storage
        key = await _secret_key(namespace, given.encryption_key_secret_ref)
        bucket = await open_bucket(namespace, given.s3)
        store: ObjectStore = BucketStore(bucket, bucket.location.key(given.namespace or namespace))
        storage: dict[str, Any] = {"s3": given.s3.model_dump(by_alias=True, exclude_none=True)}
        archive = given.archive
    else:
        assert source.wal_archive_ref is not None  # the CRD requires exactly one of them
        archive = source.wal_archive_ref.name
        found = await kube.get(WALARCHIVES, namespace, archive)
        if found is None:
            raise WaitingError(
                RestoreReason.WAL_ARCHIVE_NOT_FOUND, f"WalArchive {namespace}/{archive} not found"
            )
        spec = WalArchiveSpec.model_validate(found.get("spec") or {})
        storage = spec.storage.model_dump(by_alias=True, exclude_none=True)
        key = await _secret_key(namespace, spec.encryption.key_secret_ref if spec.encryption else None)
        if spec.storage.s3 is not None:
            bucket = await open_bucket(namespace, spec.storage.s3)
            store = BucketStore(bucket, bucket.location.key(namespace))
        else:
            assert spec.storage.filesystem is not None  # the CRD requires exactly one of them
            path = spec.storage.filesystem.path
            store = FolderStore(await in_thread(artifacts.namespace_directory, path, namespace))
    layout = ArchiveLayout(archive)
    try:
        # Refused here, before any server starts: no base backup before the target, a target
        # inside a gap or past the archive's end, a missing segment, a version this operator lacks.
        plan = await in_thread(plan_recovery, store, layout, _recovery_target(source.target))
        server_binary(plan.base_backup.major)
    except BaseException:
        if bucket is not None:
            await in_thread(bucket.close)
        raise
    return SourceArtifact(
        stored=Path(),  # replaced by the recovered database's dump
        uri=store.uri(layout.base_backup(plan.base_backup.id)),
        format=BackupFormat.CUSTOM,
        sha256=plan.base_backup.sha256,
        encryption_key=key,
        backup=None,
        storage=storage,
        bucket=bucket,
        archive=ArchiveSource(store, layout, plan, source.database),
        size_bytes=plan.base_backup.size_bytes,
    )


def _recovery_target(target: PointInTimeTarget) -> RecoveryTarget:
    return RecoveryTarget(
        time=target.time,
        lsn=parse_lsn(target.lsn) if target.lsn is not None else None,
        restore_point=target.restore_point,
        latest=bool(target.latest),
        inclusive=target.inclusive,
    )


async def _secret_key(namespace: str, ref: EncryptionKeySecretRef | None) -> bytes | None:
    return await read_secret_value(namespace, ref.name, ref.key) if ref else None


async def _find_backup(namespace: str, name: str, run: str) -> kube.JsonDict:
    backup = await kube.get(BACKUPS, namespace, name)
    if backup is None:
        raise WaitingError(RestoreReason.BACKUP_NOT_FOUND, f"Backup {namespace}/{name} not found")
    if not (backup.get("spec") or {}).get("schedule"):
        return backup
    runs = await list_children(BACKUPS, backup)
    if run != LATEST_RUN:
        named = next((r for r in runs if r["metadata"]["name"] == run), None)
        if named is None:
            raise WaitingError(RestoreReason.BACKUP_NOT_FOUND, f"schedule {name} has no run {run}")
        return named
    succeeded = [r for r in runs if phase(r) == Phase.SUCCEEDED and completed_at(r)]
    if not succeeded:
        raise WaitingError(RestoreReason.BACKUP_NOT_FOUND, f"schedule {name} has no successful run yet")
    # completedAt has whole seconds; run names carry the scheduled time and break ties.
    return max(succeeded, key=lambda r: (completed_at(r), r["metadata"]["name"]))
