"""storage.s3.objectLock end to end against the stack's S3 server (versitygw; its Object Lock buckets
keep versions, as AWS S3 does), each test in a bucket of its own with short locks (a COMPLIANCE lock
cannot be lifted, not even by the test's cleanup). The attacker holds the operator's own keys."""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import subprocess
import sys
from typing import Any

import psycopg
import pytest

from tests.conftest import database_uri
from tests.e2e.conftest import OperatorProcess
from tests.e2e.helpers import (
    NEVER_IN_THIS_TEST,
    backup,
    condition,
    create_s3_secret,
    events,
    finished,
    restore,
    run_by_hand,
    runs_of,
    s3_client,
    s3_storage,
    seed,
    wait_for,
    wait_phase,
    wait_ready,
)
from tests.harness import Kubectl, Stack

pytestmark = pytest.mark.e2e


def locked_storage(stack: Stack, bucket: str, mode: str, retain_for: str) -> dict[str, Any]:
    storage = s3_storage(stack, "habitat")
    storage["s3"] |= {"bucket": bucket, "objectLock": {"mode": mode, "retainFor": retain_for}}
    return storage


@pytest.fixture
def lock_bucket(stack: Stack, kubectl: Kubectl) -> str:
    """A bucket of the test's own, created with Object Lock, and the operator's keys in a Secret."""
    name = f"lock-{secrets.token_hex(4)}"
    s3_client(stack).create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    create_s3_secret(kubectl, stack)
    return name


def rows(uri: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(uri) as conn:
        return conn.execute("SELECT * FROM events ORDER BY id").fetchall()


def catalog_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    keys = {"AWS_ACCESS_KEY_ID": stack.s3_access_key, "AWS_SECRET_ACCESS_KEY": stack.s3_secret_key}
    flags = ["--endpoint", stack.s3_endpoint, "--force-path-style", "--prefix", "habitat"]
    return subprocess.run(
        [sys.executable, "-m", "habitat_operator", "catalog", *args, *flags],
        env={**os.environ, **keys},
        capture_output=True,
        text=True,
        timeout=60,
    )


def refused(call: Any) -> bool:
    try:
        call()
    except Exception as error:
        return "AccessDenied" in str(error)
    return False


@pytest.mark.parametrize("mode", ["GOVERNANCE", "COMPLIANCE"])
def test_an_attacker_with_the_operators_keys_cannot_hide_the_locked_backup(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    stack: Stack,
    db_secret: str,
    fresh_database: str,
    pg_admin_uri: str,
    namespace: str,
    lock_bucket: str,
    mode: str,
) -> None:
    seed(fresh_database, rows=300)
    before = rows(fresh_database)
    client = s3_client(stack)
    # An attempt cut off mid-upload (its key of its own), and another Backup's upload.
    for left in ("nightly-20200101T000000.dump", "nightly-2-20200101T000000.dump"):
        client.create_multipart_upload(Bucket=lock_bucket, Key=f"habitat/{namespace}/{left}")
    kubectl.apply(backup("nightly", storage=locked_storage(stack, lock_bucket, mode, "30s")))
    artifact = wait_ready(kubectl, "nightly", operator_alive)["status"]["artifact"]
    uploads = client.list_multipart_uploads(Bucket=lock_bucket).get("Uploads", [])
    assert [u["Key"] for u in uploads] == [f"habitat/{namespace}/nightly-2-20200101T000000.dump"]
    assert artifact["lockMode"] == mode
    assert artifact["versionId"] and artifact["catalogVersionId"]  # the stack's lock buckets keep versions
    retain_until = dt.datetime.fromisoformat(artifact["retainUntil"])
    assert dt.timedelta(seconds=20) < retain_until - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=31)
    key = artifact["uri"].removeprefix(f"s3://{lock_bucket}/")
    assert key.startswith(f"habitat/{namespace}/nightly-") and key.endswith(".dump")  # a key per attempt
    listed = json.loads(catalog_cli(stack, "list", "--bucket", lock_bucket, "-o", "json").stdout)
    assert [e["objectLock"] for e in listed] == [{"mode": mode, "retainUntil": artifact["retainUntil"]}]

    # The attack, with the operator's own keys: the locked versions cannot be deleted; newer
    # versions and delete markers over them can be written.
    catalog = f"{key}.catalog.json"
    assert refused(lambda: client.delete_object(Bucket=lock_bucket, Key=key, VersionId=artifact["versionId"]))
    assert refused(
        lambda: client.delete_object(Bucket=lock_bucket, Key=catalog, VersionId=artifact["catalogVersionId"])
    )
    client.put_object(Bucket=lock_bucket, Key=key, Body=b"encrypted by the attacker")
    entry = json.loads(client.get_object(Bucket=lock_bucket, Key=catalog)["Body"].read())
    client.put_object(Bucket=lock_bucket, Key=catalog, Body=json.dumps(entry | {"sha256": "0" * 64}).encode())
    client.delete_object(Bucket=lock_bucket, Key=catalog)
    assert client.list_objects_v2(Bucket=lock_bucket, Prefix=catalog).get("KeyCount") == 0  # hidden
    assert json.loads(catalog_cli(stack, "list", "--bucket", lock_bucket, "-o", "json").stdout) == []
    locked = json.loads(catalog_cli(stack, "list", "--locked", "--bucket", lock_bucket, "-o", "json").stdout)
    assert [e["sha256"] for e in locked] == [entry["sha256"]]

    targets = [f"lock_{secrets.token_hex(4)}" for _ in range(2)]
    sources = [
        {"backupRef": {"name": "nightly"}},
        {
            "storage": {
                **locked_storage(stack, lock_bucket, mode, "30s"),
                "latestOf": {"database": fresh_database.rsplit("/", 1)[1]},
            }
        },
    ]
    try:
        for number, (target, source) in enumerate(zip(targets, sources, strict=True)):
            name = f"after-attack-{number}"
            kubectl.run("delete", "secret", "target-db", "--ignore-not-found")
            kubectl.run(
                "create",
                "secret",
                "generic",
                "target-db",
                f"--from-literal=uri={database_uri(pg_admin_uri, target)}",
            )
            kubectl.apply(restore(name, source=source, mode={"createDatabase": True}))
            done = finished(kubectl, name, operator_alive)
            assert done["status"]["phase"] == "Succeeded", done["status"].get("message")
            assert done["status"]["restoredFrom"]["uri"] == artifact["uri"]
            assert rows(database_uri(pg_admin_uri, target)) == before
        ignored = [e["message"] for e in events(kubectl) if e["reason"] == "UnlockedVersionIgnored"]
        assert any("written after the locked one" in why and key in why for why in ignored), ignored
        assert any("delete marker" in why and catalog in why for why in ignored), ignored
    finally:
        with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
            for target in targets:
                conn.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')


