"""pg_restore of a backup artifact into a database, and the database chores around a restore.

The artifact is checked (check_artifact) before anything touches the target. With one job the
restore is a single transaction, so a failure, timeout or kill leaves the target as it was;
parallel jobs trade that for speed.
"""

import asyncio
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from habitat_operator.api.restore import VerificationExpectation, VerificationQuery
from habitat_operator.conditions import one_line
from habitat_operator.ops.artifacts import disk_errors, partial_path
from habitat_operator.ops.backup import ArtifactFormat, read_plaintext, verify_checksum, verify_readable
from habitat_operator.ops.client_tools import ClientTool, classify_failure, in_thread
from habitat_operator.ops.errors import OperationError
from habitat_operator.ops.pguri import ConnectionTarget

MAINTENANCE_DATABASE = "postgres"
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
    restores in parallel but not in one transaction. `timeout` is in seconds.
    """

    target: ConnectionTarget
    artifact_path: Path
    format: ArtifactFormat = "custom"
    expected_sha256: str | None = None
    check_checksum: bool = True
    encryption_key: bytes | None = field(default=None, repr=False)
    jobs: int = 1
    clean: bool = False
    timeout: float = 3600.0


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
    if not await asyncio.to_thread(_is_artifact, path, format):
        raise OperationError("ArtifactNotFound", f"no {format}-format artifact at {path}")
    sha256 = None
    if checksum:
        try:
            sha256 = await verify_checksum(path, format, expected_sha256)
        except OperationError as error:
            if error.reason != "VerificationFailed":
                raise
            raise OperationError("ChecksumMismatch", error.message) from None
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
                sha256 = await check_artifact(
                    request.artifact_path, request.format, request.expected_sha256, request.encryption_key
                )
            await _restore(request)
    except TimeoutError:
        if not deadline.expired():
            raise
        raise OperationError(
            "Timeout",
            f"restore into {request.target.display} did not finish within {request.timeout:g}s",
            retryable=True,
        ) from None
    return RestoreResult(duration_seconds=time.monotonic() - started, sha256=sha256)


async def database_exists(target: ConnectionTarget) -> bool:
    """Whether the target's database exists, asked in the server's maintenance database."""
    row = await _on_server(
        target, "SELECT 1 FROM pg_database WHERE datname = %s", [target.dbname], failed_reason="QueryFailed"
    )
    return row is not None


async def create_database(target: ConnectionTarget) -> None:
    """Create the target's database, owned by the target's user."""
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.dbname))
    await _on_server(target, statement, failed_reason="CreateDatabaseFailed")


async def drop_database(target: ConnectionTarget) -> None:
    """Drop the target's database if it exists, ending its sessions first; never a system database."""
    if target.dbname in _PROTECTED_DATABASES:
        raise OperationError("InvalidRequest", f"refusing to drop the system database {target.display}")
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target.dbname))
    await _on_server(target, statement, failed_reason="DropDatabaseFailed")


async def is_empty(target: ConnectionTarget) -> bool:
    """Whether the target database has no tables, views, sequences, functions or types of its own."""
    row = await _query_one(target, _HAS_USER_OBJECTS, failed_reason="QueryFailed")
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
    try:
        conn = await psycopg.AsyncConnection.connect(target.conninfo(), autocommit=True)
    except psycopg.Error as error:
        raise classify_failure("PostgreSQL", str(error), target, failed_reason="QueryFailed") from None
    async with conn:
        await conn.set_read_only(True)
        return [await _run_query(conn, query, statement_timeout) for query in queries]


# ---------------------------------------------------------------- restoring


def _is_artifact(path: Path, format: ArtifactFormat) -> bool:
    return path.is_dir() if format == "directory" else path.is_file()


def _check_request(request: RestoreRequest) -> None:
    if request.format not in ("custom", "directory"):
        raise OperationError("InvalidRequest", f"unknown artifact format {request.format!r}")
    if request.jobs < 1:
        raise OperationError("InvalidRequest", "jobs must be at least 1")
    if request.format == "directory" and request.encryption_key is not None:
        raise OperationError("EncryptionUnsupported", "encryption is supported with format custom only")


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
    argv, path, key = _restore_argv(request), request.artifact_path, request.encryption_key
    if key is None:
        await _pg_restore([*argv, str(path)], request.target)
    elif request.jobs > 1:
        # Parallel workers seek in the archive, which a pipe cannot do.
        async with _decrypted_copy(path, key) as plaintext:
            await _pg_restore([*argv, str(plaintext)], request.target)
    else:
        async with ClientTool.start(argv, request.target, stdin=asyncio.subprocess.PIPE) as restore:
            async with aclosing(read_plaintext(path, key)) as chunks:
                async for chunk in chunks:
                    if not await restore.feed(chunk):
                        break  # pg_restore stopped reading; its exit status says why
            await restore.close_stdin()
            await restore.check(lambda stderr: _restore_failed(stderr, request.target))


async def _pg_restore(argv: list[str], target: ConnectionTarget) -> None:
    async with ClientTool.start(argv, target) as restore:
        await restore.check(lambda stderr: _restore_failed(stderr, target))


def _restore_failed(stderr: str, target: ConnectionTarget) -> OperationError:
    return classify_failure("pg_restore", stderr, target, failed_reason="RestoreFailed")


@asynccontextmanager
async def _decrypted_copy(artifact: Path, key: bytes) -> AsyncIterator[Path]:
    """The artifact's plaintext in a temporary file beside it, readable by us only, removed after.

    It carries a partial name, so a copy left by a crash is cleaned up like any partial artifact.
    """
    plaintext = partial_path(artifact)
    try:
        with disk_errors(plaintext):
            fd = os.open(plaintext, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                async with aclosing(read_plaintext(artifact, key)) as chunks:
                    async for chunk in chunks:
                        await in_thread(out.write, chunk)
        yield plaintext
    finally:
        await asyncio.to_thread(plaintext.unlink, missing_ok=True)


# ---------------------------------------------------------------- databases


async def _on_server(
    target: ConnectionTarget,
    statement: LiteralString | sql.Composed,
    params: Sequence[Any] = (),
    *,
    failed_reason: str,
) -> tuple[Any, ...] | None:
    """_query_one in the maintenance database of the target's server, with the same credentials."""
    maintenance = target.with_database(MAINTENANCE_DATABASE)
    return await _query_one(maintenance, statement, params, failed_reason=failed_reason)


async def _query_one(
    target: ConnectionTarget,
    statement: LiteralString | sql.Composed,
    params: Sequence[Any] = (),
    *,
    failed_reason: str,
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
