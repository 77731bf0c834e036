"""pg_dump into an artifact: streamed, hashed, optionally encrypted, verified, then renamed into place.

Nothing appears at the destination until the whole artifact is on disk and (if asked) verified; on
failure, timeout or cancellation pg_dump is killed and the partial artifact removed.
"""

import asyncio
import fcntl
import hashlib
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal, Self

import psycopg

from habitat_operator.api.backup import BackupReason
from habitat_operator.api.common import Reason
from habitat_operator.engines.artifacts.codec import (
    ArtifactSink,
    PlaintextReader,
    Readable,
    Writable,
    starts_compressed,
)
from habitat_operator.engines.artifacts.crypto import MAGIC, is_encrypted
from habitat_operator.engines.artifacts.s3 import StoredVersions
from habitat_operator.engines.artifacts.store import (
    STAGING_FOLDER_PREFIX,
    AtomicDirectory,
    AtomicFile,
    disk_errors,
    file_uri,
    remove_partials,
    scratch_folder,
)
from habitat_operator.engines.artifacts.tarball import extract_tar, write_tar
from habitat_operator.engines.postgres.client_tools import (
    READ_SIZE,
    ClientTool,
    classify_failure,
    meaningful_line,
)
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.threads import in_pool, in_stoppable_thread, in_thread
from habitat_operator.errors import OperationError, PermanentError, RetryableError

ArtifactFormat = Literal["custom", "directory"]
CompressionName = Literal["gzip", "zstd", "none"]
StoredBytes = Path | Callable[[], Readable]
"""An artifact file, or a function that opens the stored bytes (an object in a bucket)."""

MANIFEST_NAME = "MANIFEST.sha256"


@dataclass(frozen=True)
class BackupRequest:
    """What to dump and where.

    `destination` is the final artifact path: a file for "custom", a directory for "directory".
    `jobs` above 1 needs "directory"; encryption needs "custom". `timeout` is in seconds.
    """

    target: ConnectionTarget
    destination: Path | None = None  # None when the artifact goes to a bucket (engines/postgres/bucket)
    format: ArtifactFormat = "custom"
    jobs: int = 1
    include_schemas: list[str] = field(default_factory=list)
    include_tables: list[str] = field(default_factory=list)
    exclude_schemas: list[str] = field(default_factory=list)
    exclude_tables: list[str] = field(default_factory=list)
    encryption_key: bytes | None = field(default=None, repr=False)
    verify: bool = True
    timeout: float = 3600.0
    # gzip: pg_dump's own; zstd: pg_dump writes uncompressed and ArtifactSink compresses.
    compression: CompressionName = "gzip"
    # Where a directory-format dump to a bucket is staged (None: the system's temporary directory).
    scratch_dir: Path | None = None


@dataclass(frozen=True)
class BackupResult:
    """A finished artifact. `sha256` is of the bytes on disk (ciphertext when encrypted); for a
    directory it is of its MANIFEST.sha256 (`sha256sum -c` format: one line per file, sorted)."""

    uri: str
    size_bytes: int
    sha256: str
    format: ArtifactFormat
    encrypted: bool
    pg_version: str
    verified: bool
    compression: CompressionName = "gzip"
    stored: StoredVersions | None = None  # in a bucket: the versions written and their lock


async def run_backup(request: BackupRequest) -> BackupResult:
    """Dump `request.target` into `request.destination`; raise OperationError on failure."""
    check_request(request)
    destination = request.destination
    if destination is None:
        raise PermanentError(Reason.INVALID_REQUEST, "run_backup needs a destination")
    if request.format == "directory" and request.encryption_key is not None:
        raise _encryption_unsupported()  # a folder of files; a bucket's tar stream can be encrypted
    async with backup_deadline(request):
        pg_version = await server_version(request.target)
        if request.format == "custom":
            size, digest = await _dump_custom(request, destination)
        else:
            size, digest = await _dump_directory(request, destination)
    return result_of(request, file_uri(destination), size, digest, pg_version)


@asynccontextmanager
async def backup_deadline(request: BackupRequest) -> AsyncIterator[None]:
    """`request.timeout` over the block, whose expiry is a retryable Timeout."""
    deadline = asyncio.timeout(request.timeout)
    try:
        async with deadline:
            yield
    except TimeoutError:
        if not deadline.expired():
            raise
        raise RetryableError(
            Reason.TIMEOUT,
            f"backup of {request.target.display} did not finish within {request.timeout:g}s",
        ) from None


