"""storage.s3 in the API (CEL rules and their Python twins), boto3 failures as reasons, and the
artifact codec (zstd, encryption, SHA-256) both ways."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, SSLError
from pydantic import ValidationError

from habitat_operator.api.backup import BackupSpec
from habitat_operator.api.common import Reason
from habitat_operator.api.restore import RestoreSpec, StorageSource
from habitat_operator.controllers.base.buckets import encryption_key_id, object_key
from habitat_operator.controllers.restore.source import _catalog_entry, _check_key
from habitat_operator.engines.artifacts.codec import READ_SIZE, ZSTD_MAGIC, ArtifactSink, PlaintextReader
from habitat_operator.engines.artifacts.s3 import ObjectVersion, S3Location, storage_error
from habitat_operator.errors import OperationError
from tests.unit.helpers import Collected, backup_spec, restore_spec

S3 = {"bucket": "habitat-offsite", "prefix": "prod", "credentialsSecretRef": {"name": "s3"}}
LOCATION = S3Location(bucket="habitat-offsite", prefix="prod/eu")


def test_s3_storage_defaults() -> None:
    parsed = BackupSpec.model_validate(backup_spec(storage={"s3": S3}))
    assert parsed.storage.s3 is not None and parsed.storage.filesystem is None
    s3 = parsed.storage.s3
    assert (s3.region, s3.endpoint, s3.force_path_style) == ("us-east-1", None, False)
    assert (s3.credentials_secret_ref.access_key_id_key, s3.credentials_secret_ref.secret_access_key_key) == (
        "accessKeyId",
        "secretAccessKey",
    )
    assert parsed.compression == "gzip"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"storage": {}}, "storage needs exactly one of filesystem or s3"),
        (
            {"storage": {"s3": S3, "filesystem": {"path": "x"}}},
            "storage needs exactly one of filesystem or s3",
        ),
        ({"format": "directory", "compression": "zstd"}, "compression zstd or none is supported"),
        ({"storage": {"s3": {**S3, "prefix": "a/../b"}}}, "prefix must not contain '..' segments"),
        ({"storage": {"s3": {**S3, "prefix": "/abs"}}}, "prefix must be relative"),
        ({"storage": {"s3": {**S3, "bucket": "Not_A_Bucket"}}}, "String should match pattern"),
        ({"storage": {"s3": {**S3, "endpoint": "ftp://x"}}}, "String should match pattern"),
    ],
)
def test_invalid_s3_specs(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        BackupSpec.model_validate(backup_spec(**overrides))


def test_a_bucket_takes_the_directory_format_encrypted_and_compressed() -> None:
    parsed = BackupSpec.model_validate(
        backup_spec(
            storage={"s3": S3},
            format="directory",
            jobs=2,
            compression="zstd",
            encryption={"keySecretRef": {"name": "k"}},
        )
    )
    assert (parsed.format, parsed.jobs, parsed.compression) == ("directory", 2, "zstd")


def test_restore_from_a_bucket_needs_latest_of_or_key() -> None:
    latest = {"storage": {"s3": S3, "latestOf": {"database": "habitat"}}}
    assert RestoreSpec.model_validate(restore_spec(source=latest)).source.storage is not None
    with pytest.raises(ValidationError, match="exactly one of latestOf or key"):
        RestoreSpec.model_validate(restore_spec(source={"storage": {"s3": S3}}))
    both = {"storage": {"s3": S3, "key": "prod/a.dump"}, "backupRef": {"name": "x"}}
    with pytest.raises(ValidationError, match="exactly one of backupRef, artifact, storage or pointInTime"):
        RestoreSpec.model_validate(restore_spec(source=both))


def client_error(code: str, status: int) -> ClientError:
    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("error", "reason", "retryable"),
    [
        (client_error("SignatureDoesNotMatch", 403), Reason.STORAGE_AUTH_FAILED, False),
        (client_error("InvalidAccessKeyId", 403), Reason.STORAGE_AUTH_FAILED, False),
        (client_error("Whatever", 403), Reason.STORAGE_AUTH_FAILED, False),
        (client_error("NoSuchBucket", 404), Reason.BUCKET_NOT_FOUND, False),
        (client_error("NoSuchKey", 404), Reason.ARTIFACT_NOT_FOUND, False),
        (client_error("InternalError", 500), Reason.STORAGE_UNREACHABLE, True),
        (client_error("SlowDown", 503), Reason.STORAGE_UNREACHABLE, True),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), Reason.STORAGE_UNREACHABLE, True),
    ],
)
def test_storage_errors_become_reasons(error: Exception, reason: Reason, retryable: bool) -> None:
    result = storage_error(error, "uploading s3://b/k")
    assert (result.reason, result.retryable) == (reason, retryable)
    assert result.message.startswith("uploading s3://b/k: ")


def test_an_untrusted_certificate_is_named_as_such() -> None:
    verify_failed = Exception("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    untrusted = storage_error(SSLError(endpoint_url="https://127.0.0.1:9", error=verify_failed), "listing")
    assert (untrusted.reason, untrusted.retryable) == (Reason.STORAGE_UNREACHABLE, True)
    assert untrusted.message == (
        "listing: the endpoint's TLS certificate is not trusted (a private CA goes in caSecretRef)"
    )
    other = storage_error(SSLError(endpoint_url="https://127.0.0.1:9", error=Exception("EOF")), "listing")
    assert other.message == "listing: the TLS handshake with the S3 endpoint failed"


def test_keys_under_the_prefix() -> None:
    assert LOCATION.artifact_key("team-a", "nightly") == "prod/eu/team-a/nightly.dump"
    assert S3Location(bucket="b").artifact_key("team-a", "n") == "team-a/n.dump"
    assert (
        object_key(LOCATION, "s3://habitat-offsite/prod/eu/team-a/n.dump", "team-a")
        == "prod/eu/team-a/n.dump"
    )


@pytest.mark.parametrize(
    "uri",
    [
        "s3://habitat-offsite/prod/eu/team-b/n.dump",  # another namespace's
        "s3://other-bucket/prod/eu/team-a/n.dump",
        "s3://habitat-offsite/prod/eu/team-a/../team-b/n.dump",
        "file:///backups/prod/eu/team-a/n.dump",
    ],
)
def test_a_uri_outside_the_namespace_reaches_nothing(uri: str) -> None:
    with pytest.raises(OperationError) as caught:
        object_key(LOCATION, uri, "team-a")
    assert caught.value.reason is Reason.INVALID_ARTIFACT_PATH


def test_key_ids_name_a_key_without_revealing_it() -> None:
    key = os.urandom(32)
    assert encryption_key_id(key) == encryption_key_id(key) != encryption_key_id(os.urandom(32))
    assert key.hex()[:16] not in encryption_key_id(key)


@pytest.mark.parametrize(
    ("zstd", "key"), [(False, None), (True, None), (True, b"k" * 32), (False, b"k" * 32)]
)
def test_the_codec_round_trips(zstd: bool, key: bytes | None) -> None:
    plain = b"PGDMP" + b"habitat row\n" * 200_000 + os.urandom(3 << 20)
    out = Collected()
    sink = ArtifactSink(out, key, zstd=zstd)
    for start in range(0, len(plain), 1 << 20):
        sink.write(plain[start : start + (1 << 20)])
    sink.finish()
    stored = bytes(out.data)
    assert sink.sha256.hexdigest() == hashlib.sha256(stored).hexdigest() and sink.size == len(stored)
    assert stored.startswith(ZSTD_MAGIC) == (zstd and key is None)

    reader = PlaintextReader(io.BytesIO(stored), key)
    chunks = []
    while chunk := reader.read():
        assert len(chunk) <= 64 << 20
        chunks.append(chunk)
    assert b"".join(chunks) == plain
    assert reader.sha256.hexdigest() == sink.sha256.hexdigest()


@pytest.mark.parametrize("key", [None, b"k" * 32])
def test_decompressed_chunks_stay_small_however_well_the_data_compressed(key: bytes | None) -> None:
    out = Collected()
    sink = ArtifactSink(out, key, zstd=True)
    for _ in range(256):
        sink.write(bytes(1 << 20))  # 256 MiB of zeros: a few kilobytes of zstd
    sink.finish()
    reader = PlaintextReader(io.BytesIO(bytes(out.data)), key)
    total = 0
    while chunk := reader.read():
        assert len(chunk) <= READ_SIZE
        total += len(chunk)
    assert total == 256 << 20 and reader.finished


def test_an_encrypted_artifact_needs_its_key() -> None:
    out = Collected()
    sink = ArtifactSink(out, b"k" * 32, zstd=True)
    sink.write(b"PGDMP data")
    sink.finish()
    with pytest.raises(OperationError) as caught:
        PlaintextReader(io.BytesIO(bytes(out.data)), None).read()
    assert caught.value.reason is Reason.DECRYPTION_FAILED


class Catalog:
    """A bucket as `_catalog_entry` reads it: its catalog entries, and the size of each object."""

    def __init__(self, *entries: dict[str, Any], sizes: dict[str, int] | None = None) -> None:
        self.entries = list(entries)
        self.location = LOCATION
        self.sizes = sizes or {}

    def catalog(self) -> list[dict[str, Any]]:
        return self.entries

    def catalog_entry(self, key: str) -> dict[str, Any] | None:
        return next((e for e in self.entries if e["key"] == key), None)

    def head(self, key: str, version_id: str | None = None) -> ObjectVersion:
        return ObjectVersion(key, self.sizes.get(key, 100), '"etag"', version_id)

    def uri(self, key: str) -> str:
        return LOCATION.uri(key)


NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def entry(
    name: str,
    completed: str,
    database: str = "habitat",
    verified: bool = True,
    namespace: str = "shop",
    **fields: Any,
) -> dict[str, Any]:
    return {
        "key": f"prod/eu/{namespace}/{name}.dump",
        "namespace": namespace,
        "database": database,
        "verified": verified,
        "completedAt": completed,
        "sha256": "ab" * 32,
        "sizeBytes": 100,
        "server": "db:5432",
    } | fields


def chosen(
    bucket: Catalog, latest_of: dict[str, Any], namespace: str = "shop"
) -> tuple[str, tuple[str, ...]]:
    source = StorageSource.model_validate({"s3": S3, "latestOf": latest_of})
    found, skipped = _catalog_entry(bucket, source, namespace, NOW)  # type: ignore[arg-type]
    return found["key"].rsplit("/", 1)[1], skipped


def test_latest_of_takes_the_newest_verified_artifact_of_the_database() -> None:
    bucket = Catalog(
        entry("a", "2026-11-27T03:00:00Z"),
        entry("b", "2026-11-28T03:00:00Z"),
        entry("c", "2026-11-29T03:00:00Z", verified=False),
        entry("d", "2026-11-30T03:00:00Z", database="other"),
    )
    assert chosen(bucket, {"database": "habitat"}) == ("b.dump", ())
    by_key = StorageSource.model_validate({"s3": S3, "key": "prod/eu/shop/a.dump"})
    found, _ = _catalog_entry(bucket, by_key, "shop", NOW)  # type: ignore[arg-type]
    assert found["completedAt"] == "2026-11-27T03:00:00Z"
    unknown = StorageSource.model_validate({"s3": S3, "key": "z"})
    assert _catalog_entry(bucket, unknown, "shop", NOW) == ({"key": "z"}, ())  # type: ignore[arg-type]

    nothing = StorageSource.model_validate({"s3": S3, "latestOf": {"database": "missing"}})
    with pytest.raises(OperationError) as caught:
        _catalog_entry(bucket, nothing, "shop", NOW)  # type: ignore[arg-type]
    assert caught.value.reason is Reason.ARTIFACT_NOT_FOUND


def test_latest_of_chooses_among_the_backups_of_the_restores_namespace_unless_told_another() -> None:
    bucket = Catalog(
        entry("ours", "2026-11-28T03:00:00Z"),
        entry("theirs", "2026-11-29T03:00:00Z", namespace="rival"),
        # Claims to be ours, but lies in the rival's folder.
        entry("forged", "2026-11-30T03:00:00Z", namespace="rival") | {"namespace": "shop"},
        entry("elsewhere", "2026-11-27T03:00:00Z", server="other:5432"),
    )
    assert chosen(bucket, {"database": "habitat"}) == ("ours.dump", ())
    assert chosen(bucket, {"database": "habitat"}, namespace="rival")[0] == "theirs.dump"
    assert chosen(bucket, {"database": "habitat", "namespace": "rival"})[0] == "theirs.dump"
    assert chosen(bucket, {"database": "habitat", "server": "other:5432"})[0] == "elsewhere.dump"
    with pytest.raises(OperationError, match="by Backups of namespace renamed"):
        chosen(bucket, {"database": "habitat", "namespace": "renamed"})


def test_latest_of_passes_over_an_entry_it_cannot_trust_and_says_which() -> None:
    bucket = Catalog(
        entry("good", "2026-11-28T03:00:00Z"),
        entry("no-sha", "2099-01-01T00:00:00Z", sha256=None),
        entry("bad-sha", "2026-11-30T00:00:00Z", sha256="not-hex"),
        entry("future", "2026-12-01T00:10:00Z"),
        entry("resized", "2026-11-30T12:00:00Z"),
        entry("skewed", "2026-12-01T00:04:00Z", sizeBytes=100),
        sizes={"prod/eu/shop/resized.dump": 99},
    )
    key, skipped = chosen(bucket, {"database": "habitat"})
    assert key == "skewed.dump"  # within the clock skew allowed
    key, skipped = chosen(
        Catalog(*(e for e in bucket.entries if "skewed" not in e["key"]), sizes=bucket.sizes),
        {"database": "habitat"},
    )
    assert key == "good.dump"
    assert skipped == (
        "catalog entry of s3://habitat-offsite/prod/eu/shop/no-sha.dump skipped: it records no valid SHA-256",
        "catalog entry of s3://habitat-offsite/prod/eu/shop/future.dump skipped: its completedAt"
        " 2026-12-01T00:10:00Z lies in the future",
        "catalog entry of s3://habitat-offsite/prod/eu/shop/resized.dump skipped: the object holds 99 bytes,"
        " the entry records 100",
        "catalog entry of s3://habitat-offsite/prod/eu/shop/bad-sha.dump skipped:"
        " it records no valid SHA-256",
    )
    only_bad = Catalog(entry("no-sha", "2026-11-28T03:00:00Z", sha256=None))
    with pytest.raises(OperationError, match=r"1 passed over, the newest: catalog entry of .*no-sha\.dump"):
        chosen(only_bad, {"database": "habitat"})


def test_a_wrong_key_is_refused_by_its_id_before_any_byte_is_read() -> None:
    key = os.urandom(32)
    encrypted = {"encrypted": True, "encryptionKeyId": encryption_key_id(key)}
    _check_key(encrypted, key, "s3://b/k")
    for given, reason in ((None, Reason.KEY_NOT_FOUND), (os.urandom(32), Reason.DECRYPTION_FAILED)):
        with pytest.raises(OperationError) as caught:
            _check_key(encrypted, given, "s3://b/k")
        assert caught.value.reason is reason


def test_a_private_ca_lives_in_a_file_as_long_as_the_client() -> None:
    from pathlib import Path

    from habitat_operator.engines.artifacts.s3 import Bucket

    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    bucket = Bucket(S3Location(bucket="b", endpoint="https://s3.internal:9000", ca_bundle=pem))
    assert bucket._ca_file is not None
    path = Path(bucket._ca_file.name)
    assert path.read_bytes() == pem
    bucket.close()
    assert not path.exists()
