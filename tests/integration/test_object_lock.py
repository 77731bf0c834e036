"""Object Lock against real S3 servers: the stack's versitygw, whose Object Lock buckets keep versions
(as AWS S3 does: an overwrite is a new version, a delete a marker), and a private versitygw that keeps
none (the server refuses the overwrite or delete). The operator's own keys play the attacker."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dev_stack.common import State
from habitat_operator.engines.artifacts.locked import locked_catalog, locked_entry, original_version, prune
from habitat_operator.engines.artifacts.s3 import Bucket, ObjectLockSettings, S3Location, catalog_key
from habitat_operator.engines.postgres.bucket import CatalogSource, check_object, run_backup_to_bucket
from habitat_operator.engines.postgres.dump import BackupRequest
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.errors import OperationError
from tests.harness import Stack
from tests.integration.helpers import free_port, seeded_database

pytestmark = pytest.mark.integration
__all__ = ["seeded_database"]  # a fixture, imported to be used here

MADE_BY = CatalogSource("team-a", "nightly", "uid-1")


def lock_for(seconds: float) -> ObjectLockSettings:
    return ObjectLockSettings("GOVERNANCE", dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds))


def unversioned_server(stack: Stack, data: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private versitygw without a versioning folder: its buckets keep no versions."""
    port = free_port()
    process = subprocess.Popen(
        [State.load().s3_bin, "--port", f"127.0.0.1:{port}", "posix", str(data)],
        env={"ROOT_ACCESS_KEY": stack.s3_access_key, "ROOT_SECRET_KEY": stack.s3_secret_key},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture(params=["versions", "no versions"])
def lock_bucket(request: pytest.FixtureRequest, stack: Stack, tmp_path: Path) -> Iterator[Bucket]:
    """A bucket of its own with Object Lock enabled, on a server that keeps versions or not."""
    process = None
    endpoint = stack.s3_endpoint
    if request.param == "no versions":
        process, endpoint = unversioned_server(stack, tmp_path)
    location = S3Location(
        bucket=f"lock-{secrets.token_hex(4)}",
        prefix="it",
        endpoint=endpoint,
        force_path_style=True,
        access_key_id=stack.s3_access_key,
        secret_access_key=stack.s3_secret_key,
    )
    try:
        with Bucket(location) as bucket:
            deadline = time.monotonic() + 30
            while True:
                try:
                    bucket.client.create_bucket(Bucket=location.bucket, ObjectLockEnabledForBucket=True)
                    break
                except Exception:  # the private server is not listening yet
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            yield bucket
            _remove(bucket)
    finally:
        if process is not None:
            process.kill()
            process.wait()


def _remove(bucket: Bucket) -> None:
    """Everything the test left, GOVERNANCE locks bypassed, then the bucket (best effort)."""
    client, name = bucket.client, bucket.location.bucket
    answer = client.list_object_versions(Bucket=name)
    for item in [*answer.get("Versions", []), *answer.get("DeleteMarkers", [])]:
        pin: dict[str, Any] = (
            {} if item.get("VersionId") in (None, "null") else {"VersionId": item["VersionId"]}
        )
        with contextlib.suppress(Exception):  # a server may refuse the bypass: the stack is disposable
            client.delete_object(Bucket=name, Key=item["Key"], BypassGovernanceRetention=True, **pin)
    with contextlib.suppress(Exception):  # left in the disposable stack
        client.delete_bucket(Bucket=name)


def keeps_versions(bucket: Bucket) -> bool:
    return bucket.client.get_bucket_versioning(Bucket=bucket.location.bucket).get("Status") == "Enabled"


def attack(bucket: Bucket, key: str) -> list[str]:
    """Overwrite, then delete, with the operator's own keys; what the server refused."""
    refused = []
    name = bucket.location.bucket
    for what, call in (
        ("overwrite", lambda: bucket.client.put_object(Bucket=name, Key=key, Body=b"ransom")),
        ("delete", lambda: bucket.client.delete_object(Bucket=name, Key=key)),
    ):
        try:
            call()
        except Exception as error:
            assert "AccessDenied" in str(error), error
            refused.append(what)
    return refused


def test_a_locked_backup_survives_its_own_keys_and_is_read_as_written(
    lock_bucket: Bucket, seeded_database: str
) -> None:
    bucket = lock_bucket
    key = bucket.location.artifact_key("team-a", "nightly-20261207T030000")
    lock = lock_for(120)
    request = BackupRequest(target=ConnectionTarget(seeded_database))
    result = asyncio.run(run_backup_to_bucket(request, bucket, key, MADE_BY, lock))
    assert result.stored is not None and result.stored.lock == lock
    versions = keeps_versions(bucket)
    assert (result.stored.version_id is not None) is versions
    assert (result.stored.catalog_version_id is not None) is versions
    entry, ignored = locked_entry(bucket, key)
    assert entry is not None and ignored == ()
    assert entry.get("versionId") == result.stored.version_id
    assert entry["objectLock"]["mode"] == "GOVERNANCE"
    assert bucket.head(key).lock_mode == "GOVERNANCE"
    assert bucket.head(catalog_key(key)).lock_mode == "GOVERNANCE"
    with pytest.raises(OperationError, match="written once"):  # an entry is never rewritten
        bucket.put_catalog(key, {"sha256": "0" * 64}, lock)

    # The attacker holds the operator's keys.
    expected = [] if versions else ["overwrite", "delete"]
    assert attack(bucket, key) == expected
    assert attack(bucket, catalog_key(key)) == expected
    with pytest.raises(OperationError):  # the locked version itself cannot be removed
        bucket.delete_version(original_version(bucket, key, entry.get("versionId")).version)

    entry_read, ignored = locked_entry(bucket, key)
    assert entry_read == entry, ignored
    found = original_version(bucket, key, entry.get("versionId"))
    sha = asyncio.run(check_object(bucket, key, entry["sha256"], None, pinned=found.version))
    assert sha == result.sha256
    listed, passed_over = locked_catalog(bucket)
    assert [e["key"] for e in listed] == [key]  # a delete marker hides nothing
    if versions:
        assert any("delete marker" in why for why in found.ignored)
        assert any("written after the locked one" in why for why in found.ignored)
        assert passed_over and ignored


def test_pruning_waits_for_the_lock_to_expire(lock_bucket: Bucket) -> None:
    bucket = lock_bucket
    key = bucket.location.artifact_key("team-a", "short")
    lock = lock_for(3)
    upload = bucket.upload(key, lock=lock)
    with upload:
        upload.write(b"artifact")
        upload.complete()
    bucket.put_catalog(key, {"sha256": "0" * 64}, lock)
    until = prune(bucket, key, dt.datetime.now(dt.UTC))
    assert until is not None and abs((until - lock.retain_until).total_seconds()) < 1
    assert bucket.history(key).versions  # nothing deleted
    time.sleep(max(0.0, (lock.retain_until - dt.datetime.now(dt.UTC)).total_seconds()) + 1)
    assert prune(bucket, key, dt.datetime.now(dt.UTC)) is None
    assert bucket.history(key).versions == ()
    assert bucket.history(catalog_key(key)).versions == ()


def test_a_bucket_without_object_lock_says_so(stack: Stack, lock_bucket: Bucket) -> None:
    assert lock_bucket.object_lock() is not None
    plain = S3Location(
        bucket=stack.s3_bucket,
        endpoint=stack.s3_endpoint,
        force_path_style=True,
        access_key_id=stack.s3_access_key,
        secret_access_key=stack.s3_secret_key,
    )
    with Bucket(plain) as bucket:
        assert bucket.object_lock() is None
