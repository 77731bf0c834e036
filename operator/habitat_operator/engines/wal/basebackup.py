"""A base backup of a live server into an archive: streamed, read back and checked, then catalogued.

`pg_basebackup -Ft -X none -D -` writes one tar stream on stdout, with the `backup_manifest`
injected as its last member (PostgreSQL 13 and later do so when the tar goes to stdout), so nothing
is spooled on local disk: the stream goes through the codec (zstd, encryption, SHA-256) straight
into `base/<id>.tar`, an all-or-nothing write. The stored object is then read back through the codec
and every file is checked against the manifest's SHA-256 (and the manifest against its own
checksum); the start and end positions come from `backup_label` and the manifest's WAL-Ranges.
Only then is the entry `base/<id>.json` written: a base backup without an entry does not exist for
readers, so a kill at any point leaves nothing listed as complete (an unfinished upload or a
`.partial-*` file, or a tar without an entry that retention removes later).

Memory stays constant whatever the number of files: instead of a table of checksums, the check
compares two multiset hashes, the sum modulo 2^256 of SHA-256(path, size, checksum) over the tar's
files and over the manifest's entries.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import re
import tarfile
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import IO, Any, Literal, cast

from habitat_operator import timestamps
from habitat_operator.api.common import Reason
from habitat_operator.api.wal import WalReason
from habitat_operator.engines.artifacts.codec import (
    READ_SIZE,
    ArtifactSink,
    PlaintextReader,
    Readable,
    Writable,
)
from habitat_operator.engines.artifacts.tarball import PlaintextStream, stream_members
from habitat_operator.engines.postgres.client_tools import ClientTool, classify_failure, meaningful_line
from habitat_operator.engines.postgres.dump import OutputPipe, copy_output
from habitat_operator.engines.postgres.replication import REPLICATION_REFUSED, server_identity
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.threads import in_stoppable_thread, in_thread
from habitat_operator.engines.wal.layout import ArchiveLayout, format_lsn, parse_lsn
from habitat_operator.engines.wal.store import ObjectStore
from habitat_operator.errors import OperationError, PermanentError, RetryableError

Compression = Literal["zstd", "none"]
MANIFEST = "backup_manifest"
LABEL = "backup_label"
_MAX_LABEL_BYTES = 64 << 10
_MAX_MANIFEST_LINE = 64 << 10  # a path is at most MAXPGPATH (1,024) bytes, hex-encoded twice that
_MODULUS = 1 << 256
_BACKUP_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")
_BAD_OBJECT = (Reason.VERIFICATION_FAILED, Reason.CHECKSUM_MISMATCH, Reason.DECRYPTION_FAILED)


@dataclass(frozen=True)
class BaseBackupEntry:
    """A verified base backup, as its entry `base/<id>.json` records it."""

    id: str
    start_lsn: int
    end_lsn: int
    timeline: int
    started_at: dt.datetime
    completed_at: dt.datetime
    server_version: int
    system_identifier: str
    size_bytes: int
    sha256: str
    encrypted: bool
    compression: Compression

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "startLsn": format_lsn(self.start_lsn),
            "endLsn": format_lsn(self.end_lsn),
            "timeline": self.timeline,
            "startedAt": timestamps.rfc3339(self.started_at),
            "completedAt": timestamps.rfc3339(self.completed_at),
            "serverVersion": self.server_version,
            "systemIdentifier": self.system_identifier,
            "sizeBytes": self.size_bytes,
            "sha256": self.sha256,
            "encrypted": self.encrypted,
            "compression": self.compression,
        }

    @classmethod
    def from_json(cls, data: object) -> BaseBackupEntry:
        """The entry a JSON document holds; ValueError (or TypeError, KeyError) for one that is not."""
        if not isinstance(data, dict):
            raise ValueError("a base backup entry is a JSON object")
        compression = str(data["compression"])
        if compression not in ("zstd", "none"):
            raise ValueError(f"unknown compression {compression!r}")
        return cls(
            id=str(data["id"]),
            start_lsn=parse_lsn(str(data["startLsn"])),
            end_lsn=parse_lsn(str(data["endLsn"])),
            timeline=int(data["timeline"]),
            started_at=utc(str(data["startedAt"])),
            completed_at=utc(str(data["completedAt"])),
            server_version=int(data["serverVersion"]),
            system_identifier=str(data["systemIdentifier"]),
            size_bytes=int(data["sizeBytes"]),
            sha256=str(data["sha256"]),
            encrypted=bool(data["encrypted"]),
            compression=cast("Compression", compression),
        )

    @property
    def major(self) -> int:
        """The PostgreSQL major version (server_version_num 150004 is 15)."""
        return self.server_version // 10000


def utc(text: str) -> dt.datetime:
    """An RFC 3339 time; one without a zone (hand-written) is taken as UTC, as Kubernetes does."""
    moment = timestamps.parse(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class BackupFacts:
    """What reading a base backup's tar back tells: where its WAL starts and ends, and its stored bytes."""

    start_lsn: int
    end_lsn: int
    timeline: int
    sha256: str
    size: int


