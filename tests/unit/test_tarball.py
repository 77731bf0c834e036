"""A directory-format artifact as one tar stream through the codec: zstd, encryption and the checksum
compose as for a custom-format artifact, and what comes back is the same files or a readable reason."""

import hashlib
import io
import os
import tarfile
import threading
from pathlib import Path

import pytest

from habitat_operator.engines.artifacts.codec import ZSTD_MAGIC, ArtifactSink, PlaintextReader
from habitat_operator.engines.artifacts.crypto import MAGIC
from habitat_operator.engines.artifacts.tarball import extract_tar, write_tar
from habitat_operator.errors import OperationError
from tests.unit.helpers import Collected

KEY = b"k" * 32


def dumped_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "dumped"
    folder.mkdir()
    (folder / "toc.dat").write_bytes(b"PGDMP" + os.urandom(1000))
    (folder / "3456.dat").write_bytes(b"1\tfiller\n" * 300_000)  # larger than a read block
    (folder / "empty.dat").write_bytes(b"")
    return folder


def packed(folder: Path, key: bytes | None, zstd: bool) -> tuple[bytes, str]:
    stored = Collected()
    sink = ArtifactSink(stored, key, zstd=zstd)
    write_tar(folder, sink.write, threading.Event())
    sink.finish()
    assert sink.size == len(stored.data)
    return bytes(stored.data), sink.sha256.hexdigest()


@pytest.mark.parametrize(("key", "zstd"), [(None, False), (None, True), (KEY, False), (KEY, True)])
def test_a_folder_round_trips_through_the_codec(tmp_path: Path, key: bytes | None, zstd: bool) -> None:
    folder = dumped_folder(tmp_path)
    stored, sha256 = packed(folder, key, zstd)
    assert stored.startswith(MAGIC) == (key is not None)
    assert stored.startswith(ZSTD_MAGIC) == (zstd and key is None)
    assert sha256 == hashlib.sha256(stored).hexdigest()

    reader = PlaintextReader(io.BytesIO(stored), key)
    extract_tar(reader, tmp_path / "back", threading.Event())
    assert reader.finished
    assert reader.sha256.hexdigest() == sha256
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == ["3456.dat", "empty.dat", "toc.dat"]
    for path in folder.iterdir():
        assert (tmp_path / "back" / path.name).read_bytes() == path.read_bytes()


def test_members_are_sorted_and_carry_no_owner(tmp_path: Path) -> None:
    stored, _ = packed(dumped_folder(tmp_path), None, False)
    with tarfile.open(fileobj=io.BytesIO(stored)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["3456.dat", "empty.dat", "toc.dat"]
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "", "")}


def test_a_subfolder_is_refused_when_packing(tmp_path: Path) -> None:
    folder = dumped_folder(tmp_path)
    (folder / "sub").mkdir()
    with pytest.raises(OperationError, match="not a file"):
        packed(folder, None, False)


@pytest.mark.parametrize("name", ["../escape.dat", "sub/file.dat", "/abs.dat"])
def test_entries_outside_the_top_level_are_refused(tmp_path: Path, name: str) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        member = tarfile.TarInfo(name)
        member.size = 3
        tar.addfile(member, io.BytesIO(b"abc"))
    with pytest.raises(OperationError) as caught:
        extract_tar(PlaintextReader(io.BytesIO(raw.getvalue()), None), tmp_path / "out", threading.Event())
    assert caught.value.reason == "VerificationFailed"
    assert not (tmp_path / "escape.dat").exists()


def test_a_link_is_refused(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        link = tarfile.TarInfo("toc.dat")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(OperationError, match="unexpected entry"):
        extract_tar(PlaintextReader(io.BytesIO(raw.getvalue()), None), tmp_path / "out", threading.Event())


def test_what_is_not_a_tar_is_a_verification_failure(tmp_path: Path) -> None:
    with pytest.raises(OperationError) as caught:
        extract_tar(PlaintextReader(io.BytesIO(b"PGDMP" * 1000), None), tmp_path / "out", threading.Event())
    assert caught.value.reason == "VerificationFailed"


def test_a_truncated_stream_is_a_verification_failure(tmp_path: Path) -> None:
    stored, _ = packed(dumped_folder(tmp_path), None, False)
    with pytest.raises(OperationError) as caught:
        extract_tar(PlaintextReader(io.BytesIO(stored[:5000]), None), tmp_path / "out", threading.Event())
    assert caught.value.reason == "VerificationFailed"


def test_a_set_stop_ends_packing_and_unpacking(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(OperationError, match="stopped"):
        write_tar(dumped_folder(tmp_path), Collected().write, stop)
    stored, _ = packed(tmp_path / "dumped", None, False)
    with pytest.raises(OperationError, match="stopped"):
        extract_tar(PlaintextReader(io.BytesIO(stored), None), tmp_path / "out", stop)
