"""What users apply: the kustomize base and the examples are accepted by the real apiserver."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.e2e.helpers import dry_run
from tests.harness import REPO, Kubectl, Stack

pytestmark = pytest.mark.e2e


def kustomize(admin: Kubectl, overlay: str) -> list[dict[str, Any]]:
    rendered = admin.run("kustomize", str(REPO / "manifests" / overlay)).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def test_the_kustomize_base_renders_and_the_apiserver_accepts_it(installed: None, stack: Stack) -> None:
    admin = Kubectl(stack, "habitat-system")
    documents = kustomize(admin, "base")
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in documents}
    assert {
        ("CustomResourceDefinition", "backups.ops.habitat.dev"),
        ("CustomResourceDefinition", "restores.ops.habitat.dev"),
        ("Deployment", "habitat-operator"),
        ("ClusterRole", "habitat-operator"),
        ("Service", "habitat-operator-metrics"),
        ("PrometheusRule", "habitat-operator"),
    } <= kinds
    assert "deployment.apps/habitat-operator serverside-applied (server dry run)" in dry_run(
        admin, documents, "--force-conflicts"
    )


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "manifests" / "examples").glob("*.yaml")))
def test_every_example_is_valid(installed: None, kubectl: Kubectl, example: str) -> None:
    kubectl.run("apply", "--dry-run=server", "-f", str(REPO / "manifests" / "examples" / example))


def test_the_ha_overlay_runs_two_peered_replicas(installed: None, stack: Stack) -> None:
    admin = Kubectl(stack, "habitat-system")
    admin.run("apply", "--server-side", "-f", str(REPO / "manifests" / "ha" / "kopf-peering.yaml"))
    admin.run("wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s")
    documents = kustomize(admin, "ha")
    deployment = next(doc for doc in documents if doc["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert "--peering=habitat-operator" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    claim = next(doc for doc in documents if doc["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert any(doc["kind"] == "ClusterKopfPeering" for doc in documents)
    dry_run(admin, documents, "--force-conflicts")
