"""Artifacts in an S3-compatible bucket, through boto3: complete or invisible, with a catalog beside each.

Layout: `<prefix>/<namespace>/<name>.dump` (`<name>.tar` for the directory format), and its catalog
entry `<key>.catalog.json` beside it. An artifact goes up as a multipart upload, which the bucket
lists nowhere until it is completed; a failed or cancelled upload is aborted, and one that a killed
operator left behind is aborted by the next attempt (`abort_uploads`: a key belongs to one Backup
object, so every upload to it is that Backup's). The catalog entry is written last, once the
artifact is verified: `latestOf` and `habitat-operator catalog list` read only the catalog, so they
never see an unfinished artifact.

Every failure comes out as an OperationError whose message names the bucket and the key, never a
credential: StorageAuthFailed, BucketNotFound (both permanent), StorageUnreachable (retryable).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Self

from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError, SSLError

from habitat_operator.api.common import Reason
from habitat_operator.engines.artifacts.codec import Readable
from habitat_operator.engines.artifacts.storage_metrics import (
    STORAGE_BYTES,
    STORAGE_REQUEST_DURATION,
    STORAGE_REQUESTS,
)
from habitat_operator.errors import OperationError, PermanentError, RetryableError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ARTIFACT_SUFFIX = ".dump"
TAR_SUFFIX = ".tar"  # a directory-format artifact, as one tar stream (engines/artifacts/tarball)
CATALOG_SUFFIX = ".catalog.json"
PART_SIZE = 16 << 20  # 10,000 parts (S3's limit) make 156 GiB
PARTS_IN_FLIGHT = 2  # memory: PART_SIZE x (PARTS_IN_FLIGHT + the one filling)
READ_SIZE = 1 << 20

_AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
    "XAdminUserNotFound",  # versitygw's answer to an unknown access key id
}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_NO_RETENTION_CODES = {"NoSuchObjectLockConfiguration", "ObjectLockConfigurationNotFoundError"}
_NO_LOCK_CODES = {"ObjectLockConfigurationNotFoundError", "ObjectLockConfigurationNotFound"}


@dataclass(frozen=True)
class S3Location:
    """A bucket, a prefix inside it, and how to reach it; credentials come from a Secret."""

    bucket: str
    prefix: str = ""
    region: str = "us-east-1"
    endpoint: str | None = None
    force_path_style: bool = False
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)
    ca_bundle: bytes | None = field(default=None, repr=False)

    def key(self, *parts: str) -> str:
        """`parts` joined under the prefix, without empty segments."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    def artifact_key(self, namespace: str, name: str, *, tar: bool = False) -> str:
        return self.key(namespace, f"{name}{TAR_SUFFIX if tar else ARTIFACT_SUFFIX}")

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


@dataclass(frozen=True)
class ObjectLockSettings:
    """The Object Lock retention an object is written with: its mode and the date it lasts until."""

    mode: str  # GOVERNANCE or COMPLIANCE
    retain_until: dt.datetime

    def request(self) -> dict[str, Any]:
        return {"ObjectLockMode": self.mode, "ObjectLockRetainUntilDate": self.retain_until}


@dataclass(frozen=True)
class BucketLock:
    """A bucket's Object Lock configuration: enabled, with a default retention or none."""

    default_mode: str | None = None
    default_period: dt.timedelta | None = None


@dataclass(frozen=True)
class ObjectVersion:
    """One object as it was when looked at: every later read of it is pinned to this (its ETag, and
    its version id where the bucket keeps versions), so a replaced object is refused, never read.
    `lock_mode` and `retain_until` are its Object Lock retention, if any."""

    key: str
    size: int
    etag: str
    version_id: str | None = None
    lock_mode: str | None = None
    retain_until: dt.datetime | None = None

    def locked_at(self, now: dt.datetime) -> bool:
        """Whether the server refuses to delete or overwrite this version at `now`."""
        return self.lock_mode is not None and self.retain_until is not None and self.retain_until > now


@dataclass(frozen=True)
class StoredVersions:
    """What an artifact's upload left in the bucket: its and its catalog entry's version ids (None
    where the bucket keeps no versions), and the lock both were written under."""

    version_id: str | None = None
    catalog_version_id: str | None = None
    lock: ObjectLockSettings | None = None


@dataclass(frozen=True)
class KeyHistory:
    """A key's versions, oldest first, and the version ids of the delete markers among them."""

    key: str
    versions: tuple[ObjectVersion, ...]
    delete_markers: tuple[str, ...] = ()


