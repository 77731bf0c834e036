"""diagnose's operator checks: its Deployment is ready, /readyz answers, and its version is the CRDs'.

The operator is found by the label both install methods put on it (`app.kubernetes.io/name:
habitat-operator`, manifests/base and the chart); /readyz and /metrics are read through the
apiserver's service proxy, so nothing but kubectl access is needed. The CRDs carry the version that
generated them in `app.kubernetes.io/version` (api/crdgen.py).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from habitat_operator import __version__
from habitat_operator.api import ALL_KINDS
from habitat_operator.api.crdgen import VERSION_LABEL
from habitat_operator.plugin.checks import Check, failed, passed, warned
from habitat_operator.plugin.kubectl import Kubectl, KubectlError

NAME_LABEL = "app.kubernetes.io/name=habitat-operator"
BUILD_METRIC = "habitat_operator_build_info"  # an Info metric, exposed as a gauge
_INSTALL_HINT = "install it (docs/operations.md), or give --operator-url if it runs outside the cluster"


def operator_checks(kubectl: Kubectl, operator_url: str | None) -> list[Check]:
    """The operator's health and version, then the CRDs' version against it."""
    if operator_url:
        checks, version = _direct(operator_url, kubectl.timeout)
    else:
        checks, version = _in_cluster(kubectl)
    return checks + crd_checks(kubectl, version)


def _in_cluster(kubectl: Kubectl) -> tuple[list[Check], str | None]:
    try:
        found = kubectl.json("get", "deployments,services", "--all-namespaces", "-l", NAME_LABEL)["items"]
    except KubectlError as error:
        return [
            warned(
                "operator", "deployment", f"cannot list Deployments: {error}", "ask for `list` on deployments"
            )
        ], None
    deployments = [item for item in found if item["kind"] == "Deployment"]
    if not deployments:
        return [failed("operator", "deployment", f"no Deployment labelled {NAME_LABEL}", _INSTALL_HINT)], None
    checks: list[Check] = []
    version: str | None = None
    for deployment in deployments:
        namespace = deployment["metadata"]["namespace"]
        checks.append(deployment_check(deployment))
        version = version or deployment_version(deployment)
        for service in (
            s for s in found if s["kind"] == "Service" and s["metadata"]["namespace"] == namespace
        ):
            proxied = _service_proxy(kubectl, service)
            ready, metrics = _get_raw(kubectl, proxied + "readyz"), _get_raw(kubectl, proxied + "metrics")
            checks.append(_readyz_check(f"service {namespace}/{service['metadata']['name']}", ready))
            version = (running_version(metrics[1]) if metrics[0] else None) or version
    return checks, version


def _direct(url: str, timeout: float) -> tuple[list[Check], str | None]:
    base = url.rstrip("/")
    ready, metrics = _http_get(base + "/readyz", timeout), _http_get(base + "/metrics", timeout)
    version = running_version(metrics[1]) if metrics[0] else None
    return [_readyz_check(base, ready)], version


def deployment_check(deployment: Mapping[str, Any]) -> Check:
    """Ready replicas against wanted ones (pure)."""
    meta, spec, status = deployment["metadata"], deployment.get("spec") or {}, deployment.get("status") or {}
    target = f"deployment {meta['namespace']}/{meta['name']}"
    wanted, ready = int(spec.get("replicas", 1)), int(status.get("readyReplicas") or 0)
    message = f"{ready}/{wanted} replicas ready"
    namespace, name = meta["namespace"], meta["name"]
    logs = f"kubectl -n {namespace} describe deployment {name}; kubectl -n {namespace} logs deploy/{name}"
    if wanted == 0:
        return failed(
            "operator",
            target,
            "scaled to 0 replicas: nothing reconciles",
            f"kubectl -n {meta['namespace']} scale deployment {meta['name']} --replicas=1",
        )
    if ready == 0:
        return failed("operator", target, message, logs)
    if ready < wanted:
        return warned("operator", target, message, logs)
    return passed("operator", target, message)


def deployment_version(deployment: Mapping[str, Any]) -> str | None:
    """The chart's version label, else the operator container's image tag."""
    labels = deployment["metadata"].get("labels") or {}
    if labels.get(VERSION_LABEL):
        return str(labels[VERSION_LABEL])
    containers = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
        "containers"
    ) or []
    for container in containers:
        image = str(container.get("image", ""))
        name, _, tag = image.rpartition(":")
        if name and "/" not in tag and "habitat-operator" in name:
            return tag
    return None


def running_version(metrics_text: str) -> str | None:
    """The `version` label of habitat_operator_build_info in a /metrics page (pure)."""
    try:
        for family in text_string_to_metric_families(metrics_text):
            if family.name == BUILD_METRIC:
                return next((s.labels.get("version") for s in family.samples), None)
    except ValueError:
        return None
    return None


def crd_checks(kubectl: Kubectl, operator_version: str | None) -> list[Check]:
    names = [kind.crd_name for kind in ALL_KINDS]
    result = kubectl.run("get", "crd", *names, "-o", "json", "--ignore-not-found", check=False)
    if result.returncode != 0:
        return [
            warned(
                "crds",
                "customresourcedefinitions",
                "cannot read the CRDs",
                "ask for `get` on customresourcedefinitions",
            )
        ]
    items = json.loads(result.stdout or '{"items": []}').get("items", [])
    return evaluate_crds(names, items, operator_version)


def evaluate_crds(
    names: list[str], items: list[Mapping[str, Any]], operator_version: str | None
) -> list[Check]:
    """Every CRD installed, each of the operator's version (pure)."""
    installed = {
        item["metadata"]["name"]: (item["metadata"].get("labels") or {}).get(VERSION_LABEL) for item in items
    }
    apply_hint = (
        "apply the CRDs of the operator's version: `kubectl apply --server-side -k crds` (or `helm upgrade`)"
    )
    missing = [name for name in names if name not in installed]
    if missing:
        return [failed("crds", ", ".join(missing), "not installed", apply_hint)]
    versions = sorted({str(v) for v in installed.values() if v})
    unlabelled = sorted(name for name, version in installed.items() if not version)
    checks: list[Check] = []
    if operator_version is None:
        checks.append(
            warned(
                "version",
                "operator",
                "the operator's version is unknown",
                "expose /metrics (the Service) or label the Deployment with app.kubernetes.io/version",
            )
        )
    elif unlabelled:
        checks.append(
            warned(
                "version",
                ", ".join(unlabelled),
                f"CRDs without {VERSION_LABEL}: older than the operator's {operator_version}?",
                apply_hint,
            )
        )
    elif versions != [operator_version]:
        checks.append(
            failed(
                "version",
                "crds",
                f"CRDs are {', '.join(versions)}, the operator is {operator_version}",
                apply_hint,
            )
        )
    else:
        checks.append(passed("version", "crds", f"CRDs and operator are {operator_version}"))
    if operator_version and operator_version != __version__:
        checks.append(
            warned(
                "version",
                "plugin",
                f"this plugin is {__version__}, the operator {operator_version}",
                "install the plugin of the operator's version (pip install habitat-operator==VERSION)",
            )
        )
    return checks


