"""`habitat-operator wal fetch <file name> <destination>`: PostgreSQL's restore_command for an archive.

The recovering server runs it for every file it wants, with the archive's store and encryption key
in its environment (`FetchSource.environment()`, the HABITAT_WAL_* variables, set by whoever
starts the server: never on a command line). It writes the file's plaintext to `destination`
(through a temporary name, so a half-written file is never there), after checking the stored
bytes' and the plaintext's SHA-256 against the object's metadata. A segment that is not archived
whole is fetched from `<segment>.partial` (the segment being written when the archive last
uploaded), so recovery replays up to the newest archived commit.

Exit status, as restore_command is read: 0 fetched; 1 not in the archive (PostgreSQL asks for
files that may not exist, e.g. the next timeline's history, and ends recovery when a segment is
missing); EXIT_FAILED (> 125) for anything else (storage unreachable after retries, a checksum
mismatch, a wrong key), which makes PostgreSQL stop recovering instead of ending it early and
promoting a server that holds less than the archive. Its one-line reason goes to stderr, which the
server logs; no credential is in it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from habitat_operator.api.common import Reason
from habitat_operator.engines.artifacts.codec import PlaintextReader
from habitat_operator.engines.artifacts.s3 import Bucket, S3Location
from habitat_operator.engines.artifacts.store import disk_errors, partial_path
from habitat_operator.engines.wal.layout import HISTORY_NAME, PARTIAL_SUFFIX, SEGMENT_NAME, ArchiveLayout
from habitat_operator.engines.wal.store import BucketStore, FolderStore, ObjectStore
from habitat_operator.engines.wal.uploader import PLAINTEXT_SHA256, SHA256, metadata_value
from habitat_operator.errors import OperationError, PermanentError

EXIT_FETCHED = 0
EXIT_NOT_ARCHIVED = 1
EXIT_FAILED = 126  # > 125: PostgreSQL aborts recovery rather than taking the file as missing
RETRY_DELAYS_SECONDS = (1.0, 2.0, 4.0)

ARCHIVE = "HABITAT_WAL_ARCHIVE"
FOLDER = "HABITAT_WAL_FOLDER"
S3_BUCKET = "HABITAT_WAL_S3_BUCKET"
S3_BASE = "HABITAT_WAL_S3_BASE"
S3_REGION = "HABITAT_WAL_S3_REGION"
S3_ENDPOINT = "HABITAT_WAL_S3_ENDPOINT"
S3_FORCE_PATH_STYLE = "HABITAT_WAL_S3_FORCE_PATH_STYLE"
S3_ACCESS_KEY_ID = "HABITAT_WAL_S3_ACCESS_KEY_ID"
S3_SECRET_ACCESS_KEY = "HABITAT_WAL_S3_SECRET_ACCESS_KEY"
S3_CA_BUNDLE = "HABITAT_WAL_S3_CA_BUNDLE"
ENCRYPTION_KEY = "HABITAT_WAL_ENCRYPTION_KEY"


@dataclass(frozen=True)
class FetchSource:
    """Where an archive is and how to read it: a bucket (`location` and the namespace's `base`
    key in it, as BucketStore takes them) or a namespace's folder on the backup volume."""

    archive: str
    location: S3Location | None = None
    base: str = ""
    folder: Path | None = None
    encryption_key: bytes | None = field(default=None, repr=False)

    def environment(self) -> dict[str, str]:
        """The HABITAT_WAL_* variables for the recovering server's environment (they hold secrets)."""
        env = {ARCHIVE: self.archive}
        if self.folder is not None:
            env[FOLDER] = str(self.folder)
        if self.location is not None:
            env |= {
                S3_BUCKET: self.location.bucket,
                S3_BASE: self.base,
                S3_REGION: self.location.region,
                S3_FORCE_PATH_STYLE: "true" if self.location.force_path_style else "false",
                S3_ACCESS_KEY_ID: self.location.access_key_id,
                S3_SECRET_ACCESS_KEY: self.location.secret_access_key,
            }
            if self.location.endpoint:
                env[S3_ENDPOINT] = self.location.endpoint
            if self.location.ca_bundle:
                env[S3_CA_BUNDLE] = self.location.ca_bundle.decode()
        if self.encryption_key is not None:
            env[ENCRYPTION_KEY] = self.encryption_key.hex()
        return env

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> FetchSource:
        archive = env.get(ARCHIVE, "")
        if not archive or (FOLDER in env) == (S3_BUCKET in env):
            raise PermanentError(
                Reason.INVALID_REQUEST, f"set {ARCHIVE} and exactly one of {FOLDER} or {S3_BUCKET}"
            )
        try:
            key = bytes.fromhex(env[ENCRYPTION_KEY]) if ENCRYPTION_KEY in env else None
        except ValueError:
            raise PermanentError(Reason.KEY_INVALID, f"{ENCRYPTION_KEY} is not hexadecimal") from None
        if FOLDER in env:
            return cls(archive, folder=Path(env[FOLDER]), encryption_key=key)
        location = S3Location(
            bucket=env[S3_BUCKET],
            region=env.get(S3_REGION) or "us-east-1",
            endpoint=env.get(S3_ENDPOINT) or None,
            force_path_style=env.get(S3_FORCE_PATH_STYLE, "").lower() == "true",
            access_key_id=env.get(S3_ACCESS_KEY_ID, ""),
            secret_access_key=env.get(S3_SECRET_ACCESS_KEY, ""),
            ca_bundle=env[S3_CA_BUNDLE].encode() if env.get(S3_CA_BUNDLE) else None,
        )
        return cls(archive, location=location, base=env.get(S3_BASE, ""), encryption_key=key)

    @contextmanager
    def store(self) -> Iterator[ObjectStore]:
        if self.location is None:
            assert self.folder is not None
            yield FolderStore(self.folder)
            return
        with Bucket(self.location) as bucket:
            yield BucketStore(bucket, self.base)


