"""What users apply: the kustomize base and the examples are accepted by the real apiserver."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.harness import REPO, Kubectl, Stack

pytestmark = pytest.mark.e2e


def kustomize(admin: Kubectl, overlay: str) -> list[dict[str, Any]]:
    rendered = admin.run("kustomize", str(REPO / "manifests" / overlay)).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


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
