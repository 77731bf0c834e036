"""A one-shot Backup that an object takes of a database before it changes it (a Restore's safety
backup, a Migration's `backupBefore`).

The Backup is owned by that object and labelled with its uid, so that no other Backup (an earlier
run's, a user's of the same name) is ever taken for it: the caller refuses one that is not its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from habitat_operator.api.backup import BACKUP, BackupStatus
from habitat_operator.api.children import owner_reference
from habitat_operator.api.common import API_VERSION, Phase
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.base.status import read_status
from habitat_operator.errors import PermanentError


@dataclass(frozen=True)
class OwnedBackup:
    body: kube.JsonDict
    created: bool  # by this call: the caller says so in an Event
    ours: bool  # labelled with the owner's uid


async def ensure(
    owner: kube.JsonDict, name: str, label: str, database: kube.JsonDict, storage: kube.JsonDict
) -> OwnedBackup:
    """The Backup `name` in the owner's namespace, created from `database` and `storage` (wire form)
    when missing."""
    meta = owner["metadata"]
    existing = await kube.get(BACKUP.plural, meta["namespace"], name)
    created = existing is None
    if existing is None:
        body: kube.JsonDict = {
            "apiVersion": API_VERSION,
            "kind": BACKUP.kind,
            "metadata": {
                "name": name,
                "namespace": meta["namespace"],
                "labels": {label: meta["uid"]},
                "ownerReferences": [owner_reference(owner)],
            },
            "spec": {"database": database, "storage": storage},
        }
        existing = await kube.create(BACKUP.plural, meta["namespace"], body)
    ours = (existing["metadata"].get("labels") or {}).get(label) == meta["uid"]
    return OwnedBackup(existing, created, ours)


@dataclass(frozen=True)
class BackupFirst:
    """The Backup an object takes before it changes a database, and how it speaks of it."""

    name: str
    label: str
    title: str  # "safety Backup"
    whose: str  # "this Restore's safety backup"
    untouched: str  # "the target was not touched"
    started: tuple[StrEnum, str]  # the Event's reason and message when the Backup is created
    failed: StrEnum  # the reason when it cannot be used


async def await_backup(
    owner: kube.JsonDict, backup: BackupFirst, database: kube.JsonDict, storage: kube.JsonDict
) -> bool:
    """Creates the owner's Backup when missing; True once it has succeeded, False while it runs.
    Raises PermanentError when it failed or is not the owner's (the change does not go ahead)."""
    owned = await ensure(owner, backup.name, backup.label, database, storage)
    if owned.created:
        await kube.event(owner, "Normal", backup.started[0], backup.started[1])
    if not owned.ours:
        raise PermanentError(
            backup.failed, f"Backup {backup.name} exists but is not {backup.whose}; {backup.untouched}"
        )
    status = read_status(BackupStatus, owned.body)
    if status.phase is Phase.FAILED:
        why = status.message or "see its status"
        raise PermanentError(
            backup.failed, f"{backup.title} {backup.name} failed ({why}); {backup.untouched}"
        )
    return status.phase is Phase.SUCCEEDED
