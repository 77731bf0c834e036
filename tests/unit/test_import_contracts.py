"""The import contracts in pyproject.toml bite: one forbidden import added to a copy of the package breaks
the contract that forbids it, and the same contracts hold on the untouched copy."""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
CONTRACT_NAMES: dict[str, str] = {
    contract["id"]: contract["name"]
    for contract in tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "importlinter"
    ]["contracts"]
}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package under src/, and of pyproject.toml (its contracts) beside it."""
    shutil.copytree(
        REPO / "operator" / "habitat_operator",
        tmp_path / "src" / "habitat_operator",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def lint_imports(tree: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    selected = [arg for contract in contracts for arg in ("--contract", contract)]
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", *selected],
        cwd=tree,
        # PYTHONPATH comes before the editable install's path, so the copy is the one analysed;
        # a wide console keeps each contract's name and verdict on one line.
        env={**os.environ, "PYTHONPATH": str(tree / "src"), "COLUMNS": "1000"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("module", "statement", "contract", "chain"),
    [
        (
            "engines/postgres/uri.py",
            "import habitat_operator.controllers.base.kube",
            "engines",
            "habitat_operator.engines.postgres.uri -> habitat_operator.controllers.base.kube",
        ),
        (
            "controllers/scheduling/cron.py",
            "import kopf",
            "controllers",
            "habitat_operator.controllers.scheduling.cron -> kopf",
        ),
        (
            "runtime.py",
            "from kopf._cogs.aiokits import aioenums",
            "kopf-private",
            "habitat_operator.runtime -> kopf._cogs.aiokits.aioenums",
        ),
        (
            "plugin/status.py",
            "import habitat_operator.controllers.base.kube",
            "plugin",
            "habitat_operator.plugin.status -> habitat_operator.controllers.base.kube",
        ),
        (
            "handlers/__init__.py",
            "import kopf._core.engines.peering",
            "kopf-private",
            "habitat_operator.handlers -> kopf._core.engines.peering",
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tree: Path, module: str, statement: str, contract: str, chain: str
) -> None:
    path = tree / "src" / "habitat_operator" / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{statement}\n", encoding="utf-8")

    result = lint_imports(tree, contract)

    assert result.returncode != 0, result.stdout + result.stderr
    assert f"{CONTRACT_NAMES[contract]} BROKEN" in result.stdout, result.stdout
    assert chain in result.stdout, result.stdout


def test_the_untouched_copy_keeps_the_contracts(tree: Path) -> None:
    result = lint_imports(tree, "engines", "controllers", "kopf-private", "plugin")

    assert result.returncode == 0, result.stdout + result.stderr
    for contract in ("engines", "controllers", "kopf-private", "plugin"):
        assert f"{CONTRACT_NAMES[contract]} KEPT" in result.stdout, result.stdout