def result_of(request: BackupRequest, uri: str, size: int, sha256: str, pg_version: str) -> BackupResult:
    return BackupResult(
        uri=uri,
        size_bytes=size,
        sha256=sha256,
        format=request.format,
        encrypted=request.encryption_key is not None,
        pg_version=pg_version,
        verified=request.verify,
        compression=request.compression,
    )


async def verify_artifact(
    path: Path, format: ArtifactFormat, expected_sha256: str | None, encryption_key: bytes | None
) -> None:
    """Check an artifact's checksum and that pg_restore can read its table of contents.

    Raises OperationError "ArtifactNotFound", "VerificationFailed" (checksum mismatch, unreadable
    archive) or "DecryptionFailed" (wrong or missing key, tampered or truncated ciphertext).
    """
    await verify_checksum(path, format, expected_sha256)
    await verify_readable(path, format, encryption_key)


async def verify_checksum(path: Path, format: ArtifactFormat, expected_sha256: str | None) -> str:
    """The artifact's SHA-256 (a directory's: of its manifest, once its files match the manifest).

    Raises OperationError "ArtifactNotFound", or "VerificationFailed" when a directory's files do
    not match its manifest or the SHA-256 is not `expected_sha256` (if given).
    """
    await _require_artifact(path)
    if format == "directory":
        actual = await _directory_sha256(path)
    else:
        actual = await in_thread(_file_sha256, path)
    if expected_sha256 is not None and actual != expected_sha256:
        raise _verification_failed(path, "checksum mismatch")
    return actual


async def verify_readable(path: Path, format: ArtifactFormat, encryption_key: bytes | None) -> None:
    """Check that pg_restore can read the artifact's table of contents (through decryption).

    Raises OperationError "ArtifactNotFound", "VerificationFailed", "DecryptionFailed" or
    "EncryptionUnsupported" (a key given for a directory).
    """
    await _require_artifact(path)
    if format == "directory" and encryption_key is not None:
        raise _encryption_unsupported()
    if format == "directory" or await in_thread(is_plain_archive, path, encryption_key):
        async with ClientTool.start(["pg_restore", "--list", str(path)], None) as restore:
            await restore.check(lambda stderr: _verification_failed(path, meaningful_line(stderr)))
        return
    reader = await in_thread(open_plaintext, path, encryption_key)
    await list_contents(reader, path.name)


async def list_contents(reader: PlaintextReader, name: str) -> None:
    """`pg_restore --list` over the reader's plaintext, read to the end: pg_restore stops reading
    after the table of contents, and draining the rest still hashes and authenticates every chunk."""
    try:
        async with ClientTool.start(["pg_restore", "--list"], None, stdin=asyncio.subprocess.PIPE) as restore:
            while (chunk := await in_thread(reader.read)) and await restore.feed(chunk):
                pass
            await in_thread(reader.drain)
            await restore.close_stdin()
            await restore.check(lambda stderr: _artifact_failed(name, meaningful_line(stderr)))
    finally:
        await in_thread(reader.close)


def is_plain_archive(path: Path, encryption_key: bytes | None) -> bool:
    """Whether pg_restore can read the file itself: neither encrypted nor zstd-compressed."""
    with path.open("rb") as file:
        head = file.read(len(MAGIC))
    if is_encrypted(head) and encryption_key is None:
        raise _key_missing()
    return encryption_key is None and not starts_compressed(head)


def open_plaintext(stored: StoredBytes, encryption_key: bytes | None) -> PlaintextReader:
    """A PlaintextReader over a file or over what `stored()` opens; blocking."""
    return PlaintextReader(stored.open("rb") if isinstance(stored, Path) else stored(), encryption_key)


async def read_plaintext(stored: StoredBytes, encryption_key: bytes | None) -> AsyncGenerator[bytes, None]:
    """The plaintext of a custom-format artifact: decrypted if `encryption_key` is given, and
    decompressed if zstd.

    Chunks are authentic as they come, but only the end of the iteration proves the artifact
    complete: verify it first (verify_artifact) before feeding it to anything that applies it.
    Use with `contextlib.aclosing` if you may stop early.
    """
    reader = await in_thread(open_plaintext, stored, encryption_key)
    try:
        while chunk := await in_thread(reader.read):
            yield chunk
    finally:
        await in_thread(reader.close)


