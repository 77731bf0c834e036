"""What several unit test modules share: the smallest valid specs of Backup and Restore, and a sink
that collects what is written to it. Test modules import from here, never from one another
(tests/unit/test_test_imports.py checks)."""

from __future__ import annotations

from typing import Any


def backup_spec(**overrides: Any) -> dict[str, Any]:
    return {
        "database": {"secretRef": {"name": "habitat-db"}},
        "storage": {"filesystem": {"path": "habitat/nightly"}},
        **overrides,
    }


def restore_spec(**overrides: Any) -> dict[str, Any]:
    return {
        "source": {"backupRef": {"name": "habitat-nightly"}},
        "target": {"database": {"secretRef": {"name": "habitat-db"}}},
        **overrides,
    }


class Collected:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def sync(self) -> None:
        pass
