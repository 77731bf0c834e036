"""pg_dump straight into a bucket, and artifacts checked from a bucket.

A custom-format backup streams pg_dump's output through the sink (zstd, encryption, SHA-256) into a
multipart upload, with nothing staged on local disk. A directory-format one (parallel jobs) is
dumped into a scratch folder first and sent through the same sink as one tar stream: one object,
one SHA-256, one upload. The object appears only when the upload completes; verification then reads
it back (the checksum and `pg_restore --list` in one pass; a directory's tar is unpacked into a
scratch folder for that) and a failed check deletes it; the catalog entry is written last. Any
failure, timeout or cancellation before that aborts the upload.

Under Object Lock both objects are written locked, the catalog entry only where none exists yet,
and a failed check leaves the artifact (the server refuses to delete it; without a catalog entry
nothing chooses it): a retry writes to a key of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from habitat_operator import timestamps
from habitat_operator.api.common import Reason
from habitat_operator.engines.artifacts.codec import Readable
from habitat_operator.engines.artifacts.s3 import Bucket, ObjectLockSettings, ObjectVersion, StoredVersions
from habitat_operator.engines.artifacts.store import (
    SCRATCH_FOLDER_PREFIX,
    STAGING_FOLDER_PREFIX,
    scratch_folder,
)
from habitat_operator.engines.postgres.dump import (
    BackupRequest,
    BackupResult,
    backup_deadline,
    check_request,
    dump_directory_stream,
    dump_stream,
    list_contents,
    open_plaintext,
    result_of,
    server_version,
    unpack_directory,
    verify_artifact,
)
from habitat_operator.engines.threads import in_thread
from habitat_operator.errors import OperationError, PermanentError, RetryableError


@dataclass(frozen=True)
class CatalogSource:
    """Who made the artifact, for its catalog entry: the Backup object and the key's id."""

    namespace: str
    name: str
    uid: str
    encryption_key_id: str | None = None


def opener(bucket: Bucket, key: str, pinned: ObjectVersion | None = None) -> Callable[[], Readable]:
    """What RestoreRequest.stored takes: opens the object's bytes, each time anew; with `pinned`,
    the bytes of that version only (a replaced object is refused)."""
    return partial(bucket.open, key, pinned)


async def run_backup_to_bucket(
    request: BackupRequest,
    bucket: Bucket,
    key: str,
    source: CatalogSource,
    lock: ObjectLockSettings | None = None,
) -> BackupResult:
    """Dump `request.target` into `key` of `bucket`, then catalog it, both under `lock` if given;
    raise OperationError on failure.

    Uploads an interrupted attempt left to `key` are aborted first.
    """
    check_request(request)
    created = timestamps.now()
    async with backup_deadline(request):
        pg_version = await server_version(request.target)
        await in_thread(bucket.abort_uploads, key)
        size, sha256, version_id = await _upload(request, bucket, key, lock)
        if request.verify:
            await _verify_uploaded(request, bucket, key, sha256, deletable=lock is None)
    entry: dict[str, Any] = {
        "namespace": source.namespace,
        "backup": source.name,
        "uid": source.uid,
        "database": request.target.dbname,
        "server": request.target.display.split("/")[0],
        "sha256": sha256,
        "sizeBytes": size,
        "format": request.format,
        "compression": request.compression,
        "pgVersion": pg_version,
        "encrypted": request.encryption_key is not None,
        "encryptionKeyId": source.encryption_key_id,
        "verified": request.verify,
        "createdAt": timestamps.rfc3339(created),
        "completedAt": timestamps.rfc3339(timestamps.now()),
    }
    if version_id is not None:  # where the bucket keeps versions
        entry["versionId"] = version_id
    if lock is not None:
        entry["objectLock"] = {"mode": lock.mode, "retainUntil": timestamps.rfc3339(lock.retain_until)}
    catalog_version_id = await in_thread(bucket.put_catalog, key, entry, lock)
    result = result_of(request, bucket.uri(key), size, sha256, pg_version)
    return replace(result, stored=StoredVersions(version_id, catalog_version_id, lock))


