"""Two operator processes never write one database at once: the lock lives in PostgreSQL, not in memory."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import database_uri
from tests.e2e.conftest import OPERATOR_NAMESPACE, OperatorProcess, service_account_kubeconfig
from tests.e2e.helpers import (
    backup,
    condition,
    finished,
    restore,
    seed,
    snapshot,
    wait_for,
    wait_phase,
    wait_ready,
)
from tests.harness import Kubectl, Stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def two_namespaces(stack: Stack) -> Iterator[tuple[Kubectl, Kubectl]]:
    admin = Kubectl(stack, "default")
    names = [f"t-lock-{secrets.token_hex(4)}" for _ in range(2)]
    for name in names:
        admin.run("create", "namespace", name)
    yield Kubectl(stack, names[0]), Kubectl(stack, names[1])
    for name in names:
        admin.run("delete", "namespace", name, "--wait=false", check=False)


def test_two_operators_restoring_into_one_database_take_turns(
    stack: Stack,
    installed: None,
    operator: OperatorProcess,
    two_namespaces: tuple[Kubectl, Kubectl],
    fresh_database: str,
    pg_admin_uri: str,
    tmp_path: Path,
) -> None:
    operator.stop()  # the shared operator watches every namespace; these two watch one each
    team_a, team_b = two_namespaces
    seed(fresh_database, rows=2000)
    target = f"target_{secrets.token_hex(5)}"
    with psycopg.connect(pg_admin_uri, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{target}"')
    target_uri = database_uri(pg_admin_uri, target)
    seed(target_uri, rows=1)

    kubeconfig = service_account_kubeconfig(
        stack, Kubectl(stack, OPERATOR_NAMESPACE), tmp_path / "kubeconfig"
    )
    operators = [
        OperatorProcess(
            kubeconfig, tmp_path / f"backups-{i}", tmp_path / f"operator-{i}.log", (ns.namespace,)
        )
        for i, ns in enumerate(two_namespaces)
    ]
    # A session that reads the target's table keeps the first restore's `DROP TABLE` waiting.
    blocker = psycopg.connect(target_uri)
    try:
        blocker.execute("LOCK TABLE events IN ACCESS SHARE MODE")
        for team, process in zip(two_namespaces, operators, strict=True):
            process.start()
            team.run("create", "secret", "generic", "habitat-db", f"--from-literal=uri={fresh_database}")
            team.run("create", "secret", "generic", "target-db", f"--from-literal=uri={target_uri}")
            team.apply(backup("source"))
            wait_ready(team, "source", process)
        into_target = {"mode": {"force": True, "clean": True}, "preRestoreBackup": False}

        team_a.apply(restore("first", **into_target))
        wait_phase(team_a, "restore", "first", {"Running"}, operators[0])
        team_b.apply(restore("second", **into_target))
        waiting = wait_for(
            "the second operator's restore to wait for the first's lock",
            lambda: (o := team_b.get("restore", "second")).get("status", {}).get("waitingFor") and o,
            timeout=60,
            operator=operators[1],
        )
        assert waiting["status"]["waitingFor"] == f"restore {team_a.namespace}/first"
        assert condition(waiting, "Reconciling")["reason"] == "WaitingForLock"
        assert waiting["status"]["phase"] == "Pending"

        blocker.rollback()  # the first restore goes on; the second follows once its lock is free
        first = finished(team_a, "first", operators[0])
        second = finished(team_b, "second", operators[1], timeout=180)
        assert first["status"]["phase"] == "Succeeded", first["status"]
        assert second["status"]["phase"] == "Succeeded", second["status"]
        assert snapshot(target_uri) == snapshot(fresh_database)
    finally:
        blocker.close()
        for process in operators:
            process.stop()
        with psycopg.connect(pg_admin_uri, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
