"""Finding what a Restore restores: a Backup's (or a schedule run's) artifact, or an artifact by URI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from habitat_operator.api.artifacts import BackupFormat
from habitat_operator.api.backup import BACKUP
from habitat_operator.api.common import Phase, Reason
from habitat_operator.api.restore import LATEST_RUN, RestoreReason, RestoreSource
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.base.credentials import read_secret_value
from habitat_operator.controllers.scheduling.child_runs import completed_at, list_children, phase
from habitat_operator.engines.artifacts.store import ArtifactStore
from habitat_operator.errors import PermanentError, WaitingError

BACKUPS = BACKUP.plural


@dataclass(frozen=True)
class SourceArtifact:
    path: Path
    uri: str
    format: BackupFormat
    sha256: str | None
    encryption_key: bytes | None = field(repr=False)
    backup: str | None  # the Backup object it came from, if any
    storage_path: str | None  # that Backup's storage path, for the safety backup


async def resolve(
    source: RestoreSource, namespace: str, store: ArtifactStore, *, cross_namespace: bool = False
) -> SourceArtifact:
    """Raises WaitingError while the Backup is missing or unfinished, PermanentError when it failed
    or when the artifact lies outside `namespace`'s part of the store (unless `cross_namespace`)."""
    scope = None if cross_namespace else namespace
    if source.artifact is not None:
        given = source.artifact
        key = None
        if given.encryption_key_secret_ref:
            ref = given.encryption_key_secret_ref
            key = await read_secret_value(namespace, ref.name, ref.key)
        return SourceArtifact(
            path=store.path_for(given.uri, scope),
            uri=given.uri,
            format=given.format,
            sha256=given.sha256,
            encryption_key=key,
            backup=None,
            storage_path=None,
        )
    assert source.backup_ref is not None  # the CRD requires exactly one source
    return await _from_backup(
        await _find_backup(namespace, source.backup_ref.name, source.backup_ref.run), store, scope
    )


async def _from_backup(backup: kube.JsonDict, store: ArtifactStore, scope: str | None) -> SourceArtifact:
    namespace = backup["metadata"]["namespace"]
    status = backup.get("status") or {}
    name = backup["metadata"]["name"]
    if status.get("phase") == Phase.FAILED:
        raise PermanentError(
            RestoreReason.BACKUP_FAILED, f"Backup {name} failed: {status.get('message') or 'see its status'}"
        )
    artifact = status.get("artifact") or {}
    if status.get("phase") != Phase.SUCCEEDED or not artifact.get("uri"):
        raise WaitingError(
            RestoreReason.BACKUP_NOT_READY,
            f"Backup {name} has not succeeded yet (phase {status.get('phase') or 'Pending'})",
        )
    spec = backup.get("spec") or {}
    key = None
    if artifact.get("encrypted"):
        ref = (spec.get("encryption") or {}).get("keySecretRef") or {}
        if not ref.get("name"):
            raise PermanentError(
                Reason.KEY_NOT_FOUND, f"Backup {name} is encrypted but no longer names its key Secret"
            )
        key = await read_secret_value(namespace, ref["name"], ref.get("key", "key"))
    return SourceArtifact(
        path=store.path_for(artifact["uri"], scope),
        uri=artifact["uri"],
        format=BackupFormat(artifact.get("format") or "custom"),
        sha256=artifact.get("sha256"),
        encryption_key=key,
        backup=name,
        storage_path=((spec.get("storage") or {}).get("filesystem") or {}).get("path"),
    )


async def _find_backup(namespace: str, name: str, run: str) -> kube.JsonDict:
    backup = await kube.get(BACKUPS, namespace, name)
    if backup is None:
        raise WaitingError(RestoreReason.BACKUP_NOT_FOUND, f"Backup {namespace}/{name} not found")
    if not (backup.get("spec") or {}).get("schedule"):
        return backup
    runs = await list_children(BACKUPS, backup)
    if run != LATEST_RUN:
        named = next((r for r in runs if r["metadata"]["name"] == run), None)
        if named is None:
            raise WaitingError(RestoreReason.BACKUP_NOT_FOUND, f"schedule {name} has no run {run}")
        return named
    succeeded = [r for r in runs if phase(r) == Phase.SUCCEEDED and completed_at(r)]
    if not succeeded:
        raise WaitingError(RestoreReason.BACKUP_NOT_FOUND, f"schedule {name} has no successful run yet")
    # completedAt has whole seconds; run names carry the scheduled time and break ties.
    return max(succeeded, key=lambda r: (completed_at(r), r["metadata"]["name"]))
