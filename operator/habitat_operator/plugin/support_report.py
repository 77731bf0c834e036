"""`kubectl habitat report -o report.zip`: what support needs, with every secret redacted.

The zip holds, per namespace, the Habitat resources and their Events and the Secrets they could
name (names, types and keys only); the CRDs' versions; the operator's Deployment and Pods; with
`--logs`, the operator's recent log; and report.json saying what is in it and what could not be
read. Everything passes through redaction.Redactor, and each file's whole text once more.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from habitat_operator import timestamps
from habitat_operator.api import ALL_KINDS, GROUP
from habitat_operator.plugin.exit_codes import ExitCode
from habitat_operator.plugin.flags import habitat_resource
from habitat_operator.plugin.kubectl import Kubectl, KubectlError
from habitat_operator.plugin.redaction import Redactor, secret_summary

OPERATOR_SELECTOR = "app.kubernetes.io/name=habitat-operator"


class Report:
    """The files of one report, redacted as they are added; written once at the end."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.files: dict[str, str] = {}
        self.problems: list[str] = []

    def add_yaml(self, name: str, data: Any) -> None:
        text = yaml.safe_dump(self.redactor.data(data), sort_keys=False, width=float("inf"))
        self.files[name] = self.redactor.text(text)

    def add_text(self, name: str, text: str) -> None:
        self.files[name] = self.redactor.text(text)

    def write(self, path: Path, summary: Mapping[str, Any]) -> None:
        index = {**summary, "files": sorted(self.files), "problems": self.problems}
        self.add_text("report.json", json.dumps(index, indent=2) + "\n")
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, text in sorted(self.files.items()):
                archive.writestr(name, text)


def without_noise(obj: Mapping[str, Any]) -> dict[str, Any]:
    """An object as support reads it: no managedFields."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


def by_namespace(items: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        grouped[item["metadata"].get("namespace") or ""].append(item)
    return grouped


def is_about_habitat(event: Mapping[str, Any]) -> bool:
    involved = event.get("involvedObject") or event.get("regarding") or {}
    return str(involved.get("apiVersion", "")).startswith(f"{GROUP}/")


def crd_versions(crd: Mapping[str, Any]) -> dict[str, Any]:
    spec, status = crd.get("spec") or {}, crd.get("status") or {}
    return {
        "name": crd["metadata"]["name"],
        "labels": crd["metadata"].get("labels") or {},
        "versions": [
            {"name": v["name"], "served": v.get("served"), "storage": v.get("storage")}
            for v in spec.get("versions") or []
        ],
        "storedVersions": status.get("storedVersions") or [],
        "conditions": [
            {"type": c.get("type"), "status": c.get("status"), "reason": c.get("reason")}
            for c in status.get("conditions") or []
        ],
    }


def write(args: argparse.Namespace, kubectl: Kubectl) -> int:
    path = Path(args.report_path or f"habitat-report-{timestamps.now():%Y%m%d%H%M%S}.zip")
    redactor = Redactor()
    report = Report(redactor)
    scope = kubectl.scope() if kubectl.all_namespaces else ["--namespace", kubectl.namespace]
    # Secrets first: their values are the needles every later file is searched for.
    secrets = _listed(kubectl, report, "secrets", *scope)
    deployments = _listed(kubectl, report, "deployments", "--all-namespaces", "-l", OPERATOR_SELECTOR)
    operator_namespaces = sorted({d["metadata"]["namespace"] for d in deployments})
    for namespace in operator_namespaces:
        if kubectl.all_namespaces or namespace != kubectl.namespace:
            secrets += _listed(kubectl, report, "secrets", "--namespace", namespace)
    for secret in secrets:
        redactor.add_secret(secret)

    objects = kubectl.json("get", ",".join(habitat_resource(kind.plural) for kind in ALL_KINDS), *scope)[
        "items"
    ]
    events = [e for e in kubectl.json("get", "events", *scope)["items"] if is_about_habitat(e)]
    secrets_by_namespace = by_namespace(secrets)
    events_by_namespace = by_namespace(events)
    for namespace, items in by_namespace(objects).items():
        for kind in ALL_KINDS:
            of_kind = [without_noise(o) for o in items if o.get("kind") == kind.kind]
            if of_kind:
                report.add_yaml(f"namespaces/{namespace}/{kind.plural}.yaml", of_kind)
        report.add_yaml(f"namespaces/{namespace}/events.yaml", events_by_namespace.get(namespace, []))
        summaries = [secret_summary(s) for s in secrets_by_namespace.get(namespace, [])]
        report.add_yaml(f"namespaces/{namespace}/secrets.yaml", summaries)

    crds = [c for c in _listed(kubectl, report, "customresourcedefinitions") if c["spec"]["group"] == GROUP]
    report.add_yaml("crds.yaml", [crd_versions(c) for c in crds])
    report.add_yaml("operator/deployments.yaml", [without_noise(d) for d in deployments])
    pods = _listed(kubectl, report, "pods", "--all-namespaces", "-l", OPERATOR_SELECTOR)
    report.add_yaml("operator/pods.yaml", [without_noise(p) for p in pods])
    if not deployments:
        report.problems.append(f"no operator Deployment found (label {OPERATOR_SELECTOR})")
    if args.logs:
        for deployment in deployments:
            _add_log(kubectl, report, deployment, args.log_lines)

    summary = {
        "createdAt": timestamps.rfc3339(timestamps.now()),
        "namespaces": sorted(by_namespace(objects)) if kubectl.all_namespaces else [kubectl.namespace],
        "redaction": "Secrets: names, types and keys only; Secret values and URI passwords: REDACTED",
    }
    try:
        report.write(path, summary)
    except OSError as error:
        print(f"kubectl habitat report: cannot write {path}: {error.strerror}", file=sys.stderr)
        return ExitCode.COULD_NOT_CHECK
    for problem in report.problems:
        print(f"kubectl habitat report: {problem}", file=sys.stderr)
    print(f"wrote {path} ({len(report.files)} files)")
    return ExitCode.OK


def _listed(kubectl: Kubectl, report: Report, resource: str, *flags: str) -> list[dict[str, Any]]:
    """What the report can do without: a user allowed to read only some of it still gets a report,
    which says what it could not read (without the Secrets, only the patterns redact)."""
    try:
        items: list[dict[str, Any]] = kubectl.json("get", resource, *flags)["items"]
    except KubectlError as error:
        report.problems.append(f"{resource} not read: {error}")
        return []
    return items


def _add_log(kubectl: Kubectl, report: Report, deployment: Mapping[str, Any], lines: int) -> None:
    meta = deployment["metadata"]
    name = f"operator/{meta['namespace']}-{meta['name']}.log"
    result = kubectl.run(
        "logs",
        f"deployment/{meta['name']}",
        "--namespace",
        meta["namespace"],
        "--all-containers",
        "--timestamps",
        f"--tail={lines}",
        check=False,
    )
    if result.returncode != 0:
        report.problems.append(f"log of {meta['namespace']}/{meta['name']} not read: {result.stderr.strip()}")
        return
    if not result.stdout.strip():
        report.problems.append(f"log of {meta['namespace']}/{meta['name']} is empty: no container has run")
        return
    report.add_text(name, result.stdout)
