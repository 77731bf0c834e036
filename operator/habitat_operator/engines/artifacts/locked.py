"""Reading a bucket written under Object Lock as the operator wrote it, whatever came later.

The operator writes each artifact and each catalog entry once, locked (append-only). So the
version to read is the one its catalog entry records, else the oldest: every newer version of the
key, and every delete marker over it, was written by someone else (an attacker holding the
operator's keys can add those, never remove or change a locked version) and is ignored, by name.
A version that carries no Object Lock retention is not one the operator wrote under lock, and is
never read. The caller still checks the chosen artifact against its entry's SHA-256.

A bucket that keeps no versions shows one version per key: the server refused any overwrite or
delete while it was locked, so that one is the original. Blocking: call from an ENGINE_POOL thread.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from habitat_operator.api.common import Reason
from habitat_operator.engines.artifacts.s3 import (
    CATALOG_SUFFIX,
    Bucket,
    ObjectVersion,
    catalog_key,
    parse_entry,
    storage_errors,
)
from habitat_operator.errors import PermanentError

MAX_ENTRY_BYTES = 1 << 20  # a catalog entry is a few hundred bytes; a bigger one is not ours


@dataclass(frozen=True)
class LockedVersion:
    """The version to read, and what was passed over to find it (each naming the key and why)."""

    version: ObjectVersion
    ignored: tuple[str, ...] = ()


def original_version(bucket: Bucket, key: str, version_id: str | None = None) -> LockedVersion:
    """The locked version of `key` the operator wrote: `version_id` if recorded, else the oldest.

    PermanentError ArtifactNotFound when the key has no such version, or when it is not locked."""
    history = bucket.history(key)
    uri = bucket.uri(key)
    if version_id is not None:
        chosen = next((v for v in history.versions if v.version_id == version_id), None)
    else:
        chosen = history.versions[0] if history.versions else None
    if chosen is None:
        recorded = f" version {version_id}" if version_id else ""
        raise PermanentError(Reason.ARTIFACT_NOT_FOUND, f"{uri}{recorded} does not exist")
    if chosen.lock_mode is None:
        raise PermanentError(
            Reason.ARTIFACT_NOT_FOUND, f"{uri} holds no locked version (it was not written under Object Lock)"
        )
    ignored = [
        f"{uri}: version {v.version_id} written after the locked one, ignored"
        for v in history.versions
        if v is not chosen and v.version_id != chosen.version_id
    ]
    if history.delete_markers:
        markers = len(history.delete_markers)
        ignored.append(f"{uri}: {markers} delete marker(s) over the locked version, ignored")
    return LockedVersion(chosen, tuple(ignored))


def locked_entry(bucket: Bucket, artifact_key: str) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
    """The catalog entry of `artifact_key` as the operator wrote it (None if it has no locked one),
    and what was ignored to read it."""
    try:
        found = original_version(bucket, catalog_key(artifact_key))
    except PermanentError as error:
        return None, (f"catalog entry of {bucket.uri(artifact_key)}: {error.message}",)
    if found.version.size > MAX_ENTRY_BYTES:
        return None, (f"{bucket.uri(catalog_key(artifact_key))} is too large to be a catalog entry",)
    stream = bucket.open(found.version.key, found.version)
    try:
        body = stream.read(MAX_ENTRY_BYTES + 1)
    finally:
        stream.close()
    return parse_entry(body, artifact_key), found.ignored


def locked_catalog(bucket: Bucket) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """Every catalog entry under the prefix as the operator wrote it, those a delete marker hides
    included, and what was ignored to read them."""
    prefix = bucket.location.key()
    with storage_errors(
        f"listing the versions under s3://{bucket.location.bucket}/{prefix}", "list_versions"
    ):
        pages = bucket.client.get_paginator("list_object_versions").paginate(
            Bucket=bucket.location.bucket, Prefix=f"{prefix}/" if prefix else ""
        )
        keys = {
            str(item["Key"])
            for page in pages
            for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
            if str(item.get("Key", "")).endswith(CATALOG_SUFFIX)
        }
    entries: list[dict[str, Any]] = []
    ignored: list[str] = []
    for key in sorted(keys):
        entry, passed_over = locked_entry(bucket, key.removesuffix(CATALOG_SUFFIX))
        ignored += passed_over
        if entry is not None:
            entries.append(entry)
    return entries, tuple(ignored)


def prune(bucket: Bucket, artifact_key: str, now: dt.datetime) -> dt.datetime | None:
    """Delete every version and delete marker of the artifact and of its catalog entry (the entry
    first), unless one of them is still locked: then delete nothing, and say when the last lock
    ends (a later pass deletes them)."""
    histories = [bucket.history(catalog_key(artifact_key)), bucket.history(artifact_key)]
    locked = [v.retain_until for h in histories for v in h.versions if v.locked_at(now) and v.retain_until]
    if locked:
        return max(locked)
    for history in histories:
        for version in history.versions:
            bucket.delete_version(version)
        for marker in history.delete_markers:
            bucket.delete_version(ObjectVersion(history.key, 0, "", marker))
    return None
