"""One Restore object, from Pending to Succeeded or Failed; a drill restores into a scratch database.

The order protects the target: the source is resolved and its checksum checked before anything
touches the target; a non-empty target is refused without `force`, and backed up first (a safety
Backup object) unless told not to. A restore runs once: re-running means a new Restore, like a Job.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace

import structlog
from pydantic import ValidationError

from habitat_operator import kube, metrics
from habitat_operator.api import API_VERSION
from habitat_operator.api.restore import RestoreSpec
from habitat_operator.config import OperatorConfig
from habitat_operator.credentials import SecretError, read_secret_text
from habitat_operator.durations import parse_duration
from habitat_operator.ops import restore, restore_source
from habitat_operator.ops.artifacts import ArtifactStore
from habitat_operator.ops.backup_run import PLURAL as BACKUPS
from habitat_operator.ops.errors import OperationError
from habitat_operator.ops.lifecycle import RetryLater, end_failed, recheck_later
from habitat_operator.ops.pguri import ConnectionTarget
from habitat_operator.ops.schedules import series_name
from habitat_operator.status import TERMINAL_PHASES, StatusReporter
from habitat_operator.validation import describe_validation_error

PLURAL = "restores"
SAFETY_LABEL = "ops.habitat.dev/safety-backup-for"
WAIT_SECONDS = 5.0  # another restore into the same database, or the safety backup, to finish
RETRY_LIMIT = 2  # transient failures (database unreachable) before the restore fails
RETRY_BACKOFF_SECONDS = 15.0

log = structlog.get_logger(__name__)

# The operator is one process: which database each running restore writes to.
_restoring: dict[str, str] = {}


@dataclass(frozen=True)
class Run:
    """What the steps of one restore share."""

    body: kube.JsonDict
    reporter: StatusReporter
    series: str
    drill: bool = False

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])


def scratch_database_name(restore_name: str) -> str:
    """A drill's database: recognisable, a valid identifier, within PostgreSQL's 63 bytes."""
    return ("habitat_drill_" + re.sub(r"[^a-z0-9_]", "_", restore_name.lower()))[:63]


async def run_restore_object(body: kube.JsonDict, config: OperatorConfig) -> RetryLater | None:
    """Brings a Restore to a terminal phase; returns RetryLater while it must wait or retry."""
    status = body.get("status") or {}
    if status.get("phase") in TERMINAL_PHASES:
        return None
    run = Run(body, StatusReporter(PLURAL, body), series_name(body))
    try:
        spec = RestoreSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        await _fail(run, "InvalidSpec", describe_validation_error(error))
        return None
    run = replace(run, drill=spec.drill)
    reporter = run.reporter

    try:
        source = await restore_source.resolve(spec.source, run.namespace, ArtifactStore(config.backup_root))
        ref = spec.target.database.secret_ref
        target = ConnectionTarget(await read_secret_text(run.namespace, ref.name, ref.key))
    except SecretError as error:
        return await recheck_later(reporter, error.reason, str(error))
    except restore_source.SourceNotReady as error:
        return await recheck_later(reporter, "BackupNotReady", str(error))
    except OperationError as error:
        if error.reason == "BackupNotFound":
            return await recheck_later(reporter, error.reason, error.message)
        await _fail(run, error.reason, error.message)
        return None

    owner = _restoring.get(target.display)
    if owner is not None and owner != f"{run.namespace}/{run.name}":
        await reporter.write(
            "reconciling",
            "Pending",
            "WaitingForRestore",
            f"restore {owner} is writing to {target.display}",
            waitingFor=owner,
        )
        return RetryLater(WAIT_SECONDS)
    _restoring[target.display] = f"{run.namespace}/{run.name}"
    try:
        return await _restore(run, spec, source, target)
    finally:
        _restoring.pop(target.display, None)


async def _restore(
    run: Run, spec: RestoreSpec, source: restore_source.SourceArtifact, target: ConnectionTarget
) -> RetryLater | None:
    status = run.body.get("status") or {}
    attempts = int(status.get("attempts") or 0)
    resumed = status.get("phase") == "Running"
    if resumed:
        # Running with nobody running it: the operator stopped mid-restore.
        await kube.event(
            run.body, "Warning", "Interrupted", f"attempt {attempts} was interrupted; the operator restarted"
        )
        if spec.jobs > 1 and not spec.drill:
            # A parallel restore is not one transaction: the target may hold part of the artifact.
            await _fail(run, "Interrupted", _with_safety_hint(run, "the restore was interrupted midway"))
            return None

    # Nothing touches the target before the artifact is known to be intact.
    try:
        await restore.check_artifact(
            source.path,
            source.format.value,
            source.sha256,
            source.encryption_key,
            checksum=spec.verify.checksum,
        )
    except OperationError as error:
        if error.reason in ("ChecksumMismatch", "VerificationFailed"):
            metrics.RESTORE_VERIFICATION_FAILURES.labels(run.namespace, run.series).inc()
        await _fail(run, error.reason, f"{error.message}; the target was not touched")
        return None

    into = target
    if spec.drill:
        into = target.with_database(scratch_database_name(run.name))
        await restore.drop_database(into)  # a leftover of an interrupted drill
        await restore.create_database(into)
    elif not resumed:  # an interrupted attempt had checked (and backed up) the target already
        ready = await _prepare_target(run, spec, target, source)
        if isinstance(ready, RetryLater):
            return ready
        if not ready:
            return None

    attempts += 1
    started = time.monotonic()
    await run.reporter.write(
        "reconciling",
        "Running",
        "Restoring",
        f"attempt {attempts}: restoring {source.uri} into {into.display}",
        attempts=attempts,
        startedAt=kube.timestamp(kube.now()),
        target=target.display,
        scratchDatabase=into.dbname if spec.drill else None,
        waitingFor=None,
        restoredFrom={"backup": source.backup, "uri": source.uri, "sha256": source.sha256},
    )
    await kube.event(run.body, "Normal", "Started", f"restoring {source.uri} into {into.display}")
    try:
        await restore.run_restore(
            restore.RestoreRequest(
                target=into,
                artifact_path=source.path,
                format=source.format.value,
                expected_sha256=None,  # checked above, before the target was touched
                check_checksum=False,
                encryption_key=source.encryption_key,
                jobs=spec.jobs,
                # After an interruption the one transaction was rolled back; --clean also covers the
                # case where it had just committed.
                clean=spec.mode.clean or resumed,
                timeout=parse_duration(spec.timeout).total_seconds(),
            )
        )
        outcomes = await restore.run_verification_queries(into, spec.verify.queries)
    except OperationError as error:
        metrics.RESTORE_DURATION.labels(run.namespace, run.series).observe(time.monotonic() - started)
        if error.retryable and attempts <= RETRY_LIMIT:
            delay = RETRY_BACKOFF_SECONDS * 2 ** (attempts - 1)
            message = f"{error.message}; retry {attempts}/{RETRY_LIMIT} in {delay:.0f}s"
            await run.reporter.write("reconciling", "Pending", error.reason, message, message=message)
            return RetryLater(delay)
        await _fail(run, error.reason, _with_safety_hint(run, error.message))
        return None
    finally:
        if spec.drill:
            await restore.drop_database(into)

    elapsed = time.monotonic() - started
    metrics.RESTORE_DURATION.labels(run.namespace, run.series).observe(elapsed)
    results = [
        {"name": o.name, "passed": o.passed, "value": o.value, "message": o.message or None} for o in outcomes
    ]
    passed = sum(o.passed for o in outcomes)
    summary = f"{passed}/{len(outcomes)} passed" if outcomes else "no queries"
    fields = {"verification": results, "verificationSummary": summary, "durationSeconds": round(elapsed, 3)}
    if passed < len(outcomes):
        metrics.RESTORE_VERIFICATION_FAILURES.labels(run.namespace, run.series).inc()
        failed = ", ".join(o.name for o in outcomes if not o.passed)
        await _fail(
            run,
            "VerificationFailed",
            _with_safety_hint(run, f"verification queries failed: {failed}"),
            **fields,
        )
        return None
    await _succeed(
        run, f"restored {source.uri} into {into.display} in {elapsed:.1f}s; verification {summary}", **fields
    )
    return None


async def _prepare_target(
    run: Run, spec: RestoreSpec, target: ConnectionTarget, source: restore_source.SourceArtifact
) -> bool | RetryLater:
    """Creates, refuses or backs up the target as the spec says.

    True: go ahead. False: refused (status written). RetryLater: the safety backup is still running.
    """
    if not await restore.database_exists(target):
        if not spec.mode.create_database:
            await _fail(
                run,
                "DatabaseNotFound",
                f"target database {target.display} does not exist; set mode.createDatabase",
            )
            return False
        await restore.create_database(target)
        return True
    if await restore.is_empty(target):
        return True
    if not spec.mode.force:
        await _fail(
            run,
            "TargetNotEmpty",
            f"target database {target.display} is not empty; set mode.force"
            " (and mode.clean to drop its objects first)",
        )
        return False
    if spec.pre_restore_backup is False:
        return True
    return await _await_safety_backup(run, spec, source)


async def _await_safety_backup(
    run: Run, spec: RestoreSpec, source: restore_source.SourceArtifact
) -> bool | RetryLater:
    """A one-shot Backup of the target, named in status; the restore waits for it to succeed."""
    name = f"{run.name}-safety"
    existing = await kube.get(BACKUPS, run.namespace, name)
    if existing is None:
        storage = spec.safety_backup_storage
        path = storage.filesystem.path if storage else (source.storage_path or "safety")
        body: kube.JsonDict = {
            "apiVersion": API_VERSION,
            "kind": "Backup",
            "metadata": {"name": name, "namespace": run.namespace, "labels": {SAFETY_LABEL: run.name}},
            "spec": {
                "database": {"secretRef": spec.target.database.secret_ref.model_dump(by_alias=True)},
                "storage": {"filesystem": {"path": path}},
            },
        }
        await kube.create(BACKUPS, run.namespace, body)
        await kube.event(run.body, "Normal", "SafetyBackup", f"backing up the target first: Backup {name}")
        existing = body
    phase = (existing.get("status") or {}).get("phase")
    if phase == "Succeeded":
        return True
    if phase == "Failed":
        why = (existing.get("status") or {}).get("message") or "see its status"
        await _fail(
            run, "SafetyBackupFailed", f"safety Backup {name} failed ({why}); the target was not touched"
        )
        return False
    await run.reporter.write(
        "reconciling",
        "Pending",
        "WaitingForSafetyBackup",
        f"waiting for safety Backup {name}",
        safetyBackup=name,
    )
    return RetryLater(WAIT_SECONDS)


def _with_safety_hint(run: Run, message: str) -> str:
    safety = (run.body.get("status") or {}).get("safetyBackup")
    return f"{message}; roll back by restoring Backup {safety}" if safety else message


async def _succeed(run: Run, message: str, **fields: object) -> None:
    completed = kube.now()
    await run.reporter.write(
        "ready",
        "Succeeded",
        "Succeeded",
        message,
        completedAt=kube.timestamp(completed),
        message=None,
        **fields,
    )
    metrics.RESTORE_RUNS.labels(run.namespace, run.series, "success").inc()
    if run.drill:
        metrics.advance(metrics.RESTORE_DRILL_LAST_SUCCESS, run.namespace, run.series, completed.timestamp())
    log.info("restore succeeded", kind="Restore", namespace=run.namespace, name=run.name, detail=message)
    await kube.event(run.body, "Normal", "Succeeded", message)


async def _fail(run: Run, reason: str, message: str, **fields: object) -> None:
    await end_failed(run.reporter, run.body, reason, message, **fields)
    metrics.RESTORE_RUNS.labels(run.namespace, run.series, "failure").inc()
