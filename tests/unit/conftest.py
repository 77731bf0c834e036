"""Fixtures for the controllers' unit tests: a fake apiserver, a frozen clock and fake engines.

The apiserver and the clock are installed for the test only (monkeypatch); the engines are handed
to each run as its constructor argument. The controllers run as in the operator, without a stack.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import structlog

from habitat_operator import timestamps
from habitat_operator.config import OperatorConfig
from tests.unit.fake_engines import FakeDump, FakeLock, FakePostgres
from tests.unit.fake_kube import Clock, FakeKube, install

START = dt.datetime(2024, 6, 1, 10, 0, 0, tzinfo=dt.UTC)

# Plain tracebacks: structlog's default renders them with rich, which takes a second or two per
# logged exception, and the unexpected-error tests log one each.
structlog.configure(
    processors=[
        *structlog.get_config()["processors"][:-1],
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
    ]
)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    frozen = Clock(START)
    monkeypatch.setattr(timestamps, "now", frozen.now)
    return frozen


@pytest.fixture
def fake_kube(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> FakeKube:
    return install(monkeypatch)


@pytest.fixture
def config(tmp_path: Path) -> OperatorConfig:
    root = tmp_path / "backups"
    root.mkdir()
    return OperatorConfig(backup_root=root)


@pytest.fixture
def dump() -> FakeDump:
    """pg_dump's stand-in, which a test hands to BackupRun (tests.unit.bodies.reconcile_backup)."""
    return FakeDump()


@pytest.fixture
def postgres() -> FakePostgres:
    """PostgreSQL's stand-in, which a test hands to RestoreRun (in a RestoreEngines)."""
    return FakePostgres()


@pytest.fixture
def lock() -> FakeLock:
    """The database lock's stand-in, which a test hands to RestoreRun (in a RestoreEngines)."""
    return FakeLock()
