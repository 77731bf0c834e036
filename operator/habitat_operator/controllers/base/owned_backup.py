"""A one-shot Backup that an object takes of a database before it changes it (a Restore's safety
backup, a Migration's `backupBefore`).

The Backup is owned by that object and labelled with its uid, so that no other Backup (an earlier
run's, a user's of the same name) is ever taken for it: the caller refuses one that is not its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from habitat_operator.api.backup import BACKUP
from habitat_operator.api.common import API_VERSION
from habitat_operator.controllers.base import kube


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
                "ownerReferences": [kube.owner_reference(owner)],
            },
            "spec": {"database": database, "storage": storage},
        }
        existing = await kube.create(BACKUP.plural, meta["namespace"], body)
    ours = (existing["metadata"].get("labels") or {}).get(label) == meta["uid"]
    return OwnedBackup(existing, created, ours)
