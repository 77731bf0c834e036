"""One Restore object, from Pending to Succeeded or Failed; a drill restores into a scratch database.

The order protects the target: the source is resolved; the target's database lock is taken (no
other restore or migration, in any operator process, writes it meanwhile); a non-empty target is
refused without `force`, and backed up first by a safety Backup that belongs to this run alone; then
the source is read and checked, once, and nothing touches the target before it is known intact (a
missing target is created only then). Every later read of a bucket's object is pinned to the version
checked. A restore runs once, like a Job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path

from habitat_operator import names, timestamps
from habitat_operator.api.artifacts import RETAIN_FOR_RETENTION, BackupFormat
from habitat_operator.api.common import Phase, Reason, qualified
from habitat_operator.api.rabbitmq_definitions import ArtifactKind, DefinitionsReason
from habitat_operator.api.restore import (
    RESTORE,
    QueryResult,
    RecoveredTo,
    RestoredFrom,
    RestoreReason,
    RestoreSpec,
    RestoreStatus,
)
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.base import kube, owned_backup
from habitat_operator.controllers.base.credentials import read_connection
from habitat_operator.controllers.base.lifecycle import OneShotRun, RetryLater
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.controllers.base.status import Edit
from habitat_operator.controllers.restore import metrics
from habitat_operator.controllers.restore.definitions import restore_definitions
from habitat_operator.controllers.restore.engines import POSTGRES, RestoreEngines
from habitat_operator.controllers.restore.scratch import sweep_orphans
from habitat_operator.controllers.restore.source import ArchiveSource, SourceArtifact, resolve
from habitat_operator.controllers.scheduling.child_runs import series_name
from habitat_operator.durations import format_duration, parse_duration
from habitat_operator.engines.artifacts.store import ArtifactStore
from habitat_operator.engines.postgres.bucket import check_object, fetched_directory, opener
from habitat_operator.engines.postgres.recovery import RecoveryRequest
from habitat_operator.engines.postgres.restore import RestoreRequest
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.threads import in_thread
from habitat_operator.errors import OperationError, PermanentError
from habitat_operator.metrics import advance

SAFETY_FOR_LABEL = qualified("safety-backup-for")  # the Restore's uid
WAIT_SECONDS = 5.0  # for the database lock, or the safety backup, to come free


def scratch_database_name(namespace: str, uid: str, name: str) -> str:
    """A drill's database: unique per Restore object (two namespaces' drills never share one),
    recognisable by the Restore's name, within PostgreSQL's 63 bytes."""
    return names.database_identifier("habitat_drill_", f"{namespace}/{uid}", name)


class RestoreRun(OneShotRun[RestoreSpec, RestoreStatus]):
    info = RESTORE
    spec_model = RestoreSpec
    status_model = RestoreStatus
    drill = False
    amcheck = False
    _query_results: list[QueryResult] | None = None
    _query_summary: str | None = None
    # The target is missing and mode.createDatabase: it is created once the source is checked.
    _create_target = False
    _recovered_to: RecoveredTo | None = None  # a point-in-time source, once recovered

    def __init__(
        self,
        body: kube.JsonDict,
        config: OperatorConfig,
        slots: OperationSlots,
        engines: RestoreEngines = POSTGRES,
    ) -> None:
        super().__init__(body, config, slots)
        self.engines = engines

    @property
    def series(self) -> str:
        return series_name(self.body)

    @property
    def uid(self) -> str:
        return str(self.body["metadata"]["uid"])

    async def execute(self, spec: RestoreSpec) -> RetryLater | None:
        self.drill = spec.drill
        self.amcheck = spec.verify.amcheck
        source = await resolve(
            spec.source,
            self.namespace,
            ArtifactStore(self.config.backup_root),
            cross_namespace=self.config.allow_cross_namespace_restores,
        )
        try:
            return await self._execute(spec, source)
        finally:
            await source.close()

    async def _execute(self, spec: RestoreSpec, source: SourceArtifact) -> RetryLater | None:
        if spec.target.rabbitmq is not None:
            await restore_definitions(self, spec, spec.target.rabbitmq, source)
            return None
        if source.kind is ArtifactKind.RABBITMQ_DEFINITIONS:
            raise PermanentError(
                DefinitionsReason.ARTIFACT_KIND_MISMATCH,
                f"{source.uri} holds RabbitMQ definitions, not a database dump;"
                " restore it into target.rabbitmq",
            )
        assert spec.target.database is not None  # the CRD requires exactly one of them
        target = await read_connection(self.namespace, spec.target.database.secret_ref)
        if self.resumed and spec.jobs > 1 and not spec.drill:
            # A parallel restore is not one transaction: the target may hold part of the artifact.
            raise PermanentError(Reason.INTERRUPTED, "the restore was interrupted midway")
        into = self._scratch(target) if spec.drill else target
        holder = f"restore {self.namespace}/{self.name}"
        async with self.slot(into.display), self.engines.lock(into, holder) as lock:
            if not lock.acquired:
                holder_now = lock.holder

                def locked_out(status: RestoreStatus) -> None:
                    status.waiting_for = holder_now

                await self.reporter.write(
                    "reconciling",
                    Phase.PENDING,
                    Reason.WAITING_FOR_LOCK,
                    lock.waiting_message(into.display),
                    locked_out,
                )
                return RetryLater(WAIT_SECONDS)
            if not spec.drill and not self.resumed:  # an interrupted attempt backed up the target already
                waiting = await self._prepare_target(spec, target, source)
                if waiting:
                    return waiting
            # Read once the target is ready, not on every poll while the lock or a safety backup is awaited.
            async with self._checked(spec, source, target.dbname) as checked:
                if spec.drill:
                    await sweep_orphans(target, self.config, self.body, self.engines)
                    await self.engines.restore.drop_database(into)  # a leftover of an interrupted drill
                    await self.engines.restore.create_database(into)
                    await self.engines.scratch.mark_owner(into, self.namespace, self.uid)
                elif self._create_target:
                    await self.engines.restore.create_database(target)
                try:
                    summary = await self._restore(spec, checked, target, into)
                finally:
                    if spec.drill:
                        await self.engines.restore.drop_database(into)
        await self._succeed(spec, source, into, summary)  # once the scratch database is gone
        return None

    async def clean_up_interrupted(self, spec: RestoreSpec) -> None:
        """A drill cut off mid-restore leaves its scratch database behind: drop it before anything else."""
        if not spec.drill or spec.target.database is None:
            return
        target = await read_connection(self.namespace, spec.target.database.secret_ref)
        await self.engines.restore.drop_database(self._scratch(target))

    def _scratch(self, target: ConnectionTarget) -> ConnectionTarget:
        """This drill's scratch database on the target's server."""
        return target.with_database(scratch_database_name(self.namespace, self.uid, self.name))

    @asynccontextmanager
    async def _checked(
        self, spec: RestoreSpec, source: SourceArtifact, database: str
    ) -> AsyncIterator[SourceArtifact]:
        """The source once it is known to be intact: nothing touches the target before. A bucket's
        object is read once for the check (checksum, decryption, pg_restore --list) and the restore
        reads the same version again, pinned, rather than keep a copy on local disk; a
        directory-format one is unpacked (and checked) into a scratch folder, which pg_restore
        --jobs reads and which is removed on leaving. A point-in-time source is recovered on a
        private server and dumped (of `database` unless it names its own) into a scratch folder."""
        for why in source.skipped:
            await kube.event(self.body, "Warning", RestoreReason.CATALOG_ENTRY_SKIPPED, why)
        for what in source.ignored:
            await kube.event(self.body, "Warning", RestoreReason.UNLOCKED_VERSION_IGNORED, what)
        if source.archive is not None:
            async with self._recovered(source, source.archive, database) as recovered:
                yield recovered
            return
        if source.bucket is None or source.key is None:
            await self._check_file(spec, source)
            yield source
            return
        expected = source.sha256 if spec.verify.checksum or source.checksum_required else None
        bucket, key, checked = source.bucket, source.key, False
        try:
            pinned = source.pinned or await in_thread(bucket.head, key)
            if source.format is BackupFormat.DIRECTORY:
                async with fetched_directory(
                    bucket, key, expected, source.encryption_key, self.config.scratch_dir, pinned
                ) as folder:
                    checked = True
                    yield replace(source, stored=folder, encryption_key=None)  # the folder is plaintext
                return
            await check_object(bucket, key, expected, source.encryption_key, pinned=pinned)
            checked = True
            yield replace(source, stored=opener(bucket, key, pinned))
        except OperationError as error:
            if checked:
                raise
            raise _untouched(error) from None

    @asynccontextmanager
    async def _recovered(
        self, source: SourceArtifact, archive: ArchiveSource, database: str
    ) -> AsyncIterator[SourceArtifact]:
        """The recovered database's dump, removed on leaving; a failed recovery touched nothing."""
        request = RecoveryRequest(
            store=archive.store,
            layout=archive.layout,
            plan=archive.plan,
            database=archive.database or database,
            encryption_key=source.encryption_key,
            scratch_dir=self.config.scratch_dir,
            amcheck=self.amcheck,
        )
        async with AsyncExitStack() as recovering:
            try:
                recovered = await recovering.enter_async_context(
                    self.engines.recovery.recovered_dump(request)
                )
            except OperationError as error:
                raise _untouched(error) from None
            self._recovered_to = RecoveredTo(
                target=archive.plan.target.describe(),
                lsn=recovered.point.lsn,
                last_commit_time=recovered.point.time,
                base_backup=archive.plan.base_backup.id,
                recovery_seconds=round(recovered.recovery_seconds, 3),
            )
            yield replace(source, stored=recovered.path, encryption_key=None, sha256=None)

    async def _check_file(self, spec: RestoreSpec, source: SourceArtifact) -> None:
        """An artifact under the backup root, checked before anything touches the target."""
        assert isinstance(source.stored, Path)
        try:
            await self.engines.restore.check_artifact(
                source.stored,
                source.format.value,
                source.sha256,
                source.encryption_key,
                checksum=spec.verify.checksum,
            )
        except OperationError as error:
            raise _untouched(error) from None

    async def _restore(
        self, spec: RestoreSpec, source: SourceArtifact, target: ConnectionTarget, into: ConnectionTarget
    ) -> str:
        """Restores and verifies; returns the verification summary."""
        archive = source.archive.layout.archive if source.archive else None
        recovered_to = self._recovered_to

        def restoring(status: RestoreStatus) -> None:
            status.target = target.display
            status.scratch_database = into.dbname if spec.drill else None
            status.waiting_for = None
            status.restored_from = RestoredFrom(
                backup=source.backup,
                uri=source.uri,
                sha256=source.sha256,
                archive=archive,
                size_bytes=source.size_bytes,
            )
            status.recovered_to = recovered_to

        await self.start(RestoreReason.RESTORING, f"restoring {source.uri} into {into.display}", restoring)
        await self.engines.restore.run_restore(
            RestoreRequest(
                target=into,
                artifact=source.stored,
                format=source.format.value,
                expected_sha256=None,  # checked before the target was touched
                check_checksum=False,
                encryption_key=source.encryption_key,
                jobs=spec.jobs,
                # After an interruption the one transaction was rolled back; --clean also covers the
                # case where it had just committed.
                clean=spec.mode.clean or self.resumed,
                timeout=parse_duration(spec.timeout).total_seconds(),
                scratch_dir=self.config.scratch_dir,
                lock_timeout=parse_duration(spec.lock_timeout).total_seconds(),
            )
        )
        outcomes = await self.engines.restore.run_verification_queries(into, spec.verify.queries)
        self._query_results = [
            QueryResult(name=o.name, passed=o.passed, value=o.value, message=o.message or None)
            for o in outcomes
        ]
        passed = sum(o.passed for o in outcomes)
        summary = f"{passed}/{len(outcomes)} passed" if outcomes else "no queries"
        self._query_summary = summary
        if passed < len(outcomes):
            failed = ", ".join(o.name for o in outcomes if not o.passed)
            raise PermanentError(Reason.VERIFICATION_FAILED, f"verification queries failed: {failed}")
        if spec.verify.amcheck:
            await self.engines.amcheck.check_database(into)
            summary = self._query_summary = f"{summary}; amcheck clean"
        return summary

    async def _succeed(
        self, spec: RestoreSpec, source: SourceArtifact, into: ConnectionTarget, summary: str
    ) -> None:
        elapsed = self.elapsed
        metrics.RESTORE_DURATION.labels(self.namespace, self.series).observe(elapsed)
        recovered = self._recovered_to
        if recovered is not None:
            metrics.record_recovery(
                self.namespace, self.series, recovered.last_commit_time, recovered.recovery_seconds
            )
        if spec.drill:
            advance(
                metrics.RESTORE_DRILL_LAST_SUCCESS, self.namespace, self.series, timestamps.now().timestamp()
            )
        await self.succeed(
            f"restored {source.uri} into {into.display} in {elapsed:.1f}s; verification {summary}",
            self._verified(elapsed),
        )

    async def succeed_with(self, message: str, *edits: Edit[RestoreStatus]) -> None:
        """Ends a run that restored no database (a definitions import), with its duration."""
        elapsed = self.elapsed
        metrics.RESTORE_DURATION.labels(self.namespace, self.series).observe(elapsed)
        await self.succeed(message, self._verified(elapsed), *edits)

    async def _prepare_target(
        self, spec: RestoreSpec, target: ConnectionTarget, source: SourceArtifact
    ) -> RetryLater | None:
        """Refuses or backs up the target as the spec says (a missing one is created once the source
        is checked); RetryLater while the safety backup runs, None to go ahead."""
        if not await self.engines.restore.database_exists(target):
            if not spec.mode.create_database:
                raise PermanentError(
                    Reason.DATABASE_NOT_FOUND,
                    f"target database {target.display} does not exist; set mode.createDatabase",
                )
            self._create_target = True
            return None
        if await self.engines.restore.is_empty(target):
            return None
        if not spec.mode.force:
            raise PermanentError(
                RestoreReason.TARGET_NOT_EMPTY,
                f"target database {target.display} is not empty; set mode.force"
                " (and mode.clean to drop its objects first)",
            )
        if spec.pre_restore_backup is False:
            return None
        return await self._await_safety_backup(spec, source)

    async def _await_safety_backup(self, spec: RestoreSpec, source: SourceArtifact) -> RetryLater | None:
        """A one-shot Backup of the target, owned by this Restore and labelled with its uid, so that
        no other Backup (an earlier run's, a user's of the same name) is ever taken for it."""
        name = names.fit(f"{self.name}-safety-{self.uid[:8]}", 253)
        configured = spec.safety_backup_storage
        storage = (
            configured.model_dump(by_alias=True, exclude_none=True)
            if configured
            else source.storage or {"filesystem": {"path": "safety"}}
        )
        lock = (storage.get("s3") or {}).get("objectLock") or {}
        if lock.get("retainFor") == RETAIN_FOR_RETENTION:  # a schedule's; a safety Backup has no retention
            storage = {"s3": {k: v for k, v in storage["s3"].items() if k != "objectLock"}}
        safety = owned_backup.BackupFirst(
            name,
            SAFETY_FOR_LABEL,
            "safety Backup",
            "this Restore's safety backup",
            "the target was not touched",
            (RestoreReason.SAFETY_BACKUP, f"backing up the target first: Backup {name}"),
            RestoreReason.SAFETY_BACKUP_FAILED,
        )
        assert spec.target.database is not None  # a definitions restore takes no safety backup
        database = {"secretRef": spec.target.database.secret_ref.model_dump(by_alias=True)}
        if await owned_backup.await_backup(self.body, safety, database, storage):
            return None

        def waiting(status: RestoreStatus) -> None:
            status.safety_backup = name

        await self.reporter.write(
            "reconciling",
            Phase.PENDING,
            RestoreReason.WAITING_FOR_SAFETY_BACKUP,
            f"waiting for safety Backup {name}",
            waiting,
        )
        return RetryLater(WAIT_SECONDS)

    def _verified(self, elapsed: float) -> Edit[RestoreStatus]:
        """The verification's results and the run's duration."""
        results, summary = self._query_results, self._query_summary

        def verified(status: RestoreStatus) -> None:
            status.verification, status.verification_summary = results, summary
            status.duration_seconds, status.duration = round(elapsed, 3), format_duration(elapsed)

        return verified

    def explain(self, message: str) -> str:
        safety = self.status.safety_backup
        return f"{message}; roll back by restoring Backup {safety}" if safety and not self.drill else message

    def failure_edit(self, error: OperationError) -> Edit[RestoreStatus] | None:
        return None if self._query_results is None else self._verified(self.elapsed)

    def record_failure(self, error: OperationError, elapsed: float | None) -> None:
        if elapsed is not None:
            metrics.RESTORE_DURATION.labels(self.namespace, self.series).observe(elapsed)
        if error.reason in (Reason.CHECKSUM_MISMATCH, Reason.VERIFICATION_FAILED):
            metrics.RESTORE_VERIFICATION_FAILURES.labels(self.namespace, self.series).inc()

    def record_outcome(self, succeeded: bool) -> None:
        metrics.RESTORE_RUNS.labels(self.namespace, self.series, "success" if succeeded else "failure").inc()


def _untouched(error: OperationError) -> OperationError:
    """A failed check of the source: permanent, and the message says the target is as it was."""
    return PermanentError(error.reason, f"{error.message}; the target was not touched")