async def take_base_backup(
    target: ConnectionTarget,
    store: ObjectStore,
    layout: ArchiveLayout,
    encryption_key: bytes | None,
    zstd: bool,
    backup_id: str,
) -> BaseBackupEntry:
    """Back up the whole server `target` reaches into `layout.base_backup(backup_id)`, verify it,
    then write its entry; return the entry.

    Raises RetryableError BaseBackupFailed when the stored tar failed its check (it is deleted) or
    pg_basebackup failed in a way worth another try, PermanentError BaseBackupFailed for one that is
    not (e.g. more than one tablespace), and the connection and storage reasons.
    """
    if not _BACKUP_ID.match(backup_id):
        raise PermanentError(Reason.INVALID_REQUEST, f"not a base backup id: {backup_id[:70]!r}")
    key = layout.base_backup(backup_id)
    identity = await server_identity(target)
    started_at = timestamps.now().replace(microsecond=0)
    sink = await _upload(target, store, key, encryption_key, zstd, backup_id)
    completed_at = _whole_second_after(timestamps.now())
    try:
        facts = await in_stoppable_thread(partial(read_back, partial(store.open, key), encryption_key))
        if facts.sha256 != sink.sha256.hexdigest():
            raise PermanentError(
                Reason.CHECKSUM_MISMATCH, f"{store.uri(key)} does not match what was written"
            )
    except OperationError as error:
        if error.reason not in _BAD_OBJECT:
            raise
        await in_thread(store.delete, key)
        raise RetryableError(WalReason.BASE_BACKUP_FAILED, error.message) from None
    entry = BaseBackupEntry(
        id=backup_id,
        start_lsn=facts.start_lsn,
        end_lsn=facts.end_lsn,
        timeline=facts.timeline,
        started_at=started_at,
        completed_at=completed_at,
        server_version=identity.server_version,
        system_identifier=identity.system_identifier,
        size_bytes=sink.size,
        sha256=sink.sha256.hexdigest(),
        encrypted=encryption_key is not None,
        compression="zstd" if zstd else "none",
    )
    await in_thread(write_entry, store, layout, entry)
    return entry


def _whole_second_after(moment: dt.datetime) -> dt.datetime:
    """The entry keeps whole seconds (the start rounded down): rounded up, the completion is never
    earlier than the consistent point, which a time target must not precede."""
    whole = moment.replace(microsecond=0)
    return whole if whole == moment else whole + dt.timedelta(seconds=1)


def write_entry(store: ObjectStore, layout: ArchiveLayout, entry: BaseBackupEntry) -> None:
    """The entry that makes a base backup exist for readers; blocking."""
    body = json.dumps(entry.to_json(), indent=2, sort_keys=True).encode()
    with store.writer(
        layout.base_backup_entry(entry.id), {"sha256": hashlib.sha256(body).hexdigest()}
    ) as out:
        out.write(body)
        out.sync()


def _argv(backup_id: str) -> list[str]:
    return [
        "pg_basebackup",
        "--no-password",
        "--format=tar",
        "--wal-method=none",
        "--pgdata=-",
        "--manifest-checksums=SHA256",
        "--checkpoint=fast",
        f"--label=habitat {backup_id}",
    ]


async def _upload(
    target: ConnectionTarget,
    store: ObjectStore,
    key: str,
    encryption_key: bytes | None,
    zstd: bool,
    backup_id: str,
) -> ArtifactSink:
    """pg_basebackup's tar stream through an ArtifactSink into `key`, which appears only once whole."""
    writing: AbstractContextManager[Writable] = store.writer(key)
    out = await in_thread(writing.__enter__)
    try:
        sink = ArtifactSink(out, encryption_key, zstd=zstd)
        with OutputPipe() as pipe:
            async with ClientTool.start(_argv(backup_id), target, stdout=pipe.write_end) as tool:
                pipe.close_write_end()  # pg_basebackup holds the only write end now: its exit is our EOF
                await copy_output(tool, pipe, sink)
                await tool.check(partial(_failed, target))
        await in_thread(sink.finish)
    except BaseException as error:
        await asyncio.shield(in_thread(writing.__exit__, type(error), error, None))
        raise
    await in_thread(writing.__exit__, None, None, None)
    return sink