def test_a_backup_refuses_a_bucket_without_object_lock(
    operator_alive: OperatorProcess, kubectl: Kubectl, stack: Stack, db_secret: str
) -> None:
    create_s3_secret(kubectl, stack)
    kubectl.apply(backup("unprotected", storage=locked_storage(stack, stack.s3_bucket, "COMPLIANCE", "1d")))
    failed = wait_phase(kubectl, "backup", "unprotected", {"Failed", "Succeeded"}, operator_alive)
    assert failed["status"]["phase"] == "Failed"
    assert condition(failed, "Stalled")["reason"] == "ObjectLockMissing"
    assert f"bucket {stack.s3_bucket} has no Object Lock configuration" in failed["status"]["message"]
    check = catalog_cli(stack, "check", "--bucket", stack.s3_bucket)
    assert check.returncode == 1, check.stderr
    assert "has no Object Lock configuration" in check.stdout


def test_pruning_keeps_locked_runs_and_deletes_them_once_the_lock_expired(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    stack: Stack,
    db_secret: str,
    fresh_database: str,
    lock_bucket: str,
) -> None:
    seed(fresh_database, rows=50)
    short = locked_storage(stack, lock_bucket, "GOVERNANCE", "10s")
    long = locked_storage(stack, lock_bucket, "GOVERNANCE", "1h")
    kubectl.apply(backup("kept", storage=short, schedule=NEVER_IN_THIS_TEST, retention={"keepLast": 1}))
    parent = kubectl.get("backup", "kept")
    kubectl.apply(run_by_hand("kept-20200101000000", parent, storage=short))
    first = wait_ready(kubectl, "kept-20200101000000", operator_alive)["status"]["artifact"]
    kubectl.apply(run_by_hand("kept-20200102000000", parent, storage=long))
    wait_ready(kubectl, "kept-20200102000000", operator_alive)

    # The first run expired (keepLast 1) but is locked for 10 s: retained, not an error.
    retained = wait_for(
        "the locked run to be retained",
        lambda: kubectl.get("backup", "kept").get("status", {}).get("retainedByLock"),
        timeout=60,
        operator=operator_alive,
    )
    assert retained == {"count": 1, "until": first["retainUntil"]}
    assert len(runs_of(kubectl, "kept")) == 2
    reasons = {e["reason"] for e in events(kubectl)}
    assert "RetainedByLock" in reasons and "RetentionFailed" not in reasons

    # Once the lock expired, the schedule looks again by itself (no new run needed) and prunes it.
    wait_for(
        "the first run to be pruned once its lock expired",
        lambda: [r["metadata"]["name"] for r in runs_of(kubectl, "kept")] == ["kept-20200102000000"],
        timeout=60,
        operator=operator_alive,
    )
    key = first["uri"].removeprefix(f"s3://{lock_bucket}/")
    for doomed in (key, f"{key}.catalog.json"):
        versions = s3_client(stack).list_object_versions(Bucket=lock_bucket, Prefix=doomed)
        assert not versions.get("Versions") and not versions.get("DeleteMarkers")
    wait_for(
        "retainedByLock to clear",
        lambda: "retainedByLock" not in kubectl.get("backup", "kept").get("status", {}),
        timeout=30,
        operator=operator_alive,
    )
