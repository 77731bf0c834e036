"""One reconciliation of a Migration: bring its database to the target version, or say why not.

A Migration converges; it does not run once. Each look reads the source and the history, plans,
lints, and (unless `plan`) applies what is pending. The order protects the database: the plan is
refused whole before anything runs (drift, a dirty version, a missing down script, lint under
`enforce`); the safety Backup succeeds before the lock is taken; under the database's advisory
lock (shared with Restore, on its own session) the history is read again and the plan made again,
so a second Migration that waited finds its versions applied and runs nothing twice.
"""

from __future__ import annotations

import time
from collections import Counter
from enum import StrEnum
from typing import Any

import structlog
from pydantic import ValidationError

from habitat_operator import timestamps
from habitat_operator.api.backup import BACKUP
from habitat_operator.api.common import Phase, Reason, qualified
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
from habitat_operator.controllers.base import kube, names, owned_backup
from habitat_operator.controllers.base.conditions import ConditionState
from habitat_operator.controllers.base.credentials import read_connection
from habitat_operator.controllers.base.lifecycle import RECHECK_SECONDS, backoff_seconds, unexpected
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.controllers.base.status import StatusReporter, read_status
from habitat_operator.controllers.base.validation import describe_validation_error
from habitat_operator.controllers.migration import metrics, source
from habitat_operator.controllers.migration.plan import UP, Plan, clean_version, make_plan
from habitat_operator.durations import parse_duration
from habitat_operator.engines.postgres.lint import Finding, lint
from habitat_operator.engines.postgres.locks import database_lock
from habitat_operator.engines.postgres.migrations import (
    HistoryRow,
    MigrationFailed,
    MigrationSession,
    Timeouts,
)
from habitat_operator.engines.threads import in_thread
from habitat_operator.errors import OperationError, PermanentError, RetryableError, WaitingError, one_line

# A converged Migration looks again hourly (drift); spec and ConfigMap changes wake it at once.
IDLE_SECONDS = 3600.0
# A failed one waits for a change of its spec or source; this only bounds the daemon's sleep.
STOPPED_SECONDS = 86400.0
WAIT_SECONDS = 2.0  # for the database lock, or the safety Backup
BACKUP_FOR_LABEL = qualified("backup-before-migration")  # the Migration's uid
LISTED = 200

log = structlog.get_logger(__name__)


def _ms(duration: str | None) -> int | None:
    return None if duration is None else round(parse_duration(duration).total_seconds() * 1000)


