"""Argo CD's health check for the habitat kinds, run in a real Lua interpreter (lupa) against the
fixtures listed in manifests/gitops/argocd/health_test.yaml, the layout Argo CD's own tests use."""

from pathlib import Path
from typing import Any, cast

import lupa
import pytest
import yaml
from lupa import LuaRuntime

from habitat_operator.api import ALL_KINDS, GROUP

ARGOCD = Path(__file__).parents[2] / "manifests" / "gitops" / "argocd"
SCRIPT = (ARGOCD / "health.lua").read_text()
CASES = yaml.safe_load((ARGOCD / "health_test.yaml").read_text())["tests"]


def health(obj: dict[str, Any]) -> dict[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.globals()["obj"] = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT)
    assert lupa.lua_type(result) == "table"
    return {str(key): str(value) for key, value in cast(Any, result).items()}


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_health_of_each_fixture(case: dict[str, Any]) -> None:
    obj = yaml.safe_load((ARGOCD / case["inputPath"]).read_text())
    assert health(obj) == case["healthStatus"]


def test_fixtures_cover_every_kind() -> None:
    covered = {yaml.safe_load((ARGOCD / c["inputPath"]).read_text())["kind"] for c in CASES}
    assert {info.kind for info in ALL_KINDS} <= covered


def test_argocd_cm_installs_the_script_for_every_kind() -> None:
    data = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())["data"]
    for info in ALL_KINDS:
        assert data[f"resource.customizations.health.{GROUP}_{info.kind}"] == SCRIPT
