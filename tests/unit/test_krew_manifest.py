"""plugins/krew/habitat.yaml names the console script pyproject.toml installs, at the package's version."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_the_krew_manifest_follows_the_package() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    manifest = yaml.safe_load((REPO / "plugins" / "krew" / "habitat.yaml").read_text(encoding="utf-8"))
    version = f"v{project['version']}"
    assert project["scripts"]["kubectl-habitat"] == "habitat_operator.plugin.cli:main"
    assert manifest["metadata"]["name"] == "habitat"  # kubectl habitat
    assert manifest["spec"]["version"] == version
    for platform in manifest["spec"]["platforms"]:
        assert platform["bin"] == "kubectl-habitat"
        assert f"/{version}/" in platform["uri"] and version in platform["uri"].rsplit("/", 1)[1]
