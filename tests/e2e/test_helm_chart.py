"""charts/habitat-operator: helm (built from its Go module) lints and renders it, the values schema
refuses bad values, and the real apiserver accepts what it renders (a server-side dry run)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.helpers import dry_run
from tests.harness import REPO, Kubectl, Stack

pytestmark = pytest.mark.e2e

CHART = REPO / "charts" / "habitat-operator"
FULL_VALUES = Path(__file__).with_name("helm-values-full.yaml")
WATCHED = ("team-a", "team-b")


@pytest.fixture(scope="session")
def helm() -> str:
    built = subprocess.run([str(REPO / "scripts" / "build-helm")], capture_output=True, text=True, check=True)
    return built.stdout.strip().splitlines()[-1]


def run_helm(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def render(helm: str, namespace: str, *args: str) -> list[dict[str, Any]]:
    rendered = run_helm(
        helm, "template", "habitat-operator", str(CHART), "--namespace", namespace, *args
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(doc for doc in documents if doc["kind"] == kind)


def test_helm_lint_passes_for_default_and_full_values(helm: str) -> None:
    run_helm(helm, "lint", "--strict", str(CHART))
    run_helm(helm, "lint", "--strict", str(CHART), "-f", str(FULL_VALUES))


def test_default_values_render_what_the_kustomize_base_has(helm: str, kubectl: Kubectl) -> None:
    documents = render(helm, kubectl.namespace)
    kinds = sorted(doc["kind"] for doc in documents)
    assert kinds == sorted(
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "PersistentVolumeClaim",
            "Service",
        ]
    )
    args = by_kind(documents, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in args
    base_rbac = yaml.safe_load_all((REPO / "manifests" / "base" / "rbac.yaml").read_text())
    assert by_kind(documents, "ClusterRole")["rules"] == by_kind(list(base_rbac), "ClusterRole")["rules"]
    assert "deployment.apps/habitat-operator serverside-applied (server dry run)" in dry_run(
        kubectl, documents
    )


@pytest.fixture
def watched_namespaces(stack: Stack) -> Iterator[None]:
    """The namespaces helm-values-full.yaml watches, which get the replicas' KopfPeerings."""
    admin = Kubectl(stack, "default")
    admin.run("apply", "--server-side", "-f", str(CHART / "crds" / "kopf-peering.yaml"))
    admin.run("wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev", "--timeout=60s")
    for name in WATCHED:
        admin.run("create", "namespace", name, check=False)
    yield
    for name in WATCHED:
        admin.run("delete", "namespace", name, "--wait=false", check=False)


def test_full_values_render_and_are_accepted(helm: str, kubectl: Kubectl, watched_namespaces: None) -> None:
    documents = render(helm, kubectl.namespace, "-f", str(FULL_VALUES))
    kinds = {doc["kind"] for doc in documents}
    assert "PersistentVolumeClaim" not in kinds and "ServiceAccount" not in kinds
    pod = by_kind(documents, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "platform-operator"
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "shared-backups"}
    container = pod["containers"][0]
    assert container["image"] == "registry.example.com/habitat-operator:1.2.3"
    assert container["args"][:3] == ["run", "--namespace=team-a", "--namespace=team-b"]
    assert "--max-concurrent-operations=4" in container["args"]
    assert "--allowed-metrics-endpoints=*.monitoring.svc,prometheus.example:9090" in container["args"]
    # Two replicas: peered, one KopfPeering per watched namespace, rolled one at a time.
    assert {"--peering=habitat-operator", "--peering-lifetime=20"} <= set(container["args"])
    peerings = [(d["kind"], d["metadata"]["namespace"]) for d in documents if d["kind"] == "KopfPeering"]
    assert peerings == [("KopfPeering", name) for name in WATCHED]
    assert by_kind(documents, "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"
    base_alerts = yaml.safe_load((REPO / "manifests" / "base" / "alerts.yaml").read_text())
    assert by_kind(documents, "PrometheusRule")["spec"]["groups"] == base_alerts["spec"]["groups"]
    dashboard = json.loads(by_kind(documents, "ConfigMap")["data"]["habitat-operator.json"])
    assert dashboard == json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    assert by_kind(documents, "ServiceMonitor")["spec"]["endpoints"] == [
        {"port": "metrics", "interval": "15s"}
    ]
    dry_run(kubectl, documents)


def test_two_replicas_need_a_volume_both_can_mount(helm: str) -> None:
    result = run_helm(helm, "template", "habitat-operator", str(CHART), "--set", "replicas=2", check=False)
    assert (
        result.returncode != 0 and "set backups.persistence.accessModes to [ReadWriteMany]" in result.stderr
    )
    single = render(
        helm, "default", "--set", "replicas=2", "--set", "backups.persistence.accessModes={ReadWriteMany}"
    )
    assert by_kind(single, "ClusterKopfPeering")["metadata"]["name"] == "habitat-operator"


@pytest.mark.parametrize(
    "bad", ["replicas=9", "watchNamespaces[0]=Not_A_Namespace", "logFormat=xml", "metrics.port=0", "imag=x"]
)
def test_the_values_schema_refuses(helm: str, bad: str) -> None:
    result = run_helm(helm, "template", "habitat-operator", str(CHART), "--set", bad, check=False)
    assert result.returncode != 0 and "values don't meet the specifications of the schema" in result.stderr


def test_chart_crds_are_the_generated_ones_and_kopfs_peering(helm: str) -> None:
    shown = run_helm(helm, "show", "crds", str(CHART)).stdout
    names = {doc["metadata"]["name"] for doc in yaml.safe_load_all(shown) if doc}
    generated = {
        yaml.safe_load(p.read_text())["metadata"]["name"] for p in (REPO / "crds").glob("ops.*.yaml")
    }
    assert names == generated | {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
