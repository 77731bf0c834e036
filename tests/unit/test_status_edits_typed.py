"""A status edit is checked by mypy: a misspelt field, or a value of the wrong type, fails `make lint`."""

from __future__ import annotations

from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parents[2]

SNIPPET = """
from habitat_operator.api.backup import BackupStatus
from habitat_operator.controllers.base.status import Edit

def verified(status: BackupStatus) -> None:
    status.verificaton = None

def counted(status: BackupStatus) -> None:
    status.attempts = "three"

EDITS: list[Edit[BackupStatus]] = [verified, counted]
"""


def test_mypy_refuses_a_misspelt_status_field_and_a_wrong_type(tmp_path: Path) -> None:
    module = tmp_path / "misspelt_edit.py"
    module.write_text(SNIPPET)
    out, _, status = api.run(
        ["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(ROOT / ".mypy_cache"), str(module)]
    )
    assert status == 1, out
    assert '"BackupStatus" has no attribute "verificaton"' in out
    assert 'expression has type "str", variable has type "int | None"' in out
    assert out.count("error:") == 2, out
