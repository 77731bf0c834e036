"""Reading a stored base backup back: every file against the backup_manifest's SHA-256, the manifest
against its own checksum, the positions from backup_label and WAL-Ranges (tars built here as
pg_basebackup writes them; the real thing is in tests/integration/test_wal_basebackup.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import json
import os
import tarfile
import threading
import tracemalloc
from pathlib import Path

import pytest

from habitat_operator.api.common import Reason
from habitat_operator.engines.artifacts.codec import ArtifactSink
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.wal.basebackup import BaseBackupEntry, read_back, take_base_backup
from habitat_operator.engines.wal.layout import ArchiveLayout
from habitat_operator.engines.wal.store import FolderStore
from habitat_operator.errors import OperationError

LABEL = (
    b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\n"
    b"BACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-12-07 17:06:40 CET\n"
    b"LABEL: habitat x\nSTART TIMELINE: 1\n"
)
FILES = {
    "backup_label": LABEL,
    "PG_VERSION": b"15\n",
    "base/1/1259": os.urandom(20000),
    "tablespace_map": b"",
}


def manifest(
    files: dict[str, bytes], *, ranges: str = '"Start-LSN": "0/2000028", "End-LSN": "0/2000100"'
) -> bytes:
    lines = ['{ "PostgreSQL-Backup-Manifest-Version": 1,', '"Files": [']
    entries = [
        json.dumps({"Path": path, "Size": len(body), "Last-Modified": "2026-12-07 17:06:40 GMT"})[:-1]
        + f', "Checksum-Algorithm": "SHA256", "Checksum": "{hashlib.sha256(body).hexdigest()}" }}'
        for path, body in files.items()
    ]
    lines += [entry + ("," if i < len(entries) - 1 else "") for i, entry in enumerate(entries)]
    lines += ["],", '"WAL-Ranges": [', f'{{ "Timeline": 1, {ranges} }}', "],"]
    text = "\n".join(lines) + "\n"
    return (text + f'"Manifest-Checksum": "{hashlib.sha256(text.encode()).hexdigest()}"}}\n').encode()


def tar_of(files: dict[str, bytes], manifest_body: bytes | None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        directory = tarfile.TarInfo("base/1")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        members = {**files, **({"backup_manifest": manifest_body} if manifest_body is not None else {})}
        for path, body in members.items():
            info = tarfile.TarInfo(path)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def stored(plain: bytes, key: bytes | None, zstd: bool) -> bytes:
    out = io.BytesIO()

    class Out:
        def write(self, data: bytes) -> None:
            out.write(data)

        def sync(self) -> None:
            pass

    sink = ArtifactSink(Out(), key, zstd=zstd)
    for start in range(0, len(plain), 7000):
        sink.write(plain[start : start + 7000])
    sink.finish()
    return out.getvalue()


def check(data: bytes, key: bytes | None = None) -> object:
    return read_back(lambda: io.BytesIO(data), key, threading.Event())


def failure(data: bytes) -> str:
    with pytest.raises(OperationError) as caught:
        check(data)
    assert caught.value.reason is Reason.VERIFICATION_FAILED
    return caught.value.message


@pytest.mark.parametrize(("encrypted", "zstd"), [(False, False), (True, True), (False, True)])
def test_a_good_backup_gives_its_positions(encrypted: bool, zstd: bool) -> None:
    key = os.urandom(32) if encrypted else None
    data = stored(tar_of(FILES, manifest(FILES)), key, zstd)
    facts = read_back(lambda: io.BytesIO(data), key, threading.Event())
    assert (facts.start_lsn, facts.end_lsn, facts.timeline) == (0x2000028, 0x2000100, 1)
    assert facts.sha256 == hashlib.sha256(data).hexdigest()
    assert facts.size == len(data)


def test_a_changed_file_fails() -> None:
    changed = {**FILES, "PG_VERSION": b"16\n"}
    message = failure(tar_of(changed, manifest(FILES)))
    assert message.startswith("base backup failed verification: its files do not match its backup_manifest")


def test_a_missing_or_extra_file_fails() -> None:
    fewer = {path: body for path, body in FILES.items() if path != "PG_VERSION"}
    assert "4 listed" in failure(tar_of(fewer, manifest(FILES)))
    assert "5 in the tar" in failure(tar_of({**FILES, "stray": b"x"}, manifest(FILES)))


def test_a_tampered_manifest_fails() -> None:
    body = manifest(FILES).replace(b'"Size": 3', b'"Size": 4')
    assert "does not match its Manifest-Checksum" in failure(tar_of(FILES, body))


def test_no_manifest_no_label_fail() -> None:
    assert "holds no backup_manifest" in failure(tar_of(FILES, None))
    unlabelled = {path: body for path, body in FILES.items() if path != "backup_label"}
    assert "holds no backup_label" in failure(tar_of(unlabelled, manifest(unlabelled)))


def test_label_and_ranges_must_agree() -> None:
    body = manifest(FILES, ranges='"Start-LSN": "0/3000028", "End-LSN": "0/3000100"')
    assert "disagree on where the backup starts" in failure(tar_of(FILES, body))


def test_a_truncated_tar_fails() -> None:
    data = tar_of(FILES, manifest(FILES))
    assert "not a readable tar" in failure(data[:15000])


def test_a_stop_interrupts() -> None:
    stop = threading.Event()
    stop.set()
    data = tar_of(FILES, manifest(FILES))
    with pytest.raises(OperationError) as caught:
        read_back(lambda: io.BytesIO(data), None, stop)
    assert caught.value.reason is Reason.CANCELLED


def test_an_entry_round_trips_through_json() -> None:
    entry = BaseBackupEntry(
        id="20261207T171500Z",
        start_lsn=0x2000028,
        end_lsn=0x2000100,
        timeline=1,
        started_at=dt.datetime(2026, 12, 7, 17, 15, tzinfo=dt.UTC),
        completed_at=dt.datetime(2026, 12, 7, 17, 16, tzinfo=dt.UTC),
        server_version=150020,
        system_identifier="7716609403539254163",
        size_bytes=42,
        sha256="ab" * 32,
        encrypted=True,
        compression="zstd",
    )
    document = entry.to_json()
    assert document["startLsn"] == "0/2000028" and document["startedAt"] == "2026-12-07T17:15:00Z"
    assert BaseBackupEntry.from_json(json.loads(json.dumps(document))) == entry
    with pytest.raises(ValueError, match="compression"):
        BaseBackupEntry.from_json({**document, "compression": "lz4"})


@pytest.mark.parametrize("backup_id", ["", "../x", "a/b", "x" * 65, "-x"])
def test_a_backup_id_is_a_plain_name(backup_id: str, tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    with pytest.raises(OperationError) as caught:
        asyncio.run(
            take_base_backup(
                ConnectionTarget("postgresql://u@127.0.0.1:1/db"),
                store,
                ArchiveLayout("a"),
                None,
                False,
                backup_id,
            )
        )
    assert caught.value.reason is Reason.INVALID_REQUEST


def test_memory_does_not_grow_with_the_number_of_files() -> None:
    # About 6.5 MiB at most (1 MiB chunks through the codec and tarfile's buffer), from 20,000 files
    # to 150,000; 14 MiB for 20,000 while tarfile kept every member.
    many = {**FILES, **{f"base/1/{n}": b"" for n in range(20000)}}
    data = tar_of(many, manifest(many))
    tracemalloc.start()
    try:
        check(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak / 2**20:.1f} MiB for 20,000 files"
