"""Backups into, and restores out of, the stack's real S3 server (versitygw): streaming, catalog,
atomicity, codecs and the storage failures."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from habitat_operator.api.common import Reason
from habitat_operator.catalog import COLUMNS
from habitat_operator.engines.artifacts import s3
from habitat_operator.engines.artifacts.codec import ZSTD_MAGIC
from habitat_operator.engines.artifacts.s3 import Bucket, S3Location
from habitat_operator.engines.postgres.bucket import (
    CatalogSource,
    check_object,
    opener,
    run_backup_to_bucket,
)
from habitat_operator.engines.postgres.dump import BackupRequest, BackupResult, CompressionName
from habitat_operator.engines.postgres.restore import RestoreRequest, run_restore
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.errors import OperationError
from tests.harness import REPO
from tests.integration.helpers import bucket, free_port, location, new_database, seeded_database, snapshot

pytestmark = pytest.mark.integration
__all__ = ["bucket", "location", "new_database", "seeded_database"]  # fixtures, imported to be used here

KEY = os.urandom(32)
MADE_BY = CatalogSource("team-a", "nightly", "uid-1")


def backup(uri: str, bucket: Bucket, key: str, **options: object) -> BackupResult:
    request = BackupRequest(target=ConnectionTarget(uri), **options)  # type: ignore[arg-type]
    return asyncio.run(run_backup_to_bucket(request, bucket, key, MADE_BY))


def failure(call: Callable[[], object]) -> OperationError:
    with pytest.raises(OperationError) as caught:
        call()
    return caught.value


def listed(bucket: Bucket) -> list[str]:
    prefix = bucket.location.key() + "/"
    answer = bucket.client.list_objects_v2(Bucket=bucket.location.bucket, Prefix=prefix)
    return sorted(o["Key"] for o in answer.get("Contents", []))


@pytest.mark.parametrize(
    ("compression", "encrypted"), [("gzip", False), ("zstd", True), ("none", False), ("zstd", False)]
)
def test_backup_streams_into_the_bucket_and_restores(
    seeded_database: str,
    new_database: Callable[[], str],
    bucket: Bucket,
    compression: CompressionName,
    encrypted: bool,
) -> None:
    key = bucket.location.artifact_key("team-a", "nightly")
    result = backup(
        seeded_database, bucket, key, compression=compression, encryption_key=KEY if encrypted else None
    )
    assert result.uri == f"s3://{bucket.location.bucket}/{key}"
    assert listed(bucket) == [key, s3.catalog_key(key)]
    entry = bucket.catalog_entry(key)
    assert entry is not None
    assert entry | {"createdAt": "-", "completedAt": "-"} == {
        "key": key,
        "namespace": "team-a",
        "backup": "nightly",
        "uid": "uid-1",
        "database": ConnectionTarget(seeded_database).dbname,
        "server": ConnectionTarget(seeded_database).display.split("/")[0],
        "sha256": result.sha256,
        "sizeBytes": result.size_bytes,
        "format": "custom",
        "compression": compression,
        "pgVersion": result.pg_version,
        "encrypted": encrypted,
        "encryptionKeyId": None,
        "verified": True,
        "createdAt": "-",
        "completedAt": "-",
    }
    assert asyncio.run(check_object(bucket, key, result.sha256, KEY if encrypted else None)) == result.sha256

    target = new_database()
    request = RestoreRequest(
        target=ConnectionTarget(target),
        artifact=opener(bucket, key),
        check_checksum=False,
        encryption_key=KEY if encrypted else None,
    )
    asyncio.run(run_restore(request))
    assert snapshot(target) == snapshot(seeded_database)
    asyncio.run(run_restore(replace(request, target=ConnectionTarget(new_database()), jobs=2)))


def test_zstd_is_smaller_than_no_compression(seeded_database: str, bucket: Bucket) -> None:
    plain = backup(seeded_database, bucket, bucket.location.key("plain.dump"), compression="none")
    packed = backup(seeded_database, bucket, bucket.location.key("packed.dump"), compression="zstd")
    assert packed.size_bytes < plain.size_bytes


def test_a_flipped_byte_is_a_checksum_mismatch(seeded_database: str, bucket: Bucket) -> None:
    key = bucket.location.key("tampered.dump")
    result = backup(seeded_database, bucket, key)
    body = bytearray(bucket.client.get_object(Bucket=bucket.location.bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    bucket.client.put_object(Bucket=bucket.location.bucket, Key=key, Body=bytes(body))

    error = failure(lambda: asyncio.run(check_object(bucket, key, result.sha256, None)))
    assert error.reason is Reason.CHECKSUM_MISMATCH


def test_an_object_replaced_after_its_check_is_refused_not_read(seeded_database: str, bucket: Bucket) -> None:
    """The check and the restore read the version that was looked at: a replaced object (even by a
    valid artifact of the same size) is refused at the next read, before any byte of it is used."""
    key = bucket.location.key("pinned.dump")
    result = backup(seeded_database, bucket, key)
    pinned = bucket.head(key)
    assert pinned.size == result.size_bytes
    assert asyncio.run(check_object(bucket, key, result.sha256, None, pinned=pinned)) == result.sha256
    backup(seeded_database, bucket, key, compression="zstd")  # another artifact under the same key

    for read in (
        lambda: asyncio.run(check_object(bucket, key, None, None, pinned=pinned)),
        lambda: opener(bucket, key, pinned)(),
    ):
        error = failure(read)
        assert error.reason is Reason.CHECKSUM_MISMATCH
        assert error.message == f"reading {bucket.uri(key)}: the object was replaced after it was checked"
    new = opener(bucket, key, bucket.head(key))().read(len(ZSTD_MAGIC))  # the new version, looked at anew
    assert new == ZSTD_MAGIC


def test_an_unfinished_upload_lists_nothing_and_the_next_attempt_aborts_it(
    seeded_database: str, bucket: Bucket
) -> None:
    key = bucket.location.key("killed.dump")
    upload = bucket.upload(key).__enter__()  # as a killed operator leaves it: never completed nor aborted
    upload.write(b"x" * 1024)
    upload.sync()
    assert listed(bucket) == []

    backup(seeded_database, bucket, key)
    uploads = bucket.client.list_multipart_uploads(Bucket=bucket.location.bucket, Prefix=key)
    assert uploads.get("Uploads", []) == []
    assert listed(bucket) == [key, s3.catalog_key(key)]


def test_a_failed_dump_aborts_its_upload(bucket: Bucket, pg_admin_uri: str) -> None:
    key = bucket.location.key("failed.dump")
    missing = pg_admin_uri.rsplit("/", 1)[0] + "/no_such_database"
    error = failure(lambda: backup(missing, bucket, key))
    assert error.reason is Reason.DATABASE_NOT_FOUND
    assert listed(bucket) == []
    uploads = bucket.client.list_multipart_uploads(Bucket=bucket.location.bucket, Prefix=key)
    assert uploads.get("Uploads", []) == []


def test_catalog_lists_every_entry(seeded_database: str, bucket: Bucket) -> None:
    first = bucket.location.artifact_key("team-a", "one")
    second = bucket.location.artifact_key("team-b", "two")
    backup(seeded_database, bucket, first)
    backup(seeded_database, bucket, second)
    assert sorted(entry["key"] for entry in bucket.catalog()) == [first, second]

    bucket.delete_artifact(first)
    assert [entry["key"] for entry in bucket.catalog()] == [second]
    assert listed(bucket) == [second, s3.catalog_key(second)]


def test_wrong_credentials(seeded_database: str, location: S3Location) -> None:
    with Bucket(replace(location, secret_access_key="wrong-" + secrets.token_hex(8))) as bucket:
        error = failure(lambda: backup(seeded_database, bucket, bucket.location.key("x.dump")))
    assert error.reason is Reason.STORAGE_AUTH_FAILED and not error.retryable
    assert location.secret_access_key not in error.message and "wrong-" not in error.message


def test_unknown_access_key(seeded_database: str, location: S3Location) -> None:
    with Bucket(replace(location, access_key_id="unknown-" + secrets.token_hex(4))) as bucket:
        error = failure(lambda: backup(seeded_database, bucket, bucket.location.key("x.dump")))
    assert error.reason is Reason.STORAGE_AUTH_FAILED and not error.retryable


def test_catalog_list_shows_the_newest_first(seeded_database: str, bucket: Bucket, tmp_path: Path) -> None:
    older = bucket.location.artifact_key("team-a", "older")
    newer = bucket.location.artifact_key("team-a", "newer")
    backup(seeded_database, bucket, older)
    time.sleep(1)  # catalog times have whole seconds
    backup(seeded_database, bucket, newer, compression="zstd")
    where = bucket.location
    storage = tmp_path / "storage.yaml"
    storage.write_text(json.dumps({"s3": {"bucket": where.bucket, "endpoint": where.endpoint}}))
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": where.access_key_id,
        "AWS_SECRET_ACCESS_KEY": where.secret_access_key,
    }
    command = [str(REPO / ".venv" / "bin" / "habitat-operator"), "catalog", "list", "--storage", str(storage)]
    command += ["--prefix", where.prefix, "--force-path-style"]

    listed_json = subprocess.run(
        [*command, "-o", "json"], env=env, capture_output=True, text=True, check=True
    )
    assert [entry["key"] for entry in json.loads(listed_json.stdout)] == [newer, older]
    table = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert table[0].split() == list(COLUMNS)
    assert table[1].split()[4:] == ["yes", "no", "zstd", "-", "-", newer]  # the size is two words


def test_missing_bucket(seeded_database: str, location: S3Location) -> None:
    with Bucket(replace(location, bucket=f"missing-{secrets.token_hex(4)}")) as bucket:
        error = failure(lambda: backup(seeded_database, bucket, "x.dump"))
    assert error.reason is Reason.BUCKET_NOT_FOUND and not error.retryable


def test_unreachable_endpoint(seeded_database: str, location: S3Location) -> None:
    with Bucket(replace(location, endpoint=f"http://127.0.0.1:{free_port()}")) as bucket:
        error = failure(lambda: backup(seeded_database, bucket, "x.dump"))
    assert error.reason is Reason.STORAGE_UNREACHABLE and error.retryable


def test_catalog_entries_are_json(seeded_database: str, bucket: Bucket) -> None:
    key = bucket.location.key("json.dump")
    backup(seeded_database, bucket, key, encryption_key=KEY)
    raw = bucket.client.get_object(Bucket=bucket.location.bucket, Key=s3.catalog_key(key))["Body"].read()
    entry = json.loads(raw)
    assert entry["encrypted"] is True and KEY.hex() not in raw.decode()
