"""pg_restore of a backup artifact into a database, and the database chores around a restore.

The artifact is checked (check_artifact) before anything touches the target. With one job the
restore is a single transaction, so a failure, timeout or kill leaves the target as it was;
parallel jobs trade that for speed. Decrypted data never lands in the backup store: it is streamed
to pg_restore, or (parallel jobs) copied into a private scratch folder removed afterwards.
"""

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from habitat_operator.api.common import Reason
from habitat_operator.api.restore import RestoreReason, VerificationExpectation, VerificationQuery
from habitat_operator.engines.artifacts.store import SCRATCH_FOLDER_PREFIX, disk_errors, scratch_folder
from habitat_operator.engines.postgres.client_tools import ClientTool, classify_failure, connect
from habitat_operator.engines.postgres.dump import (
    ArtifactFormat,
    StoredBytes,
    is_plain_archive,
    read_plaintext,
    verify_checksum,
    verify_readable,
)
from habitat_operator.engines.postgres.uri import APPLICATION_NAME, ConnectionTarget
from habitat_operator.engines.threads import in_thread
from habitat_operator.errors import OperationError, PermanentError, RetryableError, one_line

MAINTENANCE_DATABASE = "postgres"
LOCK_POLL_SECONDS = 2.0
# Whether the named session waits for a lock, and who holds it (pid and application, never a query).
_LOCK_WAIT = """
SELECT a.wait_event_type = 'Lock',
       (SELECT string_agg(format('pid %%s (%%s)', b.pid, coalesce(nullif(b.application_name, ''), b.usename)),
                          ', ')
          FROM pg_stat_activity b WHERE b.pid = ANY (pg_blocking_pids(a.pid)))
  FROM pg_stat_activity a
 WHERE a.application_name = %s AND a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()
 ORDER BY a.wait_event_type IS NOT DISTINCT FROM 'Lock' DESC
 LIMIT 1
"""
QUERY_TIMEOUT_SECONDS = 60.0
_PROTECTED_DATABASES = frozenset({"postgres", "template0", "template1"})
_MAX_VALUE_CHARS = 256

# Anything a restore could collide with: tables, views, sequences, composite types, functions and
# other types in non-system schemas. Extension members do not count (pg_dump recreates extensions
# with IF NOT EXISTS), nor do array types (they come with their element type).
_HAS_USER_OBJECTS = """
WITH user_schemas AS (
    SELECT oid FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
), extension_members AS (
    SELECT classid, objid FROM pg_depend WHERE deptype = 'e'
)
SELECT EXISTS (
    SELECT FROM pg_class c
    WHERE c.relnamespace IN (SELECT oid FROM user_schemas)
      AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')
      AND (c.tableoid, c.oid) NOT IN (SELECT classid, objid FROM extension_members)
    UNION ALL
    SELECT FROM pg_proc p
    WHERE p.pronamespace IN (SELECT oid FROM user_schemas)
      AND (p.tableoid, p.oid) NOT IN (SELECT classid, objid FROM extension_members)
    UNION ALL
    SELECT FROM pg_type t
    WHERE t.typnamespace IN (SELECT oid FROM user_schemas)
      AND t.typtype IN ('b', 'd', 'e', 'r')
      AND NOT EXISTS (SELECT FROM pg_type element WHERE element.typarray = t.oid)
      AND (t.tableoid, t.oid) NOT IN (SELECT classid, objid FROM extension_members)
)
"""


@dataclass(frozen=True)
class RestoreRequest:
    """What to restore and where.

    With `check_checksum`, run_restore first runs check_artifact (checksum against
    `expected_sha256` if given, readability); pass False when the caller already did. `jobs` above 1
    restores in parallel but not in one transaction; of an encrypted artifact, it needs a plaintext
    copy, made in a private folder (0700) under `scratch_dir` (None: the system's temporary
    directory) and removed after, so it needs room for the whole plaintext there. `timeout` is in
    seconds. `artifact` is a file or directory, or opens an object in a bucket (custom format, and
    checked by the caller: check_checksum must then be False).
    """

    target: ConnectionTarget
    artifact: StoredBytes
    format: ArtifactFormat = "custom"
    expected_sha256: str | None = None
    check_checksum: bool = True
    encryption_key: bytes | None = field(default=None, repr=False)
    jobs: int = 1
    clean: bool = False
    timeout: float = 3600.0
    scratch_dir: Path | None = None
    # How long pg_restore waits for a lock another session holds (PostgreSQL's lock_timeout), so that
    # a restore blocked by someone else fails over to a retry that says why, not to `timeout`.
    lock_timeout: float | None = None


