"""One reconciliation of a Migration: bring its database to the target version, or say why not.

A Migration converges; it does not run once (the convergent policy, controllers/base/convergent.py).
Each look reads the source and the history, plans, lints, and (unless `plan`) applies what is
pending. The order protects the database: the plan is refused whole before anything runs (drift,
a dirty version, a missing down script, lint under `enforce`); the safety Backup succeeds before
the lock is taken; under the database's advisory lock (shared with Restore, on its own session) the
history is read again and the plan made again, so a second Migration that waited finds its versions
applied and runs nothing twice.
"""

from __future__ import annotations

import time
from collections import Counter
from enum import StrEnum

import structlog

from habitat_operator import names, timestamps
from habitat_operator.api.common import Phase, Reason, RetryPolicy, qualified
from habitat_operator.api.migration import (
    MIGRATION,
    AppliedMigration,
    DirtyAction,
    LintFinding,
    LintMode,
    MigrationReason,
    MigrationSpec,
    MigrationStatus,
)
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.base import kube, owned_backup
from habitat_operator.controllers.base.convergent import STOPPED_SECONDS, ConvergentRun
from habitat_operator.controllers.base.core import Recheck, RetryLater
from habitat_operator.controllers.base.credentials import read_connection
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.controllers.base.status import Edit
from habitat_operator.controllers.migration import metrics, source
from habitat_operator.controllers.migration.engines import POSTGRES, History, MigrationEngines
from habitat_operator.controllers.migration.plan import UP, Plan, clean_version, make_plan
from habitat_operator.durations import parse_duration
from habitat_operator.engines.postgres.lint import Finding
from habitat_operator.engines.postgres.migrations import HistoryRow, MigrationFailed, Timeouts
from habitat_operator.engines.threads import in_thread
from habitat_operator.errors import OperationError, PermanentError, one_line

# A converged Migration looks again hourly (drift); spec and ConfigMap changes wake it at once.
IDLE_SECONDS = 3600.0
WAIT_SECONDS = 2.0  # for the database lock, or the safety Backup
BACKUP_FOR_LABEL = qualified("backup-before-migration")  # the Migration's uid
LISTED = 200
RESTORE_POINT_NAME_LIMIT = 63  # bytes; PostgreSQL refuses a longer name (MAXFNAMELEN)


log = structlog.get_logger(__name__)


def restore_point_name(migration: str, current: int, target: int) -> str:
    """`habitat-<migration>-<from>-to-<to>`, within the 63 bytes a restore point's name may have."""
    return names.fit(f"habitat-{migration}-{current}-to-{target}", RESTORE_POINT_NAME_LIMIT)


def _ms(duration: str | None) -> int | None:
    return None if duration is None else round(parse_duration(duration).total_seconds() * 1000)


