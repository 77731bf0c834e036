"""Backups to S3 end to end: the operator process, real PostgreSQL, the stack's S3 server (versitygw),
and disaster recovery from the bucket alone in a namespace that never saw the Backup objects."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dev_stack.common import State, free_port
from habitat_operator.engines.postgres.locks import LOCK_CLASS, holder_name
from tests.conftest import database_uri
from tests.e2e.conftest import OperatorProcess, service_account_kubeconfig
from tests.e2e.helpers import (
    NEVER_IN_THIS_TEST,
    S3_SECRET,
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


def keys(client: Any, bucket: str, prefix: str) -> list[str]:
    answer = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")
    return sorted(o["Key"] for o in answer.get("Contents", []))


def stored_with_catalog(client: Any, bucket: str, prefix: str, key: str) -> dict[str, Any]:
    """Asserts that `prefix` holds exactly the artifact `key` and its catalog entry; returns the entry."""
    assert keys(client, bucket, prefix) == [key, f"{key}.catalog.json"]
    return dict(json.loads(client.get_object(Bucket=bucket, Key=f"{key}.catalog.json")["Body"].read()))


def unfinished_uploads(client: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    return list(client.list_multipart_uploads(Bucket=bucket, Prefix=f"{prefix}/").get("Uploads", []))


def wait_for_upload(client: Any, bucket: str, prefix: str, operator: OperatorProcess) -> None:
    """Until a multipart upload under `prefix` is open (started, not completed)."""
    wait_for(
        "the upload to start",
        lambda: unfinished_uploads(client, bucket, prefix),
        timeout=60,
        operator=operator,
    )


def rows(uri: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the seeded tables, in order: row for row."""
    with psycopg.connect(uri) as conn:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
            for table in ("events", "audit")
        }


def operator_of(namespace: str, stack: Stack, workdir: Path, backup_root: Path) -> OperatorProcess:
    """An operator process of the test's own, watching `namespace` alone, with the operator's token."""
    kubeconfig = service_account_kubeconfig(stack, Kubectl(stack, "habitat-system"), workdir / "kubeconfig")
    return OperatorProcess(kubeconfig, backup_root, workdir / "operator.log", namespaces=(namespace,))


@contextmanager
def table_locked(uri: str) -> Iterator[None]:
    """pg_dump waits for the lock on `events` while this block runs."""
    with psycopg.connect(uri) as conn:
        conn.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        yield


@pytest.fixture
def prefix() -> str:
    return f"e2e-{secrets.token_hex(4)}"


@pytest.fixture
def s3_secret(kubectl: Kubectl, stack: Stack) -> str:
    create_s3_secret(kubectl, stack)
    return S3_SECRET


def test_one_shot_and_scheduled_backups_to_s3_with_catalog_and_retention(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    stack: Stack,
    db_secret: str,
    s3_secret: str,
    fresh_database: str,
    namespace: str,
    prefix: str,
) -> None:
    seed(fresh_database, rows=500)
    client = s3_client(stack)
    kubectl.apply(backup("offsite", storage=s3_storage(stack, prefix), compression="zstd"))
    obj = wait_ready(kubectl, "offsite", operator_alive)
    key = f"{prefix}/{namespace}/offsite.dump"
    artifact = obj["status"]["artifact"]
    assert artifact["uri"] == f"s3://{stack.s3_bucket}/{key}"
    assert artifact["compression"] == "zstd"
    assert obj["status"]["verification"] == "Verified"
    entry = stored_with_catalog(client, stack.s3_bucket, prefix, key)
    assert (entry["namespace"], entry["backup"], entry["uid"]) == (
        namespace,
        "offsite",
        obj["metadata"]["uid"],
    )
    assert (entry["sha256"], entry["sizeBytes"]) == (artifact["sha256"], artifact["sizeBytes"])

    storage = s3_storage(stack, prefix)
    kubectl.apply(backup("kept", storage=storage, schedule=NEVER_IN_THIS_TEST, retention={"keepLast": 1}))
    parent = kubectl.get("backup", "kept")
    kubectl.apply(run_by_hand("kept-20200101000000", parent, storage=storage))
    wait_ready(kubectl, "kept-20200101000000", operator_alive)
    kubectl.apply(run_by_hand("kept-20200102000000", parent, storage=storage))
    wait_ready(kubectl, "kept-20200102000000", operator_alive)
    wait_for(
        "the older run to expire",
        lambda: [r["metadata"]["name"] for r in runs_of(kubectl, "kept")] == ["kept-20200102000000"],
        timeout=60,
        operator=operator_alive,
    )
    newer = f"{prefix}/{namespace}/kept-20200102000000.dump"
    assert keys(client, stack.s3_bucket, prefix) == sorted(
        [key, f"{key}.catalog.json", newer, f"{newer}.catalog.json"]
    )


