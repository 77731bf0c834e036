"""From pg_receivewal's spool to the archive: completed segments, history files, and the segment
being written, each through the codec (zstd, encryption) into `wal/<name>` of the archive.

Each object carries metadata (S3 lowercases the keys: read them with `metadata_value`):
- `sha256`: of the stored bytes, as every object of the codec;
- `plaintextSha256`: of the WAL file itself. An object that is already there with the same
  plaintext is not uploaded again (encryption makes the stored bytes differ on every upload), so a
  pass killed anywhere repeats nothing but its last step; one with other content is an
  ArchiveConflict, and the local file is kept;
- `lastCommitAt` (RFC 3339, microseconds; only when the file holds a commit): the newest commit,
  read by pg_waldump, the end of the recovery window and the base of the live RPO;
- `endLsn` (a partial segment only): where its valid WAL ends.

A completed segment or history file is removed from the spool only once its object is complete
(and the segment's `.partial` object deleted). The segment being written is copied first, so the
object, its hash and its `lastCommitAt` describe the same bytes; it is uploaded again only when
it changed. Memory: one READ_SIZE chunk and the store's upload buffer, whatever the segment size;
the encoded bytes wait in an unnamed temporary file in the spool. Hashing, compressing,
encrypting and pg_waldump run in ENGINE_POOL threads. A full spool volume is DiskFull. Call
`upload_ready` and `upload_partial` from one task, one after the other.
"""

import datetime as dt
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import BinaryIO

from habitat_operator.api.common import Reason
from habitat_operator.api.wal import WalReason
from habitat_operator.engines.artifacts.codec import ArtifactSink
from habitat_operator.engines.artifacts.store import disk_errors
from habitat_operator.engines.threads import in_stoppable_thread, in_thread
from habitat_operator.engines.wal.layout import (
    HISTORY_NAME,
    PARTIAL_SUFFIX,
    SEGMENT_NAME,
    ArchiveLayout,
    format_lsn,
    parse_lsn,
    segment_start,
)
from habitat_operator.engines.wal.store import ObjectStore
from habitat_operator.engines.wal.waldump import WalSummary, summarize
from habitat_operator.errors import PermanentError, RetryableError

SHA256 = "sha256"
PLAINTEXT_SHA256 = "plaintextSha256"
LAST_COMMIT_AT = "lastCommitAt"
END_LSN = "endLsn"
READ_SIZE = 1 << 20
STAGING = ".habitat-staging"  # in the spool: pg_receivewal looks at segment names only
SETTLED_SECONDS = 1.0  # a file not modified for this long has an mtime that tells every write


@dataclass(frozen=True)
class UploadResult:
    segments: int  # objects uploaded by this pass (segments, history files, finished partials)
    bytes: int  # stored bytes uploaded
    archived_lsn: int | None  # the end of the newest completed segment this pass archived
    newest_segment: str | None
    last_commit_at: dt.datetime | None = None  # the newest commit in what this pass archived


@dataclass(frozen=True)
class PartialUpload:
    """The segment being written, as last archived; pass it back to `upload_partial`."""

    segment: str
    plaintext_sha256: str
    uploaded_bytes: int  # stored bytes this call uploaded (0: unchanged)
    end_lsn: int | None
    last_commit_at: dt.datetime | None
    fingerprint: tuple[int, int] | None = None  # (size, mtime_ns) once settled


def metadata_value(metadata: Mapping[str, str], key: str) -> str | None:
    """A metadata value by its key in any case (S3 hands keys back lowercased)."""
    return next((value for name, value in metadata.items() if name.lower() == key.lower()), None)


