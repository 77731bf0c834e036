"""One Backup object's run, from Pending to Succeeded or Failed, safe to re-enter after a crash.

The lifecycle (controllers/base/lifecycle.py) writes Running before pg_dump starts, so a run cut off
at any line is seen on restart and retried or failed; the artifact appears at its final path only
once complete and verified, so a run is never reported Succeeded without one in place.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from habitat_operator import names, timestamps
from habitat_operator.api.artifacts import BackupFormat, Compression, ObjectLockMode
from habitat_operator.api.backup import BACKUP, Artifact, BackupReason, BackupSpec, BackupStatus, Verification
from habitat_operator.api.common import Phase, Reason
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.backup import metrics
from habitat_operator.controllers.backup.definitions import export_definitions
from habitat_operator.controllers.backup.object_lock import check_bucket, lock_settings
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.base.buckets import encryption_key_id, open_bucket
from habitat_operator.controllers.base.credentials import read_connection, read_secret_value
from habitat_operator.controllers.base.lifecycle import OneShotRun, RetryLater
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.controllers.base.status import Edit, read_status
from habitat_operator.controllers.scheduling.child_runs import series_name
from habitat_operator.durations import format_duration, parse_duration
from habitat_operator.engines.artifacts.s3 import Bucket, ObjectLockSettings, StoredVersions
from habitat_operator.engines.artifacts.store import ArtifactStore
from habitat_operator.engines.postgres.bucket import CatalogSource, run_backup_to_bucket
from habitat_operator.engines.postgres.dump import BackupRequest, BackupResult, run_backup
from habitat_operator.engines.threads import in_thread
from habitat_operator.errors import OperationError
from habitat_operator.formatting import human_size

MAX_FILE_STEM = 200
ATTEMPT_STAMP = "-%Y%m%dT%H%M%S"  # under Object Lock, an attempt's key: the name, then its start (UTC)
ATTEMPT_KEY = r"-[0-9]{8}T[0-9]{6}[.](dump|tar)"


def artifact_path(store: ArtifactStore, spec: BackupSpec, namespace: str, name: str) -> Path:
    """<root>/<storage path>/<namespace>/<name>.dump: namespaced, so tenants cannot overwrite each other."""
    suffix = ".dump" if spec.format is BackupFormat.CUSTOM else ".dir"
    # A name of up to 253 characters, with the suffix and a partial's prefix, must fit in 255 bytes.
    stem = names.fit(name, MAX_FILE_STEM)
    assert spec.storage.filesystem is not None
    return store.namespace_directory(spec.storage.filesystem.path, namespace) / f"{stem}{suffix}"


Dumper = Callable[[BackupRequest], Awaitable[BackupResult]]


class DumpToBucket(Protocol):
    async def __call__(
        self,
        request: BackupRequest,
        bucket: Bucket,
        key: str,
        source: CatalogSource,
        lock: ObjectLockSettings | None = None,
    ) -> BackupResult: ...


@dataclass(frozen=True)
class BackupEngines:
    """What a Backup's run dumps with (a Protocol per engine); a unit test passes stand-ins."""

    dump: Dumper = run_backup
    dump_to_bucket: DumpToBucket = run_backup_to_bucket


