"""The Helm chart carries copies of crds/, the ClusterRole's rules and the alert groups."""

import subprocess
import sys
from pathlib import Path

SYNC = Path(__file__).parents[2] / "scripts" / "sync_chart.py"


def test_chart_copies_are_fresh() -> None:
    result = subprocess.run([sys.executable, str(SYNC), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, f"charts/habitat-operator is stale, run `make chart`:\n{result.stdout}"