def format_commit_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_commit_time(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


async def upload_ready(
    spool: Path, store: ObjectStore, layout: ArchiveLayout, encryption_key: bytes | None, zstd: bool
) -> UploadResult:
    """Archive every completed segment and history file of the spool (history files first, then
    segments in WAL order, then the partial segments of abandoned timelines), each removed from
    the spool once its object is complete."""
    uploaded = stored = 0
    newest: str | None = None
    archived_lsn: int | None = None
    last_commit: dt.datetime | None = None
    for name in await in_thread(_ready_files, spool):
        path = spool / name
        archive = partial(_archive_ready, path, store, layout, encryption_key, zstd)
        with disk_errors(path):
            size, summary = await in_stoppable_thread(archive)
        uploaded += size > 0
        stored += size
        if SEGMENT_NAME.match(path.name):
            newest = path.name
            archived_lsn = segment_start(path.name, summary.size)[1] + summary.size
        if summary.last_commit_at is not None:
            last_commit = max(summary.last_commit_at, last_commit or summary.last_commit_at)
    return UploadResult(uploaded, stored, archived_lsn, newest, last_commit)


async def upload_partial(
    spool: Path,
    store: ObjectStore,
    layout: ArchiveLayout,
    encryption_key: bytes | None,
    zstd: bool,
    previous: PartialUpload | None = None,
) -> PartialUpload | None:
    """Archive the segment being written as `wal/<segment>.partial` if it changed since `previous`
    (or since the object in the archive); None when the spool has no partial segment."""
    current = await in_thread(_newest_partial, spool)
    if current is None:
        return None
    segment, fingerprint = current
    # Only a settled fingerprint proves nothing changed: a fresh mtime may hide a write in its tick.
    if (
        fingerprint is not None
        and previous is not None
        and (previous.segment, previous.fingerprint) == current
    ):
        return replace(previous, uploaded_bytes=0)
    archive = partial(_archive_partial, spool, segment, store, layout, encryption_key, zstd, previous)
    with disk_errors(spool / STAGING / segment):
        return await in_stoppable_thread(archive)


@dataclass(frozen=True)
class _Archived:
    size: int  # of the WAL file
    last_commit_at: dt.datetime | None


def _spool_names(spool: Path) -> list[str]:
    """The spool's file names, sorted; none while pg_receivewal has not made it."""
    try:
        return sorted(entry.name for entry in os.scandir(spool) if entry.is_file(follow_symlinks=False))
    except FileNotFoundError:
        return []


def _partial_segments(names: list[str]) -> list[str]:
    """The segments of the partial files among `names`, oldest first."""
    segments = (name.removesuffix(PARTIAL_SUFFIX) for name in names if name.endswith(PARTIAL_SUFFIX))
    return [segment for segment in segments if SEGMENT_NAME.match(segment)]


def _ready_files(spool: Path) -> list[str]:
    names = _spool_names(spool)
    abandoned = [f"{segment}{PARTIAL_SUFFIX}" for segment in _partial_segments(names)[:-1]]
    # History files first, then segments in WAL order, then the partials of abandoned timelines.
    return (
        [n for n in names if HISTORY_NAME.match(n)] + [n for n in names if SEGMENT_NAME.match(n)] + abandoned
    )


def _newest_partial(spool: Path) -> tuple[str, tuple[int, int] | None] | None:
    """(segment name, fingerprint if settled) of the newest partial segment in the spool."""
    names = _partial_segments(_spool_names(spool))
    if not names:
        return None
    try:
        stat = (spool / f"{names[-1]}{PARTIAL_SUFFIX}").stat()
    except FileNotFoundError:
        return None
    settled = time.time_ns() - stat.st_mtime_ns > SETTLED_SECONDS * 1e9
    return names[-1], (stat.st_size, stat.st_mtime_ns) if settled else None


def _archive_ready(
    path: Path,
    store: ObjectStore,
    layout: ArchiveLayout,
    encryption_key: bytes | None,
    zstd: bool,
    stop: threading.Event,
) -> tuple[int, _Archived]:
    """Upload one completed file unless already archived, then remove it; (stored bytes, what)."""
    key = layout.wal(path.name)
    size = path.stat().st_size
    is_partial = path.name.endswith(PARTIAL_SUFFIX)  # an abandoned timeline's: replaces its snapshot
    existing = store.metadata(key)
    same = existing is not None and metadata_value(existing, PLAINTEXT_SHA256) == _sha256_of(path, stop)
    if existing is not None and not same and not is_partial:
        raise PermanentError(
            WalReason.ARCHIVE_CONFLICT,
            f"{store.uri(key)} is already archived with other content; {path} is kept",
        )
    if existing is not None and same:
        stored, last_commit = 0, parse_commit_time(metadata_value(existing, LAST_COMMIT_AT))
    else:
        summary = _summary_of(path, stop) if not HISTORY_NAME.match(path.name) else WalSummary(None, None)
        stored = _upload(
            path, store, key, encryption_key, zstd, _described(summary, partial=is_partial), stop
        )
        last_commit = summary.last_commit_at
    if SEGMENT_NAME.match(path.name):
        store.delete(layout.wal(f"{path.name}{PARTIAL_SUFFIX}"))
    path.unlink()
    return stored, _Archived(size, last_commit)


def _archive_partial(
    spool: Path,
    segment: str,
    store: ObjectStore,
    layout: ArchiveLayout,
    encryption_key: bytes | None,
    zstd: bool,
    previous: PartialUpload | None,
    stop: threading.Event,
) -> PartialUpload | None:
    source = spool / f"{segment}{PARTIAL_SUFFIX}"
    staging = spool / STAGING
    staging.mkdir(mode=0o700, exist_ok=True)
    snapshot = staging / segment  # named as the segment: pg_waldump reads the name
    for leftover in staging.iterdir():  # what a killed call left (calls never overlap)
        leftover.unlink()
    fingerprint = _newest_partial(spool)
    try:
        plain = _copy(source, snapshot, stop)
    except FileNotFoundError:
        return None  # completed meanwhile: upload_ready takes it
    settled = fingerprint[1] if fingerprint is not None and fingerprint[0] == segment else None
    key = layout.wal(f"{segment}{PARTIAL_SUFFIX}")
    try:
        if previous is not None and previous.segment == segment and previous.plaintext_sha256 == plain:
            return replace(previous, uploaded_bytes=0, fingerprint=settled)
        existing = store.metadata(key)
        if existing is not None and metadata_value(existing, PLAINTEXT_SHA256) == plain:
            end = metadata_value(existing, END_LSN)
            commit = parse_commit_time(metadata_value(existing, LAST_COMMIT_AT))
            return PartialUpload(segment, plain, 0, _lsn_or_none(end), commit, settled)
        summary = summarize(snapshot, stop)
        if (spool / segment).exists():
            return None  # completed meanwhile: upload_ready archives the whole segment
        stored = _upload(snapshot, store, key, encryption_key, zstd, _described(summary, partial=True), stop)
        return PartialUpload(segment, plain, stored, summary.end_lsn, summary.last_commit_at, settled)
    finally:
        snapshot.unlink(missing_ok=True)


def _summary_of(path: Path, stop: threading.Event) -> WalSummary:
    """summarize(), for a partial segment through a link named as the segment (pg_waldump's rule)."""
    if not path.name.endswith(PARTIAL_SUFFIX):
        return summarize(path, stop)
    staging = path.parent / STAGING
    staging.mkdir(mode=0o700, exist_ok=True)
    link = staging / path.name.removesuffix(PARTIAL_SUFFIX)
    link.unlink(missing_ok=True)
    link.symlink_to(path)
    try:
        return summarize(link, stop)
    finally:
        link.unlink(missing_ok=True)


def _described(summary: WalSummary, *, partial: bool) -> dict[str, str]:
    described = {}
    if summary.last_commit_at is not None:
        described[LAST_COMMIT_AT] = format_commit_time(summary.last_commit_at)
    if partial and summary.end_lsn is not None:
        described[END_LSN] = format_lsn(summary.end_lsn)
    return described


def _lsn_or_none(text: str | None) -> int | None:
    try:
        return parse_lsn(text) if text else None
    except ValueError:
        return None


def _upload(
    path: Path,
    store: ObjectStore,
    key: str,
    encryption_key: bytes | None,
    zstd: bool,
    described: Mapping[str, str],
    stop: threading.Event,
) -> int:
    """Encode `path` into an unnamed temporary file, then upload it with its checksums; the
    stored size. The object exists only once the whole of it is uploaded."""
    with path.open("rb") as source, tempfile.TemporaryFile(dir=path.parent) as encoded:
        sink = ArtifactSink(_TempFile(encoded), encryption_key, zstd=zstd)
        plain = hashlib.sha256()
        while chunk := _read(source, stop):
            plain.update(chunk)
            sink.write(chunk)
        sink.finish()
        metadata = {SHA256: sink.sha256.hexdigest(), PLAINTEXT_SHA256: plain.hexdigest(), **described}
        encoded.seek(0)
        with store.writer(key, metadata) as out:
            while chunk := _read(encoded, stop):
                out.write(chunk)
        return sink.size


def _copy(source: Path, destination: Path, stop: threading.Event) -> str:
    """Copy `source` to `destination`; the SHA-256 of what was copied."""
    digest = hashlib.sha256()
    with source.open("rb") as reader, destination.open("wb") as writer:
        while chunk := _read(reader, stop):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()


def _sha256_of(path: Path, stop: threading.Event) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as reader:
        while chunk := _read(reader, stop):
            digest.update(chunk)
    return digest.hexdigest()


def _read(file: BinaryIO, stop: threading.Event) -> bytes:
    if stop.is_set():
        raise RetryableError(Reason.CANCELLED, "archiving was stopped")
    return file.read(READ_SIZE)


class _TempFile:
    """An unnamed temporary file as the codec's output (nothing to sync: it never outlives us)."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def sync(self) -> None:
        self._file.flush()
