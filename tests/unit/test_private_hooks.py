"""The operator's hooks into its libraries' internals live in one module per library, and each hook
names a guard test that exists. Kopf's private modules are kept there by an import-linter contract
(tests/unit/test_import_contracts.py); pika's internals are reached by subclassing its classes, so
here no other module may subclass one."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "operator" / "habitat_operator"
HOOK_MODULES = {"kopf": PACKAGE / "kopf_hooks.py", "pika": PACKAGE / "engines" / "rabbitmq" / "pika_hooks.py"}
GUARD = re.compile(r"^# Guard test \(in (?P<file>tests/\S+\.py)\):\n# (?P<test>test_\w+)$", re.MULTILINE)


def functions_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


@pytest.mark.parametrize("library", sorted(HOOK_MODULES))
def test_every_guard_test_a_hook_module_names_exists(library: str) -> None:
    guards = list(GUARD.finditer(HOOK_MODULES[library].read_text(encoding="utf-8")))

    assert guards, f"{HOOK_MODULES[library].name} names no guard test"
    for guard in guards:
        path = REPO / guard["file"]
        assert path.exists(), guard["file"]
        assert guard["test"] in functions_of(path), f"{guard['file']} has no {guard['test']}"


def pika_subclasses(module: Path) -> list[str]:
    """Classes of `module` that derive from one of pika's."""
    tree = ast.parse(module.read_text(encoding="utf-8"))
    from_pika = {"pika"} | {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pika"
        for alias in node.names
    }

    def root(expression: ast.expr) -> str:
        while isinstance(expression, ast.Attribute):
            expression = expression.value
        return expression.id if isinstance(expression, ast.Name) else ""

    return [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and any(root(base) in from_pika for base in node.bases)
    ]


def test_only_pika_hooks_subclasses_pikas_classes() -> None:
    found = {
        str(module.relative_to(PACKAGE)): names
        for module in sorted(PACKAGE.rglob("*.py"))
        if module != HOOK_MODULES["pika"] and (names := pika_subclasses(module))
    }
    assert found == {}
    assert pika_subclasses(HOOK_MODULES["pika"]) == ["CoalescingConnection", "Encoded"]
