"""What the end-to-end tests share: waiting for an object, the manifests of each kind as a test applies
them, the seeded database, and kubectl's server-side dry run. Test modules import from here, never
from one another (tests/unit/test_test_imports.py checks); shared fixtures live in conftest.py."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import yaml

from dev_stack.common import as_user, chown_tree, free_port
from dev_stack.postgres import pg_bin
from tests.harness import Kubectl, Stack

if TYPE_CHECKING:  # conftest.py imports this module for its fixtures
    from tests.e2e.conftest import OperatorProcess


def wait_for(
    what: str, check: Callable[[], Any], timeout: float = 90, operator: OperatorProcess | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = f"\noperator log:\n{operator.log_tail()}" if operator else ""
            raise AssertionError(f"timed out waiting for {what}{logs}")
        time.sleep(0.3)


def wait_phase(
    kubectl: Kubectl, kind: str, name: str, phases: set[str], operator: OperatorProcess, timeout: float = 90
) -> dict[str, Any]:
    """The object, once its status.phase is one of `phases`."""
    return wait_for(  # type: ignore[no-any-return]
        f"{kind} {name} to reach {'/'.join(sorted(phases))}",
        lambda: (o := kubectl.get(kind, name)).get("status", {}).get("phase") in phases and o,
        timeout=timeout,
        operator=operator,
    )


def wait_ready(kubectl: Kubectl, name: str, operator: OperatorProcess, timeout: int = 120) -> dict[str, Any]:
    result = kubectl.run(
        "wait", "--for=condition=Ready", f"backup/{name}", f"--timeout={timeout}s", check=False
    )
    assert result.returncode == 0, (
        f"{result.stderr}\nstatus: {kubectl.get('backup', name).get('status')}\n{operator.log_tail()}"
    )
    return kubectl.get("backup", name)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def artifact_path(obj: dict[str, Any]) -> Path:
    return Path(obj["status"]["artifact"]["uri"].removeprefix("file://"))


def finished(kubectl: Kubectl, name: str, operator: OperatorProcess, timeout: float = 120) -> dict[str, Any]:
    return wait_phase(kubectl, "restore", name, {"Succeeded", "Failed"}, operator, timeout)


def events(kubectl: Kubectl) -> list[dict[str, Any]]:
    return list(json.loads(kubectl.run("get", "events", "-o", "json").stdout)["items"])


def seed(uri: str, rows: int = 1000) -> None:
    with psycopg.connect(uri) as conn:
        conn.execute("CREATE TABLE events (id bigserial PRIMARY KEY, kind text NOT NULL, payload jsonb)")
        conn.execute("CREATE TABLE audit (id serial PRIMARY KEY, note text)")
        conn.execute(
            "INSERT INTO events (kind, payload) SELECT 'k' || (g %% 7), jsonb_build_object('n', g)"
            " FROM generate_series(1, %s) g",
            (rows,),
        )
        conn.execute("INSERT INTO audit (note) VALUES ('created')")


def snapshot(uri: str) -> dict[str, Any]:
    with psycopg.connect(uri) as conn:
        return {
            "events": conn.execute("SELECT count(*), sum(id), max(payload->>'n') FROM events").fetchone(),
            "audit": conn.execute("SELECT note FROM audit").fetchall(),
            "seq": conn.execute("SELECT last_value FROM events_id_seq").fetchone(),
        }


def tables(uri: str) -> list[str]:
    with psycopg.connect(uri) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()
    return [row[0] for row in rows]


SCHEDULE_LABEL = "ops.habitat.dev/schedule"


NEVER_IN_THIS_TEST = "0 0 1 1 *"  # midnight on New Year's Day


def backup(name: str, **spec: Any) -> dict[str, Any]:
    base = {"database": {"secretRef": {"name": "habitat-db"}}, "storage": {"filesystem": {"path": "e2e"}}}
    return {
        "apiVersion": "ops.habitat.dev/v1alpha1",
        "kind": "Backup",
        "metadata": {"name": name},
        "spec": base | spec,
    }


def run_by_hand(name: str, parent: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A child Backup as the schedule would create it (same label, owned by it), made by the test."""
    body = backup(name, **spec)
    meta = parent["metadata"]
    body["metadata"]["labels"] = {SCHEDULE_LABEL: meta["name"]}
    body["metadata"]["ownerReferences"] = [
        {
            "apiVersion": parent["apiVersion"],
            "kind": "Backup",
            "name": meta["name"],
            "uid": meta["uid"],
            "controller": True,
        }
    ]
    return body