def catalog_key(artifact_key: str) -> str:
    return f"{artifact_key}{CATALOG_SUFFIX}"


def recency(entry: dict[str, Any]) -> tuple[str, str]:
    """The order of catalog entries by age: completion time (RFC 3339 sorts as text), then key."""
    return str(entry.get("completedAt", "")), str(entry["key"])


def storage_error(error: Exception, doing: str) -> OperationError:
    """A boto3 failure as an OperationError naming what was being done; never the error's own text,
    which may quote request headers."""
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _AUTH_CODES or status == 403:
            return PermanentError(
                Reason.STORAGE_AUTH_FAILED, f"{doing}: the bucket refused the credentials ({code or status})"
            )
        if code == "NoSuchBucket":
            return PermanentError(Reason.BUCKET_NOT_FOUND, f"{doing}: the bucket does not exist")
        if code in _NOT_FOUND_CODES:
            return PermanentError(Reason.ARTIFACT_NOT_FOUND, f"{doing}: no such object")
        if code == "PreconditionFailed" or status == 412:
            return PermanentError(
                Reason.CHECKSUM_MISMATCH, f"{doing}: the object was replaced after it was checked"
            )
        if status >= 500 or code in ("SlowDown", "RequestTimeout"):
            return RetryableError(
                Reason.STORAGE_UNREACHABLE, f"{doing}: the server answered {code or status}"
            )
        return PermanentError(Reason.STORAGE_FAILED, f"{doing}: the server answered {code or status}")
    if isinstance(error, SSLError):
        untrusted = "CERTIFICATE_VERIFY_FAILED" in str(error)
        detail = (
            "the endpoint's TLS certificate is not trusted (a private CA goes in caSecretRef)"
            if untrusted
            else "the TLS handshake with the S3 endpoint failed"
        )
        return RetryableError(Reason.STORAGE_UNREACHABLE, f"{doing}: {detail}")
    if isinstance(error, ConnectionError | HTTPClientError):
        return RetryableError(Reason.STORAGE_UNREACHABLE, f"{doing}: cannot reach the S3 endpoint")
    return RetryableError(Reason.STORAGE_FAILED, f"{doing}: {type(error).__name__}")


@contextmanager
def storage_errors(doing: str, operation: str) -> Iterator[None]:
    """Count and time one request (`operation` is its metric label), and turn boto3's exceptions
    (and a stream cut midway) into storage_error's OperationErrors."""
    started = time.monotonic()
    try:
        yield
    except (BotoCoreError, ClientError, OSError) as error:
        STORAGE_REQUESTS.labels(operation, "failure").inc()
        raise storage_error(error, doing) from None
    finally:
        STORAGE_REQUEST_DURATION.labels(operation).observe(time.monotonic() - started)
    STORAGE_REQUESTS.labels(operation, "success").inc()


