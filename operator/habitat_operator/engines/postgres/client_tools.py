"""PostgreSQL's client tools (pg_dump, pg_restore) as child processes, and their failures as OperationErrors.

Shared by backups and restores: each tool runs in its own process group with credentials in its
environment only, and whatever it or libpq reports becomes one redacted line with a reason. The
engines' blocking work runs in ENGINE_POOL, never in the event loop's default executor, which the
operator's Kubernetes API calls need.
"""

import asyncio
import ctypes
import os
import pwd
import re
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from enum import StrEnum
from typing import Any, ParamSpec, TypeVar

import psycopg

from habitat_operator.api.backup import BackupReason
from habitat_operator.api.common import Reason
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.errors import OperationError, PermanentError, RetryableError

READ_SIZE = 1 << 20
_STDERR_TAIL_BYTES = 64 << 10

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_operator() -> None:
    """Runs in the child before exec: it gets SIGKILL when the operator dies, as in a pod, so an
    orphaned pg_restore cannot go on writing (or committing) behind the operator's back."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_P = ParamSpec("_P")
_T = TypeVar("_T")


class ClientTool:
    """A running pg_dump/pg_restore in its own process group, its stderr collected as it comes.

    Leaving `start()`'s block early (error, timeout, cancellation) kills the whole group, so
    parallel workers die with their leader.
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
        user: int | None = None,
    ) -> AsyncIterator["ClientTool"]:
        """`user` (a uid, when the operator is root) runs the tool as that user and its primary group."""
        group = pwd.getpwuid(user).pw_gid if user is not None else None
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdin,
                stdout=stdout,
                stderr=asyncio.subprocess.PIPE,
                env=_tool_env(target),
                start_new_session=True,
                preexec_fn=_die_with_operator,  # after the switch of user, which would clear it
                limit=READ_SIZE,
                user=user,
                group=group,
                extra_groups=[] if user is not None else None,
            )
        except FileNotFoundError:
            raise PermanentError(Reason.TOOL_MISSING, f"{argv[0]} is not installed or not on PATH") from None
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

    async def output(self) -> str:
        """Wait for the exit; the tail of what the tool wrote to stderr."""
        stderr = await self._stderr
        await self.process.wait()
        return stderr

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


# ---------------------------------------------------------------- failures

# (pattern in lower-cased stderr, reason, retryable); first match wins, so auth comes before the
# generic connection failure it is wrapped in. A missing role or database is a connection failure
# only when FATAL: as an ERROR it is a statement failing (e.g. a restored GRANT to a missing role).
_FAILURES = (
    (r"authentication failed|no password supplied|no pg_hba\.conf entry", Reason.AUTHENTICATION_FAILED, True),
    (r'fatal:\s+role "[^"]*" does not exist', Reason.AUTHENTICATION_FAILED, True),
    (r'fatal:\s+database "[^"]*" does not exist', Reason.DATABASE_NOT_FOUND, True),
    (r"no space left on device|disk quota exceeded", Reason.DISK_FULL, False),
    (
        r"connection refused|could not connect|could not translate host name|timeout expired"
        r"|no route to host|network is unreachable|server closed the connection unexpectedly"
        r"|the database system is (starting up|shutting down|in recovery mode)"
        r"|connection to server .* failed",
        Reason.DATABASE_UNREACHABLE,
        True,
    ),
)
_SUMMARIES = {
    Reason.AUTHENTICATION_FAILED: "authentication to {display} failed",
    Reason.DATABASE_NOT_FOUND: "database {display} does not exist",
    Reason.DISK_FULL: "no space left on device",
    Reason.DATABASE_UNREACHABLE: "cannot connect to {display}",
}


def classify_failure(
    tool: str, stderr: str, target: ConnectionTarget, *, failed_reason: StrEnum = BackupReason.DUMP_FAILED
) -> OperationError:
    """One-line, redacted OperationError for a failed connection, dump or restore of `target`.

    `stderr` is what libpq or a client tool reported; a failure that is not about reaching the
    database or disk space gets `failed_reason`, not retryable.
    """
    stderr = target.redact(stderr)
    line = meaningful_line(stderr)
    lowered = stderr.lower()
    for pattern, reason, retryable in _FAILURES:
        if re.search(pattern, lowered):
            summary = _SUMMARIES[reason].format(display=target.display)
            error_class = RetryableError if retryable else PermanentError
            return error_class(reason, f"{summary}: {line}")
    return PermanentError(failed_reason, f"{tool} failed on {target.display}: {line}")


async def connect(target: ConnectionTarget, failed_reason: StrEnum) -> psycopg.AsyncConnection[Any]:
    """An autocommit session on `target`; a failure to connect comes out as classify_failure says."""
    try:
        return await psycopg.AsyncConnection.connect(target.conninfo(), autocommit=True)
    except psycopg.Error as error:
        raise classify_failure("PostgreSQL", str(error), target, failed_reason=failed_reason) from None


def meaningful_line(stderr: str) -> str:
    """The last line reporting an error, else the last non-blank line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"error|fatal", line, re.IGNORECASE)]
    return (errors or lines or ["no error output"])[-1]
