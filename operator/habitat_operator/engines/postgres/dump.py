"""pg_dump into an artifact: streamed, hashed, optionally encrypted, verified, then renamed into place.

Nothing appears at the destination until the whole artifact is on disk and (if asked) verified; on
failure, timeout or cancellation pg_dump is killed and the partial artifact removed.
"""

import asyncio
import fcntl
import hashlib
import os
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, Self

import psycopg

from habitat_operator.api.backup import BackupReason
from habitat_operator.api.common import Reason
from habitat_operator.engines.artifacts.crypto import MAGIC, Decryptor, Encryptor, is_encrypted
from habitat_operator.engines.artifacts.store import (
    AtomicDirectory,
    AtomicFile,
    disk_errors,
    file_uri,
    remove_partials,
)
from habitat_operator.engines.postgres.client_tools import (
    READ_SIZE,
    ClientTool,
    classify_failure,
    meaningful_line,
)
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.threads import in_pool, in_thread
from habitat_operator.errors import OperationError, PermanentError, RetryableError

ArtifactFormat = Literal["custom", "directory"]

MANIFEST_NAME = "MANIFEST.sha256"


@dataclass(frozen=True)
class BackupRequest:
    """What to dump and where.

    `destination` is the final artifact path: a file for "custom", a directory for "directory".
    `jobs` above 1 needs "directory"; encryption needs "custom". `timeout` is in seconds.
    """

    target: ConnectionTarget
    destination: Path
    format: ArtifactFormat = "custom"
    jobs: int = 1
    include_schemas: list[str] = field(default_factory=list)
    include_tables: list[str] = field(default_factory=list)
    exclude_schemas: list[str] = field(default_factory=list)
    exclude_tables: list[str] = field(default_factory=list)
    encryption_key: bytes | None = field(default=None, repr=False)
    verify: bool = True
    timeout: float = 3600.0


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