async def server_version(target: ConnectionTarget) -> str:
    """The server's version, e.g. "15.18"; connection failures are classified like pg_dump's."""
    try:
        async with await psycopg.AsyncConnection.connect(target.conninfo(), autocommit=True) as conn:
            cursor = await conn.execute("SHOW server_version")
            row = await cursor.fetchone()
    except psycopg.Error as error:
        raise classify_failure("PostgreSQL", str(error), target) from None
    if row is None:
        raise RetryableError(BackupReason.DUMP_FAILED, "server did not report its version")
    return str(row[0]).split()[0]


# ---------------------------------------------------------------- dumping


def check_request(request: BackupRequest) -> None:
    if request.format not in ("custom", "directory"):
        raise PermanentError(Reason.INVALID_REQUEST, f"unknown backup format {request.format!r}")
    if request.jobs < 1 or (request.jobs > 1 and request.format != "directory"):
        raise PermanentError(Reason.INVALID_REQUEST, "jobs must be 1, or more with format directory")


def _dump_argv(request: BackupRequest) -> list[str]:
    return [
        "pg_dump",
        "--no-password",
        f"--format={request.format}",
        *(["--compress=0"] if request.compression != "gzip" else []),
        *(f"--schema={pattern}" for pattern in request.include_schemas),
        *(f"--table={pattern}" for pattern in request.include_tables),
        *(f"--exclude-schema={pattern}" for pattern in request.exclude_schemas),
        *(f"--exclude-table={pattern}" for pattern in request.exclude_tables),
    ]


async def _dump_custom(request: BackupRequest, destination: Path) -> tuple[int, str]:
    remove_partials(destination.parent, destination.name)
    async with AtomicFile(destination) as out:
        sink = await dump_stream(request, out)
        if request.verify:
            await _verify_own_artifact(
                out.temp_path, "custom", sink.sha256.hexdigest(), request.encryption_key
            )
    return sink.size, sink.sha256.hexdigest()


async def dump_stream(request: BackupRequest, out: Writable) -> ArtifactSink:
    """pg_dump's custom-format output through an ArtifactSink into `out`, synced at the end."""
    sink = ArtifactSink(out, request.encryption_key, zstd=request.compression == "zstd")
    with OutputPipe() as pipe:
        async with ClientTool.start(_dump_argv(request), request.target, stdout=pipe.write_end) as dump:
            pipe.close_write_end()  # pg_dump holds the only write end now: its exit is our EOF
            await copy_output(dump, pipe, sink)
            await dump.check(lambda stderr: classify_failure("pg_dump", stderr, request.target))
    await in_thread(sink.finish)
    return sink


async def _dump_directory(request: BackupRequest, destination: Path) -> tuple[int, str]:
    remove_partials(destination.parent, destination.name)
    async with AtomicDirectory(destination) as out:
        size, digest = await _dump_into_folder(request, out.temp_path)
        if request.verify:
            await _verify_own_artifact(out.temp_path, "directory", digest, None)
    return size, digest


async def dump_directory_stream(request: BackupRequest, out: Writable) -> ArtifactSink:
    """A directory-format dump (`jobs` in parallel), staged in a scratch folder and sent as one tar
    stream through an ArtifactSink into `out`, synced at the end; the folder is removed on leaving."""
    sink = ArtifactSink(out, request.encryption_key, zstd=request.compression == "zstd")
    async with scratch_folder(request.scratch_dir, STAGING_FOLDER_PREFIX) as folder:
        staged = folder / "artifact"
        await _dump_into_folder(request, staged)
        await in_stoppable_thread(partial(write_tar, staged, sink.write))
    await in_thread(sink.finish)
    return sink


async def unpack_directory(reader: PlaintextReader, directory: Path) -> None:
    """The tar stream of a directory-format artifact unpacked into `directory` (which must not
    exist), read to the end; the reader is closed. Check the result with verify_artifact."""
    try:
        with disk_errors(directory):
            await in_stoppable_thread(partial(extract_tar, reader, directory))
    finally:
        await in_thread(reader.close)


async def _dump_into_folder(request: BackupRequest, folder: Path) -> tuple[int, str]:
    """pg_dump --format=directory into `folder`, with its MANIFEST.sha256; (total size, its sha256)."""
    argv = [*_dump_argv(request), f"--jobs={request.jobs}", f"--file={folder}"]
    async with ClientTool.start(argv, request.target) as dump:
        await dump.check(lambda stderr: classify_failure("pg_dump", stderr, request.target))
    return await in_thread(_write_manifest, folder)