def test_disaster_recovery_from_the_bucket_alone(
    operator_alive: OperatorProcess,
    stack: Stack,
    kubectl: Kubectl,
    db_secret: str,
    s3_secret: str,
    fresh_database: str,
    pg_admin_uri: str,
    namespace: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    steps: dict[str, float] = {}

    def step(name: str, started: float) -> None:
        steps[name] = round(time.monotonic() - started, 1)

    seed(fresh_database, rows=2000)
    before = rows(fresh_database)
    kubectl.apply(backup("nightly", storage=s3_storage(stack, prefix)))
    wait_ready(kubectl, "nightly", operator_alive)

    # The disaster: the operator, the namespace with every Backup object, and the database are gone.
    operator_alive.kill()
    started = time.monotonic()
    admin = Kubectl(stack, "default")
    admin.run("delete", "namespace", namespace, "--wait=true", "--timeout=120s")
    dbname = fresh_database.rsplit("/", 1)[1]
    with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
    step("disaster (namespace and database deleted)", started)

    # The new cluster: a new namespace, a fresh operator that watches only it, an empty backup root.
    recovery = f"dr-{secrets.token_hex(4)}"
    admin.run("create", "namespace", recovery)
    fresh = operator_of(recovery, stack, tmp_path, backup_root=tmp_path / "empty-backup-root")
    try:
        started = time.monotonic()
        fresh.start()
        step("operator started", started)
        dr = Kubectl(stack, recovery)
        started = time.monotonic()
        create_s3_secret(dr, stack)
        dr.run("create", "secret", "generic", "target-db", f"--from-literal=uri={fresh_database}")
        latest_of = {"database": dbname, "namespace": namespace}  # recovery into a namespace of another name
        dr.apply(
            restore(
                "from-bucket",
                source={"storage": {**s3_storage(stack, prefix), "latestOf": latest_of}},
                mode={"createDatabase": True},
            )
        )
        done = finished(dr, "from-bucket", fresh)
        step("restore applied to Succeeded", started)
        assert done["status"]["phase"] == "Succeeded", done["status"].get("message")
        key = f"{prefix}/{namespace}/nightly.dump"
        assert done["status"]["restoredFrom"]["uri"] == f"s3://{stack.s3_bucket}/{key}"
        assert rows(fresh_database) == before
        local = tmp_path / "empty-backup-root"
        assert not local.exists() or not any(local.iterdir())  # the bucket alone

        # The nightly drill that proves it before a disaster: the same source, into a scratch database.
        drill_source = {"storage": {**s3_storage(stack, prefix), "latestOf": latest_of}}
        dr.apply(restore("drill", source=drill_source, drill=True))
        drilled = finished(dr, "drill", fresh)
        assert drilled["status"]["phase"] == "Succeeded", drilled["status"].get("message")
    finally:
        fresh.stop()
        admin.run("delete", "namespace", recovery, "--wait=false", check=False)
    print(f"disaster recovery steps (seconds): {steps}")


def sample(operator: OperatorProcess, name: str, **labels: str) -> float:
    """The sum of the operator's samples called `name` whose labels include `labels`."""
    return sum(
        found.value
        for family in operator.metrics().values()
        for found in family.samples
        if found.name == name and labels.items() <= found.labels.items()
    )


def test_latest_of_restores_only_a_trustworthy_entry_of_its_own_namespace(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    stack: Stack,
    db_secret: str,
    s3_secret: str,
    fresh_database: str,
    pg_admin_uri: str,
    namespace: str,
    prefix: str,
) -> None:
    """A hand-written catalog entry (completed in 2099, no SHA-256) is passed over with an Event
    naming its key; a Restore in another namespace does not take this namespace's artifact of a
    database of the same name unless latestOf.namespace names it."""
    seed(fresh_database, rows=500)
    before = rows(fresh_database)
    kubectl.apply(backup("nightly", storage=s3_storage(stack, prefix)))
    wait_ready(kubectl, "nightly", operator_alive)
    client = s3_client(stack)
    key = f"{prefix}/{namespace}/nightly.dump"
    entry = stored_with_catalog(client, stack.s3_bucket, prefix, key)
    forged = f"{prefix}/{namespace}/forged.dump"
    body = client.get_object(Bucket=stack.s3_bucket, Key=key)["Body"].read()
    client.put_object(Bucket=stack.s3_bucket, Key=forged, Body=body)
    fake = {k: v for k, v in entry.items() if k != "sha256"} | {"completedAt": "2099-01-01T00:00:00Z"}
    client.put_object(Bucket=stack.s3_bucket, Key=f"{forged}.catalog.json", Body=json.dumps(fake).encode())

    dbname = fresh_database.rsplit("/", 1)[1]
    source = {"storage": {**s3_storage(stack, prefix), "latestOf": {"database": dbname}}}
    targets = [f"latest_{secrets.token_hex(4)}" for _ in range(2)]
    other = Kubectl(stack, f"other-{secrets.token_hex(4)}")
    Kubectl(stack, "default").run("create", "namespace", other.namespace)
    try:
        for where, target in zip((kubectl, other), targets, strict=True):
            uri = database_uri(pg_admin_uri, target)
            where.run("create", "secret", "generic", "target-db", f"--from-literal=uri={uri}")
        create_s3_secret(other, stack)
        kubectl.apply(restore("latest", source=source, mode={"createDatabase": True}))
        done = finished(kubectl, "latest", operator_alive)
        assert done["status"]["phase"] == "Succeeded", done["status"].get("message")
        assert done["status"]["restoredFrom"] == {
            "uri": f"s3://{stack.s3_bucket}/{key}",
            "sha256": entry["sha256"],
            "sizeBytes": entry["sizeBytes"],
        }
        assert rows(database_uri(pg_admin_uri, targets[0])) == before
        skipped = [e["message"] for e in events(kubectl) if e["reason"] == "CatalogEntrySkipped"]
        assert skipped == [
            f"catalog entry of s3://{stack.s3_bucket}/{forged} skipped: it records no valid SHA-256"
        ]

        other.apply(restore("theirs", source=source, mode={"createDatabase": True}))
        refused = finished(other, "theirs", operator_alive)
        assert condition(refused, "Stalled")["reason"] == "ArtifactNotFound"
        assert f"by Backups of namespace {other.namespace}" in refused["status"]["message"]
        named = {"storage": {**source["storage"], "latestOf": {"database": dbname, "namespace": namespace}}}
        other.apply(restore("renamed", source=named, mode={"createDatabase": True}))
        recovered = finished(other, "renamed", operator_alive)
        assert recovered["status"]["phase"] == "Succeeded", recovered["status"].get("message")
        assert rows(database_uri(pg_admin_uri, targets[1])) == before
    finally:
        Kubectl(stack, "default").run("delete", "namespace", other.namespace, "--wait=false", check=False)
        with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
            for target in targets:
                conn.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')


@contextmanager
def database_locked(pg_admin_uri: str, dbname: str) -> Iterator[None]:
    """Holds the operator's lock on `dbname` (as another operator's Restore would) for the block."""
    with psycopg.connect(pg_admin_uri, autocommit=True, application_name=holder_name("test")) as conn:
        conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", [LOCK_CLASS, dbname])
        yield


def test_a_waiting_restore_reads_its_object_once_to_check_it_and_once_to_restore_it(
    operator: OperatorProcess,
    stack: Stack,
    kubectl: Kubectl,
    db_secret: str,
    s3_secret: str,
    fresh_database: str,
    pg_admin_uri: str,
    namespace: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    """Polls while the target's lock is held download nothing; once it is free, the object is read
    twice: the check, then the restore of the same version. Counted by the operator's own GETs of
    artifacts (habitat_storage_bytes_total), in an operator of this test alone."""
    if operator.process is not None and operator.process.poll() is None:
        operator.kill()  # the shared operator watches every namespace
    own = operator_of(namespace, stack, tmp_path, backup_root=tmp_path / "backups")
    own.start()
    target = f"waits_{secrets.token_hex(4)}"
    try:
        seed(fresh_database, rows=2000)
        kubectl.apply(backup("nightly", storage=s3_storage(stack, prefix)))
        size = wait_ready(kubectl, "nightly", own)["status"]["artifact"]["sizeBytes"]
        kubectl.run(
            "create",
            "secret",
            "generic",
            "target-db",
            f"--from-literal=uri={database_uri(pg_admin_uri, target)}",
        )
        downloaded = sample(own, "habitat_storage_bytes_total", direction="downloaded")
        with database_locked(pg_admin_uri, target):
            polls = sample(own, "habitat_operator_reconcile_total", kind="Restore")
            kubectl.apply(
                restore("waits", source={"backupRef": {"name": "nightly"}}, mode={"createDatabase": True})
            )
            wait_for(
                "three polls waiting for the lock",
                lambda: sample(own, "habitat_operator_reconcile_total", kind="Restore") >= polls + 3,
                timeout=60,
                operator=own,
            )
            assert condition(kubectl.get("restore", "waits"), "Reconciling")["reason"] == "WaitingForLock"
            assert sample(own, "habitat_storage_bytes_total", direction="downloaded") == downloaded
        done = finished(kubectl, "waits", own)
        assert done["status"]["phase"] == "Succeeded", done["status"].get("message")
        assert sample(own, "habitat_storage_bytes_total", direction="downloaded") == downloaded + 2 * size
    finally:
        own.stop()
        with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')


def test_directory_format_with_jobs_goes_up_as_one_tar_and_restores_with_jobs(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    stack: Stack,
    db_secret: str,
    s3_secret: str,
    fresh_database: str,
    pg_admin_uri: str,
    namespace: str,
    prefix: str,
) -> None:
    """pg_dump --jobs 2 staged in the scratch folder, sent as one tar object through zstd and
    encryption; restored by the catalog alone with pg_restore --jobs 2, row for row."""
    seed(fresh_database, rows=2000)
    before = rows(fresh_database)
    client = s3_client(stack)
    kubectl.run("create", "secret", "generic", "backup-key", f"--from-literal=key={secrets.token_hex(32)}")
    kubectl.apply(
        backup(
            "parallel",
            storage=s3_storage(stack, prefix),
            format="directory",
            jobs=2,
            compression="zstd",
            encryption={"keySecretRef": {"name": "backup-key"}},
        )
    )
    obj = wait_ready(kubectl, "parallel", operator_alive)
    key = f"{prefix}/{namespace}/parallel.tar"
    artifact = obj["status"]["artifact"]
    assert (artifact["uri"], artifact["format"]) == (f"s3://{stack.s3_bucket}/{key}", "directory")
    assert obj["status"]["verification"] == "Verified"
    entry = stored_with_catalog(client, stack.s3_bucket, prefix, key)
    assert (entry["format"], entry["compression"], entry["encrypted"]) == ("directory", "zstd", True)
    assert (entry["sha256"], entry["sizeBytes"]) == (artifact["sha256"], artifact["sizeBytes"])
    assert list(operator_alive.scratch_dir.iterdir()) == []  # the staged dump is gone

    dbname = fresh_database.rsplit("/", 1)[1]
    target = database_uri(pg_admin_uri, f"parallel_{secrets.token_hex(4)}")
    kubectl.run("create", "secret", "generic", "target-db", f"--from-literal=uri={target}")
    source = {
        "storage": {
            **s3_storage(stack, prefix),
            "latestOf": {"database": dbname},
            "encryptionKeySecretRef": {"name": "backup-key"},
        }
    }
    kubectl.apply(restore("from-tar", source=source, jobs=2, mode={"createDatabase": True}))
    try:
        done = finished(kubectl, "from-tar", operator_alive)
        assert done["status"]["phase"] == "Succeeded", done["status"].get("message")
        assert done["status"]["restoredFrom"] == {
            "uri": artifact["uri"],
            "sha256": artifact["sha256"],
            "sizeBytes": artifact["sizeBytes"],
        }
        assert rows(target) == before
        assert list(operator_alive.scratch_dir.iterdir()) == []  # the unpacked copy is gone
    finally:
        with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{target.rsplit("/", 1)[1]}" WITH (FORCE)')


def test_operator_killed_mid_upload_aborts_it_and_the_retry_succeeds(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    stack: Stack,
    db_secret: str,
    s3_secret: str,
    fresh_database: str,
    namespace: str,
    prefix: str,
) -> None:
    seed(fresh_database, rows=2000)
    client = s3_client(stack)
    with table_locked(fresh_database):  # the upload is open, and pg_dump waits: a kill is mid-upload
        kubectl.apply(backup("crash", storage=s3_storage(stack, prefix), retry={"limit": 2, "backoff": "1s"}))
        wait_for_upload(client, stack.s3_bucket, prefix, operator_alive)
        operator_alive.kill()
    assert kubectl.get("backup", "crash")["status"]["phase"] == "Running"
    assert keys(client, stack.s3_bucket, prefix) == []  # an unfinished upload is listed nowhere

    operator_alive.start()
    obj = wait_ready(kubectl, "crash", operator_alive, timeout=180)
    assert obj["status"]["attempts"] == 2
    key = f"{prefix}/{namespace}/crash.dump"
    stored_with_catalog(client, stack.s3_bucket, prefix, key)
    assert unfinished_uploads(client, stack.s3_bucket, prefix) == []
    assert "Interrupted" in [e["reason"] for e in events(kubectl) if e["involvedObject"]["name"] == "crash"]


def test_wrong_credentials_fail_readably_without_the_secret(
    operator_alive: OperatorProcess, kubectl: Kubectl, stack: Stack, db_secret: str, prefix: str
) -> None:
    wrong = f"wrong-{secrets.token_hex(12)}"
    create_s3_secret(kubectl, stack, secret_key=wrong)
    kubectl.apply(backup("denied", storage=s3_storage(stack, prefix), retry={"limit": 0}))
    obj = wait_phase(kubectl, "backup", "denied", {"Failed"}, operator_alive)
    stalled = condition(obj, "Stalled")
    assert stalled["reason"] == "StorageAuthFailed"
    assert "credentials" in stalled["message"]
    events_json = kubectl.run("get", "events", "-o", "json").stdout
    for text in (json.dumps(obj["status"]), events_json, operator_alive.log_text()):
        assert wrong not in text and stack.s3_secret_key not in text


def test_a_tampered_object_is_refused_before_the_target_is_touched(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    stack: Stack,
    db_secret: str,
    s3_secret: str,
    fresh_database: str,
    pg_admin_uri: str,
    namespace: str,
    prefix: str,
) -> None:
    seed(fresh_database, rows=2000)
    kubectl.apply(backup("source", storage=s3_storage(stack, prefix)))
    wait_ready(kubectl, "source", operator_alive)
    client = s3_client(stack)
    key = f"{prefix}/{namespace}/source.dump"
    body = bytearray(client.get_object(Bucket=stack.s3_bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    client.put_object(Bucket=stack.s3_bucket, Key=key, Body=bytes(body))

    target = f"untouched_{secrets.token_hex(4)}"
    kubectl.run(
        "create", "secret", "generic", "target-db", f"--from-literal=uri={database_uri(pg_admin_uri, target)}"
    )
    kubectl.apply(restore("tampered", mode={"createDatabase": True}))
    obj = finished(kubectl, "tampered", operator_alive)
    assert condition(obj, "Stalled")["reason"] == "ChecksumMismatch"
    assert "the target was not touched" in obj["status"]["message"]
    with psycopg.connect(pg_admin_uri) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [target]).fetchone()
    assert exists is None


@pytest.fixture
def private_s3(stack: Stack, tmp_path: Path) -> Iterator[PrivateS3]:
    with serving(PrivateS3(stack, tmp_path / "s3")) as server:
        yield server


@contextmanager
def serving(server: PrivateS3) -> Iterator[PrivateS3]:
    """`server` started, with the stack's bucket name, and stopped however the test ends."""
    try:
        server.start()
        server.client().create_bucket(Bucket=server.stack.s3_bucket)
        yield server
    finally:
        server.stop()


class PrivateS3:
    """A versitygw of this test alone, so that it can be stopped mid-upload and started again;
    over TLS with `tls`, a certificate and its key (PEM files)."""

    def __init__(
        self, stack: Stack, data: Path, tls: tuple[Path, Path] | None = None, ca: Path | None = None
    ) -> None:
        self.stack = stack
        self.data = data
        self.data.mkdir(parents=True)
        self.port = free_port()
        self.endpoint = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.tls = tls
        self.ca = ca
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = State.load().s3_bin
        env = {"ROOT_ACCESS_KEY": self.stack.s3_access_key, "ROOT_SECRET_KEY": self.stack.s3_secret_key}
        tls = ["--cert", str(self.tls[0]), "--key", str(self.tls[1])] if self.tls else []
        self.process = subprocess.Popen(
            [binary, "--port", f"127.0.0.1:{self.port}", *tls, "posix", str(self.data)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for("the private S3 server", self._ready, timeout=30)

    def _ready(self) -> bool:
        try:
            self.client().list_buckets()
        except Exception:  # not listening yet
            return False
        return True

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def client(self) -> Any:
        return s3_client(self.stack, self.endpoint, self.ca)


def test_s3_server_stopped_mid_upload_leaves_nothing_listed_and_the_retry_succeeds(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    stack: Stack,
    db_secret: str,
    s3_secret: str,
    fresh_database: str,
    namespace: str,
    prefix: str,
    private_s3: PrivateS3,
) -> None:
    seed(fresh_database, rows=2000)
    client = private_s3.client()
    storage = s3_storage(stack, prefix, endpoint=private_s3.endpoint)
    with table_locked(fresh_database):  # the upload is open while pg_dump waits
        kubectl.apply(backup("outage", storage=storage, retry={"limit": 5, "backoff": "2s"}))
        wait_for_upload(client, stack.s3_bucket, prefix, operator_alive)
        private_s3.stop()
    obj = wait_phase(kubectl, "backup", "outage", {"Pending", "Failed"}, operator_alive)
    assert condition(obj, "Stalled" if obj["status"]["phase"] == "Failed" else "Reconciling")["reason"] in (
        "StorageUnreachable",
        "StorageFailed",
    )
    private_s3.start()
    assert keys(client, stack.s3_bucket, prefix) == []  # nothing partial is listed or cataloged

    obj = wait_ready(kubectl, "outage", operator_alive, timeout=180)
    key = f"{prefix}/{namespace}/outage.dump"
    stored_with_catalog(client, stack.s3_bucket, prefix, key)


def private_ca_and_server_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A CA made here and now, and a certificate it signed for 127.0.0.1: (CA, cert, key) PEM files."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def certificate(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate("habitat e2e private CA", ca_key, "habitat e2e private CA", ca_key, ca=True)
    server_cert = certificate("127.0.0.1", server_key, "habitat e2e private CA", ca_key, ca=False)
    paths = folder / "ca.crt", folder / "server.crt", folder / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


@pytest.fixture
def tls_s3(stack: Stack, tmp_path: Path) -> Iterator[PrivateS3]:
    """A versitygw of this test alone over TLS, with a certificate of a private CA; stopped however
    the test ends."""
    ca, cert, key = private_ca_and_server_certificate(tmp_path)
    with serving(PrivateS3(stack, tmp_path / "s3-tls", tls=(cert, key), ca=ca)) as server:
        yield server


def test_a_private_ca_is_trusted_through_ca_secret_ref_and_only_then(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    stack: Stack,
    db_secret: str,
    s3_secret: str,
    fresh_database: str,
    namespace: str,
    prefix: str,
    tls_s3: PrivateS3,
) -> None:
    seed(fresh_database, rows=500)
    assert tls_s3.ca is not None
    kubectl.run("create", "secret", "generic", "s3-ca", f"--from-file=ca.crt={tls_s3.ca}")
    storage = s3_storage(stack, prefix, endpoint=tls_s3.endpoint)

    kubectl.apply(backup("untrusted", storage=storage, retry={"limit": 0}))
    obj = wait_phase(kubectl, "backup", "untrusted", {"Failed"}, operator_alive)
    stalled = condition(obj, "Stalled")
    assert stalled["reason"] == "StorageUnreachable"
    assert "TLS certificate is not trusted" in stalled["message"] and "caSecretRef" in stalled["message"]

    trusted = {"s3": {**storage["s3"], "caSecretRef": {"name": "s3-ca"}}}
    kubectl.apply(backup("trusted", storage=trusted))
    done = wait_ready(kubectl, "trusted", operator_alive)
    key = f"{prefix}/{namespace}/trusted.dump"
    assert done["status"]["artifact"]["uri"] == f"s3://{stack.s3_bucket}/{key}"
    stored_with_catalog(tls_s3.client(), stack.s3_bucket, prefix, key)


def peak_rss_mib(process: OperatorProcess) -> float:
    assert process.process is not None
    status = Path(f"/proc/{process.process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def fill(uri: str, mib: int) -> None:
    """About `mib` MiB of table data (1 KiB rows), added to what the database holds."""
    with psycopg.connect(uri) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS blob (id bigserial PRIMARY KEY, payload text)")
        conn.execute(
            "INSERT INTO blob (payload) SELECT repeat(md5(g::text), 32) FROM generate_series(1, %s) g",
            [mib * 1024],
        )


MEMORY_BOUND_MIB = 256
GROWTH_BOUND_MIB = 32  # the database grows by 192 MiB between the two; parts in flight take 48 MiB


def test_peak_memory_does_not_grow_with_the_database(
    operator: OperatorProcess,
    stack: Stack,
    kubectl: Kubectl,
    db_secret: str,
    s3_secret: str,
    fresh_database: str,
    namespace: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    """Peak RSS of an operator of its own after a backup of 64 MiB and then one of 256 MiB
    (uncompressed, so every byte goes up): the second may not need more than GROWTH_BOUND_MIB more."""
    if operator.process is not None and operator.process.poll() is None:
        operator.kill()  # the shared operator watches every namespace: one operator per Backup
    own = operator_of(namespace, stack, tmp_path, backup_root=tmp_path / "backups")
    own.start()
    try:
        peaks = []
        for name, mib in (("small", 64), ("large", 192)):
            fill(fresh_database, mib)
            kubectl.apply(backup(name, storage=s3_storage(stack, prefix), compression="none"))
            done = wait_ready(kubectl, name, own, timeout=240)
            peaks.append(peak_rss_mib(own))
            print(f"{name}: {done['status']['artifact']['size']}, operator peak RSS {peaks[-1]:.0f} MiB")
    finally:
        own.stop()
    assert peaks[1] - peaks[0] <= GROWTH_BOUND_MIB, peaks
    assert peaks[1] <= MEMORY_BOUND_MIB, peaks
