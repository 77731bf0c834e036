"""pg_dump into an artifact: streamed, hashed, optionally encrypted, verified, then renamed into place.

Nothing appears at the destination until the whole artifact is on disk and (if asked) verified; on
failure, timeout or cancellation pg_dump is killed and the partial artifact removed.
"""

import asyncio
import hashlib
import os
import re
import signal
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, ParamSpec, TypeVar

import psycopg

from habitat_operator.ops.artifacts import (
    AtomicDirectory,
    AtomicFile,
    disk_errors,
    file_uri,
    remove_partials,
)
from habitat_operator.ops.crypto import MAGIC, Decryptor, Encryptor, is_encrypted
from habitat_operator.ops.errors import OperationError
from habitat_operator.ops.pguri import ConnectionTarget

ArtifactFormat = Literal["custom", "directory"]

MANIFEST_NAME = "MANIFEST.sha256"
READ_SIZE = 1 << 20
_STDERR_TAIL_BYTES = 64 << 10

_P = ParamSpec("_P")
_T = TypeVar("_T")


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
        raise OperationError(
            "Timeout",
            f"backup of {request.target.display} did not finish within {request.timeout:g}s",
            retryable=True,
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

    Raises OperationError "VerificationFailed" (checksum mismatch, unreadable archive) or
    "DecryptionFailed" (wrong or missing key, tampered or truncated ciphertext).
    """
    if format == "directory":
        if encryption_key is not None:
            raise _encryption_unsupported()
        await _verify_directory(path, expected_sha256)
    else:
        await _verify_custom(path, expected_sha256, encryption_key)


async def read_plaintext(path: Path, encryption_key: bytes | None) -> AsyncGenerator[bytes, None]:
    """The plaintext of a custom-format artifact, decrypted if `encryption_key` is given.

    Chunks are authentic as they come, but only the end of the iteration proves the artifact
    complete: verify it first (verify_artifact) before feeding it to anything that applies it.
    Use with `contextlib.aclosing` if you may stop early.
    """
    reader = await asyncio.to_thread(_PlaintextReader, path, encryption_key)
    try:
        while chunk := await _in_thread(reader.read):
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
        raise OperationError("DumpFailed", "server did not report its version", retryable=True)
    return str(row[0]).split()[0]


# ---------------------------------------------------------------- dumping


def _check_request(request: BackupRequest) -> None:
    if request.format not in ("custom", "directory"):
        raise OperationError("InvalidRequest", f"unknown backup format {request.format!r}")
    if request.jobs < 1 or (request.jobs > 1 and request.format != "directory"):
        raise OperationError("InvalidRequest", "jobs must be 1, or more with format directory")
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
        async with _Tool.start(_dump_argv(request), request.target, stdout=asyncio.subprocess.PIPE) as dump:
            assert dump.process.stdout is not None
            while chunk := await dump.process.stdout.read(READ_SIZE):
                await _in_thread(sink.write, chunk)
            await dump.check(lambda stderr: classify_failure("pg_dump", stderr, request.target))
        await _in_thread(sink.finish)
        if request.verify:
            await _verify_own_artifact(
                out.temp_path, "custom", sink.sha256.hexdigest(), request.encryption_key
            )
    return sink.size, sink.sha256.hexdigest()


async def _dump_directory(request: BackupRequest) -> tuple[int, str]:
    remove_partials(request.destination.parent, request.destination.name)
    async with AtomicDirectory(request.destination) as out:
        argv = [*_dump_argv(request), f"--jobs={request.jobs}", f"--file={out.temp_path}"]
        async with _Tool.start(argv, request.target) as dump:
            await dump.check(lambda stderr: classify_failure("pg_dump", stderr, request.target))
        size, digest = await _in_thread(_write_manifest, out.temp_path)
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
        if error.reason not in ("VerificationFailed", "DecryptionFailed"):
            raise
        raise OperationError("VerificationFailed", error.message, retryable=True) from None


class _ArtifactSink:
    """Encrypts (optionally), hashes and writes the dump; runs in a worker thread."""

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


async def _verify_custom(path: Path, expected_sha256: str | None, encryption_key: bytes | None) -> None:
    actual = await _in_thread(_file_sha256, path)
    if expected_sha256 is not None and actual != expected_sha256:
        raise _verification_failed(path, "checksum mismatch")
    if encryption_key is None:
        if await asyncio.to_thread(_starts_encrypted, path):
            raise _key_missing()
        async with _Tool.start(["pg_restore", "--list", str(path)], None) as restore:
            await restore.check(lambda stderr: _verification_failed(path, _meaningful_line(stderr)))
        return
    async with _Tool.start(["pg_restore", "--list"], None, stdin=asyncio.subprocess.PIPE) as restore:
        # pg_restore stops reading after the table of contents; decrypting on to the end still
        # authenticates every chunk.
        accepting = True
        async for chunk in read_plaintext(path, encryption_key):
            accepting = accepting and await restore.feed(chunk)
        await restore.close_stdin()
        await restore.check(lambda stderr: _verification_failed(path, _meaningful_line(stderr)))


async def _verify_directory(path: Path, expected_sha256: str | None) -> None:
    manifest, _ = await _in_thread(_manifest, path)
    try:
        recorded = await asyncio.to_thread((path / MANIFEST_NAME).read_bytes)
    except FileNotFoundError:
        raise _verification_failed(path, f"{MANIFEST_NAME} is missing") from None
    if manifest != recorded:
        raise _verification_failed(path, f"files do not match {MANIFEST_NAME}")
    if expected_sha256 is not None and hashlib.sha256(manifest).hexdigest() != expected_sha256:
        raise _verification_failed(path, "checksum mismatch")
    async with _Tool.start(["pg_restore", "--list", str(path)], None) as restore:
        await restore.check(lambda stderr: _verification_failed(path, _meaningful_line(stderr)))


class _PlaintextReader:
    """Reads an artifact file chunk by chunk, decrypting it if a key is given; runs in a worker thread."""

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
    return OperationError("DecryptionFailed", "artifact is encrypted but no key was given")


def _verification_failed(path: Path, detail: str) -> OperationError:
    return OperationError("VerificationFailed", f"artifact {path.name} failed verification: {detail}")


def _encryption_unsupported() -> OperationError:
    return OperationError("EncryptionUnsupported", "encryption is supported with format custom only")


# ---------------------------------------------------------------- child processes


class _Tool:
    """A running pg_dump/pg_restore in its own process group, its stderr collected as it comes.

    Leaving `start()`'s block early (error, timeout, cancellation) kills the whole group, so
    parallel pg_dump workers die with their leader.
    """

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name
        assert process.stderr is not None
        self._stderr = asyncio.create_task(_read_tail(process.stderr))

    @classmethod
    @asynccontextmanager
    async def start(
        cls,
        argv: list[str],
        target: ConnectionTarget | None,
        *,
        stdin: int = asyncio.subprocess.DEVNULL,
        stdout: int = asyncio.subprocess.DEVNULL,
    ) -> AsyncIterator["_Tool"]:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdin,
                stdout=stdout,
                stderr=asyncio.subprocess.PIPE,
                env=_tool_env(target),
                start_new_session=True,
                limit=READ_SIZE,
            )
        except FileNotFoundError:
            raise OperationError("ToolMissing", f"{argv[0]} is not installed or not on PATH") from None
        tool = cls(process, argv[0])
        try:
            yield tool
        finally:
            await tool._stop()

    async def feed(self, data: bytes) -> bool:
        """Write to stdin; False once the tool stopped reading."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(data)
            await self.process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    async def close_stdin(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        with suppress(BrokenPipeError, ConnectionResetError):
            await self.process.stdin.wait_closed()

    async def check(self, failure: Callable[[str], OperationError]) -> None:
        """Wait for the exit; a non-zero status raises `failure(stderr)`."""
        stderr = await self._stderr
        if await self.process.wait() != 0:
            raise failure(stderr)

    async def _stop(self) -> None:
        if self.process.returncode is None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()
        self._stderr.cancel()


def _tool_env(target: ConnectionTarget | None) -> dict[str, str]:
    """Our environment without inherited PG* settings, plus the target's; C messages to classify."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
    env["LC_ALL"] = "C"
    return env | (target.env() if target is not None else {})


async def _read_tail(stream: asyncio.StreamReader) -> str:
    tail = bytearray()
    while chunk := await stream.read(READ_SIZE):
        tail += chunk
        del tail[:-_STDERR_TAIL_BYTES]
    return tail.decode(errors="replace")


async def _in_thread(function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run `function` in a worker thread; if cancelled, still wait for it, so that cleanup (closing
    or removing the file it works on) never races it."""
    work = asyncio.ensure_future(asyncio.to_thread(function, *args, **kwargs))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        if not work.cancelled():
            work.exception()  # retrieved: the cancellation is what propagates
        raise


# ---------------------------------------------------------------- failures

# (pattern in lower-cased stderr, reason, retryable); first match wins, so auth comes before the
# generic connection failure it is wrapped in.
_FAILURES = (
    (r"authentication failed|no password supplied|no pg_hba\.conf entry", "AuthenticationFailed", True),
    (r'role "[^"]*" does not exist', "AuthenticationFailed", True),
    (r'database "[^"]*" does not exist', "DatabaseNotFound", True),
    (r"no space left on device|disk quota exceeded", "DiskFull", False),
    (
        r"connection refused|could not connect|could not translate host name|timeout expired"
        r"|no route to host|network is unreachable|server closed the connection unexpectedly"
        r"|the database system is (starting up|shutting down|in recovery mode)"
        r"|connection to server .* failed",
        "DatabaseUnreachable",
        True,
    ),
)
_SUMMARIES = {
    "AuthenticationFailed": "authentication to {display} failed",
    "DatabaseNotFound": "database {display} does not exist",
    "DiskFull": "no space left for the artifact",
    "DatabaseUnreachable": "cannot connect to {display}",
}


def classify_failure(tool: str, stderr: str, target: ConnectionTarget) -> OperationError:
    """One-line, redacted OperationError for a failed connection, dump or restore of `target`.

    `stderr` is what libpq or a client tool reported; a failure that is not about reaching the
    database is "DumpFailed".
    """
    stderr = target.redact(stderr)
    line = _meaningful_line(stderr)
    lowered = stderr.lower()
    for pattern, reason, retryable in _FAILURES:
        if re.search(pattern, lowered):
            summary = _SUMMARIES[reason].format(display=target.display)
            return OperationError(reason, f"{summary}: {line}", retryable=retryable)
    return OperationError("DumpFailed", f"{tool} failed on {target.display}: {line}", retryable=False)


def _meaningful_line(stderr: str) -> str:
    """The last line reporting an error, else the last non-blank line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"error|fatal", line, re.IGNORECASE)]
    return (errors or lines or ["no error output"])[-1]
