"""Copies what charts/habitat-operator shares with manifests/ and crds/ into the chart, which Helm
cannot read from outside its folder: the CRDs (Kopf's peering ones too), the ClusterRole's rules
and the alert groups.
`make chart` runs it; with --check it only lists stale files (tests/unit/test_chart_sync.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "habitat-operator"
HEADER = "# Copied from {source} by scripts/sync_chart.py (make chart); edit the source, not this file.\n"


def _document(path: Path, kind: str) -> dict[str, Any]:
    return next(doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc["kind"] == kind)


def _dump(source: str, data: Any) -> str:
    return HEADER.format(source=source) + yaml.safe_dump(data, sort_keys=False, width=120)


def chart_files() -> dict[Path, str]:
    """Every file the chart copies, by its path in the chart, with the content it must have."""
    files = {
        CHART / "crds" / crd.name: crd.read_text()
        for crd in sorted((REPO / "crds").glob("ops.habitat.dev_*.yaml"))
    }
    peering = REPO / "manifests" / "ha" / "kopf-peering.yaml"
    files[CHART / "crds" / peering.name] = peering.read_text()
    rbac = _document(REPO / "manifests" / "base" / "rbac.yaml", "ClusterRole")
    files[CHART / "files" / "cluster-role-rules.yaml"] = _dump("manifests/base/rbac.yaml", rbac["rules"])
    alerts = _document(REPO / "manifests" / "base" / "alerts.yaml", "PrometheusRule")
    files[CHART / "files" / "alert-groups.yaml"] = _dump(
        "manifests/base/alerts.yaml", alerts["spec"]["groups"]
    )
    return files


def stale_files() -> list[Path]:
    """Chart files that differ from their source, or that no source produces any more."""
    wanted = chart_files()
    present = set((CHART / "crds").glob("*.yaml"))
    differ = [path for path, text in wanted.items() if not path.is_file() or path.read_text() != text]
    return sorted(differ + [path for path in present if path not in wanted])


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        stale = stale_files()
        for path in stale:
            print(f"stale: {path.relative_to(REPO)}")
        return 1 if stale else 0
    wanted = chart_files()
    for path in (CHART / "crds").glob("*.yaml"):
        if path not in wanted:
            path.unlink()
    for path, text in wanted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