def fetch(
    store: ObjectStore, layout: ArchiveLayout, file_name: str, destination: Path, encryption_key: bytes | None
) -> bool:
    """Write the archived `file_name` (a segment, else its `.partial`, or a history file) to
    `destination`; False when the archive does not hold it. Blocking."""
    if not (SEGMENT_NAME.match(file_name) or HISTORY_NAME.match(file_name)):
        return False
    for attempt in (1, 2):
        key = layout.wal(file_name)
        metadata = store.metadata(key)
        if metadata is None and SEGMENT_NAME.match(file_name):
            key = layout.wal(f"{file_name}{PARTIAL_SUFFIX}")
            metadata = store.metadata(key)
        if metadata is None:
            return False
        try:
            _download(store, key, metadata, destination, encryption_key)
            return True
        except PermanentError as error:
            # A partial segment is replaced as it grows: one read across a replacement is retried.
            if error.reason != Reason.CHECKSUM_MISMATCH or not key.endswith(PARTIAL_SUFFIX) or attempt == 2:
                raise
    return False  # not reached


def _download(
    store: ObjectStore, key: str, metadata: Mapping[str, str], destination: Path, encryption_key: bytes | None
) -> None:
    temporary = partial_path(destination)
    reader = PlaintextReader(store.open(key), encryption_key)
    plain = hashlib.sha256()
    try:
        with disk_errors(destination), temporary.open("wb") as out:
            while chunk := reader.read():
                plain.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        for name, digest in ((SHA256, reader.sha256), (PLAINTEXT_SHA256, plain)):
            expected = metadata_value(metadata, name)
            if expected is not None and expected != digest.hexdigest():
                raise PermanentError(
                    Reason.CHECKSUM_MISMATCH, f"{store.uri(key)} does not match its {name} checksum"
                )
        temporary.replace(destination)
    finally:
        reader.close()
        temporary.unlink(missing_ok=True)


def run_fetch(file_name: str, destination: Path, env: Mapping[str, str]) -> int:
    """The `wal fetch` command: the exit status restore_command needs."""
    try:
        source = FetchSource.from_environment(env)
        layout = ArchiveLayout(source.archive)
        for delay in (*RETRY_DELAYS_SECONDS, None):
            try:
                with source.store() as store:
                    found = fetch(store, layout, file_name, destination, source.encryption_key)
                return EXIT_FETCHED if found else EXIT_NOT_ARCHIVED
            except OperationError as error:
                if not error.retryable or delay is None:
                    raise
                time.sleep(delay)
    except OperationError as error:
        print(f"habitat-operator wal fetch {file_name}: {error.reason}: {error.message}", file=sys.stderr)
    return EXIT_FAILED
