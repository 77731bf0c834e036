"""No test module imports another test module: what tests share lives in a helpers module
(tests/e2e/helpers.py, tests/integration/helpers.py, tests/unit/helpers.py) or in a conftest fixture.

Importing a test module runs it a second time under another name, ties its tests to its helpers, and
lets one file's edit break another's collection."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def is_test_module(dotted: str) -> bool:
    return dotted.rsplit(".", 1)[-1].startswith("test_")


def imported_test_modules(path: Path) -> list[str]:
    """Every test module that the file at `path` imports, as written in its import statements."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if is_test_module(alias.name)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if is_test_module(node.module):
                found.append(node.module)
            else:  # `from tests.e2e import test_backup`
                found += [f"{node.module}.{a.name}" for a in node.names if is_test_module(a.name)]
    return found


def offenders(*roots: Path) -> list[str]:
    return [
        f"{path.relative_to(root.parent)} imports {module}"
        for root in roots
        for path in sorted(root.rglob("*.py"))
        for module in imported_test_modules(path)
    ]


def test_no_test_module_imports_another_test_module() -> None:
    assert offenders(REPO / "tests", REPO / "bench") == []


def test_each_form_of_such_an_import_is_found(tmp_path: Path) -> None:
    tests = tmp_path / "tests"
    (tests / "e2e").mkdir(parents=True)
    (tests / "e2e" / "helpers.py").write_text("from tests.harness import Kubectl\n")
    (tests / "e2e" / "test_a.py").write_text(
        "from tests.e2e.test_backup import wait_for\n"
        "from tests.e2e import test_restore\n"
        "import tests.unit.test_api_backup as api\n"
        "from tests.e2e.helpers import wait_phase\n"
    )

    assert offenders(tests) == [
        "tests/e2e/test_a.py imports tests.e2e.test_backup",
        "tests/e2e/test_a.py imports tests.e2e.test_restore",
        "tests/e2e/test_a.py imports tests.unit.test_api_backup",
    ]
