"""Two replicas with Kopf peering (manifests/ha): one works, the other stands by, and when the
active one is SIGKILLed mid-backup the standby takes over and finishes it, once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import OPERATOR_NAMESPACE, OperatorProcess, service_account_kubeconfig
from tests.e2e.helpers import artifact_path, backup, seed, wait_for, wait_phase, wait_ready
from tests.harness import REPO, Kubectl, Stack

pytestmark = pytest.mark.e2e

PEERING = "habitat-operator"
LIFETIME_SECONDS = 10


def backup_runs(replica: OperatorProcess) -> float:
    families = replica.metrics()
    runs = families.get("habitat_backup_runs")
    return sum(s.value for s in runs.samples if s.name.endswith("_total")) if runs else 0.0


def peers(kubectl: Kubectl) -> dict[str, Any]:
    return dict(kubectl.get("kopfpeering", PEERING).get("status") or {})


def test_the_standby_finishes_a_backup_whose_active_replica_was_killed(
    stack: Stack,
    installed: None,
    operator: OperatorProcess,
    kubectl: Kubectl,
    db_secret: str,
    fresh_database: str,
    tmp_path: Path,
) -> None:
    operator.stop()  # the shared operator watches every namespace; these replicas watch this one
    admin = Kubectl(stack, OPERATOR_NAMESPACE)
    admin.run("apply", "--server-side", "-f", str(REPO / "manifests" / "ha" / "kopf-peering.yaml"))
    admin.run("wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev", "--timeout=60s")
    kubectl.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}})
    kubeconfig = service_account_kubeconfig(stack, admin, tmp_path / "kubeconfig")
    active, standby = (
        OperatorProcess(
            kubeconfig,
            tmp_path / "backups",  # one volume for both, as manifests/ha's ReadWriteMany claim
            tmp_path / f"{role}.log",
            (kubectl.namespace,),
            (f"--peering={PEERING}", f"--peering-lifetime={LIFETIME_SECONDS}"),
        )
        for role in ("active", "standby")
    )
    try:
        active.start()
        standby.start()
        # Mandatory peering starts paused; the standby stays so while it sees the active's keep-alive.
        wait_for("both replicas in the peering", lambda: len(peers(kubectl)) == 2, 60, standby)
        assert "Resuming operations" in active.log_text() and "Resuming operations" not in standby.log_text()

        seed(fresh_database, rows=1_500_000)  # still dumping when the active replica is killed
        kubectl.apply(backup("failover", retry={"limit": 2, "backoff": "1s"}))
        wait_phase(kubectl, "backup", "failover", {"Running"}, active)
        assert backup_runs(standby) == 0 and "failover" not in standby.log_text()

        active.kill()
        killed = time.monotonic()
        wait_for("the standby to resume", lambda: "Resuming operations" in standby.log_text(), 60, standby)
        takeover = time.monotonic() - killed
        print(f"takeover after SIGKILL: {takeover:.1f}s (peering lifetime {LIFETIME_SECONDS}s)")
        assert takeover <= LIFETIME_SECONDS + 5

        obj = wait_ready(kubectl, "failover", standby, timeout=240)
        assert obj["status"]["phase"] == "Succeeded"
        assert obj["status"]["attempts"] == 2  # the killed attempt, then the standby's
        assert [p.name for p in artifact_path(obj).parent.iterdir()] == ["failover.dump"]
        assert backup_runs(standby) == 1
    finally:
        active.stop()
        standby.stop()