# What another attempt cannot fix: more than one tablespace (one tar stream holds only the main
# one), a server pg_basebackup cannot speak to.
_PERMANENT = re.compile(r"tablespace|incompatible server version")


def _failed(target: ConnectionTarget, stderr: str, tool: str = "pg_basebackup") -> OperationError:
    """pg_basebackup's failure, one redacted line with a reason: ReplicationRefused, the
    connection's reasons, else BaseBackupFailed (retryable but for _PERMANENT: the server may have
    restarted mid-way)."""
    if REPLICATION_REFUSED.search(stderr):
        line = meaningful_line(target.redact(stderr))
        return RetryableError(
            WalReason.REPLICATION_REFUSED, f"{target.display} refuses replication to this role: {line}"
        )
    error = classify_failure(tool, stderr, target, failed_reason=WalReason.BASE_BACKUP_FAILED)
    if error.reason is WalReason.BASE_BACKUP_FAILED and not _PERMANENT.search(stderr.lower()):
        return RetryableError(error.reason, error.message)
    return error


# ---------------------------------------------------------------- reading back


def read_back(
    open_stored: Callable[[], Readable], encryption_key: bytes | None, stop: threading.Event
) -> BackupFacts:
    """Read a stored base backup through the codec and check every file against its manifest;
    blocking (run with `in_stoppable_thread`).

    Raises PermanentError VerificationFailed (a file or the manifest does not match, a member is
    missing), DecryptionFailed, or a storage reason.
    """
    reader = PlaintextReader(open_stored(), encryption_key)
    try:
        check = _TarCheck()
        try:
            with tarfile.open(
                fileobj=cast("IO[bytes]", PlaintextStream(reader, stop)), mode="r|", bufsize=READ_SIZE
            ) as tar:
                for member in stream_members(tar):
                    check.member(tar, member, stop)
        except (tarfile.TarError, EOFError) as error:
            raise _not_verified(f"not a readable tar: {error or type(error).__name__}") from None
        reader.drain()
        return check.facts(reader)
    finally:
        reader.close()


class _TarCheck:
    """The running state of one pass over a base backup's tar."""

    def __init__(self) -> None:
        self.files_sum = 0
        self.files = 0
        self.manifest: _Manifest | None = None
        self.label: bytes | None = None

    def member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, stop: threading.Event) -> None:
        if not member.isfile():
            return
        data = tar.extractfile(member)
        assert data is not None  # a regular file
        if member.name == MANIFEST:
            self.manifest = _Manifest()
            while chunk := _read(data, stop):
                self.manifest.feed(chunk)
            self.manifest.end()
            return
        digest = hashlib.sha256()
        label = bytearray() if member.name == LABEL else None
        while chunk := _read(data, stop):
            digest.update(chunk)
            if label is not None and len(label) < _MAX_LABEL_BYTES:
                label += chunk
        if label is not None:
            self.label = bytes(label)
        self.files_sum = (
            self.files_sum + _file_hash(member.name, member.size, digest.hexdigest())
        ) % _MODULUS
        self.files += 1

    def facts(self, reader: PlaintextReader) -> BackupFacts:
        if self.manifest is None:
            raise _not_verified(f"the tar holds no {MANIFEST}")
        if self.label is None:
            raise _not_verified(f"the tar holds no {LABEL}")
        manifest = self.manifest
        if manifest.files != self.files or manifest.files_sum != self.files_sum:
            raise _not_verified(
                f"its files do not match its {MANIFEST} ({self.files} in the tar, {manifest.files} listed,"
                " or a size or SHA-256 differs)"
            )
        start_lsn, timeline = _parse_label(self.label)
        if not manifest.ranges or manifest.ranges[0][1] != start_lsn or manifest.ranges[0][0] != timeline:
            raise _not_verified(
                f"{LABEL} and the WAL-Ranges of {MANIFEST} disagree on where the backup starts"
            )
        return BackupFacts(
            start_lsn=start_lsn,
            end_lsn=manifest.ranges[-1][2],
            timeline=timeline,
            sha256=reader.sha256.hexdigest(),
            size=reader.size,
        )


