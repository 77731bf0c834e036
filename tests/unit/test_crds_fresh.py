"""crds/ must be exactly what the generator produces from the pydantic models."""

from pathlib import Path

from habitat_operator.api import ALL_KINDS, GROUP
from habitat_operator.api.crdgen import crd_filename, render, render_kustomization

CRDS = Path(__file__).resolve().parents[2] / "crds"
FIX = "crds/ is stale: run `habitat-operator crds --output crds/` and commit the result"


def test_crd_files_match_the_models() -> None:
    stale = [
        crd_filename(kind)
        for kind in ALL_KINDS
        if not (CRDS / crd_filename(kind)).is_file()
        or (CRDS / crd_filename(kind)).read_text(encoding="utf-8") != render(kind)
    ]
    assert not stale, f"{FIX} ({', '.join(stale)} differ)"


def test_no_crd_files_for_unknown_kinds() -> None:
    expected = {crd_filename(kind) for kind in ALL_KINDS}
    extra = sorted(p.name for p in CRDS.glob(f"{GROUP}_*.yaml") if p.name not in expected)
    assert not extra, f"{FIX}, and delete {', '.join(extra)}"


def test_kustomization_lists_every_crd() -> None:
    assert (CRDS / "kustomization.yaml").read_text(encoding="utf-8") == render_kustomization(), FIX
