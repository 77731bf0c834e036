"""Where an archive lives, handed to PostgreSQL's `restore_command` through its environment.

The private recovery server runs `habitat-operator wal fetch %f %p` for every WAL file it wants;
that command learns the store, the archive and the encryption key from the `HABITAT_WAL_*`
variables below, never from its argv (which `ps` shows). `fetch_environment` writes them (the
recovery side), `access_from_environment` reads them back (the fetch side): the one place that
names them. Only the private server and its restore_command see this environment.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from habitat_operator.api.common import Reason
from habitat_operator.engines.artifacts.s3 import Bucket, S3Location
from habitat_operator.engines.wal.layout import ArchiveLayout
from habitat_operator.engines.wal.store import BucketStore, FolderStore, ObjectStore
from habitat_operator.errors import PermanentError

ARCHIVE = "HABITAT_WAL_ARCHIVE"  # the archive's name: its folder in the namespace's part of the store
FOLDER = "HABITAT_WAL_FOLDER"  # a folder store: the namespace's directory on the backup volume
S3_BUCKET = "HABITAT_WAL_S3_BUCKET"
S3_BASE = "HABITAT_WAL_S3_BASE"  # the key prefix of the namespace's part: `<prefix>/<namespace>`
S3_REGION = "HABITAT_WAL_S3_REGION"
S3_ENDPOINT = "HABITAT_WAL_S3_ENDPOINT"
S3_FORCE_PATH_STYLE = "HABITAT_WAL_S3_FORCE_PATH_STYLE"  # "true" or "false"
S3_ACCESS_KEY_ID = "HABITAT_WAL_S3_ACCESS_KEY_ID"
S3_SECRET_ACCESS_KEY = "HABITAT_WAL_S3_SECRET_ACCESS_KEY"
S3_CA_BUNDLE = "HABITAT_WAL_S3_CA_BUNDLE"  # PEM text
ENCRYPTION_KEY = "HABITAT_WAL_ENCRYPTION_KEY"  # base64 of the key's bytes
NAMES = (
    ARCHIVE,
    FOLDER,
    S3_BUCKET,
    S3_BASE,
    S3_REGION,
    S3_ENDPOINT,
    S3_FORCE_PATH_STYLE,
    S3_ACCESS_KEY_ID,
    S3_SECRET_ACCESS_KEY,
    S3_CA_BUNDLE,
    ENCRYPTION_KEY,
)


@dataclass(frozen=True)
class ArchiveAccess:
    """One archive in a store rooted at a namespace: a bucket's `location` (its prefix, not yet the
    namespace) with `namespace`, or a `folder` that already is the namespace's directory."""

    archive: str
    namespace: str = ""
    location: S3Location | None = None
    folder: Path | None = None
    encryption_key: bytes | None = field(default=None, repr=False)

    @property
    def layout(self) -> ArchiveLayout:
        return ArchiveLayout(self.archive)


def fetch_environment(access: ArchiveAccess) -> dict[str, str]:
    """The HABITAT_WAL_* variables that let `wal fetch` open `access`'s archive."""
    env = {ARCHIVE: access.archive}
    if access.encryption_key is not None:
        env[ENCRYPTION_KEY] = base64.b64encode(access.encryption_key).decode()
    if access.folder is not None:
        return env | {FOLDER: str(access.folder)}
    location = access.location
    if location is None:
        raise PermanentError(Reason.INVALID_REQUEST, "an archive needs a bucket or a folder")
    env |= {
        S3_BUCKET: location.bucket,
        S3_BASE: location.key(access.namespace),
        S3_REGION: location.region,
        S3_FORCE_PATH_STYLE: "true" if location.force_path_style else "false",
        S3_ACCESS_KEY_ID: location.access_key_id,
        S3_SECRET_ACCESS_KEY: location.secret_access_key,
    }
    if location.endpoint:
        env[S3_ENDPOINT] = location.endpoint
    if location.ca_bundle:
        env[S3_CA_BUNDLE] = location.ca_bundle.decode()
    return env


def access_from_environment(environ: Mapping[str, str]) -> ArchiveAccess:
    """What fetch_environment wrote; PermanentError InvalidRequest naming the variable that is
    missing or wrong (never its value)."""
    archive = _required(environ, ARCHIVE)
    key = None
    if ENCRYPTION_KEY in environ:
        try:
            key = base64.b64decode(environ[ENCRYPTION_KEY], validate=True)
        except (binascii.Error, ValueError):
            raise PermanentError(Reason.INVALID_REQUEST, f"{ENCRYPTION_KEY} is not base64") from None
    if FOLDER in environ:
        return ArchiveAccess(archive, folder=Path(environ[FOLDER]), encryption_key=key)
    location = S3Location(
        bucket=_required(environ, S3_BUCKET),
        prefix=environ.get(S3_BASE, ""),
        region=environ.get(S3_REGION, "us-east-1"),
        endpoint=environ.get(S3_ENDPOINT) or None,
        force_path_style=environ.get(S3_FORCE_PATH_STYLE) == "true",
        access_key_id=environ.get(S3_ACCESS_KEY_ID, ""),
        secret_access_key=environ.get(S3_SECRET_ACCESS_KEY, ""),
        ca_bundle=environ[S3_CA_BUNDLE].encode() if environ.get(S3_CA_BUNDLE) else None,
    )
    return ArchiveAccess(archive, location=location, encryption_key=key)  # the prefix holds the namespace


@contextmanager
def open_store(access: ArchiveAccess) -> Iterator[ObjectStore]:
    """The store `access` names, rooted at its namespace; a bucket's client is closed on leaving.
    Blocking: call from an ENGINE_POOL thread."""
    if access.folder is not None:
        yield FolderStore(access.folder)
        return
    if access.location is None:
        raise PermanentError(Reason.INVALID_REQUEST, "an archive needs a bucket or a folder")
    with Bucket(access.location) as bucket:
        yield BucketStore(bucket, access.location.key(access.namespace))


def _required(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name)
    if not value:
        raise PermanentError(Reason.INVALID_REQUEST, f"{name} is not set")
    return value
