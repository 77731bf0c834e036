"""`habitat-operator wal fetch` on a folder store: what PostgreSQL gets back, and the exit status
it reads (0 fetched, 1 not archived, EXIT_FAILED to stop recovery), never with a credential."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from habitat_operator.api.common import Reason
from habitat_operator.cli import main
from habitat_operator.engines.artifacts.s3 import S3Location
from habitat_operator.engines.wal.fetch import (
    EXIT_FAILED,
    EXIT_FETCHED,
    EXIT_NOT_ARCHIVED,
    FetchSource,
    fetch,
)
from habitat_operator.engines.wal.layout import ArchiveLayout
from habitat_operator.engines.wal.store import FolderStore
from habitat_operator.engines.wal.uploader import upload_partial, upload_ready
from habitat_operator.errors import OperationError

KEY = os.urandom(32)
LAYOUT = ArchiveLayout("ledger")
SEGMENT = "000000010000000000000004"


@pytest.fixture
def store(tmp_path: Path) -> FolderStore:
    return FolderStore(tmp_path / "store")


def archive(tmp_path: Path, store: FolderStore, name: str, *, key: bytes | None = KEY) -> bytes:
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    data = os.urandom(1 << 20)
    (spool / name).write_bytes(data)
    if name.endswith(".partial"):
        asyncio.run(upload_partial(spool, store, LAYOUT, key, zstd=True))
    else:
        asyncio.run(upload_ready(spool, store, LAYOUT, key, zstd=True))
    return data


def test_an_archived_segment_comes_back_as_written(tmp_path: Path, store: FolderStore) -> None:
    data = archive(tmp_path, store, SEGMENT)
    destination = tmp_path / "pg_wal" / "RECOVERYXLOG"
    destination.parent.mkdir()

    assert fetch(store, LAYOUT, SEGMENT, destination, KEY) is True
    assert destination.read_bytes() == data
    assert [p.name for p in destination.parent.iterdir()] == ["RECOVERYXLOG"]  # no temporary left


def test_the_segment_being_written_comes_from_its_partial(tmp_path: Path, store: FolderStore) -> None:
    data = archive(tmp_path, store, f"{SEGMENT}.partial")

    assert fetch(store, LAYOUT, SEGMENT, tmp_path / "RECOVERYXLOG", KEY) is True
    assert (tmp_path / "RECOVERYXLOG").read_bytes() == data


@pytest.mark.parametrize(
    "name", ["000000010000000000000005", "00000002.history", "RECOVERYHISTORY", "../ledger/wal/x", ""]
)
def test_anything_else_is_not_in_the_archive(tmp_path: Path, store: FolderStore, name: str) -> None:
    archive(tmp_path, store, SEGMENT)

    assert fetch(store, LAYOUT, name, tmp_path / "RECOVERYXLOG", KEY) is False
    assert not (tmp_path / "RECOVERYXLOG").exists()


def test_a_damaged_object_is_refused_and_nothing_is_written(tmp_path: Path, store: FolderStore) -> None:
    archive(tmp_path, store, SEGMENT, key=None)
    stored = store._root / LAYOUT.wal(SEGMENT)
    damaged = bytearray(stored.read_bytes())
    damaged[-100] ^= 0xFF
    stored.write_bytes(bytes(damaged))

    with pytest.raises(OperationError) as caught:
        fetch(store, LAYOUT, SEGMENT, tmp_path / "RECOVERYXLOG", None)

    assert caught.value.reason in (Reason.CHECKSUM_MISMATCH, Reason.VERIFICATION_FAILED)
    assert not (tmp_path / "RECOVERYXLOG").exists()
    assert list(tmp_path.glob(".RECOVERYXLOG*")) == []


def test_the_environment_round_trips_and_holds_what_it_needs() -> None:
    location = S3Location(
        bucket="wal",
        region="eu-west-1",
        endpoint="https://s3.example",
        force_path_style=True,
        access_key_id="AKIA",
        secret_access_key="secret",
        ca_bundle=b"-----BEGIN CERTIFICATE-----\n",
    )
    source = FetchSource("ledger", location=location, base="backups/team-a", encryption_key=KEY)

    assert FetchSource.from_environment(source.environment()) == source
    assert FetchSource.from_environment(source.environment()).encryption_key == KEY
    folder = FetchSource("ledger", folder=Path("/var/lib/habitat/backups/wal/team-a"))
    assert FetchSource.from_environment(folder.environment()) == folder
    assert "secret" not in repr(source) and KEY.hex() not in repr(source)


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"HABITAT_WAL_ARCHIVE": "ledger"},
        {"HABITAT_WAL_ARCHIVE": "x", "HABITAT_WAL_FOLDER": "/a", "HABITAT_WAL_S3_BUCKET": "b"},
    ],
)
def test_an_incomplete_environment_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(OperationError) as caught:
        FetchSource.from_environment(env)
    assert "HABITAT_WAL_ARCHIVE" in caught.value.message


def test_the_command_exit_status_is_what_restore_command_expects(
    tmp_path: Path, store: FolderStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = archive(tmp_path, store, SEGMENT)
    for name, value in FetchSource("ledger", folder=store._root, encryption_key=KEY).environment().items():
        monkeypatch.setenv(name, value)
    destination = tmp_path / "RECOVERYXLOG"

    assert main(["wal", "fetch", SEGMENT, str(destination)]) == EXIT_FETCHED
    assert destination.read_bytes() == data
    assert main(["wal", "fetch", "000000010000000000000009", str(destination)]) == EXIT_NOT_ARCHIVED
    assert capsys.readouterr().err == ""

    wrong = os.urandom(32)
    monkeypatch.setenv("HABITAT_WAL_ENCRYPTION_KEY", wrong.hex())
    assert main(["wal", "fetch", SEGMENT, str(destination)]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "DecryptionFailed" in err
    assert wrong.hex() not in err and KEY.hex() not in err