@dataclass(frozen=True)
class RestoreResult:
    """A finished restore; `sha256` is the artifact's when run_restore checked it."""

    duration_seconds: float
    sha256: str | None


@dataclass(frozen=True)
class QueryOutcome:
    """One verification query's verdict; `value` is shortened for status, `message` says why it failed."""

    name: str
    passed: bool
    value: str | None
    message: str | None


async def check_artifact(
    path: Path,
    format: ArtifactFormat,
    expected_sha256: str | None,
    encryption_key: bytes | None,
    *,
    checksum: bool = True,
) -> str | None:
    """Make sure the artifact is intact and pg_restore can read it, before the target is touched.

    With `checksum`, returns its SHA-256 (of a directory: of its manifest, once the files match it),
    which must equal `expected_sha256` if given. Raises OperationError "ArtifactNotFound",
    "ChecksumMismatch", "VerificationFailed" (unreadable archive), "DecryptionFailed" (wrong or
    missing key, tampered ciphertext) or "EncryptionUnsupported".
    """
    if not await in_thread(_is_artifact, path, format):
        raise PermanentError(Reason.ARTIFACT_NOT_FOUND, f"no {format}-format artifact at {path}")
    sha256 = None
    if checksum:
        try:
            sha256 = await verify_checksum(path, format, expected_sha256)
        except OperationError as error:
            if error.reason is not Reason.VERIFICATION_FAILED:
                raise
            raise PermanentError(Reason.CHECKSUM_MISMATCH, error.message) from None
    await verify_readable(path, format, encryption_key)
    return sha256


async def run_restore(request: RestoreRequest) -> RestoreResult:
    """Restore the artifact into `request.target` with pg_restore; raise OperationError on failure.

    Reasons: those of check_artifact (when `check_checksum`), the connection failures of
    classify_failure (retryable), "RestoreFailed" with pg_restore's last error, and "Timeout".
    """
    _check_request(request)
    started = time.monotonic()
    deadline = asyncio.timeout(request.timeout)
    sha256 = None
    try:
        async with deadline:
            if request.check_checksum:
                assert isinstance(request.artifact, Path), "a bucket's object is checked by check_object"
                sha256 = await check_artifact(
                    request.artifact, request.format, request.expected_sha256, request.encryption_key
                )
            await _restore(request)
    except TimeoutError:
        if not deadline.expired():
            raise
        raise RetryableError(
            Reason.TIMEOUT,
            f"restore into {request.target.display} did not finish within {request.timeout:g}s",
        ) from None
    return RestoreResult(duration_seconds=time.monotonic() - started, sha256=sha256)


async def database_exists(target: ConnectionTarget) -> bool:
    """Whether the target's database exists, asked in the server's maintenance database."""
    row = await _on_server(
        target,
        "SELECT 1 FROM pg_database WHERE datname = %s",
        [target.dbname],
        failed_reason=RestoreReason.QUERY_FAILED,
    )
    return row is not None


async def create_database(target: ConnectionTarget) -> None:
    """Create the target's database, owned by the target's user."""
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.dbname))
    await _on_server(target, statement, failed_reason=RestoreReason.CREATE_DATABASE_FAILED)


async def drop_database(target: ConnectionTarget) -> None:
    """Drop the target's database if it exists, ending its sessions first; never a system database."""
    if target.dbname in _PROTECTED_DATABASES:
        raise PermanentError(Reason.INVALID_REQUEST, f"refusing to drop the system database {target.display}")
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target.dbname))
    await _on_server(target, statement, failed_reason=RestoreReason.DROP_DATABASE_FAILED)


async def is_empty(target: ConnectionTarget) -> bool:
    """Whether the target database has no tables, views, sequences, functions or types of its own."""
    row = await _query_one(target, _HAS_USER_OBJECTS, failed_reason=RestoreReason.QUERY_FAILED)
    return row is not None and not row[0]


