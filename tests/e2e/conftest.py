"""The operator as users run it: the `habitat-operator run` process, with its own ServiceAccount token.

The CRDs and the RBAC of manifests/base are applied once; the operator authenticates with a token of
the habitat-operator ServiceAccount, so a missing permission fails the tests as it would in a cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from dev_stack.common import free_port
from tests.conftest import database_uri
from tests.e2e.helpers import PrivateServer, backup, seed, wait_ready
from tests.harness import REPO, Kubectl, Stack

OPERATOR_NAMESPACE = "habitat-system"


class OperatorProcess:
    """Starts, kills and restarts `habitat-operator run`; its log is kept for failure messages."""

    def __init__(
        self,
        kubeconfig: Path,
        backup_root: Path,
        log_path: Path,
        namespaces: tuple[str, ...] = (),
        extra_args: tuple[str, ...] = (),
    ) -> None:
        """`namespaces`: the ones to watch; all of them when empty. `extra_args`: more `run` flags."""
        self.namespaces = namespaces
        self.extra_args = extra_args
        self.kubeconfig = kubeconfig
        self.backup_root = backup_root
        self.log_path = log_path
        self.scratch_dir = log_path.parent / "scratch"
        self.scratch_dir.mkdir(exist_ok=True)
        self.metrics_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> None:
        argv = [
            str(REPO / ".venv" / "bin" / "habitat-operator"),
            "run",
            *([f"--namespace={ns}" for ns in self.namespaces] or ["--all-namespaces"]),
            f"--metrics-port={self.metrics_port}",
            f"--backup-root={self.backup_root}",
            f"--scratch-dir={self.scratch_dir}",
            "--log-format=json",
            *self.extra_args,
        ]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.metrics_url.replace("/metrics", "/readyz"), timeout=2):
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"operator did not become ready:\n{self.log_tail()}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: no cleanup, no status written — as when a pod is OOM-killed or its node dies."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return str(response.read().decode())

    def metrics(self) -> dict[str, Metric]:
        """The scraped metric families, by name."""
        return {family.name: family for family in text_string_to_metric_families(self.scrape())}

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def service_account_kubeconfig(stack: Stack, admin: Kubectl, path: Path) -> Path:
    token = admin.run("create", "token", "habitat-operator", "--duration=24h").stdout.strip()
    config = yaml.safe_load(Path(stack.kubeconfig).read_text())
    config["users"] = [{"name": "habitat-operator", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "habitat-operator"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="session")
def installed(stack: Stack) -> None:
    """The CRDs and the operator's RBAC, applied as a user would (server-side apply)."""
    admin = Kubectl(stack, OPERATOR_NAMESPACE)
    admin.run("apply", "--server-side", "-k", str(REPO / "crds"))
    admin.run("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    for manifest in ("namespace.yaml", "rbac.yaml"):
        admin.run("apply", "--server-side", "-f", str(REPO / "manifests" / "base" / manifest))


@pytest.fixture(scope="session")
def operator(
    stack: Stack, installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("operator")
    admin = Kubectl(stack, OPERATOR_NAMESPACE)
    kubeconfig = service_account_kubeconfig(stack, admin, workdir / "kubeconfig")
    process = OperatorProcess(kubeconfig, workdir / "backups", workdir / "operator.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def operator_alive(operator: OperatorProcess) -> OperatorProcess:
    """The shared operator, restarted first if an earlier test killed it."""
    if operator.process is None or operator.process.poll() is not None:
        operator.start()
    return operator


@pytest.fixture
def shared_operator_stopped(operator: OperatorProcess) -> None:
    """The shared operator (every namespace) stopped, for a test whose own operator must be alone
    with its objects: two operators would both take them. `operator_alive` starts it again."""
    operator.stop()


@pytest.fixture
def other_namespace(stack: Stack) -> Iterator[Kubectl]:
    """A second fresh namespace (B), deleted after the test."""
    name = f"t-{secrets.token_hex(5)}"
    admin = Kubectl(stack, "default")
    admin.run("create", "namespace", name)
    yield Kubectl(stack, name)
    admin.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def habitat(stack: Stack, namespace: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`kubectl habitat ARGS -n <the test's namespace>` (unless ARGS has -A), run by the stack's
    kubectl, which finds `kubectl-habitat` through PATH (the venv's bin) as on a user's machine."""
    env = {**stack.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{stack.env['PATH']}"}

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        scope = [] if "-A" in args else ["-n", namespace]
        argv = [stack.kubectl_path, "habitat", *args, *scope]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)

    return run


@pytest.fixture
def db_secret(kubectl: Kubectl, fresh_database: str) -> str:
    """A Secret `habitat-db` in the test namespace holding the fresh database's URI."""
    kubectl.run("create", "secret", "generic", "habitat-db", f"--from-literal=uri={fresh_database}")
    return "habitat-db"


@pytest.fixture
def target_database(pg_admin_uri: str, kubectl: Kubectl) -> Any:
    """A second, empty database and its Secret `target-db`."""
    name = f"target_{secrets.token_hex(5)}"
    with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    uri = database_uri(pg_admin_uri, name)
    kubectl.run("create", "secret", "generic", "target-db", f"--from-literal=uri={uri}")
    yield uri
    with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def source_backup(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str
) -> dict[str, Any]:
    """A seeded database A and a successful Backup `source` of it."""
    seed(fresh_database)
    kubectl.apply(backup("source"))
    return wait_ready(kubectl, "source", operator_alive)


@pytest.fixture
def private_server() -> Iterator[PrivateServer]:
    """A PostgreSQL server of the test's own, for tests that drop its slots or take it away."""
    server = PrivateServer()
    server.start()
    yield server
    server.remove()
