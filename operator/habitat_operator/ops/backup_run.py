"""One Backup object's run, from Pending to Succeeded or Failed, safe to re-enter after a crash.

Every step writes status before the next begins, so a run cut off at any line is seen on restart
(phase Running with no process behind it) and either retried or failed; it is never left Running
and never reported Succeeded without a verified artifact in place.
"""

from __future__ import annotations

import time
from pathlib import Path

import structlog
from pydantic import ValidationError

from habitat_operator import kube, metrics
from habitat_operator.api.backup import BackupFormat, BackupSpec, Verification
from habitat_operator.config import OperatorConfig
from habitat_operator.credentials import SecretError, read_secret_text, read_secret_value
from habitat_operator.durations import parse_duration
from habitat_operator.ops.artifacts import ArtifactStore
from habitat_operator.ops.backup import BackupRequest, BackupResult, run_backup
from habitat_operator.ops.errors import OperationError
from habitat_operator.ops.lifecycle import RetryLater, end_failed, recheck_later
from habitat_operator.ops.pguri import ConnectionTarget
from habitat_operator.ops.schedules import series_name
from habitat_operator.status import TERMINAL_PHASES, StatusReporter
from habitat_operator.validation import describe_validation_error

PLURAL = "backups"
MAX_BACKOFF_SECONDS = 3600.0

log = structlog.get_logger(__name__)


def artifact_path(store: ArtifactStore, spec: BackupSpec, namespace: str, name: str) -> Path:
    """<root>/<storage path>/<namespace>/<name>.dump: namespaced, so tenants cannot overwrite each other."""
    suffix = ".dump" if spec.format is BackupFormat.CUSTOM else ".dir"
    return store.resolve(spec.storage.filesystem.path) / namespace / f"{name}{suffix}"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