async def run_verification_queries(
    target: ConnectionTarget,
    queries: Sequence[VerificationQuery],
    *,
    statement_timeout: float = QUERY_TIMEOUT_SECONDS,
) -> list[QueryOutcome]:
    """Run each query in its own read-only transaction under `statement_timeout` (seconds).

    A query that fails, times out or returns other than one value is a failed outcome; only
    failing to connect raises (OperationError, classified like pg_restore's).
    """
    if not queries:
        return []
    conn = await connect(target, RestoreReason.QUERY_FAILED)
    async with conn:
        await conn.set_read_only(True)
        return [await _run_query(conn, query, statement_timeout) for query in queries]


# ---------------------------------------------------------------- restoring


def _is_artifact(path: Path, format: ArtifactFormat) -> bool:
    return path.is_dir() if format == "directory" else path.is_file()


def _check_request(request: RestoreRequest) -> None:
    if request.format not in ("custom", "directory"):
        raise PermanentError(Reason.INVALID_REQUEST, f"unknown artifact format {request.format!r}")
    if request.jobs < 1:
        raise PermanentError(Reason.INVALID_REQUEST, "jobs must be at least 1")
    if request.format == "directory" and request.encryption_key is not None:
        raise PermanentError(Reason.ENCRYPTION_UNSUPPORTED, "encryption is supported with format custom only")


def _restore_argv(request: RestoreRequest) -> list[str]:
    return [
        "pg_restore",
        "--no-password",
        "--no-owner",
        "--exit-on-error",
        # Empty: libpq takes the database from PGDATABASE, like every other connection setting.
        "--dbname=",
        *(["--clean", "--if-exists"] if request.clean else []),
        *([f"--jobs={request.jobs}"] if request.jobs > 1 else ["--single-transaction"]),
    ]


async def _restore(request: RestoreRequest) -> None:
    """pg_restore, watched for lock waits when `lock_timeout` is set. (The archive itself sets
    lock_timeout to 0, as pg_dump writes it, so the server's own timeout cannot be used.)"""
    limit = request.lock_timeout
    if limit is None:
        return await _run_pg_restore(request)
    name = f"{APPLICATION_NAME} restore {secrets.token_hex(6)}"
    watching = asyncio.ensure_future(_watch_lock_waits(request.target, name, limit))
    request = replace(request, target=request.target.with_application_name(name))
    restoring = asyncio.ensure_future(_run_pg_restore(request))
    try:
        await asyncio.wait({restoring, watching}, return_when=asyncio.FIRST_COMPLETED)
        if watching.done():
            watching.result()  # raises LockTimeout: leaving cancels pg_restore
        await restoring
    finally:
        for task in (restoring, watching):
            task.cancel()
        await asyncio.gather(restoring, watching, return_exceptions=True)


async def _watch_lock_waits(target: ConnectionTarget, name: str, limit: float) -> None:
    """Raises LockTimeout once the session named `name` has waited for a lock for `limit` seconds,
    naming the sessions that hold it."""
    maintenance = target.with_database(MAINTENANCE_DATABASE)
    waiting_since = None
    while True:
        await asyncio.sleep(min(LOCK_POLL_SECONDS, limit / 2))
        try:
            row = await _query_one(maintenance, _LOCK_WAIT, [name], failed_reason=RestoreReason.QUERY_FAILED)
        except OperationError:
            continue  # the watch is advice: pg_restore's own outcome decides
        if not row or not row[0]:
            waiting_since = None
            continue
        now = time.monotonic()
        waiting_since = waiting_since or now
        if now - waiting_since >= limit:
            holders = row[1] or "another session"
            raise RetryableError(
                Reason.LOCK_TIMEOUT,
                f"waited {limit:g}s for a lock on {target.display} held by {holders}",
            )


async def _run_pg_restore(request: RestoreRequest) -> None:
    argv, stored, key = _restore_argv(request), request.artifact, request.encryption_key
    if isinstance(stored, Path) and (
        request.format == "directory" or await in_thread(is_plain_archive, stored, key)
    ):
        await _pg_restore([*argv, str(stored)], request.target)
    elif request.jobs > 1:
        # Parallel workers seek in the archive, which a pipe cannot do.
        async with _decrypted_copy(stored, key, request.scratch_dir) as plaintext:
            await _pg_restore([*argv, str(plaintext)], request.target)
    else:
        async with ClientTool.start(argv, request.target, stdin=asyncio.subprocess.PIPE) as restore:
            async with aclosing(read_plaintext(stored, key)) as chunks:
                async for chunk in chunks:
                    if not await restore.feed(chunk):
                        break  # pg_restore stopped reading; its exit status says why
            await restore.close_stdin()
            await restore.check(lambda stderr: _restore_failed(stderr, request.target))