class MigrationRun(ConvergentRun[MigrationSpec, MigrationStatus]):
    """One look at one Migration object; build one per reconciliation with the latest body."""

    info = MIGRATION
    spec_model = MigrationSpec
    status_model = MigrationStatus

    def __init__(
        self,
        body: kube.JsonDict,
        config: OperatorConfig,
        slots: OperationSlots,
        engines: MigrationEngines = POSTGRES,
    ) -> None:
        super().__init__(body, config, slots)
        self.engines = engines
        self.uid: str = body["metadata"]["uid"]
        self.dirty: int | None = None
        self.digest: str | None = None
        self.lint_findings: list[LintFinding] | None = None

    @property
    def session_name(self) -> str:
        """application_name of the session that runs this object's migrations (63 bytes at most)."""
        return f"habitat-migration {self.uid}"

    @property
    def applied_by(self) -> str:
        return f"{self.namespace}/{self.name} uid={self.uid}"

    # ---------------------------------------------------------------- the policy's hooks

    def retry_policy(self, spec: MigrationSpec) -> RetryPolicy:
        return spec.retry

    def attempts(self) -> int:
        return self.status.attempts or 0

    def retry_edits(self, attempts: int, message: str) -> tuple[Edit[MigrationStatus], ...]:
        def retrying(status: MigrationStatus) -> None:
            status.attempts, status.message = attempts, message

        return (retrying,)

    def record_failure(self, error: OperationError, final: bool) -> None:
        """A run that ran and failed, or used up its retries, counts; a refused plan does not."""
        if final and (isinstance(error, MigrationFailed) or error.retryable):
            metrics.MIGRATION_RUNS.labels(self.namespace, self.name, "failure").inc()

    async def retry_or_fail(self, spec: MigrationSpec, error: OperationError) -> RetryLater | None:
        if isinstance(error, MigrationFailed):
            self.dirty = error.version if error.dirty else None
        return await super().retry_or_fail(spec, error)

    async def fail(self, reason: StrEnum, message: str, *edits: Edit[MigrationStatus]) -> RetryLater:
        """Stalled and Failed until the spec or the source changes."""
        dirty = self.dirty if reason is MigrationReason.DIRTY else None
        if dirty is not None:
            metrics.MIGRATION_DIRTY.labels(self.namespace, self.name).set(1)
        message = one_line(message)

        def failed(status: MigrationStatus) -> None:
            status.message, status.attempts = message, None
            if dirty is not None:
                status.dirty_version = dirty

        return await super().fail(reason, message, *edits, failed)

    # ---------------------------------------------------------------- the look

    async def execute(self, spec: MigrationSpec) -> RetryLater:
        files = await source.load(self.namespace, spec.source)
        self.digest = digest = source.digest(files)

        def read(status: MigrationStatus) -> None:
            status.source_digest = digest

        self.reporter.carry(read)
        if self._inputs_failed_already(digest):
            return Recheck(STOPPED_SECONDS)
        target = await read_connection(self.namespace, spec.database.secret_ref)
        database = target.display

        def connected(status: MigrationStatus) -> None:
            status.database = database

        self.reporter.carry(connected)
        timeouts = Timeouts(_ms(spec.lock_timeout), _ms(spec.statement_timeout))
        async with self.engines.connect(target, self.session_name, spec.history_table, timeouts) as session:
            history = await session.history()
        plan = await self._plan(files, history, spec)
        findings = await self._lint(spec, plan)
        if spec.plan:
            await self._planned(plan, findings)
            return Recheck(IDLE_SECONDS)
        if findings and spec.lint.mode is LintMode.ENFORCE:
            raise PermanentError(
                MigrationReason.LINT_REFUSED,
                f"lint.mode is enforce and the linter found {_summary(findings)}; nothing was applied",
            )
        resolving = _resolution_due(history, spec)
        if not (plan.steps or plan.baseline or resolving):
            await self._at_target(plan, None)
            return Recheck(IDLE_SECONDS)
        if spec.backup_before and plan.steps and not await self._backup_done(spec, plan):
            return RetryLater(WAIT_SECONDS)
        async with (
            self.slot(target.display),
            self.engines.lock(target, f"migration {self.namespace}/{self.name}") as lock,
        ):
            if not lock.acquired:
                holder = lock.holder

                def waiting(status: MigrationStatus) -> None:
                    status.waiting_for = holder

                await self.reporter.write(
                    "reconciling",
                    Phase.PENDING,
                    Reason.WAITING_FOR_LOCK,
                    lock.waiting_message(target.display),
                    waiting,
                )
                return RetryLater(WAIT_SECONDS)
            async with self.engines.connect(
                target, self.session_name, spec.history_table, timeouts
            ) as session:
                plan, applied = await self._run(session, spec, files)
        await self._at_target(plan, applied)
        return Recheck(IDLE_SECONDS)

    async def _plan(
        self, files: list[source.MigrationFile], history: list[HistoryRow], spec: MigrationSpec
    ) -> Plan:
        self.dirty = next((row.version for row in history if row.dirty), None)
        clean = clean_version(history)

        def cleanly_at(status: MigrationStatus) -> None:
            status.current_version = clean  # shown even if the plan is refused

        self.reporter.carry(cleanly_at)
        plan = await in_thread(make_plan, files, history, spec)  # parses the pending scripts
        self.dirty = None  # resolved by the spec, if it was dirty

        def planned(status: MigrationStatus) -> None:
            status.current_version, status.target_version = plan.current, plan.target
            status.pending, status.pending_count = plan.pending[:LISTED] or None, len(plan.steps)

        self.reporter.carry(planned)
        metrics.MIGRATION_PENDING.labels(self.namespace, self.name).set(len(plan.steps))
        return plan

    async def _run(
        self, session: History, spec: MigrationSpec, files: list[source.MigrationFile]
    ) -> tuple[Plan, list[AppliedMigration]]:
        """Under the lock: ends a killed run's session, records resolutions and baselines, plans again
        on the history as it is now, and runs each step in order; returns the plan it ran."""
        await session.end_leftovers(self.session_name)
        await session.ensure_history()
        history = await session.history()
        await self._resolve(session, spec, history)
        plan = await self._plan(files, await session.history(), spec)
        for script in plan.baseline:
            await session.baseline(script, self.applied_by)
        if not plan.steps:
            return plan, []
        verb = "rolling back" if plan.rollback else "applying"
        summary = f"{verb} {_versions(plan.pending)}: version {plan.current} to {plan.target}"
        reason = MigrationReason.ROLLING_BACK if plan.rollback else MigrationReason.APPLYING

        def running(status: MigrationStatus) -> None:
            status.waiting_for = None

        await self.reporter.write("reconciling", Phase.RUNNING, reason, summary, running)
        await kube.event(self.body, "Normal", Reason.STARTED, summary)
        await self._restore_point(session, plan)
        applied: list[AppliedMigration] = []
        recorded = sorted(plan.recorded)
        started = time.monotonic()
        try:
            for step in plan.steps:
                if step.direction == UP:
                    duration = await session.apply(step.script, self.applied_by)
                    recorded.append(step.script.version)
                else:
                    duration = await session.revert(step.script)
                    recorded.remove(step.script.version)
                applied.append(
                    AppliedMigration(
                        version=step.script.version,
                        name=step.script.name,
                        direction=step.direction,
                        duration_ms=duration,
                        checksum=step.script.checksum,
                    )
                )
        finally:
            metrics.MIGRATION_DURATION.labels(self.namespace, self.name).observe(time.monotonic() - started)
            current, last = (
                max(recorded, default=0),
                timestamps.now() if applied else self.status.last_applied_at,
            )
            digest = self.digest if applied else self.status.applied_source_digest

            def ran(status: MigrationStatus) -> None:
                status.applied, status.current_version = applied[-LISTED:] or None, current
                status.last_applied_at, status.applied_source_digest = last, digest

            self.reporter.carry(ran)
        return plan, applied

    async def _restore_point(self, session: History, plan: Plan) -> None:
        """Names the moment before anything is applied, for a point-in-time Restore to return to. A
        server that refuses (the role may not run pg_create_restore_point, wal_level is minimal)
        gets a Warning Event, and the run goes on: the restore point is a convenience, not a guard."""
        name = restore_point_name(self.name, plan.current, plan.target)
        made: str | None = name
        try:
            await session.create_restore_point(name)
        except OperationError as error:
            made = None
            message = f"no restore point before this run: {error.message}"
            await kube.event(self.body, "Warning", MigrationReason.RESTORE_POINT_FAILED, message)

        def marked(status: MigrationStatus) -> None:
            status.restore_point = made

        self.reporter.carry(marked)

    async def _resolve(self, session: History, spec: MigrationSpec, history: list[HistoryRow]) -> None:
        if not _resolution_due(history, spec):
            return
        assert spec.resolve_dirty is not None
        version, action = spec.resolve_dirty.version, spec.resolve_dirty.action
        if action is DirtyAction.MARK_APPLIED:
            await session.mark_clean(version)
        else:
            await session.forget(version)
        message = f"dirty version {version} resolved by hand ({action.value})"
        self.log.info("dirty version resolved", version=version, action=action.value)
        await kube.event(self.body, "Normal", MigrationReason.DIRTY_RESOLVED, message)

    async def _lint(self, spec: MigrationSpec, plan: Plan) -> list[Finding]:
        skip = list(spec.lint.skip)
        # The operator sets these for every migration; a file need not.
        if spec.lock_timeout:
            skip.append("require-lock-timeout")
        if spec.statement_timeout:
            skip.append("require-statement-timeout")
        findings = await self.engines.lint([step.script for step in plan.steps], skip)
        metrics.set_lint_findings(self.namespace, self.name, Counter(f.rule for f in findings))
        if plan.steps:
            listed = [
                LintFinding(rule=f.rule, version=f.version, line=f.line, message=f.message)
                for f in findings[:LISTED]
            ] or None
            self.lint_findings = listed

            def linted(status: MigrationStatus) -> None:
                status.lint_findings = listed

            self.reporter.carry(linted)
            if findings and self._lint_is_news():
                await kube.event(self.body, "Warning", MigrationReason.LINT_FINDINGS, _summary(findings))
        return findings

    def _lint_is_news(self) -> bool:
        """One Event per run: not again while the same run waits for a lock or a Backup."""
        return self.lint_findings != self.status.lint_findings or (
            self.status.source_digest != self.digest
            or self.status.observed_generation != self.reporter.generation
        )

    async def _planned(self, plan: Plan, findings: list[Finding]) -> None:
        verb = "revert" if plan.rollback else "apply"
        pending = _versions(plan.pending) if plan.steps else "nothing"
        lint_part = f"; the linter found {_summary(findings)}" if findings else ""
        await self.reporter.write(
            "ready",
            Phase.PLANNED,
            MigrationReason.PLANNED,
            f"plan: {verb} {pending} (version {plan.current} to {plan.target}){lint_part}; nothing applied",
        )

    async def _at_target(self, plan: Plan, applied: list[AppliedMigration] | None) -> None:
        metrics.MIGRATION_CURRENT_VERSION.labels(self.namespace, self.name).set(plan.target)
        metrics.MIGRATION_PENDING.labels(self.namespace, self.name).set(0)
        metrics.MIGRATION_DIRTY.labels(self.namespace, self.name).set(0)
        message = f"at version {plan.target}"
        if applied:
            total = sum(a.duration_ms for a in applied) / 1000
            message = (
                f"{applied[0].direction} {_versions([a.version for a in applied])} in {total:.1f}s; {message}"
            )
            metrics.MIGRATION_RUNS.labels(self.namespace, self.name, "success").inc()
            self.log.info("migration run succeeded", detail=message)
            await kube.event(self.body, "Normal", Reason.SUCCEEDED, message)

        def converged(status: MigrationStatus) -> None:
            status.current_version, status.pending, status.pending_count = plan.target, None, 0
            status.waiting_for = status.dirty_version = status.attempts = status.message = None

        await self.reporter.write("ready", Phase.READY, MigrationReason.AT_TARGET, message, converged)

    async def _backup_done(self, spec: MigrationSpec, plan: Plan) -> bool:
        """A Backup of the database for this run (from the current to the target version), owned by
        the Migration and labelled with its uid; True once it has succeeded."""
        assert spec.backup_before is not None
        name = names.fit(f"{self.name}-v{plan.current}-to-v{plan.target}-{self.uid[:8]}", 253)

        def backing_up(status: MigrationStatus) -> None:
            status.backup = name

        self.reporter.carry(backing_up)
        backup = owned_backup.BackupFirst(
            name,
            BACKUP_FOR_LABEL,
            "Backup",
            "this Migration's",
            "nothing was applied",
            (Reason.STARTED, f"backing up the database first: Backup {name}"),
            MigrationReason.BACKUP_FAILED,
        )
        storage = spec.backup_before.storage.model_dump(by_alias=True, exclude_none=True)
        if await owned_backup.await_backup(
            self.body, backup, spec.database.model_dump(by_alias=True), storage
        ):
            return True
        await self.reporter.write(
            "reconciling", Phase.PENDING, MigrationReason.WAITING_FOR_BACKUP, f"waiting for Backup {name}"
        )
        return False

    def _inputs_failed_already(self, digest: str) -> bool:
        """Failed on this very spec and source: running it again would fail the same way."""
        status = self.status
        return (
            status.phase is Phase.FAILED
            and status.observed_generation == self.reporter.generation
            and status.source_digest == digest
        )


def _resolution_due(history: list[HistoryRow], spec: MigrationSpec) -> bool:
    resolve = spec.resolve_dirty
    return resolve is not None and any(row.dirty and row.version == resolve.version for row in history)


def _versions(versions: list[int]) -> str:
    shown = ", ".join(str(v) for v in versions[:10])
    more = f" and {len(versions) - 10} more" if len(versions) > 10 else ""
    return f"version{'s' if len(versions) > 1 else ''} {shown}{more}"


def _summary(findings: list[Finding]) -> str:
    shown = "; ".join(f"{f.rule} (version {f.version} line {f.line})" for f in findings[:10])
    more = f"; and {len(findings) - 10} more" if len(findings) > 10 else ""
    return f"{len(findings)} finding{'s' if len(findings) != 1 else ''}: {shown}{more}"