async def run_backup_object(body: kube.JsonDict, config: OperatorConfig) -> RetryLater | None:
    """Brings a one-shot Backup to a terminal phase; returns RetryLater while it should be tried again."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    status = body.get("status") or {}
    if status.get("phase") in TERMINAL_PHASES:
        return None
    reporter = StatusReporter(PLURAL, body)
    series = series_name(body)
    bound = log.bind(kind="Backup", namespace=namespace, name=name)

    try:
        spec = BackupSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        await _fail(reporter, body, series, "InvalidSpec", describe_validation_error(error))
        return None

    attempts = int(status.get("attempts") or 0)
    if status.get("phase") == "Running":
        # Running with nobody running it: the operator stopped mid-run. That attempt is over.
        bound.warning("previous attempt was interrupted", attempt=attempts)
        await kube.event(
            body, "Warning", "Interrupted", f"attempt {attempts} was interrupted; the operator restarted"
        )
        if attempts > spec.retry.limit:
            await _fail(
                reporter,
                body,
                series,
                "Interrupted",
                f"attempt {attempts} was interrupted and no retries are left",
            )
            return None

    try:
        target = ConnectionTarget(
            await read_secret_text(namespace, spec.database.secret_ref.name, spec.database.secret_ref.key)
        )
        key = None
        if spec.encryption:
            ref = spec.encryption.key_secret_ref
            key = await read_secret_value(namespace, ref.name, ref.key)
    except SecretError as error:
        return await recheck_later(reporter, error.reason, str(error))
    except OperationError as error:  # a Secret whose URI does not parse
        await _fail(
            reporter, body, series, error.reason, f"Secret {spec.database.secret_ref.name}: {error.message}"
        )
        return None

    store = ArtifactStore(config.backup_root)
    try:
        destination = artifact_path(store, spec, namespace, name)
    except OperationError as error:
        await _fail(reporter, body, series, error.reason, f"spec.storage.filesystem.path: {error.message}")
        return None

    attempts += 1
    started = time.monotonic()
    await reporter.write(
        "reconciling",
        "Running",
        "BackupRunning",
        f"attempt {attempts}: dumping {target.display}",
        attempts=attempts,
        startedAt=kube.timestamp(kube.now()),
        completedAt=None,
        database=target.display,
    )
    await kube.event(body, "Normal", "Started", f"attempt {attempts}: dumping {target.display}")

    request = BackupRequest(
        target=target,
        destination=destination,
        format=spec.format.value,
        jobs=spec.jobs,
        include_schemas=spec.include.schemas if spec.include else [],
        include_tables=spec.include.tables if spec.include else [],
        exclude_schemas=spec.exclude.schemas if spec.exclude else [],
        exclude_tables=spec.exclude.tables if spec.exclude else [],
        encryption_key=key,
        verify=spec.verify,
        timeout=parse_duration(spec.timeout).total_seconds(),
    )
    try:
        result = await run_backup(request)
    except OperationError as error:
        metrics.BACKUP_DURATION.labels(namespace, series).observe(time.monotonic() - started)
        if error.reason == "VerificationFailed":
            metrics.BACKUP_VERIFICATION_FAILURES.labels(namespace, series).inc()
        if error.retryable and attempts <= spec.retry.limit:
            delay = min(
                parse_duration(spec.retry.backoff).total_seconds() * 2 ** (attempts - 1), MAX_BACKOFF_SECONDS
            )
            message = f"{error.message}; retry {attempts}/{spec.retry.limit} in {delay:.0f}s"
            bound.warning("backup attempt failed", reason=error.reason, error=error.message, retry_in=delay)
            await reporter.write("reconciling", "Pending", error.reason, message, message=message)
            await kube.event(body, "Warning", error.reason, message)
            return RetryLater(delay)
        verification = (
            Verification.VERIFICATION_FAILED.value if error.reason == "VerificationFailed" else None
        )
        await _fail(reporter, body, series, error.reason, error.message, verification=verification)
        return None

    elapsed = time.monotonic() - started
    await _succeed(reporter, body, series, result, elapsed)
    return None


async def _succeed(
    reporter: StatusReporter, body: kube.JsonDict, series: str, result: BackupResult, elapsed: float
) -> None:
    namespace = body["metadata"]["namespace"]
    size = human_size(result.size_bytes)
    verified = "verified" if result.verified else "not verified"
    message = f"{size} in {elapsed:.1f}s, {verified}"
    completed = kube.now()
    await reporter.write(
        "ready",
        "Succeeded",
        "Succeeded",
        message,
        completedAt=kube.timestamp(completed),
        message=None,
        artifact={
            "uri": result.uri,
            "sizeBytes": result.size_bytes,
            "size": size,
            "sha256": result.sha256,
            "format": result.format,
            "encrypted": result.encrypted,
            "pgVersion": result.pg_version,
        },
        verification=(Verification.VERIFIED if result.verified else Verification.NOT_VERIFIED).value,
        lastSuccessfulTime=kube.timestamp(completed),
    )
    metrics.BACKUP_RUNS.labels(namespace, series, "success").inc()
    metrics.BACKUP_DURATION.labels(namespace, series).observe(elapsed)
    metrics.note_backup_success(namespace, series, completed.timestamp(), result.size_bytes)
    log.info(
        "backup succeeded",
        kind="Backup",
        namespace=namespace,
        name=reporter.name,
        size=size,
        seconds=round(elapsed, 2),
    )
    await kube.event(body, "Normal", "Succeeded", f"{message}: {result.uri}")


async def _fail(
    reporter: StatusReporter,
    body: kube.JsonDict,
    series: str,
    reason: str,
    message: str,
    verification: str | None = None,
) -> None:
    await end_failed(reporter, body, reason, message, verification=verification)
    metrics.BACKUP_RUNS.labels(body["metadata"]["namespace"], series, "failure").inc()


def restore_metrics(body: kube.JsonDict) -> None:
    """After an operator restart, gauges come back from status so alerts do not misfire."""
    status = body.get("status") or {}
    if status.get("phase") != "Succeeded" or not status.get("completedAt"):
        return
    metrics.note_backup_success(
        body["metadata"]["namespace"],
        series_name(body),
        kube.parse_timestamp(status["completedAt"]).timestamp(),
        (status.get("artifact") or {}).get("sizeBytes", 0),
    )
