"""The local stack's scripts as a new user meets them on a fresh machine, where another apt-get may
hold the dpkg lock for a minute after boot; and the stack's package stays small modules."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dev_stack import common

REPO = Path(__file__).resolve().parents[2]
WAITS_FOR_THE_LOCK = "DPkg::Lock::Timeout="


def test_apt_install_waits_for_the_dpkg_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    commands: list[list[str]] = []

    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[bytes]:
        commands.append(argv)
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    monkeypatch.setattr(common, "is_root", lambda: True)
    monkeypatch.setattr(shutil, "which", {"apt-get": "/usr/bin/apt-get"}.get)
    monkeypatch.setattr(subprocess, "run", run)

    common.apt_install("prometheus", "/nonexistent/prometheus")

    assert [(argv[0], "update" in argv, "install" in argv) for argv in commands] == [
        ("apt-get", True, False),
        ("apt-get", False, True),
    ]
    for argv in commands:
        assert any(arg.startswith(WAITS_FOR_THE_LOCK) for arg in argv), argv


def test_every_apt_get_of_the_ci_script_waits_for_the_dpkg_lock() -> None:
    calls = [
        line
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if re.match(r"\s*apt-get\b.*\s(update|install)\b", line)
    ]
    assert len(calls) == 2
    for line in calls:
        assert WAITS_FOR_THE_LOCK in line, line


def test_each_module_of_the_stack_is_under_300_lines() -> None:
    modules = sorted((REPO / "scripts" / "dev_stack").glob("*.py"))
    assert len(modules) >= 8  # one per service, the whole stack, the command line
    for module in modules:
        assert len(module.read_text().splitlines()) < 300, module.name
