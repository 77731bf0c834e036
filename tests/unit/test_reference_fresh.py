"""docs/reference/ must be exactly what `habitat-operator reference` renders from the models."""

from pathlib import Path

from habitat_operator.api import ALL_KINDS
from habitat_operator.api.reference import render

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference"


def test_every_kind_has_a_fresh_reference_page() -> None:
    stale = [
        kind.plural
        for kind in ALL_KINDS
        if not (REFERENCE / f"{kind.plural}.md").is_file()
        or (REFERENCE / f"{kind.plural}.md").read_text(encoding="utf-8") != render(kind)
    ]
    assert not stale, f"docs/reference is stale for {', '.join(stale)}: run `make crds`"


def test_the_reference_documents_the_rules_and_defaults() -> None:
    backups = (REFERENCE / "backups.md").read_text(encoding="utf-8")
    limit = "Retries after the first failed attempt. (≥ 0; ≤ 20; default `3`) |"
    assert f"| `spec.retry.limit` | integer |  | {limit}" in backups
    assert "retention requires a schedule" in backups