def runs_of(kubectl: Kubectl, schedule: str) -> list[dict[str, Any]]:
    listing = kubectl.run("get", "backups", "-l", f"{SCHEDULE_LABEL}={schedule}", "-o", "json").stdout
    return sorted(json.loads(listing)["items"], key=lambda item: item["metadata"]["name"])


def restore(name: str, **spec: Any) -> dict[str, Any]:
    base = {
        "source": {"backupRef": {"name": "source"}},
        "target": {"database": {"secretRef": {"name": "target-db"}}},
    }
    return {
        "apiVersion": "ops.habitat.dev/v1alpha1",
        "kind": "Restore",
        "metadata": {"name": name},
        "spec": base | spec,
    }


def drill(name: str, source: str) -> dict[str, Any]:
    return restore(
        name,
        drill=True,
        source={"backupRef": {"name": source}},
        target={"database": {"secretRef": {"name": "habitat-db"}}},
    )


def migration(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "database": {"secretRef": {"name": "habitat-db"}},
        "source": {"configMapRefs": [{"name": "sql"}]},
        "lockTimeout": "5s",
    }
    return {
        "apiVersion": "ops.habitat.dev/v1alpha1",
        "kind": "Migration",
        "metadata": {"name": name},
        "spec": {k: v for k, v in (base | spec).items() if v is not None},
    }


def inline(*migrations: tuple[int, str, str]) -> dict[str, Any]:
    return {"inline": [{"version": v, "name": n, "up": up} for v, n, up in migrations]}


def replayjob(name: str, selector: dict[str, Any], target: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "ops.habitat.dev/v1alpha1",
        "kind": "ReplayJob",
        "metadata": {"name": name},
        "spec": {
            "source": {"database": {"secretRef": {"name": "events-db"}}},
            "selector": selector,
            "target": {"rabbitmq": {"secretRef": {"name": "broker"}}, **target},
            **spec,
        },
    }


def deployment(name: str, replicas: int | None = 1, label: str = "v1") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name, "release": label}},
            "spec": {"containers": [{"name": "app", "image": "registry.invalid/habitat:1"}]},
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": spec}


S3_SECRET = "habitat-s3"


def s3_storage(stack: Stack, prefix: str, endpoint: str | None = None) -> dict[str, Any]:
    return {
        "s3": {
            "bucket": stack.s3_bucket,
            "prefix": prefix,
            "endpoint": endpoint or stack.s3_endpoint,
            "forcePathStyle": True,
            "credentialsSecretRef": {"name": S3_SECRET},
        }
    }


def s3_client(stack: Stack, endpoint: str | None = None, ca: Path | None = None) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint or stack.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=stack.s3_access_key,
        aws_secret_access_key=stack.s3_secret_key,
        verify=str(ca) if ca else None,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def create_s3_secret(kubectl: Kubectl, stack: Stack, secret_key: str | None = None) -> None:
    kubectl.run(
        "create",
        "secret",
        "generic",
        S3_SECRET,
        f"--from-literal=accessKeyId={stack.s3_access_key}",
        f"--from-literal=secretAccessKey={secret_key or stack.s3_secret_key}",
    )


