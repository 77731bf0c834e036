"""One WalArchive's pg_receivewal: a child process of the operator, restarted with backoff.

pg_receivewal streams the server's WAL on a physical slot into `spool`: a segment being written is
`<segment>.partial`, renamed to its final name once complete and synced; the uploader takes it from
there. On a restart it resumes where the spool's newest segment ends, or at the slot's restart_lsn
when the spool is empty, so a segment the uploader already removed is streamed again only if the
slot still holds it (and the uploader then finds it archived).

The password reaches pg_receivewal through PGPASSWORD only (never argv), the connection carries
`application_name` (what `synchronous_standby_names` lists), and the child dies with the operator
(PR_SET_PDEATHSIG), so a killed operator leaves no receiver holding the slot. The slot is created
only when `create_slot` says so: otherwise a missing slot is reported (`last_error`, SlotMissing)
and the caller decides whether that is a gap.
"""

import asyncio
import os
import re
import signal
from contextlib import suppress
from pathlib import Path

from habitat_operator.api.wal import WalReason
from habitat_operator.engines.postgres.client_tools import ClientTool, classify_failure, meaningful_line
from habitat_operator.engines.postgres.replication import (
    REPLICATION_REFUSED,
    check_slot_name,
    create_slot,
    slot_state,
)
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.threads import in_thread
from habitat_operator.errors import OperationError, PermanentError, RetryableError

FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
SETTLE_SECONDS = 3.0  # a receiver up this long has connected: its earlier error is history
HEALTHY_SECONDS = 60.0  # a receiver up this long restarts its backoff from the first delay
STOP_GRACE_SECONDS = 10.0

_SLOT_MISSING = re.compile(r'replication slot "[^"]*" does not exist')
_WAL_REMOVED = re.compile(
    r"has already been removed|can no longer get changes from replication slot|slot has been invalidated"
)


class WalReceiver:
    """pg_receivewal on `slot` into `spool`, kept running between `start()` and `stop()`."""

    def __init__(
        self,
        target: ConnectionTarget,
        slot: str,
        spool: Path,
        application_name: str,
        synchronous: bool = False,
        *,
        create_slot: bool = False,
        first_backoff: float = FIRST_BACKOFF_SECONDS,
        max_backoff: float = MAX_BACKOFF_SECONDS,
    ) -> None:
        self.slot = check_slot_name(slot)
        self.spool = spool
        self.synchronous = synchronous
        self.create_slot = create_slot
        self._target = target.with_application_name(application_name)
        self._backoff = (first_backoff, max_backoff)
        self._task: asyncio.Task[None] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()
        self._attempted = asyncio.Event()
        self.last_error: OperationError | None = None
        self.restarts = 0

    @property
    def running(self) -> bool:
        """Whether pg_receivewal is up now (connected, or about to be)."""
        return self._process is not None and self._process.returncode is None

    def argv(self) -> list[str]:
        argv = ["pg_receivewal", "--directory", str(self.spool), "--slot", self.slot]
        argv += ["--no-loop", "--no-password"]  # this class restarts it; libpq never prompts
        return argv + (["--synchronous"] if self.synchronous else [])

    async def start(self) -> None:
        """Start supervising; returns once the first pg_receivewal was started (or failed to)."""
        if self._task is not None and not self._task.done():
            return
        self._stopping.clear()
        self._attempted.clear()
        await in_thread(self.spool.mkdir, mode=0o700, parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._supervise(), name=f"pg_receivewal {self.slot}")
        attempted = asyncio.ensure_future(self._attempted.wait())
        try:
            await asyncio.wait([attempted, self._task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            attempted.cancel()

    async def stop(self) -> None:
        """Stop pg_receivewal (SIGINT: it syncs what it received), killing it after a grace period."""
        self._stopping.set()
        if self._task is None:
            return
        process = self._process
        if process is not None and process.returncode is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), STOP_GRACE_SECONDS)
        except TimeoutError:
            self._task.cancel()  # ClientTool kills the process group on the way out
            with suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self._backoff[0]
        while not self._stopping.is_set():
            began = loop.time()
            try:
                await self._run_once()
            except OperationError as error:
                self.last_error = error
            except Exception as error:  # the supervisor outlives any one attempt
                self.last_error = PermanentError(
                    WalReason.RECEIVER_FAILED,
                    self._target.redact(f"pg_receivewal could not run: {type(error).__name__}: {error}"),
                )
            finally:
                self._process = None
                self._attempted.set()
            if self._stopping.is_set():
                break
            if loop.time() - began >= HEALTHY_SECONDS:
                delay = self._backoff[0]
            self.restarts += 1
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, self._backoff[1])

    async def _run_once(self) -> None:
        if self.create_slot and await slot_state(self._target, self.slot) is None:
            await create_slot(self._target, self.slot)
        if self._stopping.is_set():
            return
        async with ClientTool.start(self.argv(), self._target) as tool:
            self._process = tool.process
            self._attempted.set()
            settled = asyncio.get_running_loop().call_later(SETTLE_SECONDS, self._settled, tool.process)
            try:
                await tool.check(self._failure)
            finally:
                settled.cancel()
        if not self._stopping.is_set():
            raise RetryableError(
                WalReason.RECEIVER_FAILED, "pg_receivewal stopped: the server ended the stream"
            )

    def _settled(self, process: asyncio.subprocess.Process) -> None:
        if process is self._process and process.returncode is None:
            self.last_error = None

    def _failure(self, stderr: str) -> OperationError:
        stderr = self._target.redact(stderr)
        lowered, line = stderr.lower(), meaningful_line(stderr)
        display = self._target.display
        if _SLOT_MISSING.search(lowered):
            return PermanentError(WalReason.SLOT_MISSING, f"slot {self.slot} does not exist on {display}")
        if _WAL_REMOVED.search(lowered):
            return PermanentError(
                WalReason.SEGMENT_MISSING, f"{display} no longer has WAL the slot {self.slot} needs: {line}"
            )
        if REPLICATION_REFUSED.search(lowered):
            return PermanentError(
                WalReason.REPLICATION_REFUSED, f"{display} refuses replication to this role: {line}"
            )
        return classify_failure(
            "pg_receivewal", stderr, self._target, failed_reason=WalReason.RECEIVER_FAILED
        )