class MigrationRun:
    """One look at one Migration object; build one per reconciliation with the latest body."""

    def __init__(self, body: kube.JsonDict, config: OperatorConfig, slots: OperationSlots) -> None:
        meta = body["metadata"]
        self.body, self.config, self.slots = body, config, slots
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.reporter = StatusReporter(MIGRATION.plural, body, MigrationStatus)
        self.log = log.bind(kind=MIGRATION.kind, namespace=self.namespace, name=self.name)
        # Fields every status write of this look carries (what is known so far).
        self.fields: dict[str, Any] = {}
        self.dirty: int | None = None

    @property
    def status(self) -> MigrationStatus:
        return self.reporter.status

    @property
    def session_name(self) -> str:
        """application_name of the session that runs this object's migrations (63 bytes at most)."""
        return f"habitat-migration {self.uid}"

    @property
    def applied_by(self) -> str:
        return f"{self.namespace}/{self.name} uid={self.uid}"

    async def reconcile(self) -> float:
        """Seconds until the next look, unless something wakes the object earlier."""
        try:
            spec = MigrationSpec.model_validate(self.body.get("spec") or {})
        except ValidationError as error:
            await self._fail(PermanentError(Reason.INVALID_SPEC, describe_validation_error(error)))
            return STOPPED_SECONDS
        try:
            return await self._converge(spec)
        except WaitingError as error:
            await self._write("stalled", Phase.PENDING, error.reason, error.message)
            return RECHECK_SECONDS
        except MigrationFailed as error:
            self.dirty = error.version if error.dirty else None
            await self._fail(error, counted=True)
            return STOPPED_SECONDS
        except RetryableError as error:
            return await self._retry(spec, error)
        except OperationError as error:
            await self._fail(error)
            return STOPPED_SECONDS
        except Exception as error:  # nobody planned for it; it still ends in status, and is retried
            self.log.exception("unexpected error")
            return await self._retry(spec, unexpected(error))

    async def _converge(self, spec: MigrationSpec) -> float:
        files = await source.load(self.namespace, spec.source)
        self.fields["source_digest"] = digest = source.digest(files)
        if self._failed_before(digest):
            return STOPPED_SECONDS
        target = await read_connection(self.namespace, spec.database.secret_ref)
        self.fields["database"] = target.display
        timeouts = Timeouts(_ms(spec.lock_timeout), _ms(spec.statement_timeout))
        async with MigrationSession.connect(
            target, self.session_name, spec.history_table, timeouts
        ) as session:
            history = await session.history()
        plan = await self._plan(files, history, spec)
        findings = await self._lint(spec, plan)
        if spec.plan:
            await self._planned(plan, findings)
            return IDLE_SECONDS
        if findings and spec.lint.mode is LintMode.ENFORCE:
            raise PermanentError(
                MigrationReason.LINT_REFUSED,
                f"lint.mode is enforce and the linter found {_summary(findings)}; nothing was applied",
            )
        resolving = _resolution_due(history, spec)
        if not (plan.steps or plan.baseline or resolving):
            await self._at_target(plan, None)
            return IDLE_SECONDS
        if spec.backup_before and plan.steps and not await self._backup_done(spec, plan):
            return WAIT_SECONDS
        async with (
            self._slot(target.display),
            database_lock(target, f"migration {self.namespace}/{self.name}") as lock,
        ):
            if not lock.acquired:
                await self._write(
                    "reconciling",
                    Phase.PENDING,
                    Reason.WAITING_FOR_LOCK,
                    lock.waiting_message(target.display),
                    waiting_for=lock.holder,
                )
                return WAIT_SECONDS
            async with MigrationSession.connect(
                target, self.session_name, spec.history_table, timeouts
            ) as session:
                plan, applied = await self._run(session, spec, files)
        await self._at_target(plan, applied)
        return IDLE_SECONDS

    async def _plan(
        self, files: list[source.MigrationFile], history: list[HistoryRow], spec: MigrationSpec
    ) -> Plan:
        self.dirty = next((row.version for row in history if row.dirty), None)
        self.fields["current_version"] = clean_version(history)  # shown even if the plan is refused
        plan = await in_thread(make_plan, files, history, spec)  # parses the pending scripts
        self.dirty = None  # resolved by the spec, if it was dirty
        self.fields.update(
            current_version=plan.current,
            target_version=plan.target,
            pending=plan.pending[:LISTED] or None,
            pending_count=len(plan.steps),
        )
        metrics.MIGRATION_PENDING.labels(self.namespace, self.name).set(len(plan.steps))
        return plan

    async def _run(
        self, session: MigrationSession, spec: MigrationSpec, files: list[source.MigrationFile]
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
        await self._write("reconciling", Phase.RUNNING, reason, summary, waiting_for=None)
        await kube.event(self.body, "Normal", Reason.STARTED, summary)
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
            self.fields.update(
                applied=applied[-LISTED:] or None,
                current_version=max(recorded, default=0),
                last_applied_at=timestamps.now() if applied else self.status.last_applied_at,
                applied_source_digest=self.fields["source_digest"]
                if applied
                else self.status.applied_source_digest,
            )
        return plan, applied

    async def _resolve(
        self, session: MigrationSession, spec: MigrationSpec, history: list[HistoryRow]
    ) -> None:
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
        findings = await lint([step.script for step in plan.steps], skip)
        metrics.set_lint_findings(self.namespace, self.name, Counter(f.rule for f in findings))
        if plan.steps:
            self.fields["lint_findings"] = [
                LintFinding(rule=f.rule, version=f.version, line=f.line, message=f.message)
                for f in findings[:LISTED]
            ] or None
            if findings and self._lint_is_news():
                await kube.event(self.body, "Warning", MigrationReason.LINT_FINDINGS, _summary(findings))
        return findings

    def _lint_is_news(self) -> bool:
        """One Event per run: not again while the same run waits for a lock or a Backup."""
        return self.fields.get("lint_findings") != self.status.lint_findings or (
            self.status.source_digest != self.fields["source_digest"]
            or self.status.observed_generation != self.reporter.generation
        )

    async def _planned(self, plan: Plan, findings: list[Finding]) -> None:
        verb = "revert" if plan.rollback else "apply"
        pending = _versions(plan.pending) if plan.steps else "nothing"
        lint_part = f"; the linter found {_summary(findings)}" if findings else ""
        await self._write(
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
        await self._write(
            "ready",
            Phase.READY,
            MigrationReason.AT_TARGET,
            message,
            current_version=plan.target,
            pending=None,
            pending_count=0,
            waiting_for=None,
            dirty_version=None,
            attempts=None,
            message=None,
        )

    async def _backup_done(self, spec: MigrationSpec, plan: Plan) -> bool:
        """A Backup of the database for this run (from the current to the target version), owned by
        the Migration and labelled with its uid; True once it has succeeded."""
        assert spec.backup_before is not None
        name = names.fit(f"{self.name}-v{plan.current}-to-v{plan.target}-{self.uid[:8]}", 253)
        owned = await owned_backup.ensure(
            self.body,
            name,
            BACKUP_FOR_LABEL,
            spec.database.model_dump(by_alias=True),
            spec.backup_before.storage.model_dump(by_alias=True, exclude_none=True),
        )
        if owned.created:
            await kube.event(
                self.body, "Normal", Reason.STARTED, f"backing up the database first: Backup {name}"
            )
        if not owned.ours:
            raise PermanentError(
                MigrationReason.BACKUP_FAILED,
                f"Backup {name} exists but is not this Migration's; nothing was applied",
            )
        self.fields["backup"] = name
        backup = read_status(BACKUP.status_model, owned.body)
        if backup.phase is Phase.FAILED:
            why = getattr(backup, "message", None) or "see its status"
            raise PermanentError(
                MigrationReason.BACKUP_FAILED, f"Backup {name} failed ({why}); nothing was applied"
            )
        if backup.phase is Phase.SUCCEEDED:
            return True
        await self._write(
            "reconciling", Phase.PENDING, MigrationReason.WAITING_FOR_BACKUP, f"waiting for Backup {name}"
        )
        return False

    def _slot(self, database: str) -> Any:
        async def queued(why: str) -> None:
            await self._write("reconciling", Phase.PENDING, Reason.QUEUED, f"queued: {why}")

        return self.slots.hold(database, queued)

    def _failed_before(self, digest: str) -> bool:
        """Failed on this very spec and source: running it again would fail the same way."""
        status = self.status
        return (
            status.phase is Phase.FAILED
            and status.observed_generation == self.reporter.generation
            and status.source_digest == digest
        )

    async def _retry(self, spec: MigrationSpec, error: OperationError) -> float:
        attempts = (self.status.attempts or 0) + 1
        if attempts > spec.retry.limit:
            await self._fail(PermanentError(error.reason, f"{error.message}; no retries left"), counted=True)
            return STOPPED_SECONDS
        delay = backoff_seconds(spec.retry, attempts)
        message = f"{error.message}; retry {attempts}/{spec.retry.limit} in {delay:.0f}s"
        self.log.warning("attempt failed", reason=error.reason.value, error=error.message, retry_in=delay)
        await self._write(
            "reconciling", Phase.PENDING, error.reason, message, attempts=attempts, message=message
        )
        await kube.event(self.body, "Warning", error.reason, message)
        return delay

    async def _fail(self, error: OperationError, counted: bool = False) -> None:
        """Stalled and Failed until the spec or the source changes."""
        if counted:
            metrics.MIGRATION_RUNS.labels(self.namespace, self.name, "failure").inc()
        if error.reason is MigrationReason.DIRTY and self.dirty is not None:
            metrics.MIGRATION_DIRTY.labels(self.namespace, self.name).set(1)
            self.fields["dirty_version"] = self.dirty
        message = one_line(error.message)
        self.log.warning("migration failed", reason=error.reason.value, error=message)
        await self._write("stalled", Phase.FAILED, error.reason, message, message=message, attempts=None)
        await kube.event(self.body, "Warning", error.reason, message)

    async def _write(
        self, state: ConditionState, phase: Phase, reason: StrEnum, summary: str, **changes: Any
    ) -> None:
        await self.reporter.write(state, phase, reason, summary, **{**self.fields, **changes})


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