async def check_object(
    bucket: Bucket,
    key: str,
    expected_sha256: str | None,
    encryption_key: bytes | None,
    *,
    unpack_into: Path | None = None,
    pinned: ObjectVersion | None = None,
) -> str:
    """Read the object once (the version `pinned`, if given; a replaced one is refused): its SHA-256
    (returned, and compared with `expected_sha256` if given), its decryption (every chunk
    authenticated) and `pg_restore --list` of its plaintext. With
    `unpack_into`, the object is a directory-format tar: it is unpacked there, and its files are
    checked against its MANIFEST.sha256 before `pg_restore --list` of the folder.

    Raises OperationError "ArtifactNotFound", "ChecksumMismatch", "VerificationFailed",
    "DecryptionFailed", "DiskFull", or a storage reason.
    """
    reader = await in_thread(open_plaintext, opener(bucket, key, pinned), encryption_key)
    listing: OperationError | None = None
    try:
        if unpack_into is None:
            await list_contents(reader, key.rsplit("/", 1)[-1])
        else:
            await unpack_directory(reader, unpack_into)
    except OperationError as error:
        if error.reason not in (Reason.VERIFICATION_FAILED, Reason.DECRYPTION_FAILED):
            raise
        listing = error  # the checksum speaks first: a flipped byte is a mismatch, not a bad archive
        if not reader.finished:  # decryption failed midway: hash the rest from where it stopped
            await in_thread(_drain, opener(bucket, key, pinned), reader.size, reader.sha256)
    actual = reader.sha256.hexdigest()
    if expected_sha256 is not None and actual != expected_sha256:
        raise PermanentError(
            Reason.CHECKSUM_MISMATCH, f"{bucket.uri(key)} does not match its recorded SHA-256"
        )
    if listing is not None:
        raise listing
    if unpack_into is not None:
        await verify_artifact(unpack_into, "directory", None, None)
    return actual


@asynccontextmanager
async def fetched_directory(
    bucket: Bucket,
    key: str,
    expected_sha256: str | None,
    encryption_key: bytes | None,
    scratch_dir: Path | None,
    pinned: ObjectVersion | None = None,
) -> AsyncIterator[Path]:
    """A directory-format artifact of the bucket, checked by check_object while it is unpacked into
    a private scratch folder: pg_restore --jobs reads the folder, which is removed on leaving."""
    async with scratch_folder(scratch_dir, SCRATCH_FOLDER_PREFIX) as folder:
        artifact = folder / "artifact"
        await check_object(bucket, key, expected_sha256, encryption_key, unpack_into=artifact, pinned=pinned)
        yield artifact


def _drain(open_object: Callable[[], Readable], offset: int, sha256: Any) -> None:
    """Hash the rest of an object from `offset`, after a reader stopped early."""
    stream = open_object()
    try:
        skipped = 0
        while skipped < offset and (chunk := stream.read(min(offset - skipped, 1 << 20))):
            skipped += len(chunk)
        while chunk := stream.read(1 << 20):
            sha256.update(chunk)
    finally:
        stream.close()


async def _upload(
    request: BackupRequest, bucket: Bucket, key: str, lock: ObjectLockSettings | None
) -> tuple[int, str, str | None]:
    """Its size, SHA-256 and version id (None where the bucket keeps no versions)."""
    upload = bucket.upload(key, lock=lock)
    await in_thread(upload.__enter__)
    try:
        dump = dump_stream if request.format == "custom" else dump_directory_stream
        sink = await dump(request, upload)
        await in_thread(upload.complete)
    except BaseException as error:
        await in_thread(upload.__exit__, type(error), error, None)
        raise
    await in_thread(upload.__exit__, None, None, None)
    return sink.size, sink.sha256.hexdigest(), upload.version_id


async def _verify_uploaded(
    request: BackupRequest, bucket: Bucket, key: str, sha256: str, *, deletable: bool
) -> None:
    """check_object on what we just uploaded; a bad one is deleted (unless locked) and worth dumping
    again."""
    try:
        await _check_uploaded(request, bucket, key, sha256)
    except OperationError as error:
        bad = (Reason.VERIFICATION_FAILED, Reason.CHECKSUM_MISMATCH, Reason.DECRYPTION_FAILED)
        if error.reason not in bad:
            raise
        if deletable:
            await in_thread(bucket.delete_artifact, key)
        raise RetryableError(Reason.VERIFICATION_FAILED, error.message) from None


async def _check_uploaded(request: BackupRequest, bucket: Bucket, key: str, sha256: str) -> None:
    if request.format == "custom":
        await check_object(bucket, key, sha256, request.encryption_key)
        return
    async with scratch_folder(request.scratch_dir, STAGING_FOLDER_PREFIX) as folder:
        await check_object(bucket, key, sha256, request.encryption_key, unpack_into=folder / "artifact")