class _Manifest:
    """A backup_manifest read line by line (PostgreSQL writes one file or WAL range a line): its
    entries summed as _TarCheck sums the tar's files, its own checksum checked."""

    def __init__(self) -> None:
        self.files_sum = 0
        self.files = 0
        self.ranges: list[tuple[int, int, int]] = []  # (timeline, start, end)
        self._pending = bytearray()
        self._digest = hashlib.sha256()
        self._recorded: str | None = None

    def feed(self, chunk: bytes) -> None:
        self._pending += chunk
        *lines, rest = self._pending.split(b"\n")
        if len(rest) > _MAX_MANIFEST_LINE:
            raise _not_verified(f"{MANIFEST} has a line longer than {_MAX_MANIFEST_LINE} bytes")
        self._pending = bytearray(rest)
        for line in lines:
            self._line(bytes(line))

    def end(self) -> None:
        if self._pending:
            self._line(bytes(self._pending), last=True)
        if self._recorded is None:
            raise _not_verified(f"{MANIFEST} has no Manifest-Checksum")
        if self._recorded != self._digest.hexdigest():
            raise _not_verified(f"{MANIFEST} does not match its Manifest-Checksum")

    def _line(self, line: bytes, *, last: bool = False) -> None:
        if line.startswith(b'"Manifest-Checksum"'):
            self._recorded = _field(line, "Manifest-Checksum")
            return
        self._digest.update(line if last else line + b"\n")
        text = line.strip().rstrip(b",")
        if not (text.startswith(b"{") and text.endswith(b"}")):
            return  # the document's own braces and brackets, or its version line
        entry = _json_line(text)
        try:
            if "Timeline" in entry:
                self.ranges.append(
                    (int(entry["Timeline"]), parse_lsn(entry["Start-LSN"]), parse_lsn(entry["End-LSN"]))
                )
                return
            path = entry.get("Path")
            if path is None:
                path = bytes.fromhex(str(entry["Encoded-Path"])).decode("utf-8", "surrogateescape")
            if entry.get("Checksum-Algorithm") != "SHA256":
                raise _not_verified(f"{MANIFEST} has no SHA-256 of {path!r}")
            entry_hash = _file_hash(str(path), int(entry["Size"]), str(entry["Checksum"]))
        except (KeyError, ValueError, TypeError, AttributeError):
            raise _not_verified(f"{MANIFEST} has an unreadable line") from None
        self.files_sum = (self.files_sum + entry_hash) % _MODULUS
        self.files += 1


def _json_line(text: bytes) -> dict[str, Any]:
    try:
        entry = json.loads(text)
    except ValueError:
        entry = None
    if not isinstance(entry, dict):
        raise _not_verified(f"{MANIFEST} has an unreadable line")
    return entry


def _field(line: bytes, name: str) -> str:
    match = re.match(rb'"' + name.encode() + rb'":\s*"([0-9a-f]+)"', line)
    if match is None:
        raise _not_verified(f"{MANIFEST} has an unreadable {name}")
    return match[1].decode()


def _file_hash(path: str, size: int, checksum: str) -> int:
    token = b"\0".join(
        (path.encode("utf-8", "surrogateescape"), str(size).encode(), checksum.lower().encode())
    )
    return int.from_bytes(hashlib.sha256(token).digest())


def _read(data: IO[bytes], stop: threading.Event) -> bytes:
    if stop.is_set():
        raise RetryableError(Reason.CANCELLED, "stopped")
    return data.read(READ_SIZE)


_LABEL_START = re.compile(rb"^START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+)", re.MULTILINE)
_LABEL_TIMELINE = re.compile(rb"^START TIMELINE: (\d+)$", re.MULTILINE)


def _parse_label(label: bytes) -> tuple[int, int]:
    """(start LSN, timeline) of a backup_label. Its START TIME is in the server's log_timezone,
    possibly an ambiguous abbreviation: the entry's times are the operator's clock instead."""
    start, timeline = _LABEL_START.search(label), _LABEL_TIMELINE.search(label)
    if start is None or timeline is None:
        raise _not_verified(f"{LABEL} lacks the start position or timeline")
    return parse_lsn(start[1].decode()), int(timeline[1])


def _not_verified(detail: str) -> OperationError:
    return PermanentError(Reason.VERIFICATION_FAILED, f"base backup failed verification: {detail}")
