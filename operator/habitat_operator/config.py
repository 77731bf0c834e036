"""What the operator was started with, handed to every handler through Kopf's memo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OperatorConfig:
    backup_root: Path