class BackupRun(OneShotRun[BackupSpec, BackupStatus]):
    info = BACKUP
    spec_model = BackupSpec
    status_model = BackupStatus

    def __init__(
        self,
        body: kube.JsonDict,
        config: OperatorConfig,
        slots: OperationSlots,
        engines: BackupEngines | None = None,
    ) -> None:
        super().__init__(body, config, slots)
        self.engines = engines or BackupEngines()

    @property
    def series(self) -> str:
        return series_name(self.body)

    async def execute(self, spec: BackupSpec) -> RetryLater | None:
        if spec.rabbitmq is not None:
            await export_definitions(self, spec, spec.rabbitmq, await self._encryption_key(spec))
            return None
        assert spec.database is not None  # the CRD requires exactly one of them
        target = await read_connection(self.namespace, spec.database.secret_ref)
        key = await self._encryption_key(spec)
        async with self._storage(spec, key) as dump, self.slot(target.display):
            database = target.display

            def dumping(status: BackupStatus) -> None:
                status.database = database

            await self.start(BackupReason.BACKUP_RUNNING, f"dumping {database}", dumping)
            result = await dump(
                BackupRequest(
                    target=target,
                    format=spec.format.value,
                    compression=spec.compression.value,
                    jobs=spec.jobs,
                    include_schemas=spec.include.schemas if spec.include else [],
                    include_tables=spec.include.tables if spec.include else [],
                    exclude_schemas=spec.exclude.schemas if spec.exclude else [],
                    exclude_tables=spec.exclude.tables if spec.exclude else [],
                    encryption_key=key,
                    verify=spec.verify,
                    timeout=parse_duration(spec.timeout).total_seconds(),
                    scratch_dir=self.config.scratch_dir,
                )
            )
        await self._succeed(result)
        return None

    async def _encryption_key(self, spec: BackupSpec) -> bytes | None:
        if spec.encryption is None:
            return None
        key_ref = spec.encryption.key_secret_ref
        return await read_secret_value(self.namespace, key_ref.name, key_ref.key)

    @asynccontextmanager
    async def _storage(self, spec: BackupSpec, key: bytes | None) -> AsyncIterator[Dumper]:
        """How this Backup dumps: into a file under the backup root, or into its bucket."""
        if spec.storage.s3 is None:
            destination = artifact_path(
                ArtifactStore(self.config.backup_root), spec, self.namespace, self.name
            )
            yield lambda request: self.engines.dump(replace(request, destination=destination))
            return
        lock = await lock_settings(spec, self.body)
        bucket = await open_bucket(self.namespace, spec.storage.s3)
        try:
            stem = names.fit(self.name, MAX_FILE_STEM)
            if lock is not None:
                await in_thread(check_bucket, bucket)
                stem = await in_thread(self._attempt_stem, bucket)
            object_key = bucket.location.artifact_key(
                self.namespace, stem, tar=spec.format is BackupFormat.DIRECTORY
            )
            made_by = CatalogSource(
                self.namespace,
                self.name,
                str(self.body["metadata"].get("uid", "")),
                encryption_key_id(key) if key is not None else None,
            )
            yield lambda request: self.engines.dump_to_bucket(request, bucket, object_key, made_by, lock)
        finally:
            await in_thread(bucket.close)

    def _attempt_stem(self, bucket: Bucket) -> str:
        """A locked object is never overwritten: each attempt writes keys of its own, after
        aborting what an earlier attempt, cut off mid-upload, left to any of them. Blocking."""
        started = f"{timestamps.now():{ATTEMPT_STAMP}}"
        stem = names.fit(self.name, MAX_FILE_STEM - len(started))
        folder_and_stem = bucket.location.key(self.namespace, stem)
        earlier = re.compile(re.escape(folder_and_stem) + ATTEMPT_KEY)
        bucket.abort_uploads_where(folder_and_stem, earlier.fullmatch)
        return stem + started

    async def _succeed(self, result: BackupResult) -> None:
        artifact = Artifact(
            uri=result.uri,
            size_bytes=result.size_bytes,
            sha256=result.sha256,
            format=BackupFormat(result.format),
            encrypted=result.encrypted,
            compression=Compression(result.compression),
            pg_version=result.pg_version,
            **_stored_fields(result.stored),
        )
        await self.succeed_with(artifact, result.verified)

    async def succeed_with(self, artifact: Artifact, verified: bool) -> None:
        """Ends the run with `artifact` (its `size` filled in here) in status, metrics and an Event."""
        elapsed = self.elapsed
        size_bytes = artifact.size_bytes or 0
        size = human_size(size_bytes)
        message = f"{size} in {elapsed:.1f}s, {'verified' if verified else 'not verified'}"
        metrics.BACKUP_DURATION.labels(self.namespace, self.series).observe(elapsed)
        metrics.note_backup_success(self.namespace, self.series, timestamps.now().timestamp(), size_bytes)
        completed = timestamps.now()

        def dumped(status: BackupStatus) -> None:
            status.artifact = artifact.model_copy(update={"size": size})
            status.verification = Verification.VERIFIED if verified else Verification.NOT_VERIFIED
            status.last_successful_time = completed
            status.duration = format_duration(elapsed)

        await self.succeed(message, dumped, event_message=f"{message}: {artifact.uri}")

    def record_failure(self, error: OperationError, elapsed: float | None) -> None:
        if elapsed is not None:
            metrics.BACKUP_DURATION.labels(self.namespace, self.series).observe(elapsed)
        if error.reason is Reason.VERIFICATION_FAILED:
            metrics.BACKUP_VERIFICATION_FAILURES.labels(self.namespace, self.series).inc()

    def record_outcome(self, succeeded: bool) -> None:
        metrics.BACKUP_RUNS.labels(self.namespace, self.series, "success" if succeeded else "failure").inc()

    def failure_edit(self, error: OperationError) -> Edit[BackupStatus] | None:
        if error.reason is not Reason.VERIFICATION_FAILED:
            return None

        def unverified(status: BackupStatus) -> None:
            status.verification = Verification.VERIFICATION_FAILED

        return unverified


def _stored_fields(stored: StoredVersions | None) -> dict[str, Any]:
    if stored is None:
        return {}
    lock = stored.lock
    return {
        "version_id": stored.version_id,
        "catalog_version_id": stored.catalog_version_id,
        "lock_mode": ObjectLockMode(lock.mode) if lock else None,
        "retain_until": lock.retain_until if lock else None,
    }


def restore_metrics(body: kube.JsonDict) -> None:
    """After an operator restart, gauges come back from status so alerts do not misfire."""
    status = read_status(BackupStatus, body)
    if status.phase is not Phase.SUCCEEDED or status.completed_at is None:
        return
    size = status.artifact.size_bytes if status.artifact and status.artifact.size_bytes else 0
    metrics.note_backup_success(
        body["metadata"]["namespace"], series_name(body), status.completed_at.timestamp(), size
    )