async def _verify_own_artifact(
    path: Path, format: ArtifactFormat, sha256: str, encryption_key: bytes | None
) -> None:
    """verify_artifact on what we just wrote: a bad artifact here (even one our own key cannot
    decrypt) is worth dumping again, unlike a stored one that fails verification."""
    try:
        await verify_artifact(path, format, sha256, encryption_key)
    except OperationError as error:
        if error.reason not in (Reason.VERIFICATION_FAILED, Reason.DECRYPTION_FAILED):
            raise
        raise RetryableError(Reason.VERIFICATION_FAILED, error.message) from None


class OutputPipe:
    """A pipe for pg_dump's stdout, read with large blocking reads in an ENGINE_POOL thread.

    pg_dump writes its output in small pieces; reading them through the event loop would cost a
    wakeup (and a thread hop) per piece, so the whole copy loop runs in one thread instead.
    """

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        with suppress(OSError):  # a bigger pipe lets pg_dump run ahead while we hash and write
            fcntl.fcntl(self.write_end, fcntl.F_SETPIPE_SZ, READ_SIZE)

    def close_write_end(self) -> None:
        if self.write_end >= 0:
            os.close(self.write_end)
            self.write_end = -1

    def copy_to(self, write: Callable[[bytes], None]) -> None:
        """Pass everything up to EOF to `write`, in blocks of about READ_SIZE."""
        pending = bytearray()
        while chunk := os.read(self.read_end, READ_SIZE):
            if not pending and len(chunk) == READ_SIZE:
                write(chunk)  # a full block (we fell behind pg_dump): passed on without a copy
                continue
            pending += chunk
            if len(pending) >= READ_SIZE:
                write(bytes(pending))
                pending.clear()
        if pending:
            write(bytes(pending))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close_write_end()
        os.close(self.read_end)


async def copy_output(dump: ClientTool, pipe: OutputPipe, sink: ArtifactSink) -> None:
    """pipe.copy_to(sink.write) in an ENGINE_POOL thread, held until pg_dump exits. If cancelled,
    kill pg_dump (so the copy meets EOF) and wait for the thread, so that removing the partial file
    never races a write."""
    work = in_pool(pipe.copy_to, sink.write)
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        with suppress(ProcessLookupError):
            dump.process.kill()
        await asyncio.wait([work])
        if not work.cancelled():
            work.exception()  # retrieved: the cancellation is what propagates
        raise


def _write_manifest(directory: Path) -> tuple[int, str]:
    """Write MANIFEST.sha256 (synced) into a dumped directory; return (total size, its sha256)."""
    manifest, size = _manifest(directory)
    path = directory / MANIFEST_NAME
    with disk_errors(path), path.open("xb") as file:
        file.write(manifest)
        file.flush()
        os.fsync(file.fileno())
    return size + len(manifest), hashlib.sha256(manifest).hexdigest()


def _manifest(directory: Path) -> tuple[bytes, int]:
    """`sha256sum`-style lines for every file but the manifest, sorted by path; and their total size."""
    files = {
        path.relative_to(directory).as_posix(): path
        for path in directory.rglob("*")
        if path.is_file() and path.name != MANIFEST_NAME
    }
    lines = [f"{_file_sha256(files[name])}  {name}\n" for name in sorted(files)]
    return "".join(lines).encode(), sum(path.stat().st_size for path in files.values())


def _file_sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


# ---------------------------------------------------------------- verifying


async def _require_artifact(path: Path) -> None:
    if not await in_thread(path.exists):
        raise PermanentError(Reason.ARTIFACT_NOT_FOUND, f"artifact {path} does not exist")


async def _directory_sha256(path: Path) -> str:
    """SHA-256 of a directory artifact's manifest, once its files are checked against it."""
    manifest, _ = await in_thread(_manifest, path)
    try:
        recorded = await in_thread((path / MANIFEST_NAME).read_bytes)
    except FileNotFoundError:
        raise _verification_failed(path, f"{MANIFEST_NAME} is missing") from None
    if manifest != recorded:
        raise _verification_failed(path, f"files do not match {MANIFEST_NAME}")
    return hashlib.sha256(manifest).hexdigest()


def _key_missing() -> OperationError:
    return PermanentError(Reason.DECRYPTION_FAILED, "artifact is encrypted but no key was given")


def _verification_failed(path: Path, detail: str) -> OperationError:
    return _artifact_failed(path.name, detail)


def _artifact_failed(name: str, detail: str) -> OperationError:
    return PermanentError(Reason.VERIFICATION_FAILED, f"artifact {name} failed verification: {detail}")


def _encryption_unsupported() -> OperationError:
    return PermanentError(
        Reason.ENCRYPTION_UNSUPPORTED, "encryption is supported with format custom, or in a bucket only"
    )
