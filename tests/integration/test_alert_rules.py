"""The shipped alerts, under promtool (Debian's prometheus package, which dev-stack installs): the
rules parse, each alert fires and stays quiet as its tests in tests/alerts/ say, and each has a test
and a runbook in docs/runbooks/."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import REPO

ALERTS = REPO / "manifests" / "base" / "alerts.yaml"
TESTS = REPO / "tests" / "alerts"
RUNBOOKS = "https://github.com/habitat/habitat-operator/blob/main/docs/runbooks/"


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["spec"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool not found: install Debian's prometheus package (scripts/dev-stack up does)"
    return found


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    groups = yaml.safe_load(ALERTS.read_text())["spec"]["groups"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    for test in TESTS.glob("*.test.yaml"):
        shutil.copy(test, tmp_path)
    return tmp_path


def test_the_rules_parse(promtool: str, workdir: Path) -> None:
    result = subprocess.run(
        [promtool, "check", "rules", "rules.yaml"], cwd=workdir, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_behaves_as_its_tests_say(promtool: str, workdir: Path) -> None:
    files = sorted(p.name for p in workdir.glob("*.test.yaml"))
    result = subprocess.run([promtool, "test", "rules", *files], cwd=workdir, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_test_and_a_runbook() -> None:
    tested = set(re.findall(r"alertname: (\w+)", "".join(p.read_text() for p in TESTS.glob("*.test.yaml"))))
    for rule in rules():
        name = rule["alert"]
        assert name in tested, f"{name} has no promtool test in tests/alerts/"
        assert rule["annotations"]["runbook_url"] == f"{RUNBOOKS}{name}.md"
        assert (REPO / "docs" / "runbooks" / f"{name}.md").is_file(), f"docs/runbooks/{name}.md is missing"