async def _pg_restore(argv: list[str], target: ConnectionTarget) -> None:
    async with ClientTool.start(argv, target) as restore:
        await restore.check(lambda stderr: _restore_failed(stderr, target))


def _restore_failed(stderr: str, target: ConnectionTarget) -> OperationError:
    return classify_failure("pg_restore", stderr, target, failed_reason=RestoreReason.RESTORE_FAILED)


@asynccontextmanager
async def _decrypted_copy(
    artifact: StoredBytes, key: bytes | None, scratch_dir: Path | None
) -> AsyncIterator[Path]:
    """The artifact's plaintext (decrypted, decompressed) in a scratch_folder, removed on leaving."""
    async with scratch_folder(scratch_dir, SCRATCH_FOLDER_PREFIX) as folder:
        plaintext = folder / "plaintext.dump"
        with disk_errors(plaintext):
            fd = os.open(plaintext, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                async with aclosing(read_plaintext(artifact, key)) as chunks:
                    async for chunk in chunks:
                        await in_thread(out.write, chunk)
        yield plaintext


# ---------------------------------------------------------------- databases


async def _on_server(
    target: ConnectionTarget,
    statement: LiteralString | sql.Composed,
    params: Sequence[Any] = (),
    *,
    failed_reason: StrEnum,
) -> tuple[Any, ...] | None:
    """_query_one in the maintenance database of the target's server, with the same credentials."""
    maintenance = target.with_database(MAINTENANCE_DATABASE)
    return await _query_one(maintenance, statement, params, failed_reason=failed_reason)


async def _query_one(
    target: ConnectionTarget,
    statement: LiteralString | sql.Composed,
    params: Sequence[Any] = (),
    *,
    failed_reason: StrEnum,
) -> tuple[Any, ...] | None:
    """Run one statement outside a transaction; its first row, if it returns rows."""
    try:
        async with await psycopg.AsyncConnection.connect(target.conninfo(), autocommit=True) as conn:
            cursor = await conn.execute(statement, params or None)
            return await cursor.fetchone() if cursor.description else None
    except psycopg.Error as error:
        raise classify_failure("PostgreSQL", str(error), target, failed_reason=failed_reason) from None


# ---------------------------------------------------------------- verification queries


async def _run_query(
    conn: psycopg.AsyncConnection[Any], query: VerificationQuery, timeout: float
) -> QueryOutcome:
    try:
        async with conn.transaction(force_rollback=True):
            await conn.execute(
                "SELECT set_config('statement_timeout', %s, true)", [f"{round(timeout * 1000)}ms"]
            )
            # Prepared, so the text must be one statement: nothing can follow a COMMIT outside
            # the read-only transaction.
            cursor = await conn.execute(query.sql, prepare=True)
            result = cursor.pgresult  # raw text, exactly as PostgreSQL prints the value
            rows, columns = (result.ntuples, result.nfields) if result else (0, 0)
            raw = result.get_value(0, 0) if result and (rows, columns) == (1, 1) else None
    except psycopg.Error as error:
        detail = error.diag.message_primary or str(error)
        return QueryOutcome(query.name, passed=False, value=None, message=one_line(detail))
    if (rows, columns) != (1, 1):
        message = f"expected one row with one column, got {rows} row(s) of {columns} column(s)"
        return QueryOutcome(query.name, passed=False, value=None, message=message)
    if raw is None:
        return QueryOutcome(query.name, passed=False, value=None, message="the query returned NULL")
    value = raw.decode(conn.info.encoding, errors="replace")
    problem = _unmet(query.expect, value)
    return QueryOutcome(query.name, problem is None, one_line(value, _MAX_VALUE_CHARS), problem)


def _unmet(expect: VerificationExpectation, value: str) -> str | None:
    """Why `value` (as PostgreSQL prints it) does not meet `expect`; None when it does."""
    shown = one_line(value, _MAX_VALUE_CHARS)
    if expect.equals is not None and value != expect.equals:
        return f"expected {expect.equals!r}, got {shown!r}"
    if expect.min is None and expect.max is None:
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        number = Decimal("NaN")
    if number.is_nan():
        return f"expected a number, got {shown!r}"
    if expect.min is not None and number < expect.min:
        return f"{shown} is less than the minimum {expect.min}"
    if expect.max is not None and number > expect.max:
        return f"{shown} is more than the maximum {expect.max}"
    return None