async def run_backup(request: BackupRequest) -> BackupResult:
    """Dump `request.target` into `request.destination`; raise OperationError on failure."""
    _check_request(request)
    deadline = asyncio.timeout(request.timeout)
    try:
        async with deadline:
            pg_version = await server_version(request.target)
            if request.format == "custom":
                size, digest = await _dump_custom(request)
            else:
                size, digest = await _dump_directory(request)
    except TimeoutError:
        if not deadline.expired():
            raise
        raise RetryableError(
            Reason.TIMEOUT,
            f"backup of {request.target.display} did not finish within {request.timeout:g}s",
        ) from None
    return BackupResult(
        uri=file_uri(request.destination),
        size_bytes=size,
        sha256=digest,
        format=request.format,
        encrypted=request.encryption_key is not None,
        pg_version=pg_version,
        verified=request.verify,
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
    if encryption_key is None:
        if format == "custom" and await in_thread(_starts_encrypted, path):
            raise _key_missing()
        async with ClientTool.start(["pg_restore", "--list", str(path)], None) as restore:
            await restore.check(lambda stderr: _verification_failed(path, meaningful_line(stderr)))
        return
    async with ClientTool.start(["pg_restore", "--list"], None, stdin=asyncio.subprocess.PIPE) as restore:
        # pg_restore stops reading after the table of contents; decrypting on to the end still
        # authenticates every chunk.
        accepting = True
        async with aclosing(read_plaintext(path, encryption_key)) as chunks:
            async for chunk in chunks:
                accepting = accepting and await restore.feed(chunk)
        await restore.close_stdin()
        await restore.check(lambda stderr: _verification_failed(path, meaningful_line(stderr)))


async def read_plaintext(path: Path, encryption_key: bytes | None) -> AsyncGenerator[bytes, None]:
    """The plaintext of a custom-format artifact, decrypted if `encryption_key` is given.

    Chunks are authentic as they come, but only the end of the iteration proves the artifact
    complete: verify it first (verify_artifact) before feeding it to anything that applies it.
    Use with `contextlib.aclosing` if you may stop early.
    """
    reader = await in_thread(_PlaintextReader, path, encryption_key)
    try:
        while chunk := await in_thread(reader.read):
            yield chunk
    finally:
        reader.close()


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


def _check_request(request: BackupRequest) -> None:
    if request.format not in ("custom", "directory"):
        raise PermanentError(Reason.INVALID_REQUEST, f"unknown backup format {request.format!r}")
    if request.jobs < 1 or (request.jobs > 1 and request.format != "directory"):
        raise PermanentError(Reason.INVALID_REQUEST, "jobs must be 1, or more with format directory")
    if request.format == "directory" and request.encryption_key is not None:
        raise _encryption_unsupported()


def _dump_argv(request: BackupRequest) -> list[str]:
    return [
        "pg_dump",
        "--no-password",
        f"--format={request.format}",
        *(f"--schema={pattern}" for pattern in request.include_schemas),
        *(f"--table={pattern}" for pattern in request.include_tables),
        *(f"--exclude-schema={pattern}" for pattern in request.exclude_schemas),
        *(f"--exclude-table={pattern}" for pattern in request.exclude_tables),
    ]


async def _dump_custom(request: BackupRequest) -> tuple[int, str]:
    remove_partials(request.destination.parent, request.destination.name)
    async with AtomicFile(request.destination) as out:
        sink = _ArtifactSink(out, request.encryption_key)
        with _OutputPipe() as pipe:
            async with ClientTool.start(_dump_argv(request), request.target, stdout=pipe.write_end) as dump:
                pipe.close_write_end()  # pg_dump holds the only write end now: its exit is our EOF
                await _copy_output(dump, pipe, sink)
                await dump.check(lambda stderr: classify_failure("pg_dump", stderr, request.target))
        await in_thread(sink.finish)
        if request.verify:
            await _verify_own_artifact(
                out.temp_path, "custom", sink.sha256.hexdigest(), request.encryption_key
            )
    return sink.size, sink.sha256.hexdigest()


async def _dump_directory(request: BackupRequest) -> tuple[int, str]:
    remove_partials(request.destination.parent, request.destination.name)
    async with AtomicDirectory(request.destination) as out:
        argv = [*_dump_argv(request), f"--jobs={request.jobs}", f"--file={out.temp_path}"]
        async with ClientTool.start(argv, request.target) as dump:
            await dump.check(lambda stderr: classify_failure("pg_dump", stderr, request.target))
        size, digest = await in_thread(_write_manifest, out.temp_path)
        if request.verify:
            await _verify_own_artifact(out.temp_path, "directory", digest, None)
    return size, digest


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


class _OutputPipe:
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


async def _copy_output(dump: ClientTool, pipe: _OutputPipe, sink: "_ArtifactSink") -> None:
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


class _ArtifactSink:
    """Encrypts (optionally), hashes and writes the dump; runs in an ENGINE_POOL thread."""

    def __init__(self, out: AtomicFile, encryption_key: bytes | None) -> None:
        self._out = out
        self._encryptor = Encryptor(encryption_key) if encryption_key is not None else None
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._emit(self._encryptor.update(chunk) if self._encryptor else chunk)

    def finish(self) -> None:
        if self._encryptor:
            self._emit(self._encryptor.finalize())
        self._out.sync()

    def _emit(self, data: bytes) -> None:
        if data:
            self.sha256.update(data)
            self.size += len(data)
            self._out.write(data)


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


class _PlaintextReader:
    """Reads an artifact file chunk by chunk, decrypting it if a key is given; runs in ENGINE_POOL."""

    def __init__(self, path: Path, encryption_key: bytes | None) -> None:
        if encryption_key is None and _starts_encrypted(path):
            raise _key_missing()
        self._file: IO[bytes] = path.open("rb")
        self._decryptor = Decryptor(encryption_key) if encryption_key is not None else None
        self._done = False

    def read(self) -> bytes:
        """The next non-empty plaintext chunk; b"" at the end, once the whole stream is authenticated."""
        while not self._done:
            raw = self._file.read(READ_SIZE)
            if not raw:
                self._done = True
                return self._decryptor.finalize() if self._decryptor else b""
            plain = self._decryptor.update(raw) if self._decryptor else raw
            if plain:
                return plain
        return b""

    def close(self) -> None:
        self._file.close()


def _starts_encrypted(path: Path) -> bool:
    with path.open("rb") as file:
        return is_encrypted(file.read(len(MAGIC)))


def _key_missing() -> OperationError:
    return PermanentError(Reason.DECRYPTION_FAILED, "artifact is encrypted but no key was given")


def _verification_failed(path: Path, detail: str) -> OperationError:
    return PermanentError(Reason.VERIFICATION_FAILED, f"artifact {path.name} failed verification: {detail}")


def _encryption_unsupported() -> OperationError:
    return PermanentError(Reason.ENCRYPTION_UNSUPPORTED, "encryption is supported with format custom only")