def _service_proxy(kubectl: Kubectl, service: Mapping[str, Any]) -> str:
    meta = service["metadata"]
    ports = (service.get("spec") or {}).get("ports") or [{}]
    port = next(
        (p.get("name") or p.get("port") for p in ports if p.get("name") == "metrics"),
        ports[0].get("name") or ports[0].get("port"),
    )
    return f"/api/v1/namespaces/{meta['namespace']}/services/{meta['name']}:{port}/proxy/"


def _get_raw(kubectl: Kubectl, path: str) -> tuple[bool, str]:
    result = kubectl.run("get", "--raw", path, check=False)
    return result.returncode == 0, result.stdout if result.returncode == 0 else result.stderr.strip()


def _http_get(url: str, timeout: float) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return True, response.read(4 << 20).decode(errors="replace")
    except urllib.error.HTTPError as error:
        return False, f"HTTP {error.code}"
    except OSError as error:
        return False, str(error.args[-1] if error.args else error)


def _readyz_check(target: str, answer: tuple[bool, str]) -> Check:
    ok, text = answer
    if ok:
        return passed("operator", f"{target} /readyz", "ready")
    return failed(
        "operator",
        f"{target} /readyz",
        f"not ready: {text.splitlines()[-1] if text else 'no answer'}",
        "the operator's log says why (a lost watch, an exhausted slot pool)",
    )