class PrivateServer:
    """A PostgreSQL server of a test's own (initdb in a temp folder, its own port), run as the
    `postgres` user as the stack runs its own (PostgreSQL refuses root), that a test may take away:
    wal_level=replica, a REPLICATION role `archiver`, replication allowed over 127.0.0.1."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="habitat-e2e-pg-"))
        self.folder.chmod(0o755)  # the postgres user reaches it
        self.data, self.sockets = self.folder / "data", self.folder / "run"
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.archiver_password = secrets.token_hex(12)

    @property
    def admin_uri(self) -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/postgres"

    @property
    def uri(self) -> str:
        """The archiver's: what a WalArchive's Secret holds."""
        return f"postgresql://archiver:{self.archiver_password}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            self._init()
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c wal_level=replica"
            " -c max_wal_senders=10 -c max_replication_slots=10 -c fsync=off"
        )
        argv = [pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.folder / "server.log")]
        started = subprocess.run(
            as_user("postgres", [*argv, "-w", "start"]), capture_output=True, check=False
        )
        assert started.returncode == 0, self.log_tail()
        with psycopg.connect(self.admin_uri, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'archiver'").fetchone() is None:
                conn.execute(f"CREATE ROLE archiver LOGIN REPLICATION PASSWORD '{self.archiver_password}'")

    def _init(self) -> None:
        self.sockets.mkdir(parents=True, exist_ok=True)
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password + "\n")
        chown_tree(self.folder, "postgres")
        argv = [pg_bin("initdb"), f"--pgdata={self.data}", "--username=postgres", f"--pwfile={pwfile}"]
        argv += ["--auth-host=scram-sha-256", "--auth-local=trust", "--encoding=UTF8", "--no-sync"]
        subprocess.run(as_user("postgres", argv), check=True, capture_output=True)
        pwfile.unlink()
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host replication archiver 127.0.0.1/32 scram-sha-256\n")

    def stop(self) -> None:
        argv = [pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]
        subprocess.run(as_user("postgres", argv), capture_output=True, check=False)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def execute(self, query: str, *params: Any) -> Any:
        """The first row of `query` (None for a statement without rows), run by the superuser."""
        with psycopg.connect(self.admin_uri, autocommit=True) as conn:
            cursor = conn.execute(query, params or None)
            return cursor.fetchone() if cursor.description else None

    def log_tail(self, lines: int = 30) -> str:
        log = self.folder / "server.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def walarchive(name: str, **spec: Any) -> dict[str, Any]:
    base = {"database": {"secretRef": {"name": "habitat-db"}}, "storage": {"filesystem": {"path": "e2e-wal"}}}
    return {
        "apiVersion": "ops.habitat.dev/v1alpha1",
        "kind": "WalArchive",
        "metadata": {"name": name},
        "spec": base | spec,
    }


def policy(name: str, target: str, triggers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    base = {
        "target": {"kind": "Deployment", "name": target},
        "minReplicas": 1,
        "maxReplicas": 5,
        "pollingInterval": 1,
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 2}},
        "triggers": triggers,
    }
    return {
        "apiVersion": "ops.habitat.dev/v1alpha1",
        "kind": "ScalePolicy",
        "metadata": {"name": name},
        "spec": base | spec,
    }


def queue_trigger(name: str, queue: str, per_replica: int = 10, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "rabbitmq",
        "rabbitmq": {"queue": queue, "targetPerReplica": per_replica, "secretRef": {"name": "rabbitmq"}}
        | extra,
    }


# The Prometheus Operator's CRDs are not part of the local stack; everything else is checked.
PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}


def dry_run(kubectl: Kubectl, documents: list[dict[str, Any]], *flags: str) -> str:
    """A server-side dry run of all the apiserver can check, namespace by namespace (kubectl's -n
    must match the documents'; cluster-scoped ones go with kubectl's own)."""
    applicable = [doc for doc in documents if doc["kind"] not in PROMETHEUS_OPERATOR_KINDS]

    def namespace(doc: dict[str, Any]) -> str:
        return str(doc["metadata"].get("namespace", kubectl.namespace))

    output = ""
    for name in sorted({namespace(doc) for doc in applicable}):
        group = yaml.safe_dump_all([doc for doc in applicable if namespace(doc) == name])
        command = ("apply", "--dry-run=server", "--server-side", *flags, "-f", "-")
        output += Kubectl(kubectl.stack, name).run(*command, stdin=group).stdout
    return output