class Bucket:
    """One bucket through one boto3 client. Blocking: call it from an ENGINE_POOL thread."""

    def __init__(self, location: S3Location) -> None:
        self.location = location
        self._ca_file: IO[bytes] | None = None
        if location.ca_bundle:
            # botocore takes a CA bundle only as a file; this one lives as long as the client.
            self._ca_file = tempfile.NamedTemporaryFile(prefix="habitat-s3-ca-", suffix=".pem")  # noqa: SIM115
            self._ca_file.write(location.ca_bundle)
            self._ca_file.flush()
        # boto3 costs about 20 MB of RSS once imported: only an operator that uses a bucket pays it.
        import boto3
        from botocore.config import Config

        config = Config(
            s3={"addressing_style": "path" if location.force_path_style else "auto"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            # Checksums the server does not ask for cost CPU, and some S3-compatible servers refuse them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self.client: S3Client = boto3.session.Session().client(
            "s3",
            endpoint_url=location.endpoint,
            region_name=location.region,
            aws_access_key_id=location.access_key_id or None,  # None: boto3 looks in the environment
            aws_secret_access_key=location.secret_access_key or None,
            verify=self._ca_file.name if self._ca_file else None,
            config=config,
        )

    def close(self) -> None:
        self.client.close()
        if self._ca_file:
            self._ca_file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def uri(self, key: str) -> str:
        return self.location.uri(key)

    def upload(
        self, key: str, metadata: dict[str, str] | None = None, lock: ObjectLockSettings | None = None
    ) -> MultipartUpload:
        return MultipartUpload(self, key, metadata or {}, lock)

    def object_lock(self) -> BucketLock | None:
        """The bucket's Object Lock configuration; None when it has none (it can only be enabled
        when the bucket is created)."""
        with storage_errors(f"reading the Object Lock configuration of {self.uri('')}", "get_lock"):
            try:
                answer = self.client.get_object_lock_configuration(Bucket=self.location.bucket)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in _NO_LOCK_CODES:
                    return None
                raise
        configuration = answer.get("ObjectLockConfiguration", {})
        if configuration.get("ObjectLockEnabled") != "Enabled":
            return None
        rule = configuration.get("Rule", {}).get("DefaultRetention", {})
        days = int(rule.get("Days") or 0) + 365 * int(rule.get("Years") or 0)
        return BucketLock(rule.get("Mode"), dt.timedelta(days=days) if days else None)

    def abort_uploads(self, key: str) -> int:
        """Abort the unfinished multipart uploads to exactly `key`; how many there were."""
        return self.abort_uploads_where(key, lambda found: found == key)

    def abort_uploads_where(self, prefix: str, belongs: Callable[[str], object]) -> int:
        """Abort the unfinished multipart uploads to the keys under `prefix` that `belongs` accepts
        (e.g. every attempt's key of one Backup); how many there were."""
        with storage_errors(f"listing the unfinished uploads to {self.uri(prefix)}", "list_uploads"):
            found = self.client.list_multipart_uploads(Bucket=self.location.bucket, Prefix=prefix)
        aborted = 0
        for upload in found.get("Uploads", []):
            key = str(upload.get("Key", ""))
            if not belongs(key):
                continue
            with storage_errors(f"aborting an unfinished upload to {self.uri(key)}", "abort_upload"):
                self.client.abort_multipart_upload(
                    Bucket=self.location.bucket, Key=key, UploadId=upload["UploadId"]
                )
            aborted += 1
        return aborted

    def head(self, key: str, version_id: str | None = None) -> ObjectVersion:
        """What the object (or that version of it) is now: its size, ETag, version id and Object
        Lock retention (HEAD, no byte of it read)."""
        pin = {"VersionId": version_id} if version_id else {}
        with storage_errors(f"looking up {self.uri(key)}", "head"):
            answer = self.client.head_object(Bucket=self.location.bucket, Key=key, **pin)  # type: ignore[arg-type]
        version = answer.get("VersionId")
        return ObjectVersion(
            key,
            int(answer["ContentLength"]),
            str(answer["ETag"]),
            None if version in (None, "null") else str(version),
            answer.get("ObjectLockMode"),
            answer.get("ObjectLockRetainUntilDate"),
        )

    def history(self, key: str) -> KeyHistory:
        """Every version of exactly `key`, oldest first, each looked up for its lock (a bucket that
        keeps no versions shows one); empty when the key never held an object."""
        versions: list[Any] = []
        markers: list[str] = []
        with storage_errors(f"listing the versions of {self.uri(key)}", "list_versions"):
            pages = self.client.get_paginator("list_object_versions").paginate(
                Bucket=self.location.bucket, Prefix=key
            )
            for page in pages:
                versions += [v for v in page.get("Versions", []) if v.get("Key") == key]
                markers += [str(m["VersionId"]) for m in page.get("DeleteMarkers", []) if m.get("Key") == key]
        found = []
        for version in reversed(versions):  # S3 lists a key's versions newest first
            version_id = version.get("VersionId")
            looked_up = self.head(key, None if version_id in (None, "null") else str(version_id))
            found.append(self._with_retention(looked_up))
        return KeyHistory(key, tuple(found), tuple(markers))

    def _with_retention(self, version: ObjectVersion) -> ObjectVersion:
        """The version with its Object Lock retention asked for on its own: a HEAD of a version
        that is no longer the current one may leave it out (versitygw 1.8 does)."""
        pin = {"VersionId": version.version_id} if version.version_id else {}
        with storage_errors(f"reading the retention of {self.uri(version.key)}", "get_retention"):
            try:
                answer = self.client.get_object_retention(
                    Bucket=self.location.bucket,
                    Key=version.key,
                    **pin,  # type: ignore[arg-type]
                )
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in _NO_RETENTION_CODES:
                    return replace(version, lock_mode=None, retain_until=None)
                raise
        retention = answer.get("Retention", {})
        return replace(
            version, lock_mode=retention.get("Mode"), retain_until=retention.get("RetainUntilDate")
        )

    def delete_version(self, version: ObjectVersion) -> None:
        """Delete that version for good (or the object, where the bucket keeps no versions)."""
        pin = {"VersionId": version.version_id} if version.version_id else {}
        with storage_errors(f"deleting {self.uri(version.key)}", "delete"):
            self.client.delete_object(Bucket=self.location.bucket, Key=version.key, **pin)  # type: ignore[arg-type]

    def open(self, key: str, pinned: ObjectVersion | None = None) -> Readable:
        """The object's content as a stream with `read(size)`; close it when done. With `pinned`, the
        content of exactly that version, or PermanentError ChecksumMismatch if it was replaced."""
        pin: dict[str, str] = {}
        if pinned is not None:
            pin["IfMatch"] = pinned.etag
            if pinned.version_id:
                pin["VersionId"] = pinned.version_id
        with storage_errors(f"reading {self.uri(key)}", "get"):
            body = self.client.get_object(Bucket=self.location.bucket, Key=key, **pin)["Body"]  # type: ignore[arg-type]
        return _ErrorTranslatingStream(body, f"reading {self.uri(key)}")

    def put_catalog(
        self, artifact_key: str, entry: dict[str, Any], lock: ObjectLockSettings | None = None
    ) -> str | None:
        """Write the artifact's catalog entry; its version id, where the bucket keeps versions.

        Under `lock` the entry is locked too, and written only if the key holds none yet
        (If-None-Match): an entry is never rewritten, a later state would be a new object."""
        key = catalog_key(artifact_key)
        body = json.dumps(entry, indent=2, sort_keys=True).encode()
        locked: dict[str, Any] = {}
        if lock is not None:
            # S3 wants a content checksum on every write that carries a retention.
            locked = {**lock.request(), "IfNoneMatch": "*", "ContentMD5": _md5(body)}
        try:
            with storage_errors(f"writing the catalog entry {self.uri(key)}", "put_catalog"):
                answer = self.client.put_object(
                    Bucket=self.location.bucket,
                    Key=key,
                    Body=body,
                    ContentType="application/json",
                    **locked,
                )
        except OperationError as error:
            # If-None-Match failed, or (a server that keeps no versions) the key is locked.
            refused = (Reason.CHECKSUM_MISMATCH, Reason.STORAGE_AUTH_FAILED)
            if lock is None or error.reason not in refused or not self._exists(key):
                raise
            raise PermanentError(
                Reason.STORAGE_FAILED, f"{self.uri(key)} exists: a locked catalog entry is written once"
            ) from None
        return _version_id(answer)

    def _exists(self, key: str) -> bool:
        try:
            self.head(key)
        except OperationError:
            return False
        return True

    def catalog_entry(self, artifact_key: str) -> dict[str, Any] | None:
        """The catalog entry of one artifact, with its `key`; None when it has none."""
        key = catalog_key(artifact_key)
        try:
            with storage_errors(f"reading the catalog entry {self.uri(key)}", "get_catalog"):
                body = self.client.get_object(Bucket=self.location.bucket, Key=key)["Body"].read()
        except OperationError as error:
            if error.reason is Reason.ARTIFACT_NOT_FOUND:
                return None
            raise
        return parse_entry(body, artifact_key)

    def catalog(self) -> list[dict[str, Any]]:
        """Every catalog entry under the prefix, each with its artifact's `key`."""
        prefix = self.location.key()
        entries = []
        with storage_errors(f"listing s3://{self.location.bucket}/{prefix}", "list"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=f"{prefix}/" if prefix else ""
            )
            keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        for key in keys:
            if not key.endswith(CATALOG_SUFFIX):
                continue
            with storage_errors(f"reading the catalog entry {self.uri(key)}", "get_catalog"):
                body = self.client.get_object(Bucket=self.location.bucket, Key=key)["Body"].read()
            entry = parse_entry(body, key.removesuffix(CATALOG_SUFFIX))
            if entry is not None:
                entries.append(entry)
        return entries

    def delete_artifact(self, key: str) -> None:
        """Delete the catalog entry, then the artifact: `latestOf` never picks one being deleted."""
        for doomed in (catalog_key(key), key):
            with storage_errors(f"deleting {self.uri(doomed)}", "delete"):
                self.client.delete_object(Bucket=self.location.bucket, Key=doomed)


def _md5(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()


def _version_id(answer: Any) -> str | None:
    version = answer.get("VersionId")
    return None if version in (None, "null") else str(version)


def parse_entry(body: bytes, artifact_key: str) -> dict[str, Any] | None:
    """A catalog entry with its artifact's key; None for what is not one (hand-edited, not ours)."""
    try:
        entry = json.loads(body)
    except ValueError:
        return None
    return {**entry, "key": artifact_key} if isinstance(entry, dict) else None


class _ErrorTranslatingStream:
    """A botocore StreamingBody whose failures midway come out as OperationErrors."""

    def __init__(self, body: Any, doing: str) -> None:
        self._body = body
        self._doing = doing

    def read(self, size: int = READ_SIZE) -> bytes:
        with storage_errors(self._doing, "read"):
            data = bytes(self._body.read(size))
        STORAGE_BYTES.labels("downloaded").inc(len(data))
        return data

    def close(self) -> None:
        self._body.close()


class MultipartUpload:
    """Upload one object in parts as its bytes come: nothing is listed until `complete`.

    `write` cuts the stream into PART_SIZE parts and uploads each in one of PARTS_IN_FLIGHT threads
    while the next fills, waiting when all are busy: memory stays within PART_SIZE x
    (PARTS_IN_FLIGHT + 1), whatever the object's size. Leaving the `with` block by an exception
    aborts the upload; `complete` must be called for the object to appear.
    """

    def __init__(
        self, bucket: Bucket, key: str, metadata: dict[str, str], lock: ObjectLockSettings | None = None
    ) -> None:
        self.bucket = bucket
        self.key = key
        self.uri = bucket.uri(key)
        self._metadata = metadata
        self._lock = lock
        self.version_id: str | None = None  # once completed, where the bucket keeps versions
        self._buffer = bytearray()
        self._parts: list[Future[dict[str, Any]]] = []
        self._slots = threading.BoundedSemaphore(PARTS_IN_FLIGHT)
        self._pool = ThreadPoolExecutor(PARTS_IN_FLIGHT, thread_name_prefix="habitat-s3-part")
        self.upload_id = ""

    def __enter__(self) -> Self:
        with storage_errors(f"starting the upload of {self.uri}", "create_upload"):
            created = self.bucket.client.create_multipart_upload(
                Bucket=self.bucket.location.bucket,
                Key=self.key,
                Metadata=self._metadata,
                **(self._lock.request() if self._lock else {}),
            )
        self.upload_id = created["UploadId"]
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is not None:
            self.abort()
        self._pool.shutdown(wait=True)

    def write(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= PART_SIZE:
            self._send(bytes(self._buffer[:PART_SIZE]))
            del self._buffer[:PART_SIZE]

    def sync(self) -> None:
        """Send what is buffered and wait until every part is uploaded."""
        if self._buffer or not self._parts:  # an empty object is still one (empty) part
            self._send(bytes(self._buffer))
            self._buffer.clear()
        for part in self._parts:
            part.result()

    def complete(self) -> None:
        """Make the object visible: the one step after which readers see it, all of it."""
        self.sync()
        with storage_errors(f"completing the upload of {self.uri}", "complete_upload"):
            answer = self.bucket.client.complete_multipart_upload(
                Bucket=self.bucket.location.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": [part.result() for part in self._parts]},  # type: ignore[misc]
            )
        self.version_id = _version_id(answer)

    def abort(self) -> None:
        """Stop uploading and discard the parts; best effort (the next attempt aborts it otherwise)."""
        for part in self._parts:
            part.cancel()
        self._pool.shutdown(wait=True)
        if self.upload_id:
            with suppress(BotoCoreError, ClientError, OSError):
                self.bucket.client.abort_multipart_upload(
                    Bucket=self.bucket.location.bucket, Key=self.key, UploadId=self.upload_id
                )

    def _send(self, body: bytes) -> None:
        for part in self._parts:
            if part.done() and part.exception() is not None:
                part.result()  # the first failed part ends the upload
        self._slots.acquire()
        number = len(self._parts) + 1
        future = self._pool.submit(self._upload_part, number, body)
        future.add_done_callback(lambda _: self._slots.release())
        self._parts.append(future)

    def _upload_part(self, number: int, body: bytes) -> dict[str, Any]:
        with storage_errors(f"uploading part {number} of {self.uri}", "upload_part"):
            answer = self.bucket.client.upload_part(
                Bucket=self.bucket.location.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=body,
                **({"ContentMD5": _md5(body)} if self._lock else {}),  # type: ignore[arg-type]
            )
        STORAGE_BYTES.labels("uploaded").inc(len(body))
        return {"PartNumber": number, "ETag": answer["ETag"]}
