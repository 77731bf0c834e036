"""A WalArchive's objects in a bucket or in a folder, behind one interface.

A store is rooted at one namespace's part of the storage (`<prefix>/<namespace>/` in a bucket,
`<backup root>/<path>/<namespace>/` on the backup volume), so an archive reaches no other
namespace's objects whatever its keys say. Writes are all or nothing: a reader never sees half an
object, and a writer killed mid-way leaves nothing listed (an unfinished multipart upload in a
bucket, a `.<name>.partial-*` file in a folder). Metadata are a few short strings per object (S3
user metadata; a `<name>.meta.json` file beside it in a folder). Every call blocks: use them from
an ENGINE_POOL thread.
"""

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from habitat_operator.api.common import Reason
from habitat_operator.engines.artifacts.codec import Readable, Writable
from habitat_operator.engines.artifacts.s3 import Bucket, storage_errors
from habitat_operator.engines.artifacts.store import AtomicFile, disk_errors, is_partial
from habitat_operator.errors import OperationError, PermanentError

_META_SUFFIX = ".meta.json"


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int


class ObjectStore(Protocol):
    def uri(self, key: str) -> str: ...

    def writer(self, key: str, metadata: Mapping[str, str] = ...) -> AbstractContextManager[Writable]:
        """Write `key` all or nothing, replacing what is there once the block ends without error."""

    def open(self, key: str) -> Readable:
        """The object's bytes; PermanentError ArtifactNotFound when there is none."""

    def metadata(self, key: str) -> dict[str, str] | None:
        """The object's metadata; None when there is no such object."""

    def list(self, prefix: str) -> list[StoredObject]:
        """Every complete object whose key starts with `prefix`, in key order."""

    def delete(self, key: str) -> None:
        """Delete the object (and its metadata); nothing happens when there is none."""


def _check_key(key: str) -> str:
    parts = PurePosixPath(key).parts
    if not key or "\x00" in key or key.startswith("/") or ".." in parts or key.endswith(_META_SUFFIX):
        raise PermanentError(Reason.INVALID_ARTIFACT_PATH, f"not an archive key: {key!r}")
    return key


class BucketStore:
    """Objects under `<base>/` in a bucket (`base` is the prefix and namespace)."""

    def __init__(self, bucket: Bucket, base: str) -> None:
        self._bucket = bucket
        self._base = base.strip("/")

    def _full(self, key: str) -> str:
        return f"{self._base}/{_check_key(key)}" if self._base else _check_key(key)

    def uri(self, key: str) -> str:
        return self._bucket.uri(self._full(key))

    @contextmanager
    def writer(self, key: str, metadata: Mapping[str, str] = {}) -> Iterator[Writable]:
        with self._bucket.upload(self._full(key), dict(metadata)) as upload:
            yield upload
            upload.complete()

    def open(self, key: str) -> Readable:
        return self._bucket.open(self._full(key))

    def metadata(self, key: str) -> dict[str, str] | None:
        full = self._full(key)
        try:
            with storage_errors(f"looking up {self._bucket.uri(full)}", "head"):
                answer = self._bucket.client.head_object(Bucket=self._bucket.location.bucket, Key=full)
        except OperationError as error:
            if error.reason is Reason.ARTIFACT_NOT_FOUND:
                return None
            raise
        return dict(answer.get("Metadata", {}))

    def list(self, prefix: str) -> list[StoredObject]:
        full = self._full(prefix)
        start = len(self._base) + 1 if self._base else 0
        with storage_errors(f"listing {self._bucket.uri(full)}", "list"):
            pages = self._bucket.client.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket.location.bucket, Prefix=full
            )
            found = [
                StoredObject(item["Key"][start:], int(item["Size"]))
                for page in pages
                for item in page.get("Contents", [])
            ]
        return sorted(found, key=lambda stored: stored.key)

    def delete(self, key: str) -> None:
        full = self._full(key)
        with storage_errors(f"deleting {self._bucket.uri(full)}", "delete"):
            self._bucket.client.delete_object(Bucket=self._bucket.location.bucket, Key=full)


class FolderStore:
    """Objects as files under `root`, a namespace's directory that ArtifactStore resolved."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def _path(self, key: str) -> Path:
        return self._root / _check_key(key)

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    @contextmanager
    def writer(self, key: str, metadata: Mapping[str, str] = {}) -> Iterator[Writable]:
        path = self._path(key)
        with AtomicFile(path) as out:
            yield out
        meta = path.with_name(path.name + _META_SUFFIX)
        if metadata:
            with AtomicFile(meta) as out:
                out.write(json.dumps(dict(metadata), sort_keys=True).encode())
        else:
            meta.unlink(missing_ok=True)

    def open(self, key: str) -> Readable:
        path = self._path(key)
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise PermanentError(Reason.ARTIFACT_NOT_FOUND, f"{path.as_uri()} does not exist") from None
        except OSError as error:
            with disk_errors(path):
                raise error

    def metadata(self, key: str) -> dict[str, str] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        meta = path.with_name(path.name + _META_SUFFIX)
        try:
            stored = json.loads(meta.read_bytes())
        except FileNotFoundError:
            return {}
        return {str(k): str(v) for k, v in stored.items()} if isinstance(stored, dict) else {}

    def list(self, prefix: str) -> list[StoredObject]:
        folder = prefix.rpartition("/")[0]
        directory = self._path(folder) if folder else self._root
        found = []
        for current, _, files in os.walk(directory):
            for name in files:
                path = Path(current, name)
                key = path.relative_to(self._root).as_posix()
                if name.endswith(_META_SUFFIX) or is_partial(name) or not key.startswith(prefix):
                    continue
                found.append(StoredObject(key, path.stat().st_size))
        return sorted(found, key=lambda stored: stored.key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with disk_errors(path):
            path.with_name(path.name + _META_SUFFIX).unlink(missing_ok=True)
            path.unlink(missing_ok=True)
